"""OpenID Connect sign-in through a real `edge serve` (BEHAVIOUR.md section 6).

One module-wide edge (one worker, memory store) serves the team host
auth.localhost and two applications on the port reserved for it; its
`[team]` lists several OpenID Connect providers. The real ones are
oidc-provider, an OpenID-Certified provider from npm, on 127.0.0.1
(tests/support/oidc_node.py runs tests/support/oidc_provider.mjs):

- ``sso``: the provider most tests use; users (alice, bob, eve, kim, ...)
  in tests/support/oidc_node.py;
- ``kc`` and ``lax``: the same provider registered again, with
  groups_claim = "realm_access.roles" (Keycloak's roles) and with
  allow_unverified_email = true;
- ``badsecret``: the same provider with a wrong client secret;
- ``brief``: a provider whose codes live 1 s;
- ``flaky``: a second provider, stopped half-way through a sign-in;
- ``late``: nothing listens at its issuer at first; a provider is started
  there later (a failed discovery must not be remembered);
- ``hung``: accepts connections and never answers;
- ``rogue``: a provider of our own (tests/support/oidc_provider.py) that
  sends a wrong nonce, a fault oidc-provider cannot be made to produce.

The browser is tests/support/browserless.py: a cookie jar and real sockets; *.localhost
URLs go to the edge. Its visit to the provider (the authorize URL, the
provider's sign-in form, back) is `oidc_node.sign_in_at`. The tests take
the edge's redirects one at a time, so that every hop can be checked:
app -> login page -> POST the provider's button -> the provider's authorize
URL and sign-in -> the edge's callback -> team cookie and handoff -> app
cookie -> upstream.

Every failure must end on a page of ours with a 4xx or 502 status, and with
no CF_Authorization cookie anywhere.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jwt
import pytest
from browserless import Browser, Reply
from chromium import CALL_TIMEOUT, chromium_binary
from chromium import Browser as Chromium
from conftest import EdgeProcess, allow_app_toml, free_port, write_config
from oidc_node import CLIENT_ID, CLIENT_SECRET, NodeProvider, sign_in_at
from oidc_provider import OidcProvider as RogueProvider
from upstream_server import Upstream

from edge.access.session import FLOW_COOKIE, Sealer
from edge.login import keydir

AUTH = "CF_Authorization"
CALLBACK_PATH = "/cdn-cgi/access/callback"
HEALTH = "/cdn-cgi/edge/health"
ALICE, BOB = "alice@example.com", "bob@example.com"  # alice is in "admins", bob in no group
KIM = "kim@example.com"  # in no "groups", but has "admins" in realm_access.roles


# -- the site ------------------------------------------------------------------------


class HungServer:
    """Accepts connections and never answers: a provider that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        for sock in [self.sock, *self.held]:
            sock.close()


TEAM = """
[team]
host = "auth.localhost"
url = "{team_url}"
key_dir = "{key_dir}"
"""

PROVIDER = """
[[team.providers]]
type = "oidc"
id = "{id}"
name = "{name}"
issuer = "{issuer}"
client_id = "{client_id}"
client_secret = "{client_secret}"
{extra}
"""


def apps_toml(upstream: str) -> str:
    """One app for any example.com address, one for the group "admins" only,
    one for a sign-in with a second factor through the "sso" provider."""
    admins = '{ groups = ["admins"] }'
    return (
        allow_app_toml("app", "app.localhost", upstream)
        + allow_app_toml("admin", "admin.localhost", upstream, admins, "admins")
        + allow_app_toml(
            "vault",
            "vault.localhost",
            upstream,
            '{ auth_method = ["mfa"] }',
            "mfa",
        ).replace(
            'include = [{ auth_method = ["mfa"] }]',
            'include = [{ auth_method = ["mfa"] }]\nrequire = [{ login_method = ["sso"] }]',
        )
    )


@dataclass
class Site:
    edge: EdgeProcess
    port: int
    key_dir: Path
    sso: NodeProvider
    flaky: NodeProvider
    late_port: int
    hung: HungServer
    rogue: RogueProvider

    @property
    def team(self) -> str:
        return f"http://auth.localhost:{self.port}"

    @property
    def callback(self) -> str:
        return self.team + CALLBACK_PATH

    def url(self, host: str, path: str = "/echo/page") -> str:
        return f"http://{host}:{self.port}{path}"

    def browser(self) -> Browser:
        return Browser(self.port)


