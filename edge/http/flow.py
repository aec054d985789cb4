"""Flow control: the one object allowed to pause and resume a transport's reading.

A transport's reading can be held for several reasons at once (the other
side's write buffer is full, a pipelined request waits its turn, the
upstream is still connecting). Each reason is a bit; reading is paused while
any bit is set and resumed when the last one clears. Nothing else calls
pause_reading/resume_reading, so no reason can undo another's pause.

The marks below bound what one proxied exchange holds in memory while its
reader is slower than its writer: at most one read from the fast side on top
of the slow side's write buffer, which pauses the fast side's reading once it
passes WRITE_HIGH_WATER. Upstream reads (downloads) are READ_SIZE until the
client has taken GROW_AFTER bytes without falling behind (ReadPacer), so a
client that reads slowly or not at all costs about 128 KiB, and one that
stalls after a fast start at most MAX_READ_SIZE + WRITE_HIGH_WATER (320 KiB),
whatever the size of the body. Client reads (uploads) are uvloop's own
(250 KB) on top of the upstream's write buffer.
"""

from __future__ import annotations

import asyncio

PEER_WRITE = 1  # the transport we forward to is above its high-water mark
PIPELINE = 2  # a request is being answered; the next one waits (client side)
WAITING = 4  # the upstream connection is not ready yet (client side)
OWN_WRITE = 8  # our writes to this same transport are backed up (it is not reading)

KIB = 1024
MIB = 1024 * KIB
# Bytes taken from an upstream per read at first, and again as soon as the
# client falls behind: all of a read may land in a slow client's write buffer.
READ_SIZE = 64 * KIB
# The largest read, for a client that keeps up: about uvloop's own (250 KB).
# Four times fewer reads (Python calls, syscalls, wakeups) per byte than
# READ_SIZE: a 1 GiB download through the edge (bench/proxy.py --part
# transfer) took 0.65-0.80 s of proxy CPU, against 0.92-1.01 s at READ_SIZE.
MAX_READ_SIZE = 4 * READ_SIZE
# Bytes a client must have taken, without falling behind, before reads grow.
# More than the kernel's largest default socket send buffer (tcp_wmem: 4 MiB),
# which is all a client that never reads can absorb before the edge must
# buffer for it: such a client stalls at READ_SIZE.
GROW_AFTER = 8 * MIB
# A transport's write buffer above this pauses whoever feeds it (pause_writing);
# it resumes at WRITE_LOW_WATER. Set on every proxied transport: uvloop's
# defaults differ for TLS (512 KiB).
WRITE_HIGH_WATER = 64 * KIB
# asyncio's (and uvloop's) low-water mark for a high-water mark set alone.
# A write that leaves no more than this buffered counts as the client keeping
# up: the socket took nearly all of it, and reading would not be paused.
WRITE_LOW_WATER = WRITE_HIGH_WATER // 4


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


class ReadPacer:
    """The size of the next read from one transport, paced by how the peer
    we forward to keeps up (the module comment gives the memory bound).

    Invariants: `view` is the first `size` bytes of the shared read buffer;
    `size` is READ_SIZE until the peer has taken GROW_AFTER bytes, each write
    of them leaving its write buffer at most WRITE_LOW_WATER; after that it
    doubles with every such write, up to MAX_READ_SIZE, and falls back to
    READ_SIZE at once at any write that leaves more. `reset` starts over, for
    a new peer.
    """

    __slots__ = ("buffer", "first", "kept_up", "size", "view")

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer
        self.first = buffer[:READ_SIZE]  # made once: reset runs for every exchange
        self.size = READ_SIZE
        self.view = self.first
        self.kept_up = 0  # bytes the peer took without falling behind

    def reset(self) -> None:
        self.kept_up = 0
        self._shrink()

    def forwarded(self, nbytes: int, backlog: int) -> None:
        """`nbytes` read were written to the peer, whose write buffer then
        held `backlog` bytes."""
        if backlog > WRITE_LOW_WATER:
            self._shrink()
            return
        self.kept_up += nbytes
        if self.size < MAX_READ_SIZE and self.kept_up >= GROW_AFTER:
            self.size *= 2
            self.view = self.buffer[: self.size]

    def _shrink(self) -> None:
        if self.size != READ_SIZE:
            self.size = READ_SIZE
            self.view = self.first
