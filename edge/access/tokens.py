"""User tokens: where they are found, how they are verified, and the caches.

Invariants:
- Verification pins the algorithms per issuer *before* PyJWT sees the token,
  chooses the key by ``kid`` from the issuer's own key set
  (edge.access.keysets), and checks that the key's algorithm is the token's;
  time and type checks on the claims are edge.access.claims's (against the
  caller's clock, and stricter than PyJWT's: no numeric strings).
- A verified token is cached (a BoundedCache of CACHE_ENTRIES, keyed by the
  token's bytes) until its ``exp`` (+ leeway): PyJWT's verification took 97
  us (RS256) to 171 us (ES256) on the bench machine, and a whole decision
  with a cached token takes 4.7 us (bench/micro_decide.py); every hit re-checks that
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
  carrying two identities is refused rather than half-forwarded. Every
  JWS-shaped run anywhere in an Authorization value is asked
  (embedded_tokens), not only a ``Bearer`` credential: what the edge
  overlooks there, an application or JWT library that reads the value
  otherwise would find.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jwt
import msgspec
from jwt.types import SigOptions

from edge.access.cache import BoundedCache
from edge.access.claims import Identity, Refusal, identity_from_claims
from edge.access.headers import AUTH_COOKIE_BYTES, OWS
from edge.access.keysets import KeySet
from edge.config.schema import KIB

_COOKIE_PREFIX = AUTH_COOKIE_BYTES + b"="
_PREFIX_LENGTH = len(_COOKIE_PREFIX)
# A value starting or ending with one of these needs trimming (rare).
_UNUSUAL = frozenset({b" ", b"\t", b'"'})
_SEMICOLON = ord(";")
# The largest token considered: a request head is at most 16 KiB by default
# (server.max_header_bytes), so anything larger cannot be a real cookie.
MAX_TOKEN_BYTES = 16 * KIB
# Verified tokens and permanent failures, each: enough for every active user
# of a large deployment, small enough (a few MiB) for each worker to hold.
CACHE_ENTRIES = 10_000

# Compact JWS (RFC 7515 7.1): three base64url segments, the last may be empty
# only for alg "none" (refused later, with a clear reason).
_JWS_RE = re.compile(rb"^[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]*={0,2}\Z")

# PyJWS checks the signature, with the algorithms pinned per issuer; the
# registered claims are checked here (_registered, as PyJWT's decode would
# with these settings) and the time claims by edge.access.claims against the
# caller's clock. Not jwt.decode: its claim checks read the wall clock even
# with every time check off, and deciding reads no clock
# (tests/access/test_decide_pure.py records every clock read).
_JWS = jwt.PyJWS()
_VERIFY: SigOptions = {"verify_signature": True, "enforce_minimum_key_length": True}
_PEEK: SigOptions = {"verify_signature": False}
_REQUIRED = ("exp", "iat", "iss", "aud")
# Optional registered claims that, when present, must be strings.
_STRING_CLAIMS = ("sub", "jti")


def _payload(decoded: dict[str, Any]) -> dict[str, Any] | Refusal:
    """The claims of a decoded JWS: its payload, a JSON object."""
    try:
        claims = json.loads(decoded["payload"])
    except (ValueError, RecursionError) as exc:
        return Refusal(f"malformed token: invalid payload: {exc}", permanent=True)
    if not isinstance(claims, dict):
        return Refusal("malformed token: the payload is not a JSON object", permanent=True)
    return claims


def _registered(claims: dict[str, Any], iss: str) -> Refusal | None:
    """The checks of the registered claims besides the times: the required
    ones present (not null), the issuer's own `iss`, `sub` and `jti` strings."""
    for name in _REQUIRED:
        if claims.get(name) is None:
            return Refusal(f"missing claim {name}", permanent=True)
    if claims["iss"] != iss:
        return Refusal("wrong iss", permanent=True)
    for name in _STRING_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            return Refusal(f"invalid token: {name} is not a string", permanent=True)
    return None


NO_TOKEN = Refusal("no token")
AMBIGUOUS = Refusal("ambiguous: two different tokens", permanent=True, ambiguous=True)


# -- extraction --------------------------------------------------------------