def provider_toml(ident: str, issuer: str, secret: str = CLIENT_SECRET, extra: str = "") -> str:
    """A provider entry with the test providers' client registration (tests/support/oidc_node.py)."""
    return PROVIDER.format(
        id=ident,
        name=f"{ident.upper()} provider",
        issuer=issuer,
        client_id=CLIENT_ID,
        client_secret=secret,
        extra=extra,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("oidc")
    # The team URL (and so the redirect URI registered at the providers) must
    # name the port before the edge starts: reserve one.
    port = free_port()
    callback = f"http://auth.localhost:{port}{CALLBACK_PATH}"
    sso = NodeProvider(redirect_uris=(callback,)).start()
    flaky = NodeProvider(redirect_uris=(callback,)).start()
    brief = NodeProvider(redirect_uris=(callback,), code_ttl=1).start()
    rogue = RogueProvider(redirect_uris=(callback,)).start()
    rogue.wrong_nonce = True
    hung = HungServer()
    late_port = free_port()
    upstream = Upstream().start()
    extra = (
        TEAM.format(team_url=f"http://auth.localhost:{port}", key_dir=tmp / "keys")
        + provider_toml("sso", sso.issuer)
        + provider_toml("kc", sso.issuer, extra='groups_claim = "realm_access.roles"')
        + provider_toml("lax", sso.issuer, extra="allow_unverified_email = true")
        + provider_toml("badsecret", sso.issuer, secret="not-the-secret")
        + provider_toml("brief", brief.issuer)
        + provider_toml("flaky", flaky.issuer)
        + provider_toml("late", f"http://127.0.0.1:{late_port}")
        + provider_toml("hung", f"http://127.0.0.1:{hung.port}")
        + provider_toml("rogue", rogue.issuer)
        + apps_toml(upstream.url)
    )
    edge = EdgeProcess(write_config(tmp, f'listen = ["127.0.0.1:{port}"]', extra))
    try:
        yield Site(edge, port, tmp / "keys", sso, flaky, late_port, hung, rogue)
    finally:
        edge.stop()
        for closer in (sso.close, flaky.close, brief.close, rogue.stop, hung.close, upstream.close):
            closer()


# -- the steps of a sign-in ---------------------------------------------------------------


def login_page(browser: Browser, url: str) -> Reply:
    """Navigate to `url` (an app page) and land on the team's login page."""
    page = browser.get(url)
    assert page.status == 200, (page.status, page.text[:300])
    assert urlsplit(page.url).hostname == "auth.localhost"
    return page


def choose(browser: Browser, page: Reply, provider: str) -> Reply:
    """Press the provider's button on the login page: the edge's answer, not followed."""
    return browser.post_form(page.url, {"csrf": page.form_field("csrf"), "provider": provider}, follow=False)


def to_provider(browser: Browser, url: str, provider: str = "sso") -> Reply:
    """From an app page to the edge's redirect to the provider's authorize URL."""
    answer = choose(browser, login_page(browser, url), provider)
    assert answer.status == 302, (answer.status, answer.text[:300])
    return answer


def at_provider(browser: Browser, authorize: Reply, login: str = "alice", decline: bool = False) -> str:
    """Visit the authorize URL and sign in there as `login` (or decline): the
    callback URL the provider sends the browser back to."""
    callback = sign_in_at(location(authorize), login, decline=decline)
    assert callback.startswith("http://auth.localhost:")
    return callback


def location(reply: Reply) -> str:
    where = reply.header("location")
    assert where, (reply.status, reply.headers)
    return where


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**query_of(url), **changes})))


def sign_in(browser: Browser, url: str, login: str = "alice", provider: str = "sso") -> Reply:
    """The whole happy path from `url` back to `url`, each hop followed."""
    callback = at_provider(browser, to_provider(browser, url, provider), login)
    return browser.get(callback)


def assert_no_session(browser: Browser) -> None:
    """No CF_Authorization was ever set (a clearing one, Max-Age=0, is fine)."""
    given = [raw for _, raw in browser.set_cookies if raw.startswith(f"{AUTH}=") and "Max-Age=0" not in raw]
    assert given == []
    assert all(AUTH not in jar for jar in browser.cookies.values())


