"""What the upstream sees, and what the client gets back: pure header rewriting.

Nothing here does I/O. The proxy calls `request_headers` once per forwarded
request (it reads the Request: its fields, their index, its framing) and
`response_headers` once per upstream response head.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from edge.access.cache import BoundedCache
from edge.access.headers import (
    AUTH_COOKIE_BYTES,
    IDENTITY_HEADERS,
    REQUEST_ID,
    X_FORWARDED_FOR,
    Header,
    Headers,
    TrustedProxies,
)
from edge.access.request import Request

# Hop-by-hop fields (RFC 9110 section 7.6.1): they describe one connection,
# never the message, so a proxy removes them along with every field the
# Connection header names. Transfer-Encoding is re-framed by the edge on each
# side; Upgrade survives only on an upgrade request and its 101 (tunnelling).
# Proxy-Authorization/-Authenticate (RFC 9110 11.7) are meant for a proxy,
# never for the origin; every other "proxy-*" field (Proxy-Connection, a
# pre-standard Connection) is treated the same way.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FORWARDED_HEADERS = frozenset({X_FORWARDED_FOR, b"x-forwarded-proto", b"x-forwarded-host"})
# WSGI/CGI, PHP and Rack turn `Cf_Access_Jwt_Assertion` and
# `Cf-Access-Jwt-Assertion` into the same variable, so a client field whose
# name has `_` could pass for one the edge sets. Such fields are dropped
# (nginx's `underscores_in_headers off`, Envoy's
# `headers_with_underscores_action`) unless [server] underscores_in_headers
# keeps them; even then a name that reads, `_` as `-`, as one of the edge's
# own families is dropped, and so is X-Request-Id, which the edge sets
# (BEHAVIOUR.md section 5: the request's id, edge.http.request_id).
EDGE_OWNED_PREFIXES = (b"cf-access-", b"x-forwarded-", REQUEST_ID)
# `_` as an int: `int in bytes` is one memchr (~20 ns), where the substring
# test `b"_" in name` costs ~140 ns, and it runs for every forwarded field.
UNDERSCORE = ord("_")
# Fields the edge handles itself rather than passing on: Expect (the edge
# answers 100-continue after authorising), the framing fields it sets, and
# the request id (a trusted proxy's accepted value comes back as the id).
EDGE_HANDLED = frozenset({b"expect", b"content-length", REQUEST_ID})
# What a proxied response loses on its way to the client besides the
# hop-by-hop fields: an upstream's own X-Request-Id, replaced by the edge's
# so the client sees one id, the one in the access log.
RESPONSE_DROP = HOP_BY_HOP | {REQUEST_ID}
# Never dropped because the Connection header names it: an HTTP/1.1 request
# without Host is invalid (RFC 9112 3.2): upstreams answer it with a 400.
NEVER_HOP = frozenset({b"host"})


def _comma_tokens(values: Iterable[bytes]) -> set[bytes]:
    return {t.strip().lower() for v in values for t in v.split(b",") if t.strip()}


def hop_by_hop(headers: Sequence[Header], keep_upgrade: bool = False) -> frozenset[bytes]:
    """Every field name to drop from a message before passing it on."""
    return connection_hops([v for k, v in headers if k == b"connection"], keep_upgrade)


def connection_hops(values: Sequence[bytes], keep_upgrade: bool) -> frozenset[bytes]:
    """hop_by_hop from the message's Connection values (a request has them
    in its index)."""
    if not values and not keep_upgrade:
        return HOP_BY_HOP
    key = (keep_upgrade, tuple(values))
    drop = _HOP_SETS.get(key)
    if drop is None:
        drop = _HOP_SETS.put(key, _hop_set(values, keep_upgrade))
    return drop


# hop_by_hop's answers by (keep_upgrade, the Connection values): the answer
# is a function of the key alone. Nearly every upstream response says
# "keep-alive", and tokenising it again for each one showed in profiles:
# 0.17 us a lookup against 0.47 us to build the set for "keep-alive" (0.89
# for "keep-alive, x-foo"), per message. Bounded (entries), as the values
# are the peers' to choose. tests/proxy/test_forwarding.py holds the cached
# answer to the built one.
_HOP_SETS: BoundedCache[tuple[bool, tuple[bytes, ...]], frozenset[bytes]] = BoundedCache(256)


def _hop_set(values: Sequence[bytes], keep_upgrade: bool) -> frozenset[bytes]:
    named = _comma_tokens(values) - NEVER_HOP
    if named <= HOP_BY_HOP and not keep_upgrade:
        return HOP_BY_HOP  # "Connection: keep-alive" (or close): the usual case
    drop = set(HOP_BY_HOP) | named
    if keep_upgrade:
        drop.discard(b"upgrade")
    return frozenset(drop)


def is_hop(name: bytes, drop: frozenset[bytes]) -> bool:
    # request_headers and response_headers inline this test: it runs once
    # per field of every proxied message.
    return name in drop or name[:6] == b"proxy-"


def reads_as_edge_owned(name: bytes) -> bool:
    """Whether an upstream that maps `_` to `-` reads `name` as a field of
    the edge's own (EDGE_OWNED_PREFIXES)."""
    return name.lower().replace(b"_", b"-").startswith(EDGE_OWNED_PREFIXES)


