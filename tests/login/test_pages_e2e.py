"""Every HTML page the edge shows a person, through a running `edge serve`
(real sockets on 127.0.0.1, a real upstream, tests/support/browserless.py):
each names the request's id (the X-Request-Id the edge answered with), each
carries the team's branding, and the denied and signed-out pages take the
team's templates for them.

The team's name is hostile markup, and so is the logo URL's query: every
page must show them escaped. The edge trusts 127.0.0.0/8 as a proxy, so a
test picks its client address with X-Forwarded-For: the sign-in throttle
(per client address) of one test does not reach the others, and the
"office" app, which requires an office address, refuses a signed-in user
who comes from elsewhere (the edge's own deny page, not the login service's).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode, urljoin

import pytest
from browserless import Browser, Reply
from conftest import EdgeProcess, free_port, write_config
from upstream_server import Upstream

from edge.login.passwords import hash_password

ALICE, MALLORY, CAROL = "alice@example.com", "mallory@example.com", "carol@contractor.test"
PASSWORD = "correct horse battery"
ENDPOINTS = "/cdn-cgi/access"
TEAM_NAME = 'Acme "><script>alert(1)</script> & co'
LOGO = "https://cdn.example.com/logo.png?size=32&v=<2>"
ACCENT = "#0a7d3b"
OFFICE_IP, HOME_IP = "198.51.100.7", "203.0.113.9"
UPSTREAM_ROOT = b"no such mode\n"  # what tests/support/upstream_server.py answers at "/"
DENY_MESSAGE = "Only from the office: <b>ask</b> #it."
# A template per page it may replace: the page's name, then every placeholder.
TEMPLATE = (
    '<!doctype html><title>{{title}}</title><body data-template="%s" style="--accent:{{accent}}">'
    '<h2 class="brand">{{team_name}}</h2><img src="{{logo_url}}">{{content}}</body>'
)


@dataclass
class World:
    edge: EdgeProcess
    port: int

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    def browser(self) -> Browser:
        return Browser(self.port)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pages")
    upstream = Upstream().start()
    edge: EdgeProcess | None = None
    try:
        port = free_port()
        hashed = hash_password(PASSWORD, log2_n=10)
        for page in ("denied", "signed_out"):
            (tmp / f"{page}.html").write_text(TEMPLATE % page)
        staff = '[[apps.policies]]\nname = "staff"\naction = "allow"\ninclude = [{ groups = ["staff"] }]\n'
        config = (
            f'[team]\nhost = "auth.localhost"\nurl = "http://auth.localhost:{port}"\n'
            f'key_dir = "{tmp / "keys"}"\n'
            f"[team.branding]\nname = '{TEAM_NAME}'\nlogo_url = '{LOGO}'\naccent = \"{ACCENT}\"\n"
            f'[team.branding.templates]\ndenied = "{tmp / "denied.html"}"\n'
            f'signed_out = "{tmp / "signed_out.html"}"\n'
            '[[team.providers]]\ntype = "dev"\nid = "dev"\n'
            f'users = [{{ email = "{ALICE}", password = "{hashed}", groups = ["staff"] }},'
            f' {{ email = "{MALLORY}", password = "{hashed}" }}]\n'
            '[[team.providers]]\ntype = "dev"\nid = "contractors"\n'
            f'users = [{{ email = "{CAROL}", password = "{hashed}" }}]\n'
            f'[[apps]]\nname = "app"\ndomains = ["app.localhost"]\nupstream = "{upstream.url}"\n'
            'allowed_idps = ["dev"]\n' + staff
            + f'[[apps]]\nname = "office"\ndomains = ["office.localhost"]\nupstream = "{upstream.url}"\n'
            f"custom_deny_message = '{DENY_MESSAGE}'\n"
            '[[apps.policies]]\nname = "office"\naction = "allow"\ninclude = [{ groups = ["staff"] }]\n'
            f'require = [{{ ip_ranges = ["{OFFICE_IP}/32"] }}]\n'
        )  # fmt: skip
        server = f'listen = ["127.0.0.1:{port}"]\ntrusted_proxies = ["127.0.0.0/8"]'
        edge = EdgeProcess(write_config(tmp, server, config))
        yield World(edge, port)
    finally:
        if edge is not None:
            edge.stop()
        upstream.close()


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def names_its_request_id(reply: Reply) -> None:
    """The page's footer names the id the edge answered with."""
    rid = reply.header("x-request-id")
    assert rid, reply.headers
    assert re.findall(r"Request id: ([^<]*)</", reply.text) == [escape(rid)], reply.text


