"""A strict HTTP/1.1 request parser: what an upstream behind the edge may be sent.

Deliberately independent of edge/proxy/wire.py and of h11 (which is lenient where a
proxy must not be: bare LF, obs-fold, padded or listed Content-Length, ...),
so a test can ask "would any reasonable upstream read these bytes as the same
requests the edge meant?". It accepts only the canonical subset of RFC 9112
that the edge promises to write:

- every line ends in CRLF; no CR or LF anywhere else in a head;
- request line ``method SP target SP HTTP/1.1``: a token method (any case,
  kept as written), a target of visible ASCII without a fragment (``#``);
- field lines ``token ":" OWS value OWS``: no space before the colon, no
  obs-fold, no control characters but HTAB in a value (obs-text is allowed);
- exactly one Host;
- one framing at most: a single ``Content-Length`` of canonical digits
  (``0`` or no leading zero), or a single ``Transfer-Encoding: chunked``,
  never both;
- chunked bodies re-encoded: chunk sizes in hex without leading zeros,
  without extensions, each chunk's data followed by CRLF, and no trailer
  fields (the edge drops trailers).

Pure functions, no I/O: `parse_requests` is run on every byte an upstream
received, from the start of its connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
TARGET = re.compile(rb"[\x21-\x22\x24-\x7e]+")  # visible ASCII but "#": a fragment is no part of it
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
CANONICAL_DECIMAL = re.compile(rb"0|[1-9][0-9]*")
CANONICAL_HEX = re.compile(rb"0|[1-9A-Fa-f][0-9A-Fa-f]*")
MAX_SIZE_DIGITS = 16  # a chunk size of more hex digits than 64 bits hold is an attack, not a chunk
OWS = b" \t"


class Violation(Exception):
    """The bytes break the rules above; the message says where and how."""


@dataclass(frozen=True)
class Request:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # (name as sent, value without OWS), in order
    body: bytes
    chunked: bool

    @property
    def line(self) -> str:
        """``METHOD target``, for comparing with what a test expects upstream."""
        return f"{self.method.decode()} {self.target.decode()}"

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]


class _Incomplete(Exception):
    """The bytes end inside a request: more may still arrive."""


def parse_requests(data: bytes) -> tuple[list[Request], int]:
    """The complete requests at the start of `data` and the offset where the
    last of them ends. Stops quietly at a request still incomplete; raises
    Violation at the first thing that breaks the rules."""
    requests: list[Request] = []
    pos = 0
    while pos < len(data):
        try:
            request, pos_after = _request(data, pos)
        except _Incomplete:
            break
        requests.append(request)
        pos = pos_after
    return requests, pos


def _line(data: bytes, pos: int) -> tuple[bytes, int]:
    """The line starting at `pos` without its CRLF, and where the next starts."""
    lf = data.find(b"\n", pos)
    if lf < 0:
        cr = data.find(b"\r", pos)
        if 0 <= cr < len(data) - 1:  # a CR at the very end may yet be followed by its LF
            raise Violation(f"bare CR at {cr}: {data[pos : cr + 20]!r}")
        raise _Incomplete
    if lf == pos or data[lf - 1] != 0x0D:
        raise Violation(f"bare LF at {lf}: {data[pos : lf + 1][-80:]!r}")
    line = data[pos : lf - 1]
    if b"\r" in line:
        raise Violation(f"bare CR in the line at {pos}: {line[:80]!r}")
    return line, lf + 1


def _request(data: bytes, pos: int) -> tuple[Request, int]:
    start = pos
    line, pos = _line(data, pos)
    method, target = _request_line(line, start)
    headers: list[tuple[bytes, bytes]] = []
    while True:
        line, after = _line(data, pos)
        if not line:
            pos = after
            break
        headers.append(_field(line, pos))
        pos = after
    length, chunked = _framing(headers, start)
    if chunked:
        body, pos = _chunked_body(data, pos)
    else:
        if len(data) < pos + length:
            raise _Incomplete
        body, pos = data[pos : pos + length], pos + length
    return Request(method, target, tuple(headers), body, chunked), pos


def _request_line(line: bytes, at: int) -> tuple[bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Violation(f"request line at {at} is not three parts split by single spaces: {line[:120]!r}")
    method, target, version = parts
    if TOKEN.fullmatch(method) is None:
        raise Violation(f"method at {at} is not a token: {method!r}")
    if TARGET.fullmatch(target) is None:
        raise Violation(f"target at {at} is not visible ASCII without '#': {target!r}")
    if version != b"HTTP/1.1":
        raise Violation(f"version at {at} is not HTTP/1.1: {version!r}")
    return method, target


def _field(line: bytes, at: int) -> tuple[bytes, bytes]:
    if line[:1] in (b" ", b"\t"):
        raise Violation(f"obs-fold at {at}: {line[:80]!r}")
    name, colon, value = line.partition(b":")
    if not colon or TOKEN.fullmatch(name) is None:
        raise Violation(f"field name at {at} is not a token followed by a colon: {line[:80]!r}")
    if FIELD_VALUE.fullmatch(value) is None:
        raise Violation(f"control character in the value of {name!r} at {at}: {value[:80]!r}")
    return name, value.strip(OWS)


def _framing(headers: list[tuple[bytes, bytes]], at: int) -> tuple[int, bool]:
    """(Content-Length or 0, whether chunked) of a head that frames its body
    exactly one way."""
    names = [n.lower() for n, _ in headers]
    if names.count(b"host") != 1:
        raise Violation(f"request at {at} has {names.count(b'host')} Host fields")
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if lengths and codings:
        raise Violation(f"request at {at} has both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or len(codings) > 1:
        raise Violation(f"request at {at} repeats its framing: {lengths or codings}")
    if codings:
        if codings[0].lower() != b"chunked":
            raise Violation(f"request at {at} has Transfer-Encoding {codings[0]!r}, not chunked")
        return 0, True
    if lengths:
        if CANONICAL_DECIMAL.fullmatch(lengths[0]) is None:
            raise Violation(f"request at {at} has a non-canonical Content-Length {lengths[0]!r}")
        return int(lengths[0]), False
    return 0, False


def _chunked_body(data: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        at = pos
        line, pos = _line(data, pos)
        if CANONICAL_HEX.fullmatch(line) is None or len(line) > MAX_SIZE_DIGITS:
            raise Violation(f"chunk size line at {at} is not canonical hex: {line[:80]!r}")
        size = int(line, 16)
        if size == 0:
            break
        if len(data) < pos + size + 2:
            raise _Incomplete
        body += data[pos : pos + size]
        pos += size
        if data[pos : pos + 2] != b"\r\n":
            raise Violation(f"chunk data at {at} not followed by CRLF: {data[pos : pos + 20]!r}")
        pos += 2
    line, after = _line(data, pos)
    if line:
        raise Violation(f"trailer field forwarded at {pos}: {line[:80]!r}")
    return bytes(body), after
