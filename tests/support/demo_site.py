"""The first command's demo, for tests/runtime/test_demo*.py: `edge serve` on
conf/edge.toml itself with only its ports, key directory and access log
moved (so a test never collides with a developer's running demo), plus a
DevTools tab driver and an HTML heading reader.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from browserless import Browser as Client
from browserless import Reply
from chromium import CALL_TIMEOUT, Browser
from conftest import ROOT, EdgeProcess, free_ports, wait_for

EMAIL = "alice@example.com"
PASSWORD = "demo"
DENIED = "mallory@example.com"


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

    @property
    def team(self) -> str:
        return f"http://auth.localhost:{self.port}"

    def client(self) -> Client:
        """A cookie-keeping client that also reaches the web origin."""
        return Client(self.port, ports={self.web_port: self.web_port})

    def records(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]


def demo_config(tmp: Path, port: int, origin_port: int, web_port: int, metrics_port: int) -> Path:
    """conf/edge.toml with its ports, key directory and access log moved."""
    text = (ROOT / "conf" / "edge.toml").read_text()
    for old, new in (
        ("127.0.0.1:8080", f"127.0.0.1:{port}"),
        ("127.0.0.1:9000", f"127.0.0.1:{origin_port}"),
        ("127.0.0.1:9001", f"127.0.0.1:{web_port}"),
        ("127.0.0.1:9301", f"127.0.0.1:{metrics_port}"),
        ("http://app.localhost:9001", f"http://app.localhost:{web_port}"),
        ('key_dir = "var/keys"', f'key_dir = "{tmp / "keys"}"'),
        ('access_log = "var/access.log"', f'access_log = "{tmp / "access.log"}"'),
    ):
        assert old in text, f"conf/edge.toml no longer has {old!r}"
        text = text.replace(old, new)
    path = tmp / "edge.toml"
    path.write_text(text)
    return path


# The quick start's ports (conf/edge.toml), for screenshots that show them.
QUICK_START_PORTS = (8080, 9000, 9001)


@contextmanager
def running_demo(tmp: Path, ports: tuple[int, int, int] | None = None) -> Iterator[Demo]:
    chosen = free_ports(4)  # the edge, the demo origin, the web origin, metrics
    port, origin_port, web_port = ports or chosen[:3]
    metrics_port = chosen[3]
    edge = EdgeProcess(demo_config(tmp, port, origin_port, web_port, metrics_port))
    try:
        # The demo origin starts beside the edge: wait until it answers.
        assert wait_for(lambda: _listening(web_port) and _listening(origin_port), timeout=10)
        yield Demo(edge, port, web_port, tmp / "access.log")
    finally:
        edge.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def preflight(demo: Demo, sent: list[list[str]]) -> Reply:
    """Send the edge, over a real socket, the preflight a page shows it sent."""
    (method, path), *fields = sent
    assert method == "OPTIONS"
    headers = {k: v for k, v in fields if k != "Host"}
    return demo.client().request("OPTIONS", demo.app + path, headers={**headers, "Sec-Fetch-Mode": "cors"})


def edge_answer(reply: Reply) -> list[list[str]]:
    """A reply's status and CORS fields, as the demo page lists the edge's answer."""
    return [
        [k.lower(), v]
        for k, v in reply.headers
        if k.lower().startswith("access-control-") or k.lower() == "vary"
    ]


# -- headings ----------------------------------------------------------------------------


class _Headings(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.levels: list[int] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.levels.append(int(tag[1]))
        values = dict(attrs)
        if tag == "link" and values.get("rel") == "icon":
            self.icons.append(values.get("href") or "")


def headings(html: str) -> list[int]:
    """The heading levels of a page, in document order."""
    parser = _Headings()
    parser.feed(html)
    return parser.levels


def icons(html: str) -> list[str]:
    """The hrefs of a page's <link rel="icon">."""
    parser = _Headings()
    parser.feed(html)
    return parser.icons


def outline_problems(levels: list[int]) -> list[str]:
    """What is wrong with a heading outline: one h1 first, no level skipped."""
    problems = []
    if not levels or levels[0] != 1:
        problems.append(f"the first heading is not h1: {levels}")
    if levels.count(1) != 1:
        problems.append(f"{levels.count(1)} h1 headings")
    problems += [f"h{b} after h{a}" for a, b in itertools.pairwise(levels) if b > a + 1]
    return problems


# -- a tab ---------------------------------------------------------------------------------


class Page:
    """One tab, driven by Runtime.evaluate."""

    def __init__(self, browser: Browser, width: int = 1100, height: int = 900) -> None:
        assert browser.tools is not None
        self.tools = browser.tools
        target = self.tools.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.tools.call("Network.enable", self.session)
        self.tools.call("Page.enable", self.session)
        self.tools.call(
            "Emulation.setDeviceMetricsOverride",
            self.session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

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

    def sign_in(self, email: str, password: str) -> None:
        """Fill and submit the dev provider's form on the current page."""
        self.until("!!document.querySelector('input[name=email]')", "a sign-in form")
        self.eval(
            f"""(() => {{
            const form = document.querySelector('input[name=email]').form;
            form.email.value = {json.dumps(email)};
            form.password.value = {json.dumps(password)};
            form.submit();
            return true;
        }})()"""
        )

    def screenshot(self, path: Path, until: str = "", scale: float = 1.0) -> bytes:
        """The page as a PNG, down to the bottom of the element `until`
        selects (the whole page when empty), at `scale`."""
        bottom = "document.documentElement.scrollHeight"
        if until:
            bottom = f"document.querySelector({json.dumps(until)}).getBoundingClientRect().bottom + 16"
        height = int(self.eval(f"Math.ceil({bottom} + window.scrollY)"))
        width = int(self.eval("document.documentElement.clientWidth"))
        shot = self.tools.call(
            "Page.captureScreenshot",
            self.session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": scale},
        )
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data
