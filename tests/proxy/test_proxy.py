"""The streaming reverse proxy, end to end: real sockets through `edge serve`.

Upstreams: tests/support/upstream_server.py (modes by path) and, when installed, nginx.
Every forwarded request the upstream echoes back is re-parsed strictly with
h11 and compared field by field. No test asserts a timing; the "slow" cases
are driven by small configured timeouts or by signals from the test.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
from conftest import EdgeProcess, open_app_toml, self_signed_cert, wait_for, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from procs import vm_kib
from proxy_edge import build, closed_port, proxy_toml
from required_tools import missing
from upstream_server import MIB, Upstream, payload, payload_sha256

NGINX = "/usr/sbin/nginx"
TIMEOUT = 10.0  # seconds, on every client socket
BIG = 100 * MIB
RSS_BUDGET = 64 * MIB
Headers = list[tuple[bytes, bytes]]
XFF = [
    (b"x-forwarded-for", b"127.0.0.1"),
    (b"x-forwarded-proto", b"http"),
    (b"x-forwarded-host", b"app.test"),
]


# -- helpers -------------------------------------------------------------------


def rid(r: Resp) -> tuple[bytes, bytes]:
    """The X-Request-Id field the upstream must have received for the
    request answered by `r`: the one id the client got back (the edge sets
    it after X-Forwarded-*, before the framing fields)."""
    [value] = [v for k, v in r.headers if k == b"x-request-id"]
    return (b"x-request-id", value)


def chunked(pieces: list[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n" + trailers + b"\r\n"


@dataclass
class Resp:
    status: int
    headers: Headers
    body: bytes
    informational: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        return b", ".join(values) if values else None

    def names(self) -> set[bytes]:
        return {k for k, _ in self.headers}


class Client:
    """A raw client connection that reads responses with h11, one at a time
    (so pipelined responses can be read in order)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        return self.sock.recv(1 << 20)

    def response(
        self,
        method: bytes = b"GET",
        on_head: Callable[[h11.Response], None] | None = None,
        on_data: Callable[[bytes], None] | None = None,
    ) -> Resp:
        """Read one response. Raises h11.RemoteProtocolError if the connection
        ends before the response does (an aborted body)."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        infos: list[int] = []
        head: h11.Response | None = None
        body: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.recv())
            elif isinstance(event, h11.InformationalResponse):
                infos.append(event.status_code)
            elif isinstance(event, h11.Response):
                head = event
                if on_head is not None:
                    on_head(event)
            elif isinstance(event, h11.Data):
                if on_data is not None:
                    on_data(bytes(event.data))
                else:
                    body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        self.buf = conn.trailing_data[0] + self.buf
        assert head is not None
        return Resp(head.status_code, list(head.headers), b"".join(body), infos)

    def exchange(self, request: bytes, method: bytes = b"GET") -> Resp:
        self.send(request)
        return self.response(method)

    def closed_by_peer(self) -> bool:
        """True if the peer has closed (EOF or reset) with nothing more to read."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def fetch(port: int, request: bytes, method: bytes = b"GET") -> Resp:
    with Client(port) as c:
        return c.exchange(request, method)


