"""edge.access.tokens: extraction, verification failures, caches (key sets:
test_keysets.py). Pure: a fixed clock (access_fixtures.NOW), keys generated
in-process."""

from __future__ import annotations

import json
from typing import Any

import jwt
import msgspec
import pytest
from access_fixtures import (
    DROP,
    EC_KEY,
    HS_SECRET,
    ISS,
    KIDS,
    NOW,
    OTHER_EC_KEY,
    RSA_KEY,
    b64,
    claims,
    default_jwks,
    jwks,
    mint,
    public_jwk,
    unsigned,
)
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.access.claims import Identity, Refusal
from edge.access.keysets import REFRESH_INTERVAL, KeySet, parse_jwks
from edge.access.revocation import SESSION_PREFIX, session_key, sid_key, token_key
from edge.access.tokens import AMBIGUOUS, NO_TOKEN, IssuerKeys, Verifier, cookie_tokens, extract_token

# -- extraction ----------------------------------------------------------------

T1, T2 = b"aaa.bbb.ccc", b"ddd.eee.fff"


@pytest.mark.parametrize(
    ("cookies", "access", "authorization", "expected"),
    [
        ([b"CF_Authorization=" + T1], [], [], T1),
        ([b"a=1; CF_Authorization=" + T1 + b"; b=2"], [], [], T1),
        ([b"a=1;CF_Authorization=" + T1], [], [], T1),
        ([b'CF_Authorization="' + T1 + b'"'], [], [], T1),
        ([b"XCF_Authorization=" + T1], [], [], NO_TOKEN),
        ([b"a=CF_Authorization=" + T1], [], [], NO_TOKEN),
        ([b"CF_Authorization="], [], [], NO_TOKEN),
        ([b"cf_authorization=" + T1], [], [], NO_TOKEN),  # cookie names are case-sensitive
        ([b"CF_Authorization=" + T1 + b"; CF_Authorization=" + T1], [], [], T1),
        ([b"CF_Authorization=" + T1 + b"; CF_Authorization=" + T2], [], [], AMBIGUOUS),
        ([b"CF_Authorization=" + T1, b"CF_Authorization=" + T2], [], [], AMBIGUOUS),
        ([b"CF_Authorization=" + T1], [T1], [], T1),
        ([b"CF_Authorization=" + T1], [T2], [], AMBIGUOUS),
        ([], [T1, T2], [], AMBIGUOUS),
        ([], [T2], [], T2),
        ([], [], [b"Bearer " + T1], T1),
        ([], [], [b"bearer   " + T1], T1),
        ([], [], [b"Basic dXNlcjpwdw=="], NO_TOKEN),
        ([], [], [b"Bearer"], NO_TOKEN),
        # Authorization belongs to the application when it is not a token of ours.
        ([b"CF_Authorization=" + T1], [], [b"Bearer " + T2], T1),
        ([], [T1], [b"Bearer " + T2], T1),
        ([], [], [], NO_TOKEN),
    ],
)
def test_extract_token(
    cookies: list[bytes], access: list[bytes], authorization: list[bytes], expected: bytes | Refusal
) -> None:
    assert extract_token(cookies, access, authorization, lambda value: False) == expected


def test_cookie_tokens_finds_every_occurrence() -> None:
    assert cookie_tokens([b"CF_Authorization=a; x=CF_Authorization=b; CF_Authorization=c"]) == [b"a", b"c"]


# -- verification ----------------------------------------------------------------


def verifier(
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA"), body: bytes | None = None
) -> Verifier:
    keys, notes = parse_jwks(body or default_jwks())
    assert notes == []
    return Verifier([IssuerKeys(ISS, algorithms, 60, KeySet("test", keys), None)])


def hs_verifier() -> Verifier:
    return Verifier([IssuerKeys(ISS, ["HS256"], 60, None, HS_SECRET.encode())])


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token(alg: str) -> None:
    token = mint(alg, groups=["eng", "ops"])
    ident = verifier().verify(token, NOW)
    assert isinstance(ident, Identity)
    assert ident.email == "alice@example.com"
    assert ident.email_domain == "example.com"
    assert ident.groups == frozenset({"eng", "ops"})
    assert ident.aud == frozenset({"api-aud"})
    assert (ident.iss, ident.sub, ident.type, ident.country, ident.identity_nonce) == (
        ISS,
        "u-alice",
        "app",
        "NL",
        "n0nce",
    )
    assert ident.exp == NOW + 3600
    assert ident.add_headers == (
        (b"cf-access-jwt-assertion", token),
        (b"cf-access-authenticated-user-email", b"alice@example.com"),
    )


