"""The metrics registry without sockets: the text format byte for byte,
histograms, the sum over workers, what a request counts, the HTTP answer,
and the config rules of [metrics]."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest
from prometheus import labels, parse_text
from redis_fixture import RedisServer, redis_server  # noqa: F401

import edge
from edge.access.actions import Deny, Endpoint, Forward, NotFound, Preflight, Redirect, Reject, Unauthorized
from edge.access.compile import compile_config
from edge.access.request import Request
from edge.cli.main import main
from edge.config.errors import ConfigError
from edge.config.load import loads
from edge.http.connection import LogEntry
from edge.http.faults import FaultLog
from edge.login.store import MemoryStore, RedisStore, Store
from edge.proxy.upstream import UpstreamKind
from edge.runtime import metrics
from edge.runtime.metrics import (
    DURATION_BUCKETS,
    FAILURE_KINDS,
    KIND_OF,
    KINDS,
    PER_WORKER,
    SUM,
    UPSTREAM_FAILURES,
    Family,
    Histogram,
    Sample,
    WorkerMetrics,
    merge,
    render,
)
from edge.runtime.metrics_server import SupervisorMetrics, WorkerReplies
from edge.runtime.server import ServerState

APPS = """
[[apps]]
name = "api"
domains = ["api.test"]
upstream = "http://127.0.0.1:9"
[[apps.policies]]
name = "public"
action = "bypass"
include = [{ everyone = true }]
"""


def entry(
    app: str | None, kind: str, status: int, started: float, upstream_ms: float | None = None
) -> LogEntry:
    request = Request(
        b"GET", b"h", b"/", b"/", b"", b"", [], {}, "127.0.0.1", "http", None, False, False, started
    )
    return LogEntry(request, status=status, app=app, kind=KINDS.index(kind), upstream_ms=upstream_ms)


def test_render_exact_bytes() -> None:
    families = [
        Family("edge_x_total", "counter", "Things.", SUM, (Sample("", (("app", "a"),), 3),)),
        Family("edge_up", "gauge", "Up.", SUM, (Sample("", (), 1.5),)),
    ]
    assert render(families) == (
        b"# HELP edge_x_total Things.\n"
        b"# TYPE edge_x_total counter\n"
        b'edge_x_total{app="a"} 3\n'
        b"# HELP edge_up Up.\n"
        b"# TYPE edge_up gauge\n"
        b"edge_up 1.5\n"
    )


def test_label_values_and_help_are_escaped() -> None:
    family = Family("edge_y", "gauge", "a \\ b\nc", SUM, (Sample("", (("app", 'q"b\\s\nn'),), 1),))
    text = render([family])
    assert text == (b'# HELP edge_y a \\\\ b\\nc\n# TYPE edge_y gauge\nedge_y{app="q\\"b\\\\s\\nn"} 1\n')
    assert parse_text(text.decode()) == {("edge_y", labels(app='q"b\\s\nn')): 1.0}


def test_histogram_is_cumulative_with_inf_sum_and_count() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0, 3.0):
        h.observe(value)
    text = render([Family("edge_t_seconds", "histogram", "T.", SUM, tuple(h.samples((("app", "a"),))))])
    assert text.decode().splitlines()[2:] == [
        'edge_t_seconds_bucket{app="a",le="0.1"} 2',  # le is inclusive: 0.1 counts
        'edge_t_seconds_bucket{app="a",le="1"} 3',
        'edge_t_seconds_bucket{app="a",le="+Inf"} 5',
        'edge_t_seconds_sum{app="a"} 5.65',
        'edge_t_seconds_count{app="a"} 5',
    ]


def test_numbers() -> None:
    assert metrics._number(math.inf) == "+Inf"
    assert metrics._number(3.0) == "3"
    assert metrics._number(0.25) == "0.25"
    assert metrics._number(1e20) == "1e+20"


@pytest.mark.parametrize(("to_file", "with_metrics"), [(False, True), (False, False), (True, True)])
def test_a_worker_logs_through_count_only_when_it_writes_no_access_log(
    tmp_path: Path, to_file: bool, with_metrics: bool
) -> None:
    access_log = str(tmp_path / "access.log") if to_file else "off"
    text = f'[server]\naccess_log = "{access_log}"\n' + APPS
    if with_metrics:
        text += '\n[metrics]\nlisten = "127.0.0.1:9301"\n'
    loop = asyncio.new_event_loop()
    try:
        state = ServerState(loads(text.encode(), "t"), loop)
        if not to_file and with_metrics:
            assert state.metrics is not None and state.log == state.metrics.count
        else:
            assert state.log == state.access
        if state.access_log is not None:
            state.access_log.close()
    finally:
        loop.close()


CLIENT = "127.0.0.1:5000"  # the log call's first argument, which counting ignores


def at(t: float) -> Callable[[], float]:
    """A clock that says `t`."""
    return lambda: t


def test_every_action_type_has_a_kind() -> None:
    for action in (Forward, Preflight, Redirect, Unauthorized, Deny, NotFound, Reject, Endpoint):
        assert KINDS[KIND_OF[action]] != "error"
    assert len(set(KIND_OF.values())) == len(KIND_OF)


def test_observe_counts_by_app_kind_and_status_class() -> None:
    config = loads(APPS.encode(), "t")
    m = WorkerMetrics(started=100.0)
    m.install(config)
    m.count(CLIENT, entry("api", "bypass", 200, started=10.0, upstream_ms=2.0), at(10.003))
    m.count(CLIENT, entry("api", "bypass", 502, started=10.0), at(10.2))
    m.count(CLIENT, entry(None, "not_found", 404, started=10.0), at(10.0001))
    m.count(CLIENT, entry("gone", "forward", 200, started=10.0), at(10.0))  # an app no longer configured
    m.count(CLIENT, entry(None, "error", 400, started=10.0), at(10.0))
    m.flush()
    text = render(m._requests()).decode()
    got = parse_text(text)
    assert got[("edge_requests_total", labels(app="api", kind="bypass", status="2xx"))] == 1
    assert got[("edge_requests_total", labels(app="api", kind="bypass", status="5xx"))] == 1
    assert got[("edge_requests_total", labels(app="", kind="not_found", status="4xx"))] == 1
    assert got[("edge_requests_total", labels(app="", kind="forward", status="2xx"))] == 1
    assert got[("edge_requests_total", labels(app="", kind="error", status="4xx"))] == 1
    assert sum(v for (name, _), v in got.items() if name == "edge_requests_total") == 5
    assert 0.005 in DURATION_BUCKETS
    bucket = ("edge_request_duration_seconds_bucket", labels(app="api", kind="bypass", le="0.005"))
    assert got[bucket] == 1  # 3 ms: in le=0.005, the 200 ms one not
    assert got[("edge_request_duration_seconds_count", labels(app="api", kind="bypass"))] == 2
    upstream = parse_text(render([next(iter(m._upstream(FaultLog())))]).decode())
    assert upstream[("edge_upstream_response_head_seconds_count", labels(app="api"))] == 1
    assert upstream[("edge_upstream_response_head_seconds_bucket", labels(app="api", le="0.0025"))] == 1


def test_upstream_failures_by_kind() -> None:
    faults = FaultLog()
    for kind in ("connect refused", "connect refused", "timeout", "something new"):
        faults.upstream_failed("http://127.0.0.1:9", kind, 1.0, "detail")
    families = list(WorkerMetrics(started=0.0)._upstream(faults))
    got = parse_text(render(families[1:]).decode())
    assert got[("edge_upstream_failures_total", labels(kind="connect_refused"))] == 2
    assert got[("edge_upstream_failures_total", labels(kind="response_timeout"))] == 1
    assert got[("edge_upstream_failures_total", labels(kind="other"))] == 1
    assert got[("edge_upstream_failures_total", labels(kind="reset"))] == 0


# Each failure kind the proxy reports (UpstreamKind) and the label it is
# counted under, as the README documents them: written out here, not read
# from metrics.py, so that dropping or changing an entry there fails.
FAILURE_LABELS = {
    "connect refused": "connect_refused",
    "connect timeout": "connect_timeout",
    "connect failed": "connect_error",
    "tls": "tls",
    "timeout": "response_timeout",
    "reset": "reset",
    "connection error": "reset",
    "closed": "closed",
    "invalid response": "bad_response",
    "internal error": "internal",
}


def failures(faults: FaultLog) -> dict[str, float]:
    """edge_upstream_failures_total by its kind label, as a scrape renders it."""
    got = parse_text(render(WorkerMetrics(started=0.0)._upstream(faults)).decode())
    return {dict(k[1])["kind"]: v for k, v in got.items() if k[0] == "edge_upstream_failures_total"}


@pytest.mark.parametrize(("kind", "label"), FAILURE_LABELS.items(), ids=list(FAILURE_LABELS))
def test_each_upstream_failure_kind_counts_under_its_label(kind: str, label: str) -> None:
    faults = FaultLog()
    faults.upstream_failed("http://127.0.0.1:9", kind, 1.0, "detail")
    got = failures(faults)
    assert got[label] == 1
    assert sum(got.values()) == 1  # under that label only: not under "other"
    # Every label is there from the start (0), so a rate over it is defined.
    assert set(got) == set(FAILURE_LABELS.values())


def test_the_failure_table_names_every_kind_the_proxy_has() -> None:
    """UpstreamKind (edge.proxy.upstream) owns the list; a kind metrics.py
    does not map would count as "other"."""
    assert set(UPSTREAM_FAILURES) == set(get_args(UpstreamKind))
    assert set(FAILURE_LABELS) == set(get_args(UpstreamKind))
    assert set(FAILURE_KINDS) == set(FAILURE_LABELS.values())


def _is_kind(annotation: ast.expr | None) -> bool:
    return (isinstance(annotation, ast.Name) and annotation.id == "UpstreamKind") or (
        isinstance(annotation, ast.Constant) and annotation.value == "UpstreamKind"
    )


def _kinds(module: ast.Module, scope: ast.AST, expr: ast.expr, where: str) -> set[str]:
    """The string constants `expr` (an UpstreamError's kind) can be: a
    literal, a conditional of them, a local annotated UpstreamKind, or the
    call of a module function returning UpstreamKind. Anything else fails:
    a kind this test cannot read is one the table might miss."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        return _kinds(module, scope, expr.body, where) | _kinds(module, scope, expr.orelse, where)
    if isinstance(expr, ast.Name):
        for node in ast.walk(scope):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == expr.id
                and _is_kind(node.annotation)
                and node.value is not None
            ):
                return _kinds(module, scope, node.value, where)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        for func in module.body:
            if isinstance(func, ast.FunctionDef) and func.name == expr.func.id and _is_kind(func.returns):
                found: set[str] = set()
                for node in ast.walk(func):
                    if isinstance(node, ast.Return):
                        assert node.value is not None, f"{where}: {func.name} returns no kind"
                        found |= _kinds(module, func, node.value, where)
                return found
    raise AssertionError(f"{where}: cannot tell which kinds {ast.unparse(expr)} can be")