def is_branded(reply: Reply) -> None:
    """The built-in page, with the team's name, logo and accent, escaped."""
    text = reply.text
    assert f'<header class="team"><img src="{escape(LOGO)}" alt="" height="32"> ' in text, text
    assert f"<span>{escape(TEAM_NAME)}</span></header>" in text
    assert f"h1{{color:{ACCENT}}}" in text and f" · {escape(TEAM_NAME)}</title>" in text
    assert "<script>" not in text and "<2>" not in text


def is_templated(reply: Reply, page: str) -> None:
    """The team's template for `page`, every value escaped."""
    text = reply.text
    assert text.startswith("<!doctype html><title>"), text
    assert f'<body data-template="{page}" style="--accent:{ACCENT}">' in text
    assert f'<h2 class="brand">{escape(TEAM_NAME)}</h2><img src="{escape(LOGO)}">' in text
    assert "<script>" not in text and "<2>" not in text


def login_form(b: Browser, ip: str, app: str = "app") -> Reply:
    page = b.get(f"http://{app}.localhost:{b.port}/", headers=from_ip(ip))
    assert page.status == 200 and 'name="password"' in page.text, (page.status, page.text[:300])
    return page


def post(b: Browser, page: Reply, ip: str, **fields: str) -> Reply:
    """Post `page`'s sign-in form (its own CSRF field unless given); not followed."""
    m = re.search(r'<form method="post" action="([^"]*)"', page.text)
    assert m is not None
    form = {"csrf": page.form_field("csrf"), "provider": "dev", "email": ALICE, "password": PASSWORD}
    form.update(fields)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **from_ip(ip)}
    action = urljoin(page.url, m.group(1).replace("&amp;", "&"))
    return b.request("POST", action, urlencode(form).encode(), headers)


def signed_in(world: World, ip: str, email: str = ALICE, app: str = "app") -> tuple[Browser, Reply]:
    b = world.browser()
    answer = post(b, login_form(b, ip, app), ip, email=email)
    assert answer.status == 302, (answer.status, answer.text[:300])
    return b, b.get(urljoin(answer.url, answer.header("location") or ""), headers=from_ip(ip))


# -- the sign-in form's error pages ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"password": "wrong"}, 401, "Wrong email or password."),
        ({"csrf": "forged"}, 403, "The form expired; please sign in again."),
        ({"provider": ""}, 400, "Choose a way to sign in."),
        ({"provider": "contractors"}, 403, "This application does not offer that way to sign in."),
    ],
)
def test_sign_in_errors_are_branded_and_name_the_request_id(
    world: World, fields: dict[str, str], status: int, message: str
) -> None:
    b = world.browser()
    reply = post(b, login_form(b, "192.0.2.1"), "192.0.2.1", **fields)
    assert reply.status == status and message in reply.text
    assert 'name="password"' in reply.text  # the form again
    names_its_request_id(reply)
    is_branded(reply)


def test_the_throttled_form_names_the_request_id(world: World) -> None:
    ip = "192.0.2.99"  # this test's own client: the throttle counts per address
    b = world.browser()
    page = login_form(b, ip)
    for _ in range(10):
        assert post(b, page, ip, password="guess").status == 401
    reply = post(b, page, ip)
    assert reply.status == 429 and "Too many failed attempts" in reply.text
    names_its_request_id(reply)
    is_branded(reply)


def test_the_sign_in_form_itself_names_the_request_id(world: World) -> None:
    page = login_form(world.browser(), "192.0.2.2")
    names_its_request_id(page)
    is_branded(page)


# -- signing out ---------------------------------------------------------------------------


