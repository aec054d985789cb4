"""The login flows as pure functions: a Context, the compiled config, the Request,
the body and `now`, with a real MemoryStore and a real key directory; no
sockets, no server. The end-to-end tests (test_login_e2e.py,
test_login_oidc.py) drive the same code through a running edge.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import msgspec
import pytest
from login_site import NOW, LoginSite

from edge.access.actions import Endpoint
from edge.access.claims import Identity
from edge.access.decide import verify_token
from edge.access.endpoints import APP_ENDPOINTS, TEAM_ENDPOINTS, EndpointKind
from edge.access.request import Request, build
from edge.access.responses import LocalResponse
from edge.access.session import (
    BINDING_COOKIE,
    CSRF_COOKIE,
    FLOW_COOKIE,
    HANDOFF_TTL,
    Person,
    SealError,
    new_person,
)
from edge.config.schema import DevProvider
from edge.login import dev, handoff, logout, oidc_flow, signin
from edge.login.context import Context, Target
from edge.login.oidc import REFUSED, Claims, Flow, OidcError
from edge.login.passwords import hash_password
from edge.login.sealed import (
    FLOW,
    HANDOFF,
    FlowState,
    HandoffCode,
    SavedTarget,
    open_sealed,
    seal,
)
from edge.login.service import HANDLERS

ALICE = "alice@example.com"
PASSWORD = "correct horse"
HASH = hash_password(PASSWORD, log2_n=4)  # cheap: the cost is not what is tested here
TEAM_URL = "http://auth.localhost:8080"
APP_URL = "http://app.localhost:8080/page?x=1"
BINDING = "b" * 24
PROVIDER_URL = "https://idp.example.com/authorize"

CONFIG = f"""
[team]
host = "auth.localhost"
url = "{TEAM_URL}"
key_dir = "{{key_dir}}"
[[team.providers]]
type = "dev"
id = "dev"
users = [{{{{ email = "{ALICE}", password = "{HASH}", groups = ["staff"] }}}}]
[[team.providers]]
type = "oidc"
id = "sso"
issuer = "https://idp.example.com"
client_id = "edge"
client_secret = "s3cret"

[[apps]]
name = "app"
domains = ["app.localhost"]
upstream = "http://127.0.0.1:9"
aud = "app-aud"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{{{ email_domains = ["example.com"] }}}}]
"""

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Site(LoginSite):
    """The login service of a config with a team, as a worker holds it."""

    def __init__(self, tmp_path: Path, config: str = CONFIG) -> None:
        super().__init__(tmp_path, config)

    def target(self) -> Target:
        return Target(self.c.apps_by_aud["app-aud"], "app.localhost", APP_URL, BINDING)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def header(response: LocalResponse, name: str) -> list[str]:
    """The response's fields called `name`, from the header block it sends."""
    lines = response.rest.decode("latin-1").split("\r\n")
    return [v for k, _, v in (line.partition(": ") for line in lines) if k == name]


def cookies(response: LocalResponse) -> dict[str, str]:
    """Set-Cookie by name: the whole field."""
    return {v.partition("=")[0]: v for v in header(response, "set-cookie")}


def location(response: LocalResponse) -> str:
    assert response.status == 302, response.status
    return header(response, "location")[0]


def cookie_value(field: str) -> str:
    return field.partition("=")[2].partition(";")[0]


# -- the endpoint table ----------------------------------------------------------------------


def test_every_endpoint_kind_has_a_handler() -> None:
    assert set(HANDLERS) == set(EndpointKind)
    assert set(APP_ENDPOINTS.values()) | set(TEAM_ENDPOINTS.values()) == set(EndpointKind)
    assert all(kind.value == name for name, kind in (APP_ENDPOINTS | TEAM_ENDPOINTS).items())


