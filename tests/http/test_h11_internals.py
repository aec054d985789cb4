"""edge.http.h11_internals against h11 itself, without sockets.

Client request heads taken without h11's parser (fast_request) must parse
as h11 parses them; the hand-made state changes (commit_*, next_cycle) must
leave h11's connection exactly as its own events do; a proxied head framed
by commit_head must be byte for byte what h11's own send() writes; the
receive buffer read in place (buffered, pending, head_bytes, chunk_owed,
take_body, ...) must say what trailing_data and next_event say.
"""

from __future__ import annotations

import ast
import importlib.metadata
import itertools
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import h11
import pytest
from h11_reference import SPLICES, H, assert_agrees_with_h11, fast_conn, h11_request, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from edge.access.responses import Responses
from edge.http import h11_internals
from edge.http.h11_internals import (
    _stand_in,
    awaiting_head,
    body_remaining,
    buffered,
    chunk_owed,
    commit_end,
    commit_head,
    commit_local,
    commit_request_end,
    commit_whole,
    discard_buffer,
    fast_request,
    head_bytes,
    next_cycle,
    pending,
    scan_fields,
    send_body,
    take_body,
)
from edge.http.message import ResponseHead

OK = b"HTTP/1.1 200 OK\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


def head(status: int, reason: bytes, *headers: tuple[bytes, bytes]) -> ResponseHead:
    return ResponseHead(status, reason, list(headers))


def length_of(n: int) -> tuple[bytes, bytes]:
    return (b"content-length", b"%d" % n)


CHUNKED = (b"transfer-encoding", b"chunked")


# -- the client side: commit_head against h11's own send() --------------------------------


def client_conn(request: bytes) -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    assert isinstance(conn.next_event(), h11.Request)
    return conn


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
GET10 = b"GET / HTTP/1.0\r\n\r\n"
HEAD_REQ = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
CLOSING = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

FRAMING_CASES = [
    ("length", GET, head(200, b"OK", (b"content-type", b"text/plain"), length_of(3)), b"abc"),
    ("no length: chunked", GET, head(200, b"OK", (b"content-type", b"text/plain")), b"abc"),
    ("http/1.0 client: close-delimited", GET10, head(200, b"OK"), b"abc"),
    ("http/1.0 client with a length", GET10, head(200, b"OK", length_of(3)), b"abc"),
    ("client asked to close", CLOSING, head(200, b"OK", length_of(3)), b"abc"),
    ("head without a length", HEAD_REQ, head(200, b"OK"), b""),
    ("head with a length", HEAD_REQ, head(200, b"OK", length_of(99)), b""),
    ("204", GET, head(204, b"No Content"), b""),
    ("304 with a length", GET, head(304, b"Not Modified", length_of(99)), b""),
    ("empty reason", GET, head(404, b"", length_of(0)), b""),
]


def h11_bytes(conn: h11.Connection, response: ResponseHead, body: bytes, close: bool) -> bytes:
    headers = [*response.headers, *([(b"connection", b"close")] if close else [])]
    out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=response.reason))
    return (out or b"") + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")


def commit_bytes(conn: h11.Connection, response: ResponseHead, body: bytes, close: bool) -> bytes:
    out = commit_head(conn, response, close)
    return out + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")


