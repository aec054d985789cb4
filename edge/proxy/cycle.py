"""One proxied request: the cycle between a client connection and an upstream.

Invariants:
- A cycle owns at most one upstream connection at a time and gives it back to
  the pool only after a clean exchange; on any failure it is aborted.
- Bodies flow as they arrive, never buffered whole: client Data events are
  written to the upstream as they are parsed, upstream Data to the client.
  Backpressure: a full upstream write buffer blocks client reading and a full
  client write buffer blocks upstream reading, each through that side's
  ReadGate.
- Before the response head is sent to the client, an upstream failure becomes
  a small 502/504; after it, the client connection is aborted (no fake
  success). Either way it goes to the worker's fault log (faults.py), which
  logs the first of a burst and counts the rest.
- A request that never reached the upstream on a reused pooled connection is
  retried once on a fresh one, only when that is safe: idempotent method, no
  request body sent, nothing of the response received.
- A cycle sees its client connection only as edge.http.cycle.Client, and the
  worker only as the `Upstreams` it is handed: the proxy settings, loop, pool,
  task set and fault log in force when the request arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time

import h11
import msgspec

from edge.access.headers import Headers
from edge.access.request import Request
from edge.config.schema import Proxy
from edge.http import flow
from edge.http.cycle import END, Client
from edge.http.faults import FaultLog
from edge.http.message import ResponseHead
from edge.proxy.forwarding import response_headers
from edge.proxy.upstream import Pool, Target, UpstreamConnection, UpstreamError

log = logging.getLogger("edge.proxy")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class ForwardPlan(msgspec.Struct, frozen=True, gc=False):
    """Everything the proxy needs to forward one request. A Struct, like
    decide's actions: built once per request, it costs a tenth of a frozen
    dataclass."""

    target: Target
    headers: Headers  # already rewritten (forwarding.request_headers)
    # The request target to send: origin-form (RFC 9112 3.2.1) even when the
    # client used absolute-form, which only proxies are required to accept.
    path: bytes = b""
    vary_origin: bool = False
    upgrade: bool = False
    expires: float | None = None  # epoch seconds: the authorising token's exp (tunnels)


class Upstreams:
    """What every proxy cycle of a worker shares, under one configuration:
    built once per (re)load, so a cycle keeps the settings it started with."""

    __slots__ = ("faults", "loop", "pool", "settings", "tasks")

    def __init__(
        self,
        settings: Proxy,
        loop: asyncio.AbstractEventLoop,
        pool: Pool,
        tasks: set[asyncio.Task[None]],
        faults: FaultLog,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.pool = pool
        self.tasks = tasks  # connects in flight; the worker holds them so they are not collected
        self.faults = faults


class ProxyCycle:
    # Where a cycle starts, as class attributes: one is made per proxied
    # request, and an instance assigns only what changes.
    up: UpstreamConnection | None = None
    request_done = False  # the client's request was fully passed on
    response_started = False
    finished = False
    body_sent = False
    retried = False
    switch: ResponseHead | None = None  # a 101 that came before the request's end
    status = 0
    head_at = 0.0

    def __init__(self, client: Client, request: Request, plan: ForwardPlan, upstreams: Upstreams) -> None:
        self.client = client
        self.request = request
        self.plan = plan
        self.upstreams = upstreams
        self.settings = upstreams.settings
        self.pool = upstreams.pool
        self.started = time.monotonic()

    # -- starting

    def start(self) -> None:
        conn = self.pool.take(self.plan.target)
        if conn is not None:
            # Connected: the request is sent now, and its wait armed then
            # (_request_sent), or the client's body awaited.
            self._attach(conn)
        else:
            proxy = self.settings
            self.client.arm(proxy.connect_timeout + proxy.response_timeout)
            self._connect_later()

    def _connect_later(self) -> None:
        self.client.hold(True, self.settings.connect_timeout)
        upstreams = self.upstreams
        task = upstreams.loop.create_task(self._connect())
        upstreams.tasks.add(task)
        task.add_done_callback(upstreams.tasks.discard)

    async def _connect(self) -> None:
        # Nobody awaits this task: every outcome, a bug included, must answer
        # the client now (not at its deadline) and leave no exception in it.
        try:
            conn = await self.pool.connect(self.plan.target)
            if self.finished:
                conn.abort()
                return
            self._attach(conn)
        except UpstreamError as exc:
            if not self.finished:
                self._fail(exc)
        except Exception:
            log.exception("internal error forwarding to %s", self.plan.target.url)
            if not self.finished:
                self._fail(UpstreamError(502, "internal error while forwarding", "internal error"))

    def _attach(self, conn: UpstreamConnection) -> None:
        self.up = conn
        lost = conn.attach(self)
        if lost is not None:
            # Lost between connecting (or pooling) and now: its
            # connection_lost found no exchange to tell.
            self.upstream_lost(lost)
            return
        plan = self.plan
        request = self.request
        # The forwarded head re-declares the request's own framing
        # (forwarding.request_headers), so the Request says it without a
        # walk over the forwarded fields.
        chunked = request.chunked
        has_body = chunked or bool(request.length)
        conn.send_request(request.method, plan.path or request.target, plan.headers, chunked, plan.upgrade)
        # A request without a body is complete upstream with its head: the
        # upstream may answer before the client's end-of-message is parsed
        # here (parsing resumes only after `hold(False)`), and the exchange
        # must then still be clean and poolable. A retry ends the same way.
        if self.request_done or not has_body:
            conn.end_request()
            self._request_sent()
        client = self.client
        client.send_continue()  # only now, authorised and connected, may the client send its body
        client.hold(False)

    # -- client side (called by the client protocol)

    def client_data(self, data: bytes) -> None:
        if self.up is not None and not self.up.closed:
            self.body_sent = True
            self.up.send_body(data)

    def client_end(self) -> None:
        self.request_done = True
        if self.up is not None and self.up.body_open:
            self.up.end_request()
            self._request_sent()
        if self.switch is not None:
            self.upstream_switch(self.switch)

    def _request_sent(self) -> None:
        if not self.response_started:  # else idle_timeout, armed by the response, applies
            self.client.arm(self.settings.response_timeout)

    def client_write_paused(self, paused: bool) -> None:
        up = self.up
        if up is not None and up.gate is not None:
            (up.gate.block if paused else up.gate.unblock)(flow.PEER_WRITE)

    def client_lost(self) -> None:
        """The client went away: nothing of this exchange is reusable."""
        self.finished = True
        if self.up is not None:
            self.up.exchange = None
            self.up.abort()

    def client_raw(self, data: bytes) -> None:
        if self.up is not None:
            self.up.write_raw(data)

    def timeout(self) -> None:
        if self.response_started:
            self._fail(UpstreamError(504, "upstream stalled within the response body", "timeout"))
        else:
            self._fail(UpstreamError(504, "upstream did not answer in time", "timeout"))

    # -- upstream side (the Exchange protocol)

    def upstream_data(self, data: bytes) -> None:
        self.client.send_body(data)
        self.client.arm(self.settings.idle_timeout)

    def upstream_head(self, head: ResponseHead) -> None:
        self.client.send(self._client_head(head))
        self.client.arm(self.settings.idle_timeout)

    def upstream_whole(self, head: ResponseHead, body: bytes) -> None:
        """upstream_head, upstream_data and upstream_end, for a response
        that arrived whole: written to the client as one piece."""
        self.client.send_whole(self._client_head(head), body)
        self._ended()

    def _client_head(self, head: ResponseHead) -> ResponseHead:
        """The response has started: the head the client gets for `head`."""
        self.response_started = True
        self.status = head.status
        self.head_at = time.monotonic()
        headers = response_headers(head.headers, self.plan.vary_origin, False, self.request.request_id)
        return ResponseHead(head.status, head.reason, headers)

    def upstream_end(self) -> None:
        self.client.send(END)
        self._ended()

    def _ended(self) -> None:
        """The response is complete on both sides: the upstream connection
        goes back to the pool (or closes), the client connection goes on."""
        self.finished = True
        up = self.up
        self.up = None
        if up is not None:
            up.exchange = None
            if up.request_sent:
                self.pool.release(up, self.upstreams.loop.time())
            else:
                up.abort()  # the upstream answered before the whole body: not reusable
        self._unblock_client()
        self.client.proxy_done(self.status, round((self.head_at - self.started) * 1000, 3))

    def _unblock_client(self) -> None:
        """Letting go of the upstream: its full write buffer no longer holds
        client reading (an aborted transport never calls resume_writing; the
        rest of an early-answered body must be drained or refused)."""
        self.client.gate.unblock(flow.PEER_WRITE)

    def upstream_switch(self, head: ResponseHead) -> None:
        up = self.up
        if up is None or not self.plan.upgrade:
            self._abort_both()
            return
        if not self.request_done:
            # The upstream may answer as soon as it has the head; the client
            # side switches only once its request is complete (client_end).
            self.switch = head
            return
        self.switch = None
        self.response_started = True
        self.status = 101
        headers = response_headers(head.headers, switching=True, request_id=self.request.request_id)
        self.client.send(h11.InformationalResponse(status_code=101, headers=headers, reason=head.reason))
        leftover = up.start_tunnel()
        self.client.start_tunnel(self, self.plan.expires)
        if leftover:
            self.client.send_raw(leftover)

    def upstream_raw(self, data: bytes) -> None:
        self.client.send_raw(data)

    def upstream_write_paused(self, paused: bool) -> None:
        gate = self.client.gate
        (gate.block if paused else gate.unblock)(flow.PEER_WRITE)

    def upstream_lost(self, error: UpstreamError) -> None:
        if self.finished:
            return
        up = self.up
        self.up = None
        if up is not None and up.tunnel:
            self.finished = True
            self.client.tunnel_closed()
            return
        if self._can_retry(up):
            self.retried = True
            self._unblock_client()
            self._connect_later()
            return
        self._fail(error)

    def _can_retry(self, up: UpstreamConnection | None) -> bool:
        return (
            up is not None
            and up.reused
            and not self.retried
            and not self.response_started
            and not self.body_sent
            and self.request.method in IDEMPOTENT
        )

    # -- failures

    def _fail(self, error: UpstreamError) -> None:
        self.finished = True
        if self.up is not None:
            self.up.exchange = None
            self.up.abort()
            self.up = None
        self._unblock_client()
        faults, now = self.upstreams.faults, self.upstreams.loop.time()
        method = self.request.method.decode("latin-1")
        if self.response_started:
            detail = f"{method}: {error}, after the response head: client connection aborted"
            faults.upstream_failed(self.plan.target.url, error.kind, now, detail)
            self.client.abort()
            return
        detail = f"{method}: {error}: answered {error.status}"
        faults.upstream_failed(self.plan.target.url, error.kind, now, detail)
        self.status = error.status
        self.client.proxy_failed(error.status)

    def _abort_both(self) -> None:
        self.finished = True
        if self.up is not None:
            self.up.exchange = None
            self.up.abort()
            self.up = None
        self.client.abort()
