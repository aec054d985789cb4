"""Strictness on top of h11: what the edge refuses in a request head that h11
would let through, as pure functions of the head's bytes and parts.

h11 (pinned 0.16) is the reference for what a request head is; a proxy must
be stricter, because the upstream is a second parser that may read the same
bytes differently (RFC 9112 11.2). What is added here, and why:

- a request line without a version (HTTP/0.9's simple request, RFC 1945
  4.1) is 505 at once; h11 would wait for an empty line to refuse it;
- obs-fold lines (RFC 9112 5.2), which h11 unfolds silently, are 400, as
  nginx answers: an upstream may split the same bytes into other fields;
- control characters other than HTAB in a field value are 400 (RFC 9110
  5.5; h11 accepts most of them, h11 issue 57): none reaches an upstream;
- Content-Length twice or as a list, even with equal values, is 400 (the
  strict reading RFC 9112 6.3 allows; h11 merges them);
- only HTTP/1.1 and HTTP/1.0 are spoken (505 otherwise), CONNECT is 405,
  Transfer-Encoding with Content-Length or in HTTP/1.0 is 400, a target
  with a fragment or a Host with an invalid value is 400, and the limits
  give 413, 414 and 431.

`head_refused` reads the head as it sits in h11's buffer, before h11 parses
it; `validate` checks the parts of a head either parser produced and builds
the one Request. Heads that h11_internals.fast_request takes never need
`head_refused`: its pattern admits none of what that function refuses.
No I/O, clock or randomness here beyond what the caller hands in.
"""

from __future__ import annotations

import re
from typing import Protocol

from edge.access.headers import REQUEST_ID
from edge.access.request import Index, Request, is_upgrade
from edge.config.schema import Server
from edge.http.message import TOKEN, Headers
from edge.http.request_id import new_id, request_id

# uri-host [ ":" port ] (RFC 3986 3.2.2): a reg-name, or an IP literal in
# brackets; empty is allowed (RFC 9112 3.2). No userinfo, no spaces, no
# obs-text: the host routes the request and is forwarded upstream.
HOST_RE = re.compile(rb"(?:\[[-0-9A-Za-z:._~%]+\]|[-0-9A-Za-z._~!$&'()*+,;=%]*)(?::[0-9]*)?")
# The end of a head (an empty line) or an obs-fold line (RFC 9112 5.2), which
# h11 unfolds silently. A proxy refuses it, as nginx does: an upstream may
# split the same bytes into different fields.
FOLD_OR_END = re.compile(rb"\n(?:[ \t]|\r?\n)")
# A request line without a version: HTTP/0.9's simple request (RFC 1945 4.1),
# which h11 would only refuse as malformed once a blank line followed.
VERSIONLESS_LINE = re.compile(TOKEN + rb" [\x21-\x7e]+\r?\n")
# Control characters other than HTAB (RFC 9110 5.5); CR and LF are the line
# structure. h11 accepts most of them in field values (h11 issue 57), and an
# upstream may cut or fold a field at one: none is forwarded.
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Content-Length field lines. h11 merges repeated or listed equal values into
# one field, so how many the client sent is only in the bytes.
LENGTH_FIELD = re.compile(rb"\ncontent-length:([^\n]*)", re.IGNORECASE)
# Only these are spoken; h11 takes any DIGIT.DIGIT (RFC 9112 2.3).
VERSIONS = (b"1.1", b"1.0")
# "OPTIONS " + target + " HTTP/1.1\r": the framing a request line adds to
# its target, at most.
LINE_FRAMING = 20


def head_refused(data: bytes | bytearray, scanned: int) -> tuple[int, int]:
    """(An error status for the head at the start of `data` that h11 would
    let through, else 0; where the next call may resume scanning).

    `data` is h11's buffer as it grows while a head trickles in; `scanned` is
    what the previous call returned (0 for a new head), so a head is scanned
    once however it arrives: the request line once complete, then the fields
    up to their end, then the whole head once, when its empty line is there."""
    if not scanned:
        line = data.find(b"\n") + 1
        if not line:
            return 0, 0
        if VERSIONLESS_LINE.fullmatch(data, 0, line) is not None:
            return 505, 0
        scanned = line - 1  # the LF may start the head's end
    found = FOLD_OR_END.search(data, scanned)
    if found is None:
        return 0, max(scanned, len(data) - 2)
    scanned = found.start()
    if found.group()[1:2] in b" \t":
        return 400, scanned
    end = found.end()  # the head is complete: checked once, whole
    if CONTROL.search(data, 0, end) is not None:
        return 400, scanned
    lengths = LENGTH_FIELD.findall(data, 0, end)
    if len(lengths) > 1 or (lengths and b"," in lengths[0]):
        return 400, scanned  # RFC 9112 6.3: the strict reading of "5, 5"
    return 0, scanned


