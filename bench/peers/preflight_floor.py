"""The h11 floor for preflights: parse each request with h11, answer one
canned response with exactly the head edge sends for the benchmark's
preflight (same header names and value lengths), through h11's public API.

No CORS logic at all: the least an h11 server does to put these bytes on the
wire. Run: python bench/peers/preflight_floor.py --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from email.utils import formatdate

import h11
import uvloop
from h11_floor import FloorProtocol

ORIGIN = b"http://app.localhost:8080"
HEADERS = [
    (b"access-control-allow-origin", ORIGIN),
    (b"access-control-allow-credentials", b"true"),
    (b"access-control-allow-methods", b"GET, POST, PUT, DELETE"),
    (b"access-control-allow-headers", b"Authorization, Content-Type"),
    (b"access-control-max-age", b"600"),
    (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    (b"server", b"peer"),  # as long as "edge"
    (b"content-length", b"0"),
]


class Canned:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.response = self.build(time.time())

    @staticmethod
    def build(now: float) -> h11.Response:
        date = (b"date", formatdate(now, usegmt=True).encode("ascii"))
        return h11.Response(status_code=200, headers=[date, *HEADERS], reason=b"OK")

    def tick(self) -> None:
        now = time.time()
        self.response = self.build(now)
        self.loop.call_later(1.0 - (now % 1.0) + 0.001, self.tick)


class PreflightFloor(FloorProtocol):
    """FloorProtocol answering with the empty-bodied canned preflight."""

    def _process(self) -> None:
        conn, transport = self.conn, self.transport
        assert transport is not None
        try:
            while True:
                event = conn.next_event()
                if type(event) is h11.EndOfMessage:
                    head = conn.send(self.canned.response)
                    end = conn.send(h11.EndOfMessage())
                    assert head is not None and end is not None
                    transport.write(head + end)
                    if conn.our_state is h11.MUST_CLOSE:
                        transport.close()
                        return
                    conn.start_next_cycle()
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                elif type(event) is h11.ConnectionClosed:
                    transport.close()
                    return
        except h11.ProtocolError:
            transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    canned = Canned(loop)
    canned.tick()
    server = await loop.create_server(lambda: PreflightFloor(canned), host, port, backlog=1024)  # type: ignore[arg-type]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"preflight floor listening on http://{host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="h11 floor answering a canned preflight.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
