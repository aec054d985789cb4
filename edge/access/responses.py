"""Local responses: serialised once, written many times.

A `LocalResponse` holds its status line, headers and body as bytes. Per request
only the cached ``date`` line, the request's ``x-request-id`` line and, when
the connection is closing, a ``connection: close`` line are spliced in; a
plain-text error also ends its body with a ``request id: ...`` line (and its
Content-Length is written per response), so a screenshot of it names the
access log line. The
matching h11 event is built once too, so the protocol can advance h11's state
machine without re-validating and re-serialising the same headers on every
request (none of the spliced lines changes what h11 tracks: framing and
keep-alive).
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

import h11

from edge.access.headers import CRLF, REQUEST_ID, Header

CLOSE_LINE = b"connection: close\r\n"
REQUEST_ID_FIELD = b"x-request-id: "  # REQUEST_ID's line, up to the value
HEALTH_PATH = b"/cdn-cgi/edge/health"  # liveness: the process answers
READY_PATH = b"/cdn-cgi/edge/ready"  # readiness: send it traffic (edge.runtime.readiness)

# Any iterable of header pairs (a list, a tuple, a generator): read once.
HeaderPairs = Iterable[Header]


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def date_line(epoch_seconds: float) -> bytes:
    """The ``date`` header line for a moment, in IMF-fixdate (RFC 9110 5.6.7)."""
    return b"date: " + formatdate(epoch_seconds, usegmt=True).encode("ascii") + CRLF


class LocalResponse:
    """A complete response, prebuilt; `render` only splices date, request id
    and close."""

    __slots__ = ("status", "event", "status_line", "rest", "body", "tagged")

    def __init__(
        self, status: int, headers: HeaderPairs, body: bytes, server: bytes, tagged: bool = False
    ) -> None:
        self.status = status
        self.body = body
        self.tagged = tagged  # the body ends with the request id (see render)
        fields = [(k.lower(), v) for k, v in headers]
        if any(k == b"connection" for k, _ in fields):
            # render() splices the close; h11_internals.commit_local relies on it.
            raise ValueError("a local response never carries a Connection field")
        if any(k == REQUEST_ID for k, _ in fields):
            raise ValueError("render() splices the request id; a local response never carries one")
        if server:
            fields.append((b"server", server))
        length = (b"content-length", str(len(body)).encode("ascii"))
        # Validated once by h11 here; never again on the request path. (A
        # tagged body's length differs from this one: h11 is told of the
        # whole response at once, commit_local, and never counts its body.)
        self.event = h11.Response(status_code=status, headers=[*fields, length], reason=reason(status))
        self.status_line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
        # A tagged response's Content-Length is written by render.
        self.rest = b"".join(k + b": " + v + CRLF for k, v in (fields if tagged else [*fields, length]))

    def render(self, date: bytes, close: bool, head_only: bool, request_id: bytes = b"") -> bytes:
        """The response's bytes; `request_id` (SAFE, so written as it is)
        goes in an x-request-id line, none when b"" (a response rendered
        outside a connection: `edge explain`)."""
        end = CLOSE_LINE + CRLF if close else CRLF
        if self.tagged:
            body = self.body + (b"request id: %s\n" % request_id if request_id else b"")
            end = b"content-length: %d\r\n%s" % (len(body), end)
            if head_only:
                body = b""
        else:
            body = b"" if head_only else self.body
        if not request_id:
            return b"".join((self.status_line, date, self.rest, end, body))
        # One join either way: the id costs two more parts, no copy of rest.
        return b"".join((self.status_line, date, REQUEST_ID_FIELD, request_id, CRLF, self.rest, end, body))


class Responses:
    """The server's fixed local responses, built once per configuration."""

    def __init__(self, server_header: str) -> None:
        self.server = server_header.encode("ascii")
        self.not_found = self.text(404, b"not found: no application here\n", tagged=True)
        self.health = self.text(200, b"ok\n")
        self.errors: dict[int, LocalResponse] = {}
        for status, body in ERROR_BODIES.items():
            self.errors[status] = self.text(status, body, tagged=True)

    def text(
        self, status: int, body: bytes, headers: HeaderPairs = (), *, tagged: bool = False
    ) -> LocalResponse:
        """A text/plain response; `tagged`: its body ends with the request id."""
        fields = [(b"content-type", b"text/plain; charset=utf-8"), *headers]
        return LocalResponse(status, fields, body, self.server, tagged)

    def error(self, status: int) -> LocalResponse:
        found = self.errors.get(status)
        if found is None:
            found = self.errors[400 if status < 500 else 500]
        return found


# Bodies of the error responses: short, plain, no internals. They say what the
# client did wrong in words an operator can grep for in a client's logs.
ERROR_BODIES: dict[int, bytes] = {
    400: b"bad request\n",
    405: b"method not allowed\n",
    408: b"request timeout\n",
    411: b"length required\n",
    413: b"request body too large\n",
    414: b"request target too long\n",
    417: b"expectation failed\n",
    431: b"request header fields too large\n",
    500: b"internal error\n",
    501: b"not implemented\n",
    502: b"bad gateway\n",
    503: b"service unavailable: too many connections\n",
    504: b"gateway timeout\n",
    505: b"http version not supported\n",
}
