"""Revoked sessions and one-time claims: in-memory key sets with expiry.

Every key carries an absolute expiry `until` in seconds since the epoch. It is
wall-clock time, not a monotonic clock, because the values travel between
processes and hosts (see edge/login/store.py); every caller passes `now` itself.

Invariants:
- A key is held (revoked, claimed) while `now < until`; from `until` on it is
  free again, whether or not it has been swept yet.
- `_until` maps each key to its latest expiry; `_heap` holds an `(until, key)`
  entry for every expiry set and not yet swept. Sweeping pops only expired
  entries, each once: O(log n) per entry, amortised over the inserts. An entry
  whose `until` no longer matches `_until[key]` is stale (the key was
  extended) and is dropped without touching the dict.
- Every dict value has its heap entry, so after `sweep(now)` every key left in
  the dict is unexpired.
- Lookups are one dict access. Nothing here does I/O, sleeps or reads a clock.
- A revoked sign-in is keyed by `sign_in_key`: `session_key(iss,
  identity_nonce)` when the token carries a nonce (the edge's own tokens),
  else `sid_key(iss, sid)` (the issuer's own session id, as OpenID Connect
  providers send it), else `token_key(iss, token)` (that token alone). Each
  kind hashes its own namespace, so an issuer's session can neither revoke
  nor be revoked by another issuer's, nor a sid by a nonce of the same
  value. Keys without the SESSION_PREFIX are bare nonces written by older
  edges; while one is held (`legacy`), a bare nonce is refused for every
  issuer, as those edges did, rather than reopen their sessions at an upgrade.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import math

_NEVER = -math.inf  # the expiry of a key that is not held: not after any `now`
SESSION_PREFIX = "s:"
# 18 bytes (144 bits) of SHA-256: no one finds another (issuer, nonce) with
# the key of a given session, and a key stays 26 characters in Redis however
# long the nonce an issuer chose.
_SESSION_DIGEST_BYTES = 18


def session_key(iss: str, nonce: str) -> str:
    """The revocation key of one issuer's sign-in. Token claims hold no
    control characters, so the NUL between the two is unambiguous."""
    return _key(f"{iss}\x00{nonce}".encode("utf-8", "surrogatepass"))


def sid_key(iss: str, sid: str) -> str:
    """The revocation key of a sign-in named by the issuer's own session id
    (`sid`). The "sid" between NULs sets it apart from every session_key:
    a nonce holds no NUL."""
    return _key(f"{iss}\x00sid\x00{sid}".encode("utf-8", "surrogatepass"))


def token_key(iss: str, token: bytes) -> str:
    """The revocation key of one token that names no sign-in (no nonce, no
    sid): a logout then refuses at least that token until it expires."""
    return _key(f"{iss}\x00token\x00".encode("utf-8", "surrogatepass") + token)


def sign_in_key(iss: str, nonce: str, sid: str, token: bytes) -> str:
    """The revocation key of the sign-in `token` belongs to (see the invariants)."""
    if nonce:
        return session_key(iss, nonce)
    if sid:
        return sid_key(iss, sid)
    return token_key(iss, token)


def sign_in_label(nonce: str, sid: str, key: str) -> str:
    """What a log line says of the sign-in `key` (sign_in_key) names: its
    kind and a short prefix, enough to find it again, never a whole value."""
    if nonce:
        return f"nonce {nonce[:6]}…"
    if sid:
        return f"sid {sid[:6]}…"
    return f"this token only, key {key[:8]}…"


def _key(raw: bytes) -> str:
    digest = hashlib.sha256(raw).digest()[:_SESSION_DIGEST_BYTES]
    return SESSION_PREFIX + base64.urlsafe_b64encode(digest).decode("ascii")


def revoked_until(now: float, valid_until: float, max_lifetime: float, leeway: float) -> float:
    """How long a logout at `now` must refuse a sign-in: until the last of its
    tokens is past. The token presented is accepted until `valid_until`; its
    siblings (other applications, the team session) are not known here, but
    the issuer grants none a lifetime (exp - iat) above `max_lifetime` and
    none issued by now carries an iat beyond now + leeway, so each is past
    by now + max_lifetime + 2 * leeway."""
    return max(valid_until, now + max_lifetime + 2 * leeway)


class _ExpiringKeys:
    __slots__ = ("_heap", "_until")

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def sweep(self, now: float) -> None:
        """Forget every key whose expiry is not after `now`."""
        heap, until_of = self._heap, self._until
        while heap and heap[0][0] <= now:
            until, key = heapq.heappop(heap)
            if until_of.get(key) == until:
                del until_of[key]

    def __len__(self) -> int:
        """Keys held, counting expired ones not swept yet."""
        return len(self._until)

    def _hold(self, key: str, until: float) -> bool:
        """Hold `key` until `until`; False (and nothing changes) if it is
        already held at least that long."""
        if self._until.get(key, _NEVER) >= until:
            return False
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))
        return True


class Revocations(_ExpiringKeys):
    """Revoked session keys with their expiry; read on the request path (a dict lookup)."""

    __slots__ = ("legacy",)

    def __init__(self) -> None:
        super().__init__()
        self.legacy = False  # a bare-nonce key of an older edge has been held

    def revoke(self, key: str, until: float) -> bool:
        """True if `key` is newly revoked or its revocation now lasts longer."""
        if not key.startswith(SESSION_PREFIX):
            self.legacy = True
        return self._hold(key, until)

    def is_revoked(self, key: str, now: float) -> bool:
        return self._until.get(key, _NEVER) > now

    def session_revoked(self, session: str, nonce: str, now: float) -> bool:
        """Whether the sign-in with key `session` (and `nonce`) is revoked."""
        until = self._until
        if until.get(session, _NEVER) > now:
            return True
        return self.legacy and until.get(nonce, _NEVER) > now

    def items(self, now: float) -> list[tuple[str, float]]:
        """The unexpired revocations as `(key, until)`, to publish them again."""
        return [(key, until) for key, until in self._until.items() if until > now]


class OnceClaims(_ExpiringKeys):
    """One-time claims in this process: each key can be claimed once until it expires.

    Memory stays bounded by the unexpired claims: every claim sweeps first.
    """

    __slots__ = ()

    def claim(self, key: str, until: float, now: float) -> bool:
        """True for the first claim of `key`; False while that claim is
        unexpired, and for a claim that has already expired (`until <= now`)."""
        self.sweep(now)
        if until <= now or key in self._until:
            return False
        return self._hold(key, until)


def format_message(key: str, until: float) -> str:
    """A revocation as published to the other workers: "<until> <key>"."""
    return f"{until!r} {key}"


def parse_message(data: str) -> tuple[str, float] | None:
    """`(key, until)` from a published revocation, or None if it is malformed."""
    text, _, key = data.partition(" ")
    try:
        until = float(text)
    except ValueError:
        return None
    if not key or not math.isfinite(until):
        return None
    return key, until


class Counters:
    """Events per key (failed sign-ins) in a fixed window that starts with the
    key's first event; bounded: past `limit` keys, expired windows go first,
    then the oldest."""

    __slots__ = ("_counts", "_limit")

    def __init__(self, limit: int = 10_000) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, window end)
        self._limit = limit

    def get(self, key: str, now: float) -> int:
        count, end = self._counts.get(key, (0, _NEVER))
        return count if now < end else 0

    def add(self, key: str, now: float, window: float) -> int:
        count, end = self._counts.get(key, (0, _NEVER))
        if now >= end:
            count, end = 0, now + window
        if key not in self._counts and len(self._counts) >= self._limit:
            self._counts = {k: v for k, v in self._counts.items() if now < v[1]}
            while len(self._counts) >= self._limit:
                del self._counts[next(iter(self._counts))]
        self._counts[key] = (count + 1, end)
        return count + 1
