"""Connections to upstreams: h11 clients and a keep-alive pool.

Invariants:
- An `UpstreamConnection` serves one exchange at a time for one `Exchange`
  listener (the proxy cycle); between exchanges it sits idle in the pool.
- A connection goes back to the pool only when its exchange finished cleanly
  on both sides (h11 CLIENT and SERVER states DONE, keep-alive) and nothing
  arrived beyond the response; anything else closes it.
- The pool holds at most `max_idle` idle connections per upstream, each for at
  most `idle_timeout` seconds (expired by the server's sweep).
- Reading from an upstream is paused only through its `gate` (ReadGate).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Protocol, cast
from urllib.parse import urlsplit

import h11
from h11._readers import ContentLengthReader

from .flow import ReadGate


class UpstreamError(Exception):
    """An upstream failure, with the status the client should get."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Exchange(Protocol):
    """What an upstream connection reports to the proxy cycle using it."""

    def upstream_event(self, event: h11.Event) -> None: ...
    def upstream_lost(self, error: UpstreamError) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...
    def upstream_raw(self, data: bytes) -> None: ...
    def upstream_batch(self, start: bool) -> None: ...


class Target:
    """A parsed upstream URL; what the pool keys on."""

    __slots__ = ("base_path", "host", "host_header", "port", "scheme", "ssl", "url")

    def __init__(self, url: str, ca_file: str | None = None, verify: bool = True) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Expected an http:// or https:// URL with a host, got {url!r}")
        self.url = url
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
            ctx = ssl.create_default_context(cafile=ca_file)
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self.ssl = ctx


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, target: Target, on_idle_close: Callable[[UpstreamConnection], None]) -> None:
        self.target = target
        self.conn = h11.Connection(h11.CLIENT)
        self.exchange: Exchange | None = None
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.closed = False
        self.tunnel = False
        self.deadline = 0.0  # loop time; when idle in the pool
        self.reused = False
        self._on_idle_close = on_idle_close

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.gate = ReadGate(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(UpstreamError(502, "upstream closed the connection"))
        else:
            self._on_idle_close(self)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: the upstream is confused; drop it.
            self.abort()
            return
        if self.tunnel:
            exchange.upstream_raw(data)
            return
        reader = self.conn._reader
        if type(reader) is ContentLengthReader and reader._remaining and not self.conn._receive_buffer:
            # Body bytes of a Content-Length response with nothing buffered:
            # straight through, without h11's receive buffer (three copies).
            take = reader._remaining
            chunk = data if len(data) <= take else data[:take]
            reader._remaining -= len(chunk)
            exchange.upstream_event(h11.Data(data=chunk))
            if reader._remaining or self.exchange is not exchange:
                return
            data = data[take:]
        if data:  # b"" would tell h11 the peer closed
            self.conn.receive_data(data)
        exchange.upstream_batch(True)
        try:
            self._pump(exchange)
        finally:
            exchange.upstream_batch(False)

    def eof_received(self) -> bool | None:
        if self.tunnel:
            return False
        self.conn.receive_data(b"")
        if self.exchange is not None:
            self._pump(self.exchange)
        return False

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    # -- driving h11

    def _pump(self, exchange: Exchange) -> None:
        conn = self.conn
        while self.exchange is exchange:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.exchange = None
                self.abort()
                exchange.upstream_lost(UpstreamError(502, f"upstream sent an invalid response: {exc}"))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            assert isinstance(event, h11.Event)
            exchange.upstream_event(event)
            if type(event) is h11.ConnectionClosed:
                return

    def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data and self.transport is not None:
            self.transport.write(data)

    def write_raw(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def start_tunnel(self) -> bytes:
        """After a 101: hand over raw bytes both ways; returns bytes that
        arrived after the 101 head."""
        self.tunnel = True
        return self.conn.trailing_data[0]

    def reusable(self) -> bool:
        c = self.conn
        # Bytes already received past the response belong to no request of
        # ours: pooled, they would answer the next request (a desync).
        return (
            not self.closed
            and c.our_state is h11.DONE
            and c.their_state is h11.DONE
            and not c.trailing_data[0]
        )

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Idle keep-alive connections per upstream target."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_idle: int,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.loop = loop
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.idle: dict[str, list[UpstreamConnection]] = {}
        self.targets: dict[str, Target] = {}

    def configure(self, max_idle: int, idle_timeout: float, connect_timeout: float) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout

    def target(self, url: str, ca_file: str | None = None, verify: bool = True) -> Target:
        found = self.targets.get(url)
        if found is None:
            found = self.targets[url] = Target(url, ca_file, verify)
        return found

    def take(self, target: Target) -> UpstreamConnection | None:
        idle = self.idle.get(target.url)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self, target: Target) -> UpstreamConnection:
        try:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(target, self._forget),
                    target.host,
                    target.port,
                    ssl=target.ssl,
                    server_hostname=target.host if target.ssl else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError(502, f"connect to {target.url} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(502, f"cannot connect to {target.url}: {exc}") from None
        return proto

    def release(self, conn: UpstreamConnection, now: float) -> None:
        conn.exchange = None
        if not conn.reusable():
            conn.abort()
            return
        idle = self.idle.setdefault(conn.target.url, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        conn.conn.start_next_cycle()
        conn.deadline = now + self.idle_timeout
        if conn.gate is not None:
            conn.gate.reset()
        idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        idle = self.idle.get(conn.target.url)
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
