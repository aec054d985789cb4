"""edge/login/oidc.py against a real provider of our own (tests/support/oidc_provider.py) over
loopback sockets, and edge/proxy/fetch.py's `request` and TLS contexts.

The browser's part is played by http.client: it GETs the authorization URL,
does not follow the redirect, and hands the Location's query to the client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import ssl
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from conftest import free_port, self_signed_cert
from oidc_provider import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, OidcProvider

from edge.login import oidc
from edge.login.oidc import Claims, Flow, OidcClient, OidcError, callback_params
from edge.proxy.fetch import FetchError, client_ssl_context, fetch, request

T = TypeVar("T")
DISCOVERY = "/.well-known/openid-configuration"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as p:
        yield p


def client_for(provider: OidcProvider, **options: Any) -> OidcClient:
    return OidcClient(provider.issuer, CLIENT_ID, CLIENT_SECRET, **options)


def browse(url: str, context: ssl.SSLContext | None = None) -> str:
    """The browser's visit to the provider: the query of the redirect back to us."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 302, response.status
    location = response.getheader("Location", "")
    assert location.startswith(REDIRECT_URI + "?"), location
    return urlsplit(location).query


def begin(client: OidcClient, login_hint: str = "") -> tuple[str, str, Flow]:
    """(code, state, flow) after the browser's round trip."""
    url, flow = run(client.begin(REDIRECT_URI))
    code, state = callback_params(browse(url + (f"&login_hint={login_hint}" if login_hint else "")))
    return code, state, flow


def sign_in(client: OidcClient, login_hint: str = "") -> Claims:
    code, state, flow = begin(client, login_hint)
    return run(client.finish(code, state, flow, REDIRECT_URI, time.time()))


def refused(client: OidcClient, login_hint: str = "") -> OidcError:
    with pytest.raises(OidcError) as caught:
        sign_in(client, login_hint)
    return caught.value


def test_discovery_is_fetched_once(provider: OidcProvider) -> None:
    client = client_for(provider)
    first, second = run(client.discovery()), run(client.discovery())
    assert first is second
    assert first.issuer == provider.issuer
    assert first.token_endpoint == f"{provider.issuer}/token"
    assert first.jwks_uri == f"{provider.issuer}/jwks"
    assert provider.requests.count(DISCOVERY) == 1


def test_discovery_issuer_mismatch_is_refused_and_not_kept(provider: OidcProvider) -> None:
    client = client_for(provider)
    provider.discovery_issuer = provider.issuer + "/"  # exact comparison: a slash differs
    with pytest.raises(OidcError, match="issuer"):
        run(client.discovery())
    provider.discovery_issuer = None
    assert run(client.discovery()).issuer == provider.issuer
    assert provider.requests.count(DISCOVERY) == 2


def test_authorization_url_carries_state_nonce_and_pkce(provider: OidcProvider) -> None:
    url, flow = run(client_for(provider).begin(REDIRECT_URI))
    assert url.startswith(f"{provider.issuer}/authorize?")
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    challenge = base64.urlsafe_b64encode(hashlib.sha256(flow.verifier.encode()).digest()).rstrip(b"=")
    assert q == {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile",
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    assert flow.verifier not in url


def test_flows_are_random_and_long_enough() -> None:
    flows = [oidc.new_flow() for _ in range(3)]
    values = [v for f in flows for v in (f.state, f.nonce, f.verifier)]
    assert len(set(values)) == len(values)
    assert all(len(v) >= 43 and v.replace("-", "").replace("_", "").isalnum() for v in values)


def test_client_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="https"):
        OidcClient("http://idp.example.com", CLIENT_ID, CLIENT_SECRET)
    with pytest.raises(ValueError, match="openid"):
        OidcClient("https://idp.example.com", CLIENT_ID, CLIENT_SECRET, scopes=("email",))


# -- the code flow ----------------------------------------------------------------


def test_code_flow_returns_the_verified_user(provider: OidcProvider) -> None:
    client = client_for(provider)
    code, state, flow = begin(client)
    claims = run(client.finish(code, state, flow, REDIRECT_URI, time.time()))
    assert (claims.sub, claims.email, claims.groups) == ("u-alice", "alice@example.com", ("staff", "admins"))
    assert claims.raw["nonce"] == flow.nonce
    assert claims.raw["aud"] == CLIENT_ID
    assert provider.requests.count(DISCOVERY) == 1


