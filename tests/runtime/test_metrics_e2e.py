"""/metrics of a real `edge serve` on its own listener, with one worker and
with two (the supervisor sums what each worker counted), scraped by the test
and by a real Prometheus server."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from access_fixtures import EC_KEY, HS_SECRET, ISS, jwks, mint, public_jwk
from conftest import (
    ROOT,
    BodyCountingUpstream,
    EdgeProcess,
    allow_app_toml,
    free_port,
    open_app_toml,
    self_signed_cert,
    wait_for,
    write_config,
)
from jwks_server import JwksServer
from procs import children
from prometheus import Labels, Prometheus, labels, parse_text, prometheus  # noqa: F401
from upstream_server import Upstream

Factory = Callable[..., EdgeProcess]
WAIT = 30.0  # seconds: the most an expected event may take on a loaded box
OPEN = 6  # GETs to the open app (a bypass policy)
UNKNOWN = 3  # GETs to a host no app covers
TOTAL = OPEN + UNKNOWN + 6  # every request traffic() makes
REFUSED = "eve@elsewhere.test"  # a valid token the staff app's deny policy refuses
SAMPLES = dict[tuple[str, Labels], float]


@pytest.fixture
def upstream() -> Iterator[BodyCountingUpstream]:
    up = BodyCountingUpstream()
    yield up
    up.close()


def start(factory: Factory, upstream: BodyCountingUpstream, workers: int) -> tuple[EdgeProcess, int]:
    port = free_port()
    extra = (
        open_app_toml(upstream.url, domains=("app.test",))
        + allow_app_toml("staff", "staff.test", upstream.url)
        + f'[[apps.policies]]\nname = "blocked"\naction = "deny"\ninclude = [{{ emails = ["{REFUSED}"] }}]\n'
        + f'\n[[issuers]]\niss = "{ISS}"\nsecret = "{HS_SECRET}"\nalgorithms = ["HS256"]\n'
        + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    return factory(server=f"workers = {workers}", extra=extra), port


def request(
    port: int, host: str, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request on a fresh connection (so with two workers, either may take it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def traffic(edge: EdgeProcess) -> None:
    """Known requests: what the counters must say afterwards (see `expected`)."""
    for _ in range(OPEN):
        assert request(edge.port, "app.test")[0] == 200
    for _ in range(UNKNOWN - 1):
        assert request(edge.port, "nobody.test")[0] == 404
    # /metrics on a public listener is an ordinary request: here no app covers it.
    status, body = request(edge.port, "nobody.test", "/metrics")
    assert status == 404 and b"edge_requests_total" not in body
    now = time.time()
    aud = [hashlib.sha256(b"staff").hexdigest()]  # the app's tag when it names no aud
    token = mint("HS256", exp=now + 3600, iat=now - 10, nbf=now - 10, aud=aud).decode()
    for _ in range(2):  # the second may be a cache hit (if the same worker takes it)
        assert request(edge.port, "staff.test", headers={"Cookie": f"CF_Authorization={token}"})[0] == 200
    assert request(edge.port, "staff.test", headers={"Accept": "application/json"})[0] == 401
    refused = mint("HS256", exp=now + 3600, iat=now - 10, nbf=now - 10, aud=aud, email=REFUSED).decode()
    assert request(edge.port, "staff.test", headers={"Cookie": f"CF_Authorization={refused}"})[0] == 403
    preflight = {"Origin": "https://web.test", "Access-Control-Request-Method": "PUT"}
    assert request(edge.port, "staff.test", method="OPTIONS", headers=preflight)[0] == 403
    assert request(edge.port, "app.test", "/cdn-cgi/edge/health")[0] == 200


def expected() -> dict[tuple[str, Labels], float]:
    def requests(app: str, kind: str, status: str) -> tuple[str, Labels]:
        return ("edge_requests_total", labels(app=app, kind=kind, status=status))

    return {
        requests("open", "bypass", "2xx"): OPEN,
        requests("", "not_found", "4xx"): UNKNOWN,
        requests("staff", "forward", "2xx"): 2,
        requests("staff", "unauthorized", "4xx"): 1,
        requests("staff", "deny", "4xx"): 1,
        requests("staff", "preflight", "4xx"): 1,
        requests("", "endpoint", "2xx"): 1,
        ("edge_request_duration_seconds_count", labels(app="open", kind="bypass")): OPEN,
        ("edge_upstream_response_head_seconds_count", labels(app="open")): OPEN,
        ("edge_upstream_response_head_seconds_count", labels(app="staff")): 2,
        ("edge_token_verifications_total", labels(result="valid")): 3,
        ("edge_token_verifications_total", labels(result="invalid")): 0,
        ("edge_upstream_failures_total", labels(kind="connect_refused")): 0,
        ("edge_config_reloads_total", labels(result="ok")): 0,
    }


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read().decode()
    finally:
        conn.close()


def samples(port: int) -> SAMPLES:
    status, ctype, body = scrape(port)
    assert status == 200, body
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    return parse_text(body)


def total(got: SAMPLES, name: str) -> float:
    return sum(v for (n, _), v in got.items() if n == name)


@pytest.mark.parametrize("workers", [1, 2])
def test_scrape_sums_known_traffic(
    edge_factory: Factory, upstream: BodyCountingUpstream, workers: int
) -> None:
    edge, port = start(edge_factory, upstream, workers)
    traffic(edge)
    got = samples(port)
    for key, value in expected().items():
        assert got.get(key, 0) == value, (key, got.get(key))
    # Nothing else was counted: every request is in exactly one series.
    assert total(got, "edge_requests_total") == TOTAL
    assert total(got, "edge_token_cache_hits_total") + total(got, "edge_token_cache_misses_total") == 3
    if workers == 1:
        assert got[("edge_token_cache_hits_total", labels())] == 1
    # Per-process gauges, one per worker; the same configuration in each.
    generations = {k: v for k, v in got.items() if k[0] == "edge_config_generation"}
    assert sorted(dict(k[1])["worker"] for k in generations) == [str(i) for i in range(workers)]
    assert set(generations.values()) == {1}
    hashes = {dict(k[1])["hash"] for k in got if k[0] == "edge_config_info"}
    assert len(hashes) == 1
    assert len([k for k in got if k[0] == "edge_build_info"]) == 1
    assert got[("edge_revocation_store_state", labels(state="memory", worker="0"))] == 1
    # The metrics listener answers nothing else.
    assert scrape(port, "/")[0] == 404
    assert scrape(port, "/cdn-cgi/edge/health")[0] == 404


def test_open_connections_gauge(edge_factory: Factory, upstream: BodyCountingUpstream) -> None:
    edge, port = start(edge_factory, upstream, 1)
    held = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=WAIT)
    try:
        held.request("GET", "/", headers={"Host": "app.test"})
        held.getresponse().read()  # kept alive
        assert wait_for(lambda: samples(port)[("edge_open_connections", labels())] == 1, WAIT)
    finally:
        held.close()
    assert wait_for(lambda: samples(port)[("edge_open_connections", labels())] == 0, WAIT)


def test_connections_shed_counted(edge_factory: Factory, upstream: BodyCountingUpstream) -> None:
    """A connection refused at max_connections makes no request (no head is
    read), so it has a counter of its own."""
    port = free_port()
    edge = edge_factory(
        server="max_connections = 1",
        extra=open_app_toml(upstream.url, domains=("app.test",))
        + f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    held = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=WAIT)
    try:
        held.request("GET", "/", headers={"Host": "app.test"})
        held.getresponse().read()  # kept alive: the one connection allowed
        for _ in range(3):
            assert request(edge.port, "app.test")[0] == 503
        got = samples(port)
        assert got[("edge_connections_shed_total", labels())] == 3
        assert got[("edge_requests_total", labels(app="open", kind="bypass", status="2xx"))] == 1
    finally:
        held.close()


def test_upstream_failures_counted(edge_factory: Factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens: connect refused
    port = free_port()
    edge = edge_factory(
        extra=open_app_toml(dead, domains=("app.test",)) + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    for _ in range(3):
        assert request(edge.port, "app.test")[0] == 502
    got = samples(port)
    assert got[("edge_upstream_failures_total", labels(kind="connect_refused"))] == 3
    assert got[("edge_requests_total", labels(app="open", kind="bypass", status="5xx"))] == 3


# Upstream failures made with real sockets, one request each: (host, path,
# the status the client gets (None: the response head came, then the
# connection was cut), the kind label it must count under). Not made here:
# connect_error (an unreachable address needs a route off this box),
# internal (a bug of the edge's), and the errors besides a reset on an
# established connection (counted as `reset` too): test_metrics.py holds
# their labels.
FAILURE_CASES = [
    ("refused.test", "/", 502, "connect_refused"),  # nobody listens
    ("full.test", "/", 502, "connect_timeout"),  # a listener whose backlog is full
    ("tls.test", "/", 502, "tls"),  # an upstream certificate the edge does not trust
    ("up.test", "/stall-head?t=10", 504, "response_timeout"),
    ("up.test", "/reset-head", 502, "reset"),
    ("up.test", "/close-body?wait=close", None, "closed"),
    ("up.test", "/garbage", 502, "bad_response"),
]
UPSTREAM_WAIT = "0.5"  # seconds: the connect and response timeouts here (what a case waits)


def failing(edge: EdgeProcess, host: str, path: str, up: Upstream) -> int | None:
    """The status of one GET on a fresh connection; None when the answer
    was cut off after its head (the upstream closed within the body)."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=WAIT)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        if path.startswith("/close-body"):
            response.read(1000)  # the part the upstream sent
            up.signal("close")
        try:
            response.read()
        except (http.client.IncompleteRead, ConnectionError):
            return None
        return response.status
    finally:
        conn.close()


