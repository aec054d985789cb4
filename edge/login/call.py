"""What a login endpoint's handler reads of its request (`Call`), built once
per endpoint request from the head, and the one form parser of the service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from edge.access.headers import Header
from edge.access.router import normalize_host

# Fields a query or form of ours has at most; more is read as none (a query)
# or no form at all, so a crafted request cannot make the parser work hard.
MAX_FIELDS = 20


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler needs of the request."""

    method: bytes
    host: str  # normalised, no port
    target: str  # path?query as sent
    query: dict[str, str]
    cookies: tuple[bytes, ...]
    access_tokens: tuple[bytes, ...]
    authorizations: tuple[bytes, ...]
    forwarded_for: tuple[bytes, ...]
    content_type: bytes
    client_ip: str
    # Where the request comes from, as the browser tells (see session.cross_site).
    fetch_site: tuple[bytes, ...] = ()
    origin: tuple[bytes, ...] = ()
    referer: tuple[bytes, ...] = ()


def make_call(method: bytes, host: bytes, target: bytes, headers: Sequence[Header], client_ip: str) -> Call:
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        by_name.setdefault(name, []).append(value)
    text = target.decode("latin-1")
    try:
        query = {k: v[0] for k, v in parse_qs(urlsplit(text).query, max_num_fields=MAX_FIELDS).items()}
    except ValueError:  # more fields than any link of ours has: treated as none
        query = {}
    return Call(
        method=method,
        host=normalize_host(host).decode("ascii", "replace"),
        target=text,
        query=query,
        cookies=tuple(by_name.get(b"cookie", ())),
        access_tokens=tuple(by_name.get(b"cf-access-token", ())),
        authorizations=tuple(by_name.get(b"authorization", ())),
        forwarded_for=tuple(by_name.get(b"x-forwarded-for", ())),
        content_type=b";".join(by_name.get(b"content-type", ())).split(b";")[0].strip().lower(),
        client_ip=client_ip,
        fetch_site=tuple(by_name.get(b"sec-fetch-site", ())),
        origin=tuple(by_name.get(b"origin", ())),
        referer=tuple(by_name.get(b"referer", ())),
    )


def read_form(call: Call, body: bytes) -> dict[str, str] | None:
    """A urlencoded form's fields (first value of each), or None if the body is not one."""
    if call.content_type != b"application/x-www-form-urlencoded":
        return None
    try:
        parsed = parse_qs(body.decode("utf-8"), max_num_fields=MAX_FIELDS, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in parsed.items()}