@pytest.mark.parametrize(
    ("url", "kind", "team"),
    [
        ("http://auth.localhost/", EndpointKind.LAUNCHER, True),
        ("http://auth.localhost/cdn-cgi/access/callback", EndpointKind.CALLBACK, True),
        ("http://app.localhost/cdn-cgi/access/authorized", EndpointKind.AUTHORIZED, False),
        ("http://app.localhost/cdn-cgi/access/get-identity", EndpointKind.GET_IDENTITY, False),
        ("http://auth.localhost/cdn-cgi/access/logout", EndpointKind.LOGOUT, True),
        ("http://app.localhost/cdn-cgi/access/certs", EndpointKind.CERTS, False),
    ],
)
def test_decide_names_the_endpoint_by_kind(site: Site, url: str, kind: EndpointKind, team: bool) -> None:
    action, _ = site.endpoint("GET", url)
    assert action.kind is kind and action.team is team


# -- sealed payloads ----------------------------------------------------------------------------


def test_a_handoff_code_is_read_back_whole(site: Site) -> None:
    assert site.ctx.sealer is not None
    code = HandoffCode(
        "app.localhost", "app-aud", APP_URL, new_person(ALICE, ["staff"], "dev"), "jti", BINDING
    )
    sealed = seal(site.ctx.sealer, HANDOFF, code, NOW + 60)
    assert open_sealed(site.ctx.sealer, HANDOFF, sealed, NOW, HandoffCode) == (code, NOW + 60)
    with pytest.raises(SealError):
        open_sealed(site.ctx.sealer, FLOW, sealed, NOW, FlowState)  # another purpose


def test_the_wire_names_stay_what_every_edge_of_a_team_reads(site: Site) -> None:
    """Codes in flight during a reload, and other workers, read these names."""
    assert site.ctx.sealer is not None
    who = new_person(ALICE, [], "dev")
    code = HandoffCode("h.localhost", "aud", "http://h.localhost/", who, "j", "b" * 16)
    opened = site.ctx.sealer.open(HANDOFF, seal(site.ctx.sealer, HANDOFF, code, NOW + 60), NOW)
    assert sorted(opened) == ["a", "b", "exp", "h", "j", "p", "r"]
    # amr came later: a code sealed without it (by an older edge) still opens.
    assert sorted(opened["p"]) == ["amr", "email", "groups", "idp", "nonce", "sub"]
    older = {k: v for k, v in opened["p"].items() if k != "amr"}
    assert msgspec.convert(older, Person) == msgspec.structs.replace(who, amr=[])
    flow = FlowState(
        "sso", "st", "no", "v" * 43, SavedTarget("h.localhost", "aud", "http://h.localhost/", "")
    )
    opened = site.ctx.sealer.open(FLOW, seal(site.ctx.sealer, FLOW, flow, NOW + 60), NOW)
    assert opened["t"] == ["h.localhost", "aud", "http://h.localhost/", ""]
    assert sorted(opened) == ["exp", "i", "n", "s", "t", "v"]


@pytest.mark.parametrize(
    "payload",
    [
        {"h": "app.localhost", "a": "app-aud", "r": APP_URL, "j": "x"},  # no person
        {"h": 1, "a": "app-aud", "r": APP_URL, "p": {}, "j": "x"},
        {"email": ALICE},  # readable names are not the format
    ],
)
def test_a_payload_of_another_shape_is_an_invalid_seal(site: Site, payload: dict[str, Any]) -> None:
    assert site.ctx.sealer is not None
    sealed = site.ctx.sealer.seal(HANDOFF, payload, NOW + 60)
    with pytest.raises(SealError):
        open_sealed(site.ctx.sealer, HANDOFF, sealed, NOW, HandoffCode)


# -- sign-in page -------------------------------------------------------------------------------


def test_login_on_an_app_host_goes_to_the_team(site: Site) -> None:
    action, req = site.endpoint(
        "GET", f"http://app.localhost/cdn-cgi/access/login/app.localhost?kid=app-aud&b={BINDING}"
    )
    r = run(signin.login(site.ctx, site.c, action, req, b"", NOW))
    assert location(r) == f"{TEAM_URL}/cdn-cgi/access/login/app.localhost?kid=app-aud&b={BINDING}"


def test_a_link_to_another_site_is_refused(site: Site) -> None:
    url = f"http://auth.localhost/cdn-cgi/access/login/app.localhost?kid=app-aud&redirect_url={quote('https://evil.test/')}"
    action, req = site.endpoint("GET", url)
    r = run(signin.login(site.ctx, site.c, action, req, b"", NOW))
    assert r.status == 400 and b"another site" in r.body


