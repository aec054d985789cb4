"""The app launcher's choice of applications, per-app sign-in (allowed_idps,
auto_redirect_to_identity), custom deny and branding, as pure functions: a
Context, the compiled config, the Request and `now`; a real MemoryStore and a
real key directory, no sockets (test_launcher_e2e.py drives a running edge)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
import pytest
from login_site import NOW, LoginSite

from edge.access.actions import Endpoint
from edge.access.claims import Identity
from edge.access.compile import Compiled, DenyPage, compile_config
from edge.access.endpoints import EndpointKind
from edge.access.request import Request, build
from edge.access.responses import LocalResponse
from edge.access.session import CSRF_COOKIE, FLOW_COOKIE, new_person
from edge.access.subject import Subject
from edge.config.load import loads
from edge.login import handoff, pages, signin
from edge.login.context import Context, Target
from edge.login.launcher import launcher, launcher_tiles
from edge.login.oidc import Claims, Flow
from edge.login.passwords import hash_password
from edge.login.service import get_identity

ALICE, MALLORY = "alice@example.com", "mallory@example.com"
PASSWORD = "correct horse"
HASH = hash_password(PASSWORD, log2_n=4)  # cheap: the cost is not what is tested here
TEAM_URL = "http://auth.localhost:8080"
PROVIDER_URL = "https://idp.example.com/authorize"
NASTY = '"><script>alert(1)</script>'
NASTY_ESCAPED = "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"


def app(name: str, domains: str, policies: str, extra: str = "") -> str:
    return (
        f'[[apps]]\nname = "{name}"\ndomains = [{domains}]\nupstream = "http://127.0.0.1:9"\n'
        f'aud = "{name}-aud"\n{extra}{policies}'
    )


def policy(action: str, include: str, extra: str = "") -> str:
    # Named by action: no app here has two policies with the same action.
    return f'[[apps.policies]]\nname = "{action}"\naction = "{action}"\ninclude = [{include}]\n{extra}'


STAFF = policy("allow", '{ groups = ["staff"] }')
EVERYONE = policy("allow", "{ everyone = true }")
APPS = [
    app("wiki", '"wiki.localhost"', STAFF, 'logo_url = "https://cdn.example.com/wiki.png"\n'),
    app("hr", '"hr.localhost"', policy("allow", f'{{ emails = ["{ALICE}"] }}')),
    app("chat", '"*.chat.localhost", "chat.localhost"', EVERYONE),  # the first plain domain is the link
    app("docs", '"docs.localhost/guide/*"', EVERYONE),  # a path: linked to
    app("status", '"status.localhost"', policy("bypass", "{ everyone = true }")),  # bypass-only
    app("ci", '"ci.localhost"', policy("service_auth", "{ any_service_token = true }")),  # machines only
    app("secret", '"secret.localhost"', EVERYONE, "app_launcher_visible = false\n"),
    app("wild", '"*.wild.localhost"', EVERYONE),  # no one address to link to
    app(
        "office",
        '"office.localhost"',
        policy("allow", "{ everyone = true }", 'require = [{ ip_ranges = ["10.0.0.0/8"] }]\n'),
    ),
    app("nomallory", '"nm.localhost"', policy("deny", f'{{ emails = ["{MALLORY}"] }}') + EVERYONE),
    app(
        "mixed",  # a public path and a sign-in: listed for who may sign in
        '"mixed.localhost"',
        policy("bypass", '{ ip_ranges = ["192.0.2.0/24"] }') + STAFF,
    ),
]


def identity(email: str, groups: Sequence[str] = ()) -> Identity:
    return Identity(
        token=b"",
        iss=TEAM_URL,
        aud=frozenset({"auth.localhost"}),
        exp=NOW + 60,
        iat=NOW,
        email=email,
        email_lower=email.lower(),
        email_domain=email.partition("@")[2].lower(),
        groups=frozenset(groups),
    )


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return compile_config(loads("[server]\n" + "".join(APPS)))


@pytest.mark.parametrize(
    ("who", "ip", "expected"),
    [
        (identity(ALICE, ["staff"]), "127.0.0.1", ["wiki", "hr", "chat", "docs", "nomallory", "mixed"]),
        (
            identity(ALICE, ["staff"]),
            "10.1.2.3",
            ["wiki", "hr", "chat", "docs", "office", "nomallory", "mixed"],
        ),
        (identity(MALLORY), "127.0.0.1", ["chat", "docs"]),
        (identity("bob@example.com", ["staff"]), "127.0.0.1", ["wiki", "chat", "docs", "nomallory", "mixed"]),
        # A bypass that matches this client is a public path, not a reason to list the app.
        (identity(MALLORY, ["staff"]), "192.0.2.7", ["wiki", "chat", "docs", "mixed"]),
    ],
)
def test_who_sees_which_apps(compiled: Compiled, who: Identity, ip: str, expected: list[str]) -> None:
    tiles = launcher_tiles(compiled.apps, Subject(ip, (), (), identity=who), TEAM_URL)
    assert [t.name for t in tiles] == expected


def test_tiles_link_to_the_first_plain_domain_on_the_team_scheme_and_port(compiled: Compiled) -> None:
    who = Subject("127.0.0.1", (), (), identity=identity(ALICE, ["staff"]))
    tiles = {t.name: t for t in launcher_tiles(compiled.apps, who, TEAM_URL)}
    assert tiles["wiki"] == pages.Tile(
        "wiki", "http://wiki.localhost:8080/", "https://cdn.example.com/wiki.png"
    )
    assert tiles["chat"].url == "http://chat.localhost:8080/"
    assert tiles["docs"].url == "http://docs.localhost:8080/guide/"
    https = {t.name: t.url for t in launcher_tiles(compiled.apps, who, "https://auth.example.com")}
    assert https["hr"] == "https://hr.localhost/"


# -- the login service: a team with a dev and an OIDC provider -------------------------------

TEAM = f"""
[team]
host = "auth.localhost"
url = "{TEAM_URL}"
key_dir = "{{key_dir}}"
[team.branding]
name = "Example Inc"
accent = "#0a7d3b"
logo_url = "https://cdn.example.com/logo.png"
[[team.providers]]
type = "dev"
id = "dev"
users = [
  {{{{ email = "{ALICE}", password = "{HASH}", groups = ["staff"] }}}},
  {{{{ email = "{MALLORY}", password = "{HASH}" }}}},
]
[[team.providers]]
type = "oidc"
id = "sso"
name = "Company SSO"
issuer = "https://idp.example.com"
client_id = "edge"
client_secret = "s3cret"
"""
LOGIN_APPS = [
    app("devonly", '"devonly.localhost"', STAFF, 'allowed_idps = ["dev"]\n'),
    app(
        "ssoonly", '"ssoonly.localhost"', STAFF, 'allowed_idps = ["sso"]\nauto_redirect_to_identity = true\n'
    ),
    app(
        "devauto", '"devauto.localhost"', STAFF, 'allowed_idps = ["dev"]\nauto_redirect_to_identity = true\n'
    ),
    app("polite", '"polite.localhost"', STAFF, f"custom_deny_message = 'Ask in #access. {NASTY}'\n"),
    app(
        "elsewhere",
        '"elsewhere.localhost"',
        STAFF,
        'custom_deny_url = "https://help.example.com/denied?x=1"\n',
    ),
    app("hidden", '"hidden.localhost"', STAFF, "app_launcher_visible = false\n"),
]
CONFIG = TEAM + "".join(LOGIN_APPS).replace("{", "{{").replace("}", "}}")

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Site(LoginSite):
    """The login service, with this module's team and applications."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, CONFIG)

    def link(self, app: str) -> str:
        back = quote(f"http://{app}.localhost:8080/", safe="")
        return f"http://auth.localhost/cdn-cgi/access/login/{app}.localhost?kid={app}-aud&redirect_url={back}"

    def app_target(self, app: str) -> Target:
        return Target(self.c.apps_by_aud[f"{app}-aud"], f"{app}.localhost", f"http://{app}.localhost:8080/")

    def team_cookie(self, email: str, groups: Sequence[str] = (), idp: str = "dev") -> str:
        r = handoff.start_session(
            self.ctx,
            self.c,
            new_person(email, groups, idp),
            None,
            build(b"GET", b"auth.localhost", b"/", [], "127.0.0.1"),
            NOW,
        )
        return header(r, "set-cookie")[0].partition(";")[0]


