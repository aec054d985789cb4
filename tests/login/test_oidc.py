"""edge/login/oidc.py against oidc-provider, an OpenID-Certified provider
(npm; tests/support/oidc_provider.mjs run by tests/support/oidc_node.py), over
loopback sockets, and edge/proxy/fetch.py's `request` and TLS contexts.

The browser's part is played by `sign_in_at`: it visits the authorization
URL, signs in at the provider's interaction and returns the redirect back
to us, whose query goes to the client.

Faults oidc-provider cannot be made to produce (it signs correct tokens)
come from a provider of our own, `rogue` (tests/support/oidc_provider.py);
each such test says why. The claim extraction is tested without sockets at
the end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from conftest import free_port, self_signed_cert
from oidc_node import (  # noqa: F401
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    NodeProvider,
    certified_provider,
    sign_in_at,
)
from oidc_provider import OidcProvider as RogueProvider
from procs import tcp_sockets

from edge.login import oidc
from edge.login.oidc import Claims, Flow, OidcClient, OidcError, callback_params, user_claims
from edge.proxy.fetch import FetchError, client_ssl_context, fetch, request

T = TypeVar("T")
DISCOVERY = "/.well-known/openid-configuration"
Provider = NodeProvider | RogueProvider


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def provider(certified_provider: NodeProvider) -> NodeProvider:  # noqa: F811
    """One oidc-provider for the module: tests that change it start their own."""
    return certified_provider


@pytest.fixture
def rogue() -> Iterator[RogueProvider]:
    with RogueProvider() as p:
        yield p


def client_for(provider: Provider, **options: Any) -> OidcClient:
    return OidcClient(provider.issuer, CLIENT_ID, CLIENT_SECRET, **options)


def browse(url: str, login: str = "alice", context: ssl.SSLContext | None = None) -> str:
    """The browser's visit to the provider: the query of the redirect back to us."""
    location = sign_in_at(url, login, context=context)
    assert location.startswith(REDIRECT_URI + "?"), location
    return urlsplit(location).query


def begin(client: OidcClient, login: str = "alice") -> tuple[str, str, Flow, str | None]:
    """(code, state, flow, iss) after the browser's round trip."""
    url, flow = run(client.begin(REDIRECT_URI))
    query = browse(url, login)
    code, state = callback_params(query)
    return code, state, flow, returned_iss(query)


def returned_iss(query: str) -> str | None:
    """The callback's iss parameter (RFC 9207), as the login service reads it."""
    values = parse_qs(query).get("iss")
    return values[0] if values else None


def sign_in(client: OidcClient, login: str = "alice") -> Claims:
    code, state, flow, iss = begin(client, login)
    return run(client.finish(code, state, flow, REDIRECT_URI, time.time(), iss))


def refused(client: OidcClient, login: str = "alice") -> OidcError:
    with pytest.raises(OidcError) as caught:
        sign_in(client, login)
    return caught.value


def test_discovery_is_fetched_once(provider: NodeProvider) -> None:
    client = client_for(provider)
    before = provider.requests.count(DISCOVERY)
    first, second = run(client.discovery()), run(client.discovery())
    assert first is second
    assert first.issuer == provider.issuer
    assert first.token_endpoint == f"{provider.issuer}/token"
    assert first.jwks_uri == f"{provider.issuer}/jwks"
    assert provider.requests.count(DISCOVERY) == before + 1


def test_discovery_issuer_mismatch_is_refused_and_not_kept(rogue: RogueProvider) -> None:
    """Our own provider: oidc-provider's document always names its own issuer."""
    client = client_for(rogue)
    rogue.discovery_issuer = rogue.issuer + "/"  # exact comparison: a slash differs
    with pytest.raises(OidcError, match="issuer"):
        run(client.discovery())
    rogue.discovery_issuer = None
    assert run(client.discovery()).issuer == rogue.issuer
    assert rogue.requests.count(DISCOVERY) == 2


def test_authorization_url_carries_state_nonce_and_pkce(provider: NodeProvider) -> None:
    url, flow = run(client_for(provider).begin(REDIRECT_URI))
    assert url.startswith(f"{provider.issuer}/auth?")
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


def test_the_provider_requires_pkce(provider: NodeProvider) -> None:
    """The certified provider refuses a code request without PKCE, so the
    edge's S256 challenge is what lets the sign-in through."""
    url, _ = run(client_for(provider).begin(REDIRECT_URI))
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items() if not k.startswith("code_challenge")}
    stripped = parts._replace(query=urlencode(q)).geturl()
    with pytest.raises(OidcError) as caught:
        callback_params(browse(stripped))
    assert "invalid_request" in str(caught.value)


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