def login_form(
    site: Site, fields: dict[str, str], csrf_cookie: str = "c" * 32
) -> tuple[Endpoint, Request, bytes]:
    link = f"http://auth.localhost/cdn-cgi/access/login/app.localhost?kid=app-aud&redirect_url={quote(APP_URL)}&b={BINDING}"
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Cookie", f"{CSRF_COOKIE}={csrf_cookie}"),
    ]
    action, req = site.endpoint("POST", link, headers)
    body = {"csrf": site.ctx.csrf_sealer.csrf_token(csrf_cookie), **fields}
    return action, req, "&".join(f"{k}={quote(v)}" for k, v in body.items()).encode()


def test_a_form_without_its_csrf_token_is_refused(site: Site) -> None:
    action, req, _ = login_form(site, {})
    body = f"provider=dev&email={quote(ALICE)}&password={quote(PASSWORD)}".encode()
    r = run(signin.login(site.ctx, site.c, action, req, body, NOW))
    assert r.status == 403 and b"The form expired" in r.body
    assert "CF_Authorization" not in cookies(r)


# -- dev provider -------------------------------------------------------------------------------


def test_dev_sign_in_sets_the_team_cookie_and_hands_off(site: Site) -> None:
    action, req, body = login_form(site, {"provider": "dev", "email": ALICE, "password": PASSWORD})
    r = run(signin.login(site.ctx, site.c, action, req, body, NOW))
    assert location(r).startswith("http://app.localhost:8080/cdn-cgi/access/authorized?code=")
    assert "CF_Authorization" in cookies(r)
    assert site.ctx.sealer is not None
    sealed = parse_qs(urlsplit(location(r)).query)["code"][0]
    code, exp = open_sealed(site.ctx.sealer, HANDOFF, sealed, NOW, HandoffCode)
    assert (code.host, code.aud, code.redirect_url, code.binding) == (
        "app.localhost",
        "app-aud",
        APP_URL,
        BINDING,
    )
    assert code.person.email == ALICE and exp == NOW + HANDOFF_TTL


def test_dev_sign_in_counts_failures_then_throttles(site: Site) -> None:
    form = {"provider": "dev", "email": ALICE, "password": "wrong"}
    provider = site.ctx.providers["dev"]
    assert isinstance(provider, DevProvider)
    for _ in range(dev.MAX_FAILURES):
        _, req, _ = login_form(site, form)
        r = run(dev.sign_in(site.ctx, site.c, provider, form, req, site.target(), NOW))
        assert r.status == 401 and b"Wrong email or password." in r.body
    assert run(site.store.count("signin:127.0.0.1", dev.FAILURE_WINDOW)) == dev.MAX_FAILURES
    right = {**form, "password": PASSWORD}
    r = run(dev.sign_in(site.ctx, site.c, provider, right, req, site.target(), NOW))
    assert r.status == 429 and "CF_Authorization" not in cookies(r)


# -- handoff ------------------------------------------------------------------------------------


def signed_in(site: Site) -> LocalResponse:
    """The team host's answer to alice signing in: the team cookie and a
    redirect carrying the application's one-time code."""
    return handoff.start_session(
        site.ctx,
        site.c,
        new_person(ALICE, ["staff"], "dev"),
        site.target(),
        build(b"GET", b"auth.localhost", b"/", [], "127.0.0.1"),
        NOW,
    )


def code_of(r: LocalResponse) -> str:
    return parse_qs(urlsplit(location(r)).query)["code"][0]


def issued_code(site: Site) -> str:
    """A code as the team host issues it to a signed-in user."""
    return code_of(signed_in(site))


def exchange(
    site: Site, code: str, method: str = "GET", binding: str | None = BINDING, host: str = "app.localhost"
) -> LocalResponse:
    headers = [] if binding is None else [("Cookie", f"{BINDING_COOKIE}={binding}")]
    action, req = site.endpoint(method, f"http://{host}/cdn-cgi/access/authorized?code={code}", headers)
    return run(handoff.authorized(site.ctx, site.c, action, req, b"", NOW))


