"""An UpstreamConnection (edge.proxy.upstream) driven by hand: `Transport`,
just enough of asyncio.Transport to write into; `Recorder`, an exchange that
writes down everything the connection reports; HOST, the Host field of the
requests sent through it."""

from __future__ import annotations

from edge.http.message import Headers, ResponseHead
from edge.proxy.upstream import UpstreamError


class Transport:
    """Just enough of asyncio.Transport for UpstreamConnection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        for piece in pieces:
            self.written += piece

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Recorder:
    """An Exchange that writes down what the connection reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.wholes = 0  # upstream_whole calls

    def upstream_head(self, head: ResponseHead) -> None:
        self.calls.append(("head", head.status))

    def upstream_data(self, data: bytes) -> None:
        self.calls.append(("data", data))

    def upstream_end(self) -> None:
        self.calls.append(("end", None))

    def upstream_whole(self, head: ResponseHead, body: bytes) -> None:
        # Written down as the three calls it stands for, so that every test
        # here checks it gives what they would; `wholes` counts it.
        self.wholes += 1
        self.upstream_head(head)
        if body:
            self.upstream_data(body)
        self.upstream_end()

    def upstream_switch(self, head: ResponseHead) -> None:
        self.calls.append(("switch", head.status))

    def upstream_lost(self, error: UpstreamError) -> None:
        self.calls.append(("lost", (error.status, str(error))))

    def upstream_write_paused(self, paused: bool) -> None:
        self.calls.append(("paused", paused))

    def upstream_raw(self, data: bytes) -> None:
        self.calls.append(("raw", data))


HOST: Headers = [(b"host", b"app.test")]