def cookie_tokens(cookie_headers: Sequence[bytes]) -> list[bytes] | None:
    """Every non-empty CF_Authorization value in the Cookie headers; None
    when one hides where a lenient cookie parser would still find it: after
    whitespace or a comma inside another pair (``theme=dark
    CF_Authorization=...``, which Python's SimpleCookie reads), or under a
    name PHP turns into CF_Authorization (``CF.Authorization``, ``CF
    Authorization``, ``CF[Authorization``). Such a request is ambiguous.

    A find() per header rather than splitting every pair: the request path
    pays for the one cookie it wants, not for all of them.
    """
    found: list[bytes] = []
    for header in cookie_headers:
        at = header.find(_COOKIE_PREFIX)
        seen = 0
        while at >= 0:
            seen += 1
            if at == 0 or _starts_pair(header, at):
                start = at + _PREFIX_LENGTH
                end = header.find(b";", start)
                value = header[start:end] if end >= 0 else header[start:]
                if value[:1] in _UNUSUAL or value[-1:] in _UNUSUAL:
                    value = value.strip().strip(b'"')
                if value:
                    found.append(value)
            elif header[at - 1] in _HIDING:
                return None
            at = header.find(_COOKIE_PREFIX, at + 1)
        if header.count(b"Authorization=") > seen and _PHP_NAME.search(header) is not None:
            return None
    return found


# What may stand before a CF_Authorization= that does not begin a pair, for
# a lenient parser to read it as one all the same.
_HIDING = frozenset(b" \t,")
# Names PHP reads as CF_Authorization ('.', ' ' and '[' become '_').
_PHP_NAME = re.compile(rb"CF[. \[]Authorization=")