def proxy_kinds() -> tuple[set[str], int]:
    """Every kind an UpstreamError is made with anywhere in edge/, read from
    the source; and how many places make one."""
    kinds: set[str] = set()
    places = 0
    for path in sorted(Path(edge.__file__).parent.rglob("*.py")):
        module = ast.parse(path.read_text(), str(path))
        for func in ast.walk(module):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(func):
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id == "UpstreamError"
                ):
                    continue
                where = f"{path.name}:{call.lineno}"
                kind = call.args[2] if len(call.args) > 2 else None
                kind = next((k.value for k in call.keywords if k.arg == "kind"), kind)
                assert kind is not None, f"{where}: an UpstreamError without a kind"
                kinds |= _kinds(module, func, kind, where)
                places += 1
    return kinds, places


def test_every_kind_the_proxy_reports_is_in_the_table() -> None:
    """Read from the source, so a kind added without its label fails here
    (mypy also refuses a kind UpstreamKind does not list)."""
    kinds, places = proxy_kinds()
    assert places >= 9  # the search found the proxy's failures (upstream.py, cycle.py)
    assert kinds == set(get_args(UpstreamKind))  # each one listed, none listed but never made
    assert kinds <= set(UPSTREAM_FAILURES)
    # The fault log, which metrics reads, is only ever told an UpstreamError's kind.
    for path in sorted(Path(edge.__file__).parent.rglob("*.py")):
        for call in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "upstream_failed"
            ):
                assert isinstance(call.args[1], ast.Attribute) and call.args[1].attr == "kind", (
                    f"{path.name}:{call.lineno}"
                )