def test_the_logout_confirmation_is_branded_and_names_the_request_id(world: World) -> None:
    b, _ = signed_in(world, "192.0.2.3")
    logout = world.url("auth.localhost", f"{ENDPOINTS}/logout")
    ask = b.get(logout, headers={"Sec-Fetch-Site": "cross-site", **from_ip("192.0.2.3")})
    assert ask.status == 200 and "<h1>Sign out?</h1>" in ask.text
    names_its_request_id(ask)
    is_branded(ask)
    expired = b.request(
        "POST",
        logout,
        b"csrf=forged",
        {"Content-Type": "application/x-www-form-urlencoded", **from_ip("192.0.2.3")},
    )
    assert expired.status == 403 and "This sign-out form expired; confirm again." in expired.text
    names_its_request_id(expired)
    is_branded(expired)
    assert b.cookie("auth.localhost") is not None  # nothing happened


def test_the_signed_out_page_takes_the_branding_and_its_template(world: World) -> None:
    """Through the app's logout, on to the team's: the signed-out page."""
    b, app = signed_in(world, "192.0.2.4")
    assert app.body == UPSTREAM_ROOT and b.cookie("app.localhost") is not None
    out = b.get(world.url("app.localhost", f"{ENDPOINTS}/logout"), headers=from_ip("192.0.2.4"))
    assert out.status == 200 and out.url.startswith(world.url("auth.localhost"))
    assert "You are signed out." in out.text
    is_templated(out, "signed_out")
    assert f"<title>Signed out · {escape(TEAM_NAME)}</title>" not in out.text  # the template's own title
    assert "<title>Signed out</title>" in out.text
    names_its_request_id(out)
    assert b.cookie("auth.localhost") is None and b.cookie("app.localhost") is None


# -- refused by the app's policies -----------------------------------------------------------


def test_the_denied_page_at_sign_in_takes_the_branding_and_its_template(world: World) -> None:
    b = world.browser()
    denied = post(b, login_form(b, "192.0.2.5"), "192.0.2.5", email=MALLORY)
    assert denied.status == 403 and f"That account ({MALLORY}) does not have access to app." in denied.text
    is_templated(denied, "denied")
    assert "<title>Access denied</title>" in denied.text
    names_its_request_id(denied)


def test_sign_in_with_another_account_is_one_click_to_the_form(world: World) -> None:
    b = world.browser()
    denied = post(b, login_form(b, "192.0.2.6"), "192.0.2.6", email=MALLORY)
    m = re.search(r'<a href="([^"]*)">Sign in with another account</a>', denied.text)
    assert m is not None, denied.text
    form = b.get(urljoin(denied.url, m.group(1).replace("&amp;", "&")), headers=from_ip("192.0.2.6"))
    assert form.status == 200 and "<h1>Sign in to app</h1>" in form.text and 'name="password"' in form.text
    assert b.cookie("auth.localhost") is None  # mallory's session is over
    # ...and that form signs the other account in to the app.
    answer = post(b, form, "192.0.2.6")
    assert answer.status == 302
    app = b.get(urljoin(answer.url, answer.header("location") or ""), headers=from_ip("192.0.2.6"))
    assert app.body == UPSTREAM_ROOT and app.url.startswith(world.url("app.localhost"))
    assert b.cookie("app.localhost") is not None


def test_the_edges_own_deny_page_takes_the_branding_and_its_template(world: World) -> None:
    """A signed-in user the office app refuses from home: the app host's 403
    with the app's custom_deny_message (edge.access.compile.DenyPage)."""
    b, office = signed_in(world, OFFICE_IP, app="office")
    assert office.body == UPSTREAM_ROOT and office.url.startswith(world.url("office.localhost"))
    home = b.get(world.url("office.localhost"), headers=from_ip(HOME_IP))
    assert home.status == 403 and "You do not have access to office." in home.text
    assert f'<p class="custom">{escape(DENY_MESSAGE)}</p>' in home.text
    is_templated(home, "denied")
    names_its_request_id(home)
    csp = home.header("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp and "img-src data: https://cdn.example.com" in csp
    assert "script-src" not in csp and home.header("x-frame-options") == "DENY"
