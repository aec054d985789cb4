"""The demo in Debian's headless Chromium: the whole product (navigation,
redirect to the team host, dev sign-in, the app page, the cross-origin page
whose fetch() calls run on load, logout), as a new user sees it.

The cross-origin page is checked by its DOM: each call's outcome is what the
browser really did (fetch() resolved or threw), the edge's answer it shows
equals a real preflight sent to the edge with the headers it shows, and the
browser's own preflights (seen over DevTools) carried those headers.

Screenshots: every run writes them to the test's tmp directory (nothing is
compared pixel-wise); with EDGE_WRITE_SCREENSHOTS=1 they also replace the
README's copies in docs/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import Browser, chromium_binary
from conftest import ROOT, wait_for
from demo_site import EMAIL, PASSWORD, QUICK_START_PORTS, Demo, Page, edge_answer, preflight, running_demo

DOCS = ROOT / "docs"
MAX_SCREENSHOT = 150 * 1024  # bytes: the README's images stay small in the repository


WRITE = os.environ.get("EDGE_WRITE_SCREENSHOTS") == "1"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    # The committed screenshots show the quick start's own URLs (those
    # ports must be free then); otherwise any free ports will do.
    with running_demo(tmp_path, QUICK_START_PORTS if WRITE else None) as d:
        yield d


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium_binary(), tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def _keep(page: Page, tmp: Path, name: str, until: str = "", scale: float = 1.0) -> None:
    """A screenshot in tmp; the committed copy too when asked for."""
    data = page.screenshot(tmp / name, until, scale)
    assert data.startswith(b"\x89PNG") and len(data) < MAX_SCREENSHOT, (name, len(data))
    if WRITE:
        DOCS.mkdir(exist_ok=True)
        (DOCS / name).write_bytes(data)


def _sign_in(page: Page, demo: Demo, email: str) -> None:
    page.go(demo.app + "/")
    page.until(
        f"location.href.startsWith({json.dumps(demo.team + '/cdn-cgi/access/login/app.localhost')})"
        " && document.readyState == 'complete'",
        "redirected to the team's login page",
    )
    page.sign_in(email, PASSWORD)


CALLS_SHOWN = """Array.from(document.querySelectorAll('section.call')).map(s => ({
  expect: s.dataset.expect, outcome: s.dataset.outcome, status: s.dataset.status,
  sent: s.querySelector('pre.sent').textContent, answer: s.querySelector('pre.answer').textContent,
  verdict: s.querySelector('.verdict').textContent, result: s.querySelector('.result').innerText,
  login: s.querySelector('.result a.login')?.href ?? null,
  overflow: Array.from(s.querySelectorAll('pre')).some(p => p.scrollWidth > p.clientWidth + 1),
}))"""


def _open_cross_origin_page(page: Page, demo: Demo) -> list[dict[str, Any]]:
    page.go(demo.web + "/")
    page.until("document.body?.dataset.done == 'true'", "the calls ran on load")
    calls: list[dict[str, Any]] = page.eval(CALLS_SHOWN)
    assert len(calls) == 3
    return calls


def _check_answers_are_the_edges(demo: Demo, calls: list[dict[str, Any]]) -> None:
    """The answer each call shows is what the edge answers to the preflight
    the call shows (sent again here, over a real socket)."""
    for call in calls:
        (request_line, *lines) = call["sent"].split("\n")
        method, path = request_line.split(" ")
        sent = [[method, path], *(line.split(": ", 1) for line in lines)]
        real = preflight(demo, sent)
        shown = "\n".join([str(real.status), *(f"{k}: {v}" for k, v in edge_answer(real))])
        assert call["answer"] == shown, call


def _browser_preflights(page: Page) -> list[dict[str, str]]:
    """The CORS request headers of the preflights Chromium really sent."""
    assert page.tools is not None
    ids = {
        e["params"]["requestId"]
        for e in page.tools.events
        if e.get("method") == "Network.requestWillBeSent" and e["params"]["request"]["method"] == "OPTIONS"
    }
    seen = []
    for e in page.tools.events:
        if e.get("method") == "Network.requestWillBeSentExtraInfo" and e["params"]["requestId"] in ids:
            headers = {k.lower(): v for k, v in e["params"]["headers"].items()}
            seen.append(
                {k: v for k, v in headers.items() if k == "origin" or k.startswith("access-control-")}
            )
    return seen


def test_the_cross_origin_page_before_and_after_sign_in(demo: Demo, browser: Browser, tmp_path: Path) -> None:
    page = Page(browser, width=1100)
    # Signed out: the allowed call gets the edge's 401, readable by the page
    # (wrapped, not one overflowing line), with the login link it carries.
    calls = _open_cross_origin_page(page, demo)
    assert [c["expect"] for c in calls] == ["allowed", "refused", "refused"]
    assert [c["outcome"] for c in calls] == ["status", "refused", "refused"]
    first = calls[0]
    assert first["status"] == "401" and "login required" in first["result"]
    assert first["login"] and first["login"].startswith(
        demo.team + "/cdn-cgi/access/login/app.localhost?kid="
    )
    assert not any(c["overflow"] for c in calls), [c["answer"] for c in calls]
    _check_answers_are_the_edges(demo, calls)
    # The link leads to the sign-in form; signed in, the page's calls run again.
    page.go(first["login"])
    page.sign_in(EMAIL, PASSWORD)
    page.until(
        f"location.href.startsWith({json.dumps(demo.app + '/api/me')})", "back on the API after sign-in"
    )

    calls = _open_cross_origin_page(page, demo)
    assert [c["outcome"] for c in calls] == ["ok", "refused", "refused"]
    assert calls[0]["status"] == "200" and f'"email": "{EMAIL}"' in calls[0]["result"]
    # The refused ones: the edge's answer, and the browser's refusal, side by side.
    assert (
        "The browser refuses: DELETE is not in Access-Control-Allow-Methods (GET, POST)"
        in calls[1]["verdict"]
    )
    assert "access-control-allow-methods: GET, POST" in calls[1]["answer"]
    assert "x-debug is not in Access-Control-Allow-Headers (Content-Type)" in calls[2]["verdict"]
    assert "Refused by the browser" in calls[1]["result"] and "Refused by the browser" in calls[2]["result"]
    assert "The browser goes on" in calls[0]["verdict"]
    _check_answers_are_the_edges(demo, calls)
    # What the page says the browser sent is what Chromium sent (each
    # preflight at least once: a cached preflight is not sent again).
    really = _browser_preflights(page)
    for call in calls:
        claimed = {k.lower(): v for k, v in (line.split(": ", 1) for line in call["sent"].split("\n")[2:])}
        assert claimed in really, (claimed, really)
    # The API saw no preflight: the edge answered them.
    assert wait_for(lambda: any(r["method"] == "OPTIONS" for r in demo.records()), timeout=5)
    assert all(r["upstream_status"] is None for r in demo.records() if r["method"] == "OPTIONS")
    # The allowed call and a refused one, side by side (all three would not
    # stay under MAX_SCREENSHOT).
    _keep(page, tmp_path, "demo-cross-origin.png", until="#call-1", scale=0.75)


def test_the_whole_product_in_a_browser(demo: Demo, browser: Browser, tmp_path: Path) -> None:
    page = Page(browser, width=800, height=600)
    page.go(demo.app + "/")
    page.until("!!document.querySelector('input[name=email]')", "the sign-in form")
    _keep(page, tmp_path, "demo-sign-in.png")
    page.sign_in(EMAIL, PASSWORD)
    shown = page.until(
        f"location.origin == {json.dumps(demo.app)} && document.getElementById('email')?.textContent",
        "back on the app, showing the email",
    )
    assert shown == EMAIL
    assert browser.tools is not None
    cookies = browser.tools.call("Network.getCookies", page.session, urls=[demo.app + "/"])["cookies"]
    auth = [c for c in cookies if c["name"] == "CF_Authorization"]
    assert len(auth) == 1 and auth[0]["domain"] == "app.localhost"
    assert (auth[0]["httpOnly"], auth[0]["secure"], auth[0]["sameSite"]) == (True, True, "Lax")

    page.go(demo.app + "/cdn-cgi/access/logout")
    page.until("document.body?.innerText.includes('You are signed out')", "the signed-out page")
    # The signed-out page leads to the sign-in form, and back to the app.
    page.eval("document.querySelector('main a').click(), true")
    page.until(
        f"location.href.startsWith({json.dumps(demo.team + '/cdn-cgi/access/login/')})"
        " && !!document.querySelector('input[name=email]')",
        "sent to the login page again",
    )


def test_headings_get_smaller_down_the_outline(demo: Demo, browser: Browser) -> None:
    """The page title is the largest text: h1 > h2 > h3 as rendered."""
    page = Page(browser)
    sizes = """['h1','h2','h3'].map(t => document.querySelector(t))
        .filter(e => e).map(e => parseFloat(getComputedStyle(e).fontSize))"""
    for url, levels in ((demo.app + "/", 2), (demo.web + "/", 3)):  # the sign-in form; the cross-origin page
        page.go(url)
        page.until("document.readyState == 'complete' && !!document.querySelector('h2')", url)
        found = page.eval(sizes)
        assert len(found) == levels and found == sorted(found, reverse=True), (url, found)
        assert len(set(found)) == len(found), (url, found)
