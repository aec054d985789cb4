"""Request ids end to end: a real `edge serve`, a real upstream, real sockets.

The id a client gets back in X-Request-Id is the one the upstream received
(its echo mode returns the raw request) and the one in the access log line,
for proxied requests and for every answer the edge makes itself. A client's
own X-Request-Id is believed only from a trusted proxy, in any spelling it
never reaches the upstream otherwise. Every wait is bounded; no timing is
asserted.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from access_fixtures import ISS, KEYS, KIDS, jwks, mint, public_jwk
from conftest import EdgeProcess, free_port, wait_for, write_config
from upstream_server import Upstream

from edge.http.request_id import SAFE

TIMEOUT = 10.0  # seconds, on every socket and single wait
GENERATED_LENGTH = 16  # edge.http.request_id.new_id
ORIGIN = "https://web.test"

APPS = """
[[issuers]]
iss = "{iss}"
jwks_file = "{jwks}"
algorithms = ["ES256"]

[[apps]]
name = "open"
domains = ["open.test"]
upstream = "{up}"
[[apps.policies]]
name = "anyone"
action = "bypass"
include = [{{ everyone = true }}]

[[apps]]
name = "api"
domains = ["api.test"]
upstream = "{up}"
aud = "api-aud"
[apps.cors]
allowed_origins = ["{origin}"]
allowed_methods = ["GET", "PUT"]
[[apps.policies]]
name = "blocked"
action = "deny"
include = [{{ emails = ["eve@example.com"] }}]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[proxy]
response_timeout = 1.0  # so a stalled upstream's 504 comes at once