def strip_cookie(value: bytes, name: bytes = AUTH_COOKIE_BYTES) -> bytes:
    """Remove every `name=...` pair from a Cookie header value."""
    if b";" not in value:
        # One pair (a browser or client sending only the edge's cookie): what
        # the general case below gives for it, without its two loops.
        pair = value.strip()
        return b"" if not pair or pair.partition(b"=")[0].strip() == name else pair
    kept = [p for p in (x.strip() for x in value.split(b";")) if p and p.partition(b"=")[0].strip() != name]
    return b"; ".join(kept)


class ForwardContext(msgspec.Struct, frozen=True, gc=False):
    """What the forwarded head depends on besides the request and its
    application's settings: the same for every request under one
    configuration, so the runtime builds it once per (re)load."""

    scheme: bytes  # b"http" or b"https": how clients reach the edge
    trusted: TrustedProxies = TrustedProxies()  # frozen: one shared default is safe
    keep_underscores: bool = False  # [server] underscores_in_headers


def request_headers(
    req: Request,
    ctx: ForwardContext,
    upstream_host: bytes,
    add: Sequence[Header] = (),
    strip: frozenset[bytes] = frozenset(),
    strip_auth_cookie: bool = True,
    rewrite_host: bool = False,
) -> Headers:
    """The head sent upstream: hop-by-hop and spoofable fields removed,
    identity, X-Forwarded-* and X-Request-Id fields set, framing re-declared. Names with
    `_` are dropped, or with `ctx.keep_underscores` only those an upstream
    could read as the edge's own. `upstream_host` (host[:port]) replaces the
    Host with `rewrite_host`."""
    trusted = ctx.trusted.trusts(req.client_ip)
    index = req.index
    drop = _drop_set(connection_hops(index.get(b"connection", ()), req.upgrade), strip, trusted)
    keep_underscores = ctx.keep_underscores
    out: Headers = []
    prior_for: list[bytes] = []
    for name, value in req.headers:
        if name in drop or name[:6] == b"proxy-":  # is_hop
            continue
        if UNDERSCORE in name and (not keep_underscores or reads_as_edge_owned(name)):
            continue  # an upstream may read it as another name (EDGE_OWNED_PREFIXES)
        if name == b"host":
            value = upstream_host if rewrite_host else value
        elif name == b"cookie" and strip_auth_cookie:
            value = strip_cookie(value)
            if not value:
                continue
        elif name == X_FORWARDED_FOR:
            prior_for.append(value)
            continue
        elif name in (b"x-forwarded-proto", b"x-forwarded-host"):
            continue  # re-added below, from what a trusted proxy said or from us
        out.append((name, value))
    if b"host" not in index:
        # HTTP/1.0 allows a request without Host; the upstream gets HTTP/1.1.
        out.insert(0, (b"host", upstream_host if rewrite_host or not req.host else req.host))
    _add_forwarded(out, req, ctx, prior_for, trusted)
    if req.request_id:
        out.append((REQUEST_ID, req.request_id))
    if req.upgrade:
        out.append((b"connection", b"upgrade"))
    if req.chunked:
        out.append((b"transfer-encoding", b"chunked"))
    elif req.length is not None:
        # The integer parsed, not the client's spelling ("005"): what frames
        # the body here is what the upstream reads.
        out.append((b"content-length", b"%d" % req.length))
    out.extend(add)
    return out


# Drop sets by (hop-by-hop set, the app's strip set, trusted peer), which
# determine the answer: the same few unions would otherwise be built again
# for every request (0.15 us a lookup against 0.46 us to build one). The
# client's address enters only as `trusted`, part of the key. Bounded
# (entries) since Connection can name arbitrary fields.
_DROP_SETS: BoundedCache[tuple[frozenset[bytes], frozenset[bytes], bool], frozenset[bytes]] = BoundedCache(
    256
)


