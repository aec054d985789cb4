"""One HTTP/1.1 server connection: an asyncio.Protocol around h11.

Invariants:
- Requests on a connection are answered strictly in order; while a response is
  being written and the client is not reading it, no further request is parsed
  (reading is paused), so a pipelining client cannot make us buffer without
  bound.
- Strictness on top of h11 (what a proxy must refuse that h11 lets
  through) is edge.http.strict's, as pure functions of a head's bytes and
  parts; the connection decides when to ask.
- Every failure of one connection ends in a small error response (when h11
  still lets us send one) or a close. Nothing raised here reaches the loop, and
  no traceback reaches a client.
- Timeouts are deadlines on the connection, checked by the server's sweep; the
  request path only assigns a float.
- A request answered before its body was read either has its body drained
  (bounded by DRAIN_LIMIT) or its connection closed: a body is never parsed as
  the next request.
- h11's server state machine is the one record of where each side of the
  connection is. A request head that arrives whole on an idle connection is
  parsed by h11_internals.fast_request (it takes only heads h11 would parse into the
  same event) and committed to that state machine by hand (h11_internals.commit_*);
  any other bytes are parsed by h11, so its refusals stay the reference. h11's
  internals are reached only through h11_internals.
- The connection knows the rest of the edge only through the interfaces it
  is handed: its worker (`Worker`), the dispatcher that turns a request into
  a local answer or a cycle (`Dispatcher`), and that cycle (`cycle.Cycle`).
  It imports no proxy, login or runtime module.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol, cast

import h11
import msgspec

from edge.access.headers import TrustedProxies
from edge.access.request import Index, Request
from edge.access.responses import LocalResponse, Responses
from edge.config.schema import KIB, MIB, Server
from edge.http import flow
from edge.http.cycle import END, Client, Cycle
from edge.http.faults import FaultLog
from edge.http.flow import ReadGate, WriteBatch
from edge.http.h11_internals import (
    BLANK_START,
    FastRequest,
    awaiting_head,
    body_remaining,
    buffered,
    chunk_owed,
    commit_end,
    commit_head,
    commit_local,
    commit_request,
    commit_request_end,
    commit_whole,
    discard_buffer,
    fast_request,
    head_bytes,
    next_cycle,
    pending,
    scan_fields,
    send_body,
    skip_blank_lines,
    take_body,
)
from edge.http.message import Headers, ResponseHead
from edge.http.request_id import new_id
from edge.http.strict import head_refused, request_line_too_long, validate

log = logging.getLogger("edge.protocol")

# A request answered early (404 before its body was read) keeps its connection
# only if at most this much body is left to throw away; beyond that, closing is
# cheaper than reading. nginx discards unread bodies in the same spirit.
DRAIN_LIMIT = 256 * KIB
# After a response that closes the connection we half-close and keep reading
# (discarding) for a moment, so the client receives our response rather than a
# reset caused by its unread upload ("lingering close", RFC 9112 9.6).
LINGER_TIMEOUT = 2.0  # seconds
LINGER_LIMIT = MIB

# Connection phases: which deadline is armed.
HEAD = 0  # waiting for a complete request head: header_timeout, from its first byte
BODY = 1  # reading a request body: body_idle_timeout, reset by every byte
IDLE = 2  # keep-alive, nothing received yet: keepalive_timeout
BUSY = 3  # a response is in progress; the client owes us nothing
LINGER = 4  # closing: discarding whatever the client still sends
TUNNEL = 5  # after a 101: raw bytes both ways; deadline = the token's expiry

_SEND_OK = (h11.IDLE, h11.SEND_RESPONSE)
_CONTINUE = h11.InformationalResponse(status_code=100, headers=[])


class LogEntry(msgspec.Struct, gc=False):
    """The access log's entry for the request in progress: what happens to
    the request (its Request says what it is). The connection counts, the
    dispatcher names the decision, the cycle adds the upstream's part. A
    Struct: one is made per request, and `LogEntry(request)` fills the
    defaults in C (a __slots__ __init__ setting them cost 0.3 us more)."""

    request: Request
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    app: str | None = None
    decision: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    kind: int = 0  # the dispatcher's decision kind, as the metrics number it (0: none made)


def _unparsed(method: bytes, target: bytes, client_ip: str, scheme: str, started: float) -> Request:
    """What the access log shows of a head that was refused: no Host, no
    fields (so no client id either: its own, generated)."""
    return Request(
        method, b"", target, target, b"", b"", [], {},
        client_ip, scheme, None, False, False, started, None, new_id(),
    )  # fmt: skip


def verified_cn(transport: asyncio.BaseTransport) -> str | None:
    """The subject CN of the client certificate the TLS handshake verified:
    None when the client presented none (with client_ca set, an unverifiable
    one fails the handshake, so no connection carries one), "" when the
    subject has no CN or several (no common_name rule can match those)."""
    tls = transport.get_extra_info("ssl_object")
    if tls is None:
        return None
    cert = tls.getpeercert()
    if not cert:  # None: no certificate; {}: one that was not verified
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if len(names) == 1 else ""


class Worker(Protocol):
    """The connection's view of its worker (edge.runtime.server.ServerState).
    Read per use, not copied: a reload changes `responses`, the sweep `now`."""

    @property
    def limits(self) -> Server:
        """The [server] settings, read once per connection."""

    @property
    def now(self) -> float:
        """The loop's clock, as of the last sweep (deadlines are set from it)."""

    @property
    def date(self) -> bytes:
        """The Date header line, refreshed every second."""

    @property
    def draining(self) -> bool:
        """SIGTERM was received: answer what is in flight, keep nothing alive."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def connections(self) -> set[HttpProtocol]:
        """The open connections the sweep walks; each adds and removes itself."""

    @property
    def faults(self) -> FaultLog: ...

    @property
    def writes(self) -> WriteBatch:
        """Where every write of the worker's connections goes (flow.WriteBatch)."""

    @property
    def responses(self) -> Responses:
        """The local error responses of the configuration in force."""

    def access(self, client: str, entry: LogEntry) -> None:
        """Log a finished request."""

    @property
    def log(self) -> Callable[[str, LogEntry], None]:
        """What the connection calls for a finished request: `access`, or
        what `access` would do for this worker, called directly."""