def test_hs256_with_configured_secret() -> None:
    assert isinstance(hs_verifier().verify(mint("HS256"), NOW), Identity)


def test_aud_as_a_single_string() -> None:
    ident = verifier().verify(mint(aud="api-aud"), NOW)
    assert isinstance(ident, Identity) and ident.aud == frozenset({"api-aud"})


def test_no_email_means_no_email_header() -> None:
    ident = verifier().verify(mint(email=DROP), NOW)
    assert isinstance(ident, Identity)
    assert [k for k, _ in ident.add_headers] == [b"cf-access-jwt-assertion"]


def _rsa_public_pem() -> bytes:
    return RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hs_confusion() -> bytes:
    """HS256 signed with the RSA *public* key as the HMAC secret (the
    classic algorithm-confusion forgery); PyJWT refuses to encode it, so
    the signature is computed by hand."""
    import hashlib
    import hmac

    header = b64(json.dumps({"alg": "HS256", "kid": KIDS["RS256"], "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    sig = hmac.new(_rsa_public_pem(), header + b"." + payload, hashlib.sha256).digest()
    return header + b"." + payload + b"." + b64(sig)


FAILURES: list[tuple[str, Any, str]] = [
    (
        "alg none",
        lambda: unsigned(
            {"iss": ISS, "aud": ["api-aud"], "exp": NOW + 60, "iat": NOW}, {"alg": "none", "kid": "ec-1"}
        ),
        "alg 'none' not allowed",
    ),
    ("unpinned alg", lambda: mint("RS256"), "alg 'RS256' not allowed"),
    ("HS/RS confusion", _hs_confusion, "alg 'HS256' not allowed"),
    ("alg does not match the kid's key", lambda: mint("ES256", kid=KIDS["EdDSA"]), "does not match key"),
    ("unknown kid", lambda: mint("ES256", kid="nope"), "unknown kid 'nope'"),
    ("no kid", lambda: mint("ES256", header={"kid": DROP}), "token has no kid"),
    ("bad signature", lambda: mint("ES256", key=OTHER_EC_KEY), "bad signature"),
    ("expired", lambda: mint(exp=NOW - 61), "expired"),
    ("nbf in the future", lambda: mint(nbf=NOW + 61), "not yet valid"),
    ("iat in the future", lambda: mint(iat=NOW + 61), "issued in the future"),
    ("wrong iss", lambda: mint(iss="https://evil.example.com"), "unknown issuer"),
    ("missing exp", lambda: mint(exp=DROP), "missing claim exp"),
    ("missing iat", lambda: mint(iat=DROP), "missing claim iat"),
    ("missing aud", lambda: mint(aud=DROP), "missing claim aud"),
    ("missing iss", lambda: mint(iss=DROP), "unknown issuer"),
    ("numeric-string exp", lambda: mint(exp=str(int(NOW + 3600))), "exp is not a number"),
    ("numeric-string nbf", lambda: mint(nbf=str(int(NOW))), "nbf is not a number"),
    ("numeric-string iat", lambda: mint(iat=str(int(NOW))), "iat is not a number"),
    ("boolean exp", lambda: mint(exp=True), "exp is not a number"),
    ("aud a number", lambda: mint(aud=42), "aud is not a string or a list of strings"),
    (
        "aud a list with a number",
        lambda: mint(aud=["api-aud", 1]),
        "aud is not a string or a list of strings",
    ),
    ("aud empty list", lambda: mint(aud=[]), "aud is empty"),
    ("groups a string list?", lambda: mint(groups={"a": 1}), "groups is not a string or a list of strings"),
    (
        "email with CRLF",
        lambda: mint(email="a@example.com\r\nx-evil: 1"),
        "email contains control characters",
    ),
    ("email not a string", lambda: mint(email=["a@example.com"]), "email is not a string"),
    ("malformed", lambda: b"not-a-token", "malformed token"),
    ("two segments", lambda: b"aaa.bbb", "malformed token"),
    ("bad base64", lambda: b"e30.e30.!!!", "malformed token"),
    ("header not JSON", lambda: b"bm90anNvbg.e30.", "malformed token"),
    ("huge", lambda: b"a" * 20000 + b".b.c", "malformed token"),
    # Values no clock can be compared with: refused, never an exception.
    ("exp hundreds of digits", lambda: mint(exp=10**400), "exp is out of range"),
    ("nbf hundreds of digits", lambda: mint(nbf=10**400), "nbf is out of range"),
    ("iat hundreds of digits", lambda: mint(iat=10**400), "iat is out of range"),
    ("exp hugely negative", lambda: mint(exp=-(10**400)), "exp is out of range"),
    ("iat hugely negative", lambda: mint(iat=-1e308), "iat is out of range"),
    ("exp near the float limit", lambda: mint(exp=1e308), "exp is out of range"),
    ("exp infinite", lambda: mint(exp=float("inf")), "exp is out of range"),
    ("exp NaN", lambda: mint(exp=float("nan")), "exp is out of range"),
    ("email with a lone surrogate", lambda: mint(email="\ud800@example.com"), "email is not valid Unicode"),
    ("sub with a lone surrogate", lambda: mint(sub="u-\udfff"), "sub is not valid Unicode"),
    ("groups with a lone surrogate", lambda: mint(groups=["\ud800"]), "groups is not valid Unicode"),
    (
        "alg not a string",
        lambda: unsigned({"iss": ISS, "aud": ["api-aud"], "exp": NOW + 60, "iat": NOW}, {"alg": ["ES256"]}),
        "not allowed for this issuer",
    ),
]


@pytest.mark.parametrize(("token", "reason"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_refused(token: Any, reason: str) -> None:
    v = verifier(algorithms=("ES256", "EdDSA"))
    result = v.verify(token(), NOW)
    assert isinstance(result, Refusal), result
    assert reason in result.reason


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_absurd_claims_are_remembered_like_other_failures(name: str) -> None:
    v = verifier()
    token = mint(**{name: 10**400})
    first = v.verify(token, NOW)
    assert isinstance(first, Refusal) and first.permanent
    assert token in v.failures
    assert v.verify(token, NOW) is first  # the repeat costs no signature check


def test_hs256_issuer_refuses_asymmetric_tokens() -> None:
    result = hs_verifier().verify(mint("ES256"), NOW)
    assert isinstance(result, Refusal) and "alg 'ES256' not allowed" in result.reason


def test_hs256_wrong_secret() -> None:
    token = mint("HS256", key=b"another-secret-of-at-least-32-bytes!")
    result = hs_verifier().verify(token, NOW)
    assert isinstance(result, Refusal) and result.reason == "bad signature"


@pytest.mark.parametrize(("offset", "valid"), [(-59, True), (-61, False)])
def test_exp_leeway(offset: float, valid: bool) -> None:
    result = verifier().verify(mint(exp=NOW + offset), NOW)
    assert isinstance(result, Identity) is valid


@pytest.mark.parametrize(("offset", "valid"), [(59, True), (61, False)])
def test_nbf_leeway(offset: float, valid: bool) -> None:
    result = verifier().verify(mint(nbf=NOW + offset), NOW)
    assert isinstance(result, Identity) is valid


# Any JSON value a signer could put in a claim, with the edge cases that break
# naive code: integers of hundreds of digits, floats past any clock (JSON has
# no NaN or Infinity, but Python's json module, PyJWT's, reads them), lone
# surrogates (valid \\u escapes, unencodable as UTF-8), deep nesting.
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.integers(min_value=-(10**400), max_value=-(10**300))
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([NOW, NOW + 3600, NOW - 10, 0, -1, 1e308, -1e308, 253402300800])
    | st.text(st.characters(exclude_categories=()), max_size=20)
    | st.sampled_from(["", "api-aud", ISS, "alice@example.com", "\ud800", "a\r\nb", "\x00"])
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
CLAIM_NAMES = [
    "exp",
    "nbf",
    "iat",
    "iss",
    "aud",
    "email",
    "groups",
    "identity_nonce",
    "type",
    "sub",
    "country",
    # Read by edge.access.claims too: the issuer's session id (what a logout
    # revokes), how the user signed in, and the identity provider.
    "sid",
    "amr",
    "idp",
]
_PROPERTY_VERIFIER = verifier()


def sign_claims(payload: dict[str, Any]) -> bytes:
    """A correctly signed token with exactly these claims: PyJWS signs the
    bytes, so PyJWT's own checks on claim types at encoding cannot interfere."""
    body = json.dumps(payload).encode()
    return jwt.api_jws.encode(body, EC_KEY, algorithm="ES256", headers={"kid": KIDS["ES256"]}).encode()


def _usable(ident: Identity) -> None:
    """What the edge does with an identity must work: compare its times,
    send its headers, encode it as JSON (get-identity, the access log), name
    its sign-in in a log line (sid, idp: one line, UTF-8) and revoke it."""
    assert ident.iat >= 0 and ident.exp <= ident.valid_until < float("inf")
    for name, value in ident.add_headers:
        assert isinstance(name, bytes) and isinstance(value, bytes)
    msgspec.json.encode(ident)
    for text in (ident.sid, ident.idp, *ident.amr, *ident.groups, ident.email, ident.sub):
        assert isinstance(text, str)
        text.encode("utf-8")  # a lone surrogate raises
    for text in (ident.sid, ident.idp):
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text), text
    assert ident.session.startswith(SESSION_PREFIX)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(CLAIM_NAMES), JSON_VALUES, max_size=4))
def test_any_claim_value_is_accepted_or_refused_never_an_exception(overrides: dict[str, Any]) -> None:
    _accepted_or_refused(overrides)


def _accepted_or_refused(overrides: dict[str, Any]) -> None:
    token = sign_claims(claims(**overrides))
    for _ in range(2):  # the repeat may come from a cache: it must not raise either
        result = _PROPERTY_VERIFIER.verify(token, NOW)
        assert isinstance(result, (Identity, Refusal))
        if isinstance(result, Identity):
            _usable(result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["sid", "amr", "idp"]), JSON_VALUES | _SCALARS, min_size=1))