class ScriptedProvider:
    """Stands in for the OIDC provider's network side (test_login_oidc.py runs a real one)."""

    async def begin(self, redirect_uri: str) -> tuple[str, Flow]:
        return f"{PROVIDER_URL}?redirect_uri={quote(redirect_uri)}", Flow("state-1", "nonce-1", "v" * 43)

    async def finish(
        self, code: str, returned_state: str, flow: Flow, redirect_uri: str, now: float
    ) -> Claims:
        raise AssertionError("not reached")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def header(response: LocalResponse, name: str) -> list[str]:
    lines = response.rest.decode("latin-1").split("\r\n")
    return [v for k, _, v in (line.partition(": ") for line in lines) if k == name]


def login_get(site: Site, app: str, method: str = "GET", ctx: Context | None = None) -> LocalResponse:
    action, req = site.endpoint(method, site.link(app))
    return run(signin.login(ctx or site.ctx, site.c, action, req, b"", NOW))


def login_post(site: Site, app: str | None, provider: str, ctx: Context | None = None) -> LocalResponse:
    csrf = "c" * 32
    url = site.link(app) if app else "http://auth.localhost/cdn-cgi/access/login"
    headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", f"{CSRF_COOKIE}={csrf}")]
    action, req = site.endpoint("POST", url, headers)
    fields = {
        "csrf": site.ctx.csrf_sealer.csrf_token(csrf),
        "provider": provider,
        "email": ALICE,
        "password": PASSWORD,
    }
    body = "&".join(f"{k}={quote(v)}" for k, v in fields.items()).encode()
    return run(signin.login(ctx or site.ctx, site.c, action, req, body, NOW))


