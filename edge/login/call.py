"""What a login endpoint's handler derives from its request, and the one
form parser of the service.

Handlers read the edge's one Request (edge.access.request): its fields come
from its index (`req.values(b"cookie")`), and the few values derived from
it are computed here, on demand, by the handlers that use them. Pure.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from edge.access.request import Request
from edge.access.router import normalize_host

# Fields a query or form of ours has at most; more is read as none (a query)
# or no form at all, so a crafted request cannot make the parser work hard.
MAX_FIELDS = 20


def host_of(req: Request) -> str:
    """The request's host as the login service compares it: normalised
    (lower case, no port), as text."""
    return normalize_host(req.host).decode("ascii", "replace")


def target_text(req: Request) -> str:
    """The request target (path?query) as sent, as text."""
    return req.target.decode("latin-1")


def query_of(req: Request) -> dict[str, str]:
    """The query's fields (first value of each); none past MAX_FIELDS."""
    try:
        parsed = parse_qs(req.query.decode("latin-1"), max_num_fields=MAX_FIELDS)
    except ValueError:  # more fields than any link of ours has: treated as none
        return {}
    return {k: v[0] for k, v in parsed.items()}


def content_type(req: Request) -> bytes:
    """The media type of the body, lower case, without parameters."""
    return b";".join(req.values(b"content-type")).split(b";")[0].strip().lower()


def read_form(req: Request, body: bytes) -> dict[str, str] | None:
    """A urlencoded form's fields (first value of each), or None if the body is not one."""
    if content_type(req) != b"application/x-www-form-urlencoded":
        return None
    try:
        parsed = parse_qs(body.decode("utf-8"), max_num_fields=MAX_FIELDS, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in parsed.items()}