def test_any_sign_in_claim_value_is_accepted_or_refused_never_an_exception(overrides: dict[str, Any]) -> None:
    """The claims that name the sign-in and how it was made, each drawn more
    often than among all CLAIM_NAMES: a value the edge cannot use names no
    session or provider (or refuses the token), never a broken log line."""
    _accepted_or_refused(overrides)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku"]), JSON_VALUES, max_size=3))
def test_any_header_value_is_accepted_or_refused_never_an_exception(header: dict[str, Any]) -> None:
    token = unsigned(claims(), {"alg": "ES256", "kid": "ec-1", **header})
    assert isinstance(verifier().verify(token, NOW), Refusal)  # unsigned: never valid


# -- two tokens, one request ------------------------------------------------------

# A second token in Authorization: refused when the verifier would call it
# ours (a trusted iss, or a kid of a trusted key set), else the application's.
OURS, OURS_TOO = mint(), mint(sub="u-bob")
FOREIGN = mint(kid="app-key", key=OTHER_EC_KEY, iss="https://app.internal")


@pytest.mark.parametrize(
    ("cookies", "access", "authorization", "expected"),
    [
        ([b"CF_Authorization=" + OURS], [], [b"Bearer " + OURS_TOO], AMBIGUOUS),
        ([], [OURS], [b"Bearer " + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"bearer  " + OURS_TOO + b" "], AMBIGUOUS),
        ([], [], [b"Bearer " + OURS, b"Bearer " + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"Bearer " + OURS], OURS),
        ([], [], [b"Bearer " + OURS, b"Bearer " + OURS], OURS),
        ([b"CF_Authorization=" + OURS], [], [b"Bearer app-secret"], OURS),
        ([b"CF_Authorization=" + OURS], [], [b"Bearer " + FOREIGN], OURS),
        ([], [], [b"Bearer " + FOREIGN], FOREIGN),  # the only token: verification refuses it
        # However it is spelled: an application splits Authorization on any
        # whitespace and on commas, and may read any scheme's credential.
        ([b"CF_Authorization=" + OURS], [], [b"Bearer\t" + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"bearer " + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"BEARER\t\t" + OURS_TOO + b"\t"], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"Basic YWxp, Bearer " + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"Token x, Bearer " + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"Token x,Bearer " + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"Bearer app-secret," + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"Basic " + OURS_TOO], AMBIGUOUS),  # another scheme
        ([b"CF_Authorization=" + OURS], [], [b"Token " + OURS_TOO], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b'Token token="' + OURS_TOO + b'"'], AMBIGUOUS),  # auth-param
        ([b"CF_Authorization=" + OURS], [], [b'Bearer "' + OURS_TOO + b'"'], AMBIGUOUS),
        ([b"CF_Authorization=" + OURS], [], [b"Basic YWxp", b"Token x, bearer\t" + OURS_TOO], AMBIGUOUS),
        ([], [OURS], [b"Basic YWxp, Bearer " + OURS_TOO], AMBIGUOUS),
        ([], [], [b"Basic YWxp, Bearer " + OURS + b", Bearer " + OURS_TOO], AMBIGUOUS),
        ([], [], [b"Token " + OURS_TOO + b", Bearer " + OURS], AMBIGUOUS),
        # The same token in any spelling is one token; the application's own
        # credentials (no JWT of ours) pass, wherever they are.
        ([b"CF_Authorization=" + OURS], [], [b"Basic YWxp, bearer\t" + OURS], OURS),
        ([b"CF_Authorization=" + OURS], [], [b"Basic YWxp, Bearer " + FOREIGN], OURS),
        ([b"CF_Authorization=" + OURS], [], [b"Bearer\t" + FOREIGN + b", Token x"], OURS),
        ([b"CF_Authorization=" + OURS], [], [b'Token token="' + FOREIGN + b'", Basic YWxp'], OURS),
        ([b"CF_Authorization=" + OURS], [], [b"Bearer app-secret, Basic YWxp\tDigest a=b"], OURS),
        ([], [], [b"Basic YWxp, Bearer " + OURS], OURS),  # the bearer credential, wherever it is
        ([], [], [b"bearer\t" + OURS], OURS),
        ([], [], [b"Token x, Bearer " + FOREIGN], FOREIGN),
        ([], [], [b"Token " + OURS], NO_TOKEN),  # no bearer, no cookie: unauthenticated
    ],
)
def test_a_second_token_in_authorization(
    cookies: list[bytes], access: list[bytes], authorization: list[bytes], expected: bytes | Refusal
) -> None:
    assert extract_token(cookies, access, authorization, verifier().trusts) == expected


