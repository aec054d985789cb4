"""User tokens: where they are found, how they are verified, and the key sets.

Invariants:
- Verification pins the algorithms per issuer *before* PyJWT sees the token,
  chooses the key by ``kid`` from the issuer's own key set, and checks that the
  key's algorithm is the token's; time and type checks on the claims are ours
  (against the caller's clock, and stricter than PyJWT's: no numeric strings).
- A verified token is cached (a BoundedCache of CACHE_ENTRIES, keyed by the
  token's bytes) until its ``exp`` (+ leeway): every hit re-checks that
  deadline against the caller's `now`, and that the key that verified it is
  still the one its key set holds under that kid, so a key removed from the
  JWKS revokes its tokens at once. Revocation and policies (client IP...)
  are checked by the caller on every request, never cached here.
- Permanent failures (bad signature, malformed, wrong issuer, a claim value
  the edge cannot use, expiry: anything the same token fails at every later
  `now`) are cached too, so a flood of the same forged token costs one
  signature check. A failure that time can cure (nbf, iat in the future,
  an unknown kid) is never cached. Nothing a token carries raises: every
  value is either usable or a Refusal.
- `Verifier.trusts` only peeks (no signature check, no cache): it tells
  whether a second value claims to be one of our tokens, so that a request
  carrying two identities is refused rather than half-forwarded.
- A `KeySet` is only mutated by `update`/`fetch_failed`, called by the I/O
  shell; a failed or empty fetch keeps the keys already held. The edge's
  remote issuers and the OIDC client (edge.login.oidc) share this one
  implementation, each with its own refetch and refresh intervals.
- The JWT time checks (`check_times`) are the ones every token the edge
  reads goes through: user tokens here, ID tokens in edge.login.oidc.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt
import msgspec
from jwt.types import Options

from edge.access.cache import BoundedCache
from edge.access.headers import AUTH_COOKIE_BYTES, JWT_ASSERTION, USER_EMAIL, Header
from edge.access.revocation import session_key

_COOKIE_PREFIX = AUTH_COOKIE_BYTES + b"="
_PREFIX_LENGTH = len(_COOKIE_PREFIX)
# A value starting or ending with one of these needs trimming (rare).
_UNUSUAL = frozenset({b" ", b"\t", b'"'})
_OWS = b" \t"
_SEMICOLON = ord(";")
# The largest token considered: a request head is at most 16 KiB by default
# (server.max_header_bytes), so anything larger cannot be a real cookie.
MAX_TOKEN_BYTES = 16 * 1024
# Verified tokens and permanent failures, each: enough for every active user
# of a large deployment, small enough (a few MiB) for each worker to hold.
CACHE_ENTRIES = 10_000
# An unknown kid asks the shell for a JWKS refetch at most this often, so a
# stream of forged kids cannot turn the edge into a load generator.
REFETCH_MIN_INTERVAL = 30.0  # seconds
# Remote key sets are refreshed this often even without unknown kids, so a
# key removed by the issuer stops being honoured.
REFRESH_INTERVAL = 300.0  # seconds

# Compact JWS (RFC 7515 7.1): three base64url segments, the last may be empty
# only for alg "none" (refused later, with a clear reason).
_JWS_RE = re.compile(rb"^[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]*={0,2}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# The time claims are epoch seconds within 1970-01-01 .. 9999-12-31T23:59:59Z
# (what datetime can represent): outside it a value is no time any issuer
# means, and from some size on it cannot even be made a float.
MAX_TIME = 253_402_300_799  # seconds

# PyJWT checks the signature, the issuer and the presence of the required
# claims; the time claims are checked here against the caller's clock.
_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "require": ["exp", "iat", "iss", "aud"],
    "verify_aud": False,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_iss": True,
    "enforce_minimum_key_length": True,
}
_PEEK_OPTIONS: Options = {"verify_signature": False}


class Refusal(msgspec.Struct, frozen=True, gc=False):
    """Why a request carries no usable token."""

    reason: str
    permanent: bool = False  # the same token will always fail (cacheable)
    ambiguous: bool = False  # two different tokens: refused outright


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
    session: str = ""  # the sign-in's revocation key (issuer + identity_nonce); "" without a nonce
    email_lower: str = ""
    email_domain: str = ""
    add_headers: tuple[Header, ...] = ()


NO_TOKEN = Refusal("no token")
AMBIGUOUS = Refusal("ambiguous: two different tokens", permanent=True, ambiguous=True)


# -- extraction --------------------------------------------------------------


def cookie_tokens(cookie_headers: Sequence[bytes]) -> list[bytes]:
    """Every non-empty CF_Authorization value in the Cookie headers.

    A find() per header rather than splitting every pair: the request path
    pays for the one cookie it wants, not for all of them.
    """
    found: list[bytes] = []
    for header in cookie_headers:
        at = header.find(_COOKIE_PREFIX)
        while at >= 0:
            if at == 0 or _starts_pair(header, at):
                start = at + _PREFIX_LENGTH
                end = header.find(b";", start)
                value = header[start:end] if end >= 0 else header[start:]
                if value[:1] in _UNUSUAL or value[-1:] in _UNUSUAL:
                    value = value.strip().strip(b'"')
                if value:
                    found.append(value)
            at = header.find(_COOKIE_PREFIX, at + 1)
    return found


def _starts_pair(header: bytes, at: int) -> bool:
    """Whether position `at` begins a cookie pair (not the tail of another
    name like ``XCF_Authorization``)."""
    i = at - 1
    while i >= 0 and header[i] in _OWS:
        i -= 1
    return i < 0 or header[i] == _SEMICOLON


def extract_token(
    cookies: Sequence[bytes],
    access_tokens: Sequence[bytes],
    authorizations: Sequence[bytes],
    trusted: Callable[[bytes], bool],
) -> bytes | Refusal:
    """The one token of a request: CF_Authorization cookie, then the
    cf-access-token header, then ``Authorization: Bearer``.

    Two different values among the cookies and cf-access-token headers are
    refused as ambiguous, and so is a bearer value that differs from the
    token chosen when `trusted` (`Verifier.trusts`) calls it one of ours:
    the upstream would see a second identity. Any other ``Authorization``
    is the application's own credential and never conflicts.
    """
    candidates = cookie_tokens(cookies) if cookies else []
    for value in access_tokens:
        value = value.strip()
        if value:
            candidates.append(value)
    bearers = _bearers(authorizations) if authorizations else []
    if not candidates:
        if not bearers:
            return NO_TOKEN
        candidates = bearers[:1]
    first = candidates[0]
    if len(candidates) > 1 and candidates.count(first) != len(candidates):
        return AMBIGUOUS
    if any(b != first and trusted(b) for b in bearers):
        return AMBIGUOUS
    return first


def _bearers(authorizations: Sequence[bytes]) -> list[bytes]:
    found: list[bytes] = []
    for value in authorizations:
        scheme, _, rest = value.strip().partition(b" ")
        rest = rest.strip()
        if scheme.lower() == b"bearer" and rest:
            found.append(rest)
    return found


class _PeekHeader(msgspec.Struct, gc=False):
    kid: str | None = None


class _PeekClaims(msgspec.Struct, gc=False):
    iss: str | None = None


_PEEK_HEADER = msgspec.json.Decoder(_PeekHeader)
_PEEK_CLAIMS = msgspec.json.Decoder(_PeekClaims)


def _peek(segment: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    """One unverified JWS segment decoded, or None for anything that is not
    a JSON object of the expected shape (never raises)."""
    try:
        return decoder.decode(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # binascii.Error and msgspec.DecodeError are ValueErrors
        return None


# -- key sets ---------------------------------------------------------------


class JwksError(ValueError):
    """A JWKS document that cannot be used at all."""


def parse_jwks(body: bytes | str) -> tuple[dict[str, jwt.PyJWK], list[str]]:
    """Signature keys by kid, and one note per key left out (and why).

    Keys whose ``use`` is not ``sig`` or whose ``key_ops`` lack ``verify`` are
    left out (PyJWT does not look at either), as are private keys, keys
    without a kid and keys PyJWT considers too short.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError('Expected a JSON object with a "keys" array')
    keys: dict[str, jwt.PyJWK] = {}
    notes: list[str] = []
    for i, jwk in enumerate(doc["keys"]):
        key, note = _signature_key(jwk)
        if key is None:
            notes.append(f"keys[{i}]: {note}")
            continue
        kid = jwk["kid"]
        if kid in keys:
            notes.append(f"keys[{i}]: kid {kid!r} appears twice; the first is used")
            continue
        keys[kid] = key
    return keys, notes