def test_code_flow_returns_the_verified_user(provider: NodeProvider) -> None:
    client = client_for(provider)
    code, state, flow, iss = begin(client)
    claims = run(client.finish(code, state, flow, REDIRECT_URI, time.time(), iss))
    assert (claims.sub, claims.email, claims.groups) == ("u-alice", "alice@example.com", ("staff", "admins"))
    assert claims.raw["nonce"] == flow.nonce
    assert claims.raw["aud"] == CLIENT_ID
    assert claims.raw["iss"] == provider.issuer


def test_another_user_and_absent_groups(provider: NodeProvider) -> None:
    claims = sign_in(client_for(provider), "bob")
    assert (claims.email, claims.groups) == ("bob@example.com", ())


def test_nested_groups_claim(provider: NodeProvider) -> None:
    """Keycloak's realm roles: groups_claim = "realm_access.roles"."""
    claims = sign_in(client_for(provider, groups_claim="realm_access.roles"), "kim")
    assert (claims.email, claims.groups) == ("kim@example.com", ("admins", "offline_access"))


def test_groups_as_one_string_and_email_verified_absent(provider: NodeProvider) -> None:
    claims = sign_in(client_for(provider), "sam")
    assert "email_verified" not in claims.raw
    assert (claims.email, claims.groups) == ("sam@example.com", ("admins",))


def test_client_secret_post_when_the_provider_takes_only_that() -> None:
    with NodeProvider(auth_methods=("client_secret_post",)) as provider:
        client = client_for(provider)
        assert sign_in(client).email == "alice@example.com"
        assert run(client.discovery()).client_secret_post


def test_several_audiences_need_azp(rogue: RogueProvider) -> None:
    """Our own provider: oidc-provider's ID tokens name one audience."""
    rogue.token_audience = [CLIENT_ID, "other-app"]
    assert "azp" in str(refused(client_for(rogue)))
    rogue.extra_claims = {"azp": CLIENT_ID}
    assert sign_in(client_for(rogue)).sub == "u-alice"


def test_key_rotation_refetches_the_jwks_once() -> None:
    """oidc-provider restarted on the same issuer with a new signing key: the
    client, holding the old JWKS, fetches the new one once, on the new kid."""
    with NodeProvider() as provider:
        client = client_for(provider)
        assert sign_in(client).sub == "u-alice"
        old_kid = published_kid(provider)
        provider.restart()
        assert published_kid(provider) != old_kid
        before = provider.requests.count("/jwks")
        assert sign_in(client).sub == "u-alice"
        assert provider.requests.count("/jwks") == before + 1
        assert sign_in(client).sub == "u-alice"  # the new key is held now
        assert provider.requests.count("/jwks") == before + 1


def published_kid(provider: NodeProvider) -> str:
    keys = json.loads(run(fetch(f"{provider.issuer}/jwks")))["keys"]
    assert len(keys) == 1
    return str(keys[0]["kid"])


# -- refusals ---------------------------------------------------------------------


def test_bad_state_or_no_code_is_refused_before_the_provider_is_asked(provider: NodeProvider) -> None:
    client = client_for(provider)
    code, _, flow, _ = begin(client)
    before = provider.requests.count("/token")
    with pytest.raises(OidcError) as caught:
        run(client.finish(code, "forged-state", flow, REDIRECT_URI, time.time()))
    assert caught.value.public == oidc.STALE
    with pytest.raises(OidcError, match="no code"):
        run(client.finish("", flow.state, flow, REDIRECT_URI, time.time()))
    assert provider.requests.count("/token") == before


def test_callback_iss_is_checked_before_the_code_is_redeemed(provider: NodeProvider) -> None:
    """RFC 9207: oidc-provider sends iss and says so in its discovery document."""
    client = client_for(provider)
    code, state, flow, iss = begin(client)
    assert iss == provider.issuer and run(client.discovery()).iss_parameter
    before = provider.requests.count("/token")
    for wrong in ("http://127.0.0.1:1", provider.issuer + "/", None):
        with pytest.raises(OidcError, match="iss") as caught:
            run(client.finish(code, state, flow, REDIRECT_URI, time.time(), wrong))
        assert caught.value.public == oidc.FAILED
    assert provider.requests.count("/token") == before
    assert run(client.finish(code, state, flow, REDIRECT_URI, time.time(), iss)).sub == "u-alice"


