"""A test upstream of our own: asyncio on a background thread, 127.0.0.1:<ephemeral>.

The behaviour is chosen by the request path (query string for parameters):

  /echo...            200; the body is the exact raw request (head + body) as received
  /status/<code>      that status; a small body unless HEAD, 204 or 304
  /own-id             as /echo, answered with an X-Request-Id of its own ("upstream-own")
  /hop                200 with hop-by-hop fields (and Connection: close) in the head
  /cl-te              200 with both Content-Length and Transfer-Encoding (then close)
  /close-delimited    200 without length or chunking, ended by closing the connection
  /stream?n=&size=&delay=   n chunks of `size` bytes, `delay` seconds apart, chunked
  /download?size=&chunked=1 `size` deterministic bytes (see `payload`), length or chunked
  /sink               reads the body, answers {"sha256": ..., "bytes": ...}
  /sse?wait=NAME      text/event-stream: one event, then holds until signal(NAME)
  /gate?name=NAME     a small 200, once open_gate(NAME) was called (it stays open,
                      so any number of requests can wait at one gate)
  /ws                 WebSocket echo (minimal RFC 6455 server, enough for the tests)
  /stall-head?t=      reads the request, then sends nothing for t seconds
  /stall-body?t=      head (Content-Length 1000) and 100 bytes, then nothing
  /reset-head         closes with a TCP reset before any response byte
  /reset-body?wait=   head and part of the body; on signal(NAME): TCP reset
  /close-body?wait=   head and part of the body; on signal(NAME): clean close (FIN)
  /garbage            bytes that are not HTTP, then close
  /close-after        a normal keep-alive response, then closes the connection
                      (no Connection: close): what a pooled connection goes stale by
  /drop-if-reused     on a connection that has served before: close without answering
  /early?after=&wait= reads `after` body bytes, waits for signal(NAME), answers 413 unread
  /reset-early        TCP reset as soon as the head is parsed (the body unread)
  /extra              a response, then at once a second one nobody asked for (desync)
  /informational      103 Early Hints, then 200

RecordingUpstream, at the end, is another origin: raw sockets, every byte
kept and read by the strict parser of strict_http.py, each request answered
with a small 200 (for the malformed-request corpus's view from upstream).

`accepted` counts TCP connections; `events` records notable happenings
(("request", (method, target)) for every request head received,
("sink-closed", n), ("stall-closed", conn), ("dropped", conn), ("conn-closed", conn), ...).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import ssl as ssl_module
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11
import strict_http

KIB = 1024
MIB = 1024 * KIB
_BLOCK = hashlib.shake_256(b"edge test payload").digest(MIB + 7)  # odd length: chunk edges drift
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def payload(size: int, chunk: int = 256 * KIB) -> Iterator[bytes]:
    """`size` deterministic bytes, in pieces of at most `chunk`."""
    pos = 0
    block = memoryview(_BLOCK)
    while pos < size:
        start = pos % len(_BLOCK)
        n = min(chunk, size - pos, len(_BLOCK) - start)
        yield bytes(block[start : start + n])
        pos += n


def payload_sha256(size: int) -> str:
    h = hashlib.sha256()
    for piece in payload(size, MIB):
        h.update(piece)
    return h.hexdigest()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Close(Exception):
    """End this connection (the mode already did what it wanted)."""


class Upstream:
    def __init__(self, ssl: ssl_module.SSLContext | None = None) -> None:
        self.ssl = ssl
        self.accepted = 0
        self.events: list[tuple[str, object]] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._signals: set[str] = set()
        self.gates: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="upstream", daemon=True)

    # -- lifecycle (test thread)

    def start(self) -> Upstream:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        fut.result(10)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    def signal(self, name: str) -> None:
        self._loop.call_soon_threadsafe(self._signals.add, name)

    def open_gate(self, name: str) -> None:
        self._loop.call_soon_threadsafe(self.gates.add, name)

    def mark(self) -> int:
        """A position in `events`: pass it to wait_event as `since`."""
        return len(self.events)

    def wait_event(self, kind: str, since: int = 0, value: object = None, timeout: float = 10.0) -> object:
        """The value of the first `kind` event recorded at or after `since`
        (and equal to `value`, when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for k, v in self.events[since:]:
                if k == kind and (value is None or v == value):
                    return v
            time.sleep(0.02)
        raise AssertionError(f"upstream never recorded {kind!r}; events: {self.events[since:]}")

    # -- the server (loop thread)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        ident = self.accepted
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await Conn(self, ident, reader, writer).run()
        except (Close, ConnectionError, h11.RemoteProtocolError, asyncio.CancelledError):
            pass
        except BaseException as exc:  # surfaced by the tests through `errors`
            self.errors.append(exc)
        finally:
            self.events.append(("conn-closed", ident))
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def wait_signal(self, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while name not in self._signals and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._signals.discard(name)


class Conn:
    """One accepted connection: h11 for parsing, raw bytes kept for /echo."""

    def __init__(
        self, up: Upstream, ident: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.up = up
        self.ident = ident
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=1 * MIB)
        self.raw = bytearray()  # bytes of the current request so far (while recording)
        self.recording = True
        self.served = 0

    async def run(self) -> None:
        while True:
            event = await self.next_event()
            if type(event) is not h11.Request:
                return  # ConnectionClosed, or the peer half-closed
            assert isinstance(event, h11.Request)
            await self.dispatch(event)
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return
            self.served += 1
            self.raw = bytearray(self.h11.trailing_data[0])
            self.recording = True
            self.h11.start_next_cycle()

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = await self.reader.read(256 * KIB)
            if self.recording:
                self.raw += data
            self.h11.receive_data(data)

    async def body(self) -> bytes:
        parts = []
        while True:
            event = await self.next_event()
            if type(event) is h11.Data:
                parts.append(bytes(event.data))  # type: ignore[union-attr]
            elif type(event) is h11.EndOfMessage:
                return b"".join(parts)
            else:
                raise Close

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def respond(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        fields = [("content-length", str(len(body))), *(headers or [])]
        await self.send(
            h11.Response(status_code=status, headers=fields), h11.Data(data=body), h11.EndOfMessage()
        )

    async def write_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def dispatch(self, req: h11.Request) -> None:
        self.up.events.append(("request", (bytes(req.method), bytes(req.target))))
        url = urlsplit(req.target.decode())
        path = url.path
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        name = path.strip("/").split("/")[0]
        handler = getattr(self, "do_" + name.replace("-", "_"), None)
        if handler is None:
            await self.body()
            await self.respond(404, b"no such mode\n")
        else:
            await handler(req, path, q)

    # -- modes

    async def do_echo(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        raw = bytes(self.raw[: len(self.raw) - len(self.h11.trailing_data[0])])
        headers = [("content-type", "application/octet-stream"), ("x-conn", str(self.ident))]
        await self.respond(200, raw, [*headers, ("x-served", str(self.served))])

    async def do_own_id(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        """/echo, answered with an X-Request-Id of the upstream's own."""
        await self.body()
        raw = bytes(self.raw[: len(self.raw) - len(self.h11.trailing_data[0])])
        await self.respond(
            200, raw, [("content-type", "application/octet-stream"), ("X-Request-Id", "upstream-own")]
        )

    async def do_status(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        code = int(path.split("/")[2])
        body = b"status body\n"
        headers = [("content-type", "text/plain"), ("x-conn", str(self.ident))]
        if code in (204, 304):
            await self.send(h11.Response(status_code=code, headers=headers), h11.EndOfMessage())
        elif req.method == b"HEAD":
            headers.append(("content-length", str(len(body))))
            await self.send(h11.Response(status_code=code, headers=headers), h11.EndOfMessage())
        else:
            await self.respond(code, body, headers)

    async def do_hop(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        headers = [
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-thing", "1"),
            ("upgrade", "h2c"),
            ("trailer", "x-sum"),
            ("x-kept", "yes"),
        ]
        await self.respond(200, b"hop\n", headers)

    async def do_cl_te(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        await self.write_raw(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        raise Close

    async def do_close_delimited(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        await self.write_raw(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end\n")
        raise Close

    async def do_stream(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        n, size, delay = int(q.get("n", "5")), int(q.get("size", "10")), float(q.get("delay", "0"))
        await self.send(h11.Response(status_code=200, headers=[("content-type", "text/plain")]))
        for i in range(n):
            if i and delay:
                await asyncio.sleep(delay)
            await self.send(h11.Data(data=str(i).encode().ljust(size, b".")))
        await self.send(h11.EndOfMessage())

    async def do_download(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        size = int(q["size"])
        headers = [("content-type", "application/octet-stream")]
        if q.get("chunked") != "1":
            headers.append(("content-length", str(size)))
        await self.send(h11.Response(status_code=200, headers=headers))
        for piece in payload(size):
            await self.send(h11.Data(data=piece))
        await self.send(h11.EndOfMessage())

    async def do_sink(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        self.recording = False
        self.raw.clear()
        digest = hashlib.sha256()
        count = 0
        try:
            while True:
                event = await self.next_event()
                if type(event) is h11.Data:
                    data = event.data  # type: ignore[union-attr]
                    digest.update(data)
                    count += len(data)
                elif type(event) is h11.EndOfMessage:
                    break
                else:
                    raise Close
        except (Close, ConnectionError, h11.RemoteProtocolError):
            self.up.events.append(("sink-closed", count))
            raise Close from None
        body = json.dumps({"sha256": digest.hexdigest(), "bytes": count}).encode()
        await self.respond(200, body, [("content-type", "application/json")])

    async def do_sse(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        await self.send(h11.Response(status_code=200, headers=headers))
        await self.send(h11.Data(data=b"event: hello\ndata: first\n\n"))
        await self.up.wait_signal(q.get("wait", "sse"))
        await self.send(h11.Data(data=b"data: last\n\n"), h11.EndOfMessage())

    async def do_gate(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        name = q.get("name", "gate")
        deadline = time.monotonic() + 10.0
        while name not in self.up.gates and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self.respond(200, b"through the gate\n", [("x-conn", str(self.ident))])

    async def do_stall_head(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        self.up.events.append(("stall-start", self.ident))
        await self._hold(float(q.get("t", "10")), "stall-closed")

    async def do_stall_body(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        await self.write_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
        await self._hold(float(q.get("t", "10")), "stall-closed")

    async def _hold(self, seconds: float, event: str) -> None:
        """Send nothing; return when the peer closes (recorded) or time is up."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while await asyncio.wait_for(self.reader.read(65536), seconds):
                pass
            self.up.events.append((event, self.ident))
        raise Close

    async def do_reset_head(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        reset(self.writer)
        raise Close

    async def _partial(self, q: dict[str, str]) -> None:
        await self.body()
        await self.write_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"p" * 1000)
        await self.up.wait_signal(q.get("wait", "go"))

    async def do_reset_body(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self._partial(q)
        reset(self.writer)
        raise Close

    async def do_close_body(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self._partial(q)
        raise Close

    async def do_garbage(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        await self.write_raw(b"SPDY/9 what is this\x00\r\n\r\n")
        raise Close

    async def do_close_after(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        await self.respond(200, b"then closed\n", [("x-conn", str(self.ident))])
        raise Close

    async def do_drop_if_reused(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        if self.served:
            self.up.events.append(("dropped", self.ident))
            raise Close
        await self.respond(200, b"fresh\n", [("x-conn", str(self.ident))])

    async def do_extra(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        """A keep-alive response followed at once by a second, unrequested one
        (a desync): whoever sends the next request on this connection must not
        get it."""
        await self.body()
        await self.write_raw(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nx-smuggled: 1\r\n\r\nsmuggled\n"
        )
        await self._hold(10, "extra-closed")

    async def do_informational(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        await self.send(
            h11.InformationalResponse(status_code=103, headers=[("link", "</a.css>; rel=preload")])
        )
        await self.respond(200, b"after 103\n")

    async def do_early(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        """Reads `after` body bytes, stops reading until signal(wait), then
        answers 413 without reading the rest (as an upload limit would)."""
        self.recording = False
        self.raw.clear()
        got, after = 0, int(q.get("after", "0"))
        while got < after:
            event = await self.next_event()
            if type(event) is h11.Data:
                got += len(event.data)  # type: ignore[union-attr]
            elif type(event) is not h11.EndOfMessage:
                raise Close
            else:
                break
        await self.up.wait_signal(q.get("wait", "early"))
        await self.respond(413, b"too big\n")
        await self._hold(10, "early-closed")

    async def do_reset_early(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        reset(self.writer)  # before reading any of the body
        raise Close

    # -- WebSocket echo (RFC 6455, server side; frames echoed as they come)

    async def do_ws(self, req: h11.Request, path: str, q: dict[str, str]) -> None:
        await self.body()
        headers = dict(req.headers)
        key = headers.get(b"sec-websocket-key", b"")
        if headers.get(b"upgrade", b"").lower() != b"websocket" or not key:
            await self.respond(400, b"not a websocket upgrade\n")
            return
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        await self.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    ("upgrade", "websocket"),
                    ("connection", "Upgrade"),
                    ("sec-websocket-accept", accept),
                ],
            )
        )
        self.up.events.append(("ws-open", self.ident))
        buffered = bytearray(self.h11.trailing_data[0])
        await self._ws_echo(buffered)
        raise Close

    async def _read_exact(self, buffered: bytearray, n: int) -> bytes:
        while len(buffered) < n:
            data = await self.reader.read(65536)
            if not data:
                raise Close
            buffered += data
        out = bytes(buffered[:n])
        del buffered[:n]
        return out

    async def _ws_echo(self, buffered: bytearray) -> None:
        while True:
            b0, b1 = await self._read_exact(buffered, 2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self._read_exact(buffered, 2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self._read_exact(buffered, 8))
            mask = await self._read_exact(buffered, 4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(await self._read_exact(buffered, length)))
            if opcode == 0x9:  # ping -> pong
                b0 = (b0 & 0xF0) | 0xA
            head = bytes([b0])
            if len(data) < 126:
                head += bytes([len(data)])
            elif len(data) < 1 << 16:
                head += bytes([126]) + struct.pack("!H", len(data))
            else:
                head += bytes([127]) + struct.pack("!Q", len(data))
            await self.write_raw(head + data)
            if opcode == 0x8:  # close: echoed, then the TCP connection ends
                self.up.events.append(("ws-closed", self.ident))
                return


# -- a recording upstream: every byte, re-parsed strictly --------------------------------


class RecordingUpstream:
    """An origin that keeps every byte it receives, per connection, and reads
    them with the strict parser of strict_http (never h11, which would
    forgive what a less careful upstream misreads). Each request it parses is
    answered ``200 got N bytes`` with ``x-origin-request: <seq>`` (its place in
    `requests`), so a client can tell proxied answers from the edge's own. At
    the first Violation the connection is recorded in `violations` and closed.

    Threads, one per connection: answers go out as soon as a request is
    complete, whatever the edge does next."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[Recording] = []
        self.requests: list[tuple[int, strict_http.Request]] = []  # (connection, request), in arrival order
        self.violations: list[tuple[int, str, bytes]] = []  # (connection, what, every byte it received)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="recording-upstream").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> tuple[int, int]:
        return len(self.requests), len(self.violations)

    def settled(self) -> bool:
        """No connection holds part of a request: what the edge sent so far
        has been read (a closed connection may end in a cut request)."""
        return all(rec.closed or rec.parsed == len(rec.data) for rec in list(self.conns))

    def close(self) -> None:
        for sock in [self.sock, *(rec.sock for rec in self.conns)]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            rec = Recording(len(self.conns) + 1, sock)
            self.conns.append(rec)
            threading.Thread(target=self._serve, args=(rec,), daemon=True).start()

    def _serve(self, rec: Recording) -> None:
        try:
            while True:
                data = rec.sock.recv(65536)
                if not data:
                    break
                rec.data += data
                try:
                    requests, end = strict_http.parse_requests(bytes(rec.data))
                except strict_http.Violation as exc:
                    self.violations.append((rec.ident, str(exc), bytes(rec.data)))
                    break
                for request in requests[rec.answered :]:
                    self._answer(rec, request)
                rec.answered, rec.parsed = len(requests), end
        except OSError:
            pass
        finally:
            rec.closed = True
            with contextlib.suppress(OSError):
                rec.sock.shutdown(socket.SHUT_RDWR)

    def _answer(self, rec: Recording, request: strict_http.Request) -> None:
        with self._lock:
            seq = len(self.requests)
            self.requests.append((rec.ident, request))
        body = b"got %d bytes\n" % len(request.body)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-origin-request: %d\r\n\r\n" % (len(body), seq)
        rec.sock.sendall(head if request.method == b"HEAD" else head + body)


@dataclass
class Recording:
    ident: int
    sock: socket.socket
    data: bytearray = field(default_factory=bytearray)
    answered: int = 0  # requests parsed and answered
    parsed: int = 0  # bytes they took
    closed: bool = False