def _signature_key(jwk: Any) -> tuple[jwt.PyJWK | None, str]:
    if not isinstance(jwk, dict):
        return None, "not a JSON object"
    if jwk.get("use", "sig") != "sig":
        return None, f"use is {jwk.get('use')!r}, not 'sig'"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None, "key_ops does not include 'verify'"
    if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        return None, "no kid"
    if "d" in jwk or jwk.get("kty") == "oct":
        return None, f"kid {jwk['kid']!r} is secret or private key material; publish only public keys"
    try:
        key = jwt.PyJWK(jwk)
    except jwt.PyJWTError as exc:
        return None, f"kid {jwk['kid']!r}: {exc}"
    weak = key.Algorithm.check_key_length(key.key)
    if weak:
        return None, f"kid {jwk['kid']!r}: {weak}"
    return key, ""


def _canonical(key: jwt.PyJWK) -> str:
    return json.dumps(key._jwk_data, sort_keys=True)


class KeySet:
    """The signature keys of one issuer, by kid.

    For a ``jwks_url`` the I/O shell polls `claim_fetch(now)`; when it returns
    True the shell fetches the URL and calls `update(body, now)` or, on any
    failure, `fetch_failed(now)`. Nothing here performs I/O.
    """

    __slots__ = (
        "source",
        "keys",
        "remote",
        "wanted",
        "last_attempt",
        "last_success",
        "last_error",
        "min_interval",
        "refresh",
    )

    def __init__(
        self,
        source: str,
        keys: Mapping[str, jwt.PyJWK] | None = None,
        remote: bool = False,
        *,
        min_interval: float = REFETCH_MIN_INTERVAL,
        refresh: float = REFRESH_INTERVAL,
    ) -> None:
        self.source = source
        self.keys: dict[str, jwt.PyJWK] = dict(keys or {})
        self.remote = remote
        self.min_interval = min_interval  # seconds between two fetch attempts, at least
        self.refresh = refresh  # seconds after a successful fetch before the next one
        self.wanted = remote and not self.keys  # a remote set starts empty: fetch at once
        self.last_attempt = -math.inf
        self.last_success = -math.inf
        self.last_error = ""

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self.keys.get(kid)

    def note_unknown_kid(self) -> None:
        """A token named a kid we do not hold: maybe the issuer rotated."""
        if self.remote:
            self.wanted = True

    def claim_fetch(self, now: float) -> bool:
        """Whether the shell should fetch now; claiming it starts the
        rate-limit window, so concurrent pollers fetch once."""
        if not self.remote or now - self.last_attempt < self.min_interval:
            return False
        if not (self.wanted or now - self.last_success >= self.refresh):
            return False
        self.last_attempt = now
        self.wanted = False
        return True

    def update(self, body: bytes, now: float) -> list[str]:
        """Replace the keys with a fetched JWKS; returns notes on keys left
        out. Raises JwksError (keeping the old keys) when nothing is usable."""
        self.last_attempt = now
        try:
            keys, notes = parse_jwks(body)
        except JwksError as exc:
            self.last_error = str(exc)
            raise
        if not keys:
            self.last_error = "no usable signature key"
            raise JwksError(f"{self.last_error}: {'; '.join(notes) or 'empty keys array'}")
        # Identical keys keep their object, so tokens cached under them stay valid.
        held = {_canonical(k): k for k in self.keys.values()}
        self.keys = {kid: held.get(_canonical(k), k) for kid, k in keys.items()}
        self.last_success = now
        self.last_error = ""
        return notes

    def fetch_failed(self, now: float, error: str = "fetch failed") -> None:
        self.last_attempt = now
        self.last_error = error

    def inherit(self, old: KeySet) -> None:
        """After a reload: start from the keys `old` fetched from the same
        URL. A fetch is still wanted at once, but until one succeeds tokens
        keep verifying: a JWKS URL that is down (or slow) must not log
        everyone out on SIGHUP."""
        if self.remote and not self.keys and old.remote and old.source == self.source and old.keys:
            self.keys = dict(old.keys)
            self.last_success = old.last_success


