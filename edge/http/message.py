"""HTTP/1.1 message syntax shared by the client side (edge.http) and the
upstream side (edge.proxy): field pairs, tokens, a response head, chunks.
Pure constants and tiny helpers; no state."""

from __future__ import annotations

import re
from typing import NamedTuple

from edge.access.headers import CRLF as CRLF
from edge.access.headers import FIELD_SEP as FIELD_SEP
from edge.access.headers import OWS as OWS
from edge.access.headers import Headers as Headers  # the one header-pair type
from edge.config import syntax

# An RFC 9110 token (field names, methods), as a regex fragment for the wire.
TOKEN = syntax.TOKEN.encode("ascii")
# h11's CONTENT_LENGTH_MAX_DIGITS: a longer value is a hostile one.
MAX_LENGTH_DIGITS = 20
DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_LENGTH_DIGITS)


class ResponseHead(NamedTuple):
    """A parsed response head; names are lower-cased, in the upstream's order."""

    status: int
    reason: bytes
    headers: Headers


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body, in pieces: a large `data` is not copied."""
    return b"%x\r\n" % len(data), data, CRLF


LAST_CHUNK = b"0\r\n\r\n"
