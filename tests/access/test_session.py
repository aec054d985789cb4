"""Unit tests of the login service's pure parts: edge/access/session.py (sealed
values, CSRF, cookies, redirect checks, claims), edge/login/pages.py (escaping) and
edge/login/passwords.py (scrypt hashes). No sockets, no clock: `now` is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from html import escape
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.access.session import (
    MAX_SEALED_BYTES,
    Person,
    Sealer,
    SealError,
    clear_cookie,
    cookie_value,
    cross_site,
    new_person,
    origin_of,
    random_token,
    same_host_url,
    set_cookie,
    token_claims,
)
from edge.config.schema import DevUser
from edge.login import pages
from edge.login.passwords import (
    DUMMY_HASH,
    LOG2_N,
    MAX_PASSWORD_BYTES,
    P,
    R,
    _b64,
    _scrypt,
    hash_password,
    verify_password,
)

NOW = 1_800_000_000.0
SECRET = bytes(range(32))
FAST = 4  # log2 N for hashes made here: the format is under test, not the cost


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- sealed values ----------------------------------------------------------------------


def test_seal_round_trip() -> None:
    sealer = Sealer(SECRET)
    payload = {"h": "app.example.com", "p": {"email": "a@example.com", "groups": ["x"]}, "n": 3}
    sealed = sealer.seal("handoff", payload, NOW + 60)
    assert sealer.open("handoff", sealed, NOW) == {**payload, "exp": NOW + 60}
    # Same secret, another instance (another worker): same key.
    assert Sealer(SECRET).open("handoff", sealed, NOW)["n"] == 3


def test_sealed_values_are_opaque_and_fresh() -> None:
    sealer = Sealer(SECRET)
    one = sealer.seal("handoff", {"email": "alice@example.com"}, NOW + 60)
    two = sealer.seal("handoff", {"email": "alice@example.com"}, NOW + 60)
    assert one != two  # a fresh nonce each time
    assert b"alice" not in b64decode(one)  # encrypted, not just signed
    assert re.fullmatch(r"[A-Za-z0-9_-]+", one)  # safe in a query string and a cookie


def test_seal_is_bound_to_its_purpose_and_secret() -> None:
    sealed = Sealer(SECRET).seal("handoff", {"a": 1}, NOW + 60)
    with pytest.raises(SealError):
        Sealer(SECRET).open("flow", sealed, NOW)
    with pytest.raises(SealError):
        Sealer(os.urandom(32)).open("handoff", sealed, NOW)


@pytest.mark.parametrize(("exp", "ok"), [(NOW + 0.001, True), (NOW, False), (NOW - 1, False)])
def test_seal_expiry(exp: float, ok: bool) -> None:
    sealer = Sealer(SECRET)
    sealed = sealer.seal("handoff", {}, exp)
    if ok:
        assert sealer.open("handoff", sealed, NOW)["exp"] == exp
    else:
        with pytest.raises(SealError, match="expired"):
            sealer.open("handoff", sealed, NOW)


@pytest.mark.parametrize("position", [0, 11, 12, 20, -1])  # nonce, ciphertext, tag
def test_tampered_seal_is_refused(position: int) -> None:
    sealer = Sealer(SECRET)
    raw = bytearray(b64decode(sealer.seal("handoff", {"admin": False}, NOW + 60)))
    raw[position] ^= 0x01
    with pytest.raises(SealError):
        sealer.open("handoff", base64.urlsafe_b64encode(bytes(raw)).decode(), NOW)


@pytest.mark.parametrize(
    "text",
    ["", "a", "abc", "!!!!", "é", "A" * (MAX_SEALED_BYTES + 1), "=" * 40, "AAAA" * 10, "%00"],
)
def test_malformed_seal_is_refused(text: str) -> None:
    with pytest.raises(SealError):
        Sealer(SECRET).open("handoff", text, NOW)


def _raw_seal(purpose: str, data: bytes) -> str:
    """Seal bytes that `Sealer.seal` would never produce, with its key."""
    aead = AESGCM(hashlib.sha256(b"edge seal v1\x00" + SECRET).digest())
    nonce = os.urandom(12)
    return base64.urlsafe_b64encode(nonce + aead.encrypt(nonce, data, purpose.encode())).decode()


@pytest.mark.parametrize(
    "document",
    [[1, 2], "text", 3, {"no": "exp"}, {"exp": "soon"}, {"exp": None}],
)
def test_authentic_but_malformed_payload_is_refused(document: Any) -> None:
    with pytest.raises(SealError, match="malformed"):
        Sealer(SECRET).open("handoff", _raw_seal("handoff", msgspec.json.encode(document)), NOW)
    with pytest.raises(SealError):
        Sealer(SECRET).open("handoff", _raw_seal("handoff", b"not json"), NOW)


# -- CSRF ---------------------------------------------------------------------------------


def test_csrf_field_is_a_mac_of_the_cookie() -> None:
    sealer = Sealer(SECRET)
    cookie = random_token()
    field = sealer.csrf_token(cookie)
    assert field != cookie and sealer.csrf_ok(cookie, field)
    assert Sealer(SECRET).csrf_ok(cookie, field)  # any worker with the secret


@pytest.mark.parametrize(
    ("cookie", "field"),
    [
        ("c1", "other-cookie"),  # the field of another cookie (another session)
        ("c1", None),
        ("c1", ""),
        (None, "field"),
        ("", "field"),
        ("c1", "c1"),  # the cookie echoed as the field: what a planted cookie would allow
    ],
)
def test_csrf_mismatches(cookie: str | None, field: str | None) -> None:
    sealer = Sealer(SECRET)
    if field == "other-cookie":
        field = sealer.csrf_token("c2")
    assert not sealer.csrf_ok(cookie, field)


def test_csrf_field_of_another_secret_is_refused() -> None:
    assert not Sealer(SECRET).csrf_ok("c1", Sealer(os.urandom(32)).csrf_token("c1"))


def test_random_tokens() -> None:
    tokens = {random_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", t) for t in tokens)  # 24 bytes
    assert len(random_token(16)) == 22


# -- cookies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "n=v; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax"),
        ({"http_only": False}, "n=v; Path=/; Max-Age=60; Secure; SameSite=Lax"),
        ({"same_site": "strict"}, "n=v; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Strict"),
        ({"same_site": "none"}, "n=v; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=None"),
        ({"path": "/api"}, "n=v; Path=/api; Max-Age=60; HttpOnly; Secure; SameSite=Lax"),
    ],
)
def test_set_cookie(kwargs: dict[str, Any], expected: str) -> None:
    # Never a Domain attribute: host-only cookies are not offered to sibling hosts.
    assert set_cookie("n", "v", max_age=60, **kwargs) == (b"set-cookie", expected.encode())


def test_clear_cookie() -> None:
    assert clear_cookie("n", "/x") == (
        b"set-cookie",
        b"n=; Path=/x; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([b"edge_csrf=abc"], "abc"),
        ([b"a=1; edge_csrf=abc; b=2"], "abc"),
        ([b"a=1", b"edge_csrf=abc"], "abc"),  # in a second Cookie header
        ([b"edge_csrf=first; edge_csrf=second"], "first"),
        ([b"xedge_csrf=no; edge_csrf_old=no"], None),  # names that merely contain it
        ([b"edge_csrf="], ""),
        ([b"edge_csrf=\xff"], None),  # not ASCII: not a value we set
        ([b"a=1"], None),
        ([], None),
    ],
)
def test_cookie_value(headers: list[bytes], expected: str | None) -> None:
    assert cookie_value(headers, "edge_csrf") == expected


# -- where a login may return to ---------------------------------------------------------------

SAME_HOST = [
    "http://app.example.com/",
    "https://app.example.com/path?q=1#frag",
    "http://app.example.com:8080/x",  # any port: the host is what matters
    "HTTP://APP.example.com/",  # schemes and host names are case-insensitive
    "http://app.example.com./",  # the fully qualified form
]

OTHER_HOST = [
    "https://evil.test/",
    "http://app.example.com@evil.test/",
    "http://user:pw@app.example.com/",  # credentials in a redirect: never
    "http://evil.test#@app.example.com/",
    "http://evil.test?@app.example.com/",
    "//app.example.com/",
    "/path",
    "http:/app.example.com/",
    "http:app.example.com/",
    "http://app.example.com",  # no path
    "http://app.example.com\\@evil.test/",
    "http:\\\\app.example.com\\",
    "http://app.example.com.evil.test/",
    "http://evil.test/app.example.com/",
    "http://sub.app.example.com/",
    "http://example.com/",
    "ftp://app.example.com/",
    "javascript://app.example.com/%0aalert(1)",
    "http://app.example.com:0/",
    "http://app.example.com:99999/",
    "http://app.example.com:x/",
    "http://[::1/",
    "http://app.example.com/ x",
    "http://app.example.com/\r\nSet-Cookie: a=b",
    "http://app.example.com/\t",
    "http://app.example.com/é",
    "http://app.example\u3002com/",
    "",
]


@pytest.mark.parametrize("url", SAME_HOST)
def test_same_host_url_accepts(url: str) -> None:
    assert same_host_url(url, "app.example.com") == url


@pytest.mark.parametrize("url", OTHER_HOST)
def test_same_host_url_refuses(url: str) -> None:
    assert same_host_url(url, "app.example.com") is None


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://app.example.com/x?y#z", "http://app.example.com"),
        ("https://app.example.com:8443/", "https://app.example.com:8443"),
    ],
)
def test_origin_of(url: str, origin: str) -> None:
    assert origin_of(url) == origin


# -- claims ------------------------------------------------------------------------------------------


def test_token_claims() -> None:
    who = Person(email="a@example.com", groups=["g2", "g1"], idp="", sub="s1", nonce="n1")
    claims = token_claims(
        iss="https://team.example", aud="aud1", kind="app", person=who, now=NOW + 0.7, lifetime=600
    )
    assert claims == {
        "iss": "https://team.example",
        "aud": ["aud1"],  # a list, as BEHAVIOUR.md section 3 says
        "type": "app",
        "sub": "s1",
        "email": "a@example.com",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW + 600),
        "identity_nonce": "n1",
        "groups": ["g2", "g1"],
    }
    assert all(isinstance(claims[k], int) for k in ("iat", "nbf", "exp"))  # numbers, not strings
    without = token_claims(
        iss="i", aud="a", kind="org", person=msgspec.structs.replace(who, groups=[]), now=NOW, lifetime=60
    )
    assert "groups" not in without


def test_new_person() -> None:
    one = new_person("Alice@Example.com", ["g"], "dev")
    two = new_person("alice@example.com", [], "dev")
    # One subject per account (email case folded), per provider.
    assert one.sub == two.sub and re.fullmatch(r"[0-9a-f]{32}", one.sub)
    assert new_person("alice@example.com", [], "sso").sub != one.sub
    assert new_person("a@example.com", [], "sso", sub="sso:123").sub == "sso:123"
    # Each sign-in is its own session: logout revokes one nonce, not the account.
    assert one.nonce != two.nonce and len(one.nonce) >= 24
    assert one.email == "Alice@Example.com" and one.groups == ["g"] and one.idp == "dev"


# -- pages ------------------------------------------------------------------------------------------

NASTY = '<script>alert("x")</script>&\'"'
NASTY_ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;&quot;"
ICON_LINK = f'<link rel="icon" href="{escape(pages.ICON)}">'  # inline: loads nothing


def test_login_page_escapes_everything() -> None:
    page = pages.login_page(
        app_name=NASTY,
        action='/login?a=1&b="><script>',
        csrf='"><script>',
        providers=[pages.Choice("dev", NASTY, "dev"), pages.Choice("sso", NASTY, "oidc")],
        error=NASTY,
        email=NASTY,
    ).decode()
    assert "<script" not in page
    assert f"<h1>Sign in to {NASTY_ESCAPED}</h1>" in page
    assert f'<p class="error" role="alert">{NASTY_ESCAPED}</p>' in page
    assert f'value="{NASTY_ESCAPED}"' in page  # the email typed
    assert 'action="/login?a=1&amp;b=&quot;&gt;&lt;script&gt;"' in page
    assert 'name="csrf" value="&quot;&gt;&lt;script&gt;"' in page
    assert f"Continue with {NASTY_ESCAPED}</button>" in page  # the OIDC provider's button


def test_login_page_forms() -> None:
    page = pages.login_page(
        app_name=None,
        action="/cdn-cgi/access/login",
        csrf="tok",
        providers=[pages.Choice("dev", "Dev", "dev"), pages.Choice("sso", "SSO", "oidc")],
    ).decode()
    assert "<h1>Sign in</h1>" in page and 'role="alert"' not in page
    assert page.count('<form method="post" action="/cdn-cgi/access/login">') == 2
    assert page.count('name="csrf" value="tok"') == 2  # every form carries the CSRF field
    assert 'name="provider" value="dev"' in page and 'name="provider" value="sso"' in page
    assert 'type="password"' in page and 'autocomplete="current-password"' in page
    # Nothing loaded from anywhere (the icon is inline): what the CSP forbids is never needed.
    assert not re.search(r"<script|<img|<link|<iframe|src=", page.replace(ICON_LINK, ""))


def test_message_and_denied_pages_escape() -> None:
    page = pages.message_page(NASTY, NASTY, link=('/x?a=1&b="', NASTY)).decode()
    assert "<script" not in page
    assert f"<title>{NASTY_ESCAPED}</title>" in page
    assert '<a href="/x?a=1&amp;b=&quot;">' in page
    denied = pages.denied_page("a@example.com", NASTY, "/cdn-cgi/access/logout").decode()
    assert f"That account (a@example.com) does not have access to {NASTY_ESCAPED}." in denied
    assert '<a href="/cdn-cgi/access/logout">' in denied
    # The request id names the log line; escaped all the same (it is SAFE
    # when it comes from the edge, but the page does not rely on that).
    named = pages.denied_page("a@example.com", "app", "/cdn-cgi/access/logout", request_id=NASTY).decode()
    assert f"Request id: {NASTY_ESCAPED}</footer>" in named and "<script" not in named
    assert "Request id" not in denied


def test_logout_page_escapes_and_posts_back() -> None:
    page = pages.logout_page(action='/x?a=1&b="', csrf='"><script>', who=NASTY, error=NASTY).decode()
    assert "<script" not in page
    assert f"You are signed in as {NASTY_ESCAPED}." in page
    assert f'<p class="error" role="alert">{NASTY_ESCAPED}</p>' in page
    assert '<form method="post" action="/x?a=1&amp;b=&quot;">' in page
    assert 'name="csrf" value="&quot;&gt;&lt;script&gt;"' in page
    quiet = pages.logout_page(action="/cdn-cgi/access/logout", csrf="t", who=None).decode()
    assert "signed in as" not in quiet and 'role="alert"' not in quiet
    assert not re.search(r"<script|<img|<link|<iframe|src=", quiet.replace(ICON_LINK, ""))


@pytest.mark.parametrize(
    ("host", "origin", "referer", "expected"),
    [
        ("app.example.com", [], [], False),  # typed or bookmarked
        ("app.example.com", [b"https://app.example.com"], [], False),
        ("app.example.com", [], [b"http://APP.example.com.:8443/a?b#c"], False),
        ("app.example.com", [], [b"https://user:pw@app.example.com/"], False),
        ("[::1]", [b"http://[::1]:8080"], [], False),
        ("[::1]", [b"http://[::2]:8080"], [], True),
        ("app.example.com", [b"https://api.example.com"], [], True),  # a sibling: no suffix list here
        ("app.example.com", [b"https://app.example.com.evil.test"], [], True),
        ("app.example.com", [b"https://evil.test@app.example.com"], [], False),  # userinfo is not the host
        ("app.example.com", [b"https://app.example.com@evil.test"], [], True),
        ("app.example.com", [b"null"], [b"https://app.example.com/"], True),  # Origin first
        ("app.example.com", [b"ftp://app.example.com"], [], True),
        ("app.example.com", [b"https://app.example.com\xff"], [], True),
        ("app.example.com", [b"https://[bad"], [], True),
        ("app.example.com", [b"https://app.example.com"] * 2, [], True),
        ("app.example.com", [], [b"https://app.example.com/", b"https://app.example.com/"], True),
    ],
)
def test_cross_site_without_fetch_metadata(
    host: str, origin: list[bytes], referer: list[bytes], expected: bool
) -> None:
    assert cross_site(host, (), origin, referer) is expected


@pytest.mark.parametrize(
    ("fetch_site", "expected"),
    [
        ([b"same-origin"], False),
        ([b"same-site"], False),
        ([b" None "], False),
        ([b"cross-site"], True),
        ([b"unknown-future-value"], True),
        ([b""], True),
        ([b"same-origin", b"same-origin"], True),
    ],
)
def test_cross_site_by_fetch_metadata(fetch_site: list[bytes], expected: bool) -> None:
    # The browser's own header decides: Origin and Referer are not consulted.
    assert cross_site("a.example", fetch_site, [b"https://a.example"], [b"https://evil.test/"]) is expected
    assert cross_site("a.example", fetch_site, [b"https://evil.test"], []) is expected


def test_csp() -> None:
    directives = dict(d.strip().split(" ", 1) for d in pages.CSP.decode().split(";"))
    assert directives["default-src"] == "'none'"  # so no script, image, frame, connect...
    assert directives["frame-ancestors"] == "'none'"  # never framed (clickjacking)
    assert directives["base-uri"] == "'none'"
    assert "script-src" not in directives


# -- passwords ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", ["demo", "pässwörd ✓", "", "x" * MAX_PASSWORD_BYTES])
def test_password_round_trip(password: str) -> None:
    encoded = hash_password(password, log2_n=FAST)
    assert verify_password(password, encoded)
    assert not verify_password(password + "!", encoded)
    assert not verify_password(password.upper() + "A", encoded)


def test_password_hash_format() -> None:
    encoded = hash_password("demo")
    scheme, log2_n, r, p, salt, digest = encoded.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", str(LOG2_N), str(R), str(P))
    assert len(b64decode(salt)) == 16 and len(b64decode(digest)) == 32
    assert hash_password("demo", log2_n=FAST) != hash_password("demo", log2_n=FAST)  # salted
    DevUser(email="a@example.com", password=encoded)  # what the config accepts


def test_overlong_password_is_refused_before_hashing() -> None:
    long = "x" * (MAX_PASSWORD_BYTES + 1)
    assert not verify_password(long, hash_password(long, log2_n=FAST))
    assert not verify_password("é" * (MAX_PASSWORD_BYTES // 2 + 1), hash_password("é", log2_n=FAST))  # bytes


def _made(log2_n: int, r: int, p: int, password: bytes = b"pw") -> str:
    salt = os.urandom(16)
    return f"scrypt${log2_n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, log2_n, r, p, 32))}"


@pytest.mark.parametrize(("log2_n", "r", "p"), [(4, 1, 1), (10, 8, 16), (10, 32, 1), (12, 16, 2)])
def test_other_scrypt_parameters_verify(log2_n: int, r: int, p: int) -> None:
    encoded = _made(log2_n, r, p)
    assert verify_password("pw", encoded) and not verify_password("px", encoded)


GOOD_SALT, GOOD_HASH = "AAAAAAAAAAAAAAAAAAAAAA", "A" * 43


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "demo",  # a password where the hash should be
        f"bcrypt$10$8$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$8${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$8$1$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$x$8$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$8$1.5${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$0$8$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$21$8$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$0$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$33$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$8$0${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$8$17${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$8$-1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$10$8$1${GOOD_SALT}$",  # no hash
        f"scrypt$10$8$1${GOOD_SALT}$A",  # not base64
        # Within each bound but too costly together: refused, not run for
        # seconds (or failed in hashlib, past what OpenSSL takes as maxmem).
        f"scrypt$20$32$1${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$20$8$16${GOOD_SALT}${GOOD_HASH}",
        f"scrypt$17$32$16${GOOD_SALT}${GOOD_HASH}",
    ],
)
def test_malformed_or_too_costly_hash_is_false_not_an_error(encoded: str) -> None:
    assert verify_password("pw", encoded) is False


def test_dummy_hash_costs_what_a_default_hash_costs() -> None:
    """An unknown email is checked against DUMMY_HASH: same parameters as
    `edge password` uses, so it takes as long, and nothing matches it."""
    assert DUMMY_HASH.split("$")[:4] == ["scrypt", str(LOG2_N), str(R), str(P)]
    DevUser(email="a@example.com", password=DUMMY_HASH)  # a well-formed hash
    for guess in ("", "demo", "A" * 10):
        assert verify_password(guess, DUMMY_HASH) is False