def parsed(request: bytes, raw: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """What a client makes of the response bytes (header order ignored)."""
    client = h11.Connection(h11.CLIENT)
    method = request.split(b" ", 1)[0]
    client.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while type(event := client.next_event()) is h11.Data:
        body += event.data
    assert type(event) is h11.EndOfMessage
    return response.status_code, response.reason, sorted(response.headers), body


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize(
    ("name", "request_", "response", "body"), FRAMING_CASES, ids=[c[0] for c in FRAMING_CASES]
)
def test_commit_head_frames_as_h11_would(
    name: str, request_: bytes, response: ResponseHead, body: bytes, close: bool
) -> None:
    ours, theirs = client_conn(request_), client_conn(request_)
    mine = commit_bytes(ours, response, body, close)
    reference = h11_bytes(theirs, response, body, close)
    assert parsed(request_, mine) == parsed(request_, reference)
    assert (ours.our_state, ours.their_state) == (theirs.our_state, theirs.their_state)


def three_calls(conn: h11.Connection, response: ResponseHead, body: bytes, close: bool) -> bytes | str:
    """commit_head, send_body and commit_end, as a response in pieces takes them."""
    written = [commit_head(conn, response, close)]
    try:
        if body:
            send_body(conn, body, written.append)
        written.append(commit_end(conn))
    except h11.LocalProtocolError:
        return "refused"
    return b"".join(written)


def whole(conn: h11.Connection, response: ResponseHead, body: bytes, close: bool) -> bytes | str:
    try:
        return commit_whole(conn, response, body, close)
    except h11.LocalProtocolError:
        return "refused"


WHOLE_CASES = [
    *FRAMING_CASES,
    ("body short of its length", GET, head(200, b"OK", length_of(3)), b"ab"),
    ("body past its length", GET, head(200, b"OK", length_of(3)), b"abcd"),
    ("empty body, zero length", GET, head(200, b"OK", length_of(0)), b""),
]


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize(
    ("name", "request_", "response", "body"), WHOLE_CASES, ids=[c[0] for c in WHOLE_CASES]
)
def test_commit_whole_is_the_three_calls_in_one(
    name: str, request_: bytes, response: ResponseHead, body: bytes, close: bool
) -> None:
    """A response passed on whole writes the bytes, and leaves h11 in the
    state, of its head, body and end passed on one by one; where those
    refuse (a body that is not what the length says), it refuses too."""
    ours, theirs = client_conn(request_), client_conn(request_)
    assert whole(ours, response, body, close) == three_calls(theirs, response, body, close)
    assert snapshot(ours) == snapshot(theirs)


def test_commit_head_exact_bytes() -> None:
    conn = client_conn(GET)
    response = head(200, b"OK", (b"content-type", b"text/plain"))
    assert commit_head(conn, response, close=True) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    assert conn.our_state is h11.SEND_BODY
    assert conn.send(h11.Data(data=b"hi")) == b"2\r\nhi\r\n"
    assert conn.send(h11.EndOfMessage()) == b"0\r\n\r\n"
    assert conn.our_state is h11.MUST_CLOSE


def test_commit_head_keeps_h11_counting_the_length() -> None:
    conn = client_conn(GET)
    commit_head(conn, head(200, b"OK", length_of(2)), close=False)
    with pytest.raises(h11.LocalProtocolError):
        conn.send(h11.Data(data=b"abc"))


# -- the client's request head: fast_request and the commits against h11 ------------------


FAST_TAKES = [
    ("plain get", b"GET / HTTP/1.1\r\n" + H + b"\r\n"),
    (
        "fields of every kind",
        b"GET /x?y=1 HTTP/1.1\r\n" + H + b"Cookie: a=b; c=d\r\nX-E:\r\nX-W: \t v  w\t \r\n\r\n",
    ),
    ("obs-text in a value", b"GET / HTTP/1.1\r\n" + H + b"X: caf\xc3\xa9\r\n\r\n"),
    ("content-length", b"POST /u HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"),
    ("content-length 0", b"PUT /u HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n"),
    ("pipelined", b"GET / HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n"),
    ("connection close", b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"),
    ("upgrade", b"GET / HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    ("expect", b"POST / HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
    ("head", b"HEAD / HTTP/1.1\r\n" + H + b"\r\n"),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\n" + H + b"\r\n"),
    ("absolute form", b"GET http://a/x HTTP/1.1\r\n" + H + b"\r\n"),
    ("lower-case method: a method of its own", b"get / HTTP/1.1\r\n" + H + b"\r\n"),
    ("token method", b"M-S_E.A!RCH / HTTP/1.1\r\n" + H + b"\r\n"),
    ("lower-case connect: not CONNECT", b"connect a:443 HTTP/1.1\r\n" + H + b"\r\n"),
]
FAST_DECLINES = [
    ("incomplete", b"GET / HTTP/1.1\r\n" + H),
    ("leading empty line", b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n"),
    ("http/1.0", b"GET / HTTP/1.0\r\n\r\n"),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n"),
    ("bare LF", b"GET / HTTP/1.1\n" + H + b"\r\n"),
    ("bare LF ending", b"GET / HTTP/1.1\r\n" + H + b"\n"),
    ("no host", b"GET / HTTP/1.1\r\n\r\n"),
    ("two hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n"),
    ("transfer-encoding", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"),
    ("content-length list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1, 1\r\n\r\nx"),
    ("two content-lengths", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
    ("content-length sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\nx"),
    ("DEL in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n"),
    ("control in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n"),
    ("space before colon", b"GET / HTTP/1.1\r\n" + H + b"X : a\r\n\r\n"),
    ("obs-text in the target", b"GET /\xff HTTP/1.1\r\n" + H + b"\r\n"),
    ("two spaces", b"GET  / HTTP/1.1\r\n" + H + b"\r\n"),
]


@pytest.mark.parametrize(("name", "data"), FAST_TAKES, ids=[c[0] for c in FAST_TAKES])
def test_fast_request_takes_what_h11_parses_the_same(name: str, data: bytes) -> None:
    assert assert_agrees_with_h11(data) is not None


@pytest.mark.parametrize(("name", "data"), FAST_DECLINES, ids=[c[0] for c in FAST_DECLINES])
def test_fast_request_leaves_the_rest_to_h11(name: str, data: bytes) -> None:
    assert fast_request(data) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([data for _, data in FAST_TAKES]),
    edits=st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 3), st.sampled_from(SPLICES) | st.binary(max_size=3)),
        max_size=4,
    ),
)
def test_fast_request_never_disagrees_with_h11(base: bytes, edits: list[tuple[int, int, bytes]]) -> None:
    data = base
    for at, cut, piece in edits:
        at %= len(data) + 1
        data = data[:at] + piece + data[at + cut :]
    assert_agrees_with_h11(data)


RESPONSES = [
    head(200, b"OK", length_of(3)),
    head(200, b"OK"),  # chunked to an HTTP/1.1 client
    head(204, b"No Content"),
    head(304, b"Not Modified", length_of(99)),
]


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("response", RESPONSES, ids=["length", "chunked", "204", "304"])
@pytest.mark.parametrize(("name", "data"), FAST_TAKES, ids=[c[0] for c in FAST_TAKES])
def test_commits_move_h11_as_its_own_events_do(
    name: str, data: bytes, response: ResponseHead, close: bool
) -> None:
    """A whole cycle, committed by hand and through h11, state compared after every step."""
    ours, parsed = fast_conn(data)
    theirs, event, _ = h11_request(data)
    assert parsed is not None and event is not None
    if event.method == b"CONNECT" or any(n == b"upgrade" for n, _ in event.headers):
        return  # refused (405) or tunnelled before any of this runs
    if not parsed.length:
        if ours._cstate.keep_alive:
            assert commit_request_end(ours)
        else:  # declined, nothing done: next_event takes it as before
            assert not commit_request_end(ours)
            assert type(ours.next_event()) is h11.EndOfMessage
        assert type(theirs.next_event()) is h11.EndOfMessage
    else:
        ours.receive_data(b"xyz")
        theirs.receive_data(b"xyz")
        for conn in (ours, theirs):
            assert type(conn.next_event()) is h11.Data
            assert type(conn.next_event()) is h11.EndOfMessage
    assert snapshot(ours) == snapshot(theirs)
    commit_head(ours, response, close)
    theirs._process_event(h11.SERVER, _stand_in_for(theirs, response, close))  # commit_head's slow way
    assert snapshot(ours) == snapshot(theirs)
    body = b"" if response.status in (204, 304) or event.method == b"HEAD" else b"abc"
    if body:
        send_body(ours, body, lambda _: None)
        send_body(theirs, body, lambda _: None)
    assert commit_end(ours) == (theirs.send(h11.EndOfMessage()) or b"")
    assert snapshot(ours) == snapshot(theirs)
    if theirs.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
        next_cycle(ours)
        theirs.start_next_cycle()
        assert snapshot(ours) == snapshot(theirs)


def _stand_in_for(conn: h11.Connection, response: ResponseHead, close: bool) -> h11.Response:
    """The stand-in commit_head hands to _process_event when it takes the slow way."""
    length = next((v for n, v in response.headers if n == b"content-length"), None)
    chunked = length is None and response.status not in (204, 304)
    close = close or not conn._cstate.keep_alive
    return _stand_in(response.status, length, chunked, close)


def test_commit_request_end_declines_a_body_still_to_come() -> None:
    conn, parsed = fast_conn(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\n")
    assert parsed is not None
    before = snapshot(conn)
    assert not commit_request_end(conn)
    assert snapshot(conn) == before


def test_commit_end_leaves_a_short_body_to_h11() -> None:
    conn, _ = fast_conn(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert commit_request_end(conn)
    commit_head(conn, head(200, b"OK", length_of(3)), close=False)
    with pytest.raises(h11.LocalProtocolError):
        commit_end(conn)
    assert conn.our_state is h11.ERROR


# -- prebuilt local responses: commit_local against h11's own send() ---------------------


LOCAL_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    # answered before the body: the client is still in SEND_BODY
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    # a switch proposed: never the shortcut's plain case
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
]


@pytest.mark.parametrize("status", [200, 302, 400, 401, 403, 404, 405, 503])
@pytest.mark.parametrize("request_bytes", LOCAL_REQUESTS)
def test_commit_local_matches_public_send(request_bytes: bytes, status: int) -> None:
    """commit_local drives h11's state machine exactly as send() would,
    whether the request is complete or its body is still to come."""
    if request_bytes.startswith(b"CONNECT") and status < 300:
        pytest.skip("a 2xx to CONNECT switches protocols; the edge answers CONNECT with 405")
    response = Responses("edge").text(status, b"x\n")
    snapshots = []
    for shortcut in (True, False):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(request_bytes)
        assert isinstance(conn.next_event(), h11.Request)
        conn.next_event()  # EndOfMessage, or NEED_DATA while a body is owed
        if shortcut:
            commit_local(conn, response.event)
        else:
            conn.send(response.event)
            if not request_bytes.startswith(b"HEAD"):
                conn.send(h11.Data(data=response.body))
            conn.send(h11.EndOfMessage())
        snapshots.append(snapshot(conn))
        if conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            conn.start_next_cycle()
            assert conn.states[h11.SERVER] is h11.IDLE
    assert snapshots[0] == snapshots[1]


def test_a_local_response_never_carries_connection() -> None:
    with pytest.raises(ValueError, match="Connection"):
        Responses("edge").text(400, b"x\n", [(b"Connection", b"close")])


# -- the receive side read in place, against trailing_data and next_event ------------------


def drain(conn: h11.Connection) -> list[object]:
    """next_event until h11 wants more (or refuses); the events, Data as bytes."""
    events: list[object] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return [*events, "error"]
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return [*events, event]
        events.append(bytes(event.data) if type(event) is h11.Data else type(event))
        if type(event) is h11.ConnectionClosed:
            return events


def assert_reads_agree(conn: h11.Connection) -> None:
    data, closed = conn.trailing_data
    assert buffered(conn) is bool(data)
    assert pending(conn) is (bool(data) or closed)
    assert awaiting_head(conn) is (conn.their_state is h11.IDLE and not data)
    assert head_bytes(conn) == data
    assert head_bytes(conn) is head_bytes(conn)  # in place: no copy


CONVERSATIONS = [
    b"GET / HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n" + H + b"\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
    b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\ntrailing",
]


@settings(max_examples=200, deadline=None)
@given(
    data=st.sampled_from(CONVERSATIONS),
    cuts=st.lists(st.integers(0, 120), max_size=4),
    eof=st.booleans(),
)
def test_receive_side_reads_agree_with_trailing_data(data: bytes, cuts: list[int], eof: bool) -> None:
    """buffered, pending, awaiting_head and head_bytes answer what
    trailing_data and their_state say, after every read and every event."""
    conn = h11.Connection(h11.SERVER)
    assert_reads_agree(conn)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        conn.receive_data(data[start:end])
        assert_reads_agree(conn)
        for _ in drain(conn):
            assert_reads_agree(conn)
        if conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.SEND_RESPONSE}:
            conn.send(h11.Response(status_code=204, headers=[]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            assert_reads_agree(conn)
    if eof and conn.their_state is not h11.ERROR:
        conn.receive_data(b"")
        assert_reads_agree(conn)


@pytest.mark.parametrize("eof", [False, True])
def test_discard_buffer_is_as_if_nothing_more_came(eof: bool) -> None:
    """After the last request (Connection: close), bytes that follow are
    thrown away: the connection is then as if they had never arrived."""
    request = b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    ours, theirs = h11.Connection(h11.SERVER), h11.Connection(h11.SERVER)
    ours.receive_data(request + b"GET /next HTTP/1.1\r\n")
    theirs.receive_data(request)
    for conn in (ours, theirs):
        assert type(conn.next_event()) is h11.Request
        assert type(conn.next_event()) is h11.EndOfMessage
    assert ours.their_state is h11.MUST_CLOSE and buffered(ours)
    discard_buffer(ours)
    if eof:
        ours.receive_data(b"")
        theirs.receive_data(b"")
    assert snapshot(ours) == snapshot(theirs)
    assert drain(ours) == drain(theirs)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 5000), sent=st.integers(0, 5000), split=st.integers(0, 20))
def test_chunk_owed_is_what_h11_still_delivers_of_the_chunk(size: int, sent: int, split: int) -> None:
    """chunk_owed says how many bytes h11 will still hand over before the
    chunk being read ends: feeding exactly that many, then the chunk's CRLF
    and the last chunk, ends the body."""
    sent = min(sent, size)
    head = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"%x\r\n" % size + b"x" * sent)
    assert type(conn.next_event()) is h11.Request
    got = b"".join(e for e in drain(conn) if isinstance(e, bytes))
    assert len(got) == sent
    owed = chunk_owed(conn)
    assert owed == size - sent
    rest = b"y" * owed + b"\r\n0\r\n\r\n"
    events = []
    for piece in (rest[:split], rest[split:]):
        if piece:  # b"" would be the client's EOF
            conn.receive_data(piece)
            events += drain(conn)
    assert b"".join(e for e in events if isinstance(e, bytes)) == b"y" * owed
    assert events[-2:] == [h11.EndOfMessage, h11.NEED_DATA]
    assert chunk_owed(conn) == 0


def test_chunk_owed_is_nothing_for_a_length_body() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9\r\n\r\nabc")
    assert type(conn.next_event()) is h11.Request
    assert chunk_owed(conn) == 0


LENGTH_HEAD = b"POST / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n"
WANTS = (h11.NEED_DATA, h11.PAUSED)


def merged(events: list[object]) -> list[object]:
    """Body bytes joined (reads split them anywhere), then the other events."""
    return [
        b"".join(e for e in events if isinstance(e, bytes)),
        *(e for e in events if not isinstance(e, bytes)),
    ]


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(0, 300),
    after=st.sampled_from([b"", b"GET / HTTP/1.1\r\n" + H + b"\r\n", b"G"]),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_take_body_hands_over_what_h11_would(length: int, after: bytes, cuts: list[int]) -> None:
    """Reads split anywhere, as the connection takes them: take_body's bytes
    skip h11 and the rest goes through it. The body seen, the events after it
    and h11's state end as h11 alone would have them; body_remaining follows
    the body throughout."""
    head = LENGTH_HEAD % length
    data = head + bytes(range(256)) * 2
    data = data[: len(head) + length] + after
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    ours, theirs = h11.Connection(h11.SERVER), h11.Connection(h11.SERVER)
    theirs.receive_data(data)
    reference = [e for e in drain(theirs) if e not in WANTS]
    seen: list[object] = []
    for start, end in itertools.pairwise(bounds):
        piece = data[start:end]
        take = take_body(ours, len(piece))
        if take:
            seen.append(piece[:take])
            piece = piece[take:]
        if piece:
            ours.receive_data(piece)
        seen += [e for e in drain(ours) if e not in WANTS]
        body = sum(len(e) for e in seen if isinstance(e, bytes))
        if ours.their_state is h11.SEND_BODY:
            assert body_remaining(ours) == length - body
    assert merged(seen) == merged(reference)
    assert snapshot(ours) == snapshot(theirs)
    assert drain(ours) == drain(theirs)
    assert body_remaining(ours) == 0


FIELD_HEADS = [
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nCookie: c=d\r\n\r\n",
    b"POST / HTTP/1.1\r\nHOST: b\r\nTransfer-Encoding: chunked\r\nX:  spaced \t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold: h11 unfolds it
]


@pytest.mark.parametrize("data", FIELD_HEADS)
def test_scan_fields_reads_what_the_public_headers_say(data: bytes) -> None:
    _, event, _ = h11_request(data)
    assert event is not None
    pairs: list[tuple[bytes, bytes]] = []
    index: dict[bytes, list[bytes]] = {}
    size = scan_fields(event, pairs, index)
    assert pairs == list(event.headers)
    assert index == {n: [v for k, v in event.headers if k == n] for n, _ in event.headers}
    assert list(index) == list(dict.fromkeys(n for n, _ in event.headers))
    assert 0 < size <= len(data)


@pytest.mark.parametrize("name, data", [c for c in FAST_TAKES if isinstance(c, tuple)])
def test_fast_request_takes_no_head_before_it_is_whole(name: str, data: bytes) -> None:
    """fast_request finds the head's end by its one match: every cut before
    that end is left to h11 (as the find() it replaced left it)."""
    end = data.index(b"\r\n\r\n") + 4
    for cut in range(end):
        assert fast_request(data[:cut]) is None, cut
    parsed = fast_request(data[:end])
    assert parsed is not None
    assert parsed.end == end


def test_the_shared_end_is_an_end_without_trailers() -> None:
    """The connection sends edge.http.cycle.END by identity straight to
    commit_end: it must be what its general path sends there too (an
    EndOfMessage without trailer fields), and end a response as h11 would."""
    from edge.http.cycle import END

    assert type(END) is h11.EndOfMessage and not END.headers
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    conn.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
    assert commit_end(conn) == b"0\r\n\r\n"
    assert conn.our_state is h11.DONE


# -- what the module says it relies on, and the pin that holds it still ----------------------

OWNER = Path(h11_internals.__file__)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pinned_range() -> str:
    """The h11 range the module's opening comment names (`h11>=x,<y`)."""
    doc = ast.get_docstring(ast.parse(OWNER.read_text())) or ""
    ranges = re.findall(r"`h11([<>=!~][^`]*)`", doc)
    assert len(ranges) == 1, f"the opening comment names one h11 range, not {ranges}"
    return ranges[0]


def test_h11_is_pinned_to_the_range_the_module_names() -> None:
    """pyproject.toml requires h11 in exactly that range, and the h11
    installed is in it: widen or drop the pin and this fails, until the
    module's list is checked against the new h11 and the comment says so."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    h11_requirements = [Requirement(d) for d in dependencies if Requirement(d).name == "h11"]
    assert len(h11_requirements) == 1, dependencies
    named = SpecifierSet(pinned_range())
    assert h11_requirements[0].specifier == named
    # A closed range within one minor series: a lower and an upper bound.
    assert {s.operator for s in named} == {">=", "<"}
    assert importlib.metadata.version("h11") in named and h11.__version__ in named


def test_the_opening_comment_names_every_internal_used() -> None:
    """Every private module and name imported from h11, every `_private`
    attribute read, every attribute assigned (on h11's objects: the module
    assigns to no other) and every private keyword passed appears in the
    opening comment's list."""
    tree = ast.parse(OWNER.read_text())
    doc = ast.get_docstring(tree) or ""
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("h11._"):
            used.add(node.module or "")
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                used.add(node.attr)
            if isinstance(node.ctx, ast.Store | ast.Del) and ast.unparse(node.value) != "self":
                used.add(node.attr)
        elif isinstance(node, ast.keyword) and (node.arg or "").startswith("_"):
            used.add(node.arg or "")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "object.__setattr__",
            "object.__new__",
        ):
            used.add(ast.unparse(node.func).removeprefix("object."))
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                used.add(str(node.args[1].value))
    assert {"_cstate", "_length", "client_is_waiting_for_100_continue", "_receive_buffer"} <= used
    missing = sorted(name for name in used if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", doc) is None)
    assert not missing, f"h11 internals used but not in the opening comment: {missing}"


# -- send_body and the stand-in cache against h11's own paths -----------------------------


BODY_HEADS = [
    ("length", GET, head(200, b"OK", length_of(7))),
    ("chunked", GET, head(200, b"OK")),
    ("http/1.0: close-delimited", GET10, head(200, b"OK")),
]


@pytest.mark.parametrize(("name", "request_", "response"), BODY_HEADS, ids=[c[0] for c in BODY_HEADS])
@given(pieces=st.lists(st.binary(min_size=1, max_size=5), max_size=4))
@settings(max_examples=50, deadline=None)
def test_send_body_writes_what_send_data_writes(
    name: str, request_: bytes, response: ResponseHead, pieces: list[bytes]
) -> None:
    """Body pieces through send_body write the bytes h11's send(Data(...))
    writes and leave h11 in its state; past a Content-Length both refuse,
    writing nothing."""
    ours, theirs = client_conn(request_), client_conn(request_)
    assert commit_head(ours, response, False) == commit_head(theirs, response, False)
    written: list[bytes] = []
    for piece in pieces:
        try:
            reference = theirs.send(h11.Data(data=piece)) or b""
        except h11.LocalProtocolError:
            with pytest.raises(h11.LocalProtocolError):
                send_body(ours, piece, written.append)
            assert not written
            return  # h11 is now in ERROR; send_body leaves that to the end (commit_end)
        send_body(ours, piece, written.append)
        assert b"".join(written) == reference
        written.clear()
        assert snapshot(ours) == snapshot(theirs)
    assert ending(lambda: commit_end(ours)) == ending(lambda: theirs.send(h11.EndOfMessage()) or b"")
    assert snapshot(ours) == snapshot(theirs)


def ending(end: Callable[[], bytes]) -> bytes | str:
    """The bytes ending a response, or "refused" (a body short of its length)."""
    try:
        return end()
    except h11.LocalProtocolError:
        return "refused"


def test_send_body_refuses_where_send_data_does() -> None:
    """Before a response head, body bytes are an error either way."""
    ours, theirs = client_conn(GET), client_conn(GET)
    with pytest.raises(h11.LocalProtocolError):
        theirs.send(h11.Data(data=b"x"))
    with pytest.raises(h11.LocalProtocolError):
        send_body(ours, b"x", lambda _: None)


def test_a_cached_stand_in_moves_h11_as_a_fresh_one_and_the_real_head_do() -> None:
    """Through _process_event, the shared stand-in (second use: from the
    cache) leaves h11 as a Response built for it alone and as h11's own
    send() of the real head does; h11 leaves it unchanged. Framings that
    differ only in `close` follow each other, so a key missing a part would
    hand the wrong one back."""
    for (_, request_, response, body), close in itertools.product(FRAMING_CASES, (False, True)):
        for _use in range(2):
            cached_conn, fresh_conn, real_conn = (client_conn(request_) for _ in range(3))
            stand_in = _stand_in_for(cached_conn, response, close)
            before = (stand_in.status_code, list(stand_in.headers), stand_in.http_version, stand_in.reason)
            cached_conn._process_event(h11.SERVER, stand_in)
            fresh = h11.Response(status_code=stand_in.status_code, headers=list(stand_in.headers))
            fresh_conn._process_event(h11.SERVER, fresh)
            h11_bytes(real_conn, response, body, close)
            after = (stand_in.status_code, list(stand_in.headers), stand_in.http_version, stand_in.reason)
            assert before == after
            assert snapshot(cached_conn) == snapshot(fresh_conn)
            # the real head, its body and end sent by h11: the same after them
            cached_conn.send(h11.Data(data=body))
            cached_conn.send(h11.EndOfMessage())
            assert snapshot(cached_conn) == snapshot(real_conn), (request_, response, close)
        assert _stand_in_for(cached_conn, response, close) is stand_in


def test_the_stand_in_cache_stays_bounded_and_right() -> None:
    """Distinct Content-Lengths past the bound: the cache stays within it,
    and every answer, evicted or not, is framed as asked."""
    from edge.http.h11_internals import _STAND_INS, _STAND_INS_LIMIT

    for n in range(2 * _STAND_INS_LIMIT + 3):
        event = _stand_in(200, b"%d" % n, False, n % 2 == 1)
        expected = [(b"content-length", b"%d" % n), *([(b"connection", b"close")] if n % 2 else [])]
        assert list(event.headers) == expected and event.status_code == 200
        assert len(_STAND_INS) <= _STAND_INS_LIMIT
