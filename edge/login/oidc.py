"""OpenID Connect relying party: the protocol pieces of the login service.

Authorization code flow with PKCE (S256), ``state`` and ``nonce`` (OpenID
Connect Core 1.0 section 3.1; RFC 7636). The login service keeps a `Flow`
between `OidcClient.begin` and `OidcClient.finish` (in a signed cookie);
nothing here keeps per-login state.

Invariants:
- The issuer is compared exactly (no trailing-slash or case folding): the
  discovery document's ``issuer``, every ID token's ``iss`` and the
  callback's ``iss`` (RFC 9207) must equal the configured string (OpenID
  Connect Discovery 1.0 section 4.3). The callback's ``iss`` is required
  when the discovery document says the provider sends it, and checked
  before the code is redeemed: a response from another provider (a mix-up)
  never reaches our token request.
- Plain http is accepted only for a loopback issuer and loopback endpoints;
  the client secret and the codes never travel unencrypted off the host.
- An ID token is verified with a key of the provider's JWKS chosen by kid,
  with the algorithm that key is for; "none", HS* and any algorithm not in
  `SIGNING_ALGORITHMS` are refused before a key is looked at.
- The discovery document is fetched once and kept; a failed fetch is not
  kept, so the next call tries again. The JWKS is an edge.access.keysets
  KeySet (the one JWKS cache), kept for JWKS_MAX_AGE and refetched at most
  once per `finish` when the token names an unknown kid; a failed fetch
  keeps the keys held. Its time claims go through
  edge.access.claims.check_times.
  ID tokens come only from the token endpoint, over a connection we opened,
  so an unknown kid cannot be injected by a browser to make us fetch.
- Every provider call is one `fetch.request`: bounded in time and size.
- Failures are OidcError: ``str(exc)`` for the log (with the provider's error
  code), ``exc.public`` for the user (never provider-controlled text).
- Who signed in comes from the verified ID token alone (`user_claims`): the
  email claim must be a non-empty string; ``email_verified`` must be true or
  absent (many providers omit it) unless the provider is configured with
  allow_unverified_email; groups are what the groups claim holds, tolerantly
  (a string is one group, non-strings are dropped), never a refusal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jwt
import msgspec
from jwt.types import Options

from edge.access.claims import Refusal, check_times
from edge.access.keysets import JwksError, KeySet
from edge.config.schema import KIB
from edge.config.syntax import is_loopback_host
from edge.proxy.fetch import FETCH_LIMIT, FETCH_TIMEOUT, FetchError, Response, request

DOCUMENT_LIMIT = 256 * KIB  # bytes; discovery and token responses are a few KiB
JWKS_MAX_AGE = 3600.0  # seconds; a key the provider withdrew stops being trusted
# Asymmetric algorithms only: the JWKS is public, so an HMAC "key" from it
# would let anyone sign.
SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_TEXT_CLIP = 200  # characters of provider-sent text quoted in a log message

# Short texts safe to show a user; the log gets the details.
REFUSED = "the sign-in was refused by the identity provider"
EXPIRED = "that sign-in link expired or was already used; please try again"
UNAVAILABLE = "the identity provider could not be reached; please try again later"
STALE = "that sign-in did not start in this browser or has already finished; please try again"
FAILED = "the sign-in could not be completed"
NO_EMAIL = "the identity provider did not share your email address"
UNVERIFIED = "your email address is not verified with the identity provider"

# PyJWT checks the signature and that the claims exist; the values (and the
# times, against the caller's clock) are checked below with clear reasons.
_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "require": ["iss", "sub", "aud", "exp", "iat"],
    "verify_aud": False,
    "verify_iss": False,
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "enforce_minimum_key_length": True,
}


class OidcError(Exception):
    """`str(exc)` is for the log; `.public` is a short message safe to show a user."""

    def __init__(self, log: str, public: str = FAILED) -> None:
        super().__init__(log)
        self.public = public


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    client_secret_post: bool = False  # the provider does not take client_secret_basic
    iss_parameter: bool = False  # the provider names itself in the callback (RFC 9207)


@dataclass(frozen=True)
class Flow:
    state: str
    nonce: str
    verifier: str  # the PKCE code_verifier; only its S256 hash leaves for the browser


@dataclass(frozen=True)
class Claims:
    sub: str
    email: str
    groups: tuple[str, ...]
    raw: Mapping[str, Any]
    # The ID token's `amr` (RFC 8176: pwd, mfa, otp, hwk, ...), carried into
    # the edge's tokens for auth_method rules; () when the provider sends none.
    amr: tuple[str, ...] = ()


class _DiscoveryDocument(msgspec.Struct):
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    code_challenge_methods_supported: list[str] | None = None
    token_endpoint_auth_methods_supported: list[str] | None = None
    authorization_response_iss_parameter_supported: bool = False


# -- the browser leg -----------------------------------------------------------


def new_flow() -> Flow:
    # 32 random bytes each (256 bits); the verifier is 43 characters, the
    # shortest RFC 7636 4.1 allows.
    return Flow(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32))


def code_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(
    d: Discovery, client_id: str, redirect_uri: str, scopes: Sequence[str], flow: Flow
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": code_challenge(flow.verifier),
        "code_challenge_method": "S256",
    }
    # The endpoint may carry a query of its own (OAuth 2.0 section 3.1 allows it).
    joiner = "&" if "?" in d.authorization_endpoint else "?"
    return d.authorization_endpoint + joiner + urlencode(params, quote_via=quote)


def callback_params(query: str) -> tuple[str, str]:
    """(code, state) from the query string of the redirect back to us.

    An ``error`` parameter (the user declined, the provider refused) or a
    missing code is an OidcError naming the provider's error code.
    """
    params = parse_qs(query, keep_blank_values=True)
    error = _first(params, "error")
    if error:
        description = _first(params, "error_description")
        public = REFUSED if error in _REFUSALS else FAILED
        raise OidcError(
            f"the provider answered the sign-in with {_clip(error)}: {_clip(description)}", public
        )
    code, state = _first(params, "code"), _first(params, "state")
    if not code or not state:
        raise OidcError("the sign-in callback has no code or no state", STALE)
    return code, state


# Authorization errors (OAuth 2.0 4.1.2.1; OpenID Connect Core 3.1.2.6) that
# mean "this user may not sign in (now)" rather than "something is broken".
_REFUSALS = frozenset(
    {
        "access_denied",
        "login_required",
        "interaction_required",
        "consent_required",
        "account_selection_required",
    }
)


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


def _clip(text: object) -> str:
    """Provider- or browser-sent text, quoted and shortened for the log."""
    return repr(str(text)[:_TEXT_CLIP])


# -- the client ----------------------------------------------------------------


class OidcClient:
    """One relying-party registration at one provider."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        scopes: Sequence[str] = ("openid", "email", "profile"),
        email_claim: str = "email",
        groups_claim: str = "groups",
        allow_unverified_email: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        leeway: float = 60,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        _check_endpoint("issuer", issuer)
        if "openid" not in scopes:
            raise ValueError("the scopes must include 'openid'")
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = tuple(scopes)
        self.email_claim = email_claim
        self.groups_claim = groups_claim
        self.allow_unverified_email = allow_unverified_email
        self.ssl_context = ssl_context
        self.leeway = leeway
        self.timeout = timeout
        self._discovery: Discovery | None = None
        # No refetch interval: ID tokens come only from the token endpoint
        # (module invariants), so an unknown kid is never a browser's doing.
        self._keys = KeySet(f"{issuer} JWKS", remote=True, min_interval=0.0, refresh=JWKS_MAX_AGE)

    async def discovery(self) -> Discovery:
        if self._discovery is None:
            self._discovery = await self._discover()
        return self._discovery

    async def begin(self, redirect_uri: str) -> tuple[str, Flow]:
        """The URL to send the browser to, and the flow to keep until `finish`."""
        d, flow = await self.discovery(), new_flow()
        return authorization_url(d, self.client_id, redirect_uri, self.scopes, flow), flow

    async def finish(
        self,
        code: str,
        returned_state: str,
        flow: Flow,
        redirect_uri: str,
        now: float,
        returned_iss: str | None = None,
    ) -> Claims:
        """The verified user behind the code the browser brought back.

        `redirect_uri` must be the one given to `begin`; `now` is the clock
        the ID token's times are checked against; `returned_iss` is the
        callback's ``iss`` parameter (None when it has none).
        """
        if not hmac.compare_digest(returned_state.encode(), flow.state.encode()):
            raise OidcError("the callback's state does not match the sign-in flow", STALE)
        if not code:
            raise OidcError("the callback has no code", STALE)
        d = await self.discovery()
        self._check_response_issuer(d, returned_iss)
        id_token = await self._redeem(d, code, flow.verifier, redirect_uri)
        claims = await self._verify(d, id_token, flow.nonce, now)
        return user_claims(claims, self.email_claim, self.groups_claim, self.allow_unverified_email)

    def _check_response_issuer(self, d: Discovery, returned_iss: str | None) -> None:
        # RFC 9207 section 2.4.
        if returned_iss is None:
            if d.iss_parameter:
                raise OidcError("the callback has no iss, though the provider's discovery says it sends one")
        elif returned_iss != self.issuer:
            raise OidcError(f"the callback's iss {_clip(returned_iss)} is not {self.issuer!r}")

    # -- discovery and keys

    async def _discover(self) -> Discovery:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        response = await self._call("GET", url, limit=DOCUMENT_LIMIT)
        if response.status != 200:
            raise OidcError(f"discovery {url}: status {response.status}", UNAVAILABLE)
        try:
            doc = msgspec.json.decode(response.body, type=_DiscoveryDocument)
        except msgspec.DecodeError as exc:
            raise OidcError(f"discovery {url}: {exc}") from None
        return self._checked_discovery(doc)

    def _checked_discovery(self, doc: _DiscoveryDocument) -> Discovery:
        if doc.issuer != self.issuer:
            raise OidcError(f"discovery: the document's issuer {_clip(doc.issuer)} is not {self.issuer!r}")
        if (
            doc.code_challenge_methods_supported is not None
            and "S256" not in doc.code_challenge_methods_supported
        ):
            raise OidcError("discovery: the provider does not support PKCE with S256")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            _check_endpoint(name, getattr(doc, name), OidcError)
        methods = doc.token_endpoint_auth_methods_supported or ["client_secret_basic"]
        post = "client_secret_basic" not in methods and "client_secret_post" in methods
        return Discovery(
            doc.issuer,
            doc.authorization_endpoint,
            doc.token_endpoint,
            doc.jwks_uri,
            post,
            doc.authorization_response_iss_parameter_supported,
        )

    async def _key(self, d: Discovery, kid: str, now: float) -> jwt.PyJWK:
        if self._keys.get(kid) is None:
            self._keys.note_unknown_kid()
        if self._keys.claim_fetch(now):
            await self._fetch_keys(d, now)
        key = self._keys.get(kid)
        if key is None:
            raise OidcError(f"ID token: kid {_clip(kid)} is not in the provider's JWKS")
        return key

    async def _fetch_keys(self, d: Discovery, now: float) -> None:
        try:
            response = await self._call("GET", d.jwks_uri, limit=FETCH_LIMIT)
        except OidcError as exc:
            self._keys.fetch_failed(now, str(exc))
            raise
        if response.status != 200:
            self._keys.fetch_failed(now, f"status {response.status}")
            raise OidcError(f"JWKS {d.jwks_uri}: status {response.status}", UNAVAILABLE)
        try:
            self._keys.update(response.body, now)
        except JwksError as exc:
            raise OidcError(f"JWKS {d.jwks_uri}: {exc}") from None

    # -- the token endpoint

    async def _redeem(self, d: Discovery, code: str, verifier: str, redirect_uri: str) -> str:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        headers = [("content-type", "application/x-www-form-urlencoded"), ("accept", "application/json")]
        if d.client_secret_post:
            form |= {"client_id": self.client_id, "client_secret": self.client_secret}
        else:
            headers.append(("authorization", self._basic_credentials()))
        response = await self._call(
            "POST", d.token_endpoint, headers=headers, body=urlencode(form).encode(), limit=DOCUMENT_LIMIT
        )
        return _id_token(d.token_endpoint, response)

    def _basic_credentials(self) -> str:
        # RFC 6749 2.3.1: both parts are form-urlencoded before base64.
        pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    async def _call(
        self, method: str, url: str, *, limit: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> Response:
        try:
            return await request(
                method,
                url,
                headers=headers,
                body=body,
                timeout=self.timeout,
                limit=limit,
                ssl_context=self.ssl_context,
            )
        except FetchError as exc:
            raise OidcError(str(exc), UNAVAILABLE) from None

    # -- the ID token

    async def _verify(self, d: Discovery, id_token: str, nonce: str, now: float) -> dict[str, Any]:
        alg, kid = _header(id_token)
        key = await self._key(d, kid, now)
        if key.algorithm_name != alg:
            raise OidcError(f"ID token: alg {alg} does not match key {_clip(kid)} ({key.algorithm_name})")
        try:
            claims = jwt.decode(id_token, key, algorithms=[alg], options=_DECODE_OPTIONS)
        except jwt.PyJWTError as exc:
            raise OidcError(f"ID token: {exc}") from None
        self._check_claims(claims, nonce, now)
        return claims

    def _check_claims(self, claims: Mapping[str, Any], nonce: str, now: float) -> None:
        if claims["iss"] != self.issuer:
            raise OidcError(f"ID token: iss {_clip(claims['iss'])} is not {self.issuer!r}")
        _check_audience(claims, self.client_id)
        times = check_times(claims, now, self.leeway)
        if isinstance(times, Refusal):
            raise OidcError(f"ID token: {times.reason} (now {now:.0f}, leeway {self.leeway:g} s)")
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
            raise OidcError("ID token: the nonce does not match the sign-in flow", STALE)


def _id_token(url: str, response: Response) -> str:
    doc = _json_object(response.body)
    if response.status == 200:
        token = doc.get("id_token")
        if not isinstance(token, str) or not token:
            raise OidcError(f"token endpoint {url}: the response has no id_token (is 'openid' a scope?)")
        return token
    error, description = doc.get("error", ""), doc.get("error_description", "")
    log = f"token endpoint {url}: status {response.status}, error {_clip(error)}: {_clip(description)}"
    if error == "invalid_grant":
        raise OidcError(log, EXPIRED)
    raise OidcError(log, UNAVAILABLE if response.status >= 500 else FAILED)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _header(token: str) -> tuple[str, str]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise OidcError(f"ID token: {exc}") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in SIGNING_ALGORITHMS:
        raise OidcError(f"ID token: alg {_clip(alg)} is not accepted")
    if not isinstance(kid, str) or not kid:
        raise OidcError("ID token: no kid in the header")
    return alg, kid


def _check_audience(claims: Mapping[str, Any], client_id: str) -> None:
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or client_id not in audiences:
        raise OidcError(f"ID token: aud {_clip(aud)} does not include our client_id {client_id!r}")
    # OpenID Connect Core 3.1.3.7 (4, 5): azp, when sent, must be us.
    azp = claims.get("azp")
    if (azp is not None or len(audiences) > 1) and azp != client_id:
        raise OidcError(f"ID token: azp {_clip(azp)} is not our client_id {client_id!r}")


# -- the user in the ID token ----------------------------------------------------


def user_claims(
    claims: Mapping[str, Any], email_claim: str, groups_claim: str, allow_unverified_email: bool = False
) -> Claims:
    """The user a verified ID token names, read the way common providers send it.

    `email_claim` and `groups_claim` are claim names or dotted paths into
    nested objects (`claim_at`). ``email_verified`` absent is accepted (Azure
    AD, many SAML bridges and some Okta setups never send it); anything but
    true (or Cognito's "true") is refused unless `allow_unverified_email`.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise OidcError("ID token: sub is not a non-empty string")
    if not allow_unverified_email and claims.get("email_verified", True) not in (True, "true"):
        raise OidcError(
            f"ID token: email_verified is {_clip(claims['email_verified'])} for sub {_clip(sub)}", UNVERIFIED
        )
    email = claim_at(claims, email_claim)
    if not isinstance(email, str) or not email:
        raise OidcError(f"ID token: no {email_claim!r} claim (a string) for sub {_clip(sub)}", NO_EMAIL)
    groups = groups_of(claim_at(claims, groups_claim))
    # amr (RFC 8176) read as tolerantly as groups: a malformed one names no
    # method, so an auth_method rule simply does not match.
    amr = groups_of(claims.get("amr"))
    return Claims(sub, email, groups, types.MappingProxyType(dict(claims)), amr)


def claim_at(claims: Mapping[str, Any], name: str) -> object:
    """The claim `name`, or None: a top-level claim of that exact name first
    (namespaced claims such as Auth0's "https://example.com/roles" hold dots),
    else a dotted path into nested objects ("realm_access.roles", Keycloak)."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def groups_of(value: object) -> tuple[str, ...]:
    """Groups from a claim's value: a list keeps its non-empty strings (in
    order, once each), a non-empty string is one group, anything else none."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(dict.fromkeys(g for g in value if isinstance(g, str) and g))
    return ()


def _check_endpoint(name: str, url: str, error: type[Exception] = ValueError) -> None:
    """https, or http to a loopback host (a provider on this machine, tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return
    raise error(f"{name} {_clip(url)}: must be an https URL (http only for a loopback host)")