def test_a_code_sets_the_app_cookie_once(site: Site) -> None:
    code = issued_code(site)
    assert exchange(site, code, "HEAD").status == 405  # a link previewer does not use it up
    r = exchange(site, code)
    assert location(r) == APP_URL
    assert cookies(r)[BINDING_COOKIE].startswith(
        f"{BINDING_COOKIE}=; Path=/cdn-cgi/access/authorized; Max-Age=0"
    )
    assert "CF_Authorization" in cookies(r)
    again = exchange(site, code)
    assert again.status == 400 and b"already used" in again.body


def test_a_code_from_another_browser_starts_again(site: Site) -> None:
    code = issued_code(site)
    assert location(exchange(site, code, binding="x" * 24)) == APP_URL  # someone else's login
    r = exchange(site, code, binding=None)
    assert r.status == 400 and b"started in another browser" in r.body
    assert "CF_Authorization" in cookies(exchange(site, code))  # never used up by those


def test_a_code_expires(site: Site) -> None:
    code = issued_code(site)
    action, req = site.endpoint(
        "GET",
        f"http://app.localhost/cdn-cgi/access/authorized?code={code}",
        [("Cookie", f"{BINDING_COOKIE}={BINDING}")],
    )
    r = run(handoff.authorized(site.ctx, site.c, action, req, b"", NOW + HANDOFF_TTL))
    assert r.status == 400 and b"not valid or has expired" in r.body


def test_a_denied_user_gets_no_code(site: Site) -> None:
    r = handoff.start_session(
        site.ctx,
        site.c,
        new_person("eve@elsewhere.test", [], "dev"),
        site.target(),
        build(b"GET", b"auth.localhost", b"/", [], "127.0.0.1", request_id=b"rid-denied-1"),
        NOW,
    )
    assert r.status == 403 and b"does not have access to app" in r.body
    assert b"Request id: rid-denied-1" in r.body  # a screenshot names the log line
    assert "CF_Authorization" in cookies(r)  # signed in at the team all the same


# -- logout -------------------------------------------------------------------------------------


def team_cookie(site: Site) -> str:
    r = handoff.start_session(
        site.ctx,
        site.c,
        new_person(ALICE, ["staff"], "dev"),
        None,
        build(b"GET", b"auth.localhost", b"/", [], "127.0.0.1"),
        NOW,
    )
    return cookie_value(cookies(r)["CF_Authorization"])


def test_a_cross_site_logout_asks_first(site: Site) -> None:
    token = team_cookie(site)
    headers = [("Cookie", f"CF_Authorization={token}"), ("Sec-Fetch-Site", "cross-site")]
    action, req = site.endpoint("GET", "http://auth.localhost/cdn-cgi/access/logout", headers)
    r = run(logout.logout(site.ctx, site.c, action, req, b"", NOW))
    assert r.status == 200 and b"Sign out?" in r.body and "CF_Authorization" not in cookies(r)
    assert not site.store.revocations  # nothing revoked
    post, req = site.endpoint(
        "POST",
        "http://auth.localhost/cdn-cgi/access/logout",
        [*headers, ("Content-Type", "application/x-www-form-urlencoded")],
    )
    refused = run(logout.logout(site.ctx, site.c, post, req, b"csrf=forged", NOW))
    assert refused.status == 403 and b"This sign-out form expired" in refused.body
    assert not site.store.revocations


def test_a_logout_revokes_the_session(site: Site) -> None:
    token = team_cookie(site)
    action, req = site.endpoint(
        "GET",
        "http://auth.localhost/cdn-cgi/access/logout",
        [("Cookie", f"CF_Authorization={token}"), ("Sec-Fetch-Site", "same-origin")],
    )
    r = run(logout.logout(site.ctx, site.c, action, req, b"", NOW))
    assert r.status == 200 and b"You are signed out." in r.body
    assert cookies(r)["CF_Authorization"].startswith("CF_Authorization=; Path=/; Max-Age=0")
    assert len(site.store.revocations) == 1