def test_process_start_time_is_a_gauge_per_worker() -> None:
    config = loads(APPS.encode(), "t")
    compiled = compile_config(config, "t")

    def families(started: float) -> list[Family]:
        m = WorkerMetrics(started=started)
        m.install(config)
        return m.families(compiled, MemoryStore(), FaultLog(), 0, 0, now=started + 5)

    one = families(1700000000.25)
    text = render(one).decode()
    assert "# TYPE edge_process_start_time_seconds gauge" in text.splitlines()
    got = parse_text(text)
    assert got[("edge_process_start_time_seconds", labels())] == 1700000000.25
    # With several workers, one sample each, under its slot: the starts differ
    # (a restarted worker's is later), so a sum or any one of them would lie.
    merged = parse_text(render(merge([(0, one), (1, families(1700000100.5))])).decode())
    starts = {k: v for k, v in merged.items() if k[0] == "edge_process_start_time_seconds"}
    assert starts == {
        ("edge_process_start_time_seconds", labels(worker="0")): 1700000000.25,
        ("edge_process_start_time_seconds", labels(worker="1")): 1700000100.5,
    }


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_families() -> dict[str, tuple[str, set[str], str]]:
    """The README's Metrics table: family -> (type, label names, what)."""
    text = README.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, set[str], str]] = {}
    for line in section.splitlines():
        m = re.fullmatch(r"\| `(edge_\w+)` \| (\w+) \|([^|]*)\| (.*) \|", line)
        if m:
            rows[m[1]] = (m[2], set(re.findall(r"`(\w+)`", m[3])), m[4])
    return rows