def test_upstream_failures_counted_by_kind_through_real_sockets(
    edge_factory: Factory, tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path)
    untrusted = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    untrusted.load_cert_chain(cert, key)
    with (
        Upstream() as up,
        Upstream(ssl=untrusted) as tls,
        socket.create_server(("127.0.0.1", 0), backlog=0) as full,
    ):
        # The backlog takes one connection, never accepted; SYNs beyond it are
        # dropped, so a connect waits until its timeout.
        filler = socket.create_connection(full.getsockname())
        port = free_port()
        extra = (
            open_app_toml(f"http://127.0.0.1:{free_port()}", domains=("refused.test",), name="refused")
            + open_app_toml(f"http://127.0.0.1:{full.getsockname()[1]}", domains=("full.test",), name="full")
            + open_app_toml(tls.url, domains=("tls.test",), name="tls")
            + open_app_toml(up.url, domains=("up.test",), name="up")
            + f"[proxy]\nconnect_timeout = {UPSTREAM_WAIT}\nresponse_timeout = {UPSTREAM_WAIT}\n"
            + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        )
        try:
            edge = edge_factory(extra=extra)
            for host, path, status, label in FAILURE_CASES:
                assert failing(edge, host, path, up) == status, (host, path, label)
            got = samples(port)
        finally:
            filler.close()
    failures = {dict(k[1])["kind"]: v for k, v in got.items() if k[0] == "edge_upstream_failures_total"}
    counted = {kind: n for kind, n in failures.items() if n}
    assert counted == {label: 1 for *_, label in FAILURE_CASES}, edge.stderr_text()
    assert "other" not in failures