def forwarded(raw: bytes) -> tuple[h11.Request, bytes]:
    """Re-parse what the upstream received, strictly, as one whole request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    request = conn.next_event()
    assert isinstance(request, h11.Request), request
    body = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body.append(bytes(event.data))
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    assert conn.trailing_data == (b"", False), "bytes after the request"
    return request, b"".join(body)


def assert_serving(port: int) -> None:
    """The edge still answers, on a fresh connection."""
    r = fetch(port, build("GET", "/cdn-cgi/edge/health"))
    assert r.status == 200


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up
    assert not up.errors, up.errors


@dataclass
class Edge:
    proc: EdgeProcess
    log: Path

    @property
    def port(self) -> int:
        return self.proc.port

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


def start_edge(directory: Path, upstream: str, **settings: float | str) -> Edge:
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "access.log"
    config = write_config(directory, server=f'access_log = "{log}"', extra=proxy_toml(upstream, **settings))
    return Edge(EdgeProcess(config), log)


@pytest.fixture(scope="module")
def edge(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    e = start_edge(tmp_path_factory.mktemp("edge"), upstream.url, response_timeout=10.0, idle_timeout=10.0)
    yield e
    e.proc.stop()


@pytest.fixture
def own_edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    """An edge of the test's own (for settings or counts the shared one can't give)."""
    started: list[Edge] = []

    def start(upstream: str, **settings: float | str) -> Edge:
        e = start_edge(tmp_path / f"edge{len(started)}", upstream, **settings)
        started.append(e)
        return e

    yield start
    for e in started:
        e.proc.stop()


# -- the forwarded request -------------------------------------------------------

SPOOFING = [
    ("User-Agent", "edge-test"),
    ("Accept", "*/*"),
    ("Connection", "keep-alive, X-Hop"),
    ("X-Hop", "secret"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Upgrade", "h2c"),
    ("Cf-Access-Jwt-Assertion", "forged"),
    ("Cf-Access-Authenticated-User-Email", "ceo@example.com"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("Cookie", "theme=dark; CF_Authorization=stolen.jwt.value; lang=en"),
]
# What the upstream gets for SPOOFING (Host: app.test, peer 127.0.0.1).
CLEAN = [
    (b"host", b"app.test"),
    (b"user-agent", b"edge-test"),
    (b"accept", b"*/*"),
    (b"cookie", b"theme=dark; lang=en"),
    *XFF,
]


def test_get_forwarded_head_exact(edge: Edge) -> None:
    r = fetch(edge.port, build("GET", "/echo/a?b=c&d=%20e", SPOOFING))
    assert r.status == 200
    req, body = forwarded(r.body)
    assert (req.method, req.target, req.http_version) == (b"GET", b"/echo/a?b=c&d=%20e", b"1.1")
    assert list(req.headers) == [*CLEAN, rid(r)]
    assert body == b""
    assert r.body.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("upgrade", ["h2c", "H2C", "websocket, h2c", "h2c/1"])
def test_h2c_upgrade_is_never_offered_upstream(edge: Edge, upgrade: str) -> None:
    # An upstream that switched to HTTP/2 cleartext would take any number of
    # requests, for any path, inside a tunnel authorised once for this one
    # ("h2c smuggling"): the edge forwards the request as a plain one.
    head = [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", upgrade),
        ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
    ]
    r = fetch(edge.port, build("GET", "/echo", head))
    assert r.status == 200
    req, _ = forwarded(r.body)
    assert list(req.headers) == [(b"host", b"app.test"), *XFF, rid(r)]


def test_post_content_length_forwarded(edge: Edge) -> None:
    data = bytes(range(256)) * 40
    r = fetch(
        edge.port,
        build(
            "POST", "/echo", [*SPOOFING, ("Content-Type", "x/y"), ("Content-Length", str(len(data)))], data
        ),
    )
    req, body = forwarded(r.body)
    assert req.method == b"POST"
    assert list(req.headers) == [
        *CLEAN[:4],
        (b"content-type", b"x/y"),
        *XFF,
        rid(r),
        (b"content-length", b"10240"),
    ]
    assert body == data


def test_chunked_upload_forwarded(edge: Edge) -> None:
    pieces = [b"hello", b" ", b"x" * 70000, b"world"]
    raw = chunked(pieces, trailers=b"X-Sum: 1\r\n").replace(b"5\r\nhello", b"5;ext=1\r\nhello", 1)
    head = [("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum"), ("TE", "trailers")]
    r = fetch(edge.port, build("PUT", "/echo/chunked", head, raw))
    req, body = forwarded(r.body)
    assert list(req.headers) == [(b"host", b"app.test"), *XFF, rid(r), (b"transfer-encoding", b"chunked")]
    assert body == b"".join(pieces)
    assert b"X-Sum" not in r.body and b"ext=1" not in r.body


def test_empty_body_post(edge: Edge) -> None:
    r = fetch(edge.port, build("POST", "/echo", [("Content-Length", "0")]))
    req, body = forwarded(r.body)
    assert list(req.headers) == [(b"host", b"app.test"), *XFF, rid(r), (b"content-length", b"0")]
    assert body == b""


def test_pipelined_requests(edge: Edge) -> None:
    with Client(edge.port) as c:
        c.send(
            build("GET", "/echo/1")
            + build("POST", "/echo/2", [("Content-Length", "3")], b"two")
            + build("PUT", "/echo/3", [("Transfer-Encoding", "chunked")], chunked([b"th", b"ree"]))
            + build("HEAD", "/status/200")
            + build("GET", "/echo/5", [("Connection", "close")])
        )
        got = [c.response() for _ in range(3)]
        head = c.response(b"HEAD")
        last = c.response()
        assert c.closed_by_peer()
    parsed = [forwarded(r.body) for r in [*got, last]]
    assert [req.target for req, _ in parsed] == [b"/echo/1", b"/echo/2", b"/echo/3", b"/echo/5"]
    assert [body for _, body in parsed] == [b"", b"two", b"three", b""]
    assert (head.status, head.body, head.header(b"content-length")) == (200, b"", b"12")
    # One upstream connection served them all, one after another.
    conns = {r.header(b"x-conn") for r in [*got, head, last]}
    assert len(conns) == 1
    # Connection: close is the client's business: not forwarded.
    assert list(parsed[-1][0].headers) == [(b"host", b"app.test"), *XFF, rid(last)]
    # Each request its own id, the upstream's copy the client's.
    assert len({rid(r) for r in [*got, head, last]}) == 5
    assert [[f for f in req.headers if f[0] == b"x-request-id"] for req, _ in parsed] == [
        [rid(r)] for r in [*got, last]
    ]


def test_keep_alive_reuses_upstream_connection(edge: Edge, upstream: Upstream) -> None:
    seen = []
    for _ in range(2):  # two client connections, sequential, share the pool
        with Client(edge.port) as c:
            for i in range(5):
                r = c.exchange(build("GET", f"/echo/{i}"))
                assert r.status == 200 and forwarded(r.body)[0].target == f"/echo/{i}".encode()
                seen.append((r.header(b"x-conn"), int(r.header(b"x-served") or -1)))
    assert len({conn for conn, _ in seen}) == 1, seen
    served = [n for _, n in seen]
    assert served == sorted(served) and len(set(served)) == 10


# More requests at once than the old default max_idle (32) kept: a burst of
# this size must not close connections the next burst then opens again.
BURST = 40


def requests_since(upstream: Upstream, mark: int) -> int:
    return sum(1 for kind, _ in upstream.events[mark:] if kind == "request")


def test_a_burst_reuses_its_upstream_connections(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    """With the default pool settings, BURST requests in flight at once need
    BURST upstream connections; once they are answered, all of them wait in
    the pool, and a second burst of the same size opens none."""
    e = own_edge(upstream.url)
    before = upstream.accepted
    clients = [Client(e.port) for _ in range(BURST)]
    try:
        for burst in ("burst-1", "burst-2"):
            mark = upstream.mark()
            for c in clients:
                c.send(build("GET", f"/gate?name={burst}"))
            # Every request is at the upstream, each on a connection of its own.
            assert wait_for(lambda since=mark: requests_since(upstream, since) == BURST)
            upstream.open_gate(burst)
            assert all(c.response().status == 200 for c in clients)
    finally:
        for c in clients:
            c.close()
    assert upstream.accepted - before == BURST


def test_http10_request_without_host_matches_no_application(edge: Edge, upstream: Upstream) -> None:
    """No Host, no application: refused locally, never forwarded by accident."""
    with Client(edge.port) as c:
        r = c.exchange(build("GET", "/echo/old", [("Accept", "*/*")], host="", version="1.0"))
        assert c.closed_by_peer()
    assert r.status == 404


def test_connection_naming_host_keeps_host(edge: Edge) -> None:
    r = fetch(edge.port, build("GET", "/echo/c", [("Connection", "host")]))
    assert r.status == 200
    assert list(forwarded(r.body)[0].headers) == [(b"host", b"app.test"), *XFF, rid(r)]


def test_absolute_form_target_forwarded_in_origin_form(edge: Edge) -> None:
    r = fetch(edge.port, build("GET", "http://app.test/echo/abs?q=1", [("Accept", "*/*")]))
    req, _ = forwarded(r.body)
    assert req.target == b"/echo/abs?q=1"
    assert list(req.headers) == [(b"host", b"app.test"), (b"accept", b"*/*"), *XFF, rid(r)]


# -- the response, re-framed ---------------------------------------------------------


def test_response_framing(edge: Edge) -> None:
    with Client(edge.port) as c:
        r = c.exchange(build("GET", "/status/200"))
        assert (r.status, r.header(b"content-length"), r.body) == (200, b"12", b"status body\n")
        assert r.header(b"transfer-encoding") is None
        r = c.exchange(build("GET", "/stream?n=4&size=3"))
        assert (r.header(b"transfer-encoding"), r.body) == (b"chunked", b"0..1..2..3..")
        assert r.header(b"content-length") is None
        r = c.exchange(build("GET", "/close-delimited"))
        assert (r.header(b"transfer-encoding"), r.body) == (b"chunked", b"until the end\n")
        r = c.exchange(build("HEAD", "/status/200"), b"HEAD")
        assert (r.status, r.header(b"content-length"), r.body) == (200, b"12", b"")
        for code in (204, 304):
            r = c.exchange(build("GET", f"/status/{code}"))
            assert (r.status, r.body) == (code, b"")
            assert r.header(b"transfer-encoding") is None
        # After all of that, the framing is still in step: the next one parses.
        r = c.exchange(build("GET", "/echo/after"))
        assert forwarded(r.body)[0].target == b"/echo/after"


def test_response_to_http10_client_is_close_delimited(edge: Edge) -> None:
    with Client(edge.port) as c:
        c.send(build("GET", "/stream?n=3&size=2", version="1.0"))
        raw = b""
        while chunk := c.sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert body == b"0.1.2."


def test_response_hop_by_hop_removed(edge: Edge) -> None:
    with Client(edge.port) as c:
        r = c.exchange(build("GET", "/hop"))
        assert (r.status, r.body, r.header(b"x-kept")) == (200, b"hop\n", b"yes")
        assert not r.names() & {
            b"connection",
            b"x-hop",
            b"keep-alive",
            b"proxy-thing",
            b"upgrade",
            b"trailer",
        }
        # The upstream's Connection: close ended its own connection, not ours.
        assert c.exchange(build("GET", "/status/200")).status == 200


def test_response_with_length_and_chunked(edge: Edge) -> None:
    with Client(edge.port) as c:
        r = c.exchange(build("GET", "/cl-te"))
        assert (r.status, r.body) == (200, b"hello world")
        assert r.header(b"content-length") is None
        assert c.exchange(build("GET", "/status/200")).status == 200


# -- the pool: stale connections ----------------------------------------------------


def test_stale_pooled_connection_is_retried_once(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    e = own_edge(upstream.url)
    before, mark = upstream.accepted, upstream.mark()
    with Client(e.port) as c:
        first = c.exchange(build("GET", "/echo/first"))
        # The pooled connection is dropped by the upstream as the request
        # arrives: the edge must retry the GET on a fresh connection.
        r = c.exchange(build("GET", "/drop-if-reused"))
        assert (r.status, r.body) == (200, b"fresh\n")
        assert upstream.wait_event("dropped", mark) == int(first.header(b"x-conn") or 0)
        again = c.exchange(build("GET", "/echo/again"))
    # ... and the retried exchange left its connection reusable.
    assert again.header(b"x-conn") == r.header(b"x-conn")
    assert upstream.accepted - before == 2


def test_stale_connection_not_retried_for_post(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    e = own_edge(upstream.url)
    with Client(e.port) as c:
        assert c.exchange(build("GET", "/echo/first")).status == 200
        r = c.exchange(build("POST", "/drop-if-reused", [("Content-Length", "2")], b"hi"))
    assert r.status == 502
    assert_serving(e.port)


def test_upstream_closing_idle_connections(edge: Edge) -> None:
    # Whether the edge sees the close before reusing the connection or only
    # after sending on it, every GET succeeds.
    with Client(edge.port) as c:
        for _ in range(20):
            r = c.exchange(build("GET", "/close-after"))
            assert (r.status, r.body) == (200, b"then closed\n")


def test_bytes_after_a_response_are_never_served_to_the_next_request(edge: Edge) -> None:
    assert fetch(edge.port, build("GET", "/extra")).body == b"ok\n"
    # Whichever pooled connection the edge picks, the next answers are real.
    for i in range(3):
        with Client(edge.port) as c:
            r = c.exchange(build("POST", f"/echo/next-{i}", [("Content-Length", "4")], b"next"))
        assert r.header(b"x-smuggled") is None
        assert forwarded(r.body)[0].target == f"/echo/next-{i}".encode()


def test_informational_responses_skipped(edge: Edge) -> None:
    with Client(edge.port) as c:
        r = c.exchange(build("GET", "/informational"))
        assert (r.status, r.body) == (200, b"after 103\n")
        assert c.exchange(build("GET", "/status/200")).status == 200


# -- https upstreams ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Path]]:
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with Upstream(ssl=ctx) as up:
        yield up, cert
    assert not up.errors, up.errors


def test_https_upstream_verified(own_edge: Callable[..., Edge], tls_upstream: tuple[Upstream, Path]) -> None:
    up, cert = tls_upstream
    e = own_edge(up.url, ca_file=f'"{cert}"')
    with Client(e.port) as c:
        r = c.exchange(build("POST", "/echo/tls", [("Content-Length", "3")], b"tls"))
        again = c.exchange(build("GET", "/echo/tls-again"))
    req, body = forwarded(r.body)
    assert list(req.headers) == [(b"host", b"app.test"), *XFF, rid(r), (b"content-length", b"3")]
    assert body == b"tls"
    assert again.header(b"x-conn") == r.header(b"x-conn")  # TLS connections are pooled too


@pytest.mark.parametrize(("verify", "status"), [("true", 502), ("false", 200)])
def test_https_upstream_unknown_ca(
    own_edge: Callable[..., Edge], tls_upstream: tuple[Upstream, Path], verify: str, status: int
) -> None:
    up, _ = tls_upstream
    e = own_edge(up.url, verify_tls=verify)
    assert fetch(e.port, build("GET", "/echo/x")).status == status
    assert_serving(e.port)


def test_https_upstream_that_speaks_plain_http(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    """An https:// upstream URL pointed at a plain-HTTP server: the server
    closes during the handshake. That is a TLS failure, and the log says
    what to check, not an empty error."""
    e = own_edge(upstream.url.replace("http://", "https://"))
    assert fetch(e.port, build("GET", "/echo/x")).status == 502
    assert wait_for(lambda: "TLS handshake" in e.proc.stderr_text()), e.proc.stderr_text()
    line = next(x for x in e.proc.stderr_text().splitlines() if "TLS handshake" in x)
    assert "does the upstream speak TLS?" in line and ": :" not in line, line
    assert_serving(e.port)


# -- big bodies, streamed --------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upload_100_mib(own_edge: Callable[..., Edge], upstream: Upstream, framing: str) -> None:
    e = own_edge(upstream.url)
    pid = e.proc.proc.pid
    assert fetch(e.port, build("GET", "/echo/warm")).status == 200
    hwm = vm_kib(pid, "VmHWM")
    digest = hashlib.sha256()
    with Client(e.port) as c:
        framing_header = (
            ("Content-Length", str(BIG)) if framing == "length" else ("Transfer-Encoding", "chunked")
        )
        c.send(build("POST", "/sink", [framing_header]))
        for piece in payload(BIG, 1 * MIB):
            digest.update(piece)
            c.send(piece if framing == "length" else b"%x\r\n%s\r\n" % (len(piece), piece))
        if framing == "chunked":
            c.send(b"0\r\n\r\n")
        r = c.response()
    assert r.status == 200
    assert json.loads(r.body) == {"sha256": digest.hexdigest(), "bytes": BIG}
    growth = (vm_kib(pid, "VmHWM") - hwm) * 1024
    assert growth < RSS_BUDGET, f"edge peak RSS grew by {growth / MIB:.1f} MiB"


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_download_100_mib(own_edge: Callable[..., Edge], upstream: Upstream, framing: str) -> None:
    e = own_edge(upstream.url)
    pid = e.proc.proc.pid
    assert fetch(e.port, build("GET", "/echo/warm")).status == 200
    hwm = vm_kib(pid, "VmHWM")
    digest = hashlib.sha256()
    count = 0

    def take(data: bytes) -> None:
        nonlocal count
        digest.update(data)
        count += len(data)

    query = "&chunked=1" if framing == "chunked" else ""
    with Client(e.port) as c:
        c.send(build("GET", f"/download?size={BIG}{query}"))
        r = c.response(on_data=take)
    assert r.status == 200
    if framing == "length":
        assert r.header(b"content-length") == str(BIG).encode()
    else:
        assert r.header(b"transfer-encoding") == b"chunked"
    assert count == BIG
    assert digest.hexdigest() == payload_sha256(BIG)
    growth = (vm_kib(pid, "VmHWM") - hwm) * 1024
    assert growth < RSS_BUDGET, f"edge peak RSS grew by {growth / MIB:.1f} MiB"


# -- Expect: 100-continue -------------------------------------------------------------


def test_expect_100_continue(edge: Edge) -> None:
    with Client(edge.port) as c:
        c.send(build("POST", "/echo/expect", [("Content-Length", "5"), ("Expect", "100-continue")]))
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = c.sock.recv(4096)
            assert chunk, "closed before 100 Continue"
            got += chunk
        interim, _, c.buf = got.partition(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 ")
        c.send(b"hello")
        r = c.response(b"POST")
    assert r.status == 200
    req, body = forwarded(r.body)
    assert list(req.headers) == [(b"host", b"app.test"), *XFF, rid(r), (b"content-length", b"5")]
    assert body == b"hello"


# -- upstream failures ---------------------------------------------------------------


def test_upstream_refused_is_502(own_edge: Callable[..., Edge]) -> None:
    e = own_edge(f"http://127.0.0.1:{closed_port()}")
    assert fetch(e.port, build("GET", "/")).status == 502
    r = fetch(e.port, build("POST", "/", [("Content-Length", "4")], b"body"))
    assert r.status == 502
    # A client waiting for 100 Continue gets the 502 instead, and is not
    # asked for its body.
    with Client(e.port) as c:
        r = c.exchange(build("PUT", "/", [("Content-Length", "4"), ("Expect", "100-continue")]))
        assert (r.status, r.informational) == (502, [])
        assert c.closed_by_peer()
    assert_serving(e.port)


@pytest.mark.parametrize("mode", ["/reset-head", "/garbage"])
def test_upstream_broken_before_head_is_502(edge: Edge, mode: str) -> None:
    with Client(edge.port) as c:
        r = c.exchange(build("GET", mode))
        assert r.status == 502
        assert c.exchange(build("GET", "/status/200")).status == 200


def test_upstream_stall_before_head_is_504(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    e = own_edge(upstream.url, response_timeout=0.5)
    mark = upstream.mark()
    with Client(e.port) as c:
        r = c.exchange(build("GET", "/stall-head?t=20"))
        assert r.status == 504
        assert c.exchange(build("GET", "/status/200")).status == 200
    upstream.wait_event("stall-closed", mark)  # the edge gave up on the upstream connection too


def test_connect_timeout_is_502(own_edge: Callable[..., Edge]) -> None:
    # No unroutable address on loopback: a listener whose accept queue is full
    # drops new SYNs, so a connect to it hangs.
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            s = socket.socket()
            fillers.append(s)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("cannot make a loopback connect hang here (the listen backlog does not fill)")
        except TimeoutError:
            pass
        finally:
            probe.close()
        e = own_edge(f"http://127.0.0.1:{port}", connect_timeout=0.5)
        r = fetch(e.port, build("GET", "/"))
        assert r.status == 502
        assert_serving(e.port)
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.parametrize("mode", ["reset-body", "close-body"])
def test_upstream_dies_mid_body_aborts_client(edge: Edge, upstream: Upstream, mode: str) -> None:
    name = f"{mode}-go"
    heads = []
    with Client(edge.port) as c:
        c.send(build("GET", f"/{mode}?wait={name}"))

        def on_head(head: h11.Response) -> None:
            heads.append(head.status_code)
            upstream.signal(name)

        with pytest.raises((h11.RemoteProtocolError, ConnectionResetError)):
            c.response(on_head=on_head)
    assert heads == [200]
    assert_serving(edge.port)


def test_upstream_stall_mid_body_aborts_client(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    e = own_edge(upstream.url, idle_timeout=0.5)
    mark = upstream.mark()
    with Client(e.port) as c:
        c.send(build("GET", "/stall-body?t=20"))
        with pytest.raises((h11.RemoteProtocolError, ConnectionResetError)):
            c.response()
    upstream.wait_event("stall-closed", mark)
    assert_serving(e.port)


def test_client_abort_mid_upload(edge: Edge, upstream: Upstream) -> None:
    mark = upstream.mark()
    c = Client(edge.port)
    c.send(build("POST", "/sink", [("Content-Length", str(10 * MIB))]))
    c.send(b"u" * MIB)
    c.close()
    assert 0 <= int(upstream.wait_event("sink-closed", mark)) < 10 * MIB  # type: ignore[call-overload]
    assert_serving(edge.port)
    assert fetch(edge.port, build("GET", "/status/200")).status == 200


def test_client_gone_while_waiting_closes_upstream(edge: Edge, upstream: Upstream) -> None:
    mark = upstream.mark()
    with Client(edge.port) as c:
        c.send(build("GET", "/stall-head?t=20"))
        conn = upstream.wait_event("stall-start", mark)
    upstream.wait_event("stall-closed", mark, value=conn)
    assert_serving(edge.port)


def test_upstream_reset_before_reading_upload_is_502(edge: Edge) -> None:
    data = b"r" * (64 * 1024)
    with Client(edge.port) as c:
        c.send(build("POST", "/reset-early", [("Content-Length", str(len(data)))], data))
        try:
            r = c.response(b"POST")
        except ConnectionResetError:
            pass  # the edge closed while the client still sent: allowed, never a fake 200
        else:
            assert r.status == 502
    assert_serving(edge.port)


def test_upstream_answers_before_the_upload_ends(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    # The upstream stops reading (the edge's write buffer towards it fills and
    # client reading pauses), then answers 413 without reading the rest. The
    # client gets the 413, and the edge, no longer forwarding, reads the rest
    # of the body again (and closes: far more than it would drain).
    e = own_edge(upstream.url)
    total = 64 * MIB
    sent = [0]
    mark = upstream.mark()
    with Client(e.port) as c:
        c.send(build("POST", f"/early?after={MIB}&wait=early-1", [("Content-Length", str(total))]))

        def send_body() -> None:
            with contextlib.suppress(OSError):
                for piece in payload(total, 64 * 1024):
                    c.sock.sendall(piece)
                    sent[0] += len(piece)

        sender = threading.Thread(target=send_body)
        sender.start()
        try:
            # Wait until the upload is stuck (everything in between is full).
            last = -1
            for _ in range(50):
                if sent[0] == last and sent[0] > MIB:
                    break
                last = sent[0]
                time.sleep(0.2)
            upstream.signal("early-1")
            r = c.response(b"POST")
            assert (r.status, r.body) == (413, b"too big\n")
            assert c.closed_by_peer()
        finally:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)  # unblocks the sender, if still sending
            sender.join(TIMEOUT)
    assert sent[0] < total
    upstream.wait_event("early-closed", mark)
    assert_serving(e.port)


def test_pool_idle_timeout_closes_idle_connections(own_edge: Callable[..., Edge], upstream: Upstream) -> None:
    e = own_edge(upstream.url, pool_idle_timeout=0.2)
    mark = upstream.mark()
    with Client(e.port) as c:
        first = c.exchange(build("GET", "/echo/1")).header(b"x-conn")
        assert first is not None
        upstream.wait_event("conn-closed", mark, value=int(first))
        second = c.exchange(build("GET", "/echo/2")).header(b"x-conn")
    assert second != first


def test_slow_upstream_does_not_block_other_clients(edge: Edge, upstream: Upstream) -> None:
    with Client(edge.port) as slow:
        slow.send(build("GET", "/sse?wait=sse-other"))
        slow.buf = slow.sock.recv(65536)
        assert slow.buf.startswith(b"HTTP/1.1 200 ")
        for i in range(5):
            r = fetch(edge.port, build("GET", f"/echo/other-{i}"))
            assert r.status == 200
        upstream.signal("sse-other")
        r = slow.response()  # the rest of the stream: complete
    assert r.body.endswith(b"data: last\n\n")


def test_options_asterisk_answered_locally(edge: Edge) -> None:
    """`OPTIONS *` names no path, so no application: the edge answers it."""
    r = fetch(edge.port, build("OPTIONS", "*"))
    assert r.status == 404
    assert r.body == b"not found: no application here\nrequest id: %s\n" % r.header(b"x-request-id")


# -- WebSocket, SSE, access log --------------------------------------------------------------


def test_websocket_echo(edge: Edge, upstream: Upstream) -> None:
    from websockets.sync.client import connect

    mark = upstream.mark()
    with connect(
        f"ws://127.0.0.1:{edge.port}/ws", open_timeout=TIMEOUT, close_timeout=TIMEOUT, max_size=None
    ) as ws:
        ws.send("hello through the edge")
        assert ws.recv(timeout=TIMEOUT) == "hello through the edge"
        # Big enough to fill socket buffers both ways (pause/resume in the tunnel).
        for i in range(4):
            big = bytes([i]) * (2 * MIB)
            ws.send(big)
            assert ws.recv(timeout=TIMEOUT) == big
        ws.ping(b"p").wait(TIMEOUT)
    upstream.wait_event("ws-closed", mark)
    assert_serving(edge.port)


def test_upgrade_declined_by_upstream(edge: Edge) -> None:
    ws = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    with Client(edge.port) as c:
        r = c.exchange(build("GET", "/echo/no-ws", ws))
        assert r.status == 200
        assert list(forwarded(r.body)[0].headers) == [
            (b"host", b"app.test"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            *XFF,
            rid(r),
            (b"connection", b"upgrade"),
        ]
        # No switch happened: the connection carries the next request as usual.
        assert forwarded(c.exchange(build("GET", "/echo/next")).body)[0].target == b"/echo/next"


def test_sse_first_event_arrives_before_the_stream_ends(edge: Edge, upstream: Upstream) -> None:
    received = bytearray()

    def on_data(data: bytes) -> None:
        first = b"data: first\n\n" in received
        received.extend(data)
        if not first and b"data: first\n\n" in received:
            upstream.signal("sse-1")  # only now may the upstream finish the stream

    with Client(edge.port) as c:
        c.send(build("GET", "/sse?wait=sse-1", [("Accept", "text/event-stream")]))
        r = c.response(on_data=on_data)
    assert r.status == 200
    assert r.header(b"content-type") == b"text/event-stream"
    assert r.header(b"transfer-encoding") == b"chunked"
    assert bytes(received) == b"event: hello\ndata: first\n\ndata: last\n\n"


def test_access_log_records_upstream(edge: Edge) -> None:
    with Client(edge.port) as c:
        c.exchange(build("POST", "/echo/logged", [("Content-Length", "7")], b"payload"))
        c.exchange(build("GET", "/garbage?logged"))

    def find() -> list[dict[str, Any]]:
        return [r for r in edge.records() if r["path"] in ("/echo/logged", "/garbage?logged")]

    assert wait_for(lambda: len(find()) == 2), edge.records()[-5:]
    ok, bad = sorted(find(), key=lambda r: r["path"])
    assert (ok["status"], ok["upstream_status"], ok["bytes_in"]) == (200, 200, 7)
    assert ok["bytes_out"] > 7 and isinstance(ok["upstream_ms"], float) and ok["upstream_ms"] >= 0
    assert (bad["status"], bad["bytes_in"]) == (502, 0)
    assert bad["upstream_status"] in (0, None)


# -- nginx as a second, independent upstream ----------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format t '$connection $connection_requests $request_method $uri $status '
                 '$request_length "$http_x_forwarded_for" "$http_x_forwarded_host" "$http_connection"';
    access_log {d}/access.log t;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    types {{ application/octet-stream bin; }}
    gzip on;
    gzip_types application/octet-stream;
    gzip_min_length 0;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location = /hello {{ return 200 "hello from nginx"; }}
        location /dav/ {{ dav_methods PUT; create_full_put_path on; }}
    }}
}}
"""
NGINX_FILE = 5 * MIB