def assert_flow_cleared(browser: Browser) -> None:
    assert browser.cookie("auth.localhost", FLOW_COOKIE) is None


def forwarded_headers(reply: Reply) -> dict[str, str]:
    """The request head the upstream received (its /echo mode sends it back)."""
    head = reply.text.split("\r\n\r\n", 1)[0]
    fields = (line.partition(":") for line in head.split("\r\n")[1:])
    return {name.strip().lower(): value.strip() for name, _, value in fields}


def verified_assertion(site: Site, browser: Browser, token: str, host: str) -> dict[str, Any]:
    """Verify the Cf-Access-Jwt-Assertion as an upstream would: with the
    keys the edge publishes at /cdn-cgi/access/certs."""
    certs = browser.get(site.url(host, "/cdn-cgi/access/certs"))
    assert certs.status == 200
    keys = jwt.PyJWKSet.from_dict(json.loads(certs.body))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    return jwt.decode(token, key, algorithms=[key.algorithm_name], options={"verify_aud": False})


# -- the happy path -----------------------------------------------------------------------


def test_sign_in_through_the_provider(site: Site) -> None:
    browser = site.browser()
    page = login_page(browser, site.url("app.localhost"))
    # The login page offers the provider as a button (a form with no password).
    assert "Continue with SSO provider" in page.text
    assert 'name="password"' not in page.text

    answer = choose(browser, page, "sso")
    assert answer.status == 302
    authorize = location(answer)
    assert authorize.startswith(f"{site.sso.issuer}/auth?")
    q = query_of(authorize)
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
    assert q["redirect_uri"] == site.callback
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 43 and len(q["nonce"]) >= 43 and q["state"] != q["nonce"]
    assert "openid" in q["scope"].split()
    # The flow travels in a sealed cookie, only on the team host's endpoints.
    flow = browser.cookies["auth.localhost"][FLOW_COOKIE]
    assert flow[1] == "/cdn-cgi/access"
    assert q["state"] not in flow[0] and q["nonce"] not in flow[0]
    assert not any(AUTH in jar for jar in browser.cookies.values())

    callback = at_provider(browser, answer)
    assert callback.startswith(site.callback + "?")
    assert query_of(callback)["state"] == q["state"]

    # The callback: the team cookie, the flow cookie cleared, on to the app's handoff.
    back = browser.get(callback, follow=False)
    assert back.status == 302, (back.status, back.text[:300])
    assert location(back).startswith(f"{site.url('app.localhost', '/cdn-cgi/access/authorized')}?code=")
    assert browser.cookie("auth.localhost") is not None
    assert_flow_cleared(browser)
    # Cleared on the path it was set for, or the browser would keep it.
    cleared = [c for c in back.all("set-cookie") if c.startswith(f"{FLOW_COOKIE}=;")]
    assert len(cleared) == 1 and "Path=/cdn-cgi/access;" in cleared[0] and "Max-Age=0" in cleared[0]
    assert browser.cookie("app.localhost") is None

    handoff = browser.get(location(back), follow=False)
    assert handoff.status == 302 and location(handoff) == site.url("app.localhost")
    assert browser.cookie("app.localhost") is not None

    # The upstream sees who signed in, as the provider's ID token said.
    final = browser.get(location(handoff))
    assert final.status == 200, (final.status, final.text[:300])
    seen = forwarded_headers(final)
    assert seen["cf-access-authenticated-user-email"] == ALICE
    claims = verified_assertion(site, browser, seen["cf-access-jwt-assertion"], "app.localhost")
    assert claims["email"] == ALICE
    assert claims["groups"] == ["staff", "admins"]
    assert claims["sub"] == "sso:u-alice"
    assert claims["iss"] == site.team and claims["type"] == "app"
    # How she signed in, as the provider reported it, for auth_method and
    # login_method rules (sub "sso:..." names the provider id "sso").
    assert claims["amr"] == ["pwd", "mfa"] and claims["idp"] == {"id": "sso"}

    # The provider saw one authorization and one code redemption for it.
    assert site.sso.requests.count("/auth") >= 1 and site.sso.requests.count("/token") >= 1


