"""The upstream side's hand-written HTTP/1.1 (edge/proxy/wire.py), without sockets.

Response parsing is table-driven: exact bytes in, exact events (or a
ProtocolError naming the fault) out. Every case is fed whole, byte by byte
and in lines, and must give the same result each way (body pieces are
compared joined, since where they split depends on how bytes arrive).
Request heads and the client-side framing are checked byte for byte, and
the client-side framing against what h11's own send() produces. Client
request heads taken without h11's parser (fast_request) must parse as h11
parses them, and the hand-made state changes (commit_*, next_cycle) must
leave h11's connection exactly as its own events do. Last, an
UpstreamConnection over a fake transport: what it writes, what it reports to
its exchange, and when it may be reused.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from upstream_harness import HOST, Recorder, Transport

from edge.http.flow import READ_SIZE, WriteBatch
from edge.http.message import Headers, ResponseHead, chunk
from edge.proxy.upstream import Pool, Target, UpstreamConnection
from edge.proxy.wire import END, MAX_HEAD, Event, ProtocolError, ResponseParser, request_head

OK = b"HTTP/1.1 200 OK\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


def head(status: int, reason: bytes, *headers: tuple[bytes, bytes]) -> ResponseHead:
    return ResponseHead(status, reason, list(headers))


def length_of(n: int) -> tuple[bytes, bytes]:
    return (b"content-length", b"%d" % n)


CHUNKED = (b"transfer-encoding", b"chunked")


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    events: list[Event] = field(default_factory=list)  # body pieces joined
    error: str | None = None  # a substring of the ProtocolError's message
    eof: bool = False  # the upstream closes after `data`
    method: bytes = b"GET"
    upgrade: bool = False
    reusable: bool = True  # (when no error) may the connection carry another request
    trailing: bytes = b""


VALID = [
    Case(
        "content-length",
        OK + b"Content-Length: 5\r\n\r\nhello",
        [head(200, b"OK", length_of(5)), b"hello", END],
    ),
    Case("empty body", OK + b"Content-Length: 0\r\n\r\n", [head(200, b"OK", length_of(0)), END]),
    Case(
        "names lower-cased, values trimmed, order kept",
        OK + b"X-B:  two \t\r\nx-a:one\r\nX-Empty:\r\nX-Inner: a  b\r\nContent-Length: 0\r\n\r\n",
        [
            head(
                200,
                b"OK",
                (b"x-b", b"two"),
                (b"x-a", b"one"),
                (b"x-empty", b""),
                (b"x-inner", b"a  b"),
                length_of(0),
            ),
            END,
        ],
    ),
    Case(
        "obs-text and control bytes other than CR LF NUL in a value",
        OK + b"X-A: caf\xc3\xa9\x01\x7f\r\nContent-Length: 0\r\n\r\n",
        [head(200, b"OK", (b"x-a", b"caf\xc3\xa9\x01\x7f"), length_of(0)), END],
    ),
    Case(
        "reason with spaces and obs-text",
        b"HTTP/1.1 404 Not  Found \xe9\r\nContent-Length: 0\r\n\r\n",
        [head(404, b"Not  Found \xe9", length_of(0)), END],
    ),
    Case("reason absent", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", [head(200, b"", length_of(0)), END]),
    Case("reason empty", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", [head(200, b"", length_of(0)), END]),
    Case("no fields at all, 204", b"HTTP/1.1 204 No Content\r\n\r\n", [head(204, b"No Content"), END]),
    Case(
        "304 with a length has no body",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        [head(304, b"Not Modified", length_of(99)), END],
    ),
    Case(
        "HEAD: a length but no body",
        OK + b"Content-Length: 99\r\n\r\n",
        [head(200, b"OK", length_of(99)), END],
        method=b"HEAD",
    ),
    Case(
        "HEAD: chunked but no body",
        OK + TE + b"\r\n",
        [head(200, b"OK", CHUNKED), END],
        method=b"HEAD",
    ),
    Case(
        "chunked, with an extension",
        OK + TE + b"\r\n5\r\nhello\r\n6;name=value\r\n world\r\n0\r\n\r\n",
        [head(200, b"OK", CHUNKED), b"hello world", END],
    ),
    Case(
        "chunked: hex sizes, whitespace, case-insensitive coding",
        OK + b"Transfer-Encoding: Chunked\r\n\r\nA \r\n0123456789\r\n00001 ; x\r\n!\r\n0\r\n\r\n",
        [head(200, b"OK", (b"transfer-encoding", b"Chunked")), b"0123456789!", END],
    ),
    Case(
        "chunked: trailer fields are read and dropped",
        OK + TE + b"\r\n2\r\nhi\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n",
        [head(200, b"OK", CHUNKED), b"hi", END],
    ),
    Case(
        "close-delimited body",
        OK + b"Content-Type: text/plain\r\n\r\nuntil the end",
        [head(200, b"OK", (b"content-type", b"text/plain")), b"until the end", END],
        eof=True,
        reusable=False,
    ),
    Case(
        "close-delimited, empty",
        OK + b"\r\n",
        [head(200, b"OK"), END],
        eof=True,
        reusable=False,
    ),
    Case(
        "HTTP/1.0: not kept alive",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        [head(200, b"OK", length_of(2)), b"ok", END],
        reusable=False,
    ),
    Case(
        "HTTP/1.2 counts as 1.1",
        b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok",
        [head(200, b"OK", length_of(2)), b"ok", END],
    ),
    Case(
        "Connection: close",
        OK + b"Connection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
        [head(200, b"OK", (b"connection", b"keep-alive, Close"), length_of(0)), END],
        reusable=False,
    ),
    Case(
        "Connection naming other fields keeps the connection",
        OK + b"Connection: x-hop\r\nContent-Length: 0\r\n\r\n",
        [head(200, b"OK", (b"connection", b"x-hop"), length_of(0)), END],
    ),
    Case(
        "both Transfer-Encoding and Content-Length: chunked wins, no reuse",
        OK + b"Content-Length: 3\r\n" + TE + b"\r\n5\r\nhello\r\n0\r\n\r\n",
        [head(200, b"OK", length_of(3), CHUNKED), b"hello", END],
        reusable=False,
    ),
    Case(
        "1xx heads come first, then the response",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        + OK
        + b"Content-Length: 1\r\n\r\nx",
        [
            head(100, b"Continue"),
            head(103, b"Early Hints", (b"link", b"</a.css>")),
            head(200, b"OK", length_of(1)),
            b"x",
            END,
        ],
    ),
    Case(
        "101 stops parsing; the rest is the tunnel's",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
        [head(101, b"Switching Protocols", (b"upgrade", b"websocket"), (b"connection", b"Upgrade"))],
        upgrade=True,
        reusable=False,
        trailing=b"\x81\x02hi",
    ),
    Case(
        "an upgrade request answered without switching",
        OK + b"Content-Length: 0\r\n\r\n",
        [head(200, b"OK", length_of(0)), END],
        upgrade=True,
    ),
    Case(
        "bytes after the response: not reusable",
        OK + b"Content-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n",
        [head(200, b"OK", length_of(2)), b"ok", END],
        reusable=False,
        trailing=b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n",
    ),
    Case(
        "bytes after a chunked response: not reusable",
        OK + TE + b"\r\n0\r\n\r\nX",
        [head(200, b"OK", CHUNKED), END],
        reusable=False,
        trailing=b"X",
    ),
    Case(
        "a head of exactly MAX_HEAD bytes",
        OK + b"X-Pad: " + b"p" * (MAX_HEAD - len(OK) - 11) + b"\r\n\r\n",
        [head(200, b"OK", (b"x-pad", b"p" * (MAX_HEAD - len(OK) - 11)))],
        eof=False,
        reusable=False,  # waiting for a close-delimited body
    ),
]

INVALID = [
    Case("garbage", b"SPDY/9 what is this\x00\r\n\r\n", error="invalid status line"),
    Case("garbage without an end of head", b"SPDY/9 what", error="invalid status line"),
    Case("tls record", bytes.fromhex("160303002a") + b"\x00" * 42, error="invalid status line"),
    Case("empty line before the status line", b"\r\n" + OK + b"\r\n", error="invalid status line"),
    Case("http/2 status line", b"HTTP/2.0 200 OK\r\n\r\n", error="invalid status line"),
    Case("http/0.9 status line", b"HTTP/0.9 200 OK\r\n\r\n", error="invalid status line"),
    Case("lower-case protocol name", b"http/1.1 200 OK\r\n\r\n", error="invalid status line"),
    Case("two-digit status", b"HTTP/1.1 20 OK\r\n\r\n", error="invalid status line"),
    Case("four-digit status", b"HTTP/1.1 2000 OK\r\n\r\n", error="invalid status line"),
    Case("status below 100", b"HTTP/1.1 099 Odd\r\n\r\n", error="invalid status line"),
    Case("double space", b"HTTP/1.1  200 OK\r\n\r\n", error="invalid status line"),
    Case("tab separator", b"HTTP/1.1\t200 OK\r\n\r\n", error="invalid status line"),
    Case("control byte in the reason", b"HTTP/1.1 200 O\x01K\r\n\r\n", error="invalid status line"),
    Case("bare CR in the reason", b"HTTP/1.1 200 O\rK\r\n\r\n", error="invalid status line"),
    Case("bare LF line ends", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", error="bare LF"),
    Case("one bare LF line end", OK + b"X-A: 1\nContent-Length: 0\r\n\r\n", error="bare LF"),
    Case("obs-fold", OK + b"X-A: one\r\n two\r\nContent-Length: 0\r\n\r\n", error="invalid field line"),
    Case("obs-fold with a tab", OK + b"X-A: one\r\n\ttwo\r\n\r\n", error="invalid field line"),
    Case("continuation first", OK + b" X-A: one\r\n\r\n", error="invalid field line"),
    Case("space before the colon", OK + b"Content-Length : 0\r\n\r\n", error="invalid field line"),
    Case("empty name", OK + b": v\r\n\r\n", error="invalid field line"),
    Case("no colon", OK + b"X-A v\r\n\r\n", error="invalid field line"),
    Case("non-token name", OK + b"X(A): v\r\n\r\n", error="invalid field line"),
    Case("non-ascii name", OK + b"X-\xe9: v\r\n\r\n", error="invalid field line"),
    Case("NUL in a value", OK + b"X-A: o\x00ne\r\n\r\n", error="invalid field line"),
    Case("bare CR in a value", OK + b"X-A: o\rne\r\n\r\n", error="invalid field line"),
    Case("head too large", OK + b"X-Pad: " + b"p" * MAX_HEAD + b"\r\n\r\n", error="too large"),
    Case("head too large, unfinished", OK + b"X-Pad: " + b"p" * MAX_HEAD, error="too large"),
    Case(
        "duplicate Content-Length",
        OK + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        error="more than one",
    ),
    Case(
        "conflicting Content-Length",
        OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        error="more than one",
    ),
    Case("Content-Length list", OK + b"Content-Length: 5, 5\r\n\r\nhello", error="invalid Content-Length"),
    Case(
        "Content-Length with a sign", OK + b"Content-Length: +5\r\n\r\nhello", error="invalid Content-Length"
    ),
    Case("negative Content-Length", OK + b"Content-Length: -1\r\n\r\n", error="invalid Content-Length"),
    Case("hex Content-Length", OK + b"Content-Length: 0x5\r\n\r\n", error="invalid Content-Length"),
    Case("empty Content-Length", OK + b"Content-Length:\r\n\r\n", error="invalid Content-Length"),
    Case(
        "21-digit Content-Length",
        OK + b"Content-Length: " + b"9" * 21 + b"\r\n\r\n",
        error="invalid Content-Length",
    ),
    Case(
        "Content-Length on a 1xx is checked too",
        b"HTTP/1.1 103 EH\r\nContent-Length: x\r\n\r\n",
        error="invalid",
    ),
    Case(
        "Transfer-Encoding gzip",
        OK + b"Transfer-Encoding: gzip\r\n\r\n",
        error="unsupported Transfer-Encoding",
    ),
    Case("identity", OK + b"Transfer-Encoding: identity\r\n\r\n", error="unsupported Transfer-Encoding"),
    Case(
        "gzip, chunked",
        OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        error="unsupported Transfer-Encoding",
    ),
    Case(
        "chunked twice",
        OK + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
        error="unsupported Transfer-Encoding",
    ),
    Case(
        "two Transfer-Encoding fields", OK + TE + TE + b"\r\n0\r\n\r\n", error="unsupported Transfer-Encoding"
    ),
    Case("chunked in HTTP/1.0", b"HTTP/1.0 200 OK\r\n" + TE + b"\r\n0\r\n\r\n", error="HTTP/1.0"),
    Case("101 nobody asked for", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", error="101"),
    Case("chunk size not hex", OK + TE + b"\r\nzz\r\nhello\r\n0\r\n\r\n", error="invalid chunk size"),
    Case("chunk size negative", OK + TE + b"\r\n-5\r\nhello\r\n0\r\n\r\n", error="invalid chunk size"),
    Case("chunk size empty", OK + TE + b"\r\n\r\nhello\r\n0\r\n\r\n", error="invalid chunk size"),
    Case(
        "chunk size of 17 digits",
        OK + TE + b"\r\n" + b"0" * 16 + b"1\r\nx\r\n0\r\n\r\n",
        error="invalid chunk",
    ),
    Case("chunk size line too long", OK + TE + b"\r\n5;" + b"e" * MAX_HEAD, error="too large"),
    Case("chunk size line ends in bare LF", OK + TE + b"\r\n5\nhello\r\n0\r\n\r\n", error="bare LF"),
    Case("chunk data without its CRLF", OK + TE + b"\r\n5\r\nhelloXX0\r\n\r\n", error="not followed by CRLF"),
    Case(
        "chunk data with half a CRLF", OK + TE + b"\r\n5\r\nhello\rX0\r\n\r\n", error="not followed by CRLF"
    ),
    Case("bare LF in the trailers", OK + TE + b"\r\n0\r\nX-A: 1\n\r\n", error="bare LF"),
    Case("invalid trailer line", OK + TE + b"\r\n0\r\nX-A : 1\r\n\r\n", error="invalid trailer"),
    Case("obs-fold in the trailers", OK + TE + b"\r\n0\r\nX-A: 1\r\n 2\r\n\r\n", error="invalid trailer"),
    Case("trailers too large", OK + TE + b"\r\n0\r\nX-A: " + b"t" * MAX_HEAD, error="too large"),
    # -- the upstream closing too early
    Case("closed before any byte", b"", eof=True, error="closed within the response head"),
    Case("closed within the head", OK + b"Content-Le", eof=True, error="closed within the response head"),
    Case("closed within a 1xx series", b"HTTP/1.1 100 Continue\r\n\r\n", eof=True, error="closed within"),
    Case(
        "closed within the body",
        OK + b"Content-Length: 5\r\n\r\nhel",
        eof=True,
        error="2 bytes before the end",
    ),
    Case("closed within a chunk", OK + TE + b"\r\n5\r\nhel", eof=True, error="closed within a chunk"),
    Case("closed after a chunk's data", OK + TE + b"\r\n5\r\nhello", eof=True, error="closed within a chunk"),
    Case(
        "closed within a size line", OK + TE + b"\r\n5", eof=True, error="closed within the chunk size line"
    ),
    Case("closed before the last chunk", OK + TE + b"\r\n5\r\nhello\r\n", eof=True, error="closed within"),
    Case(
        "closed within the trailers",
        OK + TE + b"\r\n0\r\nX-A: 1\r\n",
        eof=True,
        error="closed within the trailer",
    ),
]


def pieces(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    return data.splitlines(keepends=True)


def run(case: Case, mode: str, whole: bool = False) -> tuple[list[Event], ResponseParser]:
    """Feed the case's bytes in pieces, collecting events after each; body
    pieces are joined. `whole`: take the body with whole_body() after every
    final head, as UpstreamConnection does."""
    parser = ResponseParser(head_only=case.method == b"HEAD", upgrade=case.upgrade)
    events: list[Event] = []

    def drain() -> None:
        while (event := parser.next_event()) is not None:
            if type(event) is bytes and events and type(events[-1]) is bytes:
                events[-1] += event
            else:
                events.append(event)
            if whole and type(event) is ResponseHead and event.status >= 200:
                body = parser.whole_body()
                if body is not None:
                    events.extend([body, END] if body else [END])

    for piece in pieces(case.data, mode):
        parser.feed(piece)
        drain()
    if case.eof:
        parser.feed_eof()
        drain()
    return events, parser


# "whole" takes ResponseParser._head's one-match shortcut, "bytes" and "lines"
# its find path (the head comes incomplete first): the same expectations
# hold both paths to the same events and errors.
MODES = ["whole", "bytes", "lines"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
def test_valid_responses(case: Case, mode: str) -> None:
    events, parser = run(case, mode)
    assert events == case.events
    assert parser.reusable() is case.reusable
    assert parser.trailing == case.trailing


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_responses(case: Case, mode: str) -> None:
    assert case.error is not None
    with pytest.raises(ProtocolError) as caught:
        run(case, mode)
    assert case.error in str(caught.value)


@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
@pytest.mark.parametrize("mode", MODES)
def test_whole_body_gives_what_the_events_would(case: Case, mode: str) -> None:
    events, parser = run(case, mode, whole=True)
    assert events == case.events
    assert parser.reusable() is case.reusable
    assert parser.trailing == case.trailing


def test_whole_body_only_when_all_of_it_is_here() -> None:
    parser = ResponseParser()
    parser.feed(OK + b"Content-Length: 4\r\n\r\nab")
    assert parser.next_event() == head(200, b"OK", length_of(4))
    assert parser.whole_body() is None  # nothing consumed:
    assert parser.next_event() == b"ab"
    parser.feed(b"cd")
    assert parser.whole_body() == b"cd" and parser.done  # the rest, once it is all here
    parser = ResponseParser()
    parser.feed(OK + TE + b"\r\n2\r\nhi\r\n0\r\n\r\n")
    parser.next_event()
    assert parser.whole_body() is None  # chunked: piece by piece


def test_events_before_a_fault_are_delivered() -> None:
    """A body broken halfway: what came before the fault was already handed
    on (the proxy then aborts the client connection: no fake success)."""
    parser = ResponseParser()
    parser.feed(OK + TE + b"\r\n2\r\nhi\r\nzz\r\n")
    assert parser.next_event() == head(200, b"OK", CHUNKED)
    assert parser.next_event() == b"hi"
    with pytest.raises(ProtocolError, match="invalid chunk size line b'zz'"):
        parser.next_event()


def test_content_length_body_is_passed_through_without_copies() -> None:
    parser = ResponseParser()
    parser.feed(OK + b"Content-Length: 8\r\n\r\n")
    parser.next_event()
    piece = b"abcd"
    parser.feed(piece)
    assert parser.next_event() is piece
    assert parser.next_event() is None
    parser.feed(b"efghEXTRA")
    assert parser.next_event() == b"efgh"
    assert parser.next_event() is END
    assert parser.trailing == b"EXTRA" and not parser.reusable()


def test_close_delimited_body_ends_only_at_eof() -> None:
    parser = ResponseParser()
    parser.feed(OK + b"\r\nsome")
    assert parser.next_event() == head(200, b"OK")
    assert parser.next_event() == b"some"
    assert parser.next_event() is None
    parser.feed(b" more")
    assert parser.next_event() == b" more"
    parser.feed_eof()
    assert parser.next_event() is END
    assert parser.next_event() is None and parser.done


# -- request heads --------------------------------------------------------------


def test_request_head_exact() -> None:
    headers: Headers = [(b"host", b"app.test"), (b"accept", b"*/*"), (b"x-forwarded-for", b"127.0.0.1")]
    assert request_head(b"GET", b"/a?b=c", headers) == (
        b"GET /a?b=c HTTP/1.1\r\nhost: app.test\r\naccept: */*\r\nx-forwarded-for: 127.0.0.1\r\n\r\n"
    )


def test_request_head_puts_host_first() -> None:
    headers: Headers = [(b"accept", b"*/*"), (b"host", b"app.test"), (b"content-length", b"3")]
    assert request_head(b"POST", b"/", headers) == (
        b"POST / HTTP/1.1\r\nhost: app.test\r\naccept: */*\r\ncontent-length: 3\r\n\r\n"
    )


def test_request_head_parses_back_with_h11() -> None:
    headers: Headers = [(b"user-agent", b"x y"), (b"host", b"h:8080"), (b"cookie", b"a=b; c=d")]
    server = h11.Connection(h11.SERVER)
    server.receive_data(request_head(b"DELETE", b"/x", headers))
    event = server.next_event()
    assert isinstance(event, h11.Request)
    assert (event.method, event.target) == (b"DELETE", b"/x")
    assert list(event.headers) == [(b"host", b"h:8080"), (b"user-agent", b"x y"), (b"cookie", b"a=b; c=d")]


def test_chunk_framing() -> None:
    assert b"".join(chunk(b"x" * 26)) == b"1a\r\n" + b"x" * 26 + b"\r\n"


# -- an upstream connection driven by hand ---------------------------------------------


def connection() -> tuple[UpstreamConnection, Transport, Recorder]:
    conn = UpstreamConnection(
        Target("http://127.0.0.1:9"), lambda _: None, memoryview(bytearray(READ_SIZE)), WriteBatch(None)
    )
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    exchange = Recorder()
    conn.exchange = exchange
    return conn, transport, exchange


def test_connection_get_is_complete_with_its_head_and_reusable() -> None:
    conn, transport, exchange = connection()
    conn.send_request(b"GET", b"/x", HOST, chunked=False, upgrade=False)
    conn.end_request()
    assert transport.written == b"GET /x HTTP/1.1\r\nhost: app.test\r\n\r\n"
    conn.data_received(OK + b"Content-Length: 2\r\n\r\nok")
    assert exchange.calls == [("head", 200), ("data", b"ok"), ("end", None)]
    assert exchange.wholes == 1  # one read, the whole response: one call
    assert conn.reusable()


def test_connection_passes_a_response_on_in_pieces_unless_whole_in_one_read() -> None:
    conn, _, exchange = connection()
    conn.send_request(b"GET", b"/x", HOST, chunked=False, upgrade=False)
    conn.end_request()
    conn.data_received(OK + b"Content-Length: 4\r\n\r\nok")
    conn.data_received(b"ok")
    assert exchange.calls == [("head", 200), ("data", b"ok"), ("data", b"ok"), ("end", None)]
    assert exchange.wholes == 0
    assert conn.reusable()


def test_connection_chunked_request_body() -> None:
    conn, transport, _ = connection()
    conn.send_request(b"PUT", b"/", [*HOST, CHUNKED], chunked=True, upgrade=False)
    conn.send_body(b"hello")
    conn.send_body(b"")  # nothing, not a last chunk
    conn.end_request()
    conn.send_body(b"late")  # after the end: never written
    assert transport.written.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_connection_not_reusable_before_the_request_is_sent() -> None:
    conn, _, exchange = connection()
    conn.send_request(b"POST", b"/", [*HOST, length_of(10)], chunked=False, upgrade=False)
    conn.data_received(b"HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n")
    assert exchange.calls == [("head", 413), ("end", None)]
    assert not conn.reusable()  # the upstream answered early: the body is still owed


@pytest.mark.parametrize(
    "response",
    [
        OK + b"Connection: close\r\nContent-Length: 0\r\n\r\n",
        OK + b"Content-Length: 0\r\n\r\nX",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_connection_not_reusable_after_an_unclean_exchange(response: bytes) -> None:
    conn, _, _ = connection()
    conn.send_request(b"GET", b"/", HOST, chunked=False, upgrade=False)
    conn.end_request()
    conn.data_received(response)
    assert not conn.reusable()


def test_connection_invalid_response_is_a_502_and_aborts() -> None:
    conn, transport, exchange = connection()
    conn.send_request(b"GET", b"/", HOST, chunked=False, upgrade=False)
    conn.end_request()
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n two\r\n\r\n")
    assert exchange.calls == [
        ("lost", (502, "upstream sent an invalid response: invalid field line b' two'"))
    ]
    assert transport.aborted and conn.exchange is None


def test_connection_eof_before_the_head_is_a_502() -> None:
    conn, transport, exchange = connection()
    conn.send_request(b"GET", b"/", HOST, chunked=False, upgrade=False)
    conn.end_request()
    conn.eof_received()
    assert exchange.calls == [
        ("lost", (502, "upstream sent an invalid response: connection closed within the response head"))
    ]
    assert transport.aborted


def test_connection_informational_consumed_and_switch_reported() -> None:
    conn, _, exchange = connection()
    conn.send_request(b"GET", b"/ws", HOST, chunked=False, upgrade=True)
    conn.end_request()
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\nfirst")
    assert exchange.calls == [("switch", 101)]
    assert conn.start_tunnel() == b"first"
    conn.data_received(b"more")
    assert exchange.calls[-1] == ("raw", b"more")


def test_connection_bytes_while_idle_abort_it() -> None:
    conn, transport, _ = connection()
    conn.exchange = None
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.aborted


def reference_request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """request_head's general path: every Host line moved to the front."""
    hosts = [b"host: %s\r\n" % v for n, v in headers if n == b"host"]
    rest = [b"%s: %s\r\n" % (n, v) for n, v in headers if n != b"host"]
    return b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(hosts + rest) + b"\r\n"


