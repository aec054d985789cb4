"""Logout is not a cross-site request, as headless Chromium sees it (BEHAVIOUR.md section 6).

A real `edge serve` with a team (auth.localhost, dev provider) protecting
app.localhost, and a small page server of this module. Chromium resolves every
``*.localhost`` name to loopback, and for ``localhost`` (not on the public
suffix list) it takes one label below it as the site: ``evil.localhost`` is
another site than ``app.localhost`` (``Sec-Fetch-Site: cross-site``), while
``www.app.localhost`` is the same site (``same-site``). So:

- a page on ``evil.localhost`` links to the logout of the app host and of the
  team host: following either shows the confirmation page, the user is still
  signed in, and pressing its button signs out (the whole sign-in);
- a page on ``www.app.localhost`` links to the app's logout: signed out at once.

Signing in is done in the browser too (the team's login form), so the
cookies are the edge's own: host-only, Secure (Chromium keeps Secure cookies
for http://*.localhost), SameSite=Lax. Whether someone is signed in is read
from ``/cdn-cgi/access/get-identity`` in a second tab. Each test has its own
browser (the watchdog of tests/support/chromium.py bounds it); every wait has a deadline.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from chromium import Browser, Tab, chromium_binary
from conftest import EdgeProcess, allow_app_toml, free_port, write_config
from upstream_server import Upstream

from edge.login.passwords import hash_password

EMAIL, PASSWORD = "alice@example.com", "correct horse battery"
ENDPOINTS = "/cdn-cgi/access"


class PageServer(ThreadingHTTPServer):
    """Serves one page of links: GET /?<url>,<url>... has links l0, l1, ..."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Links)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _Links(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        urls = self.path.partition("?")[2].split(",") if "?" in self.path else []
        links = "".join(f'<p><a id="l{i}" href="{url}">link {i}</a></p>' for i, url in enumerate(urls))
        body = f"<!doctype html><title>links</title>{links}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class World:
    edge: EdgeProcess
    port: int
    pages: PageServer

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"

    def page(self, host: str, *links: str) -> str:
        """A page on `host` (served by the page server) linking to `links`."""
        return f"http://{host}:{self.pages.port}/?{','.join(links)}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    chromium_binary()  # skips (or fails on CI) without a browser
    tmp = tmp_path_factory.mktemp("logout")
    upstream = Upstream().start()
    pages = PageServer()
    edge: EdgeProcess | None = None
    try:
        port = free_port()
        team = (
            f'[team]\nhost = "auth.localhost"\nurl = "http://auth.localhost:{port}"\n'
            f'key_dir = "{tmp / "keys"}"\n[[team.providers]]\ntype = "dev"\n'
            f'users = [{{ email = "{EMAIL}", password = "{hash_password(PASSWORD, log2_n=10)}" }}]\n'
        )
        config = team + allow_app_toml("app", "app.localhost", upstream.url)
        edge = EdgeProcess(write_config(tmp, f'listen = ["127.0.0.1:{port}"]', config))
        yield World(edge, port, pages)
    finally:
        if edge is not None:
            edge.stop()
        pages.stop()
        upstream.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium_binary(), tmp_path / "profile")
    try:
        yield opened
    finally:
        opened.close()


def sign_in(world: World, tab: Tab) -> None:
    app = world.url("app.localhost", "/status/200")  # text/plain: shown, not downloaded
    tab.go(app)
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/login"), "Password")
    tab.evaluate(
        f"document.querySelector('input[name=email]').value = {json.dumps(EMAIL)};"
        f"document.querySelector('input[name=password]').value = {json.dumps(PASSWORD)};"
        "document.querySelector('form').submit()"
    )
    tab.wait(app)


def identity(world: World, checker: Tab, host: str) -> str | None:
    """Who `host` says is signed in in this browser (read in another tab)."""
    checker.go(world.url(host, f"{ENDPOINTS}/get-identity"))
    text = checker.wait(world.url(host, f"{ENDPOINTS}/get-identity"), "{")
    doc = json.loads(text)
    email = doc.get("email")
    return str(email) if email else None


def signed_in_everywhere(world: World, checker: Tab) -> bool:
    return all(identity(world, checker, host) == EMAIL for host in ("app.localhost", "auth.localhost"))


def signed_out_everywhere(world: World, checker: Tab) -> bool:
    return all(identity(world, checker, host) is None for host in ("app.localhost", "auth.localhost"))


@pytest.mark.parametrize("host", ["app.localhost", "auth.localhost"])
def test_another_sites_link_to_logout_asks_first(world: World, browser: Browser, host: str) -> None:
    tab, checker = browser.tab(), browser.tab()
    sign_in(world, tab)
    assert signed_in_everywhere(world, checker)

    logout = world.url(host, f"{ENDPOINTS}/logout")
    tab.go(world.page("evil.localhost", logout))
    tab.wait(world.page("evil.localhost", logout), "link 0")
    tab.click("#l0")
    text = tab.wait(logout, "Sign out?")
    assert f"You are signed in as {EMAIL}" in text
    assert signed_in_everywhere(world, checker)  # nothing happened yet

    tab.click("form button")
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/logout"), "You are signed out.")
    assert signed_out_everywhere(world, checker)


def test_a_same_site_link_to_logout_signs_out_at_once(world: World, browser: Browser) -> None:
    tab, checker = browser.tab(), browser.tab()
    sign_in(world, tab)
    assert signed_in_everywhere(world, checker)

    logout = world.url("app.localhost", f"{ENDPOINTS}/logout")
    tab.go(world.page("www.app.localhost", logout))
    tab.wait(world.page("www.app.localhost", logout), "link 0")
    tab.click("#l0")
    # The app host signs out and sends the browser on to the team's logout,
    # which the browser calls cross-site: that session is revoked already.
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/logout"), "You are signed out.")
    assert signed_out_everywhere(world, checker)


def test_the_team_pages_own_sign_out_link_signs_out_at_once(world: World, browser: Browser) -> None:
    tab, checker = browser.tab(), browser.tab()
    sign_in(world, tab)
    tab.go(world.url("auth.localhost", "/"))
    tab.wait(world.url("auth.localhost", "/"), f"You are signed in as {EMAIL}")
    tab.click("a[href$='/logout']")
    tab.wait(world.url("auth.localhost", f"{ENDPOINTS}/logout"), "You are signed out.")
    assert signed_out_everywhere(world, checker)