def test_callback_iss_optional_when_the_provider_does_not_send_it(rogue: RogueProvider) -> None:
    """Our own provider: oidc-provider always sends iss (RFC 9207)."""
    client = client_for(rogue)
    code, state, flow, iss = begin(client)
    assert iss is None and not run(client.discovery()).iss_parameter
    assert run(client.finish(code, state, flow, REDIRECT_URI, time.time())).sub == "u-alice"
    code, state, flow, _ = begin(client)
    with pytest.raises(OidcError, match="iss"):  # sent anyway, it must still be the issuer
        run(client.finish(code, state, flow, REDIRECT_URI, time.time(), "https://evil.example"))


def test_bad_nonce(rogue: RogueProvider) -> None:
    """Our own provider: oidc-provider always echoes the nonce it was sent."""
    rogue.wrong_nonce = True
    error = refused(client_for(rogue))
    assert "nonce" in str(error)
    assert error.public == oidc.STALE


def test_expired_code() -> None:
    with NodeProvider(code_ttl=1) as provider:
        client = client_for(provider)
        code, state, flow, iss = begin(client)
        time.sleep(2.1)  # the code lives 1 s (whole seconds at the provider)
        with pytest.raises(OidcError) as caught:
            run(client.finish(code, state, flow, REDIRECT_URI, time.time(), iss))
    assert "invalid_grant" in str(caught.value)
    assert caught.value.public == oidc.EXPIRED


def test_replayed_code(provider: NodeProvider) -> None:
    client = client_for(provider)
    code, state, flow, iss = begin(client)
    run(client.finish(code, state, flow, REDIRECT_URI, time.time(), iss))
    with pytest.raises(OidcError) as caught:
        run(client.finish(code, state, flow, REDIRECT_URI, time.time(), iss))
    assert "invalid_grant" in str(caught.value)
    assert caught.value.public == oidc.EXPIRED


def test_code_redeemed_with_another_verifier(provider: NodeProvider) -> None:
    """PKCE at the token endpoint: a stolen code without its verifier is useless."""
    client = client_for(provider)
    code, state, flow, iss = begin(client)
    other = Flow(flow.state, flow.nonce, oidc.new_flow().verifier)
    with pytest.raises(OidcError) as caught:
        run(client.finish(code, state, other, REDIRECT_URI, time.time(), iss))
    assert "invalid_grant" in str(caught.value)


@pytest.mark.parametrize(
    ("knob", "value", "logged"),
    [
        ("token_issuer", "https://evil.example", "iss"),
        ("token_audience", "another-client", "aud"),
        ("id_token_lifetime", -3600.0, "expired"),
        ("unknown_kid", True, "kid 'stranger'"),
    ],
)
def test_bad_id_tokens(rogue: RogueProvider, knob: str, value: object, logged: str) -> None:
    """Our own provider: oidc-provider signs only correct ID tokens with its own keys."""
    setattr(rogue, knob, value)
    error = refused(client_for(rogue))
    assert logged in str(error)
    assert error.public == oidc.FAILED


def test_unknown_kid_refetches_the_jwks_once(rogue: RogueProvider) -> None:
    """Our own provider: oidc-provider never signs with a key it does not publish."""
    rogue.unknown_kid = True
    client = client_for(rogue)
    run(client._fetch_keys(run(client.discovery()), time.time()))  # a fresh JWKS, still without that kid
    refused(client)
    assert rogue.requests.count("/jwks") == 2


def test_unverified_email(provider: NodeProvider) -> None:
    error = refused(client_for(provider), "eve")
    assert error.public == "your email address is not verified with the identity provider"
    assert "email_verified is 'False'" in str(error)
    claims = sign_in(client_for(provider, allow_unverified_email=True), "eve")
    assert claims.email == "eve@example.com"


def test_missing_email(provider: NodeProvider) -> None:
    assert refused(client_for(provider), "nomail").public == oidc.NO_EMAIL


def test_access_denied(provider: NodeProvider) -> None:
    url, _ = run(client_for(provider).begin(REDIRECT_URI))
    location = sign_in_at(url, decline=True)
    with pytest.raises(OidcError) as caught:
        callback_params(urlsplit(location).query)
    assert "access_denied" in str(caught.value)
    assert caught.value.public == "the sign-in was refused by the identity provider"