def test_team_session_serves_a_second_app_without_the_provider(site: Site) -> None:
    browser = site.browser()
    assert sign_in(browser, site.url("app.localhost")).status == 200
    before = len(site.sso.requests)
    r = browser.get(site.url("admin.localhost"))
    assert r.status == 200
    assert forwarded_headers(r)["cf-access-authenticated-user-email"] == ALICE
    assert site.sso.requests[before:] == []  # the team cookie sufficed


def test_sign_in_to_the_team_host_itself(site: Site) -> None:
    browser = site.browser()
    page = browser.get(f"{site.team}/cdn-cgi/access/login")
    assert page.status == 200
    answer = choose(browser, page, "sso")
    assert answer.status == 302
    done = browser.get(at_provider(browser, answer), follow=False)
    assert done.status == 302 and done.header("location") == "/"  # on to the launcher
    assert "signed in as alice@example.com" in browser.get(f"{site.team}/").text
    assert browser.cookie("auth.localhost") is not None
    identity = browser.get(f"{site.team}/cdn-cgi/access/get-identity")
    doc = json.loads(identity.body)
    assert doc["email"] == ALICE and doc["type"] == "org" and doc["groups"] == ["admins", "staff"]


def test_long_return_address(site: Site) -> None:
    """The return address travels in the flow cookie, which browsers keep only
    up to 4 KiB: with a long query the sign-in still completes, on the same
    page without its query; a path too long for even that is refused before
    the trip to the provider."""
    browser = site.browser()
    r = sign_in(browser, site.url("app.localhost", "/echo/long?q=" + "x" * 3000))
    assert r.status == 200 and r.url == site.url("app.localhost", "/echo/long")
    flows = [
        raw for _, raw in browser.set_cookies if raw.startswith(f"{FLOW_COOKIE}=") and "Max-Age=0" not in raw
    ]
    assert flows and all(len(raw.split(";")[0]) <= 4096 for raw in flows)

    browser = site.browser()
    page = login_page(browser, site.url("app.localhost", "/echo/" + "x" * 4000))
    failed(choose(browser, page, "sso"), 414, "too long")
    assert browser.cookie("auth.localhost", FLOW_COOKIE) is None


# -- groups from the ID token drive a groups policy ----------------------------------------


def test_groups_policy_admits_a_member(site: Site) -> None:
    browser = site.browser()
    r = sign_in(browser, site.url("admin.localhost"))
    assert r.status == 200
    assert forwarded_headers(r)["cf-access-authenticated-user-email"] == ALICE


def test_auth_and_login_method_from_the_providers_amr(site: Site) -> None:
    """The provider reports alice's sign-in as pwd + mfa and bob's without
    amr: an app requiring mfa through "sso" admits her and refuses him."""
    r = sign_in(site.browser(), site.url("vault.localhost"))
    assert r.status == 200 and forwarded_headers(r)["cf-access-authenticated-user-email"] == ALICE
    refused = sign_in(site.browser(), site.url("vault.localhost"), "bob")
    assert refused.status == 403 and "Access denied" in refused.text


def test_groups_policy_refuses_a_non_member(site: Site) -> None:
    browser = site.browser()
    r = sign_in(browser, site.url("admin.localhost"), "bob")
    assert r.status == 403
    assert "Access denied" in r.text and BOB in r.text
    assert browser.cookie("admin.localhost") is None
    # Signed in at the team (bob is who he says), just not allowed here.
    assert browser.cookie("auth.localhost") is not None
    # The app that only asks for an example.com address lets him in.
    r = browser.get(site.url("app.localhost"))
    assert forwarded_headers(r)["cf-access-authenticated-user-email"] == BOB


# -- failures: a clear page, no cookie ----------------------------------------------------


def failed(reply: Reply, status: int, words: str) -> None:
    assert reply.status == status, (reply.status, reply.text[:300])
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert words in reply.text, reply.text[:500]