def test_readme_lists_every_family_with_its_type_and_labels() -> None:
    config = loads(APPS.encode(), "t")
    m = WorkerMetrics(started=1.0)
    m.install(config)
    m.count(CLIENT, entry("api", "bypass", 200, started=1.0, upstream_ms=2.0), at(1.0))
    m.jwks_fetched("https://issuer.test", ok=True)
    faults = FaultLog()
    faults.upstream_failed("http://127.0.0.1:9", "never heard of", 1.0, "detail")  # -> other
    families = m.families(compile_config(config, "t"), MemoryStore(), faults, 0, 0, now=2.0)
    rows = readme_families()
    assert set(rows) == {f.name for f in families}
    for family in families:
        kind, names, _ = rows[family.name]
        assert kind == family.type, family.name
        if family.samples:
            emitted = {k for s in family.samples for k, _ in s.labels if k != "le"}
            if family.merge == PER_WORKER:
                emitted.add("worker")
            assert names == emitted, family.name
    # The failure kinds, exactly as emitted and in their order (parentheses explain).
    emitted = [
        dict(s.labels)["kind"] for s in next(f for f in families if f.name.endswith("failures_total")).samples
    ]
    what = re.sub(r"\([^)]*\)", "", rows["edge_upstream_failures_total"][2])
    assert re.findall(r"`(\w+)`", what) == emitted == [*FAILURE_KINDS, "other"]