def test_callback_without_code() -> None:
    with pytest.raises(OidcError) as caught:
        callback_params("state=abc")
    assert caught.value.public == oidc.STALE


def test_wrong_client_secret(provider: NodeProvider) -> None:
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


def test_provider_gone_after_discovery() -> None:
    with NodeProvider() as provider:
        client = client_for(provider)
        code, state, flow, iss = begin(client)
        provider.stop()
        with pytest.raises(OidcError) as caught:
            run(client.finish(code, state, flow, REDIRECT_URI, time.time(), iss))
    assert caught.value.public == oidc.UNAVAILABLE


@pytest.mark.parametrize(
    "header",
    [{"alg": "HS256", "kid": "k"}, {"alg": "none", "kid": "k"}, {"alg": "RS256"}],
)
def test_id_token_algorithms_and_kid_are_checked_first(
    provider: NodeProvider, header: dict[str, str]
) -> None:
    segment = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    token = f"{segment}.e30.c2ln"
    client = client_for(provider)
    before = provider.requests.count("/jwks")
    with pytest.raises(OidcError, match=r"alg|kid"):
        run(client._verify(run(client.discovery()), token, "nonce", time.time()))
    assert provider.requests.count("/jwks") == before


# -- https ------------------------------------------------------------------------


def test_https_provider_with_a_ca_file(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    with NodeProvider(tls=(cert, key)) as provider:
        trusting = client_for(provider, ssl_context=client_ssl_context(True, str(cert)))
        url, flow = tls_run(trusting.begin(REDIRECT_URI))
        query = browse(url, context=ssl.create_default_context(cafile=str(cert)))
        code, state = callback_params(query)
        claims = tls_run(trusting.finish(code, state, flow, REDIRECT_URI, time.time(), returned_iss(query)))
        assert claims.email == "alice@example.com"
        with pytest.raises(OidcError, match="certificate verify failed") as caught:
            tls_run(client_for(provider).discovery())  # the system trust store does not know it
        assert caught.value.public == oidc.UNAVAILABLE
        assert tls_run(client_for(provider, ssl_context=client_ssl_context(False, "")).discovery())


def tls_run(coro: Coroutine[Any, Any, T]) -> T:
    """`run`, then keep the loop turning until the TLS connections it opened
    have closed: fetch closes a TLS stream with a close_notify exchange that
    asyncio.run would otherwise cut short (an unclosed transport warning)."""

    async def settled() -> T:
        before = set(tcp_sockets(os.getpid()))
        try:
            return await coro
        finally:
            for _ in range(SETTLE_STEPS):
                if not set(tcp_sockets(os.getpid())) - before:
                    break
                await asyncio.sleep(0.01)

    return run(settled())


SETTLE_STEPS = 500  # x 10 ms: a close_notify exchange on loopback takes a few ms


def test_client_ssl_context_with_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="CA file"):
        client_ssl_context(True, str(tmp_path / "missing.pem"))


# -- fetch.request ----------------------------------------------------------------


def test_request_posts_a_body_and_returns_any_status(provider: NodeProvider) -> None:
    form = f"grant_type=authorization_code&code=nope&redirect_uri={REDIRECT_URI}&code_verifier={'v' * 43}"
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    response = run(
        request(
            "POST",
            f"{provider.issuer}/token",
            headers=[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", f"Basic {basic}"),
            ],
            body=form.encode(),
        )
    )
    assert response.status == 400
    assert (response.header("Content-Type") or "").startswith("application/json")
    assert json.loads(response.body)["error"] == "invalid_grant"


def test_request_limits_the_body(provider: NodeProvider) -> None:
    with pytest.raises(FetchError, match="larger than 10 bytes"):
        run(request("GET", f"{provider.issuer}/jwks", limit=10, timeout=5))


def test_fetch_still_returns_a_200_body_and_refuses_others(provider: NodeProvider) -> None:
    keys = json.loads(run(fetch(f"{provider.issuer}/jwks")))
    assert str(jwt.PyJWK(keys["keys"][0]).key_id).startswith("rsa-")
    with pytest.raises(FetchError, match="status 404"):
        run(fetch(f"{provider.issuer}/nothing"))


def test_request_to_a_closed_port() -> None:
    with pytest.raises(FetchError, match=r"GET http://127\.0\.0\.1"):
        run(request("GET", f"http://127.0.0.1:{free_port()}/", timeout=5))


# -- the user in a verified ID token (no sockets) -------------------------------------

