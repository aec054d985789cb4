"""An upstream that reads every request body to the end and discards it.

Its answer's body is the number of body bytes it received (decimal), so the
client can check that a proxied upload really arrived whole. Bodies must be
framed by Content-Length (both proxies in bench/proxy.py pass curl's on);
anything else gets a 411. The counting is raw (no parser touches the body),
so the sink costs next to nothing per byte. `Expect: 100-continue` is
answered. Keep-alive: one request after another on a connection.

Run: python bench/peers/upload_sink.py --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from typing import cast

import uvloop

HEAD_LIMIT = 64 * 1024  # bytes; a longer request head is refused
_LENGTH_RE = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
_CHUNKED_RE = re.compile(rb"(?im)^transfer-encoding:")
_EXPECT_RE = re.compile(rb"(?im)^expect:[ \t]*100-continue")


def answer(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.remaining = -1  # body bytes still expected; -1 while reading a head
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        while data:
            if self.remaining < 0:
                data = self._read_head(data)
            else:
                take = min(len(data), self.remaining)
                self.remaining -= take
                self.received += take
                data = data[take:] if take < len(data) else b""
                if self.remaining == 0:
                    self._finish()

    def _read_head(self, data: bytes) -> bytes:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > HEAD_LIMIT:
                self._close(b"431 Request Header Fields Too Large")
            return b""
        head, rest = self.head[:end], self.head[end + 4 :]
        self.head = b""
        length = _LENGTH_RE.search(head)
        if _CHUNKED_RE.search(head) or (length is None and not head.startswith((b"GET ", b"HEAD "))):
            self._close(b"411 Length Required")
            return b""
        if _EXPECT_RE.search(head) and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.remaining = int(length.group(1)) if length else 0
        self.received = 0
        if self.remaining == 0:
            self._finish()
        return rest

    def _finish(self) -> None:
        self.remaining = -1
        if self.transport is not None:
            self.transport.write(answer(b"200 OK", b"%d" % self.received))

    def _close(self, status: bytes) -> None:
        if self.transport is not None:
            self.transport.write(answer(status, b""))
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Upload sink: counts and discards request bodies.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
