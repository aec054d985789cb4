"""The first command's promise: `edge serve` on the default config shows the
whole product and teaches CORS (README quick start, issue 11 "a first
command that teaches CORS").

The edge runs conf/edge.toml itself, with only its ports, key directory and
access log moved (tests/support/demo_site.py): the team host with the dev
provider, the demo origin and the second origin started by `edge serve`, the
demo app with its CORS settings. Everything here is real HTTP over loopback;
tests/runtime/test_demo_browser.py drives the same in headless Chromium.
"""

from __future__ import annotations

import html
import json
import re
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin

import pytest
from browserless import Browser as Client
from browserless import Reply
from conftest import wait_for
from demo_site import (
    DENIED,
    EMAIL,
    PASSWORD,
    Demo,
    edge_answer,
    headings,
    icons,
    outline_problems,
    preflight,
    running_demo,
)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with running_demo(tmp_path) as d:
        yield d


def _calls(page: Reply) -> list[dict[str, Any]]:
    """The calls the cross-origin page makes, with what it shows for each."""
    m = re.search(r'<script type="application/json" id="calls">(.*?)</script>', page.text, re.S)
    assert m is not None, page.text[:500]
    calls: list[dict[str, Any]] = json.loads(m.group(1))
    return calls


def _link(page: Reply, text: str) -> str:
    """The href of the link whose text is `text`, resolved against the page."""
    m = re.search(rf'<a href="([^"]*)">{re.escape(text)}</a>', page.text)
    assert m is not None, f"no link {text!r} on {page.url}: {page.text[:600]}"
    return urljoin(page.url, html.unescape(m.group(1)))


def test_startup_output_says_what_to_open_and_who_to_be(demo: Demo) -> None:
    assert wait_for(lambda: "edge demo:" in demo.edge.stderr_text(), timeout=10)
    text = demo.edge.stderr_text()
    assert f"open {demo.app}" in text
    assert f"open {demo.web}" in text
    assert f'sign in as {EMAIL}, password "{PASSWORD}"' in text
    # The banner comes after the edge's own startup lines, and the access
    # log, in a file, does not bury it.
    assert text.index("listening on") < text.index("edge demo:")
    assert f"access log: {demo.access_log}" in text
    assert f"your apps (the launcher): {demo.team}/" in text
    demo.client().get(demo.app + "/")
    assert wait_for(lambda: demo.records(), timeout=5)
    assert '"method":' not in demo.edge.stderr_text() and not demo.edge.stdout
    # The metrics the banner names are served, and count that request.
    [url] = re.findall(r"metrics: (http://\S+/metrics)", text)
    with urllib.request.urlopen(url, timeout=5) as reply:
        scraped = reply.read().decode()
    counted = r'edge_requests_total\{app="demo",kind="redirect",status="3xx"\} [1-9]'
    assert re.search(counted, scraped), scraped


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


def test_the_cross_origin_page_shows_what_the_edge_really_answers(demo: Demo) -> None:
    page = demo.client().get(demo.web + "/")
    assert page.status == 200
    calls = _calls(page)
    # What each call makes the browser send (Fetch: a non-simple method or
    # header needs a preflight; its headers named lower-case, sorted).
    assert [c["sent"][2:] for c in calls] == [
        [
            ["Origin", demo.web],
            ["Access-Control-Request-Method", "POST"],
            ["Access-Control-Request-Headers", "content-type"],
        ],
        [["Origin", demo.web], ["Access-Control-Request-Method", "DELETE"]],
        [
            ["Origin", demo.web],
            ["Access-Control-Request-Method", "POST"],
            ["Access-Control-Request-Headers", "content-type,x-debug"],
        ],
    ]
    for call in calls:
        real = preflight(demo, call["sent"])
        # What the page shows as the edge's answer is what the edge answers.
        assert (call["status"], call["answer"]) == (real.status, edge_answer(real)), call["title"]
        shown = "\n".join([str(real.status), *(f"{k}: {v}" for k, v in edge_answer(real))])
        assert f'<pre class="answer">{html.escape(shown, quote=False)}</pre>' in page.text
    # The app's CORS settings allow the first call and refuse the other two:
    # the edge answers each preflight (200, the app's lists), and the lists
    # lack DELETE and X-Debug, so the browser refuses those.
    allowed, delete, debug = (dict(preflight(demo, c["sent"]).headers) for c in calls)
    assert allowed["access-control-allow-origin"] == demo.web
    assert "DELETE" not in delete["access-control-allow-methods"]
    assert "x-debug" not in debug["access-control-allow-headers"].lower()
    assert [c["verdict"] for c in calls] == [
        "",
        "DELETE is not in Access-Control-Allow-Methods (GET, POST)",
        "x-debug is not in Access-Control-Allow-Headers (Content-Type)",
    ]
    assert re.findall(r'data-expect="(\w+)"', page.text) == ["allowed", "refused", "refused"]
    # The edge's own explanation of each answer says what its 200 does not allow.
    refused = "preflight: allowed (origin), but {} is not in {}: the browser refuses the call"
    assert [c["decision"] for c in calls] == [
        "preflight: allowed",
        refused.format("method DELETE", "allowed_methods"),
        refused.format("header x-debug", "allowed_headers"),
    ]
    # No preflight reached the API: the edge answered them all.
    assert wait_for(lambda: len([r for r in demo.records() if r["method"] == "OPTIONS"]) >= 6, timeout=5)
    assert all(r["upstream_status"] is None for r in demo.records() if r["method"] == "OPTIONS")


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