def test_slots_survive_a_reload_that_drops_the_app() -> None:
    m = WorkerMetrics(started=0.0)
    m.install(loads(APPS.encode(), "t"))
    m.count(CLIENT, entry("api", "bypass", 200, started=1.0), at(1.0))
    first = m.config_hash
    m.install(loads(b"", "t"))
    m.count(CLIENT, entry("api", "bypass", 200, started=1.0), at(1.0))
    m.flush()
    got = parse_text(render(m._requests()).decode())
    assert got[("edge_requests_total", labels(app="api", kind="bypass", status="2xx"))] == 2
    assert m.generation == 2 and m.config_hash != first


def test_merge_sums_and_keeps_per_worker_samples() -> None:
    def worker(n: int, gen: int) -> list[Family]:
        return [
            Family("edge_r_total", "counter", "R.", SUM, (Sample("", (("app", "a"),), n),)),
            Family("edge_g", "gauge", "G.", PER_WORKER, (Sample("", (), gen),)),
            metrics.build_info(),
        ]

    merged = merge([(0, worker(3, 1)), (1, worker(4, 2))])
    got = parse_text(render(merged).decode())
    assert got[("edge_r_total", labels(app="a"))] == 7
    assert got[("edge_g", labels(worker="0"))] == 1
    assert got[("edge_g", labels(worker="1"))] == 2
    assert len([k for k in got if k[0] == "edge_build_info"]) == 1
    assert metrics.decode(metrics.encode(worker(3, 1))) == worker(3, 1)


class FakeWorker:
    """The worker's end of a scrape channel, answered from a thread with
    `count` requests (and one open connection) while `answering` is set."""

    def __init__(self, count: int) -> None:
        self.supervisor, self.worker = socket.socketpair()
        self.count = count
        self.answering = True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.worker:
            while data := self.worker.recv(4):
                if self.answering:
                    families = [
                        Family(
                            "edge_r_total", "counter", "R.", SUM, (Sample("", (("app", "a"),), self.count),)
                        ),
                        Family("edge_open", "gauge", "O.", SUM, (Sample("", (), 1),)),
                        Family("edge_h", "histogram", "H.", SUM, (Sample("_count", (), self.count),)),
                    ]
                    payload = metrics.encode(families)
                    self.worker.sendall(
                        struct.pack("!II", struct.unpack("!I", data)[0], len(payload)) + payload
                    )


def test_sums_never_go_down_when_a_worker_stalls_dies_or_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prometheus reads a sum that goes down as a counter reset and counts
    all of it again: a stalled worker counts with its last answer, a gone
    one's counters (not its gauges) stay in every later scrape."""
    monkeypatch.setattr("edge.runtime.metrics_server.WORKER_TIMEOUT", 0.2)
    a, b = FakeWorker(3), FakeWorker(4)
    live = {0: a, 1: b}
    made = [a, b]
    listener = socket.socket()
    supervisor = SupervisorMetrics(listener, lambda: [(s, w.supervisor) for s, w in live.items()], list)

    def scrape() -> tuple[float, float, float]:
        got = parse_text(render(supervisor.gather()).decode())
        return (
            got[("edge_r_total", labels(app="a"))],
            got.get(("edge_open", labels()), 0),
            got[("edge_h_count", labels())],
        )

    assert scrape() == (7, 2, 7)
    b.answering = False  # stalled (SIGSTOP): its last answer stands in
    assert scrape() == (7, 2, 7)
    live[1] = FakeWorker(1)  # slot 1's worker replaced: the old one's counters are kept
    made.append(live[1])
    assert scrape() == (8, 2, 8)
    a.count = 5
    assert scrape() == (10, 2, 10)
    a.supervisor.shutdown(socket.SHUT_RDWR)  # slot 0's worker died: its channel reads EOF
    assert scrape() == (10, 1, 10)  # counters kept, its gauge gone, before it is reaped
    del live[0]  # reaped, not yet replaced
    assert scrape() == (10, 1, 10)
    live.clear()
    assert scrape() == (10, 0, 10)
    live[0] = FakeWorker(2)
    made.append(live[0])
    assert scrape() == (12, 1, 12)
    listener.close()
    for worker in made:
        worker.supervisor.close()


