"""Listening, timers, signals and graceful drain for one worker process.

Invariants:
- `ServerState` is shared by every connection of the worker; connections only
  read it, except for registering and unregistering themselves.
- `state.now` (the loop's monotonic clock) and `state.date` (the Date line) are
  refreshed by timers, so the request path reads them instead of calling the
  clock.
- The sweep is the only place timeouts fire: every SWEEP interval it expires
  connections whose deadline has passed and flushes the access log.
- On SIGTERM/SIGINT: `stopping` at once (readiness answers 503), then for
  `shutdown_delay` seconds everything else as usual, listeners included; then
  the drain (`draining`): stop accepting, close idle connections, let
  requests in flight finish until `drain_timeout`, abort what remains,
  return. `draining` implies `stopping`, and neither is ever undone (a
  reload does not touch them).
- The settings a running worker cannot change (`RESTART_KEYS`, the team store)
  come from `boot`, the configuration the edge started with, for every worker
  and every reload; a worker a supervisor forks later is set up like the first.
- One worker alone binds without SO_REUSEPORT, so the kernel refuses a
  second edge on its addresses; with several workers the supervisor makes
  the sockets (edge.runtime.workers says how it keeps them to itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from edge.access.actions import Endpoint, Forward, Redirect, Unauthorized
from edge.access.compile import NO_STORE, Compiled, RemoteKeys, compile_config
from edge.access.decide import decide
from edge.access.keysets import JwksError
from edge.access.request import Request
from edge.access.responses import HEALTH_PATH, READY_PATH, LocalResponse, date_line
from edge.access.session import new_binding_value
from edge.config.errors import ConfigError
from edge.config.load import derive, load, loads
from edge.config.schema import TLS, Config
from edge.config.syntax import ListenAddress
from edge.http.connection import TUNNEL, HttpProtocol, LogEntry
from edge.http.cycle import Client, Cycle
from edge.http.faults import FaultLog
from edge.http.flow import WriteBatch
from edge.login import keydir
from edge.login.cycle import EndpointCycle
from edge.login.service import LoginService, ensure_keys, existing_team_keys, make_store
from edge.proxy.cycle import ForwardPlan, ProxyCycle, Upstreams
from edge.proxy.fetch import FetchError, fetch
from edge.proxy.forwarding import ForwardContext, request_headers
from edge.proxy.upstream import Pool
from edge.runtime import metrics_server, readiness, snapshots
from edge.runtime.accesslog import AccessLog, AccessRecord, iso_time
from edge.runtime.metrics import K_BYPASS, K_ENDPOINT, KIND_OF, Family, WorkerMetrics, merge, render

log = logging.getLogger("edge.server")

# The sweep runs at least this often; with small configured timeouts (tests),
# it runs often enough to honour them within a quarter of their length.
SWEEP_MAX_INTERVAL = 0.5  # seconds
SWEEP_MIN_INTERVAL = 0.02  # seconds
# Server settings a reload cannot change in a running worker.
RESTART_KEYS = ("listen", "workers", "tls", "access_log", "max_connections")
# The team store is made once per worker (its connections, its memory).
STORE_KEYS = ("store", "redis_url", "redis_prefix")
KEY_POLL_INTERVAL = 1.0  # seconds between checks of whether a JWKS wants fetching
# Never cached: a cached "ready" would outlive a drain or an outage.
READY_HEADERS = ((b"content-type", b"application/json"), NO_STORE)
LISTEN_BACKLOG = 1024  # nginx's default on Linux is 511; bursts of wrk connections need more
# The supervisor's word to a worker already stopping: skip the rest of the
# shutdown delay. Not a second SIGTERM: systemd (KillMode=control-group) and
# a terminal's Ctrl-C signal every process of the edge besides the
# supervisor, so a worker may see two before anyone asked to hurry.
HURRY = signal.SIGUSR1


def _store_of(config: Config) -> tuple[str, ...] | None:
    team = config.team
    return None if team is None else tuple(getattr(team, k) for k in STORE_KEYS)


def keep_restart_settings(boot: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with the [server] keys a running worker cannot change taken from
    `boot`, and the names of the settings that stay as they were (the team
    store among them: workers make it from `boot`)."""
    original = new
    fixed = [k for k in RESTART_KEYS if getattr(new.server, k) != getattr(boot.server, k)]
    kept = [f"server.{k}" for k in fixed]
    if _store_of(new) != _store_of(boot):
        kept.append("team." + "/".join(STORE_KEYS))
    if fixed:
        server = msgspec.structs.replace(new.server, **{k: getattr(boot.server, k) for k in fixed})
        new = msgspec.structs.replace(new, server=server)
    if new.metrics != boot.metrics:  # its listener is made at start
        new = msgspec.structs.replace(new, metrics=boot.metrics)
        kept.append("metrics")
    if new.team is not None and boot.team is not None and new.team.key_dir != boot.team.key_dir:
        # Every worker seals one-time codes and login state with the key
        # directory's secret: a worker restarted after a reload that moved it
        # would open nothing the others sealed, and they nothing of its.
        new = msgspec.structs.replace(new, team=msgspec.structs.replace(new.team, key_dir=boot.team.key_dir))
        kept.append("team.key_dir")
    if new is not original:
        derive(new)  # a replaced struct starts with no derived value: parse them now, as load did
    return new, kept


