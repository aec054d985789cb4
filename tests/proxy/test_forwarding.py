"""edge/proxy/forwarding.py: pure header rewriting, table-driven, no I/O."""

from __future__ import annotations

import ipaddress
from typing import Any

import h11
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.access.headers import STRIP_HEADERS, TrustedProxies
from edge.access.request import build
from edge.proxy import forwarding
from edge.proxy.forwarding import (
    ForwardContext,
    hop_by_hop,
    is_hop,
    merge_vary,
    request_headers,
    response_headers,
    strip_cookie,
)

H = list[tuple[bytes, bytes]]
XFF = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"http"), (b"x-forwarded-host", b"app")]
NOBODY = TrustedProxies()
TRUSTED = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")))


def fwd(
    headers: H,
    *,
    client_ip: str = "203.0.113.7",
    scheme: bytes = b"http",
    host: bytes = b"app",
    upstream_host: bytes = b"127.0.0.1:9000",
    body: str = "none",
    upgrade: bool = False,
    trusted: TrustedProxies = NOBODY,
    keep_underscores: bool = False,
    **kw: object,
) -> H:
    """request_headers for a request with these fields; the framing and
    the upgrade are given (the connection derives them), not read from them."""
    req = build(b"GET", host, b"/", headers, client_ip)
    req = msgspec.structs.replace(
        req, length=req.length if body == "length" else None, chunked=body == "chunked", upgrade=upgrade
    )
    ctx = ForwardContext(scheme, trusted, keep_underscores)
    return request_headers(req, ctx, upstream_host, **kw)  # type: ignore[arg-type]


def names(headers: H) -> list[bytes]:
    return [k for k, _ in headers]


# -- hop-by-hop -------------------------------------------------------------

