"""Connections to upstreams: HTTP/1.1 clients written for the proxy, and a keep-alive pool.

Invariants:
- An `UpstreamConnection` serves one exchange at a time for one `Exchange`
  listener (the proxy cycle); between exchanges it sits idle in the pool.
- Request heads are written by hand from an already validated header list
  and responses are parsed strictly (wire.py); a response the parser refuses
  ends the exchange with a 502 and the connection.
- A connection goes back to the pool only when its exchange finished cleanly
  on both sides (the whole request sent, the whole response read, keep-alive)
  and nothing arrived beyond the response; anything else closes it.
- The pool holds at most `max_idle` idle connections per upstream, each for at
  most `idle_timeout` seconds (expired by the server's sweep).
- Reading from an upstream is paused only through its `gate` (ReadGate), and
  each read takes at most READ_SIZE bytes (flow.py: the memory bound per
  slow client), into the pool's one read buffer: it is copied out before the read returns, so no two reads
  share it. (uvloop keeps a reference to a memoryview it could not send at
  once, so handing it a view of the shared buffer would let the next read
  overwrite bytes still queued for the client.)
- A connection can be lost at any moment, even before its first exchange is
  attached (an upstream that closes right after accepting): `attach` refuses
  a lost connection, so the exchange hears of every loss exactly once, from
  `connection_lost` or from `attach`. Nothing is written to a transport that
  is closing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Literal, Protocol, cast
from urllib.parse import urlsplit

from edge.http.flow import READ_SIZE, WRITE_HIGH_WATER, ReadGate, WriteBatch
from edge.http.message import LAST_CHUNK, Headers, ResponseHead, chunk
from edge.proxy.fetch import client_ssl_context
from edge.proxy.wire import END, ProtocolError, ResponseParser, request_head

# Every kind of upstream failure the proxy reports, in a few words: the fault
# log counts by them, and edge.runtime.metrics maps each to a metric label
# (its table must name every one: a kind it misses would count as "other").
# A Literal so that mypy refuses a kind not listed here.
UpstreamKind = Literal[
    "connect refused",  # nothing listens at the upstream's address
    "connect timeout",  # no connection within [proxy] connect_timeout
    "connect failed",  # any other error connecting (unreachable, ...)
    "tls",  # the TLS handshake failed
    "timeout",  # no response head (or body progress) in time
    "reset",  # the upstream reset the connection
    "closed",  # the upstream closed before a whole response
    "connection error",  # any other error on an established connection
    "invalid response",  # bytes that are not an HTTP/1.1 response
    "internal error",  # a bug of the edge's while forwarding
]


class UpstreamError(Exception):
    """An upstream failure, with the status the client should get and its
    kind (UpstreamKind)."""

    def __init__(self, status: int, message: str, kind: UpstreamKind) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class Exchange(Protocol):
    """What an upstream connection reports to the proxy cycle using it."""

    def upstream_head(self, head: ResponseHead) -> None: ...
    def upstream_whole(self, head: ResponseHead, body: bytes) -> None:
        """A final head and all of its body, in one read: upstream_head,
        upstream_data and upstream_end in one call."""
        ...

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_end(self) -> None: ...
    def upstream_switch(self, head: ResponseHead) -> None: ...
    def upstream_lost(self, error: UpstreamError) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...
    def upstream_raw(self, data: bytes) -> None: ...


def target_key(url: str, ca_file: str | None, verify: bool) -> str:
    """What makes a Target, and so what the pool keys targets and idle
    connections on: the URL and, for https, the TLS settings (a connection
    verified one way is never taken for a request configured another)."""
    if not url.startswith("https:"):
        return url
    return f"{url} verify={verify} ca={ca_file or ''}"


class Target:
    """A parsed upstream URL with its TLS settings; what the pool keys on (`key`)."""

    __slots__ = ("base_path", "host", "host_header", "key", "port", "scheme", "ssl", "url")

    def __init__(self, url: str, ca_file: str | None = None, verify: bool = True) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Expected an http:// or https:// URL with a host, got {url!r}")
        self.url = url
        self.key = target_key(url, ca_file, verify)
        self.scheme = parts.scheme
        self.host = parts.hostname
        default = 443 if self.scheme == "https" else 80
        self.port = parts.port or default
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != default:
            netloc += f":{self.port}"
        self.host_header = netloc.encode("idna" if netloc.isascii() is False else "ascii")
        self.base_path = parts.path.rstrip("/").encode("ascii")
        self.ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            ctx = client_ssl_context(verify, ca_file or "")
            ctx.set_alpn_protocols(["http/1.1"])
            self.ssl = ctx


class UpstreamConnection(asyncio.BufferedProtocol):
    """A buffered protocol only to choose the read size (uvloop's is 250 KB,
    all of which a slow client would have to buffer; flow.READ_SIZE); every
    read is handed on as bytes, as data_received."""

    def __init__(
        self,
        target: Target,
        on_idle_close: Callable[[UpstreamConnection], None],
        read_buffer: memoryview,
        writes: WriteBatch,
    ) -> None:
        self.target = target
        self.read_buffer = read_buffer  # READ_SIZE bytes, shared (see the invariants)
        self.writes = writes  # the worker's (flow.WriteBatch): every write goes through it
        self.parser = ResponseParser()  # replaced by each request
        self.exchange: Exchange | None = None
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.closed = False
        self.tunnel = False
        self.deadline = 0.0  # loop time; when idle in the pool
        self.reused = False
        self.chunked = False  # the request body goes out in chunks
        self.body_open = False  # the request head is sent, its body (or end) not yet
        self.request_sent = False  # the whole request is sent
        self.lost: UpstreamError | None = None  # why the connection ended, once it has
        self.at_eof = False  # the upstream has closed its side
        self._on_idle_close = on_idle_close

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        # A TLS transport keeps reading the socket into its own buffer while
        # we are paused, up to 256 KiB by default: hold it to one read.
        set_read_limits = getattr(transport, "set_read_buffer_limits", None)
        if set_read_limits is not None:
            set_read_limits(high=READ_SIZE)
        self.gate = ReadGate(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = _loss(exc)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(self.lost)
        else:
            self._on_idle_close(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        # The one copy uvloop makes for data_received too; the buffer is
        # free again once this returns.
        self.data_received(bytes(self.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: the upstream is confused; drop it.
            self.abort()
            return
        if self.tunnel:
            exchange.upstream_raw(data)
            return
        self.parser.feed(data)
        self._pump(exchange)

    def eof_received(self) -> bool | None:
        self.at_eof = True
        if self.tunnel:
            return False
        self.parser.feed_eof()
        if self.exchange is not None:
            self._pump(self.exchange)
        return False

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    # -- the response

    def _pump(self, exchange: Exchange) -> None:
        """Hand the parser's events to the exchange, in order, until it needs
        more bytes, fails, or the exchange lets go of this connection. One
        loop, not a call per event: three events make a small response, and
        one read holding a whole response (the common case) is one event.
        The client writes they cause leave as one (flow.WriteBatch)."""
        while self.exchange is exchange:
            try:
                # Read each time: an exchange that ends here may start the
                # next request on this connection, with a new parser.
                parser = self.parser
                event = parser.next_event()
            except ProtocolError as exc:
                self._invalid(exchange, exc)
                return
            if event is None:
                return
            if type(event) is bytes:
                exchange.upstream_data(event)
            elif event is END:
                exchange.upstream_end()
            elif type(event) is ResponseHead:
                if event.status >= 200:
                    # A small response usually arrives whole, in one read:
                    # then it is passed on whole, in one call.
                    body = parser.whole_body()
                    if body is not None:
                        exchange.upstream_whole(event, body)
                    else:
                        exchange.upstream_head(event)
                elif event.status == 101:
                    exchange.upstream_switch(event)
                # Other 1xx (100, 103) are consumed: the edge answers
                # 100-continue itself, and early hints are not relayed.

    def _invalid(self, exchange: Exchange, exc: ProtocolError) -> None:
        self.exchange = None
        self.abort()
        # A response cut short by the upstream's close is not a garbled one.
        kind: UpstreamKind = "closed" if self.at_eof else "invalid response"
        exchange.upstream_lost(UpstreamError(502, f"upstream sent an invalid response: {exc}", kind))

    # -- the request

    def attach(self, exchange: Exchange) -> UpstreamError | None:
        """Start an exchange on this connection; or, when the connection was
        already lost, return why: connection_lost has come and gone, and only
        the caller can tell the exchange."""
        if self.closed:
            return self.lost or UpstreamError(502, "upstream connection closed", "closed")
        self.exchange = exchange
        return None

    def send_request(
        self, method: bytes, target: bytes, headers: Headers, chunked: bool, upgrade: bool
    ) -> None:
        """Write a request head; its body follows through send_body, then
        end_request. `headers` declare the body's framing (`chunked`, a
        Content-Length, or none); `upgrade`: they ask for a protocol switch."""
        self.parser = ResponseParser(head_only=method == b"HEAD", upgrade=upgrade)
        self.chunked = chunked
        self.body_open = True
        self.request_sent = False
        self.write_raw(request_head(method, target, headers))

    def send_body(self, data: bytes) -> None:
        transport = self.transport
        if not data or not self.body_open or transport is None or transport.is_closing():
            return
        if self.chunked:
            # One writev, no copy of a (possibly large) piece.
            self.writes.writelines(transport, chunk(data))
        else:
            self.writes.write(transport, data)

    def end_request(self) -> None:
        if self.chunked:
            self.write_raw(LAST_CHUNK)
        self.body_open = False
        self.request_sent = True

    def write_raw(self, data: bytes) -> None:
        # A closing transport: its connection_lost is on its way (uvloop
        # raises on a write after it, and warns on writes before it).
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.writes.write(transport, data)

    def start_tunnel(self) -> bytes:
        """After a 101: hand over raw bytes both ways; returns bytes that
        arrived after the 101 head."""
        self.tunnel = True
        return self.parser.trailing

    def reusable(self) -> bool:
        # Bytes already received past the response belong to no request of
        # ours: pooled, they would answer the next request (a desync).
        return not self.closed and self.request_sent and self.parser.reusable()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.writes.flush()
            self.transport.abort()


# How a TLS handshake ends when the peer closes the connection midway.
_CUT_OFF = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)


def _connect_kind(exc: OSError) -> UpstreamKind:
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    return "connect failed"


def _loss(exc: Exception | None) -> UpstreamError:
    """What a lost connection means for the exchange on it."""
    if exc is None:
        return UpstreamError(502, "upstream closed the connection", "closed")
    if isinstance(exc, ConnectionResetError):
        return UpstreamError(502, "upstream reset the connection", "reset")
    return UpstreamError(502, f"upstream connection failed: {exc}", "connection error")


class Pool:
    """Idle keep-alive connections per upstream target."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_idle: int,
        idle_timeout: float,
        connect_timeout: float,
        writes: WriteBatch,
    ) -> None:
        self.loop = loop
        self.writes = writes
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.idle: dict[str, list[UpstreamConnection]] = {}  # by Target.key
        # The targets of the configuration in force, by Target.key (made
        # once: a TLS context is costly); configure() starts over.
        self.targets: dict[str, Target] = {}
        # Shared by every connection of this loop (see the invariants).
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def configure(self, max_idle: int, idle_timeout: float, connect_timeout: float) -> None:
        """A configuration is installed (at start and on every reload): its
        settings, and new targets (so a CA file changed in place is read
        again; idle connections stay, keyed by the settings they were made with)."""
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.targets = {}

    def target(self, url: str, ca_file: str | None = None, verify: bool = True) -> Target:
        key = target_key(url, ca_file, verify)
        found = self.targets.get(key)
        if found is None:
            found = self.targets[key] = Target(url, ca_file, verify)
        return found

    def take(self, target: Target) -> UpstreamConnection | None:
        idle = self.idle.get(target.key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def connect(self, target: Target) -> UpstreamConnection:
        try:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(target, self._forget, self.read_buffer, self.writes),
                    target.host,
                    target.port,
                    ssl=target.ssl,
                    server_hostname=target.host if target.ssl else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError(502, f"connect to {target.url} timed out", "connect timeout") from None
        except (OSError, ssl.SSLError) as exc:
            if target.ssl is not None and isinstance(exc, _CUT_OFF):
                # Connected, then closed during the handshake: most often a
                # plain-HTTP server at an https:// URL (its reply to the
                # ClientHello is an error page and a close).
                detail = "TLS handshake cut off by the upstream (does the upstream speak TLS?)"
                raise UpstreamError(502, f"cannot connect to {target.url}: {detail}", "tls") from None
            raise UpstreamError(502, f"cannot connect to {target.url}: {exc}", _connect_kind(exc)) from None
        return proto

    def release(self, conn: UpstreamConnection, now: float) -> None:
        conn.exchange = None
        if not conn.reusable():
            conn.abort()
            return
        idle = self.idle.setdefault(conn.target.key, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        conn.deadline = now + self.idle_timeout
        if conn.gate is not None:
            conn.gate.reset()
        idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        idle = self.idle.get(conn.target.key)
        if idle and conn in idle:
            idle.remove(conn)

    def sweep(self, now: float) -> None:
        for idle in self.idle.values():
            for conn in [c for c in idle if c.deadline <= now]:
                idle.remove(conn)
                conn.abort()

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.abort()
            idle.clear()
