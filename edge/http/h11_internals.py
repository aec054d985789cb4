"""h11 driven by hand: the one module that touches h11's internals.

Everything else in edge uses h11's public API only, or the functions here
(tests/test_layout.py checks that no other module imports `h11._*`, reads a
private attribute of h11's objects, assigns to an attribute of one, builds
an event around its __init__ or passes one a private keyword). h11 is
pinned to `h11>=0.16,<0.17` in pyproject.toml (tests/http/test_h11_internals.py
checks the pin is exactly this range and the installed h11 within it)
because of what this module relies on, all of it h11 0.16's private
behaviour, each covered by a differential test against h11's own slow path
(tests/http/test_h11_internals.py, tests/http/test_wire_diff.py). The
complete list; every `_private` name and every assignment to an attribute
of an h11 object below is one of these:

- private modules imported: `h11._headers.Headers`, `h11._readers`
  (`ContentLengthReader`, `ChunkedReader`, `expect_nothing`,
  `maybe_read_from_IDLE_client`), `h11._receivebuffer.ReceiveBuffer`,
  `h11._writers` (`BodyWriter`, `ContentLengthWriter`, `ChunkedWriter`,
  `write_any_response`);
- `Connection._cstate`: `.states` (a dict role -> state, assigned in place),
  `.keep_alive` and `.pending_switch_proposals`, read to know when a
  transition is the plain keep-alive one;
- `Connection._process_event(role, event)`: the entry point send() and
  next_event() use to run the state machine, called directly with events
  edge has already serialised (`commit_local`, `commit_head`) or parsed
  (`commit_request`);
- `Connection._reader` / `_writer`, read, and assigned here as h11 would
  after each transition (`ContentLengthReader(n)`, `expect_nothing`,
  `maybe_read_from_IDLE_client`; `write_any_response`,
  `ContentLengthWriter(n)`, `ChunkedWriter()`, None); h11 reads both afresh
  on every event, so an assignment is all a transition needs;
- `ContentLengthReader._remaining`, read, and counted down (assigned) by
  `take_body` for body bytes that skip the receive buffer;
  `ChunkedReader._bytes_in_chunk`, read; `ContentLengthWriter._length`
  (the bytes it still owes), read by `commit_end`, and set to 0 by
  `commit_whole` for a body that is exactly what it owes (as its
  `send_data` would);
  `BodyWriter.send_data(data, write)`, called by `send_body`;
- `Connection._request_method`, assigned as h11 sets it on a request (None
  between cycles) and read to frame a response to HEAD; the public
  `their_http_version`, assigned as h11 sets it on a request;
- `Connection.client_is_waiting_for_100_continue` (public), assigned False
  where h11's `_process_event` would clear it (a final response, the end of
  the request's body);
- `Connection._receive_buffer` (a `ReceiveBuffer` whose `._data` is the
  bytearray itself: its length is the buffer's, as `len()` and `bool()`
  of the buffer say)
  and `._receive_buffer_closed` (the peer's EOF), read in place instead of
  through `trailing_data`, which copies; and `_receive_buffer` replaced by a
  new `ReceiveBuffer()`, empty (`discard_buffer`) or holding the old one's
  bytes less their leading empty lines (`skip_blank_lines`, `+=`): h11 keeps
  no other reference to it and holds the EOF apart, in
  `_receive_buffer_closed`;
- `Request` built without `__init__` (`object.__new__` plus
  `object.__setattr__` of method, target, http_version, headers) and
  `Headers(full_items)` / `Headers._full_items` (raw name, lower-cased name,
  value), for heads this module has already checked as h11 would;
- `Response(..., _parsed=True)`: a stand-in event without re-validation;
  the stand-ins are cached and shared by every connection (`_STAND_INS`),
  as are `_EOM` and the prebuilt LocalResponse events `commit_local` is
  handed, which relies on h11 never changing an event given to
  `_process_event` or send() (it reads their status, headers and version
  only).

The client side still runs h11's server state machine; `commit_head` frames a
proxied final head by hand and advances h11 as its own send() would, and
`send_body` hands body bytes straight to the writer h11 chose.

Client request heads in the common case (`fast_request`): HTTP/1.1, one Host,
framed by at most one Content-Length of digits, every byte within a strict
subset of what h11 accepts, so h11 would parse the same bytes into the same
event; anything else is left to h11's parser. `commit_request`,
`commit_request_end`, `commit_end`, `commit_whole` and `next_cycle` move h11's state machine
exactly as its own events would, by assignment in the plain keep-alive case
and through h11 otherwise (tests/http/test_h11_internals.py compares the two).

The microseconds the comments below quote for a shortcut against its h11
path are measured by `python bench/h11_shortcuts.py` (both in one run).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import cast

import h11
import msgspec
from h11._headers import Headers as Headers_
from h11._readers import ChunkedReader, ContentLengthReader, expect_nothing, maybe_read_from_IDLE_client
from h11._receivebuffer import ReceiveBuffer
from h11._writers import BodyWriter, ChunkedWriter, ContentLengthWriter, write_any_response

from edge.access.cache import BoundedCache
from edge.access.request import Index
from edge.http.message import CRLF, FIELD_SEP, LAST_CHUNK, TOKEN, Headers, ResponseHead
from edge.http.message import DIGITS as _DIGITS
from edge.http.message import OWS as _OWS

# The bench figures below for take_body, send_body, the in-place buffer
# reads, _STAND_INS and commit_head come from one run (CPython 3.11, h11
# 0.16.0, on a two-core machine shared with other jobs): each shortcut timed
# in process against its slow path with perf_counter, the two interleaved,
# the best of 15 repeats kept.

# -- the client's request head: the common case without h11's parser --------------

# The request heads `fast_request` accepts: HTTP/1.1, a method (any token, as
# written: methods are case-sensitive, RFC 9110 9.1), a target of visible
# ASCII, field lines ending in CRLF whose names are tokens and whose values
# hold only visible characters, SP and HTAB (no other control character,
# which the client protocol refuses on h11's path too). Each part is a
# strict subset of what h11 accepts (pinned 0.16: tokens, `[^\x00\s]` value
# characters), so whatever matches here is a head h11 would parse into the
# same event; everything else (bare LF, obs-fold, other versions, odd
# bytes) does not match and is left to h11, whose errors stay the reference.
_METHOD = TOKEN
_TARGET = rb"[\x21-\x7e]+"
_REQUEST_FIELD = TOKEN + rb":[\t\x20-\x7e\x80-\xff]*+\r\n"
_REQUEST_HEAD_RE = re.compile(
    rb"(" + _METHOD + rb") (" + _TARGET + rb") HTTP/1\.1\r\n((?:" + _REQUEST_FIELD + rb")*+)\r\n"
)


class FastRequest(msgspec.Struct, frozen=True, gc=False):
    """A request head parsed by fast_request: its parts as the connection
    reads them (what scan_fields would collect from h11's event), so the
    common case builds no h11 event at all. A Struct: one per request, built
    in C (a NamedTuple cost 0.3 us, the event 0.8 us more). No gc: it holds
    only bytes and containers of bytes."""

    method: bytes
    target: bytes
    block: bytes  # the field lines as received, each ending in CRLF
    headers: Headers  # (lower-cased name, value), as scan_fields collects them
    index: Index  # the same by name, as scan_fields indexes them
    size: int  # of the head, as scan_fields measures it
    end: int  # where the head ends in the bytes it was parsed from
    length: int  # of the body: 0 without a Content-Length
    plain: bool  # no Connection, Upgrade or Expect field: commit_request's fast case

    @property
    def event(self) -> h11.Request:
        """The event h11's parser would return for these bytes, built
        without Request.__init__, whose checks (method and target
        characters, Host count, header normalisation) fast_request has
        already made. Only the non-plain commit needs it."""
        event = object.__new__(h11.Request)
        object.__setattr__(event, "method", self.method)
        object.__setattr__(event, "target", self.target)
        object.__setattr__(event, "http_version", b"1.1")
        object.__setattr__(event, "headers", Headers_(self.h11_items()))
        return event

    def h11_items(self) -> list[tuple[bytes, bytes, bytes]]:
        """(raw name, lower-cased name, value) per field: h11's _full_items,
        the raw names taken from the block, one line per pair of `headers`.
        Only the rare non-plain commit needs them (fast_request keeps the
        block instead, 0.07 us less per field of every request)."""
        lines = self.block[:-2].split(b"\r\n") if self.block else []
        return [
            (line.partition(b":")[0], name, value)
            for line, (name, value) in zip(lines, self.headers, strict=True)
        ]


def fast_request(data: bytes) -> FastRequest | None:
    """The request at the start of `data` as h11 would parse it, and where
    its head ends; None when the head is incomplete, is not of the plain
    kind above, or frames a body other than by one Content-Length of digits
    (Transfer-Encoding, several or listed Content-Lengths), or has not
    exactly one Host: h11 then parses it, refusing what it must.

    The one loop over the field lines also does scan_fields' work (pairs,
    index, size): tests/http/test_h11_internals.py checks both agree."""
    # One match, no find() for the head's end first: no line of the pattern
    # is empty, so a match ends at the first empty line, and the match fails
    # wherever the find-and-fullmatch it replaced failed (an incomplete head
    # included). 0.5 us less for a head with a token cookie.
    match = _REQUEST_HEAD_RE.match(data)
    if match is None:
        return None
    end = match.end()
    method, target, block = match.groups()
    pairs: Headers = []
    index: Index = {}
    size = len(method) + len(target) + 13  # as scan_fields counts
    hosts = 0
    length: bytes | None = None
    plain = True
    if block:
        for line in block[:-2].split(b"\r\n"):
            raw, _, value = line.partition(b":")  # a token holds no colon
            name = raw.lower()
            value = value.strip(_OWS)
            if name in _REQUEST_SPECIAL:
                if name == b"host":
                    hosts += 1
                elif name == b"content-length":
                    if length is not None or _DIGITS.fullmatch(value) is None:
                        return None
                    length = value
                elif name == b"transfer-encoding":
                    return None
                else:
                    plain = False
            pairs.append((name, value))
            size += len(raw) + len(value) + 4
            values = index.get(name)
            if values is None:
                index[name] = [value]
            else:
                values.append(value)
    if hosts != 1:
        return None
    return FastRequest(
        method, target, block, pairs, index, size, end,
        int(length) if length is not None else 0, plain and method != b"CONNECT",
    )  # fmt: skip


# Fields that frame a request or change what h11's state machine does with it.
_REQUEST_SPECIAL = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)


# -- the client side: a proxied head through h11's server state machine --------------------

_CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"
_CLOSE_LINE = b"Connection: close\r\n"
_NO_BODY_STATUS = (204, 304)
# Stand-in Responses by framing. h11 events are never mutated, so one object
# serves every response framed alike; Content-Length values make the key
# space open, hence the bound. A hit costs 0.16 us, building the Response
# 2.3 us: 2.2 us saved on every proxied head that takes _process_event
# (a closing or HTTP/1.0 connection). tests/http/test_h11_internals.py
# checks a cached stand-in moves h11 as a fresh one and the real head do.
_STAND_INS_LIMIT = 256  # entries: distinct framings, a few hundred bytes each
_STAND_INS: BoundedCache[tuple[int, bytes | None, bool, bool], h11.Response] = BoundedCache(_STAND_INS_LIMIT)


# h11's state machine advanced by hand (pinned 0.16), in the plain cases only.
# Connection._process_event copies the state dict, re-reads Connection,
# Upgrade and Expect, walks its transition tables to a fixed point and picks
# a reader or writer: about 10 us per event, four events per request. In a
# keep-alive cycle with no protocol switch proposed, the outcome of each
# event below is fixed, so it is assigned directly; any other case goes
# through _process_event. tests/http/test_h11_internals.py checks every function here
# against _process_event, attribute by attribute.


def _steady(conn: h11.Connection) -> bool:
    """Keep-alive, and no switch proposed: no state-triggered transition can fire."""
    cstate = conn._cstate
    return cstate.keep_alive and not cstate.pending_switch_proposals


def commit_request(conn: h11.Connection, request: FastRequest) -> None:
    """Advance h11 as if next_event() had parsed `request.event`."""
    states = conn._cstate.states
    if request.plain and _steady(conn) and states[h11.CLIENT] is h11.IDLE and states[h11.SERVER] is h11.IDLE:
        states[h11.CLIENT] = h11.SEND_BODY
        states[h11.SERVER] = h11.SEND_RESPONSE
        conn._request_method = request.method
        conn.their_http_version = b"1.1"
        conn._reader = ContentLengthReader(request.length)
        conn._writer = write_any_response
    else:
        conn._process_event(h11.CLIENT, request.event)


def commit_request_end(conn: h11.Connection) -> bool:
    """Advance h11 past the end of a request whose body is complete (its
    Content-Length reader has nothing left), as next_event() would on
    returning EndOfMessage; False, with nothing done, unless the case is plain."""
    states = conn._cstate.states
    reader = conn._reader
    if (
        type(reader) is ContentLengthReader
        and not reader._remaining
        and states[h11.CLIENT] is h11.SEND_BODY
        and states[h11.SERVER] in _SERVER_BUSY
        and _steady(conn)
    ):
        states[h11.CLIENT] = h11.DONE
        conn._reader = expect_nothing
        conn.client_is_waiting_for_100_continue = False
        return True
    return False


def commit_end(conn: h11.Connection) -> bytes:
    """The bytes ending the response being sent (the last chunk, or none),
    with h11 advanced as its send(EndOfMessage()) would."""
    states = conn._cstate.states
    writer = conn._writer
    if (
        states[h11.SERVER] is h11.SEND_BODY
        and states[h11.CLIENT] in _CLIENT_BUSY
        and _steady(conn)
        and (type(writer) is ChunkedWriter or (type(writer) is ContentLengthWriter and not writer._length))
    ):
        states[h11.SERVER] = h11.DONE
        conn._writer = None
        return LAST_CHUNK if type(writer) is ChunkedWriter else b""
    return conn.send(_EOM) or b""


def next_cycle(conn: h11.Connection) -> None:
    """conn.start_next_cycle(), which must succeed (both sides DONE)."""
    states = conn._cstate.states
    if states[h11.CLIENT] is h11.DONE and states[h11.SERVER] is h11.DONE and _steady(conn):
        states[h11.CLIENT] = states[h11.SERVER] = h11.IDLE
        conn._request_method = None
        conn._reader = maybe_read_from_IDLE_client
        conn._writer = write_any_response
    else:
        conn.start_next_cycle()


_EOM = h11.EndOfMessage()
_SERVER_BUSY = (h11.SEND_RESPONSE, h11.SEND_BODY, h11.DONE)
_CLIENT_BUSY = (h11.SEND_BODY, h11.DONE)


def commit_head(conn: h11.Connection, head: ResponseHead, close: bool) -> bytes:
    """The bytes of a proxied final response head for the client, with h11's
    state advanced as if its send() had written them.

    The framing is what h11's send() would choose (pinned h11 0.16): the
    upstream's Content-Length if kept, else chunked for an HTTP/1.1 client or
    a close-delimited body for an older one; `Connection: close` when the
    connection ends after this response (`close`: the server is draining or
    the connection closing). h11 is handed a stand-in Response carrying only
    those framing fields: its state machine and body writer need nothing
    else, and validating and serialising every header again is what this
    replaces. Body bytes and the end still go through h11's writer, which
    keeps a Content-Length honest.
    """
    length = None
    for name, value in head.headers:
        if name == b"content-length":
            length = value
    status = head.status
    chunked = False
    if length is None and status not in _NO_BODY_STATUS:
        version = conn.their_http_version
        if version is not None and version >= b"1.1":
            chunked = True
        elif conn._request_method != b"HEAD":
            close = True  # only the close can end the body
    close = close or not conn._cstate.keep_alive
    states = conn._cstate.states
    if (
        not close
        and states[h11.SERVER] is h11.SEND_RESPONSE
        and states[h11.CLIENT] in _CLIENT_BUSY
        and _steady(conn)
    ):
        # What _process_event does with the stand-in below, in this case.
        states[h11.SERVER] = h11.SEND_BODY
        conn.client_is_waiting_for_100_continue = False
        if status in _NO_BODY_STATUS or conn._request_method == b"HEAD":
            conn._writer = ContentLengthWriter(0)  # h11 frames these first, whatever the fields say
        elif chunked:
            conn._writer = ChunkedWriter()
        else:
            conn._writer = ContentLengthWriter(int(length or b"0"))
    else:
        conn._process_event(h11.SERVER, _stand_in(status, length, chunked, close))
    # Measured over a whole keep-alive cycle (fast_request to next_cycle,
    # nginx's seven head fields for a 1 KiB file): 7.7 us with this, 24.2 us
    # with h11's send(Response(...)); the state assignments above alone,
    # against _process_event with the stand-in, 2.8 us of it (7.5 vs 10.3).
    # The field lines joined in C (map over b": ".join): a %-format per
    # field cost 0.8 us for nine fields, this 0.55 us.
    fields = head.headers
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, head.reason),
            b"\r\n".join(map(FIELD_SEP.join, fields)),
            CRLF if fields else b"",
            _CHUNKED_LINE if chunked else b"",
            _CLOSE_LINE if close else b"",
            CRLF,
        )
    )


def commit_whole(conn: h11.Connection, head: ResponseHead, body: bytes, close: bool) -> bytes:
    """The bytes of commit_head(head), send_body(body) and commit_end() in
    one piece, with h11 left as those three leave it: for a proxied response
    whose body is all here (upstream.UpstreamConnection passes a small
    response on whole). A body that fills the Content-Length writer exactly
    (nearly always: both come from the upstream's Content-Length) skips the
    writer's call and list; tests/http/test_h11_internals.py compares bytes
    and state with the three calls."""
    data = commit_head(conn, head, close)
    writer = conn._writer
    if type(writer) is ContentLengthWriter and writer._length == len(body):
        # h11 holds a writer only in SEND_BODY, where send_data(body) would
        # leave it owing nothing; commit_end checks the rest.
        writer._length = 0
        return data + body + commit_end(conn)
    parts = [data]
    if body:
        send_body(conn, body, parts.append)
    parts.append(commit_end(conn))
    return b"".join(parts)


def _stand_in(status: int, length: bytes | None, chunked: bool, close: bool) -> h11.Response:
    """A Response framed like the real one. h11 reads a final response's
    status only to give 204 and 304 no body (and 2xx to CONNECT, which edge
    refuses), so every other status stands in as 200."""
    key = (status if status in _NO_BODY_STATUS else 200, length, chunked, close)
    event = _STAND_INS.get(key)
    if event is None:
        fields: Headers = []
        if length is not None:
            fields.append((b"content-length", length))
        if chunked:
            fields.append((b"transfer-encoding", b"chunked"))
        if close:
            fields.append((b"connection", b"close"))
        event = _STAND_INS.put(key, h11.Response(status_code=key[0], headers=fields, _parsed=True))
    return event


def send_body(conn: h11.Connection, data: bytes, write: Callable[[bytes], object]) -> None:
    """Frame body bytes with the writer h11 chose for the response being
    sent (counting them against a Content-Length). h11's send() would add a
    Data event and a state transition that never changes anything in
    SEND_BODY, which is all this skips: 0.23 us against send(Data(...))'s
    2.4 us per piece of a Content-Length body, whatever its size (h11 adds
    no copy for that framing either). tests/http/test_h11_internals.py
    compares the bytes written and the state left with send()'s."""
    if conn.our_state is not h11.SEND_BODY:
        raise h11.LocalProtocolError(f"cannot send body bytes in state {conn.our_state}")
    cast(BodyWriter, conn._writer).send_data(data, write)


# -- prebuilt local responses ---------------------------------------------------


def commit_local(conn: h11.Connection, head: h11.Response) -> None:
    """Advance h11 as if `head` and its whole body had been sent.

    The bytes themselves were serialised once (LocalResponse); h11's public
    send() would validate and serialise the same headers again on every
    request. The state machine is driven through the same internal entry point
    that send() uses, so keep-alive and cycle bookkeeping stay h11's own.
    """
    states = conn._cstate.states
    if (
        states[h11.SERVER] is h11.SEND_RESPONSE
        and states[h11.CLIENT] in _CLIENT_BUSY
        and _steady(conn)
        and head.status_code >= 200
    ):
        # What the two _process_event calls below do in the plain keep-alive
        # case: SEND_RESPONSE -> SEND_BODY -> DONE, no writer left, the
        # 100-continue wait over. A LocalResponse never carries a Connection
        # field (its close line is spliced into the bytes), so the response
        # leaves keep-alive as it is. Took a preflight from 35.7 to 26.6 us of CPU
        # (bench/preflight.py, CPU us/req); tests/http/test_h11_internals.py
        # compares both ways.
        states[h11.SERVER] = h11.DONE
        conn._writer = None
        conn.client_is_waiting_for_100_continue = False
        return
    conn._process_event(h11.SERVER, head)
    conn._process_event(h11.SERVER, _EOM)


# -- the receive side, read in place ---------------------------------------------
# `trailing_data` would answer the same questions with a copy of the buffer:
# buffered, pending, awaiting_head and head_bytes, once each, cost 0.37 us
# against 0.79 us through trailing_data with nothing buffered, and 0.39 us
# against 4.7 us with 64 KiB buffered (the copy grows with the buffer).
# tests/http/test_h11_internals.py checks they answer what trailing_data says.
# They ask the buffer's bytearray, not the buffer: ReceiveBuffer's __bool__
# and __len__ are Python calls, two per question, three questions per
# proxied request.


def awaiting_head(conn: h11.Connection) -> bool:
    """The client is between requests and nothing of the next one is
    buffered: a head arriving now starts at the first byte received."""
    return conn._cstate.states[h11.CLIENT] is h11.IDLE and not conn._receive_buffer._data


def buffered(conn: h11.Connection) -> bool:
    """Received bytes wait in h11's buffer (`bool(conn.trailing_data[0])`)."""
    return bool(conn._receive_buffer._data)


def pending(conn: h11.Connection) -> bool:
    """Bytes or the client's EOF wait in h11's buffer (either half of
    `conn.trailing_data`)."""
    return bool(conn._receive_buffer._data) or conn._receive_buffer_closed


# The first byte of an empty line (CRLF, or a bare LF) before a request line.
BLANK_START = (b"\r", b"\n")


def discard_buffer(conn: h11.Connection) -> None:
    """Throw away the bytes h11 has buffered (the EOF, if seen, stays)."""
    conn._receive_buffer = ReceiveBuffer()


def skip_blank_lines(conn: h11.Connection) -> None:
    """Drop the CR and LF bytes at the start of h11's buffer while it waits
    for a request line: empty lines there are to be ignored (RFC 9112 2.2),
    and h11 would refuse them. The rest goes into a new buffer, as
    discard_buffer's (the EOF, if seen, stays)."""
    data = conn._receive_buffer._data
    if data[:1] in BLANK_START:
        rest = ReceiveBuffer()
        rest += bytes(data).lstrip(b"\r\n")
        conn._receive_buffer = rest


def head_bytes(conn: h11.Connection) -> bytearray:
    """h11's receive buffer itself, not a copy: read it, never change it."""
    return conn._receive_buffer._data


def chunk_owed(conn: h11.Connection) -> int:
    """Bytes the chunk being read still announces, when the request body is
    chunked (0 otherwise)."""
    reader = conn._reader
    return reader._bytes_in_chunk if type(reader) is ChunkedReader else 0


def take_body(conn: h11.Connection, size: int) -> int:
    """How many of `size` bytes just received (not given to h11) are
    Content-Length body that may go to the request's consumer without h11's
    receive buffer, counted as read by h11; 0 when h11 must parse them
    (another framing, the body complete, or bytes already buffered ahead).

    Per read of body bytes: 0.36 us, against receive_data() plus two
    next_event() calls (Data, then NEED_DATA), which copy the bytes into the
    buffer and out again: 4.9 us for 1 KiB, 46 us for 64 KiB.
    tests/http/test_h11_internals.py checks the body, events and state end
    as h11 alone leaves them, for reads split anywhere."""
    reader = conn._reader
    if type(reader) is not ContentLengthReader or not reader._remaining or conn._receive_buffer:
        return 0
    take = min(reader._remaining, size)
    reader._remaining -= take
    return take


def body_remaining(conn: h11.Connection) -> int:
    """Bytes of a Content-Length request body h11 still expects (0 for any
    other framing, or when it is complete)."""
    reader = conn._reader
    return reader._remaining if type(reader) is ContentLengthReader else 0


def scan_fields(event: h11.Request, pairs: Headers, index: Index) -> int:
    """One pass over a request's fields: `pairs` receives them as (lower-cased
    name, value), `index` the same by name (edge.access.request.Request's
    headers and index); returns the head's size.

    The size is less the whitespace h11 strips: h11 applies its size limit
    only while a head is incomplete, so a head that arrives whole in one read
    must be measured here. Reads h11's `_full_items` (raw name, lower-cased
    name, value) directly: iterating Headers goes through Sequence.__iter__,
    one __getitem__ per field, which showed up in profiles of the hot path.
    Indexing here, not in a second loop, is what makes the index cheap: the
    scan and the index together cost less than the scan and decide's own
    index of a dozen names did (2.0 vs 2.1 us for eleven fields).
    """
    size = len(event.method) + len(event.target) + 13  # " ", " HTTP/1.1", CRLF, final CRLF
    for raw, name, value in event.headers._full_items:
        size += len(raw) + len(value) + 4  # ": " and CRLF
        pairs.append((name, value))
        values = index.get(name)
        if values is None:
            index[name] = [value]
        else:
            values.append(value)
    return size