def check_config(config: Config, source: str) -> None:
    """Compile `config` as a worker would, reading the files it names (JWKS,
    an existing key directory) but creating none; raises ConfigError."""
    compile_config(config, source, team_keys=existing_team_keys(config, source))


def sweep_interval(config: Config) -> float:
    s = config.server
    shortest = min(s.header_timeout, s.body_idle_timeout, s.keepalive_timeout)
    return max(SWEEP_MIN_INTERVAL, min(SWEEP_MAX_INTERVAL, shortest / 4))


def listen_error(addr: ListenAddress, exc: OSError) -> OSError:
    """The bind error, naming the address (the kernel's text does not)."""
    return OSError(exc.errno, f"cannot listen on {addr.display()}: {exc.strerror or exc}")


def listen_socket(addr: ListenAddress, *, share: bool = False) -> socket.socket:
    """A listening TCP socket; IPv6 sockets are v6-only so "[::]:p" and
    "0.0.0.0:p" can both be listed. SO_REUSEADDR, so the TIME_WAIT sockets
    of an edge just stopped do not block its restart. `share` sets
    SO_REUSEPORT, with which any process of the same user could join and
    silently take part of the connections: only for the supervisor, which
    checks first that nobody serves the address. Raises the bind error,
    naming the address."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((addr.host, addr.port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise listen_error(addr, exc) from None
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class Listeners:
    """A worker's listening sockets (one per address) and TLS context. With
    a supervisor they are made before any worker starts, and a restarted
    worker gets those of the one it replaces, with the same certificate."""

    sockets: tuple[socket.socket, ...]
    ssl: ssl.SSLContext | None

    @property
    def bound(self) -> list[str]:
        """The addresses as bound (port 0 resolved)."""
        return [ListenAddress(*s.getsockname()[:2]).display() for s in self.sockets]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def open_listeners(config: Config) -> Listeners:
    """Raises ConfigError (TLS files), OSError naming the address (a listen)."""
    ctx = server_ssl(config)
    sockets: list[socket.socket] = []
    try:
        for addr in config.server.addresses:
            sockets.append(listen_socket(addr))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return Listeners(tuple(sockets), ctx)


def make_ssl_context(tls: TLS) -> ssl.SSLContext:
    """A server context with the ssl module's modern defaults; raises ConfigError."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError.at(
            ("server", "tls"), f"cannot load cert {tls.cert!r} / key {tls.key!r}: {exc}"
        ) from None
    # A connection's client certificate is read once, after the handshake
    # (edge.http.connection): a TLS 1.2 renegotiation could present another.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if tls.client_ca:
        # Only client_ca verifies: this context was made without any default
        # CA (create_default_context loads none for a server context), so no
        # public CA's certificate can pass for a client's. Optional: a client
        # without a certificate connects (a policy decides); one whose
        # certificate fails verification gets an alert (unknown_ca,
        # certificate_expired...) and no connection. OpenSSL has no way,
        # through the ssl module, to go on without the failed certificate.
        try:
            ctx.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError.at(
                ("server", "tls", "client_ca"), f"cannot load CA file {tls.client_ca!r}: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def server_ssl(config: Config) -> ssl.SSLContext | None:
    tls = config.server.tls
    return None if tls is None else make_ssl_context(tls)


def freeze_heap() -> None:
    """Move everything alive now (modules, the compiled config, key sets) out
    of the garbage collector's reach. Requests allocate enough to trigger
    full collections now and then, and a full collection walking every
    imported module's objects stalled requests for tens of milliseconds
    (p99 of the preflight bench). A reload unfreezes first, so what the old
    configuration held in cycles is collected before the new one is frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ServerState:
    """What every connection of this worker shares: each connection's
    `Worker`, and with `dispatch` its `Dispatcher` (edge.http.connection)."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        compiled: Compiled | None = None,
        source: str = "<config>",
        boot: Config | None = None,
    ) -> None:
        self.source = source
        self.boot = config if boot is None else boot
        self.loop = loop
        self.connections: set[HttpProtocol] = set()
        self.now = loop.time()
        self.date = date_line(time.time())
        # From the first SIGTERM/SIGINT: readiness answers 503. Connections
        # read only `draining`, so they carry on through the shutdown delay.
        self.stopping = False
        self.draining = False
        self.access_log = AccessLog.open(config.server.access_log)
        proxy = config.proxy
        # Every write of this worker's connections, client and upstream, sent
        # once per turn of the loop (flow.WriteBatch).
        self.writes = WriteBatch(loop)
        self.pool = Pool(loop, proxy.max_idle, proxy.pool_idle_timeout, proxy.connect_timeout, self.writes)
        self.tasks: set[asyncio.Task[None]] = set()
        self.faults = FaultLog()  # upstream failures and shed connections, rate-limited
        self.scheme = b"https" if config.server.tls is not None else b"http"
        # The binding the next login started here gets (decide draws no
        # randomness); drawn in the worker, after any fork, never shared.
        self.binding = new_binding_value()
        self.store = make_store(self.boot)
        self.metrics = None if self.boot.metrics is None else WorkerMetrics(time.time())
        # What the connections call for every finished request. Both choices
        # are fixed at start (access_log is a restart key, [metrics] too).
        self.log: Callable[[str, LogEntry], None] = self.access
        if self.access_log is None and self.metrics is not None:
            self.log = self.metrics.count  # access() would only call it
        try:
            ensure_keys(config)
            self.login = LoginService(config, self.store, config.server.server_header.encode("ascii"))
        except keydir.KeyDirError as exc:
            raise ConfigError.at(("team", "key_dir"), str(exc), source) from None
        except ConfigError as exc:
            raise exc.named(source) from None
        self._install(config, compiled or self._compile(config))

    def _compile(self, config: Config) -> Compiled:
        return compile_config(
            config, self.source, team_keys=self.login.verify_keys(), revoked=self.store.revocations
        )

    def _install(self, config: Config, compiled: Compiled) -> None:
        """Swap in a configuration. Connections read these attributes per
        request, so one assignment each switches every later request."""
        self.config = config
        self.limits = config.server
        self.upstreams = Upstreams(config.proxy, self.loop, self.pool, self.tasks, self.faults)
        self.compiled = compiled
        self.responses = compiled.responses
        self.forwarding = ForwardContext(
            self.scheme, compiled.trusted_proxies, config.server.underscores_in_headers
        )
        self.pool.configure(
            config.proxy.max_idle, config.proxy.pool_idle_timeout, config.proxy.connect_timeout
        )
        if self.metrics is not None:
            self.metrics.install(config)

    def reload(self, checked: snapshots.Snapshot | None = None) -> bool:
        """SIGHUP: load and compile the config file again (or `checked`, the
        supervisor's snapshot of it and of its list files, read from it and
        not from the disk); keep the old one (and say why) if the new one is
        invalid."""
        try:
            if checked is None:
                config = load(self.source)
            else:
                config = loads(checked.text, self.source, dict(checked.files))
            config, kept = keep_restart_settings(self.boot, config)
            ensure_keys(config)
            self.login.configure(config)
            compiled = self._compile(config)
        except (keydir.KeyDirError, ConfigError) as exc:
            log.error("reload refused, still serving the previous configuration: %s", exc)
            self.login.configure(self.config)
            if self.metrics is not None:
                self.metrics.reloads["refused"] += 1
            return False
        if kept and checked is None:  # a supervisor has said so already
            log.warning("reload: %s take effect only after a restart", ", ".join(kept))
        held = {(r.iss, r.url): r.keys for r in self.compiled.remote_keys}
        for remote in compiled.remote_keys:
            old = held.get((remote.iss, remote.url))
            if old is not None:
                remote.keys.inherit(old)  # BEHAVIOUR.md 3: the keys already held keep working
        if self.metrics is not None:
            self.metrics.retire(self.compiled.verifier)
            self.metrics.reloads["ok"] += 1
        self._install(config, compiled)
        freeze_heap()
        log.info("reloaded %s: %d application(s)", self.source, len(compiled.apps))
        return True

    def dispatch(self, client: Client, req: Request, entry: LogEntry) -> LocalResponse | Cycle:
        """What to do with a request whose head is complete and valid: a
        local response, or the cycle (not yet started) that answers it."""
        path = req.path
        if path == HEALTH_PATH:
            entry.kind = K_ENDPOINT
            return self.responses.health
        if path == READY_PATH:
            entry.kind = K_ENDPOINT
            return self.readiness()
        action = decide(self.compiled, req, req.started, binding=self.binding)
        entry.app = action.app
        entry.decision = action.reason
        entry.kind = KIND_OF[type(action)]
        if isinstance(action, Endpoint):
            return EndpointCycle(client, self.login.endpoint(self.compiled, action, req), self.responses)
        if not isinstance(action, Forward):
            if isinstance(action, Redirect | Unauthorized) and action.binding:
                self.binding = new_binding_value()  # one login, one binding
            return action.response
        if action.bypass:
            entry.kind = K_BYPASS
        return ProxyCycle(client, req, self.forward_plan(req, action), self.upstreams)

    def readiness(self) -> LocalResponse:
        """The readiness answer from this worker's state now. Built per ask
        (a load balancer's poll, every few seconds), as the facts change."""
        facts = readiness.Facts(
            # A worker serves only once its config is compiled; a refused
            # reload keeps the one in force, still loaded.
            config_loaded=True,
            issuers=readiness.issuer_facts(self.compiled.verifier.issuers.values()),
            store_reachable=self.store.healthy,  # the in-process store always is
            draining=self.stopping,  # the shutdown delay too: traffic should go elsewhere
        )
        status, body = readiness.answer(facts)
        return LocalResponse(status, READY_HEADERS, body, self.responses.server)

    def forward_plan(self, req: Request, action: Forward) -> ForwardPlan:
        proxy = self.config.proxy
        target = self.pool.target(action.upstream, proxy.ca_file or None, proxy.verify_tls)
        headers = request_headers(
            req,
            self.forwarding,
            target.host_header,
            add=action.add_headers,
            strip=action.strip_headers,
            strip_auth_cookie=action.strip_auth_cookie,
            rewrite_host=action.rewrite_host,
        )
        return ForwardPlan(
            target=target,
            headers=headers,
            # Origin-form even when the client sent absolute-form; an upstream
            # URL's path (http://host/prefix) is put in front of it.
            path=target.base_path + req.target if req.target[:1] == b"/" else req.target,
            vary_origin=action.vary_origin,
            upgrade=req.upgrade,
            expires=action.exp,
        )

    def access(self, client: str, entry: LogEntry) -> None:
        sink, metrics = self.access_log, self.metrics
        if sink is None and metrics is None:
            return
        if metrics is not None:
            metrics.count(client, entry)
        if sink is None:
            return
        now = time.time()
        request = entry.request
        sink.write(
            AccessRecord(
                time=iso_time(request.started),
                client=client,
                method=request.method.decode("latin-1"),
                host=request.host.decode("latin-1"),
                path=request.target.decode("latin-1"),
                status=entry.status,
                bytes_in=entry.bytes_in,
                bytes_out=entry.bytes_out,
                duration_ms=round((now - request.started) * 1000, 3),
                app=entry.app,
                decision=entry.decision,
                upstream_status=entry.upstream_status,
                upstream_ms=entry.upstream_ms,
                request_id=request.request_id.decode("ascii"),
            )
        )

    def metric_families(self) -> list[Family]:
        """This worker's metrics now (a scrape; not the request path)."""
        assert self.metrics is not None
        return self.metrics.families(
            self.compiled,
            self.store,
            self.faults,
            len(self.connections),
            sum(1 for c in self.connections if c.phase == TUNNEL),
            time.time(),
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
        self.faults.flush(now)
        if self.metrics is not None:
            self.metrics.flush()
        if self.access_log is not None:
            self.access_log.flush()


async def _sweeper(state: ServerState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        state.sweep()


async def _key_refresher(state: ServerState) -> None:
    """Keep JWKS fetched from URLs fresh, off the request path: the key sets
    say when they want a fetch (empty, unknown kid seen, periodic refresh)."""
    while True:
        now = time.time()
        for remote in state.compiled.remote_keys:
            if remote.keys.claim_fetch(now):
                task = state.loop.create_task(_refresh(remote, state.metrics))
                state.tasks.add(task)
                task.add_done_callback(state.tasks.discard)
        await asyncio.sleep(KEY_POLL_INTERVAL)


async def _login_keeper(state: ServerState) -> None:
    """Pick up key rotations (every worker, without restart) and drop
    revocations that have expired."""
    while True:
        await asyncio.sleep(KEY_POLL_INTERVAL)
        now = time.time()
        try:
            builtin = state.compiled.builtin
            if state.login.refresh_keys(now) and builtin is not None and builtin.keys is not None:
                notes = builtin.keys.update(state.login.ring_jwks(), now)
                log.info(
                    "signing keys reloaded: %s",
                    ", ".join(notes) or "current key " + state.login.current_kid(),
                )
        except (keydir.KeyDirError, JwksError) as exc:
            log.error("signing keys: %s (keeping the keys already loaded)", exc)
        state.store.revocations.sweep(now)


async def _refresh(remote: RemoteKeys, metrics: WorkerMetrics | None) -> None:
    try:
        body = await fetch(remote.url)
        notes = remote.keys.update(body, time.time())
    except (FetchError, JwksError) as exc:
        remote.keys.fetch_failed(time.time(), str(exc))
        if metrics is not None:
            metrics.jwks_fetched(remote.iss, ok=False)
        log.warning("keys for %s: %s (keeping the keys already held)", remote.iss, exc)
        return
    if metrics is not None:
        metrics.jwks_fetched(remote.iss, ok=True)
    for note in notes:
        log.info("keys for %s: %s", remote.iss, note)


async def serve(
    config: Config,
    *,
    source: str = "<config>",
    listeners: Listeners | None = None,
    boot: Config | None = None,
    channel: socket.socket | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
    metrics_channel: socket.socket | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain. On its own, it opens its
    listeners (and with [metrics], serves them itself) and SIGHUP reloads
    `source`; a supervisor's worker is handed the `listeners`, the `boot`
    configuration, the `channel` its reloads come on and the
    `metrics_channel` the supervisor's scrapes come on. Raises OSError if a
    listen fails, ConfigError if a key file is unusable."""
    loop = asyncio.get_running_loop()
    state = ServerState(config, loop, source=source, boot=boot)
    if listeners is None:
        listeners = open_listeners(config)
    bound = listeners.bound
    servers = [await _serve_on(loop, state, sock, listeners.ssl) for sock in listeners.sockets]
    # An edge on its own serves /metrics itself, through its drain (which
    # closes `servers`): a drain is when an operator most wants to watch it.
    scrapes: asyncio.Server | None = None
    if metrics_channel is not None:
        metrics_server.WorkerReplies(loop, metrics_channel, state.metric_families)
    elif channel is None and state.boot.metrics is not None:
        metrics_sock = listen_socket(state.boot.metrics.address)
        scrapes = await metrics_server.serve_local(
            metrics_sock, lambda: render(merge([(0, state.metric_families())]))
        )
        log.info("metrics on http://%s/metrics", ListenAddress(*metrics_sock.getsockname()[:2]).display())
    stop = Stop(state)
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Alone, a second signal hurries; a supervisor's worker waits for HURRY.
        loop.add_signal_handler(sig, stop.begin if channel is not None else stop.on_signal)
    if channel is None:
        loop.add_signal_handler(signal.SIGHUP, state.reload)
    else:
        loop.add_signal_handler(HURRY, stop.hurry)
        loop.add_reader(channel.fileno(), _take_snapshots, state, channel, stop)
    state.tick_date()
    freeze_heap()
    sweeper = asyncio.ensure_future(_sweeper(state, sweep_interval(config)))
    refresher = asyncio.ensure_future(_key_refresher(state))
    keeper = asyncio.ensure_future(_login_keeper(state))
    await state.store.start()
    scheme = "https" if listeners.ssl else "http"
    log.info("listening on %s", ", ".join(f"{scheme}://{b}" for b in bound))
    if on_ready is not None:
        on_ready(bound)
    try:
        await stop.wait()
        await _drain(state, servers, state.config.server.drain_timeout)  # as last reloaded
    finally:
        if scrapes is not None:
            scrapes.close()
        sweeper.cancel()
        refresher.cancel()
        keeper.cancel()
        await state.store.close()
        if state.access_log is not None:
            state.access_log.close()


class Stop:
    """How a worker comes to its drain. `begin` (the first SIGTERM/SIGINT)
    sets `stopping`, so readiness answers 503 from then on; `wait` returns
    once the shutdown delay (as last reloaded, read when the stop begins) has
    passed, or at once when `hurry` is called before or during it."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.begun = asyncio.Event()
        self.hurried = asyncio.Event()

    def begin(self) -> None:
        self.state.stopping = True
        self.begun.set()

    def hurry(self) -> None:
        self.begin()
        self.hurried.set()

    def on_signal(self) -> None:
        """SIGTERM/SIGINT to an edge on its own: the first begins, the next hurries."""
        if self.begun.is_set():
            self.hurry()
        else:
            self.begin()

    async def wait(self) -> None:
        await self.begun.wait()
        delay = self.state.config.server.shutdown_delay
        if delay <= 0 or self.hurried.is_set():
            return
        log.info("shutting down in %g s: readiness answers 503, requests are served as usual", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hurried.wait(), delay)
        if self.hurried.is_set():
            log.info("shutdown delay cut short")


def _take_snapshots(state: ServerState, channel: socket.socket, stop: Stop) -> None:
    """Apply the supervisor's reloads. Its end closing means it is gone: with
    nobody to restart or reload it, the worker drains at once and exits rather
    than hold the port against the next edge."""
    try:
        while (checked := snapshots.receive(channel)) is not None:
            state.reload(checked)
    except snapshots.Closed:
        state.loop.remove_reader(channel.fileno())
        log.warning("the supervisor is gone; stopping")
        stop.hurry()


async def _serve_on(
    loop: asyncio.AbstractEventLoop,
    state: ServerState,
    sock: socket.socket,
    ctx: ssl.SSLContext | None,
) -> asyncio.Server:
    dispatch = state.dispatch
    return await loop.create_server(
        lambda: HttpProtocol(state, dispatch),
        sock=sock,
        backlog=LISTEN_BACKLOG,
        ssl=ctx,
        ssl_handshake_timeout=state.config.server.header_timeout if ctx else None,
    )


async def _drain(state: ServerState, servers: list[asyncio.Server], timeout: float) -> None:
    log.info("draining %d connection(s), up to %.1f s", len(state.connections), timeout)
    state.stopping = state.draining = True
    for server in servers:
        server.close()
    for conn in list(state.connections):
        conn.shutdown()
    deadline = state.loop.time() + timeout
    while state.connections and state.loop.time() < deadline:
        await asyncio.sleep(0.02)
        state.sweep()
    state.writes.flush()  # before the aborts (flow.WriteBatch)
    for conn in list(state.connections):
        conn.transport.abort()
    state.pool.close()
    if state.connections:
        await asyncio.sleep(0)
    state.faults.flush(state.loop.time(), final=True)
    log.info("stopped")


def run(
    config: Config,
    *,
    source: str = "<config>",
    listeners: Listeners | None = None,
    boot: Config | None = None,
    channel: socket.socket | None = None,
    metrics_channel: socket.socket | None = None,
) -> None:
    """Run one worker on uvloop until it is told to stop (see `serve`)."""
    import uvloop

    uvloop.run(
        serve(
            config,
            source=source,
            listeners=listeners,
            boot=boot,
            channel=channel,
            metrics_channel=metrics_channel,
        )
    )


def setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