@pytest.mark.parametrize("iss", ["http://127.0.0.1:1", None])
def test_callback_naming_another_issuer_is_refused(site: Site, iss: str | None) -> None:
    """RFC 9207: oidc-provider names itself in the callback (``iss``) and says
    so in its discovery document; a response naming another issuer, or none,
    is not from it (a mix-up attack) and is refused before the code is redeemed."""
    browser = site.browser()
    callback = at_provider(browser, to_provider(browser, site.url("app.localhost")))
    assert query_of(callback)["iss"] == site.sso.issuer
    if iss is None:
        parts = urlsplit(callback)
        kept = {k: v for k, v in query_of(callback).items() if k != "iss"}
        callback = urlunsplit(parts._replace(query=urlencode(kept)))
    else:
        callback = with_query(callback, iss=iss)
    tokens = site.sso.requests.count("/token")
    failed(browser.get(callback), 400, "the sign-in could not be completed")
    assert site.sso.requests.count("/token") == tokens
    assert_no_session(browser)
    assert_flow_cleared(browser)


def test_tampered_state_is_refused(site: Site) -> None:
    browser = site.browser()
    callback = at_provider(browser, to_provider(browser, site.url("app.localhost")))
    state = query_of(callback)["state"]
    r = browser.get(with_query(callback, state=("y" if state[0] == "x" else "x") + state[1:]))
    failed(r, 400, "did not start in this browser")
    assert_no_session(browser)
    assert_flow_cleared(browser)


def test_callback_finished_in_another_browser_is_refused(site: Site) -> None:
    """Login CSRF: a callback URL (a code for the attacker's account) does not
    finish a sign-in the victim's browser started, nor one it never started."""
    attacker, victim = site.browser(), site.browser()
    planted = at_provider(attacker, to_provider(attacker, site.url("app.localhost")))
    failed(victim.get(planted), 400, "took too long or was started elsewhere")
    to_provider(victim, site.url("app.localhost"))  # the victim's own flow cookie
    failed(victim.get(planted), 400, "did not start in this browser")
    assert_no_session(victim)


def test_wrong_nonce_is_refused(site: Site) -> None:
    """Our own provider (`rogue`): oidc-provider always returns the nonce it was sent."""
    browser = site.browser()
    r = sign_in(browser, site.url("app.localhost"), provider="rogue")
    failed(r, 400, "did not start in this browser")
    assert_no_session(browser)
    assert_flow_cleared(browser)


def test_unverified_email_is_refused(site: Site) -> None:
    browser = site.browser()
    r = sign_in(browser, site.url("app.localhost"), "eve")  # email_verified is false
    failed(r, 400, "your email address is not verified with the identity provider")
    assert "Start again" in r.text
    assert_no_session(browser)
    assert_flow_cleared(browser)


def test_unverified_email_allowed_when_configured(site: Site) -> None:
    browser = site.browser()
    r = sign_in(browser, site.url("app.localhost"), "eve", provider="lax")
    assert r.status == 200, (r.status, r.text[:300])
    assert forwarded_headers(r)["cf-access-authenticated-user-email"] == "eve@example.com"


def test_nested_groups_claim_drives_a_groups_policy(site: Site) -> None:
    """kim's "admins" is in realm_access.roles: through `kc` (groups_claim =
    "realm_access.roles") the admins-only app lets her in; through `sso`
    (groups_claim = "groups", which she lacks) it does not."""
    browser = site.browser()
    r = sign_in(browser, site.url("admin.localhost"), "kim", provider="kc")
    assert r.status == 200, (r.status, r.text[:300])
    seen = forwarded_headers(r)
    assert seen["cf-access-authenticated-user-email"] == KIM
    claims = verified_assertion(site, browser, seen["cf-access-jwt-assertion"], "admin.localhost")
    assert claims["groups"] == ["admins", "offline_access"]

    other = site.browser()
    r = sign_in(other, site.url("admin.localhost"), "kim", provider="sso")
    assert r.status == 403 and KIM in r.text


def test_wrong_client_secret(site: Site) -> None:
    """The provider refuses the code redemption (invalid_client): a page of ours, no session."""
    browser = site.browser()
    r = sign_in(browser, site.url("app.localhost"), provider="badsecret")
    failed(r, 400, "the sign-in could not be completed")
    assert_no_session(browser)
    assert_flow_cleared(browser)


def test_expired_code_is_refused(site: Site) -> None:
    browser = site.browser()
    callback = at_provider(browser, to_provider(browser, site.url("app.localhost"), "brief"))
    time.sleep(2.1)  # `brief` codes live 1 s (whole seconds at the provider)
    failed(browser.get(callback), 400, "expired or was already used")
    assert_no_session(browser)


