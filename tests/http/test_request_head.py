"""The connection builds the one Request per head (edge.access.request).

Heads are fed whole (parsed by h11_internals.fast_request when it takes
them) and byte by byte (parsed by h11): either way the dispatcher gets the
Request that `build` makes from the same parts, so the index folded into
the connection's one scan of the fields, the split target and the framing
agree with the slow, obvious derivation. The access log's entry refers to
that same Request. Driven like test_protocol.py: a real ServerState, a
transport that records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import msgspec
import pytest
from protocol_harness import CONFIG, DATE, FakeTransport, feed

from edge.access.request import Request, build
from edge.access.responses import LocalResponse
from edge.config.load import loads
from edge.http.connection import HttpProtocol, LogEntry
from edge.http.cycle import Cycle
from edge.http.request_id import SAFE
from edge.runtime.server import ServerState


class RecordingState(ServerState):
    """A worker that keeps what it dispatched and what it logged."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loads(CONFIG), loop)
        self.date = DATE
        self.writes.loop = None  # the loop never runs here: writes go out at once (flow.WriteBatch)
        self.seen: list[tuple[Request, LogEntry]] = []
        self.logged: list[LogEntry] = []

    def record(self, client: HttpProtocol, request: Request, entry: LogEntry) -> LocalResponse | Cycle:
        self.seen.append((request, entry))
        return self.dispatch(client, request, entry)

    def access(self, client: str, entry: LogEntry) -> None:
        self.logged.append(entry)
        super().access(client, entry)


@pytest.fixture
def state() -> Iterator[RecordingState]:
    loop = asyncio.new_event_loop()
    try:
        yield RecordingState(loop)
    finally:
        loop.close()


def served(state: RecordingState, data: bytes, split: str) -> list[Request]:
    protocol = HttpProtocol(state, state.record)
    transport = FakeTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]
    feed(protocol, data, split)
    assert transport.written.startswith(b"HTTP/1.1 404 "), bytes(transport.written)
    return [request for request, _ in state.seen]


def expected(
    method: bytes, host: bytes, target: bytes, fields: list[tuple[bytes, bytes]], **kw: object
) -> Request:
    return build(method, host, target, fields, "127.0.0.1", "http", **kw)  # type: ignore[arg-type]


HEADS = [
    pytest.param(
        b"GET /a/b?x=1&y HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\nCookie: c=d\r\nx-a:  2 \r\n\r\n",
        expected(
            b"GET",
            b"app.test",
            b"/a/b?x=1&y",
            [(b"host", b"app.test"), (b"x-a", b"1"), (b"cookie", b"c=d"), (b"x-a", b"2")],
        ),
        id="repeated-fields",
    ),
    pytest.param(
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 005\r\n\r\nhello",
        expected(b"POST", b"app.test", b"/up", [(b"host", b"app.test"), (b"content-length", b"005")]),
        id="length",
    ),
    pytest.param(
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        expected(b"POST", b"app.test", b"/up", [(b"host", b"app.test"), (b"transfer-encoding", b"chunked")]),
        id="chunked",
    ),
    pytest.param(
        b"GET http://App.test:80/p?q HTTP/1.1\r\nHost: app.test\r\n\r\n",
        expected(b"GET", b"App.test:80", b"/p?q", [(b"host", b"app.test")]),
        id="absolute-form",
    ),
    pytest.param(
        b"GET /old HTTP/1.0\r\nAccept: */*\r\n\r\n",
        expected(b"GET", b"", b"/old", [(b"accept", b"*/*")], version=b"1.0"),
        id="http/1.0-without-host",
    ),
    pytest.param(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        expected(
            b"GET",
            b"app.test",
            b"/ws",
            [(b"host", b"app.test"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket")],
        ),
        id="upgrade",
    ),
    pytest.param(
        b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n",
        expected(b"OPTIONS", b"app.test", b"*", [(b"host", b"app.test")]),
        id="asterisk",
    ),
]


@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.parametrize(("data", "want"), HEADS)
def test_the_connection_builds_the_request(
    state: RecordingState, data: bytes, want: Request, split: str
) -> None:
    [request] = served(state, data, split)
    # A generated id (no trusted peer here): edge.http.request_id's shape.
    assert SAFE.fullmatch(request.request_id) is not None and len(request.request_id) == 16
    assert request == msgspec.structs.replace(want, started=request.started, request_id=request.request_id)


def test_one_request_from_head_to_log(state: RecordingState) -> None:
    """What was dispatched is what is logged: one Request, one entry, no copies."""
    head = b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n"
    served(state, head + head, "whole")
    assert len(state.seen) == 2
    for (request, entry), logged in zip(state.seen, state.logged, strict=True):
        assert entry.request is request
        assert logged is entry
        assert (entry.status, entry.decision) == (404, "not found: no application")


def test_a_refused_head_is_logged_without_a_request_built(state: RecordingState) -> None:
    protocol = HttpProtocol(state, state.record)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"GET /a#frag HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400 ")
    assert state.seen == []
    [entry] = state.logged
    assert (entry.request.method, entry.request.target, entry.request.host, entry.status) == (
        b"GET",
        b"/a#frag",
        b"",
        400,
    )
