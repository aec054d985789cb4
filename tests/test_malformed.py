"""A corpus of malformed requests against a real server, each sent four ways.

Every case names the status of the first response (or a clean close without
one). Each is sent whole, line by line, byte by byte and in seeded random
pieces; whatever the pieces, the answer must be the same, must be well-formed
HTTP/1.1 without any Python internals in it, and the server must go on
serving: a connection still open after its answer is probed with a second
request (its answer must come next: no desync), and a fresh connection must
get the health endpoint.

Two servers, one for the module each: `local` answers everything itself (404
for valid requests, before any body is read), `proxy` forwards to a small
origin that reads whole bodies, so malformed bodies are actually parsed.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
from conftest import BodyCountingUpstream as Origin
from conftest import EdgeProcess, open_app_toml, write_config

LIMITS = """
max_header_bytes = 4096
max_target_bytes = 1024
max_body_bytes = 65536
header_timeout = 1.0
body_idle_timeout = 1.0
keepalive_timeout = 5.0
"""
READ_TIMEOUT = 5.0  # seconds without a byte before a connection counts as hung
PROBE = b"GET /cdn-cgi/edge/health HTTP/1.1\r\nHost: probe.test\r\n\r\n"
CLOSE = 0  # expected "status": a clean close without any response
LEAKS = (b"Traceback", b'File "', b".py", b"h11", b"Error:", b"Exception")
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")


# -- reading responses ------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def closes(self) -> bool:
        return any(k == b"connection" and b"close" in v.lower() for k, v in self.headers)


class ResponseReader:
    """Parses the bytes a server sends as a sequence of HTTP/1.1 responses to
    GET requests; `error` says where they stop being well-formed."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.responses: list[Response] = []
        self.error: str | None = None
        self._head: h11.Response | None = None
        self._body = bytearray()

    def _expect_response(self) -> None:
        self.conn.send(h11.Request(method="GET", target="/", headers=[("host", "reader.test")]))
        self.conn.send(h11.EndOfMessage())

    def feed(self, data: bytes) -> None:
        """Feed received bytes; b"" is the end of the stream."""
        if self.error is not None:
            return
        try:
            if data and self.conn.our_state is h11.IDLE:
                self._expect_response()
            self.conn.receive_data(data)
            self._events()
        except h11.ProtocolError as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def _events(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self._head, self._body = event, bytearray()
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self._head is not None
                head = self._head
                self.responses.append(Response(head.status_code, list(head.headers), bytes(self._body)))
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    if conn.trailing_data[0]:
                        self._expect_response()
            elif isinstance(event, h11.ConnectionClosed):
                return


@dataclass
class Outcome:
    raw: bytes = b""
    responses: list[Response] = field(default_factory=list)
    error: str | None = None  # the bytes were not well-formed HTTP/1.1 responses
    end: str = "eof"  # "eof", "reset" or "hung"
    probed: bool = False

    def describe(self) -> str:
        return f"end={self.end} error={self.error} probed={self.probed} raw={self.raw[:300]!r}"


# -- sending --------------------------------------------------------------------------

MODES = ["whole", "lines", "bytes", "random"]


def pieces(data: bytes, mode: str, seed: str) -> list[bytes]:
    if mode == "whole" or not data:
        return [data]
    if mode == "lines":
        return data.splitlines(keepends=True)
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(zlib.crc32(seed.encode()))
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, max(1, min(64, len(data) // 3)))
        out.append(data[i : i + n])
        i += n
    return out


def send_pieces(sock: socket.socket, parts: list[bytes], pause: bool) -> bool:
    """Send each piece as its own segment; False if the server hung up."""
    for i, part in enumerate(parts):
        try:
            sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            return False
        if pause and i < 32:
            time.sleep(0.0005)  # a few real gaps, not a per-byte crawl
    return True


def exchange(
    port: int,
    data: bytes,
    mode: str = "whole",
    seed: str = "",
    *,
    half_close: bool = False,
    trickle: bytes = b"",
    probe: bool = True,
) -> Outcome:
    """Send `data`, read what comes back until the server closes.

    A connection still open after a complete first response is probed with
    a health request and then half-closed, so every exchange ends by EOF.
    `half_close` ends the client's side right after `data`; `trickle` is sent
    every 0.2 s until the server answers (a slowloris)."""
    out = Outcome()
    reader = ResponseReader()
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        open_ = send_pieces(sock, pieces(data, mode, seed), mode in ("lines", "random"))
        if half_close and open_:
            sock.shutdown(socket.SHUT_WR)
        buf = bytearray()
        sock.settimeout(0.2 if trickle else READ_TIMEOUT)
        started = time.monotonic()
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if trickle and time.monotonic() - started < 3 * READ_TIMEOUT:
                    with contextlib.suppress(OSError):
                        sock.sendall(trickle)
                    continue
                out.end = "hung"
                break
            except ConnectionResetError:
                out.end = "reset"
                break
            if trickle:
                sock.settimeout(READ_TIMEOUT)
                trickle = b""
            reader.feed(chunk)
            buf += chunk
            if not chunk:
                break
            first = reader.responses[:1]
            if probe and not out.probed and first and not first[0].closes and not half_close:
                out.probed = True
                with contextlib.suppress(OSError):
                    sock.sendall(PROBE)
                    sock.shutdown(socket.SHUT_WR)
    out.raw = bytes(buf)
    out.responses = reader.responses
    out.error = reader.error
    return out


def health_ok(port: int) -> bool:
    out = exchange(port, PROBE, probe=False, half_close=True)
    return [r.status for r in out.responses] == [200] and out.end == "eof"


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
        proxy = open_app_toml(f"http://127.0.0.1:{origin.port}")
        started["proxy"] = _start(root / "proxy", proxy)
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


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    status: int  # of the first response; CLOSE for a clean close without one
    server: str = "local"
    body: bytes | None = None  # the first response's body, when it matters
    half_close: bool = False  # end the client's side after the data
    trickle: bytes = b""  # keep sending this until answered


CASES = [
    # -- Content-Length and Transfer-Encoding (RFC 9112 6) --
    Case("cl then te", post("Content-Length: 5", CHUNKED) + b"0\r\n\r\n", 400),
    Case("te then cl", post(CHUNKED, "Content-Length: 5") + b"0\r\n\r\n", 400),
    Case("duplicate identical cl", post("Content-Length: 5", "Content-Length: 5") + b"hello", 404),
    Case(
        "duplicate identical cl, forwarded once",
        post("Content-Length: 5", "Content-Length: 5") + b"hello",
        200,
        "proxy",
        b"got 5 bytes\n",
    ),
    Case("cl list of identical values", post("Content-Length: 5, 5") + b"hello", 404),
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
        post(CHUNKED) + b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        404,
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
    Case("missing host on 1.0", req(version="HTTP/1.0"), 404),
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
    Case("http/0.9 request line", b"GET /\r\n\r\n", 400),
    Case("http/0.9 version", req("Host: a", version="HTTP/0.9"), 505),
    Case("http/1.2 is served as 1.1", req("Host: a", version="HTTP/1.2"), 404),
    Case(
        "http/1.2 may send chunked (RFC 9110 2.5)",
        req("Host: a", CHUNKED, method="POST", version="HTTP/1.2") + b"2\r\nhi\r\n0\r\n\r\n",
        200,
        "proxy",
        b"got 2 bytes\n",
    ),
    Case("http/2.0 version", req("Host: a", version="HTTP/2.0"), 505),
    Case("http/3.0 version", req("Host: a", version="HTTP/3.0"), 505),
    Case("lowercase protocol name", req("Host: a", version="http/1.1"), 400),
    Case("two-digit minor version", req("Host: a", version="HTTP/1.10"), 400),
    Case("lowercase method (case-folding upstreams would see GET)", req("Host: a", method="get"), 400),
    Case("mixed-case method", req("Host: a", method="Get"), 400),
    Case("invalid method chars", req("Host: a", method="G@T"), 400),
    Case("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Case("tabs as separators", b"GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Case("leading empty line", b"\r\n" + req("Host: a"), 400),
    Case("only empty lines", b"\r\n\r\n", 400),
    Case("tls client hello", bytes.fromhex("160301020001") + b"\x00" * 64, 400),
    Case("binary garbage", bytes(range(0x80, 0x100)) + b"\r\n\r\n", 400),
    # -- ends and timeouts --
    Case("silent client that hangs up", b"", CLOSE, half_close=True),
    Case("head cut by eof", b"GET / HTTP/1.1\r\nHost: a\r\n", 400, half_close=True),
    Case("slowloris head", b"GET / HTTP/1.1\r\nHost: a\r\n", 408, trickle=b"X-A: b\r\n"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed(servers: dict[str, EdgeProcess], case: Case, mode: str) -> None:
    edge = servers[case.server]
    logged = len(edge.lines)
    out = exchange(edge.port, case.data, mode, case.id, half_close=case.half_close, trickle=case.trickle)
    where = f"{case.id} [{mode}]: {out.describe()}"
    assert out.end == "eof", where
    assert out.error is None, where
    for leak in LEAKS:
        assert leak not in out.raw, where
    if case.status == CLOSE:
        assert out.raw == b"", where
    else:
        assert STATUS_LINE.match(out.raw), where
        assert out.responses, where
        first = out.responses[0]
        assert first.status == case.status, where
        if case.body is not None:
            assert first.body == case.body, where
        if first.status >= 400 and first.status != 404:
            assert first.closes, where  # an error ends its connection
        if first.closes or case.half_close:
            assert len(out.responses) == 1, where
        else:
            # Still open: the next answer must be the probe's, nothing between.
            assert out.probed, where
            assert [r.status for r in out.responses[1:]] == [200], where
    assert health_ok(edge.port), where
    new = "\n".join(edge.lines[logged:])
    assert "Traceback" not in new and "internal error" not in new, new


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
