"""Serving `GET /metrics` on the metrics listener: by the one worker itself,
or, with several, by the supervisor, which asks every worker on each scrape.

Invariants:
- The metrics listener is never a public listener (config checks), and this
  module answers nothing but /metrics on it.
- With one worker, its event loop serves the scrape (asyncio streams).
- With several, the supervisor serves it from one thread of its own (the
  supervisor's main thread waits in sigtimedwait and must stay free for
  signals). The thread holds no lock and shares only the listening socket,
  the scrape connection in progress (`conn`) and each worker's `metrics`
  channel (a socketpair made at fork), so a fork while it runs leaves the
  child nothing half-held; the child closes them all. Scrapes are served
  one at a time (Prometheus scrapes a target once per interval); a scraper
  that stalls holds the next for at most SCRAPE_TIMEOUT to send its whole
  head, and as long again to take the whole answer.
- Per scrape the supervisor sends each worker a 4-byte sequence number and
  reads back (sequence, length, msgpack families); a reply with another sequence
  (one that came too late for an earlier scrape) is dropped. A worker that
  does not answer within WORKER_TIMEOUT counts with its last answer.
- A sum never goes down while the edge runs (Prometheus would read a
  counter reset and count the rest again): the supervisor keeps each slot's
  last answer, and when a slot's worker is gone (its channel closed, even
  before the supervisor reaps it, or replaced by a new one), its last
  counters and histograms are folded into `retired`, added to every later
  scrape. What a dead worker counted after its last answer is lost; its
  gauges (start time, open connections) are never reported again.
- A worker writes its reply from its loop as the supervisor reads it, one reply at a
  time (`WorkerReplies`): never a blocking send that a supervisor which gave
  up reading could hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import msgspec

from edge.config.schema import KIB, MIB
from edge.runtime import metrics

log = logging.getLogger("edge.metrics")

WORKER_TIMEOUT = 2.0  # seconds the supervisor waits for a worker's snapshot (one loop turn of work)
ACCEPT_POLL = 0.5  # seconds; how often the supervisor's thread looks whether it should stop
_REQUEST = struct.Struct("!I")
_REPLY = struct.Struct("!II")
MAX_SNAPSHOT = 64 * MIB  # bytes; a snapshot is a few KiB per application


# -- one worker: its own loop serves ---------------------------------------------------


async def serve_local(sock: socket.socket, gather: Callable[[], bytes]) -> asyncio.Server:
    """Serve /metrics on the listening `sock`; `gather` renders them now."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(_read_head(reader), metrics.SCRAPE_TIMEOUT)
            body = gather() if metrics.wants_metrics(head) else None
            writer.write(metrics.answer(head, body))
            # A scraper that never reads holds the answer's memory no longer.
            await asyncio.wait_for(writer.drain(), metrics.SCRAPE_TIMEOUT)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, sock=sock, limit=metrics.MAX_HEAD_BYTES)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# -- a supervisor's worker: answer the supervisor --------------------------------------