class Dispatcher(Protocol):
    """What to do with a request whose head is complete and valid: a local
    response, or a cycle that the connection makes current and then starts
    (starting may already finish it, calling back into the connection)."""

    def __call__(self, client: Client, request: Request, entry: LogEntry, /) -> LocalResponse | Cycle: ...


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "client",
        "client_cn",
        "client_ip",
        "closing",
        "conn",
        "cycle",
        "deadline",
        "dispatch",
        "drained",
        "early",
        "entry",
        "gate",
        "held",
        "limits",
        "lingered",
        "phase",
        "scanned",
        "scheme",
        "since_head",
        "state",
        "transport",
        "trusted_peer",
        "write_paused",
        "writes",
    )

    def __init__(self, state: Worker, dispatch: Dispatcher) -> None:
        self.state = state
        self.dispatch = dispatch
        self.limits = state.limits
        self.writes = state.writes

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=flow.WRITE_HIGH_WATER)  # bounds a slow reader (flow.py)
        self.gate = ReadGate(transport)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) else "-"
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        tls = self.limits.tls
        self.scheme = "https" if tls is not None else "http"
        # Read once, here: the handshake is over (the peer certificate, if
        # any, is verified) and renegotiation is off (make_ssl_context), so it
        # holds for every request on this connection and for no other.
        self.client_cn = None if tls is None or not tls.client_ca else verified_cn(transport)
        self.phase = HEAD
        self.deadline = self.state.now + self.limits.header_timeout
        self.write_paused = False
        self.closing = False
        self.held = False
        self.entry: LogEntry | None = None
        self.cycle: Cycle | None = None
        self.drained = 0
        self.early = False
        self.lingered = 0
        self.since_head = 0
        self.scanned = 0
        self.trusted_peer: bool | None = None  # known once a request carries an X-Request-Id
        state = self.state
        if len(state.connections) >= self.limits.max_connections or state.draining:
            # Not registered, so not swept: answer and close at once.
            if not state.draining:
                state.faults.shed(
                    transport.get_extra_info("sockname"), self.limits.max_connections, state.now
                )
            self.closing = True
            transport.write(state.responses.error(503).render(state.date, True, False, new_id()))
            transport.close()
            return
        state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.closing = True
        cycle, self.cycle = self.cycle, None
        if cycle is not None:
            cycle.client_lost()
        if self.entry is not None:
            self._log_request()

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == LINGER:
            self.lingered += len(data)
            if self.lingered > LINGER_LIMIT:
                self.writes.flush()
                self.transport.abort()
            return
        if phase == TUNNEL:
            if self.cycle is not None:
                self.cycle.client_raw(data)
            return
        if phase == BODY:
            self.deadline = self.state.now + self.limits.body_idle_timeout
        elif phase == IDLE:
            self.phase = HEAD
            self.deadline = self.state.now + self.limits.header_timeout
        conn = self.conn
        if phase == BODY and self.cycle is not None and not self.held:
            # A Content-Length body with nothing buffered: straight to the
            # upstream, without h11's receive buffer (three copies): 0.36 us
            # per read against 4.9 us for 1 KiB, 46 us for 64 KiB through
            # h11 (h11_internals.take_body has the measurement and its test).
            take = take_body(conn, len(data))
            if take:
                self._on_data(data if take == len(data) else data[:take])
                if body_remaining(conn):
                    return
                data = data[take:]
        if awaiting_head(conn) and not (self.closing or self.write_paused or self.held):
            if data[:1] in BLANK_START:
                # Empty lines before a request line are ignored (RFC 9112
                # 2.2; _next_events does the same for buffered bytes).
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            # A new request head arriving whole (the keep-alive common case):
            # parsed by h11_internals.fast_request, which leaves any head it does not
            # take to h11's parser below, as it arrived.
            parsed = fast_request(data)
            if parsed is not None:
                self._process(parsed, data[parsed.end :])
                return
        self.since_head += len(data)
        if data:  # b"" would tell h11 the peer closed
            conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        if self.phase == LINGER or self.phase == TUNNEL:
            return False
        self.conn.receive_data(b"")
        self._process()
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        # A client that stops reading gets one idle period to start again.
        self.deadline = min(self.deadline, self.state.now + self.limits.body_idle_timeout)
        self.gate.block(flow.OWN_WRITE)
        if self.cycle is not None:
            self.cycle.client_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.gate.unblock(flow.OWN_WRITE)
        if self.cycle is not None:
            self.cycle.client_write_paused(False)
        if not self.closing:
            self._process()

    # -- the event loop of one connection -------------------------------------

    def _process(self, request: FastRequest | None = None, rest: bytes = b"") -> None:
        """Handle what h11 has buffered; first `request` (a head parsed by
        h11_internals.fast_request, followed by `rest`) when given."""
        try:
            if request is None or not self._fast_request(request, rest):
                self._next_events()
        except h11.RemoteProtocolError as exc:
            self._send_error(exc.error_status_hint)
        except Exception:
            log.exception("internal error on connection from %s", self.client)
            self._send_error(500)

    def _fast_request(self, request: FastRequest, rest: bytes) -> bool:
        """What _next_events would do with this head as h11's next event,
        without h11's parser; True when that leaves nothing for _next_events."""
        conn = self.conn
        commit_request(conn, request)
        if rest:
            conn.receive_data(rest)
        self._on_head(request.method, request.target, b"1.1", request.headers, request.index, request.size)
        # A request without a body ends with its head: what the next turn of
        # _next_events would find.
        if self.closing or self.write_paused or self.held or not commit_request_end(conn):
            return False
        self._on_request_end()
        # With a cycle running and nothing buffered, _next_events would only
        # find NEED_DATA, which it then ignores.
        return self.cycle is not None and conn.their_state is h11.DONE and not buffered(conn)

    def _next_events(self) -> None:
        conn = self.conn
        while not (self.closing or self.write_paused or self.held):
            their = conn.their_state
            if their is h11.IDLE:
                skip_blank_lines(conn)  # RFC 9112 2.2: ignored before a request line
                status = self._head_refused()
                if status:
                    self._send_error(status)
                    return
            elif their is h11.MUST_CLOSE and buffered(conn):
                # The last request is complete (Connection: close, HTTP/1.0):
                # what follows is not a request (RFC 9112 9.6), and must not
                # turn into a 400 that aborts the answer still owed.
                discard_buffer(conn)
            event = conn.next_event()
            kind = type(event)
            if kind is h11.Request:
                assert isinstance(event, h11.Request)
                self._on_request(event)
            elif kind is h11.Data:
                assert isinstance(event, h11.Data)
                self._on_data(event.data)
            elif kind is h11.EndOfMessage:
                self._on_request_end()
            elif event is h11.NEED_DATA:
                self._on_need_data()
                return
            elif event is h11.PAUSED:
                # After a 101 h11 stays PAUSED for good, and the tunnel reads
                # raw bytes: only a waiting pipelined request pauses reading.
                if self.phase != TUNNEL:
                    self.gate.block(flow.PIPELINE)
                return
            else:  # ConnectionClosed
                self._close()
                return

    def _on_need_data(self) -> None:
        if self.conn.their_state is h11.IDLE and self.since_head > self.limits.max_target_bytes:
            self._check_request_line()
        entry = self.entry
        if entry is not None and entry.bytes_in + chunk_owed(self.conn) > self.limits.max_body_bytes:
            self._send_error(413)  # a chunk size past the limit, announced before its data
            return
        # A proxied response is still to come (Connection: close, HTTP/1.0):
        # proxy_done closes once it has been sent.
        if self.cycle is not None:
            return
        if self.conn.their_state is h11.MUST_CLOSE or self.conn.our_state is h11.MUST_CLOSE:
            self._close()

    def _check_request_line(self) -> None:
        """Refuse with 414 a request line longer than the target limit allows,
        before the whole head arrives."""
        too_long = request_line_too_long(head_bytes(self.conn), self.limits.max_target_bytes)
        if too_long:
            self._send_error(414)
        elif too_long is None:
            self.since_head = 0  # the line is complete and fine; stop checking

    def _head_refused(self) -> int:
        """strict.head_refused for the head in h11's buffer, read in place
        (h11_internals.head_bytes), resuming where the last call stopped."""
        status, self.scanned = head_refused(head_bytes(self.conn), self.scanned)
        return status

    def _on_request(self, event: h11.Request) -> None:
        """A head h11 parsed: its fields scanned and indexed as fast_request does."""
        headers: Headers = []
        index: Index = {}
        size = scan_fields(event, headers, index)
        self._on_head(event.method, event.target, event.http_version, headers, index, size)

    def _on_head(
        self, method: bytes, target: bytes, version: bytes, headers: Headers, index: Index, size: int
    ) -> None:
        """A complete request head, from either parser (`headers` and
        `index` as scan_fields collects them, `size` as it measures)."""
        self.since_head = 0
        self.scanned = 0
        started = time.time()
        request = validate(method, target, version, headers, index, size, started, self.limits, self)
        if isinstance(request, int):
            self.entry = LogEntry(_unparsed(method, target, self.client_ip, self.scheme, started))
            self._send_error(request)
            return
        self.entry = entry = LogEntry(request)
        length = request.length
        has_body = length != 0 if length is not None else request.chunked
        if has_body:
            self.phase = BODY
            self.deadline = self.state.now + self.limits.body_idle_timeout
        else:
            self.phase = BUSY
        action = self.dispatch(self, request, entry)
        if not isinstance(action, LocalResponse):
            self.cycle = action
            action.start()
            return
        close = False
        if has_body:
            # Answered before the body: keep the connection only if the rest
            # of the body is small enough to drain (and the client is sending
            # it at all: after an unanswered 100-continue it may not).
            self.early = True
            expects = self.conn.client_is_waiting_for_100_continue
            close = expects or length is None or length > DRAIN_LIMIT
        self._respond(action, close, request.method == b"HEAD")

    def trusts_peer(self) -> bool:
        """Whether the peer is a trusted proxy (its X-Request-Id may name the
        request): asked once per connection, and only when one is sent."""
        trusted = self.trusted_peer
        if trusted is None:
            networks = TrustedProxies(self.limits.trusted_networks)
            trusted = self.trusted_peer = networks.trusts(self.client_ip)
        return trusted

    def _on_data(self, data: bytes) -> None:
        entry = self.entry
        if entry is None:
            return
        size = len(data)
        entry.bytes_in += size
        if entry.bytes_in + chunk_owed(self.conn) > self.limits.max_body_bytes:
            self._send_error(413)
        elif self.cycle is not None:
            self.cycle.client_data(data)
        elif self.early:
            self.drained += size
            if self.drained > DRAIN_LIMIT:
                self._close()

    def _on_request_end(self) -> None:
        cycle = self.cycle
        if cycle is not None:
            self.phase = BUSY
            cycle.client_end()
        elif self.conn.our_state is h11.DONE:
            self._finish_cycle()
        else:
            self.phase = BUSY

    # -- responding ----------------------------------------------------------

    def _respond(self, response: LocalResponse, close: bool, head_only: bool) -> None:
        conn = self.conn
        commit_local(conn, response.event)
        close = close or self.closing or self.state.draining or conn.our_state is h11.MUST_CLOSE
        entry = self.entry
        rid = entry.request.request_id if entry is not None else new_id()
        data = response.render(self.state.date, close, head_only, rid)
        self.writes.write(self.transport, data)
        if entry is not None:
            entry.status = response.status
            entry.bytes_out = len(data)
        if close:
            self._linger()
        elif conn.their_state is h11.DONE:
            self._finish_cycle()

    def _finish_cycle(self) -> None:
        self._log_request()
        self.early = False
        self.drained = 0
        next_cycle(self.conn)
        if self.state.draining:
            self._close()
            return
        self.phase = IDLE
        self.deadline = self.state.now + self.limits.keepalive_timeout
        self.gate.unblock(flow.PIPELINE)

    def _send_error(self, status: int) -> None:
        """Answer with a small error response when the connection can still
        carry one, then close; otherwise just close."""
        if self.phase == LINGER or self.transport.is_closing():
            return
        # Responses leave in request order: an earlier one may still be
        # queued (its end and this error come out of one upstream read); the
        # worker's WriteBatch sends this one after it.
        cycle, self.cycle = self.cycle, None
        if cycle is not None:
            cycle.client_lost()
        if self.conn.our_state in _SEND_OK:
            response = self.state.responses.error(status)
            entry = self.entry
            if entry is None and status != 503:
                entry = self.entry = LogEntry(_unparsed(b"-", b"-", self.client_ip, self.scheme, time.time()))
            rid = entry.request.request_id if entry is not None else new_id()
            data = response.render(self.state.date, True, False, rid)
            self.writes.write(self.transport, data)
            if entry is not None:
                entry.status = status
                entry.bytes_out = len(data)
            self._linger()
        else:
            self.abort()

    def _linger(self) -> None:
        """Half-close after the last response and discard what the client
        still sends, so it reads our answer instead of a reset."""
        self.closing = True
        self.phase = LINGER
        self.deadline = self.state.now + LINGER_TIMEOUT
        transport = self.transport
        if self.entry is not None:
            self._log_request()
        self.writes.flush()  # what is queued leaves before the FIN (WriteBatch)
        if transport.can_write_eof():
            transport.write_eof()
            self.gate.reset()
        else:
            transport.close()

    def _close(self) -> None:
        self.closing = True
        if self.entry is not None:
            self._log_request()
        self.writes.flush()
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once: used when a response cannot be
        completed honestly (the upstream died mid-body)."""
        self.closing = True
        if self.entry is not None:
            self._log_request()
        self.writes.flush()
        self.transport.abort()

    def _log_request(self) -> None:
        entry = self.entry
        self.entry = None
        if entry is None:
            return
        if not entry.status:
            entry.status = 499  # the client went away before we answered
        self.state.log(self.client, entry)

    # -- the proxy cycle's side of the connection ------------------------------

    def hold(self, held: bool, wait: float = 0.0) -> None:
        """Stop (or restart) parsing client events while the upstream
        connection is not ready (for up to `wait` seconds); the bytes wait
        in the socket."""
        if held:
            self.held = True
            # The client cannot be late while we are not reading it.
            wait += self.limits.body_idle_timeout
            self.deadline = max(self.deadline, self.state.now + wait)
            self.gate.block(flow.WAITING)
        elif self.held:
            self.held = False
            self.gate.unblock(flow.WAITING)
            if self.phase == BODY:  # reading again: the body's idle clock restarts now
                self.deadline = self.state.now + self.limits.body_idle_timeout
            self.state.loop.call_soon(self._process)

    def arm(self, timeout: float) -> None:
        """Set the deadline the upstream must meet while we wait on it."""
        if self.phase == BUSY:
            self.deadline = self.state.now + timeout

    def send_continue(self) -> None:
        if self.conn.client_is_waiting_for_100_continue:
            self.send(_CONTINUE)

    def send(self, event: h11.Event | ResponseHead) -> None:
        if event is END:
            last = commit_end(self.conn)
            if last:
                self._write(last)
            return
        if isinstance(event, ResponseHead):
            # A proxied head: framed by hand, h11's state advanced to match.
            if self.entry is not None:
                self.entry.status = event.status
            self._write(commit_head(self.conn, event, self.state.draining or self.closing))
            return
        if type(event) is h11.Response:
            assert isinstance(event, h11.Response)
            if self.entry is not None:
                self.entry.status = event.status_code
            if self.state.draining or self.closing:
                # Tell the client this connection ends with this response.
                headers = [*event.headers.raw_items(), (b"connection", b"close")]
                event = h11.Response(status_code=event.status_code, headers=headers, reason=event.reason)
        data: bytes | None
        if type(event) is h11.EndOfMessage and not event.headers:
            data = commit_end(self.conn)
        else:
            data = self.conn.send(event)
        if data:
            self._write(data)

    def send_body(self, data: bytes) -> None:
        send_body(self.conn, data, self._write)

    def send_whole(self, head: ResponseHead, body: bytes) -> None:
        if self.entry is not None:
            self.entry.status = head.status
        self._write(commit_whole(self.conn, head, body, self.state.draining or self.closing))

    def send_raw(self, data: bytes) -> None:
        self._write(data)

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.writes.write(self.transport, data)
            if self.entry is not None:
                self.entry.bytes_out += len(data)

    def proxy_done(self, upstream_status: int, upstream_ms: float) -> None:
        """The upstream's response is complete on the client side."""
        self.cycle = None
        if self.entry is not None:
            self.entry.upstream_status = upstream_status
            self.entry.upstream_ms = upstream_ms
        conn = self.conn
        if conn.our_state is h11.MUST_CLOSE or self.closing or self.state.draining:
            self._linger()
        elif conn.their_state is h11.DONE:
            self._finish_cycle()
            if pending(conn):
                self._process()  # a pipelined request (or the client's EOF) is waiting
        else:
            # Answered before the client finished its body: drain or close.
            self.early = True
            self.phase = BODY
            self.deadline = self.state.now + self.limits.body_idle_timeout

    def proxy_failed(self, status: int) -> None:
        """The upstream failed before any response byte: answer locally."""
        if self.entry is not None:
            self.entry.upstream_status = 0
        self.answer(self.state.responses.error(status))

    def answer(self, response: LocalResponse) -> None:
        """The cycle's answer is a local response (an endpoint's page, or an
        error before any upstream byte); close unless the request is complete."""
        self.cycle = None
        self.held = False
        self.gate.unblock(flow.WAITING)
        complete = self.conn.their_state is h11.DONE
        self._respond(response, not complete, self.request_method == b"HEAD")
        if complete and not self.closing:
            self._process()

    @property
    def request_method(self) -> bytes:
        return self.entry.request.method if self.entry is not None else b""

    def start_tunnel(self, cycle: Cycle, expires: float | None) -> None:
        """After a 101: raw bytes both ways until either side closes or the
        token that authorised the upgrade expires."""
        self.phase = TUNNEL
        self.held = False
        self.gate.reset()
        if self.entry is not None:
            # The request's answer was the 101 (send() only records final
            # responses): log it as such, not as 499 when the tunnel ends.
            self.entry.status = self.entry.upstream_status = 101
        if expires is not None:
            self.deadline = self.state.now + max(0.0, expires - time.time())
        else:
            self.deadline = float("inf")
        leftover = self.conn.trailing_data[0]
        if leftover:
            cycle.client_raw(leftover)

    def tunnel_closed(self) -> None:
        self.cycle = None
        self._close()

    # -- timeouts, called by the server's sweep ------------------------------

    def expire(self) -> None:
        phase = self.phase
        if phase == LINGER:
            self.writes.flush()
            self.transport.abort()
        elif self.write_paused and phase != TUNNEL:
            self.abort()  # the client stopped reading what we send it
        elif phase == IDLE:
            self._close()
        elif phase == TUNNEL:
            self._close_tunnel()
        elif phase == BUSY and self.cycle is not None:
            self.cycle.timeout()
        elif phase == HEAD and self.entry is None and not self.conn.trailing_data[0]:
            self._close()  # nothing was sent at all (a preconnect): no 408 to read
        elif phase in (HEAD, BODY):
            self._send_error(408)

    def _close_tunnel(self) -> None:
        cycle, self.cycle = self.cycle, None
        if cycle is not None:
            cycle.client_lost()
        self._close()

    def shutdown(self) -> None:
        """Server is draining: close now if idle, else after this response."""
        untouched = self.phase == HEAD and self.since_head == 0 and self.entry is None
        if self.phase == IDLE or untouched:
            self._close()
