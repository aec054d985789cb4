"""A raw-socket HTTP/1.1 client for sending an edge arbitrary bytes.

`exchange` sends bytes (whole, line by line, byte by byte or in seeded random
pieces), reads until the server closes and parses what came back as HTTP/1.1
responses (`Outcome`: the responses, where they stop being well-formed, how
the connection ended); `health_ok` checks the server still serves;
`leaks_in` finds Python internals in what it wrote. LIMITS is the [server]
block of the edges these exchanges run against: timeouts short enough that
every exchange ends well within READ_TIMEOUT. Used by the malformed-request
corpus and the fuzz test (tests/http).
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import time
import zlib
from dataclasses import dataclass, field

import h11

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
LEAKS = (b"Traceback", b'File "', b".py", b"h11", b"Error:", b"Exception")
# Request ids are random base64url: one may spell "h11" by chance (it did,
# in a header and then in a plain-text error's body, which names it too).
_REQUEST_ID = re.compile(rb"(?im)^(?:x-request-id: |request id: )[A-Za-z0-9_.~:-]*\r?\n")


def leaks_in(raw: bytes) -> list[bytes]:
    """The LEAKS in what the edge wrote, its request ids left out (the
    header's, and the body's of a plain-text error: LocalResponse.tagged)."""
    scrubbed = _REQUEST_ID.sub(b"", raw)
    return [leak for leak in LEAKS if leak in scrubbed]


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

    @property
    def untagged_body(self) -> bytes:
        """The body without the line naming the response's request id that
        ends the edge's plain-text errors (asserted to be there, once)."""
        [rid] = [v for k, v in self.headers if k == b"x-request-id"]
        line = b"request id: %s\n" % rid
        assert self.body.endswith(line), self.body
        return self.body[: -len(line)]

    @property
    def origin_request(self) -> int | None:
        """Which request of the origin's this answers (None: the edge's own answer)."""
        return next((int(v) for k, v in self.headers if k == b"x-origin-request"), None)


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