@dataclass
class Nginx:
    port: int
    directory: Path

    def log(self) -> list[list[str]]:
        path = self.directory / "access.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    if not os.access(NGINX, os.X_OK) or shutil.which(NGINX) is None:
        missing(f"{NGINX} is not installed (Debian package nginx)")
    d = tmp_path_factory.mktemp("nginx")
    (d / "www").mkdir()
    with open(d / "www" / "big.bin", "wb") as f:
        for piece in payload(NGINX_FILE):
            f.write(piece)
    port = closed_port()
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
    proc = subprocess.Popen(
        [NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def up() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            return proc.poll() is not None

        assert wait_for(up, timeout=10)
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"nginx did not start: {err}{(d / 'error.log').read_text()}")
        yield Nginx(port, d)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def nginx_edge(nginx: Nginx, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    e = start_edge(tmp_path_factory.mktemp("edge-nginx"), f"http://127.0.0.1:{nginx.port}")
    yield e
    e.proc.stop()


def test_nginx_get_and_head(nginx_edge: Edge) -> None:
    digest = hashlib.sha256()
    with Client(nginx_edge.port) as c:
        c.send(build("GET", "/big.bin"))
        r = c.response(on_data=digest.update)
        assert (r.status, r.header(b"content-length")) == (200, str(NGINX_FILE).encode())
        assert digest.hexdigest() == payload_sha256(NGINX_FILE)
        r = c.exchange(build("HEAD", "/big.bin"), b"HEAD")
        assert (r.status, r.header(b"content-length"), r.body) == (200, str(NGINX_FILE).encode(), b"")
        r = c.exchange(build("GET", "/hello"))
        assert (r.status, r.body) == (200, b"hello from nginx")
        assert c.exchange(build("GET", "/missing")).status == 404


def test_nginx_upload_and_reuse(nginx_edge: Edge, nginx: Nginx) -> None:
    # nginx's WebDAV PUT stores the body as a file: what nginx received,
    # byte for byte, is then read back through the edge.
    data = bytes(range(251)) * (3 * MIB // 251) + b"tail"
    with Client(nginx_edge.port) as c:
        r = c.exchange(build("PUT", "/dav/length.bin", [("Content-Length", str(len(data)))], data))
        assert r.status == 201
        body = chunked([data[:MIB], data[MIB : 2 * MIB], data[2 * MIB :]])
        r = c.exchange(build("PUT", "/dav/chunked.bin", [("Transfer-Encoding", "chunked")], body))
        assert r.status in (201, 204)
        for name in ("length", "chunked"):
            r = c.exchange(
                build("GET", f"/dav/{name}.bin", [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1")])
            )
            assert (r.status, len(r.body)) == (200, len(data))
            assert r.body == data
        r = c.exchange(build("POST", "/hello", [("Content-Length", "5")], b"hello"))
        assert (r.status, r.body) == (200, b"hello from nginx")
    assert (nginx.directory / "www" / "dav" / "length.bin").read_bytes() == data

    def lines() -> list[list[str]]:
        return [line for line in nginx.log() if line[3].startswith(("/dav/", "/hello"))][-5:]

    assert wait_for(lambda: len(lines()) == 5)
    got = lines()
    assert [line[2] for line in got] == ["PUT", "PUT", "GET", "GET", "POST"]
    assert all(line[6:8] == ['"127.0.0.1"', '"app.test"'] for line in got)
    assert all(line[8] == '"-"' for line in got)  # no Connection header forwarded
    assert len({line[0] for line in got}) == 1  # one nginx connection: pooled


def test_nginx_gzip_streamed_chunked(nginx_edge: Edge) -> None:
    with Client(nginx_edge.port) as c:
        r = c.exchange(build("GET", "/big.bin", [("Accept-Encoding", "gzip")]))
    assert r.status == 200
    assert r.header(b"content-encoding") == b"gzip"
    assert r.header(b"transfer-encoding") == b"chunked"
    assert hashlib.sha256(gzip.decompress(r.body)).hexdigest() == payload_sha256(NGINX_FILE)


def test_upstream_url_path_is_a_prefix(edge_factory: Any, upstream: Upstream) -> None:
    """upstream = "http://host:port/echo" sends /x?q as /echo/x?q."""
    proc = edge_factory(extra=open_app_toml(f"http://127.0.0.1:{upstream.port}/echo"))
    r = fetch(proc.port, build("GET", "/prefixed?q=1"))
    req, _ = forwarded(r.body)
    assert req.target == b"/echo/prefixed?q=1"


# -- the honest wire, as the upstream sees it ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "framing", "body"),
    [
        ("patch", [("Content-Length", "2")], b"{}"),
        ("get", [], b""),
        ("get", [("Content-Length", "4")], b"body"),
        ("Delete", [], b""),
        ("connect", [], b""),
        ("M-SEARCH", [], b""),
    ],
)
def test_any_token_method_is_forwarded_as_written(
    edge: Edge, method: str, framing: list[tuple[str, str]], body: bytes
) -> None:
    """RFC 9110 9.1: methods are case-sensitive; `get` is not GET but a
    method of its own, with a body only when one is framed."""
    r = fetch(edge.port, build(method, "/echo/method", framing, body))
    assert r.status == 200
    req, got = forwarded(r.body)
    assert (req.method, got) == (method.encode(), body)


@pytest.mark.parametrize(
    ("sent", "forwarded_as"),
    [("0000000000000000005", b"5"), ("05", b"5"), ("00", b"0"), ("5", b"5")],
)
def test_content_length_is_forwarded_as_the_parsed_integer(
    edge: Edge, sent: str, forwarded_as: bytes
) -> None:
    body = b"hello"[: int(sent)]
    r = fetch(edge.port, build("POST", "/echo/length", [("Content-Length", sent)], body))
    assert r.status == 200
    req, got = forwarded(r.body)
    assert [v for k, v in req.headers if k == b"content-length"] == [forwarded_as]
    assert got == body


@pytest.mark.parametrize(
    "lengths",
    [["5", "5"], ["5, 5"], ["5,5"], ["5", "05"]],
    ids=["twice", "list", "list without space", "twice, spelled differently"],
)
def test_repeated_content_length_is_400_and_never_forwarded(
    edge: Edge, upstream: Upstream, lengths: list[str]
) -> None:
    mark = upstream.mark()
    with Client(edge.port) as c:
        c.send(build("POST", "/echo/repeated", [("Content-Length", v) for v in lengths], b"hello"))
        r = c.response()
        assert (r.status, r.header(b"connection")) == (400, b"close")
        assert c.closed_by_peer()
    assert_serving(edge.port)
    assert ("request", (b"POST", b"/echo/repeated")) not in upstream.events[mark:]


@pytest.mark.parametrize("char", [0x01, 0x08, 0x0B, 0x0C, 0x0E, 0x1F, 0x7F], ids=lambda c: f"0x{c:02x}")
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_control_character_in_a_value_never_reaches_the_upstream(
    edge: Edge, upstream: Upstream, char: int, split: bool
) -> None:
    raw = build("GET", "/echo/control", [("X-Value", f"a{chr(char)}b")])
    mark = upstream.mark()
    with Client(edge.port) as c:
        if split:  # h11's parser, not h11_internals.fast_request
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.send(raw[:20])
            time.sleep(0.05)
            c.send(raw[20:])
        else:
            c.send(raw)
        assert c.response().status == 400
    assert_serving(edge.port)
    assert ("request", (b"GET", b"/echo/control")) not in upstream.events[mark:]


# RFC 9112 9.6: bytes after the last request are not a request. The answer
# to the request already forwarded is delivered; the rest is discarded.
TRAILING = {
    "crlf": b"\r\n",
    "lf": b"\n",
    "garbage": b"\x16\x03\x01 not http",
    "another request": build("GET", "/echo/after"),
    "a malformed request": b"BAD\r\n\r\n",
    "half a request": b"GET /echo/after HT",
}
LAST = {
    "connection close": build("GET", "/echo/last", [("Connection", "close")]),
    "http/1.0": build("GET", "/echo/last", version="1.0"),
    "post with connection close": build(
        "POST", "/echo/last", [("Connection", "close"), ("Content-Length", "5")], b"hello"
    ),
}


@pytest.mark.parametrize("split", [False, True], ids=["one write", "two writes"])
@pytest.mark.parametrize("last", LAST, ids=list(LAST))
@pytest.mark.parametrize("trailing", TRAILING, ids=list(TRAILING))
def test_bytes_after_the_last_request_are_ignored(
    edge: Edge, upstream: Upstream, trailing: str, last: str, split: bool
) -> None:
    mark = upstream.mark()
    with Client(edge.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if split:
            c.send(LAST[last])
            time.sleep(0.05)
            c.send(TRAILING[trailing])
        else:
            c.send(LAST[last] + TRAILING[trailing])
        r = c.response()
        assert r.status == 200
        req, _ = forwarded(r.body)
        assert req.target == b"/echo/last"
        assert c.closed_by_peer()
    seen = [v for k, v in upstream.events[mark:] if k == "request"]
    assert seen == [(req.method, b"/echo/last")]


def test_error_after_a_proxied_request_comes_after_its_answer(edge: Edge, upstream: Upstream) -> None:
    """The 400 of a pipelined malformed request leaves after the 200 of the
    request before it, queued in the same turn of the loop."""
    with Client(edge.port) as c:
        c.send(build("GET", "/echo/first") + b"BAD\r\n\r\n")
        first = c.response()
        second = c.response()
        assert c.closed_by_peer()
    assert (first.status, forwarded(first.body)[0].target) == (200, b"/echo/first")
    assert second.status == 400


# One pipelined connection, requests of every kind, bytes split anywhere: the
# answers come back in request order, one per request up to the first error,
# which ends the connection; the upstream gets exactly the proxied requests
# before that error.
PIPELINE_INVALID = {
    b"BAD\r\n\r\n": 400,
    build("GET", "/echo/fold", [("X-A", "a\r\n b")]): 400,
    build("GET", "/echo/ctl", [("X-A", "a\x7fb")]): 400,
    build("POST", "/echo/twice", [("Content-Length", "1"), ("Content-Length", "1")], b"x"): 400,
    build("POST", "/echo/list", [("Content-Length", "1, 1")], b"x"): 400,
    build("GET", "/echo/host", host="a b"): 400,
    build("GET", "/echo/version", version="1.2"): 505,
    b"GET /echo/simple\r\n": 505,
    build("CONNECT", "app.test:443", host="app.test:443"): 405,
}
Step = tuple[str, int]  # (kind, variant)
STEPS = st.one_of(
    st.tuples(st.just("proxied"), st.integers(0, 2)),
    st.tuples(st.just("local"), st.integers(0, 1)),
    st.tuples(st.just("invalid"), st.integers(0, len(PIPELINE_INVALID) - 1)),
)
_pipelines = iter(range(1 << 30))


def pipeline_request(kind: str, variant: int, target: str) -> tuple[bytes, int]:
    """A request's bytes and the status its answer must have."""
    if kind == "proxied":
        method, body = [("GET", b""), ("POST", b"hello"), ("patch", b"")][variant]
        return build(method, target, [("Content-Length", str(len(body)))] if body else [], body), 200
    if kind == "local":
        return [
            (build("GET", "/nowhere", host="nowhere.test"), 404),
            (build("GET", "/cdn-cgi/edge/health"), 200),
        ][variant]
    return list(PIPELINE_INVALID.items())[variant]


@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@settings(max_examples=40, deadline=None)
@given(steps=st.lists(STEPS, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 1 << 16), max_size=5))
def test_pipelined_answers_keep_request_order(
    edge: Edge, upstream: Upstream, steps: list[Step], cuts: list[int]
) -> None:
    tag = f"/echo/pipeline/{next(_pipelines)}"
    requests = [pipeline_request(kind, variant, f"{tag}/{i}") for i, (kind, variant) in enumerate(steps)]
    first_error = next((i for i, (kind, _) in enumerate(steps) if kind == "invalid"), len(steps))
    answered = steps[: first_error + 1]
    data = b"".join(raw for raw, _ in requests)
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    mark = upstream.mark()
    with Client(edge.port) as c:
        c.sock.settimeout(5.0)  # far below every edge timeout: a missing answer fails, never hangs
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for start, end in itertools.pairwise(points):
                c.send(data[start:end])
                time.sleep(0.002)  # separate segments, so the edge reads separate pieces
        got = [c.response() for _ in answered]
        assert [r.status for r in got] == [status for _, status in requests[: len(answered)]]
        for i, ((kind, _), r) in enumerate(zip(answered, got, strict=True)):
            if kind == "proxied":
                assert forwarded(r.body)[0].target == f"{tag}/{i}".encode()
        if first_error < len(steps):
            assert got[-1].header(b"connection") == b"close"
            assert c.closed_by_peer()
    proxied = [f"{tag}/{i}".encode() for i, (kind, _) in enumerate(answered) if kind == "proxied"]
    requested = [
        value for kind, value in upstream.events[mark:] if kind == "request" and isinstance(value, tuple)
    ]
    assert [target for _, target in requested if target.startswith(tag.encode())] == proxied
