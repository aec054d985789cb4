"""HTTP/1.1 as the proxy writes and reads it by hand, without h11.

The upstream side of a proxied request needs far less than a general HTTP
library: the request head is already validated and rewritten
(forwarding.request_headers), and a response only has to be split into head,
body and end. Done with h11, this was the largest share of a proxied
request's CPU (bench/proxy.py), so it is done here, strictly.

Upstream response heads (`ResponseParser`), RFC 9112:
- status line `HTTP/1.x DDD reason` (the reason may be absent, status
  100-999 as h11 accepted); lines end in CRLF, a bare CR or LF anywhere in a
  head is refused;
- field names are RFC 9110 tokens, values hold no CR, LF or NUL (leading and
  trailing whitespace dropped); a line starting with whitespace (obs-fold)
  is refused: two parsers could split the same bytes into different fields;
- a head, the 1xx heads before it counted separately, is at most MAX_HEAD;
- framing: one Content-Length field of digits, or one Transfer-Encoding
  field of exactly `chunked` (HTTP/1.1 only); anything else, duplicates and
  lists included, is refused. Both
  present: Transfer-Encoding wins (RFC 9112 6.3: an intermediary removes the
  Content-Length, which forwarding.response_headers does) and the connection
  is not reused, since such a response is a smuggling signal;
- no body after HEAD, 204, 304 and 1xx; without framing, the body ends when
  the upstream closes (and the connection is not reused);
- 1xx heads are returned and the next head is read; a 101 stops parsing
  (the rest is tunnel bytes), and is refused unless an upgrade was asked for;
- chunked bodies: hex size (at most 16 digits), optional extensions
  (ignored), CRLF after every chunk's data, trailer fields checked like
  header fields and dropped.
Any violation raises ProtocolError; the proxy answers 502 (before the head
was forwarded) or aborts the client connection (after), as it did with h11.

Invariants of a parser: it serves one request; events come out in order
(1xx heads, one final head, body pieces, END); after END or a 101 it returns
nothing more, and `trailing` says whether bytes arrived beyond the response,
which makes the connection unfit for reuse.

The client side still runs h11's server state machine; `commit_head` frames a
proxied final head by hand and advances h11 as its own send() would, and
`send_body` hands body bytes straight to the writer h11 chose.

Client request heads in the common case (`fast_request`): HTTP/1.1, one Host,
framed by at most one Content-Length of digits, every byte within a strict
subset of what h11 accepts, so h11 would parse the same bytes into the same
event; anything else is left to h11's parser. `commit_request`,
`commit_request_end`, `commit_end` and `next_cycle` move h11's state machine
exactly as its own events would, by assignment in the plain keep-alive case
and through h11 otherwise (tests/test_upstream.py compares the two).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import NamedTuple, cast

import h11
from h11._headers import Headers as Headers_
from h11._readers import ContentLengthReader, expect_nothing, maybe_read_from_IDLE_client
from h11._writers import BodyWriter, ChunkedWriter, ContentLengthWriter, write_any_response

KIB = 1024
# h11's default max_incomplete_event_size, the bound on upstream heads (and
# chunk-size lines and trailers) before this parser replaced it.
MAX_HEAD = 16 * KIB
# Longer chunk sizes are refused: 16 hex digits already exceed any real body.
MAX_CHUNK_DIGITS = 16
# h11's CONTENT_LENGTH_MAX_DIGITS: a longer value is a hostile one.
MAX_LENGTH_DIGITS = 20

Headers = list[tuple[bytes, bytes]]

# An RFC 9110 token (field names, methods), as a regex fragment.
TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_STATUS = rb"HTTP/1\.([0-9]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*+))?"
_FIELD_LINE = TOKEN + rb":[^\x00\r\n]*+\r\n"
# A whole head in one match: status line, field lines (captured as one block,
# split in Python), empty line. Possessive quantifiers: no backtracking.
_HEAD_RE = re.compile(_STATUS + rb"\r\n((?:" + _FIELD_LINE + rb")*+)\r\n")
_STATUS_RE = re.compile(_STATUS)
_FIELD_RE = re.compile(_FIELD_LINE)
_FIELDS_RE = re.compile(rb"(?:" + _FIELD_LINE + rb")*+")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,%d})[ \t]*(?:;[^\x00\r\n]*)?" % MAX_CHUNK_DIGITS)
_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_LENGTH_DIGITS)
_OWS = b" \t"
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class ProtocolError(Exception):
    """The upstream's bytes are not a valid response."""