def respelled(token: bytes, how: str) -> bytes:
    """`token` as a lenient JWT library would still read it."""
    head, payload, signature = token.split(b".")
    if how == "std-alphabet":  # base64 with + and / where base64url has - and _
        table = bytes.maketrans(b"-_", b"+/")
        return b".".join((head.translate(table), payload.translate(table), signature.translate(table)))
    if how == "padded":
        return b".".join(part + b"=" * (-len(part) % 4 or 4) for part in (head, payload, signature))
    return token + how.encode("latin-1")  # bytes after the signature


# A second token of ours hidden where the split on whitespace and commas does
# not look (found by a review: JWT libraries and frameworks read all of these).
HIDDEN = [
    b"Bearer " + OURS_TOO + b";",
    b"Bearer " + OURS_TOO + b"~",
    b"Bearer " + OURS_TOO + b"!",
    b"Bearer " + OURS_TOO + b";x=y",
    b"Bearer " + respelled(OURS_TOO, "padded"),
    b"Bearer " + respelled(OURS_TOO, "std-alphabet"),
    b"Bearer\xa0" + OURS_TOO,
    b"Bearer\x85" + OURS_TOO,
    b"Bearer " + OURS_TOO + b"\xa0",
    b"Token token=" + OURS_TOO + b";realm=x",
    b"Token token='" + OURS_TOO + b"'",
    b"Bearer:" + OURS_TOO,
    b"JWT " + OURS_TOO,
    b"Basic YWxp" + b"\xa0" + OURS_TOO,
]