class WorkerReplies:
    """The worker's end of its metrics channel, served by the worker's loop.

    A reply is written as the supervisor reads it (add_writer), never with a
    blocking send: a supervisor that gave up on this worker (it timed out)
    stops reading, and a snapshot bigger than the socket buffer would
    otherwise hold the worker's loop, and every client on it, in the send.
    One reply at a time: a request that comes while one is going out waits
    for the supervisor's next scrape (the supervisor drops replies to
    sequences it no longer waits for), so two replies never interleave.
    """

    __slots__ = ("loop", "sock", "families", "sending", "open")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        families: Callable[[], Sequence[metrics.Family]],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.families = families
        self.sending = b""  # the rest of the reply going out
        self.open = True
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop serving the channel (the supervisor is gone, or the worker stops)."""
        if self.open:
            self.open = False
            self.loop.remove_reader(self.sock.fileno())
            if self.sending:
                self.loop.remove_writer(self.sock.fileno())
            self.sending = b""

    def _readable(self) -> None:
        try:
            data = self.sock.recv(64 * _REQUEST.size)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.sending or len(data) < _REQUEST.size:  # busy; or never split in practice
            return
        # Several requests queued (a late reply's scrape, then the next): answer the last.
        seq = _REQUEST.unpack_from(data, len(data) - len(data) % _REQUEST.size - _REQUEST.size)[0]
        payload = metrics.encode(self.families())
        self.sending = _REPLY.pack(seq, len(payload)) + payload
        self._writable()
        if self.sending and self.open:
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.sending)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.sending = self.sending[sent:]
        if not self.sending:
            self.loop.remove_writer(self.sock.fileno())


# -- several workers: the supervisor serves ------------------------------------------------


class SupervisorMetrics:
    """The supervisor's metrics thread (see the module invariants)."""

    def __init__(
        self,
        listener: socket.socket,
        channels: Callable[[], list[tuple[int, socket.socket]]],
        own: Callable[[], list[metrics.Family]],
    ) -> None:
        self.listener = listener
        self.channels = channels  # (slot, the supervisor's end) of every live worker, now
        self.own = own  # the supervisor's families: they replace the workers' of the same name
        self.seq = 0
        self.stopping = False
        self.conn: socket.socket | None = None  # the scrape being served
        # Channels a reply was cut in the middle of: no longer in step, so
        # left out until their worker is replaced (with a new channel).
        self.broken: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        # slot -> (the channel that answered, its last answer); the channel
        # object tells a slot's replaced worker from the one that answered.
        self.last: dict[int, tuple[socket.socket, list[metrics.Family]]] = {}
        self.retired: list[metrics.Family] = []  # counters of workers gone
        self.thread = threading.Thread(target=self._run, name="edge-metrics", daemon=True)

    def start(self) -> None:
        self.listener.settimeout(ACCEPT_POLL)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(ACCEPT_POLL * 4)
        self.listener.close()

    def _run(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conn = conn
            with conn:
                try:
                    self._serve(conn)
                except OSError:
                    pass
                except Exception:  # a scrape must never take the supervisor down
                    log.exception("metrics scrape failed")
            self.conn = None

    def _serve(self, conn: socket.socket) -> None:
        # One deadline for the whole head, not one per recv: a client sending
        # a byte at a time would otherwise hold this one thread (and every
        # scrape behind it) for MAX_HEAD_BYTES timeouts.
        deadline = time.monotonic() + metrics.SCRAPE_TIMEOUT
        head = b""
        while b"\r\n\r\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(left)
            chunk = conn.recv(4 * KIB)
            if not chunk or len(head) + len(chunk) > metrics.MAX_HEAD_BYTES:
                return
            head += chunk
        body = metrics.render(self.gather()) if metrics.wants_metrics(head) else None
        conn.settimeout(metrics.SCRAPE_TIMEOUT)  # and one for the whole answer (sendall's total)
        conn.sendall(metrics.answer(head, body))

    def gather(self) -> list[metrics.Family]:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        got: list[tuple[int, list[metrics.Family]]] = []
        live = self.channels()
        for slot, channel in live:
            answer = None if channel in self.broken else self._ask(channel, self.seq)
            held = self.last.get(slot)
            if held is not None and (held[0] is not channel or answer is _GONE):
                self._retire(slot)  # replaced, or dead and not reaped yet
                held = None
            if isinstance(answer, list):
                self.last[slot] = (channel, answer)
                got.append((slot, answer))
            elif held is not None:
                got.append((slot, held[1]))  # slow or stalled: its last word still counts
        for slot in self.last.keys() - {slot for slot, _ in live}:
            self._retire(slot)  # died, not (yet) replaced
        if self.retired:
            got.append((-1, self.retired))
        return metrics.overlay(metrics.merge(got) or [metrics.build_info()], self.own())

    def _retire(self, slot: int) -> None:
        """Fold the last counters of `slot`'s gone worker into `retired`."""
        _, families = self.last.pop(slot)
        kept = [f for f in families if f.merge == metrics.SUM and f.type in ("counter", "histogram")]
        self.retired = metrics.merge([(-1, self.retired), (-1, kept)])

    def _ask(self, channel: socket.socket, seq: int) -> list[metrics.Family] | object | None:
        """The worker's families; None when it did not answer in time (or
        garbled its answer); _GONE when its channel is closed: it died."""
        try:
            channel.settimeout(WORKER_TIMEOUT)
            channel.sendall(_REQUEST.pack(seq))
            while True:
                got, size = _REPLY.unpack(_exactly(channel, _REPLY.size, whole=False))
                if size > MAX_SNAPSHOT:
                    self.broken.add(channel)
                    return None
                payload = _exactly(channel, size, whole=True)
                if got == seq:
                    return metrics.decode(payload)
        except _CutShort:
            self.broken.add(channel)
            return None
        except TimeoutError:
            return None
        except (OSError, EOFError):
            return _GONE
        except msgspec.DecodeError:
            return None


_GONE = object()  # _ask: the worker's end of the channel is closed


class _CutShort(Exception):
    """A reply stopped arriving in its middle."""


def _exactly(sock: socket.socket, size: int, *, whole: bool) -> bytes:
    """`size` bytes; `whole`: the message has begun, so a timeout now cuts it."""
    parts: list[bytes] = []
    while size:
        try:
            chunk = sock.recv(min(size, MIB))
        except TimeoutError:
            if whole or parts:
                raise _CutShort from None
            raise
        if not chunk:
            raise EOFError
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