class ResponseHead(NamedTuple):
    """A parsed response head; names are lower-cased, in the upstream's order."""

    status: int
    reason: bytes
    headers: Headers


class Mark(enum.Enum):
    END = "end"  # the response is complete


END = Mark.END
Event = ResponseHead | bytes | Mark

# Parser states
_HEAD = 0
_LENGTH = 1  # Content-Length body (also 0 for a response without one)
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_CHUNK_CRLF = 4
_TRAILERS = 5
_UNTIL_EOF = 6
_DONE = 7
_SWITCHED = 8


class ResponseParser:
    """Incremental, strict parser of the response(s) to one request:
    feed() bytes, then call next_event() until it returns None."""

    __slots__ = ("_buf", "_eof", "_head_only", "_pos", "_remaining", "_state", "_upgrade", "keep_alive")

    def __init__(self, head_only: bool = False, upgrade: bool = False) -> None:
        self._head_only = head_only  # the request was HEAD: no body follows any head
        self._upgrade = upgrade  # the request asked for an upgrade: a 101 may come
        self._buf = b""
        self._pos = 0  # bytes of _buf already consumed
        self._state = _HEAD
        self._remaining = 0  # of the Content-Length body or the current chunk
        self._eof = False
        self.keep_alive = False  # known once the final head is parsed

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._buf):
            self._buf = data  # nothing pending: no copy
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def feed_eof(self) -> None:
        self._eof = True

    @property
    def trailing(self) -> bytes:
        """Bytes not consumed: after END, bytes beyond the response; after a
        101, the first tunnel bytes."""
        return self._buf[self._pos :]

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def reusable(self) -> bool:
        """Whether the connection may carry another request after this one."""
        return self._state == _DONE and self.keep_alive and self._pos >= len(self._buf)

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes (or the EOF) are needed."""
        state = self._state
        if state == _LENGTH:
            return self._length_body()
        if state == _HEAD:
            return self._head()
        if state == _CHUNK_DATA:
            return self._chunk_data()
        if state == _CHUNK_SIZE:
            return self._chunk_size()
        if state == _CHUNK_CRLF:
            return self._chunk_crlf()
        if state == _TRAILERS:
            return self._trailers()
        if state == _UNTIL_EOF:
            return self._until_eof()
        return None  # _DONE, _SWITCHED

    # -- heads

    def _head(self) -> ResponseHead | None:
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n\r\n", pos) + 4
        if end < 4:
            self._check_partial("response head")
            return None
        if end - pos > MAX_HEAD:
            raise ProtocolError("response head too large")
        match = _HEAD_RE.fullmatch(buf, pos, end)
        if match is None:
            raise _invalid_head(buf[pos:end])
        self._pos = end
        minor, code, reason, block = match.groups()
        headers, framing = _split_fields(block)
        head = ResponseHead(int(code), reason or b"", headers)
        self._start_body(head.status, minor != b"0", framing)
        return head

    def _check_partial(self, what: str) -> None:
        """Refuse an incomplete head, size line or trailer section early:
        too long, not starting like a status line, a bare LF, or cut by EOF."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos > MAX_HEAD:
            raise ProtocolError(f"{what} too large")
        if self._state == _HEAD and not b"HTTP/1.".startswith(buf[pos : pos + 7]):
            raise ProtocolError(f"invalid status line {buf[pos:][:80]!r}")
        if _bare_lf(buf, pos):
            raise ProtocolError(f"bare LF in the {what}")
        if self._eof:
            raise ProtocolError(f"connection closed within the {what}")

    def _start_body(self, status: int, http11: bool, framing: Headers) -> None:
        length, chunked, close = _framing(framing, http11)
        if status < 200:
            if status == 101:
                if not self._upgrade:
                    raise ProtocolError("101 Switching Protocols without an upgrade request")
                self._state = _SWITCHED
            return  # 1xx: the final head follows
        self.keep_alive = http11 and not close and not (chunked and length is not None)
        if self._head_only or status == 204 or status == 304:
            self._state, self._remaining = _LENGTH, 0
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._state, self._remaining = _LENGTH, int(length)
        else:
            self._state = _UNTIL_EOF
            self.keep_alive = False

    # -- bodies

    def _take(self, limit: int) -> bytes:
        """Up to `limit` buffered bytes (at least one is buffered)."""
        buf, pos = self._buf, self._pos
        end = pos + limit
        if end >= len(buf):
            self._buf, self._pos = b"", 0
            return buf if pos == 0 else buf[pos:]
        self._pos = end
        return buf[pos:end]

    def _length_body(self) -> bytes | Mark | None:
        if not self._remaining:
            self._state = _DONE
            return END
        if self._pos >= len(self._buf):
            if self._eof:
                raise ProtocolError(f"connection closed {self._remaining} bytes before the end of the body")
            return None
        piece = self._take(self._remaining)
        self._remaining -= len(piece)
        return piece

    def _until_eof(self) -> bytes | Mark | None:
        if self._pos < len(self._buf):
            return self._take(len(self._buf))
        if self._eof:
            self._state = _DONE
            return END
        return None

    def _chunk_size(self) -> bytes | Mark | None:
        buf, pos = self._buf, self._pos
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            self._check_partial("chunk size line")
            return None
        line = _CHUNK_LINE.fullmatch(buf, pos, line_end)
        if line is None:
            fault = "bare LF in the" if _bare_lf(buf, pos, line_end) else "invalid"
            raise ProtocolError(f"{fault} chunk size line {buf[pos:line_end][:80]!r}")
        self._pos = line_end + 2
        size = int(line[1], 16)
        if not size:
            self._state = _TRAILERS
            return self._trailers()
        self._state, self._remaining = _CHUNK_DATA, size
        return self._chunk_data()

    def _chunk_data(self) -> bytes | Mark | None:
        if self._pos >= len(self._buf):
            if self._eof:
                raise ProtocolError("connection closed within a chunk")
            return None
        piece = self._take(self._remaining)
        self._remaining -= len(piece)
        if not self._remaining:
            self._state = _CHUNK_CRLF
        return piece

    def _chunk_crlf(self) -> bytes | Mark | None:
        buf, pos = self._buf, self._pos
        got = buf[pos : pos + 2]
        if got != b"\r\n":
            if len(got) == 2 or got not in (b"", b"\r"):
                raise ProtocolError(f"chunk data not followed by CRLF: {got!r}")
            if self._eof:
                raise ProtocolError("connection closed within a chunk")
            return None
        self._pos = pos + 2
        self._state = _CHUNK_SIZE
        return self._chunk_size()

    def _trailers(self) -> Mark | None:
        buf, pos = self._buf, self._pos
        if buf.startswith(b"\r\n", pos):
            end = pos - 2  # no trailer fields: the empty line only
        else:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                self._check_partial("trailer section")
                return None
            if end + 4 - pos > MAX_HEAD:
                raise ProtocolError("trailer section too large")
            if _FIELDS_RE.fullmatch(buf, pos, end + 2) is None:  # checked like header fields, then dropped
                fault = "bare LF in the" if _bare_lf(buf, pos, end) else "invalid"
                raise ProtocolError(f"{fault} trailer section {buf[pos:end][:80]!r}")
        self._pos = end + 4
        self._state = _DONE
        return END


