"""Keys, tokens and configs for the pure decision tests.

Tokens are minted here with PyJWT and cryptography directly (not with
edge.login.keys), so the verifier is checked against an independent signer.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from edge.access.compile import Compiled, compile_config
from edge.access.request import Request, build
from edge.config.load import loads

ISS = "https://auth.example.com"
NOW = 1_800_000_000.0  # a fixed clock: decisions never read the real one
AUD = "api-aud"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
HS_SECRET = "0123456789abcdef0123456789abcdef-shared"
KEYS: dict[str, Any] = {"RS256": RSA_KEY, "ES256": EC_KEY, "EdDSA": ED_KEY}
KIDS = {"RS256": "rsa-1", "ES256": "ec-1", "EdDSA": "ed-1"}


def public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
    jwk["kid"] = kid
    jwk.update(extra)
    return dict(jwk)


def jwks(*jwk_list: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(jwk_list)}).encode()


def default_jwks() -> bytes:
    return jwks(*(public_jwk(KEYS[alg], KIDS[alg], use="sig") for alg in KEYS))


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": [AUD],
        "email": "alice@example.com",
        "sub": "u-alice",
        "exp": NOW + 3600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "type": "app",
        "identity_nonce": "n0nce",
        "country": "NL",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()  # claims(exp=DROP) leaves the claim out


def mint(
    alg: str = "ES256",
    kid: str | None = None,
    key: Any = None,
    header: dict[str, Any] | None = None,
    **over: Any,
) -> bytes:
    if alg == "HS256":
        signing: Any = key or HS_SECRET.encode()
    else:
        signing = key or KEYS[alg]
    headers: dict[str, Any] = {"kid": kid or KIDS.get(alg, "none")}
    headers.update(header or {})
    headers = {k: v for k, v in headers.items() if v is not DROP}
    return jwt.encode(claims(**over), signing, algorithm=alg, headers=headers).encode()


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> bytes:
    """A token with an arbitrary header and an empty signature (alg none)."""
    return b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode()) + b"."


def config_text(
    jwks_path: Path, apps: str, extra: str = "", algorithms: str = '["RS256", "ES256", "EdDSA"]'
) -> str:
    return f"""
[server]
server_header = "edge"
trusted_proxies = ["10.0.0.0/8"]

[[issuers]]
iss = "{ISS}"
jwks_file = "{jwks_path}"
algorithms = {algorithms}
leeway = 60

[[service_tokens]]
name = "ci"
client_id = "ci.example"
secret_sha256 = "{sha256_hex("ci-secret")}"

[[service_tokens]]
name = "backup"
client_id = "backup.example"
secret_sha256 = "{sha256_hex("backup-secret")}"
{extra}
{apps}
"""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def compiled(tmp_path: Path, apps: str, extra: str = "") -> Compiled:
    path = tmp_path / "jwks.json"
    if not path.exists():
        path.write_bytes(default_jwks())
    return compile_config(loads(config_text(path, apps, extra), "test.toml"), "test.toml")


def request(
    method: str = "GET",
    url: str = "https://api.example.com/",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    client_ip: str = "192.0.2.1",
) -> Request:
    scheme, _, rest = url.partition("://")
    host, slash, target = rest.partition("/")
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    fields = [(b"host", host.encode())] + [(k.lower().encode(), v.encode()) for k, v in items]
    return build(method.encode(), host.encode(), (slash + target).encode() or b"/", fields, client_ip, scheme)


def cookie(token: bytes) -> dict[str, str]:
    return {"Cookie": "theme=dark; CF_Authorization=" + token.decode()}
