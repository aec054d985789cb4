"""Flow control: the one object allowed to pause and resume a transport's reading.

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

from edge.config.schema import KIB

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