def request_line_too_long(buffered: bytes | bytearray, max_target_bytes: int) -> bool | None:
    """Whether the request line at the start of `buffered` is longer than a
    target of `max_target_bytes` allows (h11 only reports complete heads, so
    this is asked while one arrives); None when the line is complete and
    fine (nothing more to ask)."""
    end = buffered.find(b"\n")
    line = len(buffered) if end < 0 else end
    if line > max_target_bytes + LINE_FRAMING:
        return True
    return None if end >= 0 else False


def authority_of(target: bytes) -> tuple[bytes, bytes] | None:
    """Split an absolute-form target into (authority, path-and-query)."""
    lower = target[:8].lower()
    if lower.startswith(b"http://"):
        rest = target[7:]
    elif lower.startswith(b"https://"):
        rest = target[8:]
    else:
        return None
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = min(i for i in (slash, query, len(rest)) if i >= 0)
    path = rest[cut:] or b"/"
    if path[:1] == b"?":
        path = b"/" + path
    return rest[:cut], path


def same_authority(a: bytes, b: bytes, secure: bool) -> bool:
    default = b":443" if secure else b":80"
    a, b = a.lower(), b.lower()
    return a.removesuffix(default) == b.removesuffix(default)


class Peer(Protocol):
    """What `validate` reads of the connection a head came on."""

    client_ip: str
    scheme: str
    client_cn: str | None

    def trusts_peer(self) -> bool:
        """Whether the peer is a trusted proxy (asked only when a head
        carries an X-Request-Id)."""
        ...


def validate(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: Headers,
    index: Index,
    size: int,
    started: float,
    limits: Server,
    peer: Peer,
) -> Request | int:
    """The Request for a parsed head (`headers` and `index` as
    h11_internals.scan_fields collects them, `size` as it measures), or the
    error status it gets."""
    if version not in VERSIONS:
        return 505
    # Methods are case-sensitive tokens (RFC 9110 9.1): "connect" or
    # "get" is a method of its own, forwarded as written.
    if method == b"CONNECT":
        return 405  # no tunnels, whatever the target's form
    te = b"transfer-encoding" in index
    cl = index.get(b"content-length")
    if te and (cl or version == b"1.0"):
        return 400  # request smuggling vectors (RFC 9112 6.1, 6.3)
    if len(target) > limits.max_target_bytes:
        return 414
    if b"#" in target:
        # A request target has no fragment (RFC 9112 3.2). Routed without
        # it but forwarded with it, "/admin#x" would pass a path policy
        # that the upstream's own parser then maps onto "/admin".
        return 400
    if size > limits.max_header_bytes:
        return 431
    # One Content-Length at most (head_refused; fast_request takes no
    # other), of digits (h11): its integer frames the body.
    length = int(cl[0]) if cl else None
    if length is not None and length > limits.max_body_bytes:
        return 413
    hosts = index.get(b"host")
    host = hosts[0] if hosts else b""
    if target[:1] != b"/":
        split = authority_of(target)
        if split is not None:
            if hosts and not same_authority(split[0], host, target[4:5] in b"sS"):
                return 400
            host, target = split
        elif not (target == b"*" and method == b"OPTIONS"):
            return 400
    if HOST_RE.fullmatch(host) is None:
        return 400  # RFC 9112 3.2: a Host with an invalid value is a 400
    # Most heads name no Connection: then nothing asks for an upgrade.
    upgrade = b"connection" in index and is_upgrade(index)
    path, _, query = target.partition(b"?")
    # Most requests carry no X-Request-Id: then the id is generated
    # without asking whether the peer is trusted.
    given = index.get(REQUEST_ID)
    rid = new_id() if given is None else request_id(given, peer.trusts_peer())
    return Request(
        method, host, target, path, query, version, headers, index,
        peer.client_ip, peer.scheme, length, te, upgrade, started, peer.client_cn, rid,
    )  # fmt: skip