def offered(page: LocalResponse) -> list[str]:
    return re.findall(r'name="provider" value="([^"]*)"', page.body.decode())


def test_the_login_page_offers_the_apps_allowed_providers(site: Site) -> None:
    assert offered(login_get(site, "devonly")) == ["dev"]
    assert offered(login_get(site, "polite")) == ["dev", "sso"]  # no allowed_idps: all
    action, req = site.endpoint("GET", "http://auth.localhost/cdn-cgi/access/login")
    assert offered(run(signin.login(site.ctx, site.c, action, req, b"", NOW))) == ["dev", "sso"]


def test_a_provider_the_app_does_not_allow_is_refused_when_posted_to(site: Site) -> None:
    ctx = dataclasses.replace(site.ctx, oidc={"sso": (site.ctx.oidc["sso"][0], ScriptedProvider())})
    refused = login_post(site, "devonly", "sso", ctx)
    assert refused.status == 403 and b"does not offer that way to sign in" in refused.body
    assert not any(c.startswith(FLOW_COOKIE) for c in header(refused, "set-cookie"))
    assert offered(refused) == ["dev"]
    refused = login_post(site, "ssoonly", "dev", ctx)
    assert refused.status == 403 and not any(
        c.startswith("CF_Authorization") for c in header(refused, "set-cookie")
    )
    # The same posts where the provider is allowed go ahead.
    assert header(login_post(site, "polite", "sso", ctx), "location")[0].startswith(PROVIDER_URL)
    assert header(login_post(site, "devonly", "dev", ctx), "location")[0].startswith(
        "http://devonly.localhost:8080/cdn-cgi/access/authorized?code="
    )


def login_with_session(site: Site, app: str, idp: str) -> LocalResponse:
    cookie = site.team_cookie(ALICE, ["staff"], idp)
    action, req = site.endpoint("GET", site.link(app), [("Cookie", cookie)])
    ctx = dataclasses.replace(site.ctx, oidc={"sso": (site.ctx.oidc["sso"][0], ScriptedProvider())})
    return run(signin.login(ctx, site.c, action, req, b"", NOW))


def test_a_team_session_from_a_provider_the_app_does_not_allow_signs_in_again(site: Site) -> None:
    """allowed_idps holds for a user already signed in at the team: a session
    from another provider is not carried on to the app; the user signs in
    with one the app offers (as Cloudflare Access asks for re-authentication)."""
    same = login_with_session(site, "devonly", "dev")
    assert same.status == 302 and "/cdn-cgi/access/authorized" in header(same, "location")[0]
    other = login_with_session(site, "devonly", "sso")
    assert other.status == 200 and offered(other) == ["dev"]
    assert "signed in with another provider" in other.body.decode()
    # auto_redirect_to_identity: straight on to the one provider the app allows.
    auto = login_with_session(site, "ssoonly", "dev")
    assert auto.status == 302 and header(auto, "location")[0].startswith(PROVIDER_URL)
    # No allowed_idps: any provider's session is carried on.
    assert login_with_session(site, "polite", "sso").status == 302