@pytest.mark.parametrize("workers", [1, 2])
def test_process_start_time_is_each_workers(
    edge_factory: Factory, upstream: BodyCountingUpstream, workers: int
) -> None:
    """A gauge, one sample per worker (its slot), the time that worker
    started: after the edge was launched, before its first scrape answered.
    A restarted worker's slot takes the new process's start time."""
    name = "edge_process_start_time_seconds"
    before = time.time()
    edge, port = start(edge_factory, upstream, workers)

    def starts() -> dict[str, float]:
        status, _, body = scrape(port)
        assert status == 200 and f"# TYPE {name} gauge" in body.splitlines(), body
        return {dict(k[1])["worker"]: v for k, v in parse_text(body).items() if k[0] == name}

    # A worker not yet serving is left out of a scrape: wait for all of them.
    assert wait_for(lambda: len(starts()) == workers, WAIT), edge.stderr_text()
    first = starts()
    after = time.time()
    assert sorted(first) == [str(slot) for slot in range(workers)]
    assert all(before <= t <= after for t in first.values()), (before, first, after)
    if workers == 1:
        return
    killed = time.time()
    os.kill(min(children(edge.proc.pid)), signal.SIGKILL)
    seen: list[dict[str, float]] = []

    def restarted_and_serving() -> bool:
        seen.append(starts())
        return len(seen[-1]) == workers and seen[-1] != first

    assert wait_for(restarted_and_serving, WAIT), edge.stderr_text()
    now, after = seen[-1], time.time()
    restarted = [slot for slot in now if now[slot] != first[slot]]
    assert len(restarted) == 1, (first, now)
    assert killed <= now[restarted[0]] <= after