BASE = {"sub": "u-1", "email": "a@example.com"}


@pytest.mark.parametrize(
    ("claims", "groups_claim", "groups"),
    [
        ({}, "groups", ()),
        ({"groups": ["a", "b"]}, "groups", ("a", "b")),
        ({"groups": "admins"}, "groups", ("admins",)),  # one group as a string (ADFS, some Okta apps)
        ({"groups": ""}, "groups", ()),
        ({"groups": ["a", 7, None, {"x": 1}, "", "b", "a"]}, "groups", ("a", "b")),  # non-strings dropped
        ({"groups": 42}, "groups", ()),
        ({"groups": {"a": True}}, "groups", ()),
        ({"realm_access": {"roles": ["admin", "user"]}}, "realm_access.roles", ("admin", "user")),
        ({"realm_access": {"roles": "admin"}}, "realm_access.roles", ("admin",)),
        ({"realm_access": ["roles"]}, "realm_access.roles", ()),  # not an object on the way
        ({"realm_access": {}}, "realm_access.roles", ()),
        ({"a": {"b": {"c": ["deep"]}}}, "a.b.c", ("deep",)),
        # Namespaced claims (Auth0) hold dots: the exact name wins over a path.
        ({"https://example.com/roles": ["r"]}, "https://example.com/roles", ("r",)),
        ({"x.y": ["flat"], "x": {"y": ["nested"]}}, "x.y", ("flat",)),
    ],
)
def test_groups_from_claims(claims: dict[str, Any], groups_claim: str, groups: tuple[str, ...]) -> None:
    assert user_claims({**BASE, **claims}, "email", groups_claim).groups == groups


@pytest.mark.parametrize(
    ("claims", "email_claim", "email"),
    [
        ({}, "email", "a@example.com"),
        ({"upn": "a@corp.example"}, "upn", "a@corp.example"),
        ({"profile": {"mail": "n@example.com"}}, "profile.mail", "n@example.com"),
    ],
)
def test_email_from_claims(claims: dict[str, Any], email_claim: str, email: str) -> None:
    assert user_claims({**BASE, **claims}, email_claim, "groups").email == email


@pytest.mark.parametrize(
    ("claims", "email_claim"),
    [
        ({"email": None}, "email"),
        ({"email": ""}, "email"),
        ({"email": ["a@example.com"]}, "email"),
        ({}, "upn"),
        ({"profile": "n@example.com"}, "profile.mail"),
    ],
)
def test_no_email_is_refused(claims: dict[str, Any], email_claim: str) -> None:
    with pytest.raises(OidcError) as caught:
        user_claims({**BASE, **claims}, email_claim, "groups")
    assert caught.value.public == oidc.NO_EMAIL


@pytest.mark.parametrize(
    ("verified", "allow", "accepted"),
    [
        (True, False, True),
        ("true", False, True),  # Cognito sends a string
        (..., False, True),  # absent: many providers never send it
        (False, False, False),
        ("false", False, False),
        (None, False, False),
        (0, False, False),
        (False, True, True),
        ("false", True, True),
    ],
)
def test_email_verified(verified: object, allow: bool, accepted: bool) -> None:
    claims = dict(BASE) if verified is ... else {**BASE, "email_verified": verified}
    if accepted:
        assert user_claims(claims, "email", "groups", allow).email == "a@example.com"
    else:
        with pytest.raises(OidcError) as caught:
            user_claims(claims, "email", "groups", allow)
        assert caught.value.public == oidc.UNVERIFIED


@pytest.mark.parametrize("sub", [None, "", 7])
def test_sub_must_be_a_string(sub: object) -> None:
    with pytest.raises(OidcError, match="sub"):
        user_claims({**BASE, "sub": sub}, "email", "groups")


def test_amr_from_the_id_token(provider: NodeProvider) -> None:
    """The provider's amr (RFC 8176) is what the edge's tokens will carry."""
    assert sign_in(client_for(provider), "alice").amr == ("pwd", "mfa")
    assert sign_in(client_for(provider), "bob").amr == ()


@pytest.mark.parametrize(
    ("amr", "kept"),
    [(["pwd", "otp"], ("pwd", "otp")), ("mfa", ("mfa",)), (["hwk", 7, ""], ("hwk",)), (42, ()), (None, ())],
)
def test_amr_read_like_groups(amr: object, kept: tuple[str, ...]) -> None:
    assert user_claims({**BASE, "amr": amr}, "email", "groups").amr == kept
