"""The h11 floor: the least a correct h11-based asyncio server has to do.

One uvloop loop, one asyncio.Protocol per connection, every request parsed by
h11 and answered with one canned 200 through h11's public API (`conn.send`),
keep-alive and pipelining handled by h11's own cycle bookkeeping. No routing,
no limits, no timeouts, no logging: whatever edge costs above this line is the
price of its own features.

The response has the same header names, value lengths and body as edge's
health response (``ok\\n``), so both put the same bytes on the wire. The events
are built once; only the Date header is rebuilt, once a second.

Run: python bench/peers/h11_floor.py --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import cast

import h11
import uvloop

BODY = b"ok\n"
# "peer" is as long as edge's "edge", so the response is byte-for-byte the same size.
SERVER = b"peer"
_DATA = h11.Data(data=BODY)
_EOM = h11.EndOfMessage()


def build_response(epoch_seconds: float) -> h11.Response:
    return h11.Response(
        status_code=200,
        headers=[
            (b"date", formatdate(epoch_seconds, usegmt=True).encode("ascii")),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"server", SERVER),
            (b"content-length", str(len(BODY)).encode("ascii")),
        ],
        reason=b"OK",
    )


class Canned:
    """The response event, refreshed once a second for its Date header."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, build: Callable[[float], h11.Response] = build_response
    ) -> None:
        self.loop = loop
        self.build = build
        self.response = build(time.time())

    def tick(self) -> None:
        now = time.time()
        self.response = self.build(now)
        self.loop.call_later(1.0 - (now % 1.0) + 0.001, self.tick)


class FloorProtocol(asyncio.Protocol):
    def __init__(self, canned: Canned) -> None:
        self.canned = canned
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._process()
        return False

    def _process(self) -> None:
        conn = self.conn
        transport = self.transport
        assert transport is not None
        try:
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is h11.EndOfMessage:
                    head = conn.send(self.canned.response)
                    body = conn.send(_DATA)
                    end = conn.send(_EOM)
                    assert head is not None and body is not None and end is not None
                    transport.write(b"".join((head, body, end)))
                    if conn.our_state is h11.MUST_CLOSE:
                        transport.close()
                        return
                    conn.start_next_cycle()
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                elif kind is h11.ConnectionClosed:
                    transport.close()
                    return
                # h11.Request and h11.Data: nothing to do until the request ends.
        except h11.ProtocolError:
            transport.close()


async def serve(
    host: str,
    port: int,
    build: Callable[[float], h11.Response] = build_response,
    protocol: type[FloorProtocol] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    canned = Canned(loop, build)
    canned.tick()
    factory = protocol or FloorProtocol
    server = await loop.create_server(lambda: factory(canned), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{factory.__name__} listening on http://{host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main(
    description: str = "Minimal uvloop + h11 server: the floor for edge.",
    build: Callable[[float], h11.Response] = build_response,
    protocol: type[FloorProtocol] | None = None,
) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, build, protocol))


if __name__ == "__main__":
    main()