def test_sums_survive_a_worker_killed_and_replaced(
    edge_factory: Factory, upstream: BodyCountingUpstream
) -> None:
    """Two workers; one is killed (SIGKILL) after a scrape: what it had
    counted stays in the sums while it is gone and after its slot's new
    worker serves, so Prometheus never sees a counter reset."""
    edge, port = start(edge_factory, upstream, 2)
    assert wait_for(lambda: len([k for k in samples(port) if k[0] == "edge_config_generation"]) == 2, WAIT)
    traffic(edge)
    assert wait_for(lambda: total(samples(port), "edge_requests_total") == TOTAL, WAIT)
    before = samples(port)
    workers = sorted(children(edge.proc.pid))
    os.kill(workers[0], signal.SIGKILL)
    seen = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = samples(port)
        seen.append(total(got, "edge_requests_total"))
        pids = children(edge.proc.pid)
        if (
            len(pids) == 2
            and workers[0] not in pids
            and len([k for k in got if k[0] == "edge_config_generation"]) == 2
        ):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the killed worker was not replaced: {edge.stderr_text()}")
    assert set(seen) == {TOTAL}, seen
    got = samples(port)
    for name in (
        "edge_requests_total",
        "edge_request_duration_seconds_count",
        "edge_token_verifications_total",
    ):
        assert total(got, name) == total(before, name), name
    assert request(edge.port, "app.test")[0] == 200
    assert wait_for(lambda: total(samples(port), "edge_requests_total") == TOTAL + 1, WAIT)


@pytest.mark.parametrize("workers", [1, 2])
def test_real_prometheus_scrapes_the_counters(
    edge_factory: Factory,
    upstream: BodyCountingUpstream,
    prometheus: Callable[[str], Prometheus],  # noqa: F811
    workers: int,
) -> None:
    before = time.time()
    edge, port = start(edge_factory, upstream, workers)
    server = prometheus(f"127.0.0.1:{port}")
    assert server.wait_value('up{job="edge"}', 1, WAIT) == 1  # scraped, and the text parsed
    traffic(edge)
    # Wait for a scrape after the last request (an earlier one could show
    # the first requests and not yet the rest).
    assert server.wait_value("sum(edge_requests_total)", TOTAL, WAIT) == TOTAL
    for (name, pairs), value in expected().items():
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(pairs))
        assert server.value(f"sum({name}{{{selector}}})") == value, (name, pairs)
    assert server.value("count(edge_config_generation)") == workers
    # One start time per worker, each since the edge was launched.
    assert server.value("count(edge_process_start_time_seconds)") == workers
    earliest = server.value("min(edge_process_start_time_seconds)")
    latest = server.value("max(edge_process_start_time_seconds)")
    assert earliest is not None and latest is not None and before <= earliest <= latest <= time.time()
    # The buckets make a histogram Prometheus can take quantiles of.
    p99 = server.value(
        'histogram_quantile(0.99, sum by (le) (edge_request_duration_seconds_bucket{app="open"}))'
    )
    assert p99 is not None and 0 < p99 <= 60


def logged(edge: EdgeProcess, word: str, times: int, before: int) -> Callable[[], bool]:
    return lambda: sum(word in line for line in edge.lines) >= before + times