def _starts_pair(header: bytes, at: int) -> bool:
    """Whether position `at` begins a cookie pair (not the tail of another
    name like ``XCF_Authorization``)."""
    i = at - 1
    while i >= 0 and header[i] in OWS:
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
    refused as ambiguous (and so is a cookie hidden inside another pair:
    cookie_tokens), and so is any JWS-shaped run anywhere in any
    ``Authorization`` value (embedded_tokens: however wrapped, whatever the
    scheme) whose header and payload differ from the chosen token's when
    `trusted` (`Verifier.trusts`) calls it one of ours: the upstream would
    see a second identity. Anything else in ``Authorization`` is the application's own
    credential and never conflicts.
    """
    found = cookie_tokens(cookies) if cookies else []
    if found is None:
        return AMBIGUOUS
    candidates = found
    for value in access_tokens:
        value = value.strip()
        if value:
            candidates.append(value)
    if not candidates:
        bearers = bearer_credentials(authorizations) if authorizations else []
        if not bearers:
            return NO_TOKEN
        candidates = bearers[:1]
    first = candidates[0]
    if len(candidates) > 1 and candidates.count(first) != len(candidates):
        return AMBIGUOUS
    if authorizations:
        embedded = embedded_tokens(authorizations)
        if embedded is None:
            return AMBIGUOUS
        mine = signing_input(first)
        if any(other != mine and trusted(other + b".") for other in embedded):
            return AMBIGUOUS
    return first


# Where an application may cut an Authorization value to find its Bearer
# credential: on any whitespace and on commas (a list of credentials).
_AUTH_SEPARATORS = re.compile(rb"[\s,]+")


def bearer_credentials(authorizations: Sequence[bytes]) -> list[bytes]:
    """The credential after each ``Bearer`` (any case, anywhere in a value)."""
    bearers: list[bytes] = []
    for value in authorizations:
        parts = [part for part in _AUTH_SEPARATORS.split(value) if part]
        bearers.extend(parts[i + 1] for i in range(len(parts) - 1) if parts[i].lower() == b"bearer")
    return bearers


# A compact JWS's first two segments as a JWT library may read them out of
# a longer value: base64 in either alphabet, padded or not, whatever
# surrounds them (quotes, semicolons, an auth-param, bytes after the
# signature, separators no split knows). Only header and payload matter:
# they are what `trusts` reads and what a signature covers.
_EMBEDDED = re.compile(rb"[A-Za-z0-9_+/-]+=*\.[A-Za-z0-9_+/-]+=*\.")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# JWS-shaped runs looked at in one request's Authorization values; more is
# refused unread (each costs two small decodes; a 16 KiB value of them took
# 12.8 ms). No credential an application uses holds more than a few.
MAX_EMBEDDED = 16


def _segment(part: bytes) -> bytes:
    return part.rstrip(b"=").translate(_TO_URLSAFE)


def signing_input(token: bytes) -> bytes:
    """A token's header and payload in base64url without padding: one token
    however it is spelled (the signature aside, which a library checks)."""
    head, _, rest = token.partition(b".")
    return _segment(head) + b"." + _segment(rest.partition(b".")[0])


def embedded_tokens(authorizations: Sequence[bytes]) -> set[bytes] | None:
    """The signing input of every JWS-shaped run in the values (and, when
    other base64 characters run into a header, of the run from its first
    ``ey``, where a JSON object's base64 begins); None when there are more
    than MAX_EMBEDDED. Never raises; linear in the values."""
    found: set[bytes] = set()
    runs = 0
    for value in authorizations:
        for match in _EMBEDDED.finditer(value):
            runs += 1
            if runs > MAX_EMBEDDED:
                return None
            head, _, payload = match.group()[:-1].partition(b".")
            found.add(_segment(head) + b"." + _segment(payload))
            start = head.find(b"ey", 1)
            if start > 0:
                found.add(_segment(head[start:]) + b"." + _segment(payload))
    return found


class _PeekHeader(msgspec.Struct, gc=False):
    kid: str | None = None


class _PeekClaims(msgspec.Struct, gc=False):
    iss: str | None = None


_PEEK_HEADER = msgspec.json.Decoder(_PeekHeader)
_PEEK_CLAIMS = msgspec.json.Decoder(_PeekClaims)


def _peek(segment: bytes, decoder: msgspec.json.Decoder[Any], name: str) -> Any:
    """The member `name` of one unverified JWS segment, or None when the
    segment is no JSON object (never raises; the caller checks the type).

    msgspec first: it is fast and reads every segment a real issuer writes.
    It is stricter than Python's json module, which PyJWT reads segments
    with (NaN, Infinity, lone surrogate escapes, a BOM, UTF-16/32, a
    duplicate key of another type first): where it refuses, json.loads reads
    the same bytes as PyJWT does, so nothing PyJWT would verify as one of
    our tokens passes for the application's own credential. Both are bounded
    by MAX_TOKEN_BYTES, checked by the caller.
    """
    try:
        raw = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except ValueError:  # binascii.Error
        return None
    try:
        return getattr(decoder.decode(raw), name)
    except (ValueError, RecursionError):  # msgspec.DecodeError and ValidationError are ValueErrors
        pass
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int digit limits
        return None
    return value.get(name) if isinstance(value, dict) else None


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
        whose payload names a trusted iss, read at least as leniently as PyJWT
        reads it (_peek). Cheap (two small decodes, no signature check) and
        total: garbage is simply not ours."""
        if len(value) > MAX_TOKEN_BYTES or _JWS_RE.match(value) is None:
            return False
        head, payload, _ = value.split(b".")
        kid = _peek(head, _PEEK_HEADER, "kid")
        if isinstance(kid, str):
            for issuer in self.issuers.values():
                if issuer.keys is not None and kid in issuer.keys.keys:
                    return True
        iss = _peek(payload, _PEEK_CLAIMS, "iss")
        return isinstance(iss, str) and iss in self.issuers

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
            peek = _JWS.decode_complete(token, options=_PEEK)
        except jwt.PyJWTError as exc:
            return self._fail(token, Refusal(f"malformed token: {exc}", permanent=True))
        header, claims = peek["header"], _payload(peek)
        if isinstance(claims, Refusal):
            return self._fail(token, claims)
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            return self._fail(token, Refusal(f"unknown issuer {str(iss)[:100]!r}", permanent=True))
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
            verified = _JWS.decode_complete(token, key, algorithms=sorted(issuer.algorithms), options=_VERIFY)
        except jwt.InvalidSignatureError:
            return self._fail(token, Refusal("bad signature", permanent=True))
        except jwt.PyJWTError as exc:
            return self._fail(token, Refusal(f"invalid token: {exc}", permanent=True))
        claims = _payload(verified)
        if isinstance(claims, Refusal):
            return self._fail(token, claims)
        refused = _registered(claims, issuer.iss)
        if refused is not None:
            return self._fail(token, refused)
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