# -- verification -------------------------------------------------------------


class IssuerKeys:
    """One configured issuer: pinned algorithms, leeway, the longest token
    lifetime (exp - iat) it may grant, and its keys."""

    __slots__ = ("iss", "algorithms", "leeway", "keys", "secret", "max_lifetime")

    def __init__(
        self,
        iss: str,
        algorithms: Sequence[str],
        leeway: float,
        keys: KeySet | None,
        secret: bytes | None,
        max_lifetime: float = math.inf,
    ) -> None:
        self.iss = iss
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self.keys = keys
        self.secret = secret
        self.max_lifetime = max_lifetime

    def key_for(self, alg: str, kid: Any) -> jwt.PyJWK | bytes | Refusal:
        if self.secret is not None:
            return self.secret
        assert self.keys is not None
        if not isinstance(kid, str):
            return Refusal("token has no kid", permanent=True)
        key = self.keys.get(kid)
        if key is None:
            self.keys.note_unknown_kid()
            return Refusal(f"unknown kid {kid[:64]!r}")
        if key.algorithm_name != alg:
            return Refusal(
                f"alg {alg} does not match key {kid[:64]!r} ({key.algorithm_name})", permanent=True
            )
        return key


class _Entry(msgspec.Struct, gc=False):
    identity: Identity
    deadline: float  # exp + leeway
    keys: KeySet | None
    kid: str
    key: object


