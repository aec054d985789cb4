"""The seam between a client connection and the cycle answering its request.

A request whose answer is not a prebuilt local response is handed to a
cycle: a proxied exchange (edge.proxy.cycle) or an edge endpoint
(edge.login.cycle). The connection knows cycles only as `Cycle`, and a cycle
knows its connection only as `Client`, so edge.http imports neither kind and
neither kind reaches into the connection's state. Both are typing.Protocols:
the calls go straight to the objects, with no adapter in between.
"""

from __future__ import annotations

from typing import Protocol

import h11

from edge.access.responses import LocalResponse
from edge.http.flow import ReadGate
from edge.http.message import ResponseHead

# The end of a response without trailers: the event a cycle sends for it.
# One shared object (h11 events are never changed), so the connection tells
# it apart by identity, without asking h11's Headers whether it is empty (a
# Python-level __bool__ on every proxied response).
END = h11.EndOfMessage()


class Cycle(Protocol):
    """What the connection tells the cycle of its current request.

    The connection makes a cycle its current one before calling `start`, and
    forgets it as soon as the cycle hands back (Client.answer, proxy_done,
    proxy_failed, tunnel_closed) or is told `client_lost`."""

    def start(self) -> None:
        """Begin: the request head is complete and was accepted."""

    def client_data(self, data: bytes) -> None:
        """Request body bytes, in order, as they arrive."""

    def client_end(self) -> None:
        """The request body is complete."""

    def client_write_paused(self, paused: bool) -> None:
        """The client stopped (or resumed) reading what is written to it."""

    def client_lost(self) -> None:
        """The client connection is gone or was answered otherwise: stop."""

    def client_raw(self, data: bytes) -> None:
        """Bytes from the client after a 101 (a tunnel)."""

    def timeout(self) -> None:
        """The deadline armed through Client.arm has passed."""


class Client(Protocol):
    """What a cycle may do with its client connection (edge.http.connection)."""

    gate: ReadGate  # the client transport's reading: a cycle sets and clears flow.PEER_WRITE

    def arm(self, timeout: float) -> None:
        """Give what the cycle waits on `timeout` seconds from now."""

    def hold(self, held: bool, wait: float = 0.0) -> None:
        """Stop (or restart) reading the client while the cycle cannot take
        its bytes yet; `wait` is how long that may last, in seconds."""

    def send_continue(self) -> None:
        """Tell a client waiting on `Expect: 100-continue` to send its body."""

    def send(self, event: h11.Event | ResponseHead) -> None:
        """A response head (h11's or a proxied one), or the end of the body."""

    def send_body(self, data: bytes) -> None: ...

    def send_whole(self, head: ResponseHead, body: bytes) -> None:
        """A proxied head, all of its body and its end, as send() and
        send_body() would frame them, written at once."""

    def send_raw(self, data: bytes) -> None:
        """Bytes written as they are (after a 101)."""

    def answer(self, response: LocalResponse) -> None:
        """The cycle's answer is a local response; the cycle is done."""

    def proxy_done(self, upstream_status: int, upstream_ms: float) -> None:
        """The upstream's response has been passed on whole; the cycle is done."""

    def proxy_failed(self, status: int) -> None:
        """The upstream failed before any response byte: answer `status`."""

    def abort(self) -> None:
        """Drop the connection: its response cannot be completed honestly."""

    def start_tunnel(self, cycle: Cycle, expires: float | None) -> None:
        """After a 101: raw bytes both ways, until `expires` (epoch seconds)."""

    def tunnel_closed(self) -> None: ...