def _split_fields(block: bytes) -> tuple[Headers, Headers]:
    """The (lower-cased name, value) pairs of validated field lines, and
    those of them that frame the message."""
    headers: Headers = []
    framing: Headers = []
    if block:
        for line in block[:-2].split(b"\r\n"):
            name, _, value = line.partition(b":")  # a token holds no colon
            name = name.lower()
            headers.append((name, value.strip(_OWS)))
            if name in _FRAMING:
                framing.append(headers[-1])
    return headers, framing


def _bare_lf(buf: bytes, start: int, end: int | None = None) -> bool:
    """Whether buf[start:end] has an LF without its CR (RFC 9112 2.2 lets a
    recipient accept one; a proxy that did would read lines another reader
    might not)."""
    return buf.count(b"\n", start, end) != buf.count(b"\r\n", start, end)


def _invalid_head(head: bytes) -> ProtocolError:
    """Name the first offending line of a head the whole-head match refused."""
    if _bare_lf(head, 0):
        return ProtocolError("bare LF in the response head")
    lines = head.split(b"\r\n")
    if _STATUS_RE.fullmatch(lines[0]) is None:
        return ProtocolError(f"invalid status line {lines[0][:80]!r}")
    bad = next((line for line in lines[1:-2] if _FIELD_RE.fullmatch(line + b"\r\n") is None), b"")
    return ProtocolError(f"invalid field line {bad[:80]!r}")


def _framing(fields: Headers, http11: bool) -> tuple[bytes | None, bool, bool]:
    """(Content-Length value, chunked, Connection: close) from a head's
    framing fields; raises on framing a recipient cannot trust."""
    length: bytes | None = None
    chunked = close = False
    for name, value in fields:
        if name == b"connection":
            close = close or b"close" in [t.strip() for t in value.lower().split(b",")]
        elif name == b"content-length":
            if length is not None:
                raise ProtocolError("more than one Content-Length")
            if _DIGITS.fullmatch(value) is None:
                raise ProtocolError(f"invalid Content-Length {value[:40]!r}")
            length = value
        else:
            if chunked or value.lower() != b"chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {value[:40]!r}")
            if not http11:
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response")
            chunked = True
    return length, chunked, close


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