@pytest.mark.parametrize("workers", [1, 2])
def test_reloads_counted_and_generation_per_worker(
    edge_factory: Factory, upstream: BodyCountingUpstream, workers: int
) -> None:
    edge, port = start(edge_factory, upstream, workers)
    first = samples(port)
    hashes = {dict(k[1])["hash"] for k in first if k[0] == "edge_config_info"}
    text = edge.config_path.read_text()
    seen = sum("reloaded" in line for line in edge.lines)
    edge.config_path.write_text(text + open_app_toml(upstream.url, domains=("new.test",), name="new"))
    edge.signal(signal.SIGHUP)
    assert wait_for(logged(edge, "reloaded", workers, seen), WAIT), edge.stderr_text()
    refused = sum("reload refused" in line for line in edge.lines)
    edge.config_path.write_text(text + "[server\n")  # not TOML
    edge.signal(signal.SIGHUP)
    assert wait_for(logged(edge, "reload refused", 1, refused), WAIT), edge.stderr_text()
    assert request(edge.port, "new.test")[0] == 200  # the reloaded config is in force
    got = samples(port)
    assert got[("edge_config_reloads_total", labels(result="ok"))] == 1
    assert got[("edge_config_reloads_total", labels(result="refused"))] == 1
    for slot in range(workers):
        assert got[("edge_config_generation", labels(worker=str(slot)))] == 2
    now_hashes = {dict(k[1])["hash"] for k in got if k[0] == "edge_config_info"}
    assert len(now_hashes) == 1 and now_hashes != hashes
    assert got[("edge_requests_total", labels(app="new", kind="bypass", status="2xx"))] == 1


@pytest.mark.parametrize("good", [True, False])
def test_jwks_fetches_keys_held_and_age(edge_factory: Factory, good: bool) -> None:
    answer = (200, jwks(public_jwk(EC_KEY, "ec-1", use="sig"))) if good else (500, b"oops")
    server = JwksServer(*answer)
    try:
        port = free_port()
        issuer = f'[[issuers]]\niss = "{ISS}"\njwks_url = "{server.url}"\nalgorithms = ["ES256"]\n'
        edge_factory(extra=issuer + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        fetched = ("edge_jwks_fetches_total", labels(issuer=ISS, result="ok" if good else "error"))
        assert wait_for(lambda: samples(port).get(fetched, 0) >= 1, WAIT)
        got = samples(port)
        assert got[("edge_jwks_keys", labels(issuer=ISS, worker="0"))] == (1 if good else 0)
        age = got.get(("edge_jwks_last_fetch_age_seconds", labels(issuer=ISS, worker="0")))
        if good:
            assert age is not None and age >= 0
        else:
            assert age is None  # never fetched well: no age to tell
    finally:
        server.close()


def test_open_tunnels_gauge(edge_factory: Factory) -> None:
    from upstream_server import Upstream
    from websockets.sync.client import connect

    with Upstream() as ws_upstream:
        port = free_port()
        app = open_app_toml(ws_upstream.url, domains=("127.0.0.1",))
        edge = edge_factory(extra=app + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        tunnels = ("edge_open_tunnels", labels())
        assert samples(port)[tunnels] == 0
        with connect(f"ws://127.0.0.1:{edge.port}/ws", open_timeout=WAIT, close_timeout=WAIT) as ws:
            ws.send("hello")
            assert ws.recv(timeout=WAIT) == "hello"
            assert samples(port)[tunnels] == 1
        assert wait_for(lambda: samples(port)[tunnels] == 0, WAIT)
        got = samples(port)
        assert got[("edge_requests_total", labels(app="open", kind="bypass", status="1xx"))] == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_address_in_use_fails_the_start(tmp_path: Path, workers: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"workers = {workers}", f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        done = subprocess.run(
            [sys.executable, "-m", "edge", "serve", "-c", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"edge: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_are_served_while_draining(
    edge_factory: Factory, upstream: BodyCountingUpstream, workers: int
) -> None:
    """A drain is when an operator most wants to watch the edge: /metrics
    answers until the last request in flight is done (here: a request head
    still arriving keeps the drain going)."""
    port = free_port()
    extra = open_app_toml(upstream.url, domains=("app.test",)) + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    server = f"workers = {workers}\nheader_timeout = 30.0\ndrain_timeout = 20.0"
    edge = edge_factory(server=server, extra=extra)
    assert request(edge.port, "app.test")[0] == 200
    assert wait_for(lambda: total(samples(port), "edge_requests_total") == 1, WAIT)
    with socket.create_connection(("127.0.0.1", edge.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        time.sleep(0.2)  # let a worker read the partial head
        edge.signal(signal.SIGTERM)
        assert wait_for(lambda: "draining" in edge.stderr_text(), WAIT)
        # Scraped before the drain, so with two workers the count stays
        # even if the worker that made it has gone (SupervisorMetrics.retired).
        assert total(samples(port), "edge_requests_total") == 1
        sock.sendall(b"\r\n")
        sock.settimeout(WAIT)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert edge.proc.wait(WAIT) == 0
