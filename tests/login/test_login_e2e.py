"""The login service end to end, with the dev provider (BEHAVIOUR.md sections 3 and 6).

A real `edge serve` on 127.0.0.1, a recording upstream (tests/support/upstream_server.py:
``/echo`` answers with the raw request it received) and tests/support/browserless.py,
a cookie-keeping client that sends every ``*.localhost`` URL to the edge's
port with the URL's host in the Host header, as a browser resolving
``*.localhost`` to loopback would.

The edge listens on a port picked (and released) here, so that ``[team].url``
can name it: that URL is the ``iss`` of every token the edge signs, and where
applications send browsers to sign in.

One edge serves most tests (module scope). Its applications differ in their
cookie settings (the table in `test_app_cookie_attributes`) and policies.
Tests that change the edge's state for everyone get their own edge: the
failure throttle (per client address: every test comes from 127.0.0.1) and
key rotation. Tests on the shared edge make at most a few failed password
checks between them, far below the throttle's limit.

Passwords are hashed with scrypt N = 2^10 so that sign-ins are cheap. Every
socket has a timeout and every poll a deadline; no test asserts a duration.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import jwt
import msgspec
import pytest
from browserless import Browser, Reply
from conftest import ROOT, EdgeProcess, free_port, wait_for, write_config
from cryptography import x509
from upstream_server import Upstream

from edge.access.session import BINDING_COOKIE, HANDOFF_TTL, Sealer, new_person, random_token
from edge.login import keydir
from edge.login.passwords import hash_password

TIMEOUT = 10.0  # seconds, on every socket and every poll
PASSWORD = "correct horse battery"
ALICE, BOB, MALLORY = "alice@example.com", "bob@example.com", "mallory@example.com"
PASSWORD_HASH = hash_password(PASSWORD, log2_n=10)
# Markup in a config value the login page shows: it must come out escaped.
PROVIDER_NAME = 'Dev <b class="x">users</b> & co'
OVERLAP = 4.0  # seconds a rotated-out key keeps verifying (the rotation test's edge)
ENDPOINTS = "/cdn-cgi/access"

TEAM = """
[team]
host = "auth.localhost"
url = "http://auth.localhost:{port}"
key_dir = "{key_dir}"
key_overlap = {overlap}
[[team.providers]]
type = "dev"
name = '{provider_name}'
users = [
  {{ email = "{alice}", password = "{hash}", groups = ["staff", "eng"], amr = ["pwd", "mfa"] }},
  {{ email = "{bob}", password = "{hash}" }},
  {{ email = "{mallory}", password = "{hash}" }},
]
"""

STAFF = """
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]
exclude = [{ emails = ["mallory@example.com"] }]
"""

# One app per cookie setting of BEHAVIOUR.md section 6, plus one nobody here may use.
APPS = """
[[apps]]
name = "app"
domains = ["app.localhost"]
upstream = "{up}"
aud = "app-aud"
{staff}
[[apps]]
name = "second"
domains = ["second.localhost"]
upstream = "{up}"
aud = "second-aud"
same_site = "strict"
http_only = false
session_duration = 600
{staff}
[[apps]]
name = "cross"
domains = ["none.localhost"]
upstream = "{up}"
aud = "none-aud"
same_site = "none"
session_duration = 3600
{staff}
[[apps]]
name = "scoped"
domains = ["scoped.localhost/echo"]
upstream = "{up}"
aud = "scoped-aud"
path_scoped = true
session_duration = 120
{staff}
[[apps]]
name = "locked"
domains = ["locked.localhost"]
upstream = "{up}"
aud = "locked-aud"
[[apps.policies]]
name = "root only"
action = "allow"
include = [{{ emails = ["root@example.com"] }}]
[[apps]]
name = "mfa"
domains = ["mfa.localhost"]
upstream = "{up}"
aud = "mfa-aud"
[[apps.policies]]
name = "people with mfa"
action = "allow"
include = [{{ group = ["people"] }}]
require = [{{ auth_method = ["mfa"] }}, {{ login_method = ["dev"] }}]

[[groups]]
name = "people"
include = [{{ email_domains = ["example.com"] }}]
exclude = [{{ emails = ["mallory@example.com"] }}]
"""


@dataclass
class Team:
    """A running edge with a team and the apps above."""

    edge: EdgeProcess
    port: int
    key_dir: Path
    upstream: Upstream
    browsers: list[Browser] = field(default_factory=list)

    @property
    def team_url(self) -> str:
        return f"http://auth.localhost:{self.port}"

    def url(self, host: str, path: str = "/echo/page?x=1") -> str:
        return f"http://{host}:{self.port}{path}"

    def browser(self) -> Browser:
        return Browser(self.port)

    def login_link(self, host: str, aud: str, redirect_url: str) -> str:
        """A link to the team's login page, as an application makes it."""
        return (
            f"{self.team_url}{ENDPOINTS}/login/{host}?kid={quote(aud, safe='')}"
            f"&redirect_url={quote(redirect_url, safe='')}"
        )

    def call(
        self,
        method: str,
        host: str,
        target: str,
        headers: Sequence[tuple[str, str | bytes]] = (),
        body: bytes = b"",
    ) -> Reply:
        """One request as given (header values may be raw bytes), no cookie jar."""
        conn = HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{host}:{self.port}")
            for name, value in headers:
                conn.putheader(name, value)
            if body or method == "POST":
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            r = conn.getresponse()
            return Reply(r.status, r.getheaders(), r.read(), f"http://{host}:{self.port}{target}")
        finally:
            conn.close()


def start_team(tmp: Path, overlap: float = 86400.0, server: str = "") -> Team:
    tmp.mkdir(parents=True, exist_ok=True)
    upstream = Upstream().start()
    port = free_port()
    key_dir = tmp / "keys"
    team = TEAM.format(
        port=port,
        key_dir=key_dir,
        overlap=overlap,
        provider_name=PROVIDER_NAME,
        alice=ALICE,
        bob=BOB,
        mallory=MALLORY,
        hash=PASSWORD_HASH,
    )
    apps = APPS.format(up=upstream.url, staff=STAFF)
    try:
        edge = EdgeProcess(write_config(tmp, f'listen = ["127.0.0.1:{port}"]\n{server}', team + apps))
    except BaseException:
        upstream.close()
        raise
    return Team(edge, port, key_dir, upstream)


def stop_team(team: Team) -> None:
    team.edge.stop()
    team.upstream.close()
    # A handler that raised would have been turned into a bare 500 and logged.
    assert "Traceback" not in team.edge.stderr_text(), team.edge.stderr_text()


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    running = start_team(tmp_path_factory.mktemp("login"))
    yield running
    stop_team(running)


@pytest.fixture(scope="module")
def team_token(team: Team) -> str:
    """A team session (org token) for tests that need someone signed in on the team host."""
    return sign_in(team, team.url("app.localhost"), BOB).cookie("auth.localhost") or ""