def test_login_hint_and_absent_groups(provider: OidcProvider) -> None:
    claims = sign_in(client_for(provider), login_hint="bob")
    assert (claims.email, claims.groups) == ("bob@example.com", ())


def test_client_secret_post_when_the_provider_takes_only_that(provider: OidcProvider) -> None:
    provider.auth_methods = ["client_secret_post"]
    client = client_for(provider)
    assert sign_in(client).email == "alice@example.com"
    assert run(client.discovery()).client_secret_post


def test_configured_email_and_groups_claims(provider: OidcProvider) -> None:
    provider.extra_claims = {"upn": "alice@corp.example", "roles": ["readers"]}
    claims = sign_in(client_for(provider, email_claim="upn", groups_claim="roles"))
    assert (claims.email, claims.groups) == ("alice@corp.example", ("readers",))


def test_several_audiences_need_azp(provider: OidcProvider) -> None:
    provider.token_audience = [CLIENT_ID, "other-app"]
    assert "azp" in str(refused(client_for(provider)))
    provider.extra_claims = {"azp": CLIENT_ID}
    assert sign_in(client_for(provider)).sub == "u-alice"


def test_key_rotation_refetches_the_jwks_once(provider: OidcProvider) -> None:
    client = client_for(provider)
    sign_in(client)
    provider.rotate_key()
    sign_in(client)
    assert provider.requests.count("/jwks") == 2


# -- refusals ---------------------------------------------------------------------


def test_bad_state_or_no_code_is_refused_before_the_provider_is_asked(provider: OidcProvider) -> None:
    client = client_for(provider)
    code, _, flow = begin(client)
    with pytest.raises(OidcError) as caught:
        run(client.finish(code, "forged-state", flow, REDIRECT_URI, time.time()))
    assert caught.value.public == oidc.STALE
    with pytest.raises(OidcError, match="no code"):
        run(client.finish("", flow.state, flow, REDIRECT_URI, time.time()))
    assert "/token" not in provider.requests


def test_bad_nonce(provider: OidcProvider) -> None:
    provider.wrong_nonce = True
    error = refused(client_for(provider))
    assert "nonce" in str(error)
    assert error.public == oidc.STALE


def test_expired_code(provider: OidcProvider) -> None:
    provider.code_lifetime = 0
    error = refused(client_for(provider))
    assert "invalid_grant" in str(error) and "expired" in str(error)
    assert error.public == "that sign-in link expired or was already used; please try again"


def test_replayed_code(provider: OidcProvider) -> None:
    client = client_for(provider)
    code, state, flow = begin(client)
    run(client.finish(code, state, flow, REDIRECT_URI, time.time()))
    with pytest.raises(OidcError) as caught:
        run(client.finish(code, state, flow, REDIRECT_URI, time.time()))
    assert "invalid_grant" in str(caught.value) and "already used" in str(caught.value)
    assert caught.value.public == oidc.EXPIRED


@pytest.mark.parametrize(
    ("knob", "value", "logged"),
    [
        ("token_issuer", "https://evil.example", "iss"),
        ("token_audience", "another-client", "aud"),
        ("id_token_lifetime", -3600.0, "expired"),
        ("unknown_kid", True, "kid 'stranger'"),
    ],
)
def test_bad_id_tokens(provider: OidcProvider, knob: str, value: object, logged: str) -> None:
    setattr(provider, knob, value)
    error = refused(client_for(provider))
    assert logged in str(error)
    assert error.public == oidc.FAILED


def test_unknown_kid_refetches_the_jwks_once(provider: OidcProvider) -> None:
    provider.unknown_kid = True
    client = client_for(provider)
    run(client._fetch_keys(run(client.discovery()), time.time()))  # a fresh JWKS, still without that kid
    refused(client)
    assert provider.requests.count("/jwks") == 2


def test_unverified_email(provider: OidcProvider) -> None:
    error = refused(client_for(provider), login_hint="eve")
    assert error.public == "your email address is not verified with the identity provider"


def test_missing_email(provider: OidcProvider) -> None:
    provider.extra_claims = {"email": None}
    assert refused(client_for(provider)).public == oidc.NO_EMAIL


def test_access_denied(provider: OidcProvider) -> None:
    provider.deny = True
    url, _ = run(client_for(provider).begin(REDIRECT_URI))
    with pytest.raises(OidcError) as caught:
        callback_params(browse(url))
    assert "access_denied" in str(caught.value)
    assert caught.value.public == "the sign-in was refused by the identity provider"