def test_the_401_another_origin_reads_names_the_login_page(demo: Demo) -> None:
    """What the page's first call gets before sign-in: a 401 it may read
    (the edge's CORS courtesy headers), whose JSON carries the login link."""
    client = demo.client()
    reply = client.request(
        "POST",
        demo.app + "/api/me",
        b"{}",
        {"Origin": demo.web, "Content-Type": "application/json", "Sec-Fetch-Mode": "cors", "Accept": "*/*"},
    )
    assert reply.status == 401 and reply.header("access-control-allow-origin") == demo.web
    login = json.loads(reply.body)["login_url"]
    form = client.get(login)
    assert form.status == 200 and 'name="password"' in form.text and "<h1>Sign in to demo</h1>" in form.text


def test_the_signed_out_page_leads_to_a_sign_in_form(demo: Demo) -> None:
    client = demo.client()
    client.sign_in(demo.app + "/", EMAIL, PASSWORD)
    out = client.get(demo.app + "/cdn-cgi/access/logout")
    assert out.status == 200 and "You are signed out." in out.text
    form = client.get(_link(out, "Sign in to demo"))
    assert form.status == 200 and "<h1>Sign in to demo</h1>" in form.text and 'name="password"' in form.text
    # ...and that form brings the user back to the app.
    page = client.sign_in(_link(out, "Sign in to demo"), EMAIL, PASSWORD)
    assert page.url.startswith(demo.app) and f'<span id="email">{EMAIL}</span>' in page.text


def test_sign_in_with_another_account_leads_to_a_sign_in_form(demo: Demo) -> None:
    client = demo.client()
    denied = client.sign_in(demo.app + "/", DENIED, PASSWORD)
    assert denied.status == 403 and "does not have access to demo" in denied.text
    # One click: signed out, and straight on to the sign-in form for demo.
    form = client.get(_link(denied, "Sign in with another account"))
    assert form.status == 200 and "<h1>Sign in to demo</h1>" in form.text and 'name="password"' in form.text
    page = client.sign_in(form.url, EMAIL, PASSWORD)
    assert page.url.startswith(demo.app) and f'<span id="email">{EMAIL}</span>' in page.text


def test_pages_have_ordered_headings_and_a_favicon(demo: Demo) -> None:
    client = demo.client()
    login = client.get(demo.app + "/")
    pages = {"login": login, "web": client.get(demo.web + "/")}
    pages["app"] = client.sign_in(demo.app + "/", EMAIL, PASSWORD)
    pages["signed out"] = client.get(demo.app + "/cdn-cgi/access/logout")
    pages["denied"] = demo.client().sign_in(demo.app + "/", DENIED, PASSWORD)
    for name, page in pages.items():
        assert outline_problems(headings(page.text)) == [], name
        [icon] = icons(page.text)
        assert icon.startswith("data:image/svg+xml,"), name
        svg = ET.fromstring(unquote(icon.removeprefix("data:image/svg+xml,")))
        assert svg.tag == "{http://www.w3.org/2000/svg}svg", name
    # The login service's pages forbid loading anything but this inline icon.
    assert "img-src data:" in (login.header("content-security-policy") or "")
