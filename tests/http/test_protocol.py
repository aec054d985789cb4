"""The HTTP/1.1 connection without sockets: raw bytes in, exact bytes out.

`HttpProtocol` is driven through a fake transport that records every byte
written and every call made (tests/support/protocol_harness.py). The server
state is real (built from a config string); only its clock and Date line are
pinned, so the output is exact.
Each response's generated request id, the one part that is new every time,
is taken out of the bytes where it is spliced (after the Date line) and kept
in `FakeTransport.ids`. Timeouts are fired by calling `expire()`, as the
server's sweep would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import h11
import pytest
from conftest import open_app_toml
from protocol_harness import CONFIG, DATE, ID_PLACEHOLDER, FakeTransport, feed

from edge.config.load import loads
from edge.http.connection import BODY, DRAIN_LIMIT, HEAD, IDLE, LINGER, HttpProtocol
from edge.proxy.upstream import UpstreamConnection
from edge.runtime.server import ServerState

PLAIN = b"content-type: text/plain; charset=utf-8\r\nserver: edge\r\n"


def wire(
    status: bytes, body: bytes, *, close: bool = False, head: bool = False, tagged: bool = True
) -> bytes:
    """A local response exactly as edge writes it; `tagged`: a plain-text
    error, whose body ends with the request id."""
    if tagged:
        body += ID_PLACEHOLDER
    length = b"content-length: %d\r\n" % len(body)
    end = b"connection: close\r\n\r\n" if close else b"\r\n"
    return b"HTTP/1.1 " + status + b"\r\n" + DATE + PLAIN + length + end + (b"" if head else body)


NOT_FOUND_BODY = b"not found: no application here\n"


def not_found(*, close: bool = False, head: bool = False) -> bytes:
    return wire(b"404 Not Found", NOT_FOUND_BODY, close=close, head=head)


HEALTH = wire(b"200 OK", b"ok\n", tagged=False)
BAD_REQUEST = wire(b"400 Bad Request", b"bad request\n", close=True)
TIMEOUT = wire(b"408 Request Timeout", b"request timeout\n", close=True)


def get(target: bytes = b"/", *extra: bytes, method: bytes = b"GET") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: example.test", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(body: bytes, *extra: bytes) -> bytes:
    return get(b"/upload", b"Content-Length: %d" % len(body), *extra, method=b"POST") + body


def chunked(*chunks: bytes) -> bytes:
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return get(b"/upload", b"Transfer-Encoding: chunked", method=b"POST") + encoded + b"0\r\n\r\n"


def make_state(config: str = CONFIG) -> tuple[ServerState, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    state = ServerState(loads(config), loop)
    state.date = DATE
    state.writes.loop = None  # the loop never runs here: every write goes out at once (flow.WriteBatch)
    return state, loop


@pytest.fixture
def state() -> Iterator[ServerState]:
    st, loop = make_state()
    try:
        yield st
    finally:
        loop.close()


@pytest.fixture(autouse=True)
def no_internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """An exception inside the protocol becomes a 500 and a log record; any
    such record fails the test even when the bytes look plausible."""
    with caplog.at_level(logging.ERROR, logger="edge"):
        yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


Connect = Callable[[], tuple[HttpProtocol, FakeTransport]]


@pytest.fixture
def connect(state: ServerState) -> Connect:
    def make() -> tuple[HttpProtocol, FakeTransport]:
        protocol = HttpProtocol(state, state.dispatch)
        transport = FakeTransport()
        transport.protocol = protocol
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return protocol, transport

    return make


# -- the table ----------------------------------------------------------------

OPEN = "open"  # still serving: no close, abort or half-close
LINGERING = "linger"  # answered with connection: close, half-closed, discarding input


@dataclass(frozen=True)
class Case:
    id: str
    sent: bytes
    expected: bytes
    end: str = OPEN


CASES = [
    Case("get 404", get(), not_found()),
    Case("head: same headers, no body", get(method=b"HEAD"), not_found(head=True)),
    Case("health", get(b"/cdn-cgi/edge/health"), HEALTH),
    Case("health with a query", get(b"/cdn-cgi/edge/health?probe=1"), HEALTH),
    Case("health in absolute form", get(b"http://example.test/cdn-cgi/edge/health"), HEALTH),
    Case("options asterisk", get(b"*", method=b"OPTIONS"), not_found()),
    Case(
        "pipelined requests answered in order",
        get() + get(b"/cdn-cgi/edge/health") + get(method=b"HEAD"),
        not_found() + HEALTH + not_found(head=True),
    ),
    Case("http/1.0 closes", b"GET / HTTP/1.0\r\n\r\n", not_found(close=True), LINGERING),
    Case(
        "http/1.0 keep-alive is not offered",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + get(),
        not_found(close=True),
        LINGERING,
    ),
    Case(
        "connection: close, nothing after it is parsed",
        get(b"/", b"Connection: close") + get(),
        not_found(close=True),
        LINGERING,
    ),
    Case("small body drained, connection kept", post(b"hello") + get(), not_found() + not_found()),
    Case("zero length body", post(b"") + get(), not_found() + not_found()),
    Case(
        "body beyond the drain limit closes",
        get(b"/upload", b"Content-Length: %d" % (DRAIN_LIMIT + 1), method=b"POST"),
        not_found(close=True),
        LINGERING,
    ),
    Case(
        "chunked body of unknown length: answered with close, never parsed as a request",
        chunked(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") + get(),
        not_found(close=True),
        LINGERING,
    ),
    Case(
        "100-continue answered early closes",
        get(b"/upload", b"Content-Length: 5", b"Expect: 100-continue", method=b"POST"),
        not_found(close=True),
        LINGERING,
    ),
    Case("malformed after a good request", get() + b"BAD\r\n\r\n", not_found() + BAD_REQUEST, LINGERING),
    Case("obs-fold refused", get(b"/", b"X-A: a", b" b"), BAD_REQUEST, LINGERING),
    Case(
        "http/2.0 request line",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        wire(b"505 HTTP Version Not Supported", b"http version not supported\n", close=True),
        LINGERING,
    ),
    Case(
        "connect refused",
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        wire(b"405 Method Not Allowed", b"method not allowed\n", close=True),
        LINGERING,
    ),
    Case("invalid host value", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", BAD_REQUEST, LINGERING),
]


@pytest.mark.parametrize("split", ["whole", "lines", "bytes"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_wire(connect: Connect, case: Case, split: str) -> None:
    run_case(connect, case, split)


@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_wire_through_the_write_batch(state: ServerState, connect: Connect, case: Case, split: str) -> None:
    """The same table with the worker's writes batched as in service
    (flow.WriteBatch, flushed on the loop's next turn): nothing is written
    while the bytes are handled, and once the loop turns, the same bytes and
    the same closing calls, in the same order, as writing at once gives."""
    loop = asyncio.new_event_loop()
    try:
        state.writes.loop = loop
        protocol, transport = connect()
        feed(protocol, case.sent, split)
        if case.end == OPEN:
            assert bytes(transport.written) == b""  # all of it waits for the loop's turn
        loop.run_until_complete(asyncio.sleep(0))
        assert bytes(transport.written) == case.expected
        assert "write after close" not in transport.calls
        if case.end == OPEN:
            assert not transport.ended
        else:
            assert transport.calls[-1:] == ["write_eof"]  # the bytes went out before the FIN
    finally:
        state.writes.loop = None
        loop.close()


def run_case(connect: Connect, case: Case, split: str) -> None:
    protocol, transport = connect()
    feed(protocol, case.sent, split)
    assert bytes(transport.written) == case.expected
    # Each response named its request, with an id of its own.
    assert len(transport.ids) == case.expected.count(b"HTTP/1.1 ") == len(set(transport.ids))
    assert "write after close" not in transport.calls
    if case.end == OPEN:
        assert not transport.ended
        assert protocol.phase == IDLE
    else:
        assert transport.calls[-1:] == ["write_eof"]
        assert protocol.phase == LINGER
        protocol.data_received(get())  # discarded while lingering
        assert bytes(transport.written) == case.expected


def test_keep_alive_across_reads(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(get())
    assert bytes(transport.written) == not_found()
    protocol.data_received(get(b"/cdn-cgi/edge/health"))
    assert bytes(transport.written) == not_found() + HEALTH
    assert transport.calls == []
    assert protocol.phase == IDLE


def test_body_arriving_after_the_early_answer_is_drained(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(get(b"/upload", b"Content-Length: 10", method=b"POST"))
    assert bytes(transport.written) == not_found()
    assert protocol.phase == BODY
    protocol.data_received(b"01234")
    protocol.data_received(b"56789" + get())
    assert bytes(transport.written) == not_found() + not_found()
    assert protocol.phase == IDLE
    assert not transport.ended


# -- backpressure -------------------------------------------------------------


def test_pause_writing_stops_parsing_until_resume(connect: Connect) -> None:
    protocol, transport = connect()
    transport.fill_on_write = True
    protocol.data_received(get(b"/a") + get(b"/cdn-cgi/edge/health") + get(method=b"HEAD"))
    # The first answer filled the buffer: the rest waits, and so does reading.
    assert bytes(transport.written) == not_found()
    assert transport.calls == ["pause_reading"]
    protocol.resume_writing()
    assert bytes(transport.written) == not_found() + HEALTH + not_found(head=True)
    assert transport.calls == ["pause_reading", "resume_reading"]
    assert not transport.ended


def test_client_that_stops_reading_is_aborted_on_expiry(connect: Connect) -> None:
    protocol, transport = connect()
    transport.fill_on_write = True
    protocol.data_received(get() + get())
    protocol.expire()
    assert transport.calls[-1] == "abort"
    assert bytes(transport.written) == not_found()


# -- timeouts -----------------------------------------------------------------


def test_head_timeout_answers_408(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: exa")
    protocol.expire()
    assert bytes(transport.written) == TIMEOUT
    assert transport.calls == ["write_eof"]
    assert protocol.phase == LINGER
    protocol.expire()  # lingering too long
    assert transport.calls == ["write_eof", "abort"]


def test_idle_timeout_closes_silently(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(get())
    protocol.expire()
    assert bytes(transport.written) == not_found()
    assert transport.calls == ["close"]


def test_only_empty_lines_are_closed_at_the_head_deadline(connect: Connect) -> None:
    """Skipped empty lines still start the head's clock: a client sending
    only those is closed when it runs out, with nothing to answer."""
    protocol, transport = connect()
    protocol.data_received(get())
    for _ in range(3):
        protocol.data_received(b"\r\n")
    assert protocol.phase == HEAD
    protocol.expire()
    assert bytes(transport.written) == not_found()
    assert transport.calls == ["close"]


def test_body_timeout_after_early_answer_sends_nothing_more(connect: Connect) -> None:
    # The 404 is already on the wire: a 408 now would be read as the answer
    # to a request the client has not sent.
    protocol, transport = connect()
    protocol.data_received(post(b"0123456789")[:-5])
    assert protocol.phase == BODY
    protocol.expire()
    assert bytes(transport.written) == not_found()
    assert transport.ended


def test_body_timeout_while_forwarding_answers_408() -> None:
    state, loop = make_state(CONFIG + open_app_toml("http://127.0.0.1:9", domains=("example.test",)))
    try:
        target = state.pool.target("http://127.0.0.1:9")
        upstream = UpstreamConnection(target, lambda conn: None, state.pool.read_buffer, state.writes)
        up_transport = FakeTransport()
        upstream.connection_made(up_transport)  # type: ignore[arg-type]
        state.pool.idle[target.url] = [upstream]
        protocol = HttpProtocol(state, state.dispatch)
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(post(b"0123456789")[:-5])
        assert protocol.phase == BODY
        assert up_transport.written.startswith(b"POST /upload HTTP/1.1\r\n")
        protocol.expire()
        assert bytes(transport.written) == TIMEOUT
        assert transport.calls == ["write_eof"]
        assert "abort" in up_transport.calls  # the half-sent upstream request is dropped
    finally:
        loop.close()


# -- end of input, limits, draining -------------------------------------------


def test_eof_after_a_complete_exchange_closes(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(get())
    assert protocol.eof_received() is False
    assert bytes(transport.written) == not_found()
    assert transport.calls == ["close"]


def test_eof_inside_a_head_answers_400(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHo")
    protocol.eof_received()
    assert bytes(transport.written) == BAD_REQUEST


def test_eof_inside_a_drained_body_ends_the_connection(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(post(b"0123456789")[:-5])
    protocol.eof_received()
    assert bytes(transport.written) == not_found()
    assert transport.ended


def test_connection_over_the_limit_gets_503() -> None:
    state, loop = make_state(CONFIG + "max_connections = 1\n")
    try:
        first, second = HttpProtocol(state, state.dispatch), HttpProtocol(state, state.dispatch)
        t1, t2 = FakeTransport(), FakeTransport()
        first.connection_made(t1)  # type: ignore[arg-type]
        second.connection_made(t2)  # type: ignore[arg-type]
        assert bytes(t1.written) == b""
        body = b"service unavailable: too many connections\n"
        assert bytes(t2.written) == wire(b"503 Service Unavailable", body, close=True)
        assert t2.calls == ["close"]
        assert state.connections == {first}
    finally:
        loop.close()


def test_draining_closes_after_the_response(state: ServerState, connect: Connect) -> None:
    protocol, transport = connect()
    state.draining = True
    protocol.data_received(get() + get())
    assert bytes(transport.written) == not_found(close=True)
    assert protocol.phase == LINGER


def test_shutdown_closes_idle_connections(connect: Connect) -> None:
    protocol, transport = connect()
    protocol.data_received(get())
    protocol.shutdown()
    assert transport.calls == ["close"]


def test_connection_lost_unregisters(state: ServerState, connect: Connect) -> None:
    protocol, _ = connect()
    assert protocol in state.connections
    protocol.connection_lost(None)
    assert protocol not in state.connections


def test_one_connection_does_not_affect_another(connect: Connect) -> None:
    bad, bad_transport = connect()
    good, good_transport = connect()
    good.data_received(get()[:10])
    bad.data_received(b"\x16\x03\x01\x00")  # a TLS client on a plain port
    good.data_received(get()[10:])
    assert bytes(bad_transport.written) == BAD_REQUEST
    assert bytes(good_transport.written) == not_found()
    assert good.conn.our_state is h11.IDLE


# -- the honest wire: methods, versions, framing, field values -------------------------
# Each table runs on every split: whole (h11_internals.fast_request's path where it
# takes the head) and lines/bytes (h11's parser); both must answer alike.

VERSION_NOT_SUPPORTED = wire(b"505 HTTP Version Not Supported", b"http version not supported\n", close=True)

WIRE_CASES = [
    # RFC 9110 9.1: methods are case-sensitive tokens; any token is a method.
    Case("lower-case method is a method of its own", get(method=b"patch"), not_found()),
    Case("lower-case get is not GET, still a method", get(method=b"get") + get(), not_found() + not_found()),
    Case("lower-case head is not HEAD: the body is sent", get(method=b"head"), not_found()),
    Case("mixed-case token method", get(method=b"Bre-W_1"), not_found()),
    Case("lower-case connect is not CONNECT", get(method=b"connect"), not_found()),
    Case("asterisk form is for OPTIONS only", get(b"*", method=b"options"), BAD_REQUEST, LINGERING),
    # Only HTTP/1.0 and HTTP/1.1 are spoken; any other version is a 505.
    *(
        Case(
            f"version {v.decode()}", b"GET / HTTP/%s\r\nHost: a\r\n\r\n" % v, VERSION_NOT_SUPPORTED, LINGERING
        )
        for v in (b"1.2", b"1.9", b"2.0", b"3.0", b"0.9", b"9.9")
    ),
    # RFC 9112 2.2: empty lines before a request line are ignored (an old
    # client's CRLF after a POST body among them), as nginx does; h11 alone
    # would refuse them.
    Case("an empty line before the first request", b"\r\n" + get(), not_found()),
    Case("empty lines and bare LFs before a request", b"\r\n\n\r\n" + get(), not_found()),
    Case("a CRLF after a body, before the next request", post(b"hello") + b"\r\n" + get(), not_found() * 2),
    Case("a CRLF between pipelined requests", get() + b"\r\n" + get(), not_found() * 2),
    Case("HTTP/0.9 simple request", b"GET /\r\n", VERSION_NOT_SUPPORTED, LINGERING),
    Case("HTTP/0.9 simple request, then more", b"GET /index.html\r\n\r\n", VERSION_NOT_SUPPORTED, LINGERING),
    # RFC 9112 6.3: one Content-Length, a plain integer; the strict choice
    # leaves nothing for a second parser to disagree about.
    Case("content-length twice, equal", post(b"hello", b"Content-Length: 5"), BAD_REQUEST, LINGERING),
    Case(
        "content-length twice, spelled differently",
        post(b"hello", b"content-length: 05"),
        BAD_REQUEST,
        LINGERING,
    ),
    Case(
        "content-length list, equal values",
        get(b"/upload", b"Content-Length: 5, 5", method=b"POST") + b"hello",
        BAD_REQUEST,
        LINGERING,
    ),
    Case(
        "content-length list without space",
        get(b"/upload", b"Content-Length: 5,5", method=b"POST") + b"hello",
        BAD_REQUEST,
        LINGERING,
    ),
    Case(
        "content-length with leading zeros is one length",
        get(b"/upload", b"Content-Length: 0000000000000000005", method=b"POST") + b"hello" + get(),
        not_found() + not_found(),
    ),
    Case(
        "content-length of zeros frames no body",
        get(b"/upload", b"Content-Length: 00", method=b"POST") + get(),
        not_found() + not_found(),
    ),
]


@pytest.mark.parametrize("split", ["whole", "lines", "bytes"])
@pytest.mark.parametrize("case", WIRE_CASES, ids=[c.id for c in WIRE_CASES])
def test_honest_wire(connect: Connect, case: Case, split: str) -> None:
    run_case(connect, case, split)


# Control characters other than HTAB (RFC 9110 5.5): h11 lets most of them
# through; none may reach an upstream, which could cut or fold the field there.
CONTROLS = [*range(0x01, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]


@pytest.mark.parametrize("split", ["whole", "lines", "bytes"])
@pytest.mark.parametrize("where", ["inside", "start", "end", "alone"])
@pytest.mark.parametrize("char", CONTROLS, ids=[f"0x{c:02x}" for c in CONTROLS])
def test_control_character_in_a_field_value_is_400(
    connect: Connect, char: int, where: str, split: str
) -> None:
    c = bytes([char])
    value = {"inside": b"a" + c + b"b", "start": c + b"ab", "end": b"ab" + c, "alone": c}[where]
    protocol, transport = connect()
    feed(protocol, get(b"/", b"X-Value: " + value) + get(), split)
    assert bytes(transport.written) == BAD_REQUEST
    assert protocol.phase == LINGER


def test_htab_and_obs_text_in_a_field_value_pass(connect: Connect) -> None:
    protocol, transport = connect()
    feed(protocol, get(b"/", b"X-Value: a\tb\x80\xff"), "bytes")
    assert bytes(transport.written) == not_found()


# RFC 9112 9.6: after the last request (Connection: close, or HTTP/1.0
# without keep-alive), whatever the client still sends is not a request.
TRAILING = {
    "crlf": b"\r\n",
    "lf": b"\n",
    "garbage": b"\x16\x03\x01 not http at all",
    "another request": get(b"/cdn-cgi/edge/health"),
    "a malformed request": b"BAD\r\n\r\n",
    "half a request": b"GET / HT",
}
LAST = {
    "connection close": get(b"/", b"Connection: close"),
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "post with connection close": post(b"hello", b"Connection: close"),
}


@pytest.mark.parametrize("split", ["whole", "lines", "bytes"])
@pytest.mark.parametrize("last", LAST, ids=list(LAST))
@pytest.mark.parametrize("trailing", TRAILING, ids=list(TRAILING))
def test_bytes_after_the_last_request_are_ignored(
    connect: Connect, last: str, trailing: str, split: str
) -> None:
    protocol, transport = connect()
    feed(protocol, LAST[last] + TRAILING[trailing], split)
    assert bytes(transport.written) == not_found(close=True)
    assert transport.calls[-1:] == ["write_eof"]