def test_callback_without_code() -> None:
    with pytest.raises(OidcError) as caught:
        callback_params("state=abc")
    assert caught.value.public == oidc.STALE


def test_wrong_client_secret(provider: OidcProvider) -> None:
    client = OidcClient(provider.issuer, CLIENT_ID, "not-the-secret")
    error = refused(client)
    assert "invalid_client" in str(error)
    assert error.public == oidc.FAILED


def test_provider_down() -> None:
    client = OidcClient(f"http://127.0.0.1:{free_port()}", CLIENT_ID, CLIENT_SECRET, timeout=5)
    with pytest.raises(OidcError) as caught:
        run(client.begin(REDIRECT_URI))
    assert caught.value.public == oidc.UNAVAILABLE
    assert "refused" in str(caught.value).lower() or "connect" in str(caught.value).lower()


@pytest.mark.parametrize(
    "header",
    [{"alg": "HS256", "kid": "k"}, {"alg": "none", "kid": "k"}, {"alg": "RS256"}],
)
def test_id_token_algorithms_and_kid_are_checked_first(
    provider: OidcProvider, header: dict[str, str]
) -> None:
    segment = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    token = f"{segment}.e30.c2ln"
    client = client_for(provider)
    with pytest.raises(OidcError, match=r"alg|kid"):
        run(client._verify(run(client.discovery()), token, "nonce", time.time()))
    assert "/jwks" not in provider.requests


# -- https ------------------------------------------------------------------------


def test_https_provider_with_a_ca_file(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    with OidcProvider(tls=(cert, key)) as provider:
        trusting = client_for(provider, ssl_context=client_ssl_context(True, str(cert)))
        url, flow = run(trusting.begin(REDIRECT_URI))
        code, state = callback_params(browse(url, ssl.create_default_context(cafile=str(cert))))
        claims = run(trusting.finish(code, state, flow, REDIRECT_URI, time.time()))
        assert claims.email == "alice@example.com"
        with pytest.raises(OidcError, match="certificate verify failed") as caught:
            run(client_for(provider).discovery())  # the system trust store does not know it
        assert caught.value.public == oidc.UNAVAILABLE
        assert run(client_for(provider, ssl_context=client_ssl_context(False, "")).discovery())


def test_client_ssl_context_with_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="CA file"):
        client_ssl_context(True, str(tmp_path / "missing.pem"))


# -- fetch.request ----------------------------------------------------------------


def test_request_posts_a_body_and_returns_any_status(provider: OidcProvider) -> None:
    form = f"grant_type=authorization_code&code=nope&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
    response = run(
        request(
            "POST",
            f"{provider.issuer}/token",
            headers=[("content-type", "application/x-www-form-urlencoded")],
            body=form.encode(),
        )
    )
    assert response.status == 400
    assert response.header("Content-Type") == "application/json"
    assert json.loads(response.body) == {"error": "invalid_grant", "error_description": "unknown code"}


def test_request_limits_the_body(provider: OidcProvider) -> None:
    with pytest.raises(FetchError, match="larger than 10 bytes"):
        run(request("GET", f"{provider.issuer}/jwks", limit=10, timeout=5))


def test_fetch_still_returns_a_200_body_and_refuses_others(provider: OidcProvider) -> None:
    keys = json.loads(run(fetch(f"{provider.issuer}/jwks")))
    assert jwt.PyJWK(keys["keys"][0]).key_id == provider.kid
    with pytest.raises(FetchError, match="status 404"):
        run(fetch(f"{provider.issuer}/nothing"))


def test_request_to_a_closed_port() -> None:
    with pytest.raises(FetchError, match=r"GET http://127\.0\.0\.1"):
        run(request("GET", f"http://127.0.0.1:{free_port()}/", timeout=5))


def test_amr_from_the_id_token(provider: OidcProvider) -> None:
    """The provider's amr (RFC 8176) is what the edge's tokens will carry."""
    assert sign_in(client_for(provider)).amr == ()
    provider.extra_claims = {"amr": ["pwd", "otp"]}
    assert sign_in(client_for(provider)).amr == ("pwd", "otp")
    provider.extra_claims = {"amr": "mfa"}
    error = refused(client_for(provider))
    assert "'amr' claim is not a list of strings" in str(error)