def test_a_code_issued_before_a_logout_signs_no_one_in_after_it(site: Site) -> None:
    """A logout refuses the tokens issued up to it (revocation_cutoff); the
    edge never mints a later one for that sign-in, not even from a code
    issued just before the logout."""
    r = signed_in(site)
    code = code_of(r)
    token = cookie_value(cookies(r)["CF_Authorization"])
    action, req = site.endpoint(
        "GET",
        "http://auth.localhost/cdn-cgi/access/logout",
        [("Cookie", f"CF_Authorization={token}"), ("Sec-Fetch-Site", "same-origin")],
    )
    assert run(logout.logout(site.ctx, site.c, action, req, b"", NOW)).status == 200
    action, req = site.endpoint(
        "GET",
        f"http://app.localhost/cdn-cgi/access/authorized?code={code}",
        [("Cookie", f"{BINDING_COOKIE}={BINDING}")],
    )
    late = run(handoff.authorized(site.ctx, site.c, action, req, b"", NOW + HANDOFF_TTL - 1))
    assert late.status == 400 and b"signed out" in late.body
    assert "CF_Authorization" not in cookies(late)


def test_an_app_logout_ends_the_team_session_too(site: Site) -> None:
    action, req = site.endpoint("GET", "http://app.localhost/cdn-cgi/access/logout")
    r = run(logout.logout(site.ctx, site.c, action, req, b"", NOW))
    url, _, query = location(r).partition("?")
    assert url == f"{TEAM_URL}/cdn-cgi/access/logout"
    # Named so the team's signed-out page leads back to this app's sign-in.
    assert parse_qs(query) == {"kid": [action.aud], "redirect_url": ["https://app.localhost/"]}


# -- OpenID Connect -----------------------------------------------------------------------------


class ScriptedProvider:
    """Stands in for oidc.OidcClient (which needs a provider on the network:
    test_login_oidc.py runs that one); answers as told."""

    def __init__(self, claims: Claims | OidcError) -> None:
        self.claims = claims
        self.flows: list[Flow] = []

    async def begin(self, redirect_uri: str) -> tuple[str, Flow]:
        flow = Flow(state="state-1", nonce="nonce-1", verifier="v" * 43)
        self.flows.append(flow)
        return f"{PROVIDER_URL}?redirect_uri={quote(redirect_uri)}", flow

    async def finish(
        self,
        code: str,
        returned_state: str,
        flow: Flow,
        redirect_uri: str,
        now: float,
        returned_iss: str | None = None,
    ) -> Claims:
        assert flow == self.flows[-1] and returned_state == flow.state
        if isinstance(self.claims, OidcError):
            raise self.claims
        return self.claims


def with_provider(site: Site, provider: ScriptedProvider) -> Context:
    return dataclasses.replace(site.ctx, oidc={"sso": (site.ctx.oidc["sso"][0], provider)})


def begin(ctx: Context, site: Site, redirect_url: str = APP_URL) -> LocalResponse:
    provider = ctx.oidc["sso"][0]
    target = Target(site.c.apps_by_aud["app-aud"], "app.localhost", redirect_url, BINDING)
    req = build(b"POST", b"auth.localhost", b"/cdn-cgi/access/login", [], "127.0.0.1", request_id=b"rid-1")
    return run(oidc_flow.begin(ctx, provider, target, req, NOW))


def test_oidc_begin_keeps_the_flow_in_a_sealed_cookie(site: Site) -> None:
    ctx = with_provider(site, ScriptedProvider(Claims("u1", ALICE, ("staff",), {})))
    r = begin(ctx, site)
    assert location(r).startswith(PROVIDER_URL)
    assert ctx.sealer is not None
    flow, _ = open_sealed(ctx.sealer, FLOW, cookie_value(cookies(r)[FLOW_COOKIE]), NOW, FlowState)
    assert flow == FlowState(
        "sso", "state-1", "nonce-1", "v" * 43, SavedTarget("app.localhost", "app-aud", APP_URL, BINDING)
    )