@pytest.fixture
def own_team(tmp_path: Path) -> Iterator[Callable[..., Team]]:
    """An edge of the test's own, for tests that change it for everyone."""
    started: list[Team] = []

    def start(overlap: float = 86400.0, server: str = "") -> Team:
        started.append(start_team(tmp_path / f"team{len(started)}", overlap, server))
        return started[-1]

    yield start
    for running in started:
        stop_team(running)


# -- helpers -----------------------------------------------------------------------


def form_action(page: Reply) -> str:
    """Where the page's (first) form posts to, as a browser resolves it."""
    m = re.search(r'<form method="post" action="([^"]*)"', page.text)
    assert m is not None, page.text[:500]
    return urljoin(page.url, str(m.group(1)).replace("&amp;", "&"))


def submit(
    b: Browser,
    page: Reply,
    email: str,
    password: str = PASSWORD,
    csrf: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Post the dev form of `page` (the page's own CSRF field unless given); not followed."""
    fields = {"provider": "dev", "email": email, "password": password}
    fields["csrf"] = page.form_field("csrf") if csrf is None else csrf
    sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    return b.request("POST", form_action(page), urlencode(fields).encode(), sent)


def login_page(b: Browser, url: str) -> Reply:
    """Open an application's `url` unauthenticated: the team's login page."""
    first = b.get(url, follow=False)
    assert first.status == 302, (first.status, first.text)
    page = b.get(first.header("location") or "", follow=False)
    assert page.status == 200 and "<form" in page.text, (page.status, page.text[:300])
    return page


def handoff(b: Browser, url: str, email: str = ALICE) -> str:
    """Sign in for `url` up to the team's redirect; returns the one-time
    /cdn-cgi/access/authorized?code=... URL, not yet used."""
    answer = submit(b, login_page(b, url), email)
    assert answer.status == 302, (answer.status, answer.text[:300])
    location = answer.header("location") or ""
    assert f"{ENDPOINTS}/authorized?code=" in location
    return location


def sign_in(team: Team, url: str, email: str = ALICE) -> Browser:
    """A browser signed in to the application of `url` (and the team)."""
    b = team.browser()
    reply = b.get(handoff(b, url, email))
    assert reply.status == 200 and reply.url == url, (reply.status, reply.url, reply.text[:300])
    return b


def auth_cookies(reply: Reply) -> list[str]:
    return [c for c in reply.all("set-cookie") if c.startswith("CF_Authorization=")]


def parse_set_cookie(raw: str) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes: lower-case name -> value, "" for flags)."""
    first, *attrs = [part.strip() for part in raw.split(";")]
    name, _, value = first.partition("=")
    return name, value, {k.lower(): v for k, _, v in (a.partition("=") for a in attrs)}


def claims(token: str) -> dict[str, Any]:
    """A token's claims, unverified (verification has its own tests below)."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


def certs(team: Team, host: str = "auth.localhost") -> dict[str, Any]:
    reply = team.call("GET", host, f"{ENDPOINTS}/certs")
    assert reply.status == 200, reply.text
    return dict(json.loads(reply.body))


def verify(team: Team, token: str, aud: str) -> dict[str, Any]:
    """Verify `token` as an upstream would: with the edge's published keys."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwks = jwt.PyJWKSet.from_dict(certs(team))
    return dict(jwt.decode(token, jwks[kid], algorithms=["ES256"], audience=aud, issuer=team.team_url))


def echoed_headers(reply: Reply) -> dict[str, list[str]]:
    """The headers the upstream received (its /echo answer is the raw request)."""
    head = reply.body.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    found: dict[str, list[str]] = {}
    for line in head:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return found


def navigate(team: Team, host: str, token: str, path: str = "/echo/x") -> Reply:
    """A navigation carrying `token` by hand (not from any jar)."""
    return team.call(
        "GET", host, path, [("Cookie", f"CF_Authorization={token}"), ("Sec-Fetch-Mode", "navigate")]
    )


# -- the full sign-in ------------------------------------------------------------------


def test_full_dev_sign_in(team: Team) -> None:
    b = team.browser()
    url = team.url("app.localhost")

    # 1. The application sends the unauthenticated navigation to the team.
    first = b.get(url, follow=False)
    assert first.status == 302
    # ...bound to this browser: the link names the cookie set with it.
    binding = (first.header("location") or "").partition("&b=")[2]
    assert first.header("location") == team.login_link("app.localhost", "app-aud", url) + "&b=" + binding
    assert b.cookie("app.localhost", BINDING_COOKIE) == binding

    # 2. The team's login page: a form with the dev provider.
    page = b.get(first.header("location") or "", follow=False)
    assert page.status == 200
    assert 'name="email"' in page.text and 'name="password"' in page.text

    # 3. The form: the team cookie (an org token) and a one-time code for the app's host.
    answer = submit(b, page, ALICE)
    assert answer.status == 302
    location = answer.header("location") or ""
    assert location.startswith(f"http://app.localhost:{team.port}{ENDPOINTS}/authorized?code=")
    [team_cookie] = auth_cookies(answer)
    _, team_token, attrs = parse_set_cookie(team_cookie)
    assert attrs["path"] == "/" and "httponly" in attrs and "secure" in attrs
    org = verify(team, team_token, "auth.localhost")
    assert org["type"] == "org" and org["iss"] == team.team_url and org["email"] == ALICE
    assert b.cookie("auth.localhost") == team_token

    # 4. The code is exchanged for the app's cookie, then on to redirect_url.
    exchanged = b.get(location, follow=False)
    assert exchanged.status == 302
    assert exchanged.header("location") == url
    [app_cookie] = auth_cookies(exchanged)
    _, app_token, _ = parse_set_cookie(app_cookie)
    assert b.cookie("app.localhost") == app_token

    # 5. The upstream gets the identity; a client's own identity headers never pass.
    reply = b.get(url, headers={"Cf-Access-Authenticated-User-Email": "eve@evil.test"})
    assert reply.status == 200
    seen = echoed_headers(reply)
    assert seen["cf-access-authenticated-user-email"] == [ALICE]
    [assertion] = seen["cf-access-jwt-assertion"]
    assert assertion == app_token
    app = verify(team, assertion, "app-aud")
    assert app["iss"] == team.team_url
    assert app["aud"] == ["app-aud"]
    assert app["type"] == "app"
    assert app["email"] == ALICE
    assert sorted(app["groups"]) == ["eng", "staff"]
    # The app token belongs to the same sign-in as the team's: one nonce, one subject.
    assert app["identity_nonce"] == org["identity_nonce"] and app["identity_nonce"]
    assert app["sub"] == org["sub"] and app["sub"]
    assert app["nbf"] <= app["iat"] < app["exp"]
    # The cookie itself is not passed on (the app does not keep_auth_cookie).
    assert "CF_Authorization" not in " ".join(seen.get("cookie", []))


def test_tokens_carry_amr_and_idp_and_auth_method_rules_use_them(team: Team) -> None:
    """alice's sign-in reports mfa, bob's only pwd (the dev provider's
    default): the app that requires auth_method mfa admits alice only."""
    url = team.url("mfa.localhost")
    b = sign_in(team, url, ALICE)
    org = verify(team, b.cookie("auth.localhost") or "", "auth.localhost")
    app = verify(team, b.cookie("mfa.localhost") or "", "mfa-aud")
    for token in (org, app):
        assert sorted(token["amr"]) == ["mfa", "pwd"]
        assert token["idp"] == {"id": "dev"}
    assert b.get(url).status == 200

    bob = team.browser()
    answer = submit(bob, login_page(bob, url), BOB)
    assert_denied(answer, BOB, "mfa")
    bob_org = verify(team, bob.cookie("auth.localhost") or "", "auth.localhost")
    assert bob_org["amr"] == ["pwd"] and bob_org["idp"] == {"id": "dev"}
    # An app that does not ask for mfa takes bob's sign-in; its token says pwd.
    bob_app = sign_in(team, team.url("app.localhost"), BOB).cookie("app.localhost") or ""
    assert claims(bob_app)["amr"] == ["pwd"] and claims(bob_app)["idp"] == {"id": "dev"}


# host, what its config says -> the cookie's attributes
COOKIE_CASES = [
    ("app.localhost", "/", "86400", "Lax", True),
    ("second.localhost", "/", "600", "Strict", False),  # http_only = false
    ("none.localhost", "/", "3600", "None", True),
    ("scoped.localhost", "/echo", "120", "Lax", True),  # path_scoped: the matched domain's path
]


@pytest.mark.parametrize(("host", "path", "max_age", "same_site", "http_only"), COOKIE_CASES)
def test_app_cookie_attributes(
    team: Team, host: str, path: str, max_age: str, same_site: str, http_only: bool
) -> None:
    b = team.browser()
    exchanged = b.get(handoff(b, team.url(host)), follow=False)
    assert exchanged.status == 302
    [raw] = auth_cookies(exchanged)
    _, token, attrs = parse_set_cookie(raw)
    expected = {"path": path, "max-age": max_age, "secure": "", "samesite": same_site}
    if http_only:
        expected["httponly"] = ""
    assert attrs == expected  # exactly these: no Domain (host-only), nothing else
    assert claims(token)["exp"] - claims(token)["iat"] == int(max_age)
    assert b.get(team.url(host)).status == 200


def test_signed_in_user_goes_straight_to_a_second_app(team: Team) -> None:
    b = sign_in(team, team.url("app.localhost"))
    team_token = b.cookie("auth.localhost")
    assert team_token is not None

    url = team.url("second.localhost", "/echo/second")
    to_login = b.get(url, follow=False)
    assert to_login.status == 302
    # No page on the team host: straight back with a code.
    back = b.get(to_login.header("location") or "", follow=False)
    assert back.status == 302, back.text[:300]
    assert (back.header("location") or "").startswith(
        f"http://second.localhost:{team.port}{ENDPOINTS}/authorized?code="
    )
    assert auth_cookies(back) == []  # the team session is reused, not renewed
    reply = b.get(back.header("location") or "")
    assert reply.status == 200 and reply.url == url
    second = claims(b.cookie("second.localhost") or "")
    assert second["aud"] == ["second-aud"]
    assert second["identity_nonce"] == claims(team_token)["identity_nonce"]


# -- policies at login -----------------------------------------------------------------


def assert_denied(reply: Reply, email: str, app: str) -> None:
    assert reply.status == 403, (reply.status, reply.text[:300])
    assert f"does not have access to {app}" in reply.text
    assert f"Request id: {reply.header('x-request-id')}</footer>" in reply.text
    assert email in reply.text
    assert reply.header("location") is None and "authorized?code" not in reply.text


@pytest.mark.parametrize(
    ("host", "email", "app"),
    [("locked.localhost", ALICE, "locked"), ("app.localhost", MALLORY, "app")],  # not included; excluded
)
def test_policy_denial_at_login(team: Team, host: str, email: str, app: str) -> None:
    b = team.browser()
    answer = submit(b, login_page(b, team.url(host)), email)
    assert_denied(answer, email, app)
    # Signed in to the team all the same (the account is fine, the app says no)...
    assert b.cookie("auth.localhost") is not None
    assert b.cookie(host) is None
    # ...so opening the app again is denied at once, without a form.
    again = b.get(b.get(team.url(host), follow=False).header("location") or "", follow=False)
    assert_denied(again, email, app)


def test_each_login_gets_its_own_binding(team: Team) -> None:
    """decide draws no randomness: the worker passes a binding in and renews
    it once a response has used it, so no two logins share one."""
    b = team.browser()
    url = team.url("app.localhost")
    seen = set()
    for _ in range(3):
        first = b.get(url, follow=False)
        assert first.status == 302
        binding = (first.header("location") or "").partition("&b=")[2]
        assert binding and b.cookie("app.localhost", BINDING_COOKIE) == binding
        seen.add(binding)
    assert len(seen) == 3


# -- the one-time handoff code -------------------------------------------------------------


def test_replayed_code_is_refused(team: Team) -> None:
    b = team.browser()
    code_url = handoff(b, team.url("app.localhost"))
    binding = b.cookie("app.localhost", BINDING_COOKIE)
    assert b.get(code_url, follow=False).status == 302
    # Replayed with the binding it was made for (a copy of the browser's cookies):
    target = code_url.partition(f":{team.port}")[2]
    again = team.call("GET", "app.localhost", target, [("Cookie", f"{BINDING_COOKIE}={binding}")])
    assert again.status == 400 and "already used" in again.text
    assert auth_cookies(again) == [] and again.header("location") is None
    # A browser that stole the link did not start that login: no session for it.
    thief = team.browser().get(code_url, follow=False)
    assert thief.status == 400 and "started in another browser" in thief.text
    assert auth_cookies(thief) == [] and thief.header("location") is None


def test_a_code_sent_to_someone_else_does_not_sign_them_in(team: Team) -> None:
    """Login CSRF: an attacker's fresh code, opened by a victim who is in the
    middle of a login of their own, starts the victim's own login again."""
    attacker = team.browser()
    code_url = handoff(attacker, team.url("app.localhost"))
    victim = team.browser()
    assert victim.get(team.url("app.localhost"), follow=False).status == 302  # the victim's binding
    r = victim.get(code_url, follow=False)
    assert r.status == 302 and r.header("location") == team.url("app.localhost")
    assert auth_cookies(r) == []
    # The code was not used up: it still works for the browser it belongs to.
    assert len(auth_cookies(attacker.get(code_url, follow=False))) == 1


def test_code_on_another_host_is_refused(team: Team) -> None:
    b = team.browser()
    code_url = handoff(b, team.url("app.localhost"))
    code = code_url.partition("code=")[2]
    elsewhere = team.browser().get(team.url("second.localhost", f"{ENDPOINTS}/authorized?code={code}"))
    assert elsewhere.status == 400 and "for another site" in elsewhere.text
    assert auth_cookies(elsewhere) == []


BINDING = "b" * 24  # the login binding of hand-made codes (sent as its cookie)


def sealed_code(team: Team, exp: float, host: str = "app.localhost") -> str:
    """A handoff code made as the edge makes one: sealed under the key dir's secret."""
    sealer = Sealer(keydir.secret(team.key_dir))
    payload = {
        "h": host,
        "a": "app-aud",
        "r": team.url(host),
        "p": msgspec.to_builtins(new_person(ALICE, ["staff"], "dev")),
        "j": random_token(16),
        "b": BINDING,
    }
    return sealer.seal("handoff", payload, exp)


def test_expired_code_is_refused(team: Team) -> None:
    # The control: a code built this way, still fresh, is honoured...
    fresh = sealed_code(team, time.time() + HANDOFF_TTL)
    bound = [("Cookie", f"{BINDING_COOKIE}={BINDING}")]
    ok = team.call("GET", "app.localhost", f"{ENDPOINTS}/authorized?code={fresh}", bound)
    assert ok.status == 302 and len(auth_cookies(ok)) == 1
    # ...so the only thing wrong with this one is its age.
    expired = sealed_code(team, time.time() - 1)
    refused = team.call("GET", "app.localhost", f"{ENDPOINTS}/authorized?code={expired}", bound)
    assert refused.status == 400 and "not valid or has expired" in refused.text
    assert auth_cookies(refused) == []


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_codes(team: Team) -> dict[str, str]:
    payload = {
        "h": "app.localhost",
        "a": "app-aud",
        "r": team.url("app.localhost"),
        "p": msgspec.to_builtins(new_person(ALICE, [], "dev")),
        "j": "x",
    }
    later = time.time() + HANDOFF_TTL
    return {
        "missing": "",
        "garbage": "garbage",
        "not base64": "%%%***",
        "random bytes": _b64(os.urandom(120)),
        "oversized": "A" * 5000,
        "another edge's secret": Sealer(os.urandom(32)).seal("handoff", payload, later),
        "another purpose": Sealer(keydir.secret(team.key_dir)).seal("flow", payload, later),
        "tampered": _tamper(sealed_code(team, later)),
    }


def _tamper(code: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(code + "=" * (-len(code) % 4)))
    raw[20] ^= 1  # one bit of the ciphertext
    return _b64(bytes(raw))


def test_forged_codes_are_refused(team: Team) -> None:
    for name, code in forged_codes(team).items():
        reply = team.call("GET", "app.localhost", f"{ENDPOINTS}/authorized?code={quote(code)}")
        assert reply.status == 400, (name, reply.status)
        assert auth_cookies(reply) == [] and reply.header("location") is None, name


# redirect_url values a login link may carry: none stays on app.localhost.
FOREIGN_REDIRECTS = [
    "https://evil.test/",
    "http://app.localhost@evil.test/",  # userinfo: the host is evil.test
    "http://app.localhost:{port}@evil.test/",
    "http://evil.test#@app.localhost/",
    "http://evil.test?@app.localhost/",
    "//evil.test/",  # scheme-relative
    "/\\evil.test/",
    "http:\\\\evil.test\\",
    "http://evil.test\\@app.localhost/",
    "http://app.localhost\\@evil.test/",
    "http://app.localhost.evil.test/",
    "http://evil.test/app.localhost/",
    "http:evil.test",
    "http:/evil.test/",
    "javascript:alert(1)//app.localhost/",
    "ftp://app.localhost/",
    "http://app.localhost",  # no path
    "http://app.localhost:99999/",  # no such port
    "http://app.localhost\t.evil.test/",
    "http://app.localhost\u3002evil.test/",  # an ideographic full stop
    "/echo/relative",
    "",
]


@pytest.mark.parametrize("redirect_url", FOREIGN_REDIRECTS)
def test_login_link_never_redirects_off_the_app_host(team: Team, team_token: str, redirect_url: str) -> None:
    link = team.login_link("app.localhost", "app-aud", redirect_url.format(port=team.port))
    path = link.removeprefix(team.team_url)
    # Signed in on the team host is the dangerous case: the page would redirect at once.
    for cookie in ([], [("Cookie", f"CF_Authorization={team_token}")]):
        reply = team.call("GET", "auth.localhost", path, cookie)
        assert reply.status == 400 and "Sign-in link not valid" in reply.text, reply.text[:300]
        assert reply.header("location") is None and auth_cookies(reply) == []


@pytest.mark.parametrize(
    ("host", "aud", "redirect_url"),
    [
        ("second.localhost", "app-aud", "http://second.localhost/echo/"),  # another app's host
        ("scoped.localhost", "scoped-aud", "http://scoped.localhost/elsewhere"),  # outside its path
        ("app.localhost", "nobody-aud", "http://app.localhost/echo/"),  # no such app
    ],
)
def test_login_link_for_the_wrong_app_is_refused(
    team: Team, team_token: str, host: str, aud: str, redirect_url: str
) -> None:
    path = team.login_link(host, aud, redirect_url).removeprefix(team.team_url)
    reply = team.call("GET", "auth.localhost", path, [("Cookie", f"CF_Authorization={team_token}")])
    assert reply.status == 400 and reply.header("location") is None


def test_foreign_redirect_is_refused_on_the_form_too(team: Team) -> None:
    """A valid form posted to a bad link: the credentials are right, the link is not."""
    b = team.browser()
    page = login_page(b, team.url("app.localhost"))
    bad = team.login_link("app.localhost", "app-aud", "http://app.localhost@evil.test/")
    fields = {"csrf": page.form_field("csrf"), "provider": "dev", "email": ALICE, "password": PASSWORD}
    reply = b.post_form(bad, fields, follow=False)
    assert reply.status == 400 and reply.header("location") is None
    assert auth_cookies(reply) == []


# -- the form: CSRF, passwords, throttling ---------------------------------------------------


def _csrf_no_cookie(team: Team) -> tuple[Browser, Reply, str]:
    page = login_page(team.browser(), team.url("app.localhost"))
    return team.browser(), page, page.form_field("csrf")  # a browser without the cookie


def _csrf_mismatch(team: Team) -> tuple[Browser, Reply, str]:
    b = team.browser()
    page = login_page(b, team.url("app.localhost"))
    return b, page, _b64(os.urandom(32))


def _csrf_other_session(team: Team) -> tuple[Browser, Reply, str]:
    b, other = team.browser(), team.browser()
    page = login_page(b, team.url("app.localhost"))
    theirs = login_page(other, team.url("app.localhost")).form_field("csrf")
    assert theirs != page.form_field("csrf")
    return b, page, theirs


def _csrf_missing(team: Team) -> tuple[Browser, Reply, str]:
    b = team.browser()
    return b, login_page(b, team.url("app.localhost")), ""


@pytest.mark.parametrize(
    "case",
    [_csrf_no_cookie, _csrf_mismatch, _csrf_other_session, _csrf_missing],
    ids=["no cookie", "mismatched field", "another session's field", "no field"],
)
def test_csrf_failures(team: Team, case: Callable[[Team], tuple[Browser, Reply, str]]) -> None:
    b, page, csrf = case(team)
    reply = submit(b, page, ALICE, PASSWORD, csrf=csrf)  # the right password, all the same
    assert reply.status == 403 and "The form expired" in reply.text
    assert auth_cookies(reply) == [] and reply.header("location") is None
    assert b.cookie("auth.localhost") is None


@pytest.mark.parametrize(("email", "password"), [(ALICE, "wrong password"), ("nobody@example.com", PASSWORD)])
def test_wrong_credentials(team: Team, email: str, password: str) -> None:
    b = team.browser()
    reply = submit(b, login_page(b, team.url("app.localhost")), email, password)
    assert reply.status == 401 and "Wrong email or password." in reply.text
    assert auth_cookies(reply) == [] and reply.header("location") is None
    assert "<form" in reply.text  # the form again, to try once more


def test_throttled_after_ten_failures(own_team: Callable[..., Team]) -> None:
    team = own_team()
    b = team.browser()
    page = login_page(b, team.url("app.localhost"))
    for i in range(10):
        # A made-up X-Forwarded-For changes nothing: this edge trusts no proxy.
        assert submit(b, page, ALICE, "guess", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status == 401
    # Then even the right password waits, from any browser at this address.
    blocked = submit(b, page, ALICE, PASSWORD, headers={"X-Forwarded-For": "198.51.100.7"})
    assert blocked.status == 429 and "Too many failed attempts" in blocked.text
    assert auth_cookies(blocked) == []
    other = team.browser()
    assert submit(other, login_page(other, team.url("app.localhost")), BOB).status == 429


def test_throttled_per_client_behind_a_trusted_proxy(own_team: Callable[..., Team]) -> None:
    """Behind a proxy every client shares its address: the throttle counts the
    address the proxy forwards for, so one guesser does not lock out everyone."""
    team = own_team(server='trusted_proxies = ["127.0.0.0/8"]')
    guesser = {"X-Forwarded-For": "203.0.113.1"}
    b = team.browser()
    page = login_page(b, team.url("app.localhost"))
    for _ in range(10):
        assert submit(b, page, ALICE, "guess", headers=guesser).status == 401
    assert submit(b, page, ALICE, PASSWORD, headers=guesser).status == 429
    other = team.browser()
    page = login_page(other, team.url("app.localhost"))
    assert submit(other, page, BOB, headers={"X-Forwarded-For": "203.0.113.2"}).status == 302


# -- logout and revocation ---------------------------------------------------------------------


def test_logout_clears_both_cookies_and_revokes_the_session(team: Team) -> None:
    b = sign_in(team, team.url("app.localhost"))
    app_token, team_token = b.cookie("app.localhost"), b.cookie("auth.localhost")
    assert app_token and team_token
    # The control: replayed by hand, both tokens work before the logout.
    assert navigate(team, "app.localhost", app_token).status == 200
    team_cookie = [("Cookie", f"CF_Authorization={team_token}")]
    assert team.call("GET", "auth.localhost", f"{ENDPOINTS}/get-identity", team_cookie).status == 200

    out = b.get(team.url("app.localhost", f"{ENDPOINTS}/logout"), follow=False)
    assert out.status == 302
    # The team's leg names the app, so its signed-out page leads back to it.
    home = team.url("app.localhost", "/")
    back = urlencode({"kid": "app-aud", "redirect_url": home})
    assert out.header("location") == f"{team.team_url}{ENDPOINTS}/logout?{back}"
    [cleared] = auth_cookies(out)
    assert parse_set_cookie(cleared)[1:] == (
        "",
        {"path": "/", "max-age": "0", "httponly": "", "secure": "", "samesite": "Lax"},
    )
    team_out = b.get(out.header("location") or "", follow=False)
    assert team_out.status == 200 and "You are signed out." in team_out.text
    assert f'<a href="{home}">Sign in to app</a>' in team_out.text
    [cleared] = auth_cookies(team_out)
    assert parse_set_cookie(cleared)[2]["max-age"] == "0"
    assert b.cookie("app.localhost") is None and b.cookie("auth.localhost") is None

    # The old tokens, replayed by hand, are refused: the session is revoked.
    assert navigate(team, "app.localhost", app_token).status == 302
    api = team.call("GET", "app.localhost", "/echo/x", [("Cookie", f"CF_Authorization={app_token}")])
    assert api.status == 401
    for host, token in (("app.localhost", app_token), ("auth.localhost", team_token)):
        ident = team.call("GET", host, f"{ENDPOINTS}/get-identity", [("Cookie", f"CF_Authorization={token}")])
        assert ident.status == 401, host
    # The team token no longer signs anyone in: the login page again, no handoff.
    link = team.login_link("app.localhost", "app-aud", team.url("app.localhost"))
    page = team.call("GET", "auth.localhost", link.removeprefix(team.team_url), team_cookie)
    assert page.status == 200 and "<form" in page.text


def test_logout_clears_a_path_scoped_cookie(team: Team) -> None:
    """The scoped cookie (Path=/echo) never reaches /cdn-cgi/access, yet logout clears it."""
    b = sign_in(team, team.url("scoped.localhost"))
    token = b.cookie("scoped.localhost")
    assert token is not None
    out = b.get(team.url("scoped.localhost", f"{ENDPOINTS}/logout"), follow=False)
    paths = {parse_set_cookie(c)[2]["path"] for c in auth_cookies(out)}
    assert paths == {"/", "/echo"}
    b.get(out.header("location") or "")  # the team logout revokes the whole sign-in
    assert b.cookie("scoped.localhost") is None
    assert navigate(team, "scoped.localhost", token, "/echo/x").status == 302


# -- logout is not a cross-site request ---------------------------------------------------------

LOGOUT = f"{ENDPOINTS}/logout"
EVIL = "http://evil.localhost:8080/page"


def fresh_session(team: Team) -> dict[str, str]:
    """A new sign-in: its token per host (the app's and the team's)."""
    b = sign_in(team, team.url("app.localhost"))
    tokens = {
        "app.localhost": b.cookie("app.localhost") or "",
        "auth.localhost": b.cookie("auth.localhost") or "",
    }
    assert all(tokens.values())
    return tokens


def alive(team: Team, host: str, token: str) -> bool:
    cookie = [("Cookie", f"CF_Authorization={token}")]
    return team.call("GET", host, f"{ENDPOINTS}/get-identity", cookie).status == 200


def open_logout(team: Team, host: str, token: str, headers: Sequence[tuple[str, str]]) -> Reply:
    """A navigation to `host`'s logout with `token` and `headers` as given."""
    sent = [("Cookie", f"CF_Authorization={token}"), ("Sec-Fetch-Mode", "navigate"), *headers]
    return team.call("GET", host, LOGOUT, sent)


def signed_out_at_once(team: Team, host: str, reply: Reply) -> bool:
    if host == "app.localhost":
        where = (reply.header("location") or "").partition("?")[0]
        done = reply.status == 302 and where == f"{team.team_url}{LOGOUT}"
    else:
        done = reply.status == 200 and "You are signed out." in reply.text
    return done and len(auth_cookies(reply)) == 1 and parse_set_cookie(auth_cookies(reply)[0])[1] == ""


def is_confirmation(reply: Reply) -> bool:
    return (
        reply.status == 200
        and "Sign out?" in reply.text
        and f'action="{LOGOUT}"' in reply.text
        and not auth_cookies(reply)
    )


CROSS_SITE: list[list[tuple[str, str]]] = [
    [("Sec-Fetch-Site", "cross-site")],
    [("Sec-Fetch-Site", "cross-site"), ("Referer", "http://app.localhost/")],  # the browser's word wins
    [("Sec-Fetch-Site", "CROSS-SITE")],
    [("Sec-Fetch-Site", "something-new")],  # an unknown value: not trusted to be ours
    [("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Site", "cross-site")],
    # Browsers without Fetch Metadata: Origin, else Referer, names the site.
    [("Referer", EVIL)],
    [("Referer", "http://app.localhost.evil.example/")],
    [("Referer", "http://localhost/")],
    [("Referer", "not a url")],
    [("Origin", "http://evil.localhost:8080")],
    [("Origin", "null")],
    [("Origin", "http://evil.localhost"), ("Referer", "http://{host}/")],
]

AT_ONCE: list[list[tuple[str, str]]] = [
    [("Sec-Fetch-Site", "same-origin")],
    [("Sec-Fetch-Site", "same-site")],
    [("Sec-Fetch-Site", "none")],  # typed, bookmarked, opened from another application
    [("Sec-Fetch-Site", "none"), ("Referer", EVIL)],
    [],  # no Fetch Metadata and no Referer: a direct navigation
    [("Referer", "http://{host}:8080/some/page")],
    [("Referer", "https://{host}/")],
    [("Origin", "http://{host}:8080")],
]


def _for(host: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v.format(host=host)) for k, v in headers]


@pytest.mark.parametrize("host", ["app.localhost", "auth.localhost"])
@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_site_logout_asks_first(team: Team, host: str, headers: list[tuple[str, str]]) -> None:
    tokens = fresh_session(team)
    reply = open_logout(team, host, tokens[host], _for(host, headers))
    assert is_confirmation(reply), (reply.status, reply.headers, reply.text[:300])
    assert alive(team, "app.localhost", tokens["app.localhost"])
    assert alive(team, "auth.localhost", tokens["auth.localhost"])


@pytest.mark.parametrize("host", ["app.localhost", "auth.localhost"])
@pytest.mark.parametrize("headers", AT_ONCE)
def test_own_site_and_direct_logout_at_once(team: Team, host: str, headers: list[tuple[str, str]]) -> None:
    tokens = fresh_session(team)
    reply = open_logout(team, host, tokens[host], _for(host, headers))
    assert signed_out_at_once(team, host, reply), (reply.status, reply.headers, reply.text[:300])
    assert not alive(team, host, tokens[host])


def test_cross_site_logout_without_a_live_session_just_clears(team: Team) -> None:
    """Nothing to protect: e.g. the team's leg of an app logout (the browser
    calls it cross-site when the team host is another site), whose session the
    app host has just revoked."""
    tokens = fresh_session(team)
    first = open_logout(team, "app.localhost", tokens["app.localhost"], [("Sec-Fetch-Site", "same-origin")])
    assert signed_out_at_once(team, "app.localhost", first)
    second = open_logout(team, "auth.localhost", tokens["auth.localhost"], [("Sec-Fetch-Site", "cross-site")])
    assert signed_out_at_once(team, "auth.localhost", second)
    nobody = team.call("GET", "app.localhost", LOGOUT, [("Sec-Fetch-Site", "cross-site")])
    assert nobody.status == 302 and len(auth_cookies(nobody)) == 1


@pytest.mark.parametrize("host", ["app.localhost", "auth.localhost"])
def test_confirmation_page_is_a_guarded_page(team: Team, host: str) -> None:
    tokens = fresh_session(team)
    reply = open_logout(team, host, tokens[host], [("Sec-Fetch-Site", "cross-site"), ("Origin", EVIL)])
    assert is_confirmation(reply)
    assert not [k for k, _ in reply.headers if k.lower().startswith("access-control-")]
    assert "frame-ancestors 'none'" in (reply.header("content-security-policy") or "")
    assert reply.header("x-frame-options") == "DENY" and reply.header("cache-control") == "no-store"
    [csrf] = [c for c in reply.all("set-cookie") if c.startswith("edge_csrf=")]
    _, value, attrs = parse_set_cookie(csrf)
    assert attrs["samesite"] == "Strict" and attrs["path"] == ENDPOINTS and "httponly" in attrs
    assert reply.form_field("csrf") and reply.form_field("csrf") != value  # a MAC of it, not the value
    # An existing CSRF cookie is kept (a login form in another tab stays valid).
    again = open_logout(
        team, host, tokens[host], [("Sec-Fetch-Site", "cross-site"), ("Cookie", f"edge_csrf={value}")]
    )
    assert is_confirmation(again) and not again.all("set-cookie")
    assert again.form_field("csrf") == reply.form_field("csrf")


def post_logout(team: Team, host: str, token: str, csrf_cookie: str | None, field: str | None) -> Reply:
    cookies = f"CF_Authorization={token}" + ("" if csrf_cookie is None else f"; edge_csrf={csrf_cookie}")
    body = "" if field is None else urlencode({"csrf": field})
    headers = [
        ("Cookie", cookies),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Sec-Fetch-Site", "same-origin"),
        ("Origin", f"http://{host}:{team.port}"),
    ]
    return team.call("POST", host, LOGOUT, headers, body.encode())


@pytest.mark.parametrize("host", ["app.localhost", "auth.localhost"])
def test_confirmed_logout_needs_the_csrf_token(team: Team, host: str) -> None:
    tokens = fresh_session(team)
    page = open_logout(team, host, tokens[host], [("Sec-Fetch-Site", "cross-site")])
    cookie = parse_set_cookie(next(c for c in page.all("set-cookie") if c.startswith("edge_csrf=")))[1]
    field = page.form_field("csrf")
    other = Sealer(b"not this edge's secret" * 2).csrf_token(cookie)
    for csrf_cookie, sent in [
        (None, None),  # no token at all
        (cookie, None),  # the cookie without the field
        (None, field),  # the field without its cookie
        (cookie, ("y" if field[0] == "x" else "x") + field[1:]),  # a wrong field
        (cookie, other),  # a MAC under another key
        ("another-cookie-value", field),  # a field for another cookie
    ]:
        refused = post_logout(team, host, tokens[host], csrf_cookie, sent)
        assert refused.status == 403 and not auth_cookies(refused), (csrf_cookie, sent, refused.status)
        assert "Sign out?" in refused.text
        assert alive(team, host, tokens[host]), (csrf_cookie, sent)
    done = post_logout(team, host, tokens[host], cookie, field)
    assert signed_out_at_once(team, host, done), (done.status, done.text[:300])
    assert not alive(team, host, tokens[host])
    assert not alive(team, "auth.localhost", tokens["auth.localhost"])  # the whole sign-in


# -- get-identity and certs ----------------------------------------------------------------


def test_get_identity(team: Team) -> None:
    b = sign_in(team, team.url("app.localhost"))
    app = b.get(team.url("app.localhost", f"{ENDPOINTS}/get-identity"))
    assert app.status == 200 and app.header("content-type") == "application/json"
    doc = json.loads(app.body)
    token = claims(b.cookie("app.localhost") or "")
    assert doc["email"] == ALICE and doc["type"] == "app" and doc["aud"] == ["app-aud"]
    assert doc["groups"] == ["eng", "staff"] and doc["iss"] == team.team_url
    assert doc["sub"] == token["sub"] and doc["identity_nonce"] == token["identity_nonce"]
    assert (doc["iat"], doc["exp"]) == (token["iat"], token["exp"])

    org = json.loads(b.get(f"{team.team_url}{ENDPOINTS}/get-identity").body)
    assert org["type"] == "org" and org["aud"] == ["auth.localhost"] and org["email"] == ALICE

    # app's token, shown on another app's host: nobody there.
    app_cookie = [("Cookie", f"CF_Authorization={b.cookie('app.localhost')}")]
    assert team.call("GET", "second.localhost", f"{ENDPOINTS}/get-identity", app_cookie).status == 401


@pytest.mark.parametrize("host", ["app.localhost", "auth.localhost"])
def test_get_identity_when_not_signed_in(team: Team, host: str) -> None:
    reply = team.call("GET", host, f"{ENDPOINTS}/get-identity")
    assert reply.status == 401 and reply.header("content-type") == "application/json"
    # The id names the access log line, as the X-Request-Id header does.
    assert json.loads(reply.body) == {"error": "not signed in", "request_id": reply.header("x-request-id")}


def test_certs(team: Team) -> None:
    doc = certs(team, "app.localhost")
    assert doc == certs(team, "auth.localhost")  # the same document on every host
    assert set(doc) == {"keys", "public_cert", "public_certs"}
    [key] = doc["keys"]
    assert key["use"] == "sig" and key["alg"] == "ES256"
    assert doc["public_certs"] == [doc["public_cert"]] and doc["public_cert"]["kid"] == key["kid"]
    # The certificate holds the JWK's public key.
    cert = x509.load_pem_x509_certificate(doc["public_cert"]["cert"].encode())
    jwk_key = jwt.PyJWK.from_dict(key).key
    assert cert.public_key().public_numbers() == jwk_key.public_numbers()  # type: ignore[union-attr]
    # A token the edge issued verifies with it, as an upstream would check it.
    b = sign_in(team, team.url("app.localhost"))
    token = b.cookie("app.localhost") or ""
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]
    decoded = jwt.decode(
        token, jwt.PyJWK.from_dict(key), algorithms=["ES256"], audience="app-aud", issuer=team.team_url
    )
    assert decoded["email"] == ALICE