class Verifier:
    """Verifies tokens against the configured issuers, with caches (see the
    module invariants for what a hit still checks)."""

    __slots__ = ("issuers", "cache", "failures", "hits", "misses", "verified", "refused")

    def __init__(self, issuers: Sequence[IssuerKeys], limit: int = CACHE_ENTRIES) -> None:
        self.issuers = {i.iss: i for i in issuers}
        self.cache: BoundedCache[bytes, _Entry] = BoundedCache(limit)
        self.failures: BoundedCache[bytes, Refusal] = BoundedCache(limit)
        # Counts for the metrics (plain integers, read by the runtime): a hit
        # is a valid token served from the cache; `verified` and `refused`
        # are the outcomes of the rest.
        self.hits = 0
        self.misses = 0
        self.verified = 0
        self.refused = 0

    def trusts(self, value: bytes) -> bool:
        """Whether `value` claims to be a token of ours, unverified: a
        compact JWS whose header names a kid some trusted key set holds, or
        whose payload names a trusted iss. Cheap (two small decodes, no
        signature check) and total: garbage is simply not ours."""
        if len(value) > MAX_TOKEN_BYTES or _JWS_RE.match(value) is None:
            return False
        head, payload, _ = value.split(b".")
        header: _PeekHeader | None = _peek(head, _PEEK_HEADER)
        if header is not None and header.kid is not None:
            for issuer in self.issuers.values():
                if issuer.keys is not None and header.kid in issuer.keys.keys:
                    return True
        claims: _PeekClaims | None = _peek(payload, _PEEK_CLAIMS)
        return claims is not None and claims.iss in self.issuers

    def verify(self, token: bytes, now: float) -> Identity | Refusal:
        entry = self.cache.get(token)
        if entry is not None:
            if now < entry.deadline and (entry.keys is None or entry.keys.keys.get(entry.kid) is entry.key):
                self.hits += 1
                return entry.identity
            self.cache.discard(token)
        self.misses += 1
        failure = self.failures.get(token)
        if failure is not None:
            self.refused += 1
            return failure
        result = self._verify_slow(token, now)
        if isinstance(result, Refusal):
            self.refused += 1
        else:
            self.verified += 1
        return result

    def _verify_slow(self, token: bytes, now: float) -> Identity | Refusal:
        if len(token) > MAX_TOKEN_BYTES or _JWS_RE.match(token) is None:
            return self._fail(token, Refusal("malformed token", permanent=True))
        try:
            peek = jwt.decode_complete(token, options=_PEEK_OPTIONS)
        except jwt.PyJWTError as exc:
            return self._fail(token, Refusal(f"malformed token: {exc}", permanent=True))
        header, claims = peek["header"], peek["payload"]
        issuer = self.issuers.get(claims.get("iss")) if isinstance(claims.get("iss"), str) else None
        if issuer is None:
            return self._fail(
                token, Refusal(f"unknown issuer {str(claims.get('iss'))[:100]!r}", permanent=True)
            )
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            return self._fail(
                token, Refusal(f"alg {str(alg)[:20]!r} not allowed for this issuer", permanent=True)
            )
        key = issuer.key_for(alg, header.get("kid"))
        if isinstance(key, Refusal):
            return self._fail(token, key)
        return self._check(token, issuer, key, header.get("kid"), now)

    def _check(
        self, token: bytes, issuer: IssuerKeys, key: jwt.PyJWK | bytes, kid: Any, now: float
    ) -> Identity | Refusal:
        try:
            claims = jwt.decode(
                token, key, algorithms=sorted(issuer.algorithms), issuer=issuer.iss, options=_DECODE_OPTIONS
            )
        except jwt.InvalidSignatureError:
            return self._fail(token, Refusal("bad signature", permanent=True))
        except jwt.MissingRequiredClaimError as exc:
            return self._fail(token, Refusal(f"missing claim {exc.claim}", permanent=True))
        except jwt.InvalidIssuerError:
            return self._fail(token, Refusal("wrong iss", permanent=True))
        except jwt.PyJWTError as exc:
            return self._fail(token, Refusal(f"invalid token: {exc}", permanent=True))
        result = identity_from_claims(token, claims, now, issuer.leeway)
        if isinstance(result, Refusal):
            return self._fail(token, result)
        if result.exp - result.iat > issuer.max_lifetime:
            # It could outlive a logout's revocation (edge/access/revocation.py, revoked_until).
            lifetime = f"{result.exp - result.iat:.0f} s"
            return self._fail(
                token,
                Refusal(f"lifetime {lifetime} beyond the issuer's max_token_lifetime", permanent=True),
            )
        entry = _Entry(
            result, result.exp + issuer.leeway, issuer.keys, kid if isinstance(kid, str) else "", key
        )
        self.cache.put(token, entry)
        return result

    def _fail(self, token: bytes, refusal: Refusal) -> Refusal:
        if refusal.permanent:
            self.failures.put(token, refusal)
        return refusal


# -- claims -------------------------------------------------------------------


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
        return Refusal("expired", permanent=True)
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
    texts: dict[str, str] = {"idp": _idp(claims)}
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
        session=session_key(texts["iss"], texts["identity_nonce"]) if texts["identity_nonce"] else "",
        email_lower=email.lower(),
        email_domain=email.rpartition("@")[2].lower(),
        add_headers=tuple(headers),
    )
