"""Listening, timers, signals and graceful drain for one worker process.

Invariants:
- `ServerState` is shared by every connection of the worker; connections only
  read it, except for registering and unregistering themselves.
- `state.now` (the loop's monotonic clock) and `state.date` (the Date line) are
  refreshed by timers, so the request path reads them instead of calling the
  clock.
- The sweep is the only place timeouts fire: every SWEEP interval it expires
  connections whose deadline has passed and flushes the access log.
- On SIGTERM/SIGINT: stop accepting, close idle connections, let requests in
  flight finish until `drain_timeout`, abort what remains, return.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence

import h11

from .accesslog import AccessLog, AccessRecord, iso_time
from .config import TLS, Config, ConfigError, ListenAddress
from .forwarding import RequestContext, TrustedProxies, request_headers
from .protocol import HttpProtocol, RequestInfo
from .proxy import ForwardPlan
from .responses import HEALTH_PATH, LocalResponse, Responses, date_line
from .upstream import Pool

log = logging.getLogger("edge.server")

# The sweep runs at least this often; with small configured timeouts (tests),
# it runs often enough to honour them within a quarter of their length.
SWEEP_MAX_INTERVAL = 0.5  # seconds
SWEEP_MIN_INTERVAL = 0.02  # seconds
LISTEN_BACKLOG = 1024  # nginx's default on Linux is 511; bursts of wrk connections need more


def _is_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    connection = b",".join(v for k, v in headers if k == b"connection").lower()
    return b"upgrade" in connection and any(k == b"upgrade" for k, _ in headers)


def sweep_interval(config: Config) -> float:
    s = config.server
    shortest = min(s.header_timeout, s.body_idle_timeout, s.keepalive_timeout)
    return max(SWEEP_MIN_INTERVAL, min(SWEEP_MAX_INTERVAL, shortest / 4))


def listen_error(addr: ListenAddress, exc: OSError) -> OSError:
    """The bind error, naming the address (the kernel's text does not)."""
    return OSError(exc.errno, f"cannot listen on {addr.display()}: {exc.strerror or exc}")


def make_ssl_context(tls: TLS) -> ssl.SSLContext:
    """A server context with the ssl module's modern defaults; raises ConfigError."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"$.server.tls: cannot load cert {tls.cert!r} / key {tls.key!r}: {exc}") from None
    return ctx


class ServerState:
    """What every connection of this worker shares."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.responses = Responses(config.server.server_header)
        self.connections: set[HttpProtocol] = set()
        self.now = loop.time()
        self.date = date_line(time.time())
        self.draining = False
        self.access_log = AccessLog.open(config.server.access_log)
        proxy = config.proxy
        self.pool = Pool(loop, proxy.max_idle, proxy.pool_idle_timeout, proxy.connect_timeout)
        self.tasks: set[asyncio.Task[None]] = set()
        self.scheme = b"https" if config.server.tls is not None else b"http"
        self.trusted = TrustedProxies()

    def dispatch(
        self, client: HttpProtocol, event: h11.Request, info: RequestInfo
    ) -> LocalResponse | ForwardPlan:
        """What to do with a request whose head is complete and valid."""
        path = info.target.partition(b"?")[0]
        if path == HEALTH_PATH:
            return self.responses.health
        upstream = self.config.proxy.default_upstream
        if not upstream:
            return self.responses.not_found
        return self.forward_plan(client, event, info, upstream)

    def forward_plan(
        self,
        client: HttpProtocol,
        event: h11.Request,
        info: RequestInfo,
        upstream: str,
        add: Sequence[tuple[bytes, bytes]] = (),
        strip_auth_cookie: bool = True,
        rewrite_host: bool = False,
        vary_origin: bool = False,
        expires: float | None = None,
    ) -> ForwardPlan:
        proxy = self.config.proxy
        target = self.pool.target(upstream, proxy.ca_file or None, proxy.verify_tls)
        headers = event.headers
        upgrade = _is_upgrade(headers)
        te = any(k == b"transfer-encoding" for k, _ in headers)
        cl = any(k == b"content-length" for k, _ in headers)
        ctx = RequestContext(
            client_ip=client.client_ip,
            scheme=self.scheme,
            host=info.host,
            upstream_host=target.host_header,
            body="chunked" if te else "length" if cl else "none",
            upgrade=upgrade,
            trusted=self.trusted,
        )
        out = request_headers(
            headers, ctx, add=add, strip_auth_cookie=strip_auth_cookie, rewrite_host=rewrite_host
        )
        return ForwardPlan(
            target=target,
            headers=out,
            path=info.target,  # origin-form, even when the client sent absolute-form
            vary_origin=vary_origin,
            upgrade=upgrade,
            expires=expires,
        )

    def access(self, client: str, request: RequestInfo) -> None:
        sink = self.access_log
        if sink is None:
            return
        now = time.time()
        sink.write(
            AccessRecord(
                time=iso_time(request.started),
                client=client,
                method=request.method.decode("latin-1"),
                host=request.host.decode("latin-1"),
                path=request.target.decode("latin-1"),
                status=request.status,
                bytes_in=request.bytes_in,
                bytes_out=request.bytes_out,
                duration_ms=round((now - request.started) * 1000, 3),
                app=request.app,
                decision=request.decision,
                upstream_status=request.upstream_status,
                upstream_ms=request.upstream_ms,
            )
        )

    # -- timers ----------------------------------------------------------

    def tick_date(self) -> None:
        now = time.time()
        self.date = date_line(now)
        self.loop.call_later(1.0 - (now % 1.0) + 0.001, self.tick_date)

    def sweep(self) -> None:
        now = self.now = self.loop.time()
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.expire()
        self.pool.sweep(now)
        if self.access_log is not None:
            self.access_log.flush()


async def _sweeper(state: ServerState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        state.sweep()


async def serve(
    config: Config,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain. Raises OSError if a listen fails."""
    loop = asyncio.get_running_loop()
    state = ServerState(config, loop)
    s = config.server
    ctx = make_ssl_context(s.tls) if s.tls is not None else None
    servers: list[asyncio.Server] = []
    bound: list[str] = []
    for addr in s.addresses:
        server = await _listen(loop, state, addr, ctx, reuse_port)
        servers.append(server)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            bound.append(ListenAddress(host=host, port=port).display())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state.tick_date()
    sweeper = asyncio.ensure_future(_sweeper(state, sweep_interval(config)))
    scheme = "https" if ctx else "http"
    log.info("listening on %s", ", ".join(f"{scheme}://{b}" for b in bound))
    if on_ready is not None:
        on_ready(bound)
    try:
        await stop.wait()
        await _drain(state, servers, s.drain_timeout)
    finally:
        sweeper.cancel()
        if state.access_log is not None:
            state.access_log.close()


async def _listen(
    loop: asyncio.AbstractEventLoop,
    state: ServerState,
    addr: ListenAddress,
    ctx: ssl.SSLContext | None,
    reuse_port: bool,
) -> asyncio.Server:
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((addr.host, addr.port))
    except OSError as exc:
        sock.close()
        raise listen_error(addr, exc) from None
    sock.setblocking(False)
    return await loop.create_server(
        lambda: HttpProtocol(state),
        sock=sock,
        backlog=LISTEN_BACKLOG,
        ssl=ctx,
        ssl_handshake_timeout=state.config.server.header_timeout if ctx else None,
    )


async def _drain(state: ServerState, servers: list[asyncio.Server], timeout: float) -> None:
    log.info("draining %d connection(s), up to %.1f s", len(state.connections), timeout)
    state.draining = True
    for server in servers:
        server.close()
    for conn in list(state.connections):
        conn.shutdown()
    deadline = state.loop.time() + timeout
    while state.connections and state.loop.time() < deadline:
        await asyncio.sleep(0.02)
        state.sweep()
    for conn in list(state.connections):
        conn.transport.abort()
    state.pool.close()
    if state.connections:
        await asyncio.sleep(0)
    log.info("stopped")


def run(config: Config, *, reuse_port: bool = False) -> None:
    """Run one worker on uvloop until it is told to stop."""
    import uvloop

    uvloop.run(serve(config, reuse_port=reuse_port))


def setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
