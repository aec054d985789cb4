"""Driving edge.http.connection's HttpProtocol without sockets.

`FakeTransport` is just enough of asyncio.Transport: it records every byte
written and every call made. The Date line is pinned (DATE: a ServerState's
`date` set to it makes the output exact) and each response's generated
request id is taken out of the bytes where it is spliced (after the Date
line; a plain-text error's body names it too) and kept in
`FakeTransport.ids`. `feed` hands the protocol bytes whole, line by line or
byte by byte. CONFIG is the smallest config such a server state is built
from.
"""

from __future__ import annotations

import asyncio
import re

from edge.http.connection import HttpProtocol

DATE = b"date: Tue, 24 Nov 2026 22:42:08 GMT\r\n"
CONFIG = '[server]\naccess_log = "off"\n'
# A generated request id's line, where LocalResponse.render splices it.
ID_LINE = re.compile(re.escape(DATE) + rb"x-request-id: ([A-Za-z0-9_-]{16})\r\n")
# The id a plain-text error's body ends with (LocalResponse.tagged): the same
# as its header's, written down as ID_PLACEHOLDER (of the same length).
BODY_ID = re.compile(rb"request id: ([A-Za-z0-9_-]{16})\n")
ID_PLACEHOLDER = b"request id: " + b"#" * 16 + b"\n"


class FakeTransport:
    """Just enough of asyncio.Transport; records writes and calls."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.ids: list[bytes] = []  # request ids, in the order written
        self.calls: list[str] = []
        self.closing = False
        self.eof = False
        self.reading = True
        self.protocol: asyncio.Protocol | None = None
        # When set, the next write pushes the buffer over its high-water mark.
        self.fill_on_write = False

    def write(self, data: bytes) -> None:
        if self.closing or self.eof:
            self.calls.append("write after close")
        ids = ID_LINE.findall(data)
        assert set(BODY_ID.findall(data)) <= set(ids)  # a body names its own response's id
        self.ids += ids
        self.written += BODY_ID.sub(ID_PLACEHOLDER, ID_LINE.sub(DATE, data))
        if self.fill_on_write and self.protocol is not None:
            self.fill_on_write = False
            self.protocol.pause_writing()

    def writelines(self, pieces: list[bytes]) -> None:
        self.write(b"".join(pieces))

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append("write_eof")
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    @property
    def ended(self) -> bool:
        """The connection is over: closed, aborted or half-closed by us."""
        return self.closing or self.eof


def feed(protocol: HttpProtocol, data: bytes, split: str) -> None:
    if split == "whole":
        protocol.data_received(data)
    elif split == "bytes":
        for i in range(len(data)):
            protocol.data_received(data[i : i + 1])
    else:  # lines
        for line in data.splitlines(keepends=True):
            protocol.data_received(line)
