"""Verified claims read into an Identity, or a Refusal saying why not.

Invariants:
- Time and type checks on the claims are ours (against the caller's clock,
  and stricter than PyJWT's: no numeric strings). Nothing a token carries
  raises: every value is either usable or a Refusal.
- The JWT time checks (`check_times`) are the ones every token the edge
  reads goes through: user tokens (edge.access.tokens), ID tokens in
  edge.login.oidc.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from edge.access.headers import JWT_ASSERTION, USER_EMAIL, Header
from edge.access.revocation import sign_in_key

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# The time claims are epoch seconds within 1970-01-01 .. 9999-12-31T23:59:59Z
# (what datetime can represent): outside it a value is no time any issuer
# means, and from some size on it cannot even be made a float.
MAX_TIME = 253_402_300_799  # seconds


class Refusal(msgspec.Struct, frozen=True, gc=False):
    """Why a request carries no usable token."""

    reason: str
    permanent: bool = False  # the same token will always fail (cacheable)
    ambiguous: bool = False  # two different tokens: refused outright


# The one refusal of a token past its exp (+ leeway): decide tells the client
# "session expired" for this instance alone, as it tells "login required" for
# tokens.NO_TOKEN, rather than by the text of a reason.
EXPIRED = Refusal("expired", permanent=True)


class Identity(msgspec.Struct, frozen=True):
    """The verified claims of one user token."""

    token: bytes
    iss: str
    aud: frozenset[str]
    exp: float
    iat: float
    valid_until: float = 0.0  # exp + the issuer's leeway: accepted until then
    email: str = ""
    sub: str = ""
    groups: frozenset[str] = frozenset()
    type: str = ""
    country: str = ""
    identity_nonce: str = ""
    # How the user signed in: the `amr` values (RFC 8176: pwd, mfa, otp, hwk,
    # ...) and the id of the identity provider (the `idp` claim's "id"; ""
    # when the token names none, and then no login_method rule matches).
    amr: frozenset[str] = frozenset()
    idp: str = ""
    # Derived once per token, so policies, forwarding and revocation only look them up.
    # The issuer's own session id (OpenID Connect's `sid`), "" when absent or unusable.
    sid: str = ""
    # The sign-in's revocation key (revocation.sign_in_key: by identity_nonce,
    # else sid, else this token); "" only in an Identity built by hand.
    session: str = ""
    email_lower: str = ""
    email_domain: str = ""
    add_headers: tuple[Header, ...] = ()


def _number(claims: Mapping[str, Any], name: str) -> float | Refusal | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Refusal(f"{name} is not a number", permanent=True)
    # Compared before any conversion: an int of hundreds of digits has no
    # float, and NaN fails every comparison, so both land here.
    if not 0 <= value <= MAX_TIME:
        return Refusal(f"{name} is out of range", permanent=True)
    return float(value)


def _text(claims: Mapping[str, Any], name: str) -> str | Refusal:
    value = claims.get(name, "")
    if not isinstance(value, str):
        return Refusal(f"{name} is not a string", permanent=True)
    if _CONTROL_RE.search(value):
        return Refusal(f"{name} contains control characters", permanent=True)
    if not _encodable(value):
        return Refusal(f"{name} is not valid Unicode", permanent=True)
    return value


def _strings(claims: Mapping[str, Any], name: str) -> frozenset[str] | Refusal:
    value = claims.get(name)
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return Refusal(f"{name} is not a string or a list of strings", permanent=True)
    if not all(_encodable(v) for v in value):
        return Refusal(f"{name} is not valid Unicode", permanent=True)
    return frozenset(value)


def _encodable(value: str) -> bool:
    """Whether `value` has a UTF-8 form: JSON's \\u escapes can spell lone
    surrogates, which no header, log line or JSON answer can carry."""
    return value.isascii() or _SURROGATE_RE.search(value) is None


def check_times(claims: Mapping[str, Any], now: float, leeway: float) -> tuple[float, float] | Refusal:
    """(exp, iat) of claims whose time claims are usable at `now`, else why
    not: exp and iat required, nbf optional, each a number in 0..MAX_TIME,
    and `leeway` seconds of clock skew allowed either way."""
    values: dict[str, float | None] = {}
    for name in ("exp", "nbf", "iat"):
        value = _number(claims, name)
        if isinstance(value, Refusal):
            return value
        values[name] = value
    exp, nbf, iat = values["exp"], values["nbf"], values["iat"]
    if exp is None or iat is None:
        return Refusal("missing exp or iat", permanent=True)
    if exp <= now - leeway:
        return EXPIRED
    if nbf is not None and nbf > now + leeway:
        return Refusal("not yet valid (nbf in the future)")
    if iat > now + leeway:
        return Refusal("issued in the future (iat)")
    return exp, iat


def identity_from_claims(
    token: bytes, claims: Mapping[str, Any], now: float, leeway: float
) -> Identity | Refusal:
    """Type and time checks on verified claims, then the Identity."""
    times = check_times(claims, now, leeway)
    if isinstance(times, Refusal):
        return times
    aud = _strings(claims, "aud")
    if isinstance(aud, Refusal) or not aud:
        return aud if isinstance(aud, Refusal) else Refusal("aud is empty", permanent=True)
    groups = _strings(claims, "groups")
    if isinstance(groups, Refusal):
        return groups
    amr = _strings(claims, "amr")
    if isinstance(amr, Refusal):
        return amr
    texts: dict[str, str] = {"idp": _idp(claims), "sid": _sid(claims)}
    for name in ("email", "sub", "type", "country", "identity_nonce", "iss"):
        value = _text(claims, name)
        if isinstance(value, Refusal):
            return value
        texts[name] = value
    return _identity(token, aud, times, groups, amr, texts, leeway)


def _idp(claims: Mapping[str, Any]) -> str:
    """The identity provider's id: the `idp` claim is an object with an
    "id" (as in Cloudflare's identity), which the edge's own tokens carry.
    Any other shape names no provider: login_method rules then never match,
    while the token stays usable for every other rule."""
    value = claims.get("idp")
    ident = value.get("id") if isinstance(value, dict) else None
    if not isinstance(ident, str) or _CONTROL_RE.search(ident) or not _encodable(ident):
        return ""
    return ident


def _sid(claims: Mapping[str, Any]) -> str:
    """The issuer's session id. A value the edge cannot use (another type,
    control characters, a lone surrogate) names no session: the token stays
    usable, and a logout revokes it alone (revocation.token_key)."""
    value = claims.get("sid")
    if not isinstance(value, str) or _CONTROL_RE.search(value) or not _encodable(value):
        return ""
    return value


def _identity(
    token: bytes,
    aud: frozenset[str],
    times: tuple[float, float],
    groups: frozenset[str],
    amr: frozenset[str],
    texts: dict[str, str],
    leeway: float,
) -> Identity:
    email = texts["email"]
    headers = [(JWT_ASSERTION, token)]
    if email:
        headers.append((USER_EMAIL, email.encode("utf-8")))
    return Identity(
        token=token,
        iss=texts["iss"],
        aud=aud,
        exp=times[0],
        iat=times[1],
        valid_until=times[0] + leeway,
        email=email,
        sub=texts["sub"],
        groups=groups,
        type=texts["type"],
        country=texts["country"],
        identity_nonce=texts["identity_nonce"],
        amr=amr,
        idp=texts["idp"],
        sid=texts["sid"],
        session=sign_in_key(texts["iss"], texts["identity_nonce"], texts["sid"], token),
        email_lower=email.lower(),
        email_domain=email.rpartition("@")[2].lower(),
        add_headers=tuple(headers),
    )