def test_auto_redirect_goes_straight_to_the_one_provider(site: Site) -> None:
    ctx = dataclasses.replace(site.ctx, oidc={"sso": (site.ctx.oidc["sso"][0], ScriptedProvider())})
    r = login_get(site, "ssoonly", ctx=ctx)
    assert r.status == 302 and header(r, "location")[0].startswith(PROVIDER_URL)
    assert any(c.startswith(FLOW_COOKIE + "=") for c in header(r, "set-cookie"))
    head = login_get(site, "ssoonly", "HEAD", ctx)  # a link previewer starts no flow
    assert head.status == 200 and offered(head) == ["sso"]
    # The dev provider: its sign-in form, and nothing else.
    page = login_get(site, "devauto")
    assert page.status == 200 and offered(page) == ["dev"] and 'type="password"' in page.body.decode()


def test_a_custom_deny_message_is_shown_escaped(site: Site) -> None:
    r = handoff.start_session(
        site.ctx,
        site.c,
        new_person(MALLORY, [], "dev"),
        site.app_target("polite"),
        build(b"GET", b"auth.localhost", b"/", [], "127.0.0.1"),
        NOW,
    )
    text = r.body.decode()
    assert r.status == 403 and f"Ask in #access. {NASTY_ESCAPED}" in text and "<script" not in text
    assert "does not have access to polite" in text


def test_a_custom_deny_url_is_a_redirect(site: Site) -> None:
    r = handoff.start_session(
        site.ctx,
        site.c,
        new_person(MALLORY, [], "dev"),
        site.app_target("elsewhere"),
        build(b"GET", b"auth.localhost", b"/", [], "127.0.0.1"),
        NOW,
    )
    assert r.status == 302 and header(r, "location") == ["https://help.example.com/denied?x=1"]


def test_the_launcher_signed_out_sends_to_sign_in(site: Site) -> None:
    action, req = site.endpoint("GET", "http://auth.localhost/")
    assert action.kind is EndpointKind.LAUNCHER and action.team
    r = run(launcher(site.ctx, site.c, action, req, b"", NOW))
    assert r.status == 302 and header(r, "location") == ["/cdn-cgi/access/login"]


def test_the_launcher_lists_what_the_user_may_open(site: Site) -> None:
    def listed(email: str, groups: Sequence[str]) -> tuple[LocalResponse, list[str]]:
        action, req = site.endpoint(
            "GET", "http://auth.localhost/", [("Cookie", site.team_cookie(email, groups))]
        )
        r = run(launcher(site.ctx, site.c, action, req, b"", NOW))
        return r, re.findall(r'<li class="app"><a href="([^"]*)">', r.body.decode())

    r, links = listed(ALICE, ["staff"])
    assert r.status == 200 and f"You are signed in as {ALICE}" in r.body.decode()
    assert links == [
        f"http://{a}.localhost:8080/" for a in ("devonly", "ssoonly", "devauto", "polite", "elsewhere")
    ]
    _, links = listed(MALLORY, [])
    assert links == []
    # Framing forbidden, no CORS, the branding's logo allowed and nothing else.
    assert header(r, "x-frame-options") == ["DENY"]
    csp = header(r, "content-security-policy")[0]
    assert "frame-ancestors 'none'" in csp and "img-src data: https://cdn.example.com;" in csp
    assert not [k for k in r.rest.decode().lower().split("\r\n") if k.startswith("access-control-")]


def test_the_team_sign_in_lands_on_the_launcher(site: Site) -> None:
    r = login_post(site, None, "dev")
    assert r.status == 302 and header(r, "location") == ["/"]
    assert any(c.startswith("CF_Authorization=") for c in header(r, "set-cookie"))


# -- branding and templates ----------------------------------------------------------------


