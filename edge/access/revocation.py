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
- A revocation refuses the tokens of its sign-in issued up to its `cutoff`
  (iat <= the logout time + the issuer's leeway: revocation_cutoff), and
  only those that expire within its hold (valid_until <= until). Every token
  issued before a logout expires within the hold it gets (revoked_until:
  iat is required, exp - iat is bounded), so all of them are refused; and
  from these two rules alone no token is ever refused and then accepted: a
  refused token stays refused until it is past, whatever the configuration,
  the merging of entries or an entry's age. A token the issuer mints after
  the cutoff is not covered; it is accepted from the start. An entry
  without a cutoff (math.inf: every iat) is an older edge's, which stored
  none.
- Revoking a held key again keeps the later `until` and the later cutoff.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import math

from edge.config.schema import MAX_LEEWAY

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
    sid): a logout then refuses at least that token until it expires. Keyed
    by its header and payload, the bytes its signature covers, so no other
    spelling of it (bytes after the signature, ECDSA's second signature)
    is another token."""
    signed = token.rpartition(b".")[0]
    return _key(f"{iss}\x00signed\x00".encode("utf-8", "surrogatepass") + signed)


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


# Seconds added to a hold, so that rounding in the sums of floats here and in
# the verifier (exp - iat) never leaves a covered token a hair outside it.
_ROUNDING = 1.0


def revoked_until(now: float, valid_until: float, max_lifetime: float, leeway: float) -> float:
    """How long a logout at `now` must refuse a sign-in: until the last of its
    tokens is past. The token presented is accepted until `valid_until`; its
    siblings (other applications, the team session) are not known here, but
    the issuer grants none a lifetime (exp - iat) above `max_lifetime` and
    the logout covers none with an iat beyond now + leeway
    (revocation_cutoff), so each expires by now + leeway + max_lifetime and
    is accepted until that plus the leeway in force when it is presented:
    at most MAX_LEEWAY, whatever a later reload sets (a hold sized with the
    leeway of the logout let a raised leeway revive covered tokens)."""
    return max(valid_until, now + leeway + max_lifetime + MAX_LEEWAY + _ROUNDING)


def revocation_cutoff(now: float, leeway: float) -> float:
    """The latest iat a logout at `now` covers: every token issued up to the
    logout, by an issuer whose clock may run `leeway` seconds ahead."""
    return now + leeway


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
                self._forget(key)

    def _forget(self, key: str) -> None:
        del self._until[key]

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
    """Revoked session keys with their expiry and cutoff; read on the request
    path (dict lookups). See the module invariants for what an entry refuses."""

    __slots__ = ("legacy", "_cutoff")

    def __init__(self) -> None:
        super().__init__()
        self.legacy = False  # a bare-nonce key of an older edge has been held
        self._cutoff: dict[str, float] = {}  # key -> the latest iat it covers (every held key)

    def revoke(self, key: str, until: float, cutoff: float = math.inf) -> bool:
        """Refuse the tokens of `key` issued up to `cutoff` (math.inf: any iat,
        as an older edge's entry) until `until`. True if that is news: `key`
        is newly revoked, or held longer, or for later tokens."""
        if not key.startswith(SESSION_PREFIX):
            self.legacy = True
        held = self._cutoff.get(key)
        wider = held is None or cutoff > held
        longer = self._hold(key, until)
        if wider:
            self._cutoff[key] = cutoff
        return longer or wider

    def _forget(self, key: str) -> None:
        super()._forget(key)
        del self._cutoff[key]

    def session_revoked(
        self,
        session: str,
        nonce: str,
        now: float,
        iat: float = -math.inf,
        valid_until: float = -math.inf,
    ) -> bool:
        """Whether the token of the sign-in with key `session` (and `nonce`)
        issued at `iat` and accepted until `valid_until` is refused at `now`.
        Without a token's times: whether the sign-in is signed out at all
        (held for any token), so that no new token is minted for it."""
        if self._refuses(session, now, iat, valid_until):
            return True
        return self.legacy and self._refuses(nonce, now, iat, valid_until)

    def _refuses(self, key: str, now: float, iat: float, valid_until: float) -> bool:
        until = self._until.get(key, _NEVER)
        return now < until and valid_until <= until and iat <= self._cutoff[key]

    def items(self, now: float) -> list[tuple[str, float, float]]:
        """The unexpired revocations as `(key, until, cutoff)`, to publish them again."""
        cutoff = self._cutoff
        return [(key, until, cutoff[key]) for key, until in self._until.items() if until > now]


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


def parse_message(data: str) -> tuple[str, float, float] | None:
    """`(key, until, cutoff)` from a published revocation (cutoff math.inf
    when it names none), or None if it is malformed."""
    text, _, key = data.partition(" ")
    until_text, comma, cutoff_text = text.partition(",")
    until = _finite(until_text)
    cutoff = _finite(cutoff_text) if comma else math.inf
    if not key or until is None or cutoff is None:
        return None
    return key, until, cutoff


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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