@pytest.mark.parametrize("authorization", HIDDEN)
def test_a_second_token_of_ours_is_found_however_it_is_wrapped(authorization: bytes) -> None:
    assert extract_token([b"CF_Authorization=" + OURS], [], [authorization], verifier().trusts) == AMBIGUOUS
    assert extract_token([], [OURS], [authorization], verifier().trusts) == AMBIGUOUS


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer " + OURS + b";",  # the verified token itself, however wrapped, is one token
        b"Token token='" + OURS + b"'",
        b"Bearer\xa0" + OURS,
        b"Bearer " + FOREIGN + b";x=y",  # not ours: the application's own
        b"Basic " + b"a.b." * 8,  # JWS-shaped, not ours
    ],
)
def test_the_same_token_or_a_foreign_one_passes_however_wrapped(authorization: bytes) -> None:
    assert extract_token([b"CF_Authorization=" + OURS], [], [authorization], verifier().trusts) == OURS


def test_too_many_jws_shaped_pieces_are_refused_not_scanned() -> None:
    """Every JWS-shaped piece costs two small decodes: a value made of
    thousands of them is refused (no application credential looks like
    that) rather than scanned (a 16 KiB one took 12.8 ms)."""
    value = b"Basic " + b"a.a.," * 3000
    assert extract_token([b"CF_Authorization=" + OURS], [], [value], verifier().trusts) == AMBIGUOUS
    assert (
        extract_token([b"CF_Authorization=" + OURS], [], [b"Basic " + b"a.a.," * 8], verifier().trusts)
        == OURS
    )


@pytest.mark.parametrize(
    "cookie",
    [
        b"CF_Authorization=" + OURS + b"; theme=dark CF_Authorization=" + OURS_TOO,  # SimpleCookie reads it
        b"theme=dark,CF_Authorization=" + OURS_TOO + b"; CF_Authorization=" + OURS,
        b"CF_Authorization=" + OURS + b"; CF.Authorization=" + OURS_TOO,  # PHP reads CF_Authorization
        b"CF_Authorization=" + OURS + b"; CF Authorization=" + OURS_TOO,
        b"CF_Authorization=" + OURS + b"; CF[Authorization=" + OURS_TOO,
    ],
)
def test_a_cookie_hidden_in_another_pair_is_ambiguous(cookie: bytes) -> None:
    assert extract_token([cookie], [], [], verifier().trusts) == AMBIGUOUS


