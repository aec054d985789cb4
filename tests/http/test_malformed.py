"""A corpus of malformed requests against a real server, each sent four ways.

Every case names the statuses of its responses in order (or a clean close
without one) and whether the last one ends the connection. Each is sent
whole, line by line, byte by byte and in seeded random pieces; whatever the
pieces, the answers must be the same, must be well-formed HTTP/1.1 without
any Python internals in them, and the server must go on serving: a
connection still open after its answers is probed with a further request
(its answer must come next: no desync), and a fresh connection must get the
health endpoint.

Two servers, one for the module each: `local` answers everything itself (404
for valid requests, before any body is read), `proxy` forwards the hosts of
an open application to a recording origin (tests/support/upstream_server.py
RecordingUpstream) and answers `locked.test` itself (401/302: no identity can
be verified there), so malformed bodies are actually parsed and early answers
meet bodies.

The upstream view: whatever a case does, every byte the origin received
during it must parse under tests/support/strict_http.py (CRLF only, one framing,
canonical Content-Length and chunks, no control characters, no trailers)
into exactly the requests whose answers the client got, in order; no
forwarded request targets `/smuggled` (the request hidden in every smuggling
case), and none carries a field name with `_` or an identity header the
client made up. Request smuggling classes follow RFC 9112 11.2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import strict_http
from conftest import EdgeProcess, allow_app_toml, open_app_toml, wait_for, write_config
from raw_client import LIMITS, MODES, READ_TIMEOUT, STATUS_LINE, Outcome, exchange, health_ok, leaks_in
from upstream_server import RecordingUpstream as Origin

CLOSE = 0  # expected "status": a clean close without any response


# -- servers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    up = Origin()
    yield up
    up.close()


def _start(directory: Path, extra: str = "") -> EdgeProcess:
    directory.mkdir()
    return EdgeProcess(write_config(directory, LIMITS, extra))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[dict[str, EdgeProcess]]:
    root = tmp_path_factory.mktemp("malformed")
    started = {"local": _start(root / "local")}
    try:
        apps = open_app_toml(origin.url) + allow_app_toml("locked", LOCKED, origin.url)
        # Host a is open but its /admin is locked like LOCKED: whatever the edge
        # routes to the open app must mean a path outside /admin to the origin too.
        apps += allow_app_toml("admin", "a/admin", origin.url)
        started["proxy"] = _start(root / "proxy", apps)
        yield started
    finally:
        for edge in started.values():
            edge.stop()


# -- the corpus ---------------------------------------------------------------------


def req(*headers: str, method: str = "GET", target: str = "/", version: str = "HTTP/1.1") -> bytes:
    """A request head; headers are given whole (``"Host: a"``), in order."""
    lines = [f"{method} {target} {version}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(*headers: str) -> bytes:
    return req("Host: a", *headers, method="POST", target="/upload")


CHUNKED = "Transfer-Encoding: chunked"
LOCKED = "locked.test"  # on `proxy`: an allow policy no token can meet, so 401 or 302 before any body
NAV = "Accept: text/html"  # a browser navigation: 302 to the login page rather than 401
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"  # never to reach the origin as a request
AFTER = b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"  # the client's real next request


def chunked_post(body: bytes, *headers: str) -> bytes:
    return post(*headers, CHUNKED) + body


def early(host: str, body: bytes, *headers: str) -> bytes:
    """A request the edge answers before reading its body, the body a request
    in disguise, then the client's real next request."""
    head = req(f"Host: {host}", f"Content-Length: {len(body)}", *headers, method="POST", target="/x")
    return head + body + AFTER


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    status: int | tuple[int, ...]  # the responses in order; CLOSE for a clean close without any
    server: str = "local"
    body: bytes | None = None  # the first response's body, when it matters
    half_close: bool = False  # end the client's side after the data
    trickle: bytes = b""  # keep sending this until answered
    closes: bool | None = None  # the last answer ends the connection; None: any error but 401/403/404
    forwarded: tuple[str, ...] | None = None  # request lines the origin must get, in order, when they matter

    @property
    def statuses(self) -> tuple[int, ...]:
        return self.status if isinstance(self.status, tuple) else (self.status,)

    @property
    def closing(self) -> bool:
        if self.closes is not None:
            return self.closes
        last = self.statuses[-1]
        return last >= 400 and last not in (401, 403, 404)

    def param(self, mode: str) -> object:
        return pytest.param(self, mode, id=f"{self.id}-{mode}")