def test_provider_key_rotation(site: Site) -> None:
    """The provider restarts with a new signing key (same issuer, new kid):
    the edge fetches the new JWKS and signs people in as before."""
    assert sign_in(site.browser(), site.url("app.localhost")).status == 200
    before = site.sso.requests.count("/jwks")
    site.sso.restart()
    r = sign_in(site.browser(), site.url("app.localhost"))
    assert r.status == 200, (r.status, r.text[:300])
    assert forwarded_headers(r)["cf-access-authenticated-user-email"] == ALICE
    assert site.sso.requests.count("/jwks") == before + 1


def test_replayed_callback_is_refused(site: Site) -> None:
    browser = site.browser()
    callback = at_provider(browser, to_provider(browser, site.url("app.localhost")))
    flow = browser.cookies["auth.localhost"][FLOW_COOKIE]
    assert browser.get(callback).status == 200  # signed in

    # Replayed as it was, the flow cookie is gone: start again.
    thief = site.browser()
    failed(thief.get(callback), 400, "took too long or was started elsewhere")
    # Replayed with the flow cookie too (copied before it was cleared): the
    # provider refuses the second redemption of the code.
    thief.cookies["auth.localhost"] = {FLOW_COOKIE: flow}
    failed(thief.get(callback), 400, "expired or was already used")
    assert_no_session(thief)


def test_provider_says_access_denied(site: Site) -> None:
    """The user declines at the provider: it sends error=access_denied back."""
    browser = site.browser()
    callback = at_provider(browser, to_provider(browser, site.url("app.localhost")), decline=True)
    assert query_of(callback)["error"] == "access_denied"
    r = browser.get(callback)
    failed(r, 403, "the sign-in was refused by the identity provider")
    assert_no_session(browser)
    assert_flow_cleared(browser)


def sealed_flow(site: Site, payload: dict[str, Any], exp_offset: float, purpose: str = "flow") -> str:
    """A flow cookie sealed with the edge's own secret (from its key directory)."""
    return Sealer(keydir.secret(str(site.key_dir))).seal(purpose, payload, time.time() + exp_offset)


@pytest.mark.parametrize("case", ["missing", "garbage", "altered", "expired", "other purpose"])
def test_bad_flow_cookie_is_refused(site: Site, case: str) -> None:
    browser = site.browser()
    callback = at_provider(browser, to_provider(browser, site.url("app.localhost")))
    jar = browser.cookies["auth.localhost"]
    value, path = jar[FLOW_COOKIE]
    state = query_of(callback)["state"]
    # What the genuine cookie holds, re-sealed: only its expiry or purpose is wrong.
    payload = {"i": "sso", "s": state, "n": "n", "v": "v" * 43, "t": None}
    forged = {
        "missing": None,
        "garbage": "not-a-sealed-value",
        "altered": value[:-2] + ("AA" if not value.endswith("AA") else "BB"),
        "expired": sealed_flow(site, payload, -1),
        "other purpose": sealed_flow(site, payload, 600, purpose="handoff"),
    }[case]
    if forged is None:
        del jar[FLOW_COOKIE]
    else:
        jar[FLOW_COOKIE] = (forged, path)
    r = browser.get(callback)
    failed(r, 400, "took too long or was started elsewhere")
    assert_no_session(browser)
    assert_flow_cleared(browser)


def test_provider_down_at_sign_in_then_back(site: Site) -> None:
    """Nothing listens at `late`'s issuer: a 502 page, and the edge keeps
    serving; once a provider is there, the next attempt discovers it."""
    browser = site.browser()
    r = choose(browser, login_page(browser, site.url("app.localhost")), "late")
    failed(r, 502, "could not be reached")
    assert browser.cookie("auth.localhost", FLOW_COOKIE) is None
    assert_no_session(browser)
    assert browser.get(site.url("app.localhost", HEALTH)).status == 200

    callback = f"http://auth.localhost:{site.port}{CALLBACK_PATH}"
    with NodeProvider(port=site.late_port, redirect_uris=(callback,)):
        answer = choose(browser, login_page(browser, site.url("app.localhost")), "late")
        assert answer.status == 302
        assert location(answer).startswith(f"http://127.0.0.1:{site.late_port}/auth?")
        r = browser.get(at_provider(browser, answer))
        assert r.status == 200
        assert forwarded_headers(r)["cf-access-authenticated-user-email"] == ALICE


