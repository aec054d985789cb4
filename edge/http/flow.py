"""Flow control: the one object allowed to pause and resume a transport's
reading (ReadGate), and the one through which the worker writes (WriteBatch).

A transport's reading can be held for several reasons at once (the other
side's write buffer is full, a pipelined request waits its turn, the
upstream is still connecting). Each reason is a bit; reading is paused while
any bit is set and resumed when the last one clears. Nothing else calls
pause_reading/resume_reading, so no reason can undo another's pause.

The marks below bound what one proxied exchange holds in memory while its
reader is slower than its writer: at most one read from the fast side on top
of the slow side's write buffer, which pauses the fast side's reading once it
passes WRITE_HIGH_WATER. Upstream reads (downloads) are READ_SIZE, always, so
a client that reads slowly, stops reading, or stalls after a fast start costs
at most READ_SIZE + WRITE_HIGH_WATER (128 KiB), whatever the size of the
body. Client reads (uploads) are uvloop's own (250 KB) on top of the
upstream's write buffer.
"""

from __future__ import annotations

import asyncio
import logging

from edge.config.schema import KIB

log = logging.getLogger("edge.protocol")
# What a transport takes: bytes, or a view of them (h11 hands body pieces as
# bytearray).
Bytes = bytes | bytearray | memoryview

PEER_WRITE = 1  # the transport we forward to is above its high-water mark
PIPELINE = 2  # a request is being answered; the next one waits (client side)
WAITING = 4  # the upstream connection is not ready yet (client side)
OWN_WRITE = 8  # our writes to this same transport are backed up (it is not reading)

# Bytes taken from an upstream per read: all of a read may land in a slow
# client's write buffer. Reads that grew to 256 KiB for a client keeping up
# made a 1 GiB download cost 0.65-0.80 s of proxy CPU against 0.92-1.01 s,
# but a client that stalled after a fast start then held 320 KiB: the bound
# won (issue 9: "about 128 KiB" per slow reader).
READ_SIZE = 64 * KIB
# A transport's write buffer above this pauses whoever feeds it (pause_writing);
# it resumes at a quarter of it (asyncio's low-water mark for a high-water
# mark set alone). Set on every proxied transport: uvloop's defaults differ
# for TLS (512 KiB).
WRITE_HIGH_WATER = 64 * KIB


class ReadGate:
    __slots__ = ("reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0

    def block(self, reason: int) -> None:
        if not self.reasons and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons |= reason

    def unblock(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()

    def reset(self) -> None:
        self.unblock(self.reasons)


class WriteBatch:
    """The writes a worker makes while its loop handles one round of ready
    sockets, sent together once the round is over (the loop's next turn,
    before it polls again), not one at a time as each request is handled.

    Why: uvloop sends a write at once, and a write wakes the process that
    reads it (the upstream, the client) on the other core. Written between
    one request's work and the next, each write finds its reader asleep
    again; written together after the round, one wake-up serves them all.
    The proxied GET (bench/proxy.py, same run): 17,317 req/s and 57.5 us of
    CPU per request with the batch, 15,881 and 62.9 writing at once; a
    health answer (bench/load.py): 16.1 us of CPU, 28 to 33 before.

    Invariants, on which every caller relies:
    - the bytes for one transport leave in the order they were written, and
      writes to one transport queued one after another leave as one write
      (a head, a body piece and an end parsed from one upstream read; a
      chunk's size line, data and CRLF), none of them copied;
    - whoever closes, half-closes or aborts a transport calls `flush` first,
      so nothing queued is lost behind a close or sent after it;
    - `flush` runs on the loop's next turn, whatever happens meanwhile: a
      write waits for no other event;
    - a batch holds at most WRITE_HIGH_WATER bytes: a write that takes it
      there flushes it at once, so a transport's own write buffer, and the
      pause_writing it triggers, still bound what a fast upstream can make
      the worker hold for a slow client (uvloop reads a ready socket up to
      32 times in one turn: deferred without a bound, a download's reads
      all queued here);
    - without a loop (`WriteBatch(None)`) every write goes out at once: for
      whoever drives a connection without running a loop (tests, the
      in-process bench); tests/http/test_flow.py holds the two ways to the
      same bytes and calls per transport.
    """

    __slots__ = ("loop", "pending", "sent", "size")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.size = 0  # bytes pending
        # (transport, its pieces in order): one writev each
        self.pending: list[tuple[asyncio.WriteTransport, list[Bytes]]] = []
        self.sent = 0  # how many of `pending` a flush in progress has sent

    def write(self, transport: asyncio.WriteTransport, data: Bytes) -> None:
        loop = self.loop
        if loop is None:
            transport.write(data)
        else:
            self._queue(loop, transport, (data,), len(data))

    def writelines(self, transport: asyncio.WriteTransport, pieces: tuple[Bytes, ...]) -> None:
        """`pieces` in order, in one write (a chunk's size line, its data,
        its CRLF), none of them copied."""
        loop = self.loop
        if loop is None:
            transport.writelines(pieces)
        else:
            self._queue(loop, transport, pieces, sum(map(len, pieces)))

    def _queue(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        pieces: tuple[Bytes, ...],
        size: int,
    ) -> None:
        pending = self.pending
        if self.sent < len(pending) and pending[-1][0] is transport:
            pending[-1][1].extend(pieces)  # the same transport's, still unsent: one write
        else:
            if not pending:
                loop.call_soon(self.flush)
            pending.append((transport, list(pieces)))
        self.size += size
        if self.size >= WRITE_HIGH_WATER:
            self.flush()

    def flush(self) -> None:
        """Send everything queued, in order (a transport closed meanwhile
        gets nothing). A write can call back into a protocol that writes or
        closes again (pause_writing): a flush inside this one goes on from
        where this one is, so the order holds across both, and what is
        written meanwhile is sent by this same flush. A write that raises (a
        bug: nothing queued should) costs its own connection, never the
        writes queued for the others."""
        pending = self.pending
        while self.sent < len(pending):
            transport, pieces = pending[self.sent]
            self.sent += 1
            if transport.is_closing():
                continue
            try:
                if len(pieces) == 1:
                    transport.write(pieces[0])
                else:
                    transport.writelines(pieces)
            except Exception:
                log.exception("internal error writing to a connection: aborted")
                transport.abort()
        pending.clear()
        self.sent = self.size = 0