# -- the login page as a page ----------------------------------------------------------------


def test_login_page_headers(team: Team) -> None:
    link = team.login_link("app.localhost", "app-aud", team.url("app.localhost"))
    path = link.removeprefix(team.team_url)
    # Even asked cross-origin, the page grants no CORS.
    page = team.call("GET", "auth.localhost", path, [("Origin", "https://evil.test")])
    assert page.status == 200
    assert not [k for k, _ in page.headers if k.lower().startswith("access-control-")]
    csp = page.header("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert page.header("x-frame-options") == "DENY"
    assert page.header("cache-control") == "no-store"
    assert page.header("content-type") == "text/html; charset=utf-8"

    for host, target in (("auth.localhost", path), ("app.localhost", f"{ENDPOINTS}/authorized?code=x")):
        preflight = team.call(
            "OPTIONS",
            host,
            target,
            [("Origin", "https://evil.test"), ("Access-Control-Request-Method", "POST")],
        )
        assert preflight.status == 403, host
        assert not [k for k, _ in preflight.headers if k.lower().startswith("access-control-")]


def test_login_page_escapes_what_it_shows(team: Team) -> None:
    b = team.browser()
    page = login_page(b, team.url("app.localhost"))
    assert "Sign in to app" in page.text
    assert "Dev &lt;b class=&quot;x&quot;&gt;users&lt;/b&gt; &amp; co" in page.text
    assert "<b " not in page.text
    # What the user typed comes back in the form, inert.
    typed = '"><script>alert(1)</script>'
    reply = submit(b, page, typed, "wrong")
    assert reply.status == 401
    assert "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in reply.text
    assert "<script" not in reply.text


def test_team_root_page_signs_in(team: Team) -> None:
    """The team host's own page (no app): signed out, "/" (the launcher) sends
    the browser to sign in, whose form posts where the CSRF cookie goes; then
    back to "/"."""
    b = team.browser()
    first = b.get(f"{team.team_url}/", follow=False)
    assert first.status == 302 and first.header("location") == f"{ENDPOINTS}/login"
    page = b.get(f"{team.team_url}/")
    assert page.status == 200 and "<form" in page.text
    assert urlsplit(form_action(page)).path == f"{ENDPOINTS}/login"
    reply = submit(b, page, ALICE)
    assert reply.status == 302 and reply.header("location") == "/"
    assert b.cookie("auth.localhost") is not None
    launcher = b.get(f"{team.team_url}/")
    assert launcher.status == 200 and f"signed in as {ALICE}" in launcher.text


# -- key rotation ---------------------------------------------------------------------------


def test_key_rotation_without_restart(own_team: Callable[..., Team]) -> None:
    team = own_team(overlap=OVERLAP)
    pid = team.edge.proc.pid
    old = sign_in(team, team.url("app.localhost"))
    old_app, old_team = old.cookie("app.localhost") or "", old.cookie("auth.localhost") or ""
    [old_key] = certs(team)["keys"]

    done = subprocess.run(
        [sys.executable, "-m", "edge", "keys", "rotate", "-c", str(team.edge.config_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    # The edge picks the new key up by itself; both are published during the overlap.
    assert wait_for(lambda: len(certs(team)["keys"]) == 2, timeout=TIMEOUT)
    doc = certs(team)
    new_kid = doc["public_cert"]["kid"]
    assert new_kid != old_key["kid"] and [k["kid"] for k in doc["keys"]] == [new_kid, old_key["kid"]]
    assert [c["kid"] for c in doc["public_certs"]] == [new_kid, old_key["kid"]]
    # Within the overlap the old token still works (the edge was just told of
    # the rotation; OVERLAP is several poll intervals).
    assert navigate(team, "app.localhost", old_app).status == 200

    # New sign-ins use the new key, and verify with the published document.
    new = sign_in(team, team.url("app.localhost"), BOB)
    new_app = new.cookie("app.localhost") or ""
    assert jwt.get_unverified_header(new_app)["kid"] == new_kid
    assert verify(team, new_app, "app-aud")["email"] == BOB

    # After the overlap the old key is gone, and every token it signed with it.
    assert wait_for(lambda: navigate(team, "app.localhost", old_app).status == 302, timeout=OVERLAP + TIMEOUT)
    assert [k["kid"] for k in certs(team)["keys"]] == [new_kid]
    ident = team.call(
        "GET", "auth.localhost", f"{ENDPOINTS}/get-identity", [("Cookie", f"CF_Authorization={old_team}")]
    )
    assert ident.status == 401
    assert navigate(team, "app.localhost", new_app).status == 200
    assert team.edge.proc.poll() is None and team.edge.proc.pid == pid  # never restarted


# -- bodies and bad input ------------------------------------------------------------------------


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send `request` as is; what the edge answers, up to the end of its head."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


def test_login_form_over_16_kib_is_413(team: Team) -> None:
    body = b"csrf=x&provider=dev&email=a%40b.c&password=" + b"p" * (17 * 1024)
    head = (
        f"POST {ENDPOINTS}/login HTTP/1.1\r\nHost: auth.localhost:{team.port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    answer = raw_exchange(team.port, head + body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


@pytest.mark.parametrize(
    "content_type", ["application/json", "multipart/form-data; boundary=x", "text/plain", None]
)
def test_login_post_that_is_not_a_form_is_400(team: Team, content_type: str | None) -> None:
    headers: list[tuple[str, str | bytes]] = [] if content_type is None else [("Content-Type", content_type)]
    reply = team.call("POST", "auth.localhost", f"{ENDPOINTS}/login", headers, b'{"email": "a@b.c"}')
    assert reply.status == 400 and "Expected a sign-in form" in reply.text


MANY = "&".join(f"f{i}=1" for i in range(30))  # more fields than any link of ours has

# (method, host, target, headers, body): none of these may crash anything.
BAD_INPUT: list[tuple[str, str, str, list[tuple[str, str | bytes]], bytes]] = [
    ("GET", "app.localhost", f"{ENDPOINTS}/authorized?code=%ff%fe%00", [], b""),
    ("GET", "app.localhost", f"{ENDPOINTS}/authorized?code=a&code=b", [], b""),
    ("GET", "app.localhost", f"{ENDPOINTS}/authorized?{MANY}", [], b""),
    ("POST", "app.localhost", f"{ENDPOINTS}/authorized?code=x", [], b"x"),
    ("GET", "auth.localhost", f"{ENDPOINTS}/login/app.localhost?kid=%ff&redirect_url=%zz", [], b""),
    ("GET", "auth.localhost", f"{ENDPOINTS}/login/%ff%fe?kid=app-aud&redirect_url=x", [], b""),
    ("GET", "auth.localhost", f"{ENDPOINTS}/login/app.localhost?{MANY}", [], b""),
    ("GET", "auth.localhost", f"{ENDPOINTS}/login", [("Cookie", "edge_csrf=" + "x" * 5000)], b""),
    (
        "GET",
        "auth.localhost",
        f"{ENDPOINTS}/login",
        [("Cookie", b"edge_csrf=\xff\xfe; CF_Authorization=\xff")],
        b"",
    ),
    ("GET", "auth.localhost", f"{ENDPOINTS}/login", [("Cookie", "CF_Authorization=%%%")], b""),
    ("GET", "auth.localhost", f"{ENDPOINTS}/callback?code=x&state=y", [], b""),
    ("GET", "auth.localhost", f"{ENDPOINTS}/callback", [("Cookie", "edge_flow=garbage")], b""),
    ("GET", "auth.localhost", f"{ENDPOINTS}/nothing-here", [], b""),
    ("GET", "app.localhost", f"{ENDPOINTS}/get-identity", [("Cookie", "CF_Authorization=a.b.c")], b""),
    ("GET", "app.localhost", f"{ENDPOINTS}/get-identity", [("Authorization", "Bearer \x01")], b""),
    ("GET", "app.localhost", f"{ENDPOINTS}/logout", [("Cookie", "CF_Authorization=a.b.c")], b""),
    ("GET", "app.localhost", f"{ENDPOINTS}/login/%ff?x=%00", [], b""),
    ("HEAD", "auth.localhost", f"{ENDPOINTS}/login", [], b""),
    (
        "POST",
        "auth.localhost",
        f"{ENDPOINTS}/login",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"\xff\xfe=\x00&csrf",
    ),
    (
        "POST",
        "auth.localhost",
        f"{ENDPOINTS}/login",
        [("Content-Type", "application/x-www-form-urlencoded")],
        MANY.encode(),
    ),
    (
        "POST",
        "auth.localhost",
        f"{ENDPOINTS}/login/app.localhost?kid=app-aud&redirect_url=http%3A%2F%2Fapp.localhost%2F",
        [("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", "edge_csrf=abc")],
        b"csrf=abc&provider=nope&email=x&password=" + b"p" * 2000,
    ),
]


def test_bad_input_never_crashes(team: Team) -> None:
    for method, host, target, headers, body in BAD_INPUT:
        reply = team.call(method, host, target, headers, body)
        assert reply.status < 500, (method, host, target, reply.status, reply.text[:200])
    # The worker still serves, sign-ins included.
    assert team.call("GET", "app.localhost", "/cdn-cgi/edge/health").status == 200
    sign_in(team, team.url("app.localhost"))
    assert "internal error" not in team.edge.stderr_text()
    assert "login service error" not in team.edge.stderr_text()
