"""Signing keys for trying the edge locally: generate, publish (JWKS), mint.

Used by the CLI (`edge keys generate`, `edge token`) and by tests. Nothing
here is on the request path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
KEY_ALGORITHMS = ("ES256", "RS256", "EdDSA")
# Members that define a public key, per key type (RFC 7638 section 3.2).
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def generate(alg: str) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"Expected one of {', '.join(KEY_ALGORITHMS)}, got {alg!r}")


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RS256"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if key.curve.name != "secp256r1":
            raise ValueError(f"Expected a P-256 key for ES256, got {key.curve.name}")
        return "ES256"
    return "EdDSA"


def public_jwk(key: PrivateKey | PublicKey, kid: str | None = None) -> dict[str, Any]:
    """The public JWK (use=sig, alg, kid = RFC 7638 thumbprint by default)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    alg = algorithm_of(public)
    algo = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = json.loads(algo.to_jwk(public))
    jwk["kid"] = kid or thumbprint(jwk)
    jwk["use"] = "sig"
    jwk["alg"] = alg
    return jwk


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): a stable kid."""
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError(f"Expected an RSA, P-256 or Ed25519 private key, got {type(key).__name__}")
    return key


def jwks(keys: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"keys": list(keys)}, indent=2).encode() + b"\n"


def mint(
    key: PrivateKey,
    kid: str,
    iss: str,
    aud: str | Sequence[str],
    email: str,
    ttl: float = 3600,
    groups: Sequence[str] = (),
    now: float | None = None,
    **extra: Any,
) -> str:
    """A signed token shaped like Cloudflare Access's app tokens."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "aud": [aud] if isinstance(aud, str) else list(aud),
        "email": email,
        "exp": issued + int(ttl),
        "iat": issued,
        "nbf": issued,
        "iss": iss,
        "type": "app",
        "sub": hashlib.sha256(email.encode()).hexdigest()[:32],
        "identity_nonce": base64.urlsafe_b64encode(hashlib.sha256(f"{email}{issued}".encode()).digest()[:12])
        .rstrip(b"=")
        .decode(),
        "country": "XX",
    }
    if groups:
        claims["groups"] = list(groups)
    claims.update(extra)
    return jwt.encode(claims, key, algorithm=algorithm_of(key), headers={"kid": kid})
