"""The metrics registry without sockets: the text format byte for byte,
histograms, the sum over workers, what a request counts, the HTTP answer,
and the config rules of [metrics]."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from prometheus import labels, parse_text
from redis_fixture import RedisServer, redis_server  # noqa: F401

from edge.access.actions import Deny, Endpoint, Forward, NotFound, Preflight, Redirect, Reject, Unauthorized
from edge.access.request import Request
from edge.cli.main import main
from edge.config.errors import ConfigError
from edge.config.load import loads
from edge.http.connection import LogEntry
from edge.http.faults import FaultLog
from edge.login.store import MemoryStore, RedisStore, Store
from edge.runtime import metrics
from edge.runtime.metrics import (
    DURATION_BUCKETS,
    KIND_OF,
    KINDS,
    PER_WORKER,
    SUM,
    Family,
    Histogram,
    Sample,
    WorkerMetrics,
    merge,
    render,
)
from edge.runtime.metrics_server import SupervisorMetrics, WorkerReplies

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


def test_every_action_type_has_a_kind() -> None:
    for action in (Forward, Preflight, Redirect, Unauthorized, Deny, NotFound, Reject, Endpoint):
        assert KINDS[KIND_OF[action]] != "error"
    assert len(set(KIND_OF.values())) == len(KIND_OF)


def test_observe_counts_by_app_kind_and_status_class() -> None:
    config = loads(APPS.encode(), "t")
    m = WorkerMetrics(started=100.0)
    m.install(config)
    m.record(entry("api", "bypass", 200, started=10.0, upstream_ms=2.0), now=10.003)
    m.record(entry("api", "bypass", 502, started=10.0), now=10.2)
    m.record(entry(None, "not_found", 404, started=10.0), now=10.0001)
    m.record(entry("gone", "forward", 200, started=10.0), now=10.0)  # an app no longer configured
    m.record(entry(None, "error", 400, started=10.0), now=10.0)
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


def test_slots_survive_a_reload_that_drops_the_app() -> None:
    m = WorkerMetrics(started=0.0)
    m.install(loads(APPS.encode(), "t"))
    m.record(entry("api", "bypass", 200, started=1.0), now=1.0)
    first = m.config_hash
    m.install(loads(b"", "t"))
    m.record(entry("api", "bypass", 200, started=1.0), now=1.0)
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