def test_branding_on_the_pages(site: Site) -> None:
    for page in (
        login_get(site, "devonly").body,
        pages.denied_page(ALICE, "wiki", "/cdn-cgi/access/logout", look=site.ctx.look),
        pages.message_page("Signed out", "You are signed out.", look=site.ctx.look, kind="signed_out"),
        pages.launcher_page(ALICE, [], "/cdn-cgi/access/logout", site.ctx.look),
    ):
        text = page.decode()
        assert '<header class="team"><img src="https://cdn.example.com/logo.png"' in text
        assert "<span>Example Inc</span>" in text and "h1{color:#0a7d3b}" in text
    plain = pages.login_page(app_name="x", action="/a", csrf="c", providers=[]).decode()
    assert "Example Inc" not in plain and "<img" not in plain and "#0a7d3b" not in plain


def test_the_edges_own_deny_page_is_branded(site: Site) -> None:
    """custom_deny_message's 403 on the app host (compile.DenyPage) carries the
    team's branding like the login service's pages, built at compile time."""
    deny = site.c.apps_by_aud["polite-aud"].deny_page
    assert isinstance(deny, DenyPage)
    named = deny.response(b"rid-9")
    text = named.body.decode()
    assert '<header class="team"><img src="https://cdn.example.com/logo.png"' in text
    assert "<span>Example Inc</span>" in text and "h1{color:#0a7d3b}" in text
    assert "<title>Access denied · Example Inc</title>" in text
    assert f'<p class="custom">Ask in #access. {NASTY_ESCAPED}</p>' in text and "<script" not in text
    assert '<footer class="note">Request id: rid-9</footer>' in text
    assert deny.response(b"") is deny.plain and "Request id" not in deny.plain.body.decode()
    csp = header(named, "content-security-policy")[0]
    assert "img-src data: https://cdn.example.com;" in csp and "frame-ancestors 'none'" in csp


def test_the_deny_page_escapes_a_hostile_team() -> None:
    look = pages.Look(NASTY, f"https://x.example.com/{NASTY}", "#abcdef", {})
    text = DenyPage(NASTY, NASTY, b"edge", look).response(NASTY.encode()).body.decode()
    assert "<script" not in text and text.count(NASTY_ESCAPED) == 6  # title, header, logo, app, message, id
    templated = pages.Look(NASTY, "", "#abcdef", {"denied": "<p>{{team_name}}</p>{{content}}"})
    text = DenyPage("app", "m", b"edge", templated).response(b"rid").body.decode()
    assert text.startswith(f"<p>{NASTY_ESCAPED}</p><h1>Access denied</h1>") and "<script" not in text
    assert text.endswith('<footer class="note">Request id: rid</footer>')


def test_a_template_escapes_every_value_but_the_content() -> None:
    template = (
        "<title>{{title}}</title><h2 style='color:{{accent}}'>{{ team_name }}</h2>"
        "<img src='{{logo_url}}'>{{content}}"
    )
    look = pages.Look(
        NASTY, f"https://x.example.com/{NASTY}", "#abcdef", {"launcher": template, "login": "L {{content}}"}
    )
    tiles = [pages.Tile(NASTY, "http://a.localhost/", "")]
    text = pages.launcher_page(NASTY, tiles, "/cdn-cgi/access/logout", look).decode()
    assert text.startswith(
        "<title>Your applications</title><h2 style='color:#abcdef'>" + NASTY_ESCAPED + "</h2>"
    )
    assert f"<img src='https://x.example.com/{NASTY_ESCAPED}'>" in text
    assert '<ul class="apps"><li class="app"><a href="http://a.localhost/">' + NASTY_ESCAPED in text
    assert "<script" not in text
    # Each page takes its own template; one without a template keeps the built-in page.
    assert pages.login_page(app_name="x", action="/a", csrf="c", providers=[], look=look).startswith(
        b"L <h1>"
    )
    assert pages.message_page("Signed out", "bye", look=look, kind="signed_out").startswith(
        b"<!doctype html>"
    )


def test_the_csp_allows_only_the_logos_origins() -> None:
    assert pages.csp([]) == pages.CSP and pages.csp(["", ""]) == pages.CSP
    got = pages.csp(
        ["https://b.example.com/x.png", "https://a.example.com:8443/y.png", "https://b.example.com/z"]
    )
    assert got == pages.CSP.replace(
        b"img-src data:", b"img-src data: https://a.example.com:8443 https://b.example.com"
    )
    assert got.count(b"img-src") == 1  # a second directive would be ignored