HOP_CASES = [
    pytest.param([(b"connection", b"keep-alive")], [], id="connection"),
    pytest.param([(b"keep-alive", b"timeout=5")], [], id="keep-alive"),
    pytest.param([(b"te", b"trailers")], [], id="te"),
    pytest.param([(b"trailer", b"x-checksum")], [], id="trailer"),
    pytest.param([(b"upgrade", b"websocket")], [], id="upgrade-without-tunnel"),
    pytest.param([(b"proxy-authorization", b"Basic eA==")], [], id="proxy-authorization"),
    pytest.param([(b"proxy-connection", b"keep-alive")], [], id="proxy-connection"),
    pytest.param([(b"proxy-anything", b"1")], [], id="proxy-star"),
    pytest.param(
        [(b"connection", b"x-a, X-B"), (b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")],
        [(b"x-c", b"3")],
        id="named-in-connection",
    ),
    pytest.param(
        [(b"connection", b"x-a"), (b"connection", b" x-b ,,"), (b"x-a", b"1"), (b"x-b", b"2")],
        [],
        id="named-in-two-connection-headers",
    ),
    pytest.param(
        [(b"accept", b"*/*"), (b"x-proxy", b"1")], [(b"accept", b"*/*"), (b"x-proxy", b"1")], id="kept"
    ),
]


@pytest.mark.parametrize(("given", "kept"), HOP_CASES)
def test_request_hop_by_hop_removed(given: H, kept: H) -> None:
    out = fwd([(b"host", b"app"), *given])
    assert out == [(b"host", b"app"), *kept, *XFF]


@pytest.mark.parametrize(("given", "kept"), HOP_CASES)
def test_response_hop_by_hop_removed(given: H, kept: H) -> None:
    assert response_headers([(b"server", b"up"), *given]) == [(b"server", b"up"), *kept]


def test_hop_by_hop_set() -> None:
    drop = hop_by_hop([(b"connection", b"Close, X-Trace")])
    assert {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"} <= drop
    assert b"close" in drop and b"x-trace" in drop
    assert b"upgrade" not in hop_by_hop([(b"connection", b"upgrade")], keep_upgrade=True)
    assert is_hop(b"proxy-authenticate", frozenset())
    assert not is_hop(b"x-proxy-id", frozenset())


def test_connection_naming_host_still_sends_a_host() -> None:
    # h11 refuses an HTTP/1.1 request without Host: the edge must always send one.
    out = fwd([(b"host", b"app"), (b"connection", b"host")])
    assert (b"host", b"app") in out
    h11.Connection(h11.CLIENT).send(h11.Request(method="GET", target="/", headers=out))


# -- identity headers -----------------------------------------------------

IDENTITY = [
    (b"cf-access-jwt-assertion", b"tok.en.sig"),
    (b"cf-access-authenticated-user-email", b"me@x.test"),
]


@pytest.mark.parametrize(
    "spoofed",
    [
        [],
        [(b"cf-access-jwt-assertion", b"forged")],
        [(b"cf-access-authenticated-user-email", b"ceo@x.test")],
        [(b"cf-access-authenticated-user-email", b"a@x"), (b"cf-access-authenticated-user-email", b"b@x")],
        [(b"cf-access-jwt-assertion", b"forged"), (b"cf-access-authenticated-user-email", b"ceo@x.test")],
    ],
)
def test_identity_headers_stripped_then_added(spoofed: H) -> None:
    out = fwd([(b"host", b"app"), *spoofed, (b"accept", b"*/*")], add=IDENTITY)
    assert out == [(b"host", b"app"), (b"accept", b"*/*"), *XFF, *IDENTITY]


def test_identity_headers_stripped_without_identity() -> None:
    out = fwd([(b"host", b"app"), (b"cf-access-jwt-assertion", b"forged")])
    assert b"cf-access-jwt-assertion" not in names(out)


def test_extra_strip() -> None:
    out = fwd([(b"host", b"app"), (b"x-secret", b"1"), (b"accept", b"*/*")], strip=frozenset({b"x-secret"}))
    assert out == [(b"host", b"app"), (b"accept", b"*/*"), *XFF]


# -- names with underscores -------------------------------------------------------
# WSGI/CGI, PHP and Rack read `Cf_Access_Authenticated_User_Email` and
# `Cf-Access-Authenticated-User-Email` as one variable (HTTP_CF_ACCESS_...).

SPOOFED_SPELLINGS = [
    b"cf_access_authenticated_user_email",
    b"cf-access_authenticated-user_email",
    b"cf_access_jwt_assertion",
    b"cf_access_client_id",
    b"cf_access_client_secret",
    b"cf_access_token",
    b"cf-access-anything_new",
    b"x_forwarded_for",
    b"x-forwarded_host",
    b"x_forwarded_proto",
    b"x_forwarded_port",
]
INNOCENT_SPELLINGS = [b"x_custom_thing", b"accept_language", b"_", b"my_app-trace"]


@pytest.mark.parametrize("name", SPOOFED_SPELLINGS + INNOCENT_SPELLINGS)
def test_underscore_names_dropped_by_default(name: bytes) -> None:
    out = fwd([(b"host", b"app"), (name, b"mallory"), (b"accept", b"*/*")], add=IDENTITY)
    assert out == [(b"host", b"app"), (b"accept", b"*/*"), *XFF, *IDENTITY]


@pytest.mark.parametrize("name", SPOOFED_SPELLINGS)
def test_underscore_spoof_dropped_even_when_kept(name: bytes) -> None:
    out = fwd(
        [(b"host", b"app"), (name, b"mallory"), (b"accept", b"*/*")], add=IDENTITY, keep_underscores=True
    )
    assert out == [(b"host", b"app"), (b"accept", b"*/*"), *XFF, *IDENTITY]


@pytest.mark.parametrize("name", INNOCENT_SPELLINGS)
def test_underscore_innocent_kept_when_asked(name: bytes) -> None:
    out = fwd([(b"host", b"app"), (name, b"fine")], add=IDENTITY, keep_underscores=True)
    assert out == [(b"host", b"app"), (name, b"fine"), *XFF, *IDENTITY]


@pytest.mark.parametrize("keep", [False, True])
def test_hyphen_names_unaffected(keep: bool) -> None:
    # Only the spelling with `_` is in question: a service token's id in its
    # own spelling passes as before (its secret never does: STRIP_HEADERS).
    given = [(b"host", b"app"), (b"x-custom-thing", b"1"), (b"cf-access-client-id", b"ci")]
    out = fwd([*given, (b"cf-access-client-secret", b"s")], strip=STRIP_HEADERS, keep_underscores=keep)
    assert out == [*given, *XFF]


# Names the edge sets itself (or strips), spelled as a client might; the
# upstream must never see a client's value under any of them.
PROTECTED = sorted(
    {
        b"cf-access-jwt-assertion",
        b"cf-access-authenticated-user-email",
        b"cf-access-client-secret",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)


def _normal(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


@st.composite
def spellings(draw: st.DrawFn) -> bytes:
    """A protected name with each `-` maybe an `_` and each letter maybe
    upper-case, lower-cased again as h11 delivers names."""
    name = draw(st.sampled_from(PROTECTED))
    out = bytearray()
    for byte in name:
        ch = bytes([byte])
        if ch == b"-" and draw(st.booleans()):
            ch = b"_"
        elif ch.isalpha() and draw(st.booleans()):
            ch = ch.upper()
        out += ch
    return bytes(out).lower()


OTHER_NAMES = st.sampled_from([b"accept", b"x_custom_thing", b"cookie", b"x-trace", b"cf-access-client-id"])


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(st.one_of(spellings(), OTHER_NAMES), min_size=1, max_size=8),
    keep=st.booleans(),
    identity=st.booleans(),
)
def test_protected_names_only_carry_edge_values(fields: list[bytes], keep: bool, identity: bool) -> None:
    head = [(b"host", b"app"), *((name, b"spoofed-" + name) for name in fields)]
    add = IDENTITY if identity else []
    out = fwd(head, add=add, strip=STRIP_HEADERS, keep_underscores=keep)
    for name, value in out:
        if _normal(name) in PROTECTED:
            assert not value.startswith(b"spoofed-"), (name, value)
            assert name == _normal(name)  # only the edge's own spelling
    assert [f for f in out if f[0].startswith(b"cf-access-") and f[0] != b"cf-access-client-id"] == add


# -- X-Forwarded-* ----------------------------------------------------------

SPOOF = [
    (b"x-forwarded-for", b"1.1.1.1"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"evil.test"),
]


@pytest.mark.parametrize(
    ("client_ip", "given", "scheme", "expected"),
    [
        pytest.param("203.0.113.7", [], b"http", [b"203.0.113.7", b"http", b"app"], id="untrusted-none"),
        pytest.param(
            "203.0.113.7", SPOOF, b"http", [b"203.0.113.7", b"http", b"app"], id="untrusted-replaced"
        ),
        pytest.param(
            "203.0.113.7", SPOOF, b"https", [b"203.0.113.7", b"https", b"app"], id="untrusted-https"
        ),
        pytest.param("10.1.2.3", [], b"https", [b"10.1.2.3", b"https", b"app"], id="trusted-none"),
        pytest.param(
            "10.1.2.3", SPOOF, b"http", [b"1.1.1.1, 10.1.2.3", b"https", b"evil.test"], id="trusted-appended"
        ),
        pytest.param(
            "10.1.2.3",
            [(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"), (b"x-forwarded-for", b"3.3.3.3")],
            b"http",
            [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3", b"http", b"app"],
            id="trusted-several",
        ),
        pytest.param("fd00::1", SPOOF[:1], b"http", [b"1.1.1.1, fd00::1", b"http", b"app"], id="trusted-v6"),
        pytest.param("-", SPOOF, b"http", [b"-", b"http", b"app"], id="no-peer-address"),
    ],
)
def test_x_forwarded(client_ip: str, given: H, scheme: bytes, expected: list[bytes]) -> None:
    out = fwd([(b"host", b"app"), *given], client_ip=client_ip, scheme=scheme, trusted=TRUSTED)
    got = [v for k, v in out if k.startswith(b"x-forwarded-")]
    assert [k for k in names(out) if k.startswith(b"x-forwarded-")] == [
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ]
    assert got == expected


def test_no_trusted_proxies_trusts_nobody() -> None:
    assert not TrustedProxies().trusts("127.0.0.1")
    assert not TRUSTED.trusts("not an ip")
    assert TRUSTED.trusts("10.0.0.1")


# -- the CF_Authorization cookie -----------------------------------------------


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (b"CF_Authorization=abc", None),
        (b"CF_Authorization=abc; theme=dark", b"theme=dark"),
        (b"theme=dark; CF_Authorization=abc", b"theme=dark"),
        (b"a=1; CF_Authorization=abc; b=2", b"a=1; b=2"),
        (b"a=1;CF_Authorization=abc;b=2", b"a=1; b=2"),
        (b"CF_Authorization=a; CF_Authorization=b", None),
        (b"CF_Authorization=", None),
        (
            b"cf_authorization=kept; CF_Authorization_x=kept",
            b"cf_authorization=kept; CF_Authorization_x=kept",
        ),
        (b"x=CF_Authorization=1", b"x=CF_Authorization=1"),
        (b"a=b=c; CF_Authorization=abc", b"a=b=c"),
        (b"theme=dark", b"theme=dark"),
    ],
)
def test_auth_cookie_removed(cookie: bytes, expected: bytes | None) -> None:
    out = fwd([(b"host", b"app"), (b"cookie", cookie)])
    cookies = [v for k, v in out if k == b"cookie"]
    assert cookies == ([] if expected is None else [expected])


def test_auth_cookie_in_each_cookie_header() -> None:
    out = fwd(
        [(b"host", b"app"), (b"cookie", b"CF_Authorization=x"), (b"cookie", b"a=1; CF_Authorization=y")]
    )
    assert [v for k, v in out if k == b"cookie"] == [b"a=1"]


def test_auth_cookie_kept_when_asked() -> None:
    out = fwd([(b"host", b"app"), (b"cookie", b"CF_Authorization=abc; a=1")], strip_auth_cookie=False)
    assert (b"cookie", b"CF_Authorization=abc; a=1") in out


def test_strip_cookie_other_name() -> None:
    assert strip_cookie(b"a=1; sess=2", b"sess") == b"a=1"


# -- Host ---------------------------------------------------------------------


@pytest.mark.parametrize(("rewrite", "expected"), [(False, b"app.example.com"), (True, b"127.0.0.1:9000")])
def test_host(rewrite: bool, expected: bytes) -> None:
    out = fwd(
        [(b"host", b"app.example.com"), (b"accept", b"*/*")], rewrite_host=rewrite, host=b"app.example.com"
    )
    assert out[0] == (b"host", expected)
    assert [v for k, v in out if k == b"host"] == [expected]
    assert (b"x-forwarded-host", b"app.example.com") in out


@pytest.mark.parametrize(("host", "expected"), [(b"", b"127.0.0.1:9000"), (b"old.test", b"old.test")])
def test_missing_host_is_supplied(host: bytes, expected: bytes) -> None:
    # An HTTP/1.0 request may come without Host; the upstream gets HTTP/1.1.
    out = fwd([(b"accept", b"*/*")], host=host)
    assert [v for k, v in out if k == b"host"] == [expected]
    h11.Connection(h11.CLIENT).send(h11.Request(method="GET", target="/", headers=out))


# -- framing ------------------------------------------------------------------

FRAMING_CASES = [
    pytest.param("none", [], [], id="none"),
    pytest.param("length", [(b"content-length", b"5")], [(b"content-length", b"5")], id="length"),
    pytest.param(
        "chunked", [(b"transfer-encoding", b"chunked")], [(b"transfer-encoding", b"chunked")], id="chunked"
    ),
    pytest.param(
        "chunked",
        [(b"transfer-encoding", b"chunked"), (b"te", b"trailers"), (b"trailer", b"x-sum")],
        [(b"transfer-encoding", b"chunked")],
        id="chunked-trailers-dropped",
    ),
    pytest.param("none", [(b"expect", b"100-continue")], [], id="expect-handled-by-edge"),
    pytest.param(
        "length",
        [(b"expect", b"100-continue"), (b"content-length", b"7")],
        [(b"content-length", b"7")],
        id="expect-with-length",
    ),
]


@pytest.mark.parametrize(("body", "given", "framing"), FRAMING_CASES)
def test_framing_redeclared(body: str, given: H, framing: H) -> None:
    out = fwd([(b"host", b"app"), *given], body=body)
    assert out == [(b"host", b"app"), *XFF, *framing]
    # The head is one that an HTTP/1.1 client may send as is.
    h11.Connection(h11.CLIENT).send(h11.Request(method="POST", target="/", headers=out))


# -- Upgrade --------------------------------------------------------------------

WS = [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-key", b"k")]


def test_upgrade_kept_when_tunnelling() -> None:
    out = fwd([(b"host", b"app"), *WS], upgrade=True)
    assert out == [
        (b"host", b"app"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"k"),
        *XFF,
        (b"connection", b"upgrade"),
    ]


def test_upgrade_dropped_otherwise() -> None:
    out = fwd([(b"host", b"app"), *WS], upgrade=False)
    assert out == [(b"host", b"app"), (b"sec-websocket-key", b"k"), *XFF]


def test_response_upgrade_only_when_switching() -> None:
    head = [(b"upgrade", b"websocket"), (b"connection", b"upgrade"), (b"sec-websocket-accept", b"a")]
    assert response_headers(head, switching=True) == [
        (b"upgrade", b"websocket"),
        (b"sec-websocket-accept", b"a"),
        (b"connection", b"upgrade"),
    ]
    assert response_headers([(b"upgrade", b"h2c"), (b"connection", b"Upgrade")]) == []


# -- response framing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param([(b"content-length", b"10")], [(b"content-length", b"10")], id="length-kept"),
        pytest.param([(b"transfer-encoding", b"chunked")], [], id="chunked-reframed"),
        pytest.param(
            [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")], [], id="length-and-chunked"
        ),
        pytest.param([(b"transfer-encoding", b"chunked"), (b"trailer", b"x-sum")], [], id="trailer-dropped"),
    ],
)
def test_response_framing(given: H, expected: H) -> None:
    # RFC 9112 6.3: with both, Transfer-Encoding wins and an intermediary
    # must drop Content-Length before forwarding (h11 re-frames the body).
    assert response_headers([(b"server", b"up"), *given]) == [(b"server", b"up"), *expected]


# -- Vary -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], b"Origin"),
        ([b"Accept-Encoding"], b"Accept-Encoding, Origin"),
        ([b"origin"], b"origin"),
        ([b"Accept-Encoding, ORIGIN"], b"Accept-Encoding, ORIGIN"),
        ([b"*"], b"*"),
        ([b"Accept, *"], b"*"),
        ([b"Accept", b"Cookie"], b"Accept, Cookie, Origin"),
        ([b" Accept ,, Cookie "], b"Accept, Cookie, Origin"),
        ([b""], b"Origin"),
    ],
)
def test_merge_vary(values: list[bytes], expected: bytes) -> None:
    assert merge_vary(values, b"Origin") == expected


@pytest.mark.parametrize(
    ("given", "vary_origin", "expected"),
    [
        ([], True, [(b"vary", b"Origin")]),
        ([(b"vary", b"Accept")], True, [(b"vary", b"Accept, Origin")]),
        ([(b"vary", b"Accept"), (b"vary", b"Cookie")], True, [(b"vary", b"Accept, Cookie, Origin")]),
        ([(b"vary", b"*")], True, [(b"vary", b"*")]),
        ([(b"vary", b"Accept")], False, [(b"vary", b"Accept")]),
        ([], False, []),
    ],
)
def test_response_vary(given: H, vary_origin: bool, expected: H) -> None:
    head = [(b"content-type", b"text/plain"), *given]
    assert response_headers(head, vary_origin=vary_origin) == [(b"content-type", b"text/plain"), *expected]


def test_response_keeps_end_to_end_fields_in_order() -> None:
    head = [
        (b"date", b"x"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"1"),
        (b"cache-control", b"no-store"),
    ]
    assert response_headers(head) == [
        (b"date", b"x"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"cache-control", b"no-store"),
    ]


# -- shortcuts against their reference ---------------------------------------------


def reference_response_headers(headers: H, vary_origin: bool, switching: bool, request_id: bytes = b"") -> H:
    """response_headers as two passes: the drop set from Connection first,
    then the filter (what the one-pass shortcut must always equal)."""
    drop = hop_by_hop(headers, keep_upgrade=switching) | {b"x-request-id"}
    out = [(n, v) for n, v in headers if not is_hop(n, drop) and not (n == b"vary" and vary_origin)]
    if any(n == b"transfer-encoding" for n, _ in headers):
        out = [f for f in out if f[0] != b"content-length"]
    if switching:
        out.append((b"connection", b"upgrade"))
    if vary_origin:
        out.append((b"vary", merge_vary([v for n, v in headers if n == b"vary"], b"Origin")))
    if request_id:
        out.append((b"x-request-id", request_id))
    return out


RESPONSE_NAMES = st.sampled_from(
    [b"server", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"vary",
     b"x-a", b"etag", b"upgrade", b"proxy-x", b"te", b"trailer", b"host", b"x-request-id"]
)  # fmt: skip
CONNECTION_VALUES = st.sampled_from(
    [
        b"keep-alive",
        b"close",
        b"Keep-Alive, close",
        b"x-a",
        b"etag, keep-alive",
        b"upgrade",
        b"host",
        b"",
        b"x-request-id",
    ]
)


@st.composite
def response_fields(draw: st.DrawFn) -> H:
    fields: H = []
    for name in draw(st.lists(RESPONSE_NAMES, max_size=10)):
        value = draw(CONNECTION_VALUES) if name == b"connection" else draw(st.sampled_from([b"1", b"Accept"]))
        fields.append((name, value))
    return fields


@settings(max_examples=400, deadline=None)
@given(response_fields(), st.booleans(), st.booleans(), st.sampled_from([b"", b"AbCdEfGhIj000001"]))
def test_response_headers_one_pass_equals_the_reference(
    headers: H, vary_origin: bool, switching: bool, request_id: bytes
) -> None:
    assert response_headers(headers, vary_origin, switching, request_id) == reference_response_headers(
        headers, vary_origin, switching, request_id
    )


# -- the request id ---------------------------------------------------------------------


def with_id(headers: H, request_id: bytes = b"rid-1", **kw: Any) -> H:
    """fwd for a request whose id (edge.http.request_id) is `request_id`."""
    req = msgspec.structs.replace(build(b"GET", b"app", b"/", headers, "203.0.113.7"), request_id=request_id)
    return request_headers(req, ForwardContext(b"http", kw.pop("trusted", NOBODY), **kw), b"127.0.0.1:9000")


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize(
    "name", [b"x-request-id", b"x_request_id", b"X_Request_Id", b"x-request_id", b"X-REQUEST-ID"]
)
def test_a_clients_request_id_is_replaced_by_the_requests(name: bytes, keep: bool) -> None:
    # Names as the connection gives them: lower-cased.
    out = with_id([(b"host", b"app"), (name.lower(), b"client")], keep_underscores=keep)
    assert [f for f in out if f[0].lower().replace(b"_", b"-") == b"x-request-id"] == [
        (b"x-request-id", b"rid-1")
    ]
    assert out[-1] == (b"x-request-id", b"rid-1")


def test_a_trusted_proxys_id_travels_as_the_requests() -> None:
    # The connection accepted it (edge.http.request_id); forwarding sends the Request's id only.
    out = with_id([(b"host", b"app"), (b"x-request-id", b"lb-7")], b"lb-7", trusted=TRUSTED)
    assert [f for f in out if f[0] == b"x-request-id"] == [(b"x-request-id", b"lb-7")]


def test_a_request_built_without_an_id_forwards_none() -> None:
    assert b"x-request-id" not in names(with_id([(b"host", b"app"), (b"x-request-id", b"c")], b""))


def test_an_upstreams_request_id_is_replaced() -> None:
    # Names as edge.proxy.wire gives them: lower-cased.
    head = [(b"x-request-id", b"upstream"), (b"content-length", b"0"), (b"x-request-id", b"again")]
    assert response_headers(head, request_id=b"rid-1") == [
        (b"content-length", b"0"),
        (b"x-request-id", b"rid-1"),
    ]
    assert response_headers([(b"x-request-id", b"up")], switching=True, request_id=b"r") == [
        (b"connection", b"upgrade"),
        (b"x-request-id", b"r"),
    ]


def declared_framing(headers: H) -> tuple[bool, bool]:
    """(a body follows, it is chunked), read from a forwarded head's fields:
    what the proxy cycle once re-read, and now takes from the Request."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return True, True
        if name == b"content-length":
            return value != b"0", False
    return False, False


@pytest.mark.parametrize("body", ["none", "length", "zero", "chunked"])
@pytest.mark.parametrize("given", [[], [(b"content-length", b"7")], [(b"transfer-encoding", b"chunked")]])
def test_forwarded_framing_is_the_requests(body: str, given: H) -> None:
    fields: H = [(b"host", b"app"), *given]
    if body == "length":
        fields.append((b"content-length", b"005"))
    elif body == "zero":
        fields.append((b"content-length", b"0"))
    elif body == "chunked":
        fields.append((b"transfer-encoding", b"chunked"))
    req = build(b"POST", b"app", b"/", fields, "203.0.113.7")
    out = request_headers(req, ForwardContext(b"http"), b"u")
    assert declared_framing(out) == (req.chunked or bool(req.length), req.chunked)


def reference_strip_cookie(value: bytes, name: bytes) -> bytes:
    """strip_cookie's general path (the one-pair shortcut must equal it)."""
    kept = [p for p in (x.strip() for x in value.split(b";")) if p and p.partition(b"=")[0].strip() != name]
    return b"; ".join(kept)


COOKIE_PARTS = st.sampled_from(
    [b"", b" ", b"CF_Authorization=t", b" CF_Authorization = t ", b"a=1", b"CF_Authorization",
     b"=x", b"CF_Authorizationx=1", b"\tb=2\t", b";"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(COOKIE_PARTS, max_size=4))
def test_strip_cookie_equals_the_general_path(parts: list[bytes]) -> None:
    value = b"".join(parts)
    assert strip_cookie(value) == reference_strip_cookie(value, b"CF_Authorization")


CONNECTION_TOKENS = st.sampled_from(
    [b"keep-alive", b"close", b"Upgrade", b"x-trace", b"X-Trace", b"te", b"host", b"cookie", b""]
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.lists(CONNECTION_TOKENS, max_size=3).map(b", ".join), max_size=3),
    keep_upgrade=st.booleans(),
    strip=st.frozensets(st.sampled_from([b"cf-access-client-secret", b"x-trace", b"cookie"])),
    trusted=st.booleans(),
)
def test_cached_hop_and_drop_sets_are_the_built_ones(
    values: list[bytes], keep_upgrade: bool, strip: frozenset[bytes], trusted: bool
) -> None:
    """forwarding's two caches (_HOP_SETS, _DROP_SETS) answer, first time
    and every time after, what building the set afresh gives."""
    for _ in range(2):
        hop = forwarding.connection_hops(values, keep_upgrade)
        built = forwarding._hop_set(values, keep_upgrade) if values or keep_upgrade else forwarding.HOP_BY_HOP
        assert hop == built
        assert forwarding._drop_set(hop, strip, trusted) == forwarding._build_drop_set(hop, strip, trusted)