FIELD_NAMES = st.sampled_from([b"host", b"x-host", b"hostx", b"accept", b"cookie", b"h"])
FIELD_VALUES = st.sampled_from([b"", b"a", b"host: b", b"x host: y", b"127.0.0.1:9000"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=6), st.booleans())
def test_request_head_shortcut_equals_the_general_path(headers: Headers, host_first: bool) -> None:
    """Both paths (Host first and alone, or anything else) give the reference's bytes."""
    if host_first:
        headers = [(b"host", b"h"), *headers]
    assert request_head(b"GET", b"/p", headers) == reference_request_head(b"GET", b"/p", headers)


# -- the pool's targets: keyed by everything that makes one ------------------------------------


def test_a_target_is_keyed_by_its_tls_settings_too() -> None:
    """A reload that turns verify_tls back on (or names another CA file)
    must apply to an upstream already used: the pool's target for the same
    URL with other TLS settings is another target, with its own context,
    and a connection pooled under the old settings is never taken for it."""
    loop = asyncio.new_event_loop()
    try:
        pool = Pool(loop, max_idle=8, idle_timeout=10.0, connect_timeout=1.0, writes=WriteBatch(None))
        url = "https://upstream.test"
        lax = pool.target(url, None, False)
        strict = pool.target(url, None, True)
        assert lax.ssl is not None and lax.ssl.verify_mode == ssl.CERT_NONE and not lax.ssl.check_hostname
        assert (
            strict.ssl is not None
            and strict.ssl.verify_mode == ssl.CERT_REQUIRED
            and strict.ssl.check_hostname
        )
        assert pool.target(url, None, True) is strict  # made once per settings
        assert lax.key != strict.key
        conn = UpstreamConnection(lax, lambda _: None, memoryview(bytearray(READ_SIZE)), WriteBatch(None))
        conn.connection_made(Transport())  # type: ignore[arg-type]
        assert conn.attach(Recorder()) is None  # type: ignore[arg-type]
        conn.send_request(b"GET", b"/", [(b"host", b"upstream.test")], chunked=False, upgrade=False)
        conn.end_request()
        conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")  # a clean exchange: reusable
        pool.release(conn, 0.0)
        assert pool.take(strict) is None
        assert pool.take(lax) is conn
        # Plain http has no TLS settings: one target, one idle list.
        assert pool.target("http://upstream.test", None, False).key == pool.target("http://upstream.test").key
    finally:
        loop.close()


def test_a_reload_makes_new_targets() -> None:
    """configure (every reload) drops the targets made so far, so a CA file
    changed in place is read again for new connections, and the table holds
    only the targets of the configuration in force."""
    loop = asyncio.new_event_loop()
    try:
        pool = Pool(loop, max_idle=8, idle_timeout=10.0, connect_timeout=1.0, writes=WriteBatch(None))
        first = pool.target("https://upstream.test")
        pool.configure(8, 10.0, 1.0)
        again = pool.target("https://upstream.test")
        assert again is not first and again.key == first.key
        assert list(pool.targets) == [again.key]
    finally:
        loop.close()