[[apps]]
name = "dead"
domains = ["dead.test"]
upstream = "http://127.0.0.1:{dead}"
[[apps.policies]]
name = "anyone"
action = "bypass"
include = [{{ everyone = true }}]
"""


# -- a small client: raw bytes out, responses split by Content-Length --------------------


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    @property
    def rid(self) -> str:
        """The one X-Request-Id (fails on none or several)."""
        [value] = self.all("x-request-id")
        return value


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed; buffered: {self.buf!r}")
        self.buf += chunk

    def response(self, head_only: bool = False) -> Resp:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines)]
        length = 0 if head_only else int(dict(headers).get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Resp(int(status_line.split(" ")[1]), headers, body)


def head(method: str, target: str, host: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upstream_ids(echo: bytes) -> list[bytes]:
    """The X-Request-Id values the upstream received, in any spelling an
    application server may read as that name (`_` as `-`, any case)."""
    request_head = echo.split(b"\r\n\r\n", 1)[0]
    found = []
    for line in request_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower().replace(b"_", b"-") == b"x-request-id":
            found.append(value.strip())
    return found


# -- fixtures -------------------------------------------------------------------------------


@dataclass
class Edge:
    proc: EdgeProcess
    log: Path
    upstream: Upstream

    def call(self, method: str, target: str, host: str, headers: Sequence[tuple[str, str]] = ()) -> Resp:
        with Client(self.proc.port) as c:
            c.send(head(method, target, host, headers))
            return c.response(head_only=method == "HEAD")

    def logged(self, rid: str) -> dict[str, Any]:
        """The access log record naming `rid` (polled: the log is flushed by
        the server's sweep); exactly one."""
        found: list[dict[str, Any]] = []

        def look() -> bool:
            if self.log.exists():
                # Only whole lines: a flush may be under way.
                records = [json.loads(line) for line in self.log.read_text().split("\n")[:-1] if line]
                found[:] = [r for r in records if r["request_id"] == rid]
            return bool(found)

        assert wait_for(look, TIMEOUT), f"no access log record for request id {rid}"
        [record] = found
        return record


def start(directory: Path, up: Upstream, server: str) -> Edge:
    directory.mkdir()
    jwks_path = directory / "jwks.json"
    jwks_path.write_bytes(jwks(public_jwk(KEYS["ES256"], KIDS["ES256"])))
    log = directory / "access.log"
    apps = APPS.format(iss=ISS, jwks=jwks_path, up=up.url, origin=ORIGIN, dead=free_port())
    config = write_config(directory, server=f'access_log = "{log}"\n{server}', extra=apps)
    return Edge(EdgeProcess(config), log, up)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def edge(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """No trusted proxy; names with `_` kept, so only EDGE_OWNED_PREFIXES
    stands between an `X_Request_Id` and the upstream."""
    # Small limits, so 413 and 408 come at once.
    server = "underscores_in_headers = true\nmax_body_bytes = 1000\nheader_timeout = 0.5"
    e = start(tmp_path_factory.mktemp("untrusted") / "edge", upstream, server)
    yield e
    e.proc.stop()


@pytest.fixture(scope="module")
def trusting(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """Loopback is a trusted proxy: the test client's ids may be kept."""
    e = start(tmp_path_factory.mktemp("trusted") / "edge", upstream, 'trusted_proxies = ["127.0.0.0/8"]')
    yield e
    e.proc.stop()


def generated(rid: str) -> bool:
    return len(rid) == GENERATED_LENGTH and SAFE.fullmatch(rid.encode()) is not None


def token(email: str) -> str:
    now = time.time()
    return mint(
        "ES256", iss=ISS, aud=["api-aud"], email=email, exp=now + 3600, iat=now - 5, nbf=now - 5
    ).decode()


# -- proxied requests ---------------------------------------------------------------------------


def test_the_upstream_the_client_and_the_log_see_one_id(edge: Edge) -> None:
    r = edge.call("GET", "/echo/one-id", "open.test")
    assert r.status == 200
    assert generated(r.rid)
    assert upstream_ids(r.body) == [r.rid.encode()]
    record = edge.logged(r.rid)
    assert (record["path"], record["status"], record["app"]) == ("/echo/one-id", 200, "open")


def test_an_upstreams_own_id_is_replaced_by_the_edges(edge: Edge) -> None:
    r = edge.call("GET", "/own-id", "open.test")
    assert r.status == 200
    assert r.all("x-request-id") == [r.rid]  # one, not "upstream-own" beside it
    assert r.rid != "upstream-own" and generated(r.rid)
    assert upstream_ids(r.body) == [r.rid.encode()]
    assert edge.logged(r.rid)["path"] == "/own-id"


@pytest.mark.parametrize(
    "sent",
    [
        [("X-Request-Id", "client-chosen")],
        [("x-request-id", "client-chosen")],
        [("X_Request_Id", "client-chosen")],
        [("x_request_id", "client-chosen"), ("X-REQUEST-ID", "again")],
    ],
    ids=["canonical", "lower", "underscores", "both"],
)
def test_an_untrusted_clients_id_never_reaches_the_upstream(edge: Edge, sent: list[tuple[str, str]]) -> None:
    r = edge.call("GET", "/echo/spelled", "open.test", sent)
    assert r.status == 200
    assert generated(r.rid)
    assert upstream_ids(r.body) == [r.rid.encode()]
    assert b"client-chosen" not in r.body and b"again" not in r.body


def test_pipelined_requests_get_distinct_ids_in_order(edge: Edge) -> None:
    paths = [f"/echo/pipe-{i}" for i in range(4)]
    with Client(edge.proc.port) as c:
        c.send(b"".join(head("GET", p, "open.test") for p in paths))
        responses = [c.response() for _ in paths]
    ids = [r.rid for r in responses]
    assert len(set(ids)) == len(ids)
    for path, r in zip(paths, responses, strict=True):
        assert upstream_ids(r.body) == [r.rid.encode()]
        assert r.body.startswith(f"GET {path} ".encode())
        assert edge.logged(r.rid)["path"] == path


# -- answers the edge makes itself -----------------------------------------------------------------


LOCAL = [
    pytest.param(
        ("GET", "/page", "api.test", [("Sec-Fetch-Mode", "navigate"), ("Accept", "text/html")]),
        302,
        id="302-login",
    ),
    pytest.param(
        (
            "GET",
            "/data",
            "api.test",
            [("Origin", ORIGIN), ("Sec-Fetch-Mode", "cors"), ("Accept", "application/json")],
        ),
        401,
        id="401-fetch",
    ),
    pytest.param(("GET", "/mine", "api.test", "eve"), 403, id="403-denied"),
    pytest.param(("GET", "/nothing", "unknown.test", []), 404, id="404-no-app"),
    pytest.param(
        ("OPTIONS", "/v1", "api.test", [("Origin", ORIGIN), ("Access-Control-Request-Method", "PUT")]),
        None,  # a preflight's 2xx (BEHAVIOUR.md section 4)
        id="preflight",
    ),
    pytest.param(("GET", "/cdn-cgi/edge/health", "open.test", []), 200, id="health"),
    pytest.param(("HEAD", "/cdn-cgi/edge/health", "open.test", []), 200, id="health-head"),
    pytest.param(("GET", "/cdn-cgi/edge/ready", "open.test", []), 200, id="ready"),
    pytest.param(("GET", "/x", "dead.test", []), 502, id="502-dead-upstream"),
    pytest.param(("GET", "/stall-head?t=3", "open.test", []), 504, id="504-stalled-upstream"),
]
# The edge's plain-text errors name the id in their body too (LocalResponse.tagged).
TAGGED = {403, 404, 502, 504}


@pytest.mark.parametrize(("request_", "status"), LOCAL)
def test_every_local_answer_names_its_log_line(edge: Edge, request_: Any, status: int | None) -> None:
    method, target, host, headers = request_
    if headers == "eve":
        headers = [("Cookie", f"CF_Authorization={token('eve@example.com')}")]
    # Twice: a preflight's second answer comes from the compiled preflight
    # cache, and a prebuilt answer must not carry the first one's id.
    first = edge.call(method, target, host, headers)
    second = edge.call(method, target, host, headers)
    for r in (first, second):
        assert r.status == status if status is not None else 200 <= r.status < 300
        assert generated(r.rid)
        assert r.body.endswith(f"\nrequest id: {r.rid}\n".encode()) == (r.status in TAGGED), r.body
        record = edge.logged(r.rid)
        assert (record["method"], record["path"], record["status"]) == (method, target, r.status)
    assert first.rid != second.rid


def test_the_401_json_names_the_id(edge: Edge) -> None:
    r = edge.call("GET", "/json", "api.test", [("Sec-Fetch-Mode", "cors"), ("Accept", "application/json")])
    assert r.status == 401
    assert json.loads(r.body)["request_id"] == r.rid


@pytest.mark.parametrize(
    ("data", "status", "logged_path"),
    [
        (b"GET /frag#x HTTP/1.1\r\nHost: open.test\r\n\r\n", 400, "/frag#x"),
        (b"GET /no-host HTTP/1.1\r\n\r\n", 400, "-"),
        (b"GET /v HTTP/2.0\r\nHost: open.test\r\n\r\n", 505, "/v"),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: open.test\r\n\r\n", 414, None),
        (b"GET /h HTTP/1.1\r\nHost: open.test\r\nX-Pad: " + b"p" * 20000 + b"\r\n\r\n", 431, "/h"),
        (b"POST /big HTTP/1.1\r\nHost: open.test\r\nContent-Length: 5000\r\n\r\n", 413, "/big"),
        (b"GET /slow HTTP/1.1\r\nHost: open.test\r\n", 408, "-"),  # the head never ends
    ],
    ids=["400-fragment", "400-no-host", "505-version", "414-target", "431-head", "413-body", "408-head"],
)
def test_a_refused_request_gets_an_id_too(
    edge: Edge, data: bytes, status: int, logged_path: str | None
) -> None:
    with Client(edge.proc.port) as c:
        c.send(data)
        r = c.response()
    assert r.status == status
    assert generated(r.rid)
    assert r.body.endswith(f"\nrequest id: {r.rid}\n".encode()), r.body
    record = edge.logged(r.rid)
    assert record["status"] == status
    if logged_path is not None:
        assert record["path"] == logged_path


# -- a trusted proxy's ids -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0f8fad5b-d9cb-469f-a165-70867728950e", "lb:42.a_b~c", "x" * 64])
def test_a_trusted_proxys_safe_id_is_kept(trusting: Edge, value: str) -> None:
    r = trusting.call("GET", "/echo/kept", "open.test", [("X-Request-Id", value)])
    assert r.rid == value
    assert upstream_ids(r.body) == [value.encode()]
    assert trusting.logged(value)["path"] == "/echo/kept"
    local = trusting.call("GET", "/nothing", "unknown.test", [("X-Request-Id", value)])
    assert local.status == 404 and local.rid == value


@pytest.mark.parametrize(
    "sent",
    [
        [("X-Request-Id", "x" * 65)],
        [("X-Request-Id", "<script>alert(1)</script>")],
        [("X-Request-Id", "a b")],
        [("X-Request-Id", 'a"b')],
        [("X-Request-Id", "one"), ("X-Request-Id", "two")],
    ],
    ids=["too-long", "html", "space", "quote", "two-fields"],
)
def test_a_trusted_proxys_unsafe_id_is_replaced(trusting: Edge, sent: list[tuple[str, str]]) -> None:
    r = trusting.call("GET", "/echo/replaced", "open.test", sent)
    assert generated(r.rid)
    assert upstream_ids(r.body) == [r.rid.encode()]
    assert trusting.logged(r.rid)["path"] == "/echo/replaced"