CASES = [
    # -- Content-Length and Transfer-Encoding (RFC 9112 6) --
    Case("cl then te", post("Content-Length: 5", CHUNKED) + b"0\r\n\r\n", 400),
    Case("te then cl", post(CHUNKED, "Content-Length: 5") + b"0\r\n\r\n", 400),
    Case("duplicate identical cl", post("Content-Length: 5", "Content-Length: 5") + b"hello", 400),
    Case(
        "duplicate identical cl, never forwarded",
        post("Content-Length: 5", "Content-Length: 5") + b"hello",
        400,
        "proxy",
        forwarded=(),
    ),
    Case("cl list of identical values", post("Content-Length: 5, 5") + b"hello", 400),
    Case("cl list via proxy", post("Content-Length: 5, 5") + b"hello", 400, "proxy", forwarded=()),
    Case("conflicting cl", post("Content-Length: 5", "Content-Length: 6") + b"hello!", 400),
    Case("conflicting cl list", post("Content-Length: 5, 6") + b"hello!", 400),
    Case("cl with plus sign", post("Content-Length: +5") + b"hello", 400),
    Case("cl in hex", post("Content-Length: 0x5") + b"hello", 400),
    Case("cl with inner space", post("Content-Length: 5 5") + b"hello", 400),
    Case("cl negative", post("Content-Length: -5"), 400),
    Case("cl empty", post("Content-Length:"), 400),
    Case("cl of 21 digits", post("Content-Length: " + "9" * 21), 400),
    Case("cl of 19 digits", post("Content-Length: " + "9" * 19), 413),
    Case("cl over max body", post("Content-Length: 65537"), 413),
    Case("cl over max with 100-continue", post("Content-Length: 65537", "Expect: 100-continue"), 413),
    Case("te gzip", post("Transfer-Encoding: gzip"), 501),
    Case("te identity", post("Transfer-Encoding: identity"), 501),
    Case("te chunked twice in one header", post("Transfer-Encoding: chunked, chunked"), 501),
    Case("te gzip then chunked", post("Transfer-Encoding: gzip, chunked"), 501),
    Case("te in two headers", post(CHUNKED, CHUNKED) + b"0\r\n\r\n", 501),
    Case("te on http/1.0", req(CHUNKED, method="POST", version="HTTP/1.0") + b"0\r\n\r\n", 400),
    Case("te name with space before colon", post("Transfer-Encoding : chunked") + b"0\r\n\r\n", 400),
    Case(
        "te value uppercase is still chunked", post("Transfer-Encoding: CHUNKED") + b"0\r\n\r\n", 200, "proxy"
    ),
    # -- chunked bodies, read by the proxy --
    Case("chunk size not hex", post(CHUNKED) + b"zz\r\nhello\r\n0\r\n\r\n", 400, "proxy"),
    Case("chunk size negative", post(CHUNKED) + b"-5\r\nhello\r\n0\r\n\r\n", 400, "proxy"),
    Case("chunk size overflows", post(CHUNKED) + b"f" * 21 + b"\r\nhello\r\n0\r\n\r\n", 400, "proxy"),
    Case("chunk data without its crlf", post(CHUNKED) + b"5\r\nhelloXX0\r\n\r\n", 400, "proxy"),
    Case(
        "chunk extension is fine",
        post(CHUNKED) + b"5;name=value\r\nhello\r\n0\r\n\r\n",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "chunked with a trailer",
        post(CHUNKED) + b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "chunked over max body", post(CHUNKED) + b"10001\r\n" + b"x" * 65537 + b"\r\n0\r\n\r\n", 413, "proxy"
    ),
    Case("chunk lines ending in bare lf", post(CHUNKED) + b"5\nhello\n0\n\n", 408, "proxy"),
    Case("cl body shorter than announced", post("Content-Length: 10") + b"hello", 408, "proxy"),
    Case("cl body cut by eof", post("Content-Length: 10") + b"hello", 400, "proxy", half_close=True),
    Case(
        "chunked answered before its body is read",
        post(CHUNKED) + b"zz\r\n" + SMUGGLED,
        404,
        closes=True,
    ),
    # -- header field syntax (RFC 9110 5, RFC 9112 5) --
    Case("obs-fold", req("Host: a", "X-A: one", " two"), 400),
    Case("obs-fold with tab", req("Host: a", "X-A: one", "\ttwo"), 400),
    Case("obs-fold hiding te", post("X-A: one", " Transfer-Encoding: chunked") + b"0\r\n\r\n", 400),
    Case("continuation as the first field", req(" X-A: one", "Host: a"), 400),
    Case("nul in a value", req("Host: a", "X-A: o\x00ne"), 400),
    Case("nul in a name", req("Host: a", "X-\x00A: one"), 400),
    Case("bare cr in a value", req("Host: a", "X-A: o\rne"), 400),
    Case("bare cr ending a line", req("Host: a\r"), 400),
    Case("space before colon", req("Host : a"), 400),
    Case("empty field name", req("Host: a", ": one"), 400),
    Case("line without colon", req("Host: a", "X-A one"), 400),
    Case("non-token name", req("Host: a", "X(A): one"), 400),
    Case("lines ending in bare lf", b"GET / HTTP/1.1\nHost: a\n\n", 404),  # RFC 9112 2.2 allows
    # -- Host and the request target (RFC 9112 3.2, 3.3) --
    Case("missing host on 1.1", req(), 400),
    Case("missing host on 1.0", req(version="HTTP/1.0"), 404, closes=True),
    Case("duplicate host", req("Host: a", "Host: b"), 400),
    Case("duplicate identical host", req("Host: a", "Host: a"), 400),
    Case("host with a space", req("Host: a b"), 400),
    Case("host with userinfo", req("Host: user@a"), 400),
    Case("host with a path", req("Host: a/b"), 400),
    Case("host with obs-text", req("Host: \xe9.test"), 400),
    Case("host with a port", req("Host: a:8080"), 404),
    Case("host as ipv6 literal", req("Host: [::1]:8080"), 404),
    Case("absolute form disagreeing with host", req("Host: a", target="http://b/"), 400),
    Case("absolute form agreeing with host", req("Host: a", target="http://a/x?y"), 404),
    Case("absolute form with default port", req("Host: a", target="http://A:80/"), 404),
    Case("absolute form with userinfo", req("Host: a", target="http://u@a/"), 400),
    Case("absolute form, other scheme", req("Host: a", target="ftp://a/"), 400),
    Case("asterisk on get", req("Host: a", target="*"), 400),
    Case("asterisk on options", req("Host: a", method="OPTIONS", target="*"), 404),
    Case("target without a slash", req("Host: a", target="index.html"), 400),
    Case("non-ascii target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Case("connect", req("Host: a:443", method="CONNECT", target="a:443"), 405),
    Case("connect in absolute form", req("Host: a", method="CONNECT", target="http://a/"), 405),
    Case("target too long", req("Host: a", target="/" + "a" * 1100), 414),
    Case("target too long, head never completes", b"GET /" + b"a" * 1100, 414),
    Case("huge head", req("Host: a", "X-A: " + "a" * 5000), 431),
    Case("too many fields", req("Host: a", *["X: y"] * 1000), 431),
    # -- the request line (RFC 9112 3) --
    Case("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    Case("http/0.9 request line (no version)", b"GET /\r\n\r\n", 505),
    Case("http/0.9 version", req("Host: a", version="HTTP/0.9"), 505),
    Case("http/1.2", req("Host: a", version="HTTP/1.2"), 505),
    Case(
        "http/1.2 with chunked, never forwarded",
        req("Host: a", CHUNKED, method="POST", version="HTTP/1.2") + b"2\r\nhi\r\n0\r\n\r\n",
        505,
        "proxy",
        forwarded=(),
    ),
    Case("http/1.9", req("Host: a", version="HTTP/1.9"), 505),
    Case("http/2.0 version", req("Host: a", version="HTTP/2.0"), 505),
    Case("http/3.0 version", req("Host: a", version="HTTP/3.0"), 505),
    Case("lowercase protocol name", req("Host: a", version="http/1.1"), 400),
    Case("two-digit minor version", req("Host: a", version="HTTP/1.10"), 400),
    # Methods are case-sensitive tokens (RFC 9110 9.1): `get` is not GET, but a method all the same.
    Case("lowercase method is a method of its own", req("Host: a", method="get"), 404),
    Case("mixed-case method", req("Host: a", method="Get"), 404),
    Case("invalid method chars", req("Host: a", method="G@T"), 400),
    Case("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Case("tabs as separators", b"GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # RFC 9112 2.2: empty lines before a request line are ignored.
    Case("leading empty line", b"\r\n" + req("Host: a"), 404),
    Case("only empty lines, then the client's end", b"\r\n\r\n", CLOSE, half_close=True),
    Case(
        "a CRLF after a proxied body",
        post("Content-Length: 5") + b"hello\r\n" + AFTER,
        (200, 200),
        "proxy",
        forwarded=("POST /upload", "GET /after"),
    ),
    Case("tls client hello", bytes.fromhex("160301020001") + b"\x00" * 64, 400),
    Case("binary garbage", bytes(range(0x80, 0x100)) + b"\r\n\r\n", 400),
    # -- through the proxy: framing the origin must read as the edge did (RFC 9112 11.2) --
    Case(
        "proxied pipeline",
        post("Content-Length: 5") + b"hello" + AFTER,
        (200, 200),
        "proxy",
        forwarded=("POST /upload", "GET /after"),
    ),
    Case("cl.te", post("Content-Length: 6", CHUNKED) + b"0\r\n\r\nG", 400, "proxy", forwarded=()),
    Case(
        "cl.te, request hidden in the body",
        post("Content-Length: 41", CHUNKED) + b"0\r\n\r\n" + SMUGGLED,
        400,
        "proxy",
        forwarded=(),
    ),
    Case(
        "te.cl",
        post(CHUNKED, "Content-Length: 3") + b"8\r\nSMUGGLED\r\n0\r\n\r\n",
        400,
        "proxy",
        forwarded=(),
    ),
    Case(
        "cl with leading zeros forwarded canonically",
        post("Content-Length: 0005") + b"hello",
        200,
        "proxy",
        b"got 5 bytes\n",
        forwarded=("POST /upload",),
    ),
    Case("cl of zero", post("Content-Length: 0"), 200, "proxy", b"got 0 bytes\n"),
    Case(
        "chunked re-encoded",
        chunked_post(b"3\r\nhel\r\n002\r\nlo\r\n0\r\n\r\n"),
        200,
        "proxy",
        b"got 5 bytes\n",
        forwarded=("POST /upload",),
    ),
    # -- TE.TE: a Transfer-Encoding one parser may honour and another ignore --
    Case(
        "te xchunked beside chunked",
        chunked_post(b"0\r\n\r\n", "Transfer-Encoding: xchunked"),
        501,
        "proxy",
        forwarded=(),
    ),
    Case("te xchunked alone", post("Transfer-Encoding: xchunked") + b"0\r\n\r\n", 501, "proxy", forwarded=()),
    Case(
        "te with extra leading space",
        post("Transfer-Encoding:  chunked") + b"5\r\nhello\r\n0\r\n\r\n",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "te with trailing space",
        post("Transfer-Encoding: chunked ") + b"5\r\nhello\r\n0\r\n\r\n",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "te after a tab",
        post("Transfer-Encoding:\tchunked") + b"5\r\nhello\r\n0\r\n\r\n",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "te chunked, identity",
        post("Transfer-Encoding: chunked, identity") + b"0\r\n\r\n",
        501,
        "proxy",
        forwarded=(),
    ),
    Case(
        "te chunked then identity field",
        post(CHUNKED, "Transfer-Encoding: identity") + b"0\r\n\r\n",
        501,
        "proxy",
        forwarded=(),
    ),
    Case(
        "te identity then chunked field",
        post("Transfer-Encoding: identity", CHUNKED) + b"0\r\n\r\n",
        501,
        "proxy",
        forwarded=(),
    ),
    Case("te quoted", post('Transfer-Encoding: "chunked"') + b"0\r\n\r\n", 501, "proxy", forwarded=()),
    Case(
        "te with a vertical tab",
        post("Transfer-Encoding: \x0bchunked") + b"0\r\n\r\n",
        400,
        "proxy",
        forwarded=(),
    ),
    Case(
        "te space before colon, via proxy",
        post("Transfer-Encoding : chunked", "Content-Length: 5") + b"0\r\n\r\n",
        400,
        "proxy",
        forwarded=(),
    ),
    Case(
        "te folded onto the next line",
        post("Transfer-Encoding:", " chunked") + b"0\r\n\r\n" + SMUGGLED,
        400,
        "proxy",
        forwarded=(),
    ),
    Case(
        "te as a folded line after a field",
        post("X-A: 1", " Transfer-Encoding: chunked", "Content-Length: 3") + b"0\r\n\r\n",
        400,
        "proxy",
        forwarded=(),
    ),
    Case(
        "te value in mixed case",
        post("Transfer-Encoding: cHuNkEd") + b"5\r\nhello\r\n0\r\n\r\n",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "te name in mixed case",
        post("tRANSFER-eNCODING: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    # -- chunk-size lines --
    Case(
        "chunk extension with a quoted crlf",
        chunked_post(b'5;ext="x\r\n"\r\nhello\r\n0\r\n\r\n' + SMUGGLED),
        400,
        "proxy",
    ),
    Case(
        "chunk extensions dropped",
        chunked_post(b"5;a=b;c\r\nhello\r\n0;z\r\n\r\n"),
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case("bare lf after a chunk size", chunked_post(b"5\nhello\r\n0\r\n\r\n"), 400, "proxy"),
    Case("bare lf after chunk data", chunked_post(b"5\r\nhello\n0\r\n\r\n"), 400, "proxy"),
    Case(
        "chunk size of 17 hex digits, over any body limit",
        chunked_post(b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n"),
        413,
        "proxy",
    ),
    Case("chunk size 0x5", chunked_post(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, "proxy"),
    Case("chunk size with plus sign", chunked_post(b"+5\r\nhello\r\n0\r\n\r\n"), 400, "proxy"),
    Case("chunk size with a space inside", chunked_post(b"5 5\r\nhello\r\n0\r\n\r\n"), 400, "proxy"),
    Case("chunk data longer than its size", chunked_post(b"3\r\nhello\r\n0\r\n\r\n"), 400, "proxy"),
    Case(
        "last chunk then a smuggled request",
        chunked_post(b"0\r\n\r\n") + AFTER,
        (200, 200),
        "proxy",
        forwarded=("POST /upload", "GET /after"),
    ),
    # -- trailers: dropped, whatever they claim --
    Case(
        "trailer content-length",
        chunked_post(b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"),
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "trailer transfer-encoding",
        chunked_post(b"5\r\nhello\r\n0\r\n" + CHUNKED.encode() + b"\r\n\r\n"),
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "trailer host",
        chunked_post(b"5\r\nhello\r\n0\r\nHost: evil.test\r\n\r\n"),
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case(
        "trailer identity header",
        chunked_post(b"5\r\nhello\r\n0\r\nCf-Access-Authenticated-User-Email: boss@example.com\r\n\r\n"),
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case("trailer obs-fold, dropped", chunked_post(b"5\r\nhello\r\n0\r\nX-A: 1\r\n b\r\n\r\n"), 200, "proxy"),
    Case("trailer with bare lf, dropped", chunked_post(b"5\r\nhello\r\n0\r\nX-A: 1\n\r\n"), 200, "proxy"),
    # -- answered early (404, 401, 302): the body is drained, never read as a request --
    Case(
        "0.cl: 404 with a request for a body",
        early("nowhere.test", SMUGGLED),
        (404, 200),
        "proxy",
        forwarded=("GET /after",),
    ),
    Case(
        "0.cl: 401 with a request for a body",
        early(LOCKED, SMUGGLED),
        (401, 200),
        "proxy",
        forwarded=("GET /after",),
    ),
    Case(
        "0.cl: 302 with a request for a body",
        early(LOCKED, SMUGGLED, NAV),
        (302, 200),
        "proxy",
        forwarded=("GET /after",),
    ),
    Case(
        "0.cl: get with a body",
        req(f"Host: {LOCKED}", f"Content-Length: {len(SMUGGLED)}") + SMUGGLED + AFTER,
        (401, 200),
        "proxy",
        forwarded=("GET /after",),
    ),
    Case(
        "401 with a chunked body hiding a request",
        req(f"Host: {LOCKED}", CHUNKED, method="POST")
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
        + AFTER,
        401,
        "proxy",
        closes=True,  # a chunked body of unknown length is not drained
        forwarded=(),
    ),
    Case(
        "401 to an expect: 100-continue with its body sent anyway",
        early(LOCKED, SMUGGLED, "Expect: 100-continue"),
        401,
        "proxy",
        closes=True,
        forwarded=(),
    ),
    # -- pipelines and closes --
    Case(
        "bytes after connection: close",
        req("Host: a", "Connection: close") + SMUGGLED,
        200,
        "proxy",
        closes=True,
        forwarded=("GET /",),
    ),
    Case(
        "local answer then bytes after connection: close",
        req("Host: b", "Connection: close") + SMUGGLED,
        404,
        closes=True,
    ),
    Case(
        "http/1.0 ends its connection",
        req("Host: a", version="HTTP/1.0") + SMUGGLED,
        200,
        "proxy",
        closes=True,
        forwarded=("GET /",),
    ),
    Case(
        "proxied answer, then an error in order",
        post("Content-Length: 5") + b"hello" + req("Host: a b"),
        (200, 400),
        "proxy",
        forwarded=("POST /upload",),
    ),
    Case("local answer, then an error in order", req("Host: b") + req("Host: a b"), (404, 400)),
    # -- fields the origin must not see --
    Case("control character in a value", req("Host: a", "X-A: a\x01b"), 400, "proxy", forwarded=()),
    Case("del in a value", req("Host: a", "X-A: a\x7fb"), 400, "proxy", forwarded=()),
    Case("escape in a value", req("Host: a", "X-A: \x1b[31m"), 400, "proxy", forwarded=()),
    Case("form feed in a value", req("Host: a", "X-A: a\x0cb"), 400, "proxy", forwarded=()),
    Case(
        "obs-text in a value is forwarded", req("Host: a", "X-A: caf\xe9"), 200, "proxy", forwarded=("GET /",)
    ),
    Case(
        "underscore in a name",
        req("Host: a", "X_Forwarded_For: 10.0.0.1"),
        200,
        "proxy",
        forwarded=("GET /",),
    ),
    Case(
        "identity header spelt with underscores",
        req("Host: a", "Cf_Access_Authenticated_User_Email: x@y"),
        200,
        "proxy",
        forwarded=("GET /",),
    ),
    Case(
        "identity header from the client",
        req("Host: a", "Cf-Access-Authenticated-User-Email: x@y"),
        200,
        "proxy",
        forwarded=("GET /",),
    ),
    Case(
        "lower-case method forwarded as written",
        req("Host: a", method="patch"),
        200,
        "proxy",
        forwarded=("patch /",),
    ),
    Case(
        "odd token method forwarded as written",
        req("Host: a", method="NEW"),
        200,
        "proxy",
        forwarded=("NEW /",),
    ),
    # -- request-line tricks, via the proxy --
    Case(
        "absolute form, forwarded in origin form",
        req("Host: a", target="http://a/x?y"),
        200,
        "proxy",
        forwarded=("GET /x?y",),
    ),
    Case(
        "absolute form naming another host, via proxy",
        req("Host: b", target="http://a/"),
        400,
        "proxy",
        forwarded=(),
    ),
    Case("absolute form without host on 1.1", req(target="http://a/"), 400, "proxy", forwarded=()),
    Case("missing host on 1.1, via proxy", req(), 400, "proxy", forwarded=()),
    Case("two hosts, via proxy", req("Host: a", "Host: nowhere.test"), 400, "proxy", forwarded=()),
    Case("space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "proxy", forwarded=()),
    Case("tab in the target", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "proxy", forwarded=()),
    Case("bare cr in the request line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "proxy", forwarded=()),
    Case("bare cr in the target", b"GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "proxy", forwarded=()),
    Case("nul in the target", b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "proxy", forwarded=()),
    Case("request line folded", b"GET / HTTP/1.1\r\n Host: a\r\nHost: a\r\n\r\n", 400, "proxy", forwarded=()),
    # -- paths: what the edge routes by is what the origin serves --
    Case("locked path", req("Host: a", target="/admin/x"), 401, "proxy", forwarded=()),
    Case("locked path, escaped", req("Host: a", target="/%61dmin"), 401, "proxy", forwarded=()),
    Case("locked path, dot segments", req("Host: a", target="/x/../admin"), 401, "proxy", forwarded=()),
    Case("locked path, empty segments", req("Host: a", target="//admin//x"), 401, "proxy", forwarded=()),
    Case("locked path, absolute form", req("Host: a", target="http://a/admin"), 401, "proxy", forwarded=()),
    Case(
        "locked path, escaped slash",
        req("Host: a", target="/x%2f..%2fadmin"),
        400,
        "proxy",
        closes=False,
        forwarded=(),
    ),
    Case(
        "locked path behind a fragment",
        req("Host: a", target="/admin#x"),
        400,
        "proxy",
        forwarded=(),
    ),
    Case(
        "fragment in an absolute form",
        req("Host: a", target="http://a/admin#x"),
        400,
        "proxy",
        forwarded=(),
    ),
    # -- ends and timeouts --
    Case("silent client that hangs up", b"", CLOSE, half_close=True),
    Case("head cut by eof", b"GET / HTTP/1.1\r\nHost: a\r\n", 400, half_close=True),
    Case("slowloris head", b"GET / HTTP/1.1\r\nHost: a\r\n", 408, trickle=b"X-A: b\r\n"),
]


@pytest.mark.parametrize(("case", "mode"), [c.param(m) for c in CASES for m in MODES])
def test_malformed(servers: dict[str, EdgeProcess], origin: Origin, case: Case, mode: str) -> None:
    edge = servers[case.server]
    logged = len(edge.lines)
    mark = origin.mark()
    out = exchange(edge.port, case.data, mode, case.id, half_close=case.half_close, trickle=case.trickle)
    where = f"{case.id} [{mode}]: {out.describe()}"
    assert out.end == "eof", where
    assert out.error is None, where
    assert not leaks_in(out.raw), where
    assert_answers(case, out, where)
    assert_upstream_view(origin, mark, out, case, where)
    assert health_ok(edge.port), where
    new = "\n".join(edge.lines[logged:])
    assert "Traceback" not in new and "internal error" not in new, new


def assert_answers(case: Case, out: Outcome, where: str) -> None:
    statuses = [r.status for r in out.responses]
    if case.status == CLOSE:
        assert out.raw == b"", where
        return
    assert STATUS_LINE.match(out.raw), where
    if case.body is not None:
        assert out.responses[0].body == case.body, where
    if case.closing or case.half_close:
        assert statuses == list(case.statuses), where
        if not case.half_close:
            assert out.responses[-1].closes, where  # said, not just done
    else:
        # Still open: the next answer must be the probe's, nothing between.
        assert not any(r.closes for r in out.responses), where
        assert out.probed, where
        assert statuses == [*case.statuses, 200], where


def assert_upstream_view(origin: Origin, mark: tuple[int, int], out: Outcome, case: Case, where: str) -> None:
    """The origin read strictly what the edge sent during this case: the
    requests whose answers the client got, those only, nothing smuggled."""
    requests, violations = mark
    wait_for(origin.settled, READ_TIMEOUT)
    assert origin.violations[violations:] == [], where
    assert origin.settled(), f"{where}; a request left half-sent: {[bytes(c.data) for c in origin.conns]}"
    seen = origin.requests[requests:]
    answered = [r.origin_request for r in out.responses if r.origin_request is not None]
    assert answered == list(range(requests, requests + len(seen))), f"{where}; origin saw {seen}"
    for _, request in seen:
        assert b"smuggled" not in request.target, f"{where}; origin saw {request}"
        for name, _ in request.headers:
            assert b"_" not in name, f"{where}; forwarded {name!r}"
        assert not request.values(b"cf-access-authenticated-user-email"), f"{where}; origin saw {request}"
    if case.forwarded is not None:
        assert [r.line for _, r in seen] == list(case.forwarded), where


# The strict parser itself: it must refuse what the upstream view exists to catch.
GOOD = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
CHUNKED_GOOD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
STRICT_REFUSES = [
    GOOD.replace(b"1\r\nHost", b"1\nHost"),
    GOOD.replace(b"Host: a", b"Host: a\rb"),
    GOOD.replace(b"Host: a", b"Host: a\x01"),
    GOOD.replace(b"Host: a", b"Host : a"),
    GOOD.replace(b"Host: a", b"Host: a\r\n b"),
    GOOD.replace(b"Host: a", b"Host: a\r\nHost: a"),
    GOOD.replace(b"Host: a\r\n", b""),
    GOOD.replace(b": 2", b": 02"),
    GOOD.replace(b": 2", b": 2, 2"),
    GOOD.replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 2"),
    GOOD.replace(b"Content-Length: 2", b"Content-Length: 2\r\nTransfer-Encoding: chunked"),
    GOOD.replace(b"HTTP/1.1", b"HTTP/1.0"),
    GOOD.replace(b"POST /", b"POST /#x"),
    GOOD.replace(b"POST /", b"POST  /"),
    CHUNKED_GOOD.replace(b"chunked", b"xchunked"),
    CHUNKED_GOOD.replace(b"2\r\nhi", b"02\r\nhi"),
    CHUNKED_GOOD.replace(b"2\r\nhi", b"2;x=y\r\nhi"),
    CHUNKED_GOOD.replace(b"hi\r\n", b"hi\n"),
    CHUNKED_GOOD.replace(b"0\r\n\r\n", b"0\r\nX: y\r\n\r\n"),
]


@pytest.mark.parametrize("data", STRICT_REFUSES)
def test_strict_parser_refuses(data: bytes) -> None:
    with pytest.raises(strict_http.Violation):
        strict_http.parse_requests(data)


def test_strict_parser_reads_requests_and_stops_at_an_incomplete_one() -> None:
    requests, end = strict_http.parse_requests(GOOD + CHUNKED_GOOD + GOOD[:-1])
    assert [(r.line, r.body, r.chunked) for r in requests] == [
        ("POST /", b"hi", False),
        ("POST /", b"hi", True),
    ]
    assert end == len(GOOD + CHUNKED_GOOD)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
