"""`/cdn-cgi/edge/ready` end to end: a real `edge serve`, a real JWKS server on
127.0.0.1, a real redis-server, real SIGTERM.

Every wait is bounded (READY_WAIT, far below anything the edge itself waits
for); no test asserts how long anything took. A jwks_url issuer whose first
fetch failed is retried only after REFETCH_MIN_INTERVAL (30 s, not
configurable), so the move from "no usable keys" to ready is shown by a
second edge whose JWKS server answers well from the start, not by waiting.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from access_fixtures import EC_KEY, public_jwk
from access_fixtures import jwks as jwks_doc
from conftest import EdgeProcess, open_app_toml, read_all, wait_for
from jwks_server import JwksServer
from redis_fixture import RedisServer, redis_server  # noqa: F401
from upstream_server import Upstream

from edge.login.passwords import hash_password

Factory = Callable[..., EdgeProcess]
READY = "/cdn-cgi/edge/ready"
HEALTH = "/cdn-cgi/edge/health"
TIMEOUT = 5.0  # seconds on every client socket
READY_WAIT = 10.0  # seconds any expected change of readiness may take (the edge's own waits are ~1 s)
ISS = "https://keys.test"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.body)
        return parsed


def ask(port: int, method: str = "GET", path: str = READY, host: str = "any.host.test") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, headers={"Host": host, "Origin": "https://app.test"})
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def becomes(port: int, status: int) -> Answer:
    """The readiness answer once it is `status` (or the last one seen at READY_WAIT)."""
    seen: list[Answer] = []
    wait_for(lambda: seen.append(ask(port)) or seen[-1].status == status, READY_WAIT, 0.1)
    return seen[-1]


@pytest.fixture
def jwks_server() -> Iterator[Callable[[int, bytes], JwksServer]]:
    made: list[JwksServer] = []

    def make(status: int, body: bytes) -> JwksServer:
        made.append(JwksServer(status, body))
        return made[-1]

    yield make
    for server in made:
        server.close()


def issuer_toml(url: str) -> str:
    return f'[[issuers]]\niss = "{ISS}"\njwks_url = "{url}"\nalgorithms = ["ES256"]\n'


# -- tests ---------------------------------------------------------------------------


def test_ready_on_a_plain_config(edge_factory: Factory) -> None:
    edge = edge_factory()
    r = ask(edge.port)
    assert r.status == 200
    assert r.json == {"ready": True, "draining": False, "config": "ok", "issuers": {}, "store": "ok"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert not [k for k in r.headers if k.startswith("access-control-")]
    head = ask(edge.port, "HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == r.headers["content-length"]
    health = ask(edge.port, path=HEALTH)
    assert (health.status, health.body) == (200, b"ok\n")  # liveness unchanged


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b"oops"), (200, jwks_doc()), (200, b"not json")],
    ids=["500", "empty key set", "garbage"],
)
def test_an_issuer_without_usable_keys_is_not_ready(
    edge_factory: Factory, jwks_server: Callable[[int, bytes], JwksServer], status: int, body: bytes
) -> None:
    server = jwks_server(status, body)
    edge = edge_factory(extra=issuer_toml(server.url))
    # Not ready before the first fetch, and still not after it failed.
    assert wait_for(lambda: "keys for " + ISS in edge.stderr_text(), READY_WAIT)
    r = ask(edge.port)
    assert r.status == 503
    assert r.json["issuers"] == {ISS: "no usable keys"}
    assert r.json["ready"] is False
    assert r.headers["cache-control"] == "no-store"


def test_an_issuer_is_ready_once_its_jwks_is_fetched(
    edge_factory: Factory, jwks_server: Callable[[int, bytes], JwksServer]
) -> None:
    server = jwks_server(200, jwks_doc(public_jwk(EC_KEY, "ec-1", use="sig")))
    edge = edge_factory(extra=issuer_toml(server.url))
    r = becomes(edge.port, 200)
    assert r.status == 200, edge.stderr_text()
    assert r.json["issuers"] == {ISS: "ok"}


TEAM = """
[team]
host = "auth.localhost"
url = "http://auth.localhost:8443"  # any: the listener's port 0 cannot name it
key_dir = "{key_dir}"
store = "redis"
redis_url = "{redis_url}"

