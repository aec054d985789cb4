"""The first command's promise: `edge serve` on the default config shows the
whole product (README quick start, issue "a first command that shows the
whole product").

The edge runs conf/edge.toml itself, with only its ports and key directory
moved (so the test never collides with a developer's running demo): the
team host with the dev provider, the demo origin and the second origin
started by `edge serve`, the demo app with its CORS settings.

The browser test drives Debian's headless Chromium through the whole flow:
navigation, redirect to the team host, dev sign-in, the cookie set on the
app host, the app page showing the email, the cross-origin fetch() from the
second origin (preflight answered at the edge), logout, and the next visit
sent to the login page again.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browserless import Browser as Client
from chromium import CALL_TIMEOUT, Browser, chromium_binary
from conftest import ROOT, EdgeProcess, free_ports, wait_for

EMAIL = "alice@example.com"
PASSWORD = "demo"


@dataclass
class Demo:
    edge: EdgeProcess
    port: int
    web_port: int
    access_log: Path

    @property
    def app(self) -> str:
        return f"http://app.localhost:{self.port}"

    @property
    def web(self) -> str:
        return f"http://app.localhost:{self.web_port}"

    def records(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]


def demo_config(tmp: Path, port: int, origin_port: int, web_port: int) -> Path:
    """conf/edge.toml with its ports, key directory and access log moved."""
    text = (ROOT / "conf" / "edge.toml").read_text()
    for old, new in (
        ("127.0.0.1:8080", f"127.0.0.1:{port}"),
        ("127.0.0.1:9000", f"127.0.0.1:{origin_port}"),
        ("127.0.0.1:9001", f"127.0.0.1:{web_port}"),
        ("http://app.localhost:9001", f"http://app.localhost:{web_port}"),
        ('key_dir = "var/keys"', f'key_dir = "{tmp / "keys"}"'),
        ('access_log = "stdout"', f'access_log = "{tmp / "access.log"}"'),
    ):
        assert old in text, f"conf/edge.toml no longer has {old!r}"
        text = text.replace(old, new)
    path = tmp / "edge.toml"
    path.write_text(text)
    return path


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    port, origin_port, web_port = free_ports(3)
    edge = EdgeProcess(demo_config(tmp_path, port, origin_port, web_port))
    try:
        # The demo origin starts beside the edge: wait until it answers.
        assert wait_for(lambda: _listening(web_port) and _listening(origin_port), timeout=10)
        yield Demo(edge, port, web_port, tmp_path / "access.log")
    finally:
        edge.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_startup_output_says_what_to_open_and_who_to_be(demo: Demo) -> None:
    text = demo.edge.stderr_text()
    assert f"open {demo.app}" in text
    assert f"open {demo.web}" in text
    assert f'sign in as {EMAIL}, password "{PASSWORD}"' in text


def test_demo_flow_without_a_browser(demo: Demo) -> None:
    client = Client(demo.port)
    page = client.sign_in(demo.app + "/", EMAIL, PASSWORD)
    assert page.status == 200 and f'<span id="email">{EMAIL}</span>' in page.text
    # The second origin's call: the preflight is the edge's, the POST the API's.
    headers = {
        "Origin": demo.web,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
        "Sec-Fetch-Mode": "cors",
    }
    pre = client.request("OPTIONS", demo.app + "/api/me", headers=headers)
    assert pre.status == 200 and pre.header("access-control-allow-origin") == demo.web
    assert pre.header("access-control-allow-credentials") == "true"
    api = client.request(
        "POST", demo.app + "/api/me", b"{}", {"Origin": demo.web, "Content-Type": "application/json"}
    )
    assert api.status == 200 and json.loads(api.body)["email"] == EMAIL
    assert wait_for(lambda: any(r["method"] == "OPTIONS" for r in demo.records()), timeout=5)
    options = [r for r in demo.records() if r["method"] == "OPTIONS"]
    assert options[0]["decision"].startswith("preflight") and options[0]["upstream_status"] is None


def test_mallory_is_told_she_has_no_access(demo: Demo) -> None:
    page = Client(demo.port).sign_in(demo.app + "/", "mallory@example.com", PASSWORD)
    assert page.status == 403
    assert "does not have access to demo" in page.text
    assert (
        "The demo app is for staff; mallory is kept out on purpose." in page.text
    )  # its custom_deny_message


@pytest.mark.parametrize(("email", "apps"), [(EMAIL, ["demo", "docs"]), ("mallory@example.com", ["docs"])])
def test_the_demo_launcher_lists_the_apps_each_user_may_open(demo: Demo, email: str, apps: list[str]) -> None:
    client = Client(demo.port)
    launcher = client.sign_in(f"http://auth.localhost:{demo.port}/", email, PASSWORD)
    assert launcher.status == 200 and f"You are signed in as {email}" in launcher.text
    assert re.findall(r'<li class="app"><a href="[^"]*">([^<]*)</a>', launcher.text) == apps


# -- the whole product in a real browser --------------------------------------------------


class Page:
    """One tab, driven by Runtime.evaluate."""

    def __init__(self, browser: Browser) -> None:
        assert browser.tools is not None
        self.tools = browser.tools
        target = self.tools.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.tools.call("Network.enable", self.session)
        self.tools.call("Page.enable", self.session)

    def go(self, url: str) -> None:
        self.tools.call("Page.navigate", self.session, url=url)

    def eval(self, expression: str, wait: bool = False) -> Any:
        reply = self.tools.call(
            "Runtime.evaluate", self.session, expression=expression, awaitPromise=wait, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"the page threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def until(self, expression: str, what: str) -> Any:
        """Poll `expression` until it is truthy (the page may be navigating)."""
        deadline = time.monotonic() + CALL_TIMEOUT
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except AssertionError:
                value = None  # between documents
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{what}: still {value!r}; at {self.eval('location.href')}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium_binary(), tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def test_the_whole_product_in_a_browser(demo: Demo, browser: Browser) -> None:
    page = Page(browser)
    team = f"http://auth.localhost:{demo.port}"
    page.go(demo.app + "/")
    page.until(
        f"location.href.startsWith({json.dumps(team + '/cdn-cgi/access/login/app.localhost')})"
        " && document.readyState == 'complete' && !!document.querySelector('input[name=email]')",
        "redirected to the team's login page",
    )
    page.eval(
        f"""(() => {{
        const form = document.querySelector('input[name=email]').form;
        form.email.value = {json.dumps(EMAIL)};
        form.password.value = {json.dumps(PASSWORD)};
        form.submit();
        return true;
    }})()"""
    )
    shown = page.until(
        f"location.origin == {json.dumps(demo.app)} && document.getElementById('email')?.textContent",
        "back on the app, showing the email",
    )
    assert shown == EMAIL
    cookies = browser.tools.call("Network.getCookies", page.session, urls=[demo.app + "/"])["cookies"]  # type: ignore[union-attr]
    auth = [c for c in cookies if c["name"] == "CF_Authorization"]
    assert len(auth) == 1 and auth[0]["domain"] == "app.localhost"
    assert (auth[0]["httpOnly"], auth[0]["secure"], auth[0]["sameSite"]) == (True, True, "Lax")

    page.go(demo.web + "/")
    page.until("typeof callApi == 'function' && document.readyState == 'complete'", "the second origin")
    result = page.eval("callApi()", wait=True)
    assert result["status"] == 200, result
    assert json.loads(result["body"].partition("\n")[2])["email"] == EMAIL
    # The preflight was answered by the edge; the API only saw the POST.
    assert wait_for(lambda: any(r["method"] == "OPTIONS" for r in demo.records()), timeout=5)
    pre = [r for r in demo.records() if r["method"] == "OPTIONS" and r["path"] == "/api/me"]
    assert pre and pre[-1]["status"] == 200 and pre[-1]["upstream_status"] is None

    page.go(demo.app + "/cdn-cgi/access/logout")
    page.until("document.body?.innerText.includes('You are signed out')", "the signed-out page")
    page.go(demo.app + "/")
    page.until(
        f"location.href.startsWith({json.dumps(team + '/cdn-cgi/access/login/')})"
        " && !!document.querySelector('input[name=email]')",
        "sent to the login page again",
    )