def _drop_set(hop: frozenset[bytes], strip: frozenset[bytes], trusted: bool) -> frozenset[bytes]:
    key = (hop, strip, trusted)
    drop = _DROP_SETS.get(key)
    if drop is None:
        drop = _DROP_SETS.put(key, _build_drop_set(hop, strip, trusted))
    return drop


def _build_drop_set(hop: frozenset[bytes], strip: frozenset[bytes], trusted: bool) -> frozenset[bytes]:
    """_drop_set's slow path."""
    drop = hop | IDENTITY_HEADERS | strip | EDGE_HANDLED
    return drop if trusted else drop | FORWARDED_HEADERS


def _first(req: Request, name: bytes) -> bytes | None:
    values = req.index.get(name)
    return None if values is None else values[0]


def _add_forwarded(
    out: Headers, req: Request, ctx: ForwardContext, prior_for: list[bytes], trusted: bool
) -> None:
    peer = req.client_ip.encode("ascii", "replace")
    chain = [*prior_for, peer] if trusted else [peer]
    out.append((X_FORWARDED_FOR, b", ".join(chain)))
    proto = _first(req, b"x-forwarded-proto") if trusted else None
    out.append((b"x-forwarded-proto", proto or ctx.scheme))
    fwd_host = (_first(req, b"x-forwarded-host") if trusted else None) or req.host
    if fwd_host:
        out.append((b"x-forwarded-host", fwd_host))


def response_headers(
    headers: Sequence[Header],
    vary_origin: bool = False,
    switching: bool = False,
    request_id: bytes = b"",
) -> Headers:
    """The head sent to the client: hop-by-hop removed (the edge re-frames
    the body), `Origin` merged into Vary when the app has CORS settings,
    the upstream's X-Request-Id replaced by `request_id` (none added when
    b"").

    One pass with the usual drop set (HOP_BY_HOP), collecting Connection's
    values on the way; only when they name other fields (rare: nearly every
    upstream says "keep-alive") is the head filtered again with the full
    set. A separate pass to find Connection first cost every response a
    walk over its fields (bench/proxy.py GET); tests/proxy/test_forwarding.py
    checks the one pass against the two-pass reference."""
    if switching:
        drop = hop_by_hop(headers, keep_upgrade=True)
        return _response_headers(headers, drop, vary_origin, True, request_id)
    out: Headers = []
    vary: list[bytes] = []
    connection: list[bytes] = []
    chunked = False
    for field in headers:
        name = field[0]
        if name in RESPONSE_DROP or name[:6] == b"proxy-":  # is_hop, or the upstream's id
            if name == b"connection":
                connection.append(field[1])
            chunked = chunked or name == b"transfer-encoding"
            continue
        if name == b"vary" and vary_origin:
            vary.append(field[1])
            continue
        out.append(field)
    if connection and connection_hops(connection, False) is not HOP_BY_HOP:
        return _response_headers(headers, connection_hops(connection, False), vary_origin, False, request_id)
    return _finish_response(out, vary, chunked, vary_origin, False, request_id)


def _response_headers(
    headers: Sequence[Header], drop: frozenset[bytes], vary_origin: bool, switching: bool, request_id: bytes
) -> Headers:
    """response_headers with the drop set known (the general case)."""
    out: Headers = []
    vary: list[bytes] = []
    chunked = False
    for name, value in headers:
        if name in drop or name[:6] == b"proxy-" or name == REQUEST_ID:  # is_hop; Transfer-Encoding always is
            chunked = chunked or name == b"transfer-encoding"
            continue
        if name == b"vary" and vary_origin:
            vary.append(value)
            continue
        out.append((name, value))
    return _finish_response(out, vary, chunked, vary_origin, switching, request_id)


def _finish_response(
    out: Headers, vary: list[bytes], chunked: bool, vary_origin: bool, switching: bool, request_id: bytes
) -> Headers:
    if chunked:
        # RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and an
        # intermediary must remove the latter before forwarding; the edge
        # decoded the chunks, so a kept length could disagree with the body
        # it sends.
        out = [field for field in out if field[0] != b"content-length"]
    if switching:
        out.append((b"connection", b"upgrade"))
    if vary_origin:
        out.append((b"vary", merge_vary(vary, b"Origin")))
    if request_id:
        out.append((REQUEST_ID, request_id))
    return out


def merge_vary(values: Sequence[bytes], add: bytes) -> bytes:
    tokens = [t.strip() for v in values for t in v.split(b",") if t.strip()]
    if b"*" in tokens:
        return b"*"
    if add.lower() not in {t.lower() for t in tokens}:
        tokens.append(add)
    return b", ".join(tokens)
