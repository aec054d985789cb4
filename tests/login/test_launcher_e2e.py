"""The app launcher, per-app sign-in, custom deny and branding through a
running `edge serve` (real sockets on 127.0.0.1, a real upstream), first with
the cookie-keeping client of tests/support/browserless.py, then in headless
Chromium (tests/support/chromium.py), which resolves every *.localhost name
to loopback.

The team (auth.localhost) has two dev providers, "dev" (alice in staff,
mallory) and "contractors" (carol); the applications:

- wiki: staff only; allowed_idps = ["dev"] with auto_redirect_to_identity;
- chat: anyone at example.com;
- hr: staff only, with a custom deny message;
- status: bypass only; hidden: app_launcher_visible = false (never listed).

So alice's launcher lists wiki, chat and hr; mallory's only chat.

A second team (`sso_world`) adds an OpenID provider, oidc-provider (npm,
OpenID-Certified; tests/support/oidc_node.py), and the app ssoapp that allows
only it, with auto_redirect_to_identity: the ordinary sign-in there runs
against the certified provider, with plain HTTP and in Chromium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browserless import Browser as Client
from browserless import Reply
from chromium import Browser, Tab, chromium_binary
from conftest import EdgeProcess, free_port, write_config
from oidc_node import CLIENT_ID, CLIENT_SECRET, NodeProvider, sign_in_at
from upstream_server import Upstream

from edge.login.passwords import hash_password

ALICE, MALLORY, CAROL = "alice@example.com", "mallory@example.com", "carol@contractor.test"
PASSWORD = "correct horse battery"
ENDPOINTS = "/cdn-cgi/access"
DENY_MESSAGE = "HR is for staff: ask hr@example.com for access."
ACCENT_RGB = "rgb(10, 125, 59)"  # #0a7d3b
UPSTREAM_ROOT = b"no such mode\n"  # what tests/support/upstream_server.py answers at "/"


def app_toml(name: str, upstream: str, policies: str, extra: str = "") -> str:
    return (
        f'[[apps]]\nname = "{name}"\ndomains = ["{name}.localhost"]\nupstream = "{upstream}"\n{extra}'
        f"{policies}"
    )


def allow(include: str) -> str:
    return f'[[apps.policies]]\nname = "p"\naction = "allow"\ninclude = [{include}]\n'


@dataclass
class World:
    edge: EdgeProcess
    port: int

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("launcher")
    upstream = Upstream().start()
    edge: EdgeProcess | None = None
    try:
        port = free_port()
        hashed = hash_password(PASSWORD, log2_n=10)
        staff = allow('{ groups = ["staff"] }')
        config = (
            f'[team]\nhost = "auth.localhost"\nurl = "http://auth.localhost:{port}"\n'
            f'key_dir = "{tmp / "keys"}"\n'
            '[team.branding]\nname = "Example Inc"\naccent = "#0a7d3b"\n'
            '[[team.providers]]\ntype = "dev"\nid = "dev"\nname = "Staff"\n'
            f'users = [{{ email = "{ALICE}", password = "{hashed}", groups = ["staff"] }},'
            f' {{ email = "{MALLORY}", password = "{hashed}" }}]\n'
            '[[team.providers]]\ntype = "dev"\nid = "contractors"\nname = "Contractors"\n'
            f'users = [{{ email = "{CAROL}", password = "{hashed}" }}]\n'
            + app_toml(
                "wiki", upstream.url, staff, 'allowed_idps = ["dev"]\nauto_redirect_to_identity = true\n'
            )
            + app_toml("chat", upstream.url, allow('{ email_domains = ["example.com"] }'))
            + app_toml("hr", upstream.url, staff, f'custom_deny_message = "{DENY_MESSAGE}"\n')
            + app_toml(
                "status",
                upstream.url,
                '[[apps.policies]]\nname = "open"\naction = "bypass"\ninclude = [{ everyone = true }]\n',
            )
            + app_toml("hidden", upstream.url, allow("{ everyone = true }"), "app_launcher_visible = false\n")
        )
        edge = EdgeProcess(write_config(tmp, f'listen = ["127.0.0.1:{port}"]', config))
        yield World(edge, port)
    finally:
        if edge is not None:
            edge.stop()
        upstream.close()


# -- over real sockets, without a browser ----------------------------------------------------


def sign_in_at_team(world: World, email: str, provider: str = "dev") -> tuple[Client, Reply]:
    client = Client(world.port)
    page = client.get(world.url("auth.localhost"))
    assert page.url.endswith(f"{ENDPOINTS}/login") and "<form" in page.text
    fields = {"csrf": page.form_field("csrf"), "provider": provider, "email": email, "password": PASSWORD}
    return client, client.post_form(page.url, fields)


def launcher_links(reply: Reply) -> list[str]:
    return re.findall(r'<li class="app"><a href="([^"]*)">', reply.text)


def test_signed_out_the_launcher_sends_to_sign_in_and_back(world: World) -> None:
    client = Client(world.port)
    first = client.get(world.url("auth.localhost"), follow=False)
    assert first.status == 302 and first.header("location") == f"{ENDPOINTS}/login"
    _, launcher = sign_in_at_team(world, ALICE)
    assert launcher.url == world.url("auth.localhost") and launcher.status == 200
    assert f"You are signed in as {ALICE}" in launcher.text


@pytest.mark.parametrize(
    ("email", "apps"),
    [(ALICE, ["wiki", "chat", "hr"]), (MALLORY, ["chat"]), (CAROL, [])],
)
def test_the_launcher_lists_the_apps_each_user_may_open(world: World, email: str, apps: list[str]) -> None:
    provider = "contractors" if email == CAROL else "dev"
    _, launcher = sign_in_at_team(world, email, provider)
    assert launcher_links(launcher) == [world.url(f"{a}.localhost") for a in apps]


def test_the_launcher_forbids_framing_and_sends_no_cors(world: World) -> None:
    client, _ = sign_in_at_team(world, ALICE)
    reply = client.get(world.url("auth.localhost"), headers={"Origin": "http://chat.localhost"})
    assert reply.status == 200 and reply.header("x-frame-options") == "DENY"
    assert "frame-ancestors 'none'" in (reply.header("content-security-policy") or "")
    assert not [k for k, _ in reply.headers if k.lower().startswith("access-control-")]
    preflight = client.request(
        "OPTIONS",
        world.url("auth.localhost"),
        headers={"Origin": "http://chat.localhost", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status == 403
    assert not [k for k, _ in preflight.headers if k.lower().startswith("access-control-")]


def test_a_link_from_the_launcher_opens_the_app(world: World) -> None:
    client, launcher = sign_in_at_team(world, ALICE)
    opened = client.get(launcher_links(launcher)[1])  # chat: the team session carries on
    # Through Access to the upstream (whose "/" is a 404 of its own), with the app's cookie.
    assert opened.url == world.url("chat.localhost") and opened.body == UPSTREAM_ROOT
    assert client.cookie("chat.localhost") is not None


def test_a_provider_the_app_does_not_offer_is_refused(world: World) -> None:
    client = Client(world.port)
    page = client.get(world.url("wiki.localhost"))
    assert re.findall(r'name="provider" value="([^"]*)"', page.text) == ["dev"]
    fields = {
        "csrf": page.form_field("csrf"),
        "provider": "contractors",
        "email": CAROL,
        "password": PASSWORD,
    }
    refused = client.post_form(page.url, fields, follow=False)
    assert refused.status == 403 and "does not offer that way to sign in" in refused.text
    assert client.cookie("auth.localhost") is None
    chat = client.get(world.url("chat.localhost"))
    assert re.findall(r'name="provider" value="([^"]*)"', chat.text) == ["dev", "contractors"]


def test_a_custom_deny_message_after_sign_in(world: World) -> None:
    client = Client(world.port)
    denied = client.sign_in(world.url("hr.localhost"), MALLORY, PASSWORD)
    assert denied.status == 403 and DENY_MESSAGE in denied.text


@pytest.fixture(scope="module")
def sso_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, NodeProvider]]:
    """A team with the dev provider and oidc-provider; the app "ssoapp"
    allows only the latter, with auto_redirect_to_identity."""
    tmp = tmp_path_factory.mktemp("launcher-sso")
    port = free_port()
    sso = NodeProvider(redirect_uris=(f"http://auth.localhost:{port}{ENDPOINTS}/callback",))
    upstream: Upstream | None = None
    edge: EdgeProcess | None = None
    try:
        sso.start()
        upstream = Upstream().start()
        config = (
            f'[team]\nhost = "auth.localhost"\nurl = "http://auth.localhost:{port}"\n'
            f'key_dir = "{tmp / "keys"}"\n'
            '[[team.providers]]\ntype = "dev"\nid = "dev"\n'
            f'users = [{{ email = "{ALICE}", password = "{hash_password(PASSWORD, log2_n=10)}" }}]\n'
            f'[[team.providers]]\ntype = "oidc"\nid = "sso"\nissuer = "{sso.issuer}"\n'
            f'client_id = "{CLIENT_ID}"\nclient_secret = "{CLIENT_SECRET}"\n'
            + app_toml(
                "ssoapp",
                upstream.url,
                allow('{ email_domains = ["example.com"] }'),
                'allowed_idps = ["sso"]\nauto_redirect_to_identity = true\n',
            )
        )
        edge = EdgeProcess(write_config(tmp, f'listen = ["127.0.0.1:{port}"]', config))
        yield World(edge, port), sso
    finally:
        if edge is not None:
            edge.stop()
        sso.close()
        if upstream is not None:
            upstream.close()


def test_auto_redirect_goes_straight_to_the_oidc_provider(sso_world: tuple[World, NodeProvider]) -> None:
    world, sso = sso_world
    client = Client(world.port)
    to_login = client.get(world.url("ssoapp.localhost", "/status/200"), follow=False)
    login = to_login.header("location") or ""
    assert to_login.status == 302 and login.startswith(world.url("auth.localhost", f"{ENDPOINTS}/login/"))
    straight = client.get(login, follow=False)  # no chooser page: on to the provider
    authorize = straight.header("location") or ""
    assert straight.status == 302 and authorize.startswith(f"{sso.issuer}/auth?")
    callback = sign_in_at(authorize, "alice")  # alice signs in at the provider's own page
    assert callback.startswith(world.url("auth.localhost", f"{ENDPOINTS}/callback?"))
    done = client.get(callback)
    assert done.url == world.url("ssoapp.localhost", "/status/200") and done.status == 200
    assert client.cookie("ssoapp.localhost") is not None


# -- in headless Chromium --------------------------------------------------------------------


class LauncherTab(Tab):
    def sign_in(self, email: str) -> None:
        self.evaluate(
            f"document.querySelector('input[name=email]').value = {json.dumps(email)};"
            f"document.querySelector('input[name=password]').value = {json.dumps(PASSWORD)};"
            "document.querySelector('form').submit()"
        )


@pytest.fixture
def tab(tmp_path: Path) -> Iterator[LauncherTab]:
    opened = Browser(chromium_binary(), tmp_path / "profile")
    try:
        page = opened.tab()
        yield LauncherTab(page.tools, page.session)
    finally:
        opened.close()


LINKS = "[...document.querySelectorAll('li.app a')].map(a => [a.textContent, a.href])"


@pytest.mark.parametrize(("email", "apps"), [(ALICE, ["wiki", "chat", "hr"]), (MALLORY, ["chat"])])
def test_browser_launcher_shows_exactly_the_apps_the_user_may_open(
    world: World, tab: LauncherTab, email: str, apps: list[str]
) -> None:
    tab.go(world.url("auth.localhost"))
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/login"), "Password")
    tab.sign_in(email)
    tab.wait(world.url("auth.localhost"), "Your applications")
    assert tab.evaluate(LINKS) == [[a, world.url(f"{a}.localhost")] for a in apps]
    # Branding: the team's name and accent colour.
    assert tab.evaluate("document.querySelector('header.team').innerText") == "Example Inc"
    assert tab.evaluate("getComputedStyle(document.querySelector('h1')).color") == ACCENT_RGB
    assert "Example Inc" in tab.evaluate("document.title")


def test_browser_opening_an_app_from_the_launcher(world: World, tab: LauncherTab) -> None:
    tab.go(world.url("auth.localhost"))
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/login"), "Password")
    tab.sign_in(ALICE)
    tab.wait(world.url("auth.localhost"), "Your applications")
    tab.evaluate("document.querySelector('li.app a[href*=\"chat.localhost\"]').click()")
    assert tab.wait(world.url("chat.localhost")).strip() == UPSTREAM_ROOT.decode().strip()


def test_browser_one_allowed_provider_goes_straight_to_its_form(world: World, tab: LauncherTab) -> None:
    tab.go(world.url("wiki.localhost"))
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/login/wiki.localhost"), "Password")
    forms = tab.evaluate("[...document.forms].map(f => f.elements.provider.value)")
    assert forms == ["dev"]  # no chooser: the dev provider's form only
    tab.sign_in(ALICE)
    tab.wait(world.url("wiki.localhost"))


def test_browser_one_allowed_oidc_provider_goes_straight_to_it(
    sso_world: tuple[World, NodeProvider], tab: LauncherTab
) -> None:
    """ssoapp allows only the OpenID provider, with auto_redirect_to_identity:
    the first page the browser shows is the provider's own sign-in page (the
    edge's login page only redirects, so it commits no page), and signing in
    there brings the browser back to the app, signed in as alice."""
    world, sso = sso_world
    app = world.url("ssoapp.localhost", "/status/200")
    tab.go(app)
    tab.wait(f"{sso.issuer}/interaction/", "Sign in to the test provider")
    shown = tab.shown()
    assert len(shown) == 1 and shown[0].startswith(f"{sso.issuer}/interaction/"), shown
    tab.evaluate(
        "document.querySelector('input[name=login]').value = 'alice';"
        "document.querySelector('input[name=login]').form.submit()"
    )
    assert tab.wait(app, "status body").strip() == "status body"
    # Provider page, then the app: no page of the edge's in between.
    assert tab.shown()[1:] == [app]
    tab.go(world.url("ssoapp.localhost", f"{ENDPOINTS}/get-identity"))
    identity = json.loads(tab.wait(world.url("ssoapp.localhost", f"{ENDPOINTS}/get-identity"), ALICE))
    assert identity["email"] == ALICE and identity["iss"] == world.url("auth.localhost").rstrip("/")


def test_browser_a_custom_deny_message_is_shown(world: World, tab: LauncherTab) -> None:
    tab.go(world.url("hr.localhost"))
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/login/hr.localhost"), "Password")
    tab.sign_in(MALLORY)
    text = tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/login/hr.localhost"), "Access denied")
    assert DENY_MESSAGE in text and f"That account ({MALLORY}) does not have access to hr." in text
    assert tab.evaluate("getComputedStyle(document.querySelector('h1')).color") == ACCENT_RGB
