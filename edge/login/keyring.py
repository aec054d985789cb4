"""The built-in issuer's keys as the login service uses them: the ring of
signing keys (current first, then previous keys inside their overlap), the
documents that publish them (JWKS, /cdn-cgi/access/certs), and the sealing
secret for login-flow data. keydir.py is the on-disk directory they come from.

Invariants:
- A KeyRing is immutable: a rotation or the end of an overlap builds a new
  one (TeamKeys.refresh) and swaps it in whole. Its published documents are
  built once, so serving them is a lookup.
- The sealer is made once per key directory and never replaced while that
  directory is in use: the secret never rotates (keydir writes it once), and
  values sealed by one worker must open in every other.
- No clock is read here: callers pass `now`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from edge.login import keys as keylib
from edge.login.keys import PrivateKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str  # RFC 7638 thumbprint of the public key
    alg: str  # "ES256" | "RS256"
    private: PrivateKey
    created: float  # epoch seconds
    retired: float | None  # when it stopped being current; None while it is current
    cert_pem: str  # self-signed X.509 cert of the public key, made once at creation


@dataclass(frozen=True, slots=True, eq=False)
class KeyRing:
    """The usable keys at one moment: `keys[0]` is current, then previous keys
    still inside their overlap, most recently retired first. The published
    documents are built once here, so serving them is a lookup."""

    keys: tuple[SigningKey, ...]
    expires: float | None  # the next moment the ring changes with no file change
    fingerprint: tuple[int, int] | None = None  # of the manifest this ring was read from
    _jwks: bytes = field(init=False, repr=False)
    _certs: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.keys or self.keys[0].retired is not None:
            raise ValueError("A key ring starts with its current key")
        jwks = [_public_jwk(k) for k in self.keys]
        certs = [{"kid": k.kid, "cert": k.cert_pem} for k in self.keys]
        object.__setattr__(self, "_jwks", _json({"keys": jwks}))
        document = {"keys": jwks, "public_cert": certs[0], "public_certs": certs}
        object.__setattr__(self, "_certs", _json(document))

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    def sign(self, claims: Mapping[str, Any]) -> str:
        key = self.current
        headers = {"kid": key.kid, "typ": "JWT"}  # PyJWT adds alg from `algorithm`
        return jwt.encode(dict(claims), key.private, algorithm=key.alg, headers=headers)

    def jwks(self) -> bytes:
        """{"keys": [public JWKs with kid, alg, use="sig"]}, current first."""
        return self._jwks

    def certs(self) -> bytes:
        """Cloudflare's /cdn-cgi/access/certs document: JWKs plus PEM certs."""
        return self._certs


def _public_jwk(key: SigningKey) -> dict[str, Any]:
    jwk = keylib.public_jwk(key.private, key.kid)
    jwk.pop("key_ops", None)  # PyJWT adds it; RFC 7517 section 4.3: not together with "use"
    return jwk


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