def test_oidc_begin_drops_a_long_query_to_fit_the_cookie(site: Site) -> None:
    ctx = with_provider(site, ScriptedProvider(Claims("u1", ALICE, (), {})))
    long_url = "http://app.localhost:8080/page?q=" + "x" * oidc_flow.FLOW_COOKIE_LIMIT
    r = begin(ctx, site, long_url)
    assert ctx.sealer is not None
    flow, _ = open_sealed(ctx.sealer, FLOW, cookie_value(cookies(r)[FLOW_COOKIE]), NOW, FlowState)
    assert flow.target is not None and flow.target.redirect_url == "http://app.localhost:8080/page"


def callback(ctx: Context, site: Site, flow_cookie: str | None, query: str) -> LocalResponse:
    headers = [] if flow_cookie is None else [("Cookie", f"{FLOW_COOKIE}={flow_cookie}")]
    action, req = site.endpoint("GET", f"http://auth.localhost/cdn-cgi/access/callback?{query}", headers)
    return run(oidc_flow.callback(ctx, site.c, action, req, b"", NOW))


def test_oidc_callback_signs_in_and_hands_off(site: Site) -> None:
    ctx = with_provider(site, ScriptedProvider(Claims("u1", ALICE, ("staff",), {})))
    flow = cookie_value(cookies(begin(ctx, site))[FLOW_COOKIE])
    r = callback(ctx, site, flow, "code=c&state=state-1")
    assert location(r).startswith("http://app.localhost:8080/cdn-cgi/access/authorized?code=")
    assert cookies(r)[FLOW_COOKIE].startswith(f"{FLOW_COOKIE}=; Path=/cdn-cgi/access; Max-Age=0")
    assert "CF_Authorization" in cookies(r)


def test_oidc_sign_in_carries_the_id_tokens_amr_and_the_provider_into_the_token(site: Site) -> None:
    """The OIDC flow's part (the ID token's amr itself: test_oidc.py, against
    a real provider): amr and idp reach the edge's own token, and the code
    carries them on to the application's."""
    ctx = with_provider(site, ScriptedProvider(Claims("u1", ALICE, (), {}, ("pwd", "otp"))))
    flow = cookie_value(cookies(begin(ctx, site))[FLOW_COOKIE])
    r = callback(ctx, site, flow, "code=c&state=state-1")
    token = cookie_value(cookies(r)["CF_Authorization"])
    ident = verify_token(site.c, token.encode(), NOW)
    assert isinstance(ident, Identity)
    assert (ident.amr, ident.idp) == (frozenset({"pwd", "otp"}), "sso")
    assert handoff.person_of(ident).amr == ["otp", "pwd"] and handoff.person_of(ident).idp == "sso"


@pytest.mark.parametrize("flow_cookie", [None, "garbage", base64.urlsafe_b64encode(os.urandom(60)).decode()])
def test_oidc_callback_without_a_valid_flow_starts_again(site: Site, flow_cookie: str | None) -> None:
    ctx = with_provider(site, ScriptedProvider(Claims("u1", ALICE, (), {})))
    r = callback(ctx, site, flow_cookie, "code=c&state=state-1")
    assert r.status == 400 and b"took too long or was started elsewhere" in r.body
    assert "CF_Authorization" not in cookies(r) and FLOW_COOKIE in cookies(r)


def test_oidc_callback_refused_by_the_provider(site: Site) -> None:
    ctx = with_provider(site, ScriptedProvider(Claims("u1", ALICE, (), {})))
    flow = cookie_value(cookies(begin(ctx, site))[FLOW_COOKIE])
    r = callback(ctx, site, flow, "error=access_denied&state=state-1")
    assert r.status == 403 and REFUSED.encode() in r.body
    assert "CF_Authorization" not in cookies(r)


def test_oidc_callback_that_fails_at_the_provider_is_400(site: Site) -> None:
    ctx = with_provider(site, ScriptedProvider(OidcError("the provider refused the code")))
    flow = cookie_value(cookies(begin(ctx, site))[FLOW_COOKIE])
    r = callback(ctx, site, flow, "code=c&state=state-1")
    assert r.status == 400 and "CF_Authorization" not in cookies(r)