def test_login_pages_and_json_errors_name_the_request_id(site: Site) -> None:
    """A user's screenshot of any edge page names its access log line."""

    def endpoint(url: str, rid: bytes) -> tuple[Endpoint, Request]:
        action, req = site.endpoint("GET", url)
        return action, msgspec.structs.replace(req, request_id=rid)

    action, req = endpoint("http://auth.localhost/cdn-cgi/access/login/nowhere.localhost?kid=x", b"rid-400")
    bad = run(signin.login(site.ctx, site.c, action, req, b"", NOW))
    assert bad.status == 400 and '<footer class="note">Request id: rid-400</footer>' in bad.body.decode()
    action, req = endpoint("http://auth.localhost/cdn-cgi/access/get-identity", b"rid-401")
    anonymous = run(get_identity(site.ctx, site.c, action, req, b"", NOW))
    assert anonymous.status == 401
    assert msgspec.json.decode(anonymous.body) == {"error": "not signed in", "request_id": "rid-401"}


@pytest.mark.parametrize(
    "redirect_url",
    ["http://%5Bx/", "http://[::1/", "http://a:99999/", "%FF%FE", "http://devonly.localhost:8080/"],
)
def test_the_signed_out_page_takes_any_return_address(site: Site, redirect_url: str) -> None:
    """A client's redirect_url is only a hint for the signed-out page's link:
    a malformed one gets the team's sign-in link, never a 500."""
    action, req = site.endpoint(
        "GET", f"http://auth.localhost/cdn-cgi/access/logout?redirect_url={redirect_url}"
    )
    page = run(site.service.handle(site.c, action, req, b"", NOW))
    assert page.status == 200 and "You are signed out." in page.body.decode()


# -- "Sign in with another account" --------------------------------------------------------------


def test_sign_in_with_another_account_signs_out_then_goes_to_the_apps_form(site: Site) -> None:
    """The denied page's link: one logout, then straight to the sign-in form
    for the same application (with the login binding it came with)."""
    denied = handoff.start_session(
        site.ctx,
        site.c,
        new_person(MALLORY, [], "dev"),
        dataclasses.replace(site.app_target("polite"), binding="b" * 24),
        build(b"GET", b"auth.localhost", b"/", [], "127.0.0.1"),
        NOW,
    )
    m = re.search(r'<a href="([^"]*)">Sign in with another account</a>', denied.body.decode())
    assert denied.status == 403 and m is not None
    link = m.group(1).replace("&amp;", "&")
    assert link.startswith("/cdn-cgi/access/logout?")
    cookie = header(denied, "set-cookie")[0].partition(";")[0]
    action, req = site.endpoint("GET", f"http://auth.localhost{link}", [("Cookie", cookie)])
    out = run(site.service.handle(site.c, action, req, b"", NOW))
    back = quote("http://polite.localhost:8080/", safe="")
    assert out.status == 302 and header(out, "location") == [
        f"/cdn-cgi/access/login/polite.localhost?kid=polite-aud&redirect_url={back}&b={'b' * 24}"
    ]
    assert any(c.startswith("CF_Authorization=;") or "Max-Age=0" in c for c in header(out, "set-cookie"))
    # The session is over: its team cookie no longer signs anyone in.
    assert not isinstance(site.ctx.team_identity(site.c, req, NOW), Identity)


@pytest.mark.parametrize(
    "query",
    [
        "kid=polite-aud&redirect_url=https%3A%2F%2Fevil.example%2F",
        "kid=polite-aud&redirect_url=http%3A%2F%2Fdevonly.localhost%3A8080%2F",  # another app's host
        "kid=nope&redirect_url=http%3A%2F%2Fpolite.localhost%3A8080%2F",
        "redirect_url=%2F%2Fevil.example%2F",
        "",
    ],
)
def test_sign_in_with_another_account_never_leaves_the_team_host(site: Site, query: str) -> None:
    """A link that names no application of ours (or a return address off its
    host) still signs out, then goes to the team's own sign-in form."""
    action, req = site.endpoint("GET", f"http://auth.localhost/cdn-cgi/access/logout?{query}&then=login")
    out = run(site.service.handle(site.c, action, req, b"", NOW))
    assert out.status == 302 and header(out, "location") == ["/cdn-cgi/access/login"]