[[team.providers]]
type = "dev"
id = "dev"
users = [{{ email = "alice@example.com", password = "{hash}" }}]
"""


def test_redis_store_outage_makes_it_not_ready(
    edge_factory: Factory,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    extra = TEAM.format(key_dir=tmp_path / "keys", redis_url=redis_server.url, hash=hash_password("pw"))
    edge = edge_factory(extra=extra)
    r = becomes(edge.port, 200)
    assert r.status == 200, edge.stderr_text()
    assert r.json["store"] == "ok"
    assert list(r.json["issuers"].values()) == ["ok"]  # type: ignore[union-attr]  # the built-in key ring

    redis_server.stop()
    r = becomes(edge.port, 503)
    assert r.status == 503, edge.stderr_text()
    assert r.json["store"] == "redis unreachable"

    redis_server.start()
    r = becomes(edge.port, 200)
    assert r.status == 200, edge.stderr_text()
    assert r.json["store"] == "ok"


def test_draining_is_not_ready_at_once(edge_factory: Factory) -> None:
    # Without a shutdown_delay, on SIGTERM the edge stops listening at once,
    # so the answer is seen on a connection already open: its request head
    # still arriving keeps the edge draining (an idle keep-alive connection
    # would be closed).
    edge = edge_factory("header_timeout = 30.0\ndrain_timeout = 20.0")
    with socket.create_connection(("127.0.0.1", edge.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {READY} HTTP/1.1\r\nHost: a\r\n".encode())
        time.sleep(0.2)  # let the edge read the partial head
        edge.signal(signal.SIGTERM)
        assert wait_for(lambda: "draining" in edge.stderr_text(), READY_WAIT)
        sock.sendall(b"\r\n")
        raw = read_all(sock, TIMEOUT)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), raw
    assert b"\r\nconnection: close" in head
    parsed = json.loads(body)
    assert parsed["draining"] is True
    assert parsed["ready"] is False
    assert edge.proc.wait(TIMEOUT) == 0


# -- shutdown_delay: readiness 503 while still serving ---------------------------------

# Longer than any test waits: a test that sees the delay end sent the second signal.
LONG_DELAY = 60.0  # seconds
DELAY_LOG = "shutting down in"  # the line the edge logs when its shutdown delay starts
# Probes of a two-worker edge, each on a new connection: the kernel spreads
# them over the SO_REUSEPORT group, so all going to one worker is a 2**-15 chance.
PROBES = 16


@pytest.fixture
def origin() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


def stopping_json(r: Answer) -> None:
    """The readiness answer of an edge on its way out."""
    assert r.status == 503, r
    assert r.headers["cache-control"] == "no-store"
    assert r.json["ready"] is False
    assert r.json["draining"] is True
    assert r.json["config"] == "ok"  # nothing else is wrong: the body names why


def test_shutdown_delay_serves_as_usual_but_is_not_ready(edge_factory: Factory, origin: Upstream) -> None:
    edge = edge_factory(f"shutdown_delay = {LONG_DELAY}", open_app_toml(origin.url))
    assert ask(edge.port).status == 200
    kept = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=TIMEOUT)
    kept.request("GET", "/status/200", headers={"Host": "app.test"})
    assert kept.getresponse().read() and kept.sock is not None
    opened = kept.sock

    edge.signal(signal.SIGTERM)
    assert wait_for(lambda: DELAY_LOG in edge.stderr_text(), READY_WAIT), edge.stderr_text()
    for _ in range(3):  # each on a new connection: the listeners are open
        stopping_json(ask(edge.port))
        assert ask(edge.port, path=HEALTH).status == 200  # liveness
        proxied = ask(edge.port, path="/status/200", host="app.test")
        assert proxied.status == 200, proxied
        assert proxied.headers.get("connection") != "close"
    # A keep-alive connection opened before the signal carries on as before.
    for path in ("/status/200", READY):
        kept.request("GET", path, headers={"Host": "app.test"})
        r = kept.getresponse()
        r.read()
        assert (r.status, r.will_close) == (200 if path != READY else 503, False)
        assert kept.sock is opened
    # A reload does not make it ready again.
    edge.signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded" in edge.stderr_text(), READY_WAIT), edge.stderr_text()
    stopping_json(ask(edge.port))
    assert "draining" not in edge.stderr_text()  # the drain has not begun

    # A second signal ends the delay (far shorter than LONG_DELAY to wait).
    edge.signal(signal.SIGTERM)
    assert edge.proc.wait(READY_WAIT) == 0
    kept.close()
    text = edge.stderr_text()
    assert "draining" in text and "stopped" in text
    assert text.index(DELAY_LOG) < text.index("draining")
    assert refused(edge.port)


def test_shutdown_delay_ends_in_the_usual_drain(edge_factory: Factory, origin: Upstream) -> None:
    edge = edge_factory("shutdown_delay = 0.5\ndrain_timeout = 30.0", open_app_toml(origin.url))
    # A request in flight through the delay and into the drain.
    with socket.create_connection(("127.0.0.1", edge.port), timeout=TIMEOUT) as held:
        mark = origin.mark()
        held.sendall(b"GET /gate?name=held HTTP/1.1\r\nHost: app.test\r\n\r\n")
        origin.wait_event("request", mark, (b"GET", b"/gate?name=held"))
        edge.signal(signal.SIGINT)
        # After the delay: the drain as without one, listeners closed while
        # the request in flight is still answered.
        assert wait_for(lambda: "draining" in edge.stderr_text(), READY_WAIT), edge.stderr_text()
        assert wait_for(lambda: refused(edge.port), READY_WAIT)
        assert edge.proc.poll() is None
        origin.open_gate("held")
        raw = read_all(held, TIMEOUT)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw
    assert b"\r\nconnection: close" in head.lower()
    assert body == b"through the gate\n"
    assert edge.proc.wait(READY_WAIT) == 0
    text = edge.stderr_text()
    assert text.index(DELAY_LOG) < text.index("draining") < text.index("stopped")


def test_shutdown_delay_with_workers(edge_factory: Factory, origin: Upstream) -> None:
    edge = edge_factory(f"workers = 2\nshutdown_delay = {LONG_DELAY}", open_app_toml(origin.url))
    assert wait_for(lambda: edge.stderr_text().count("listening on") == 2, READY_WAIT)
    workers = [int(m) for m in re.findall(r"worker (\d+) started", edge.stderr_text())]
    assert len(workers) == 2
    # As systemd stops a service (KillMode=control-group) or Ctrl-C a
    # terminal's process group: every process gets the signal, and the
    # workers one more from the supervisor. That is no second signal.
    edge.signal(signal.SIGTERM)
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: edge.stderr_text().count(DELAY_LOG) == 2, READY_WAIT), edge.stderr_text()
    for _ in range(PROBES):
        stopping_json(ask(edge.port))
    assert ask(edge.port, path="/status/200", host="app.test").status == 200
    assert ask(edge.port, path=HEALTH).status == 200
    assert "draining" not in edge.stderr_text()
    # The supervisor passes a second signal on: both workers drain now.
    edge.signal(signal.SIGTERM)
    assert edge.proc.wait(READY_WAIT) == 0
    text = edge.stderr_text()
    assert text.count("stopped") == 2, text
    assert "killing" not in text
    assert refused(edge.port)


def test_workers_are_not_killed_during_the_shutdown_delay(edge_factory: Factory) -> None:
    # A delay longer than drain_timeout plus the supervisor's grace before it
    # kills a stuck worker (edge.runtime.workers.KILL_GRACE, 5 s): the
    # supervisor must wait for the delay too.
    edge = edge_factory("workers = 2\nshutdown_delay = 6.0\ndrain_timeout = 0.5")
    assert wait_for(lambda: edge.stderr_text().count("listening on") == 2, READY_WAIT)
    edge.signal(signal.SIGTERM)
    assert edge.proc.wait(3 * READY_WAIT) == 0
    text = edge.stderr_text()
    assert "killing" not in text, text
    assert text.count("stopped") == 2, text
