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
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from access_fixtures import EC_KEY, public_jwk
from access_fixtures import jwks as jwks_doc
from conftest import EdgeProcess, read_all, wait_for
from redis_fixture import RedisServer, redis_server  # noqa: F401

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


# -- a JWKS server -------------------------------------------------------------------


class JwksServer:
    """ThreadingHTTPServer on 127.0.0.1 answering every GET with (status, body)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.answer = (status, body)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = owner.answer
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)


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
    # On SIGTERM the edge stops listening at once, so the answer is seen on a
    # connection already open: its request head still arriving keeps the
    # edge draining (an idle keep-alive connection would be closed).
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
