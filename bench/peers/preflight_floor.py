"""The h11 floor for preflights: parse each request with h11, answer one
canned response with exactly the head edge sends for the benchmark's
preflight (same header names and value lengths), through h11's public API.

No CORS logic at all: the least an h11 server does to put these bytes on the
wire. Run: python bench/peers/preflight_floor.py --port 8081
"""

from __future__ import annotations

from email.utils import formatdate

import h11
from h11_floor import FloorProtocol, main

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


def build_preflight(now: float) -> h11.Response:
    date = (b"date", formatdate(now, usegmt=True).encode("ascii"))
    return h11.Response(status_code=200, headers=[date, *HEADERS], reason=b"OK")


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


if __name__ == "__main__":
    main("h11 floor answering a canned preflight.", build_preflight, PreflightFloor)
