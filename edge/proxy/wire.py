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
"""

from __future__ import annotations

import enum
import re

from edge.config.schema import KIB
from edge.http.message import DIGITS as _DIGITS
from edge.http.message import FIELD_SEP, TOKEN, Headers, ResponseHead
from edge.http.message import OWS as _OWS

# h11's default max_incomplete_event_size, the bound on upstream heads (and
# chunk-size lines and trailers) before this parser replaced it.
MAX_HEAD = 16 * KIB
# Longer chunk sizes are refused: 16 hex digits already exceed any real body.
MAX_CHUNK_DIGITS = 16

_STATUS = rb"HTTP/1\.([0-9]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*+))?"
_FIELD_LINE = TOKEN + rb":[^\x00\r\n]*+\r\n"
# A whole head in one match: status line, field lines (captured as one block,
# split in Python), empty line. Possessive quantifiers: no backtracking.
_HEAD_RE = re.compile(_STATUS + rb"\r\n((?:" + _FIELD_LINE + rb")*+)\r\n")
_STATUS_RE = re.compile(_STATUS)
_FIELD_RE = re.compile(_FIELD_LINE)
_FIELDS_RE = re.compile(rb"(?:" + _FIELD_LINE + rb")*+")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,%d})[ \t]*(?:;[^\x00\r\n]*)?" % MAX_CHUNK_DIGITS)
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class ProtocolError(Exception):
    """The upstream's bytes are not a valid response."""


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

    __slots__ = (
        "_buf",
        "_eof",
        "_head_only",
        "_partial",
        "_pos",
        "_remaining",
        "_state",
        "_upgrade",
        "keep_alive",
    )

    def __init__(self, head_only: bool = False, upgrade: bool = False) -> None:
        self._head_only = head_only  # the request was HEAD: no body follows any head
        self._upgrade = upgrade  # the request asked for an upgrade: a 101 may come
        self._buf = b""
        self._pos = 0  # bytes of _buf already consumed
        self._state = _HEAD
        self._remaining = 0  # of the Content-Length body or the current chunk
        self._eof = False
        self._partial = False  # a head came incomplete: _head finds its end first
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
        # A valid head first, in one match, without a find() for its end: no
        # line of _HEAD_RE is empty, so a match ends at the first empty line,
        # where find() puts the end. 0.3 us less per response. Anything else
        # takes the find path, which names the fault; and once a head has
        # come incomplete, only that path runs, so a trickled head costs a
        # find per read, never a regex over all it has buffered so far.
        match = None if self._partial else _HEAD_RE.match(buf, pos)
        if match is not None:
            end = match.end()
            if end - pos > MAX_HEAD:
                raise ProtocolError("response head too large")
        else:
            end = buf.find(b"\r\n\r\n", pos) + 4
            if end < 4:
                self._partial = True
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

    def whole_body(self) -> bytes | None:
        """Within a response framed by Content-Length (or without a body),
        after its final head: the rest of its body when every byte of it is
        buffered (b"" for none), consumed, the response then complete; None,
        nothing consumed, otherwise. What the next events would give (one
        piece of the body, then END) in one call: right after the head, the
        proxy forwards such a response as one write (ProxyCycle.upstream_whole)."""
        remaining = self._remaining
        if self._state != _LENGTH or len(self._buf) - self._pos < remaining:
            return None
        self._state = _DONE
        if not remaining:
            return b""
        self._remaining = 0
        return self._take(remaining)

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
            if value == b"keep-alive":
                continue  # what nearly every upstream says: names no close
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


# -- the request head ---------------------------------------------------------------


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The bytes of a request head. Every name and value was validated where
    it came from (h11 parsed the client's; edge's own are checked when loaded
    or verified), so nothing is checked twice. Host goes first, as h11 wrote
    it (RFC 9110 7.2: a user agent SHOULD send it first)."""
    if headers and headers[0][0] == b"host":
        # Host first and the only one (clients send it first; a value holds
        # no CRLF, so a CRLF followed by "host:" can only start another Host
        # line): the lines joined in C, 0.7 us against 1.0 for six fields,
        # 1.3 against 2.2 for sixteen. tests/proxy/test_upstream.py holds
        # both paths to one reference.
        fields = b"\r\n".join(map(FIELD_SEP.join, headers))
        if b"\r\nhost:" not in fields:
            return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, target, fields)
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
