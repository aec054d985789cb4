"""Flow control: the one object allowed to pause and resume a transport's reading.

A transport's reading can be held for several reasons at once (the other
side's write buffer is full, a pipelined request waits its turn, the
upstream is still connecting). Each reason is a bit; reading is paused while
any bit is set and resumed when the last one clears. Nothing else calls
pause_reading/resume_reading, so no reason can undo another's pause.

The marks below bound what one proxied exchange holds in memory while its
reader is slower than its writer: at most one read from the fast side
(READ_SIZE) on top of the slow side's write buffer, which pauses the fast
side's reading once it passes WRITE_HIGH_WATER. About 128 KiB per direction,
whatever the size of the body.
"""

from __future__ import annotations

import asyncio

PEER_WRITE = 1  # the transport we forward to is above its high-water mark
PIPELINE = 2  # a request is being answered; the next one waits (client side)
WAITING = 4  # the upstream connection is not ready yet (client side)
OWN_WRITE = 8  # our writes to this same transport are backed up (it is not reading)

KIB = 1024
# Bytes taken from an upstream per read. uvloop's own reads are 250 KB, all of
# which would land in a slow client's write buffer; 64 KiB reads still move
# gigabytes a second on loopback (bench/proxy.py --part transfer).
READ_SIZE = 64 * KIB
# A transport's write buffer above this pauses whoever feeds it (pause_writing);
# it resumes at a quarter of it. Set on every proxied transport: uvloop's
# defaults differ for TLS (512 KiB).
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
