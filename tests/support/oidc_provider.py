"""An OpenID provider of our own for the faults a real one will not commit:
http.server on a thread, 127.0.0.1:<ephemeral>.

The OIDC tests sign in at oidc-provider, an OpenID-Certified provider
(tests/support/oidc_node.py); this one serves only the tests of what the
edge does when a provider misbehaves: a wrong nonce, an ID token with a
foreign iss or aud, several audiences, an expired ID token, a kid the JWKS
lacks, a discovery document naming another issuer.

Endpoints (OpenID Connect Core 1.0 and Discovery 1.0, the code flow only):

  /.well-known/openid-configuration   the discovery document
  /authorize    checks client_id, redirect_uri (registered, exact), response_type=code,
                scope with openid, PKCE S256; then "logs in" alice at once and 302s to
                redirect_uri with code and state. Errors about the client or
                redirect_uri are a 400 page (never a redirect, as RFC 6749 4.1.2.1
                requires); others redirect.
  /token        client_secret_basic or client_secret_post; the code is single use and
                lives CODE_LIFETIME seconds; PKCE is verified; an RS256 ID token.
  /jwks         the public signing key

Faults (attributes; change them between requests): `id_token_lifetime`
(negative: already expired), `wrong_nonce`, `token_issuer`, `token_audience`,
`unknown_kid`, `discovery_issuer`, `extra_claims`. `requests` lists the paths
served, in order.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "edge-test"
CLIENT_SECRET = "edge-test-secret"
REDIRECT_URI = "http://127.0.0.1/cdn-cgi/access/callback"
BODY_LIMIT = 64 * 1024  # bytes of a /token request
CODE_LIFETIME = 60.0  # seconds a code may wait for its redemption
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
POLL_INTERVAL = 0.05  # seconds; how long stop() may wait for the serving loop (default 0.5)


@dataclass
class User:
    sub: str
    email: str
    email_verified: bool = True
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Grant:
    """What a code stands for."""

    redirect_uri: str
    challenge: str
    nonce: str | None
    user: User
    issued: float


ALICE = User("u-alice", "alice@example.com", groups=["staff", "admins"])


class OidcProvider:
    def __init__(
        self,
        *,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        redirect_uris: tuple[str, ...] = (REDIRECT_URI,),
        port: int = 0,
    ) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.redirect_uris = list(redirect_uris)
        self.id_token_lifetime = 300.0
        self.wrong_nonce = self.unknown_kid = False
        self.token_issuer: str | None = None
        self.token_audience: str | list[str] | None = None
        self.discovery_issuer: str | None = None
        self.extra_claims: dict[str, Any] = {}
        self.requests: list[str] = []
        self.codes: dict[str, Grant] = {}
        self.used: set[str] = set()
        self.rotate_key()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.provider = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_INTERVAL,), daemon=True)

    def start(self) -> OidcProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rotate_key(self) -> None:
        """A new signing key under a new kid; the old one leaves the JWKS."""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"rsa-{secrets.token_hex(4)}"

    # -- endpoints: (status, headers, body)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def authorize(self, q: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if q.get("client_id") != self.client_id:
            return 400, {}, b"unknown client_id"
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in self.redirect_uris:
            return 400, {}, b"redirect_uri is not registered"
        error = self._authorize_error(q)
        if error:
            return _redirect(redirect_uri, error=error, state=q.get("state"))
        code = secrets.token_urlsafe(24)
        self.codes[code] = Grant(redirect_uri, q["code_challenge"], q.get("nonce"), ALICE, time.time())
        return _redirect(redirect_uri, code=code, state=q.get("state"))

    def _authorize_error(self, q: dict[str, str]) -> str:
        if q.get("response_type") != "code":
            return "unsupported_response_type"
        if "openid" not in q.get("scope", "").split():
            return "invalid_scope"
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return "invalid_request"
        return ""

    def token(self, authorization: str, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if not self._authenticated(authorization, form):
            return _error(401, "invalid_client", "client authentication failed")
        if form.get("grant_type") != "authorization_code":
            return _error(400, "unsupported_grant_type", "only authorization_code")
        code = form.get("code", "")
        grant = self.codes.pop(code, None)
        if grant is None:
            return _error(400, "invalid_grant", "code already used" if code in self.used else "unknown code")
        self.used.add(code)
        if time.time() >= grant.issued + CODE_LIFETIME:
            return _error(400, "invalid_grant", "code expired")
        if form.get("redirect_uri") != grant.redirect_uri:
            return _error(400, "invalid_grant", "redirect_uri differs from the authorization request")
        if _challenge(form.get("code_verifier", "")) != grant.challenge:
            return _error(400, "invalid_grant", "PKCE verification failed")
        answer = {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300}
        answer["id_token"] = self.id_token(grant)
        return 200, {"Cache-Control": "no-store"}, json.dumps(answer).encode()

    def _authenticated(self, authorization: str, form: dict[str, str]) -> bool:
        if authorization.startswith("Basic ") and "client_secret_basic" in AUTH_METHODS:
            try:
                pair = base64.b64decode(authorization[6:], validate=True).decode()
            except (ValueError, UnicodeError):
                return False
            client_id, _, secret = (unquote_plus(part) for part in pair.partition(":"))
        elif "client_secret" in form and "client_secret_post" in AUTH_METHODS:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        else:
            return False
        return client_id == self.client_id and hmac.compare_digest(secret, self.client_secret)

    def id_token(self, grant: Grant) -> str:
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self.token_issuer or self.issuer,
            "aud": self.token_audience or self.client_id,
            "sub": grant.user.sub,
            "email": grant.user.email,
            "email_verified": grant.user.email_verified,
            "groups": grant.user.groups,
            "iat": int(now),
            "exp": int(now + self.id_token_lifetime),
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce + ("-wrong" if self.wrong_nonce else "")
        claims.update(self.extra_claims)
        key, kid = (_stranger_key(), "stranger") if self.unknown_kid else (self._key, self.kid)
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@functools.cache
def _stranger_key() -> rsa.RSAPrivateKey:
    """A key no JWKS publishes (one for all providers: generating RSA keys is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _redirect(uri: str, **params: str | None) -> tuple[int, dict[str, str], bytes]:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return 302, {"Location": uri + ("&" if "?" in uri else "?") + query}, b""


def _error(status: int, error: str, description: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else {}
    return status, headers, json.dumps({"error": error, "error_description": description}).encode()


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # seconds per socket operation: a stuck test client cannot hang a thread

    @property
    def provider(self) -> OidcProvider:
        return self.server.provider  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.provider.requests.append(parts.path)
        if parts.path == "/.well-known/openid-configuration":
            self._json(self.provider.discovery())
        elif parts.path == "/jwks":
            self._json(self.provider.jwks())
        elif parts.path == "/authorize":
            q = {k: v[0] for k, v in parse_qs(parts.query).items()}
            self._send(*self.provider.authorize(q))
        else:
            self._send(404, {}, b"not found")

    def do_POST(self) -> None:
        self.provider.requests.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != "/token" or length > BODY_LIMIT:
            self._send(404 if self.path != "/token" else 413, {}, b"no")
            return
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        self._send(*self.provider.token(self.headers.get("Authorization", ""), form))

    def _json(self, doc: dict[str, Any]) -> None:
        self._send(200, {}, json.dumps(doc).encode())

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        kind = "application/json" if body.startswith(b"{") else "text/plain"
        for name, value in {"Content-Type": kind, **headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # `requests` keeps the record; stderr stays quiet