class FastRequest(NamedTuple):
    event: h11.Request
    end: int  # where the head ends in the bytes it was parsed from
    length: int  # of the body: 0 without a Content-Length
    plain: bool  # no Connection, Upgrade or Expect field: commit_request's fast case


def fast_request(data: bytes) -> FastRequest | None:
    """The request at the start of `data` as h11 would parse it, and where
    its head ends; None when the head is incomplete, is not of the plain
    kind above, or frames a body other than by one Content-Length of digits
    (Transfer-Encoding, several or listed Content-Lengths), or has not
    exactly one Host: h11 then parses it, refusing what it must.

    The event is built without Request.__init__, whose checks (method and
    target characters, Host count, header normalisation) the match and the
    loop below have already made."""
    end = data.find(b"\r\n\r\n") + 4
    if end < 4:
        return None
    match = _REQUEST_HEAD_RE.fullmatch(data, 0, end)
    if match is None:
        return None
    method, target, block = match.groups()
    items: list[tuple[bytes, bytes, bytes]] = []
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
            items.append((raw, name, value))
    if hosts != 1:
        return None
    event = object.__new__(h11.Request)
    object.__setattr__(event, "method", method)
    object.__setattr__(event, "target", target)
    object.__setattr__(event, "http_version", b"1.1")
    object.__setattr__(event, "headers", Headers_(items))
    return FastRequest(event, end, int(length) if length is not None else 0, plain and method != b"CONNECT")


# Fields that frame a request or change what h11's state machine does with it.
_REQUEST_SPECIAL = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)


# -- the request head ---------------------------------------------------------------


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The bytes of a request head. Every name and value was validated where
    it came from (h11 parsed the client's; edge's own are checked when loaded
    or verified), so nothing is checked twice. Host goes first, as h11 wrote
    it (RFC 9110 7.2: a user agent SHOULD send it first)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    hosts = 1
    for name, value in headers:
        if name == b"host":
            lines.insert(hosts, b"host: %s\r\n" % value)
            hosts += 1
        else:
            lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body, in pieces: a large `data` is not copied."""
    return b"%x\r\n" % len(data), data, CRLF


CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


# -- the client side: a proxied head through h11's server state machine --------------------

_CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"
_CLOSE_LINE = b"Connection: close\r\n"
_NO_BODY_STATUS = (204, 304)
# Stand-in Responses by framing. h11 events are never mutated, so one object
# serves every response framed alike; Content-Length values make the key
# space open, hence the bound (the cache is simply emptied when full).
_STAND_INS: dict[tuple[int, bytes | None, bool, bool], h11.Response] = {}
_STAND_INS_LIMIT = 256


# h11's state machine advanced by hand (pinned 0.16), in the plain cases only.
# Connection._process_event copies the state dict, re-reads Connection,
# Upgrade and Expect, walks its transition tables to a fixed point and picks
# a reader or writer: about 10 us per event, four events per request. In a
# keep-alive cycle with no protocol switch proposed, the outcome of each
# event below is fixed, so it is assigned directly; any other case goes
# through _process_event. tests/test_upstream.py checks every function here
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
        conn._request_method = request.event.method
        conn.their_http_version = request.event.http_version
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
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, head.reason)]
    lines += [b"%s: %s\r\n" % field for field in head.headers]
    lines.append((_CHUNKED_LINE if chunked else b"") + (_CLOSE_LINE if close else b"") + CRLF)
    return b"".join(lines)


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
        if len(_STAND_INS) >= _STAND_INS_LIMIT:
            _STAND_INS.clear()
        event = _STAND_INS[key] = h11.Response(status_code=key[0], headers=fields, _parsed=True)
    return event


def send_body(conn: h11.Connection, data: bytes, write: Callable[[bytes], object]) -> None:
    """Frame body bytes with the writer h11 chose for the response being
    sent (counting them against a Content-Length). h11's send() would add a
    Data event and a state transition that never changes anything in
    SEND_BODY, which is all this skips."""
    if conn.our_state is not h11.SEND_BODY:
        raise h11.LocalProtocolError(f"cannot send body bytes in state {conn.our_state}")
    cast(BodyWriter, conn._writer).send_data(data, write)