def test_provider_hangs_at_sign_in(site: Site) -> None:
    """The edge gives up on a provider that never answers (a 502 page) and
    serves other requests meanwhile."""
    browser = site.browser()
    page = login_page(browser, site.url("app.localhost"))
    answers: list[Reply] = []
    pending = threading.Thread(target=lambda: answers.append(choose(browser, page, "hung")), daemon=True)
    pending.start()
    assert site.hung.accepted.wait(10), "the edge never contacted the hung provider"
    # While that sign-in waits on the provider, the same (only) worker answers others.
    other = site.browser()
    assert other.get(site.url("app.localhost", HEALTH)).status == 200
    assert pending.is_alive()
    assert sign_in(other, site.url("app.localhost")).status == 200
    pending.join(15)
    assert answers, "the sign-in never ended"
    failed(answers[0], 502, "could not be reached")
    assert_no_session(browser)


def test_provider_down_at_callback(site: Site) -> None:
    """The provider vanishes between the authorize redirect and the code
    redemption: a 502 page, no cookie."""
    browser = site.browser()
    callback = at_provider(browser, to_provider(browser, site.url("app.localhost"), "flaky"))
    site.flaky.stop()
    r = browser.get(callback)
    failed(r, 502, "could not be reached")
    assert_no_session(browser)
    assert_flow_cleared(browser)
    # And the edge still signs people in with the other provider.
    assert sign_in(site.browser(), site.url("app.localhost")).status == 200


# -- a real browser ------------------------------------------------------------------------


PAGE_STATE = "[location.href, document.readyState, document.body ? document.body.innerText : '']"


def test_sign_in_with_chromium(site: Site, tmp_path: Path) -> None:
    """Headless Chromium takes the whole trip a person would: the app, the
    team's login page, the provider's button, oidc-provider's sign-in form,
    the callback and the handoff, back on the app as alice. Its own cookie
    rules (SameSite, Secure on *.localhost) apply at every hop."""
    browser = Chromium(chromium_binary(), tmp_path / "profile")
    try:
        assert browser.tools is not None
        tools = browser.tools
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

        def page(prefix: str, text: str) -> str:
            """The text of the loaded page at a URL starting with `prefix`, showing `text`."""
            deadline, state = time.monotonic() + CALL_TIMEOUT, None
            while time.monotonic() < deadline:
                with contextlib.suppress(AssertionError):  # navigated away under the call
                    state = tools.call(
                        "Runtime.evaluate",
                        session,
                        expression=PAGE_STATE,
                        returnByValue=True,
                    )["result"].get("value")
                if state and state[0].startswith(prefix) and state[1] == "complete" and text in state[2]:
                    return str(state[2])
                time.sleep(0.05)
            raise AssertionError(f"no page at {prefix} showing {text!r}: {state!r}")

        def run_js(script: str) -> None:
            tools.call("Runtime.evaluate", session, expression=script)

        app = site.url("app.localhost", "/status/200")  # text/plain: shown, not downloaded
        tools.call("Page.navigate", session, url=app)
        page(site.team + "/cdn-cgi/access/login", "Continue with SSO provider")
        run_js(
            "[...document.querySelectorAll('button')]"
            ".find(b => b.textContent === 'Continue with SSO provider').click()"
        )
        page(f"{site.sso.issuer}/interaction/", "Sign in to the test provider")
        run_js("document.querySelector('input[name=login]').value = 'alice'; document.forms[0].submit()")
        page(app, "")
        identity = site.url("app.localhost", "/cdn-cgi/access/get-identity")
        tools.call("Page.navigate", session, url=identity)
        doc = json.loads(page(identity, "{"))
        assert doc["email"] == ALICE and doc["groups"] == ["admins", "staff"]
    finally:
        browser.close()


def test_no_oidc_error_leaves_a_traceback(site: Site) -> None:
    """Every failure above was an answer, never a crash (runs last in this module)."""
    assert site.edge.proc.poll() is None
    assert "Traceback" not in site.edge.stderr_text(), site.edge.stderr_text()[-3000:]