@pytest.mark.parametrize(
    ("value", "trusted"),
    [
        (OURS, True),
        (mint(exp=NOW - 3600), True),  # expired, still ours: a second token all the same
        (mint(key=OTHER_EC_KEY), True),  # a forgery naming our iss
        (mint(kid="unknown"), True),
        (mint(iss="https://app.internal"), True),  # another iss, but one of our kids
        (unsigned({"iss": ISS}, {"alg": "none"}), True),
        (FOREIGN, False),
        (unsigned({"iss": 7}, {"alg": "none", "kid": ["ec-1"]}), False),
        (unsigned({"iss": "https://app.internal"}, {"alg": "none", "kid": {"a": 1}}), False),
        (b"app-secret", False),
        (b"a.b.c", False),
        (b"e30.e30.", False),
        (b"W10.W10.", False),  # arrays, not objects
        (b"\xff\xfe.\x00.", False),
    ],
)
def test_which_authorization_values_are_ours(value: bytes, trusted: bool) -> None:
    assert verifier().trusts(value) is trusted


def test_deeply_nested_authorization_is_not_ours() -> None:
    nested = b64(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert verifier().trusts(nested + b"." + nested + b".") is False


# JSON texts that Python's json module (PyJWT's parser) reads and msgspec
# refuses or reads otherwise: an issuer's claims hidden behind each must still
# be "ours", since PyJWT verifies them (and so may the application).
_CLAIMS_TEXT = json.dumps(claims()).encode()


def _quirk(extra: bytes) -> bytes:
    """The claims with `extra` members spliced in after the opening brace."""
    return b"{" + extra + b", " + _CLAIMS_TEXT[1:]


QUIRKY_PAYLOADS = {
    "nan": _quirk(b'"x": NaN'),
    "infinity": _quirk(b'"x": Infinity'),
    "minus-infinity": _quirk(b'"x": -Infinity'),
    "lone-surrogate": _quirk(b'"x": "\\ud800"'),
    "utf8-bom": b"\xef\xbb\xbf" + _CLAIMS_TEXT,
    "utf16": _CLAIMS_TEXT.decode().encode("utf-16"),
    "utf32-le": _CLAIMS_TEXT.decode().encode("utf-32-le"),
    "duplicate-iss-int-first": _quirk(b'"iss": 7'),
    "duplicate-iss-list-first": _quirk(b'"iss": ["https://app.internal"]'),
    "whitespace": b" \r\n\t" + _CLAIMS_TEXT.replace(b": ", b" :\n\t ").replace(b", ", b"\r\n,") + b"\n ",
}


def sign_text(payload: bytes, header: dict[str, Any] | None = None) -> bytes:
    """An HS256 token signed over exactly these payload bytes."""
    return jwt.api_jws.encode(payload, HS_SECRET.encode(), algorithm="HS256", headers=header).encode()


@pytest.mark.parametrize("payload", QUIRKY_PAYLOADS.values(), ids=QUIRKY_PAYLOADS.keys())
def test_a_trusted_iss_behind_a_json_quirk_is_ours(payload: bytes) -> None:
    v = hs_verifier()  # a secret issuer: no kid to recognise, only the iss
    token = sign_text(payload)
    assert isinstance(v.verify(token, NOW), Identity)  # PyJWT reads it, and so does the edge
    assert v.trusts(token) is True
    good = sign_text(_CLAIMS_TEXT)
    assert extract_token([b"CF_Authorization=" + good], [], [b"Bearer " + token], v.trusts) is AMBIGUOUS


@pytest.mark.parametrize(
    "header",
    [b'{"alg": "none", "kid": "ec-1", "x": NaN}', b'\xef\xbb\xbf{"alg": "none", "kid": "ec-1"}'],
    ids=["nan", "utf8-bom"],
)
def test_a_trusted_kid_behind_a_json_quirk_is_ours(header: bytes) -> None:
    value = b64(header) + b"." + b64(json.dumps({"iss": "https://app.internal"}).encode()) + b"."
    assert verifier().trusts(value) is True


_WS = st.text(alphabet=" \t\r\n", max_size=3)
# Member values as JSON text: what json.dumps writes and what it never does.
_VALUE_TEXTS = (
    st.sampled_from(
        [
            json.dumps(ISS),
            '"https://app.internal"',
            "NaN",
            "Infinity",
            "-Infinity",
            '"\\ud800"',
            '"a\\udfffb"',
            "1e999",
            "-0",
            "null",
            "7",
            "true",
            "[]",
            '["x", {}]',
            "{}",
            "1" + "0" * 30,
        ]
    )
    | st.builds(json.dumps, st.text(max_size=8))
    | st.builds(str, st.integers())
)
_KEY_TEXTS = st.sampled_from(['"iss"', '"\\u0069ss"', '"aud"', '"x"', '"kid"'])


@st.composite
def payload_texts(draw: st.DrawFn) -> bytes:
    """A JSON object as text (duplicate keys, any whitespace, non-standard
    numbers, surrogate escapes), then encoded as json.loads detects it."""
    members = draw(st.lists(st.tuples(_KEY_TEXTS, _VALUE_TEXTS), max_size=5))
    if draw(st.booleans()):  # often our iss last (the one json.loads keeps), quirks before it
        members.append(('"iss"', json.dumps(ISS)))
    parts = [f"{draw(_WS)}{k}{draw(_WS)}:{draw(_WS)}{v}{draw(_WS)}" for k, v in members]
    text = draw(_WS) + "{" + ",".join(parts) + draw(_WS) + "}" + draw(_WS)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32-be"]))
    return text.encode(encoding, "surrogatepass")


def _pyjwt_iss(token: bytes) -> Any:
    """The iss PyJWT reads in `token`, verifying nothing (None if it refuses)."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None


@settings(max_examples=1000, deadline=None)
@given(payload_texts(), st.sampled_from([b"", b"=="]))
def test_whatever_pyjwt_reads_as_a_trusted_iss_is_ours(payload: bytes, padding: bytes) -> None:
    v = _PROPERTY_VERIFIER
    token = b64(b'{"alg":"none"}') + b"." + b64(payload) + padding[: -len(b64(payload)) % 4] + b".sig"
    raw = json.loads(payload) if _loads_ok(payload) else None  # as PyJWT's _decode_payload reads it
    trusted_iss = (isinstance(raw, dict) and raw.get("iss") == ISS) or _pyjwt_iss(token) == ISS
    if trusted_iss:
        assert v.trusts(token) is True
    assert isinstance(v.trusts(token), bool)


def _loads_ok(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.binary(max_size=200)
        | st.builds(lambda h, p: b"Bearer " + b64(h) + b"." + b64(p) + b".", st.binary(), st.binary())
        | st.builds(
            lambda h, p: b"Bearer " + b64(json.dumps(h).encode()) + b"." + b64(json.dumps(p).encode()) + b".",
            st.dictionaries(st.sampled_from(["alg", "kid"]), st.text() | st.integers() | st.none()),
            st.dictionaries(st.sampled_from(["iss", "aud"]), st.text() | st.integers() | st.none()),
        ),
        max_size=3,
    )
)
def test_any_authorization_value_never_raises(authorizations: list[bytes]) -> None:
    v = _PROPERTY_VERIFIER
    result = extract_token([b"CF_Authorization=" + OURS], [], authorizations, v.trusts)
    assert result == OURS or result is AMBIGUOUS
    assert isinstance(extract_token([], [], authorizations, v.trusts), (bytes, Refusal))


# -- caches --------------------------------------------------------------------------


def test_verified_token_is_cached_until_exp() -> None:
    v = verifier()
    token = mint(exp=NOW + 100)
    first = v.verify(token, NOW)
    assert isinstance(first, Identity)
    assert v.verify(token, NOW + 50) is first  # a dict lookup, no signature check
    late = v.verify(token, NOW + 100 + 61)  # past exp + leeway
    assert isinstance(late, Refusal) and late.reason == "expired"
    assert token not in v.cache


def test_cache_is_bounded_oldest_first() -> None:
    keys, _ = parse_jwks(default_jwks())
    v = Verifier([IssuerKeys(ISS, ["ES256"], 60, KeySet("t", keys), None)], limit=3)
    tokens = [mint(sub=f"u{i}") for i in range(5)]
    for token in tokens:
        assert isinstance(v.verify(token, NOW), Identity)
    assert list(v.cache) == tokens[2:]


def test_permanent_failures_are_cached_temporary_ones_not() -> None:
    v = verifier()
    forged = mint(key=OTHER_EC_KEY)
    first = v.verify(forged, NOW)
    assert v.verify(forged, NOW) is first
    assert forged in v.failures
    early = mint(nbf=NOW + 120)
    assert isinstance(v.verify(early, NOW), Refusal)
    assert early not in v.failures
    assert isinstance(v.verify(early, NOW + 120), Identity)  # becomes valid later


def test_removing_a_key_revokes_its_cached_tokens() -> None:
    keys, _ = parse_jwks(jwks(public_jwk(EC_KEY, "ec-1"), public_jwk(RSA_KEY, "rsa-1")))
    ks = KeySet("https://idp/certs", keys, remote=True)
    v = Verifier([IssuerKeys(ISS, ["ES256", "RS256"], 60, ks, None)])
    token = mint("ES256")
    assert isinstance(v.verify(token, NOW), Identity)
    ks.update(jwks(public_jwk(RSA_KEY, "rsa-1")), NOW)
    result = v.verify(token, NOW)
    assert isinstance(result, Refusal) and "unknown kid" in result.reason


def test_refetch_keeping_the_same_keys_keeps_the_cache() -> None:
    body = jwks(public_jwk(EC_KEY, "ec-1"))
    keys, _ = parse_jwks(body)
    ks = KeySet("https://idp/certs", keys, remote=True)
    v = Verifier([IssuerKeys(ISS, ["ES256"], 60, ks, None)])
    token = mint("ES256")
    first = v.verify(token, NOW)
    ks.update(body, NOW + 400)
    assert v.verify(token, NOW) is first


# -- key rotation, seen by the verifier (key sets: test_keysets.py) ----------------


def test_unknown_kid_flags_a_refetch_then_rotation_is_honoured() -> None:
    ks = KeySet("https://idp/certs", remote=True)
    ks.update(jwks(public_jwk(EC_KEY, "old")), NOW - 100)
    ks.claim_fetch(NOW - 100 + REFRESH_INTERVAL + 1)  # consume the initial state
    v = Verifier([IssuerKeys(ISS, ["ES256", "RS256"], 60, ks, None)])
    old = mint("ES256", kid="old")
    new = mint("RS256", kid="new")
    assert isinstance(v.verify(old, NOW), Identity)
    assert isinstance(v.verify(new, NOW), Refusal)
    assert ks.wanted
    # The issuer now publishes the new key and still the previous one.
    ks.update(jwks(public_jwk(RSA_KEY, "new"), public_jwk(EC_KEY, "old")), NOW)
    assert isinstance(v.verify(new, NOW), Identity)
    assert isinstance(v.verify(old, NOW), Identity)


# -- how the user signed in: amr and idp ---------------------------------------------


@pytest.mark.parametrize(
    ("extra", "amr", "idp"),
    [
        ({}, frozenset(), ""),
        ({"amr": ["pwd", "mfa"], "idp": {"id": "sso", "type": "oidc"}}, frozenset({"pwd", "mfa"}), "sso"),
        ({"amr": "hwk"}, frozenset({"hwk"}), ""),
        # an idp of another shape names no provider (login_method never matches), the token stays usable
        ({"idp": "sso"}, frozenset(), ""),
        ({"idp": {"id": 7}}, frozenset(), ""),
        ({"idp": {"id": "a\nb"}}, frozenset(), ""),
    ],
)
def test_amr_and_idp(extra: dict[str, Any], amr: frozenset[str], idp: str) -> None:
    ident = verifier().verify(mint(**extra), NOW)
    assert isinstance(ident, Identity)
    assert (ident.amr, ident.idp) == (amr, idp)


def test_amr_of_another_type_is_refused_like_groups() -> None:
    refusal = verifier().verify(mint(amr=[1, 2]), NOW)
    assert not isinstance(refusal, Identity)
    assert refusal.reason == "amr is not a string or a list of strings"


# -- the sign-in a token belongs to: what a logout revokes ---------------------------


@pytest.mark.parametrize(
    ("extra", "kind", "sid"),
    [
        (
            {"identity_nonce": "n1", "sid": "s1"},
            "nonce",
            "s1",
        ),  # the nonce first: keys stored today still match
        ({"identity_nonce": "n1"}, "nonce", ""),
        ({"identity_nonce": DROP, "sid": "s1"}, "sid", "s1"),  # most OIDC providers
        ({"identity_nonce": "", "sid": "s1"}, "sid", "s1"),
        ({"identity_nonce": DROP}, "token", ""),
        # A sid the edge cannot use names no session: the token stays usable, revocable on its own.
        ({"identity_nonce": DROP, "sid": 7}, "token", ""),
        ({"identity_nonce": DROP, "sid": "a\nb"}, "token", ""),
        ({"identity_nonce": DROP, "sid": "\ud800"}, "token", ""),
        ({"identity_nonce": DROP, "sid": ""}, "token", ""),
    ],
)
def test_every_token_has_a_session_key(extra: dict[str, Any], kind: str, sid: str) -> None:
    token = mint(**extra)
    ident = verifier().verify(token, NOW)
    assert isinstance(ident, Identity)
    expected = {"nonce": session_key(ISS, "n1"), "sid": sid_key(ISS, "s1"), "token": token_key(ISS, token)}
    assert ident.session == expected[kind]
    assert ident.sid == sid