def test_answer() -> None:
    ok = metrics.answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"edge_up 1\n")
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n" in ok
    assert ok.endswith(b"\r\n\r\nedge_up 1\n")
    assert metrics.answer(b"GET /other HTTP/1.1\r\n\r\n", None).startswith(b"HTTP/1.1 404 ")
    assert metrics.answer(b"POST /metrics HTTP/1.1\r\n\r\n", None).startswith(b"HTTP/1.1 405 ")
    assert metrics.answer(b"garbage\r\n\r\n", None).startswith(b"HTTP/1.1 400 ")
    head = metrics.answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", b"edge_up 1\n")
    assert head.endswith(b"\r\n\r\n") and b"content-length: 10\r\n" in head
    assert metrics.wants_metrics(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
    assert not metrics.wants_metrics(b"GET /metricsx HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize(
    ("public", "private"),
    [
        ("127.0.0.1:9301", "127.0.0.1:9301"),
        ("0.0.0.0:9301", "127.0.0.1:9301"),
        ("127.0.0.1:9301", "0.0.0.0:9301"),
        ("[::]:9301", "[::1]:9301"),
    ],
)
def test_metrics_may_not_be_on_a_public_listener(public: str, private: str) -> None:
    text = f'[server]\nlisten = ["{public}"]\n[metrics]\nlisten = "{private}"\n'
    with pytest.raises(ConfigError, match=r"\$\.metrics\.listen: .* is a public listener"):
        loads(text.encode(), "t")


def test_metrics_table() -> None:
    assert loads(b"", "t").metrics is None  # off unless present
    config = loads(b'[server]\nlisten = ["127.0.0.1:8080"]\n[metrics]\n', "t")
    assert config.metrics is not None and config.metrics.address.port == 9301
    with pytest.raises(ConfigError, match=r"\$\.metrics\.listen"):
        loads(b'[metrics]\nlisten = "nope"\n', "t")


def test_edge_check_says_where_metrics_are_served(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:8080"]\naccess_log = "off"\n')
    assert main(["check", "-c", str(path)]) == 0
    assert "  metrics:    off (no [metrics] table)\n" in capsys.readouterr().out
    path.write_text(
        '[server]\nlisten = ["127.0.0.1:8080"]\nworkers = 2\n[metrics]\nlisten = "127.0.0.1:9400"\n'
    )
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  metrics:    http://127.0.0.1:9400/metrics (the supervisor sums the 2 workers)\n" in out


def store_state(store: Store) -> dict[str, float]:
    got = parse_text(render(WorkerMetrics(started=0.0)._store(store)).decode())
    return {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "edge_revocation_store_state"}


def test_revocation_store_state_and_count(redis_server: RedisServer) -> None:  # noqa: F811
    memory = MemoryStore()
    asyncio.run(memory.revoke("session-1", time.time() + 60))
    assert store_state(memory) == {"memory": 1, "redis_up": 0, "redis_down": 0}
    got = parse_text(render(WorkerMetrics(started=0.0)._store(memory)).decode())
    assert got[("edge_revocations", labels())] == 1

    redis = RedisStore(redis_server.url)
    assert store_state(redis) == {"memory": 0, "redis_up": 0, "redis_down": 1}  # not connected yet

    async def connected() -> dict[str, float]:
        await redis.start()
        try:
            deadline = time.monotonic() + 10  # seconds
            while not redis.healthy and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return store_state(redis)
        finally:
            await redis.close()

    assert asyncio.run(connected()) == {"memory": 0, "redis_up": 1, "redis_down": 0}


def test_a_drip_fed_scrape_holds_the_supervisor_no_longer_than_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The supervisor serves scrapes one at a time: a client sending its head
    a byte at a time (each within SCRAPE_TIMEOUT) must not hold the next
    scrape longer than SCRAPE_TIMEOUT for the whole head."""
    monkeypatch.setattr(metrics, "SCRAPE_TIMEOUT", 0.5)  # time scaled down
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    supervisor = SupervisorMetrics(listener, lambda: [], lambda: [])
    supervisor.start()
    stop = threading.Event()
    try:
        attacker = socket.create_connection(("127.0.0.1", port))

        def drip() -> None:
            while not stop.is_set():
                try:
                    attacker.send(b"X")  # never a blank line
                except OSError:
                    return
                time.sleep(0.3)

        threading.Thread(target=drip, daemon=True).start()
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=4 * metrics.SCRAPE_TIMEOUT) as scraper:
            scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert scraper.recv(100).startswith(b"HTTP/1.1 200")  # before the test's own 2 s
    finally:
        stop.set()
        attacker.close()
        supervisor.stop()


def test_a_worker_never_blocks_its_loop_on_a_supervisor_that_does_not_read() -> None:
    """A snapshot larger than the socket buffer, asked for by a supervisor
    that gave up reading (it timed out on this worker): the worker's loop
    must not wait in a blocking send. The reply goes out as the supervisor
    reads, whole and in one piece, and a request that comes meanwhile waits
    for the next scrape rather than interleave a second reply."""
    sample = metrics.Sample("", (("a", "b" * 200),), 1)
    families = [
        metrics.Family(f"edge_big_{i}", "counter", "x" * 64, metrics.SUM, (sample,)) for i in range(20_000)
    ]
    payload = metrics.encode(families)
    assert len(payload) > 4 * 1024 * 1024  # far more than a socket buffer

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        supervisor, worker = socket.socketpair()
        with supervisor, worker:
            replies = WorkerReplies(loop, worker, lambda: families)
            supervisor.sendall(struct.pack("!I", 7))
            await asyncio.sleep(0.05)  # the worker's reader runs
            assert replies.sending  # not sent whole: the rest waits for the supervisor
            supervisor.sendall(struct.pack("!I", 8))  # a second scrape's request, meanwhile
            await asyncio.sleep(0.05)
            supervisor.setblocking(False)
            got = bytearray()
            while len(got) < 8 + len(payload):
                try:
                    got += supervisor.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.001)  # the worker's loop sends on
            await asyncio.sleep(0.05)
            with contextlib.suppress(BlockingIOError):
                assert supervisor.recv(1) == b""  # nothing more: no second reply interleaved
                raise AssertionError("a second reply")
            replies.close()
            return bytes(got)

    got = asyncio.run(scenario())
    assert struct.unpack("!II", got[:8]) == (7, len(payload)) and got[8:] == payload


DISPATCHED = (
    APPS
    + """
[[apps]]
name = "cors"
domains = ["cors.test"]
upstream = "http://127.0.0.1:9"
options_preflight_bypass = true
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]
"""
)
PREFLIGHT = {"Origin": "https://web.test", "Access-Control-Request-Method": "GET"}


@pytest.mark.parametrize(
    ("method", "url", "headers", "kind"),
    [
        ("GET", "http://api.test/", {}, "bypass"),  # a bypass policy
        ("OPTIONS", "http://api.test/", PREFLIGHT, "bypass"),  # its preflight too
        # options_preflight_bypass is an app setting forwarding preflights: a forward
        ("OPTIONS", "http://cors.test/", PREFLIGHT, "forward"),
    ],
)
def test_dispatch_names_a_bypass_as_the_policy_says(
    method: str, url: str, headers: dict[str, str], kind: str
) -> None:
    """The kind the metrics and access log count comes from the decision's
    own field (Forward.bypass), whatever its reason's text."""
    from access_fixtures import request

    from edge.runtime.server import ServerState

    loop = asyncio.new_event_loop()
    try:
        state = ServerState(loads(DISPATCHED), loop)
        req = request(method, url, headers)
        log_entry = LogEntry(req)
        state.dispatch(None, req, log_entry)  # type: ignore[arg-type]  # a forward only holds the client
        assert KINDS[log_entry.kind] == kind
    finally:
        loop.close()
