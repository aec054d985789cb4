"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol.

Shared by the browser tests. The browser is started with
``--remote-debugging-port=0`` and a fresh ``--user-data-dir``; the test talks
the Chrome DevTools Protocol to it over a WebSocket (``websockets``' sync
client). Every call has a deadline, a watchdog kills the whole browser process
group after BROWSER_LIMIT seconds whatever happens, and `close` kills it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import wait_for
from required_tools import missing
from websockets.sync.client import ClientConnection, connect

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
BROWSER_LIMIT = 60.0  # seconds the browser may live, whatever happens
CALL_TIMEOUT = 15.0  # seconds for one DevTools call (a page's fetch aborts sooner)

# -- a minimal DevTools client ------------------------------------------------------------


class DevTools:
    """Commands over the browser's WebSocket; events are kept in `events`."""

    def __init__(self, ws_url: str) -> None:
        # Entered as a context manager: websockets >= 17.1 warns otherwise.
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(ws_url, max_size=16 * 1024 * 1024, open_timeout=10)
        )
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"DevTools call {method} got no answer in {CALL_TIMEOUT} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise AssertionError(f"DevTools {method} failed: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def close(self) -> None:
        self._stack.close()


@dataclass
class Tab:
    """One page of the browser, driven by Runtime.evaluate (`Browser.tab`)."""

    tools: DevTools
    session: str

    def evaluate(self, expression: str) -> Any:
        reply = self.tools.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        return reply["result"].get("value")

    def go(self, url: str) -> None:
        self.tools.call("Page.navigate", self.session, url=url)

    def wait(self, prefix: str, text: str = "") -> str:
        """Wait until the page at a URL starting with `prefix` has loaded (and
        shows `text`); returns its text."""
        deadline = time.monotonic() + CALL_TIMEOUT
        state: Any = None
        while time.monotonic() < deadline:
            try:
                state = self.evaluate(
                    "[location.href, document.readyState, document.body ? document.body.innerText : '']"
                )
            except AssertionError as exc:  # the page went away under the call: ask the next one
                if "navigated or closed" not in str(exc):
                    raise
            if state and state[0].startswith(prefix) and state[1] == "complete" and text in state[2]:
                return str(state[2])
            time.sleep(0.05)
        raise AssertionError(f"no page at {prefix} showing {text!r}: {state!r}")

    def click(self, element: str) -> None:
        assert self.evaluate(f"!!document.querySelector({json.dumps(element)})"), element
        self.evaluate(f"document.querySelector({json.dumps(element)}).click()")

    def shown(self) -> list[str]:
        """The URLs of the pages this tab has shown so far, in order: its main
        frame's committed navigations (Page.frameNavigated). A redirect
        commits nothing, so a hop answered with a 3xx is not among them, while
        a page the user saw on the way (a chooser, a form) is. Events reach
        `tools.events` during calls: read this after a `wait`."""
        return [
            str(event["params"]["frame"]["url"])
            for event in self.tools.events
            if event.get("sessionId") == self.session
            and event["method"] == "Page.frameNavigated"
            and "parentId" not in event["params"]["frame"]
        ]


class Browser:
    def __init__(self, binary: str, profile: Path) -> None:
        profile.mkdir()
        self.log = (profile.parent / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one
        )
        self.watchdog = threading.Timer(BROWSER_LIMIT, self.kill)
        self.watchdog.daemon = True
        self.watchdog.start()
        self.tools: DevTools | None = None
        try:
            active = profile / "DevToolsActivePort"
            if not wait_for(lambda: len(_lines(active)) >= 2 or self.proc.poll() is not None, timeout=30):
                raise AssertionError("chromium wrote no DevToolsActivePort in 30 s")
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}")
            port, path = _lines(active)[:2]
            self.tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        except BaseException:
            self.kill()
            raise

    def tab(self) -> Tab:
        """A new page (about:blank) with its own DevTools session."""
        assert self.tools is not None
        target = self.tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.tools.call("Page.enable", session)
        return Tab(self.tools, session)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def close(self) -> None:
        self.watchdog.cancel()
        if self.tools is not None:
            with contextlib.suppress(Exception):
                self.tools.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            # Helpers (zygote, renderers) may outlive a crashed browser.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("chromium is not installed (bin/test installs Debian's chromium package)")
    return found
