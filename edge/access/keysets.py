"""Key sets: the signature keys of one issuer by kid, and JWKS parsing.

Invariants:
- A `KeySet` is only mutated by `update`/`fetch_failed`, called by the I/O
  shell; a failed or empty fetch keeps the keys already held. The edge's
  remote issuers and the OIDC client (edge.login.oidc) share this one
  implementation, each with its own refetch and refresh intervals.
- An update that publishes a key again keeps the object already held, so
  tokens cached under it (edge.access.tokens) stay valid; a key left out of
  the update revokes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# An unknown kid asks the shell for a JWKS refetch at most this often, so a
# stream of forged kids cannot turn the edge into a load generator.
REFETCH_MIN_INTERVAL = 30.0  # seconds
# Remote key sets are refreshed this often even without unknown kids, so a
# key removed by the issuer stops being honoured.
REFRESH_INTERVAL = 300.0  # seconds


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


def _canonical(key: jwt.PyJWK) -> tuple[str | None, str, bytes]:
    """What makes two keys the same key, through PyJWT's public API: kid,
    algorithm and the public key's DER (a JWKS holds public keys only)."""
    public = key.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return key.key_id, key.algorithm_name, public


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
