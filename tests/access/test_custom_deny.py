"""custom_deny_message and custom_deny_url at decision time: a user the
policies refuse gets the page or the redirect on a navigation, and the plain
403 everywhere else (a fetch, an API client)."""

from __future__ import annotations

import msgspec
import pytest
from access_fixtures import AUD, NOW, compiled, cookie, mint, request

from edge.access.actions import Deny, Forward
from edge.access.compile import DENIED_BODY, Compiled
from edge.access.decide import decide

NASTY = '"><script>alert(1)</script>'
POLICIES = """
[[apps.policies]]
name = "block"
action = "deny"
include = [{ emails = ["eve@example.com"] }]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]
"""
APPS = f"""
[[apps]]
name = "polite"
domains = ["polite.example.com"]
upstream = "http://127.0.0.1:9000"
aud = "{AUD}"
custom_deny_message = 'Ask in #access for a seat. {NASTY}'
{POLICIES}
[[apps]]
name = "elsewhere"
domains = ["elsewhere.example.com"]
upstream = "http://127.0.0.1:9000"
aud = "elsewhere-aud"
custom_deny_url = "https://help.example.com/denied"
[apps.cors]
allowed_origins = ["https://web.example.com"]
allowed_methods = ["GET"]
allow_credentials = true
{POLICIES}
[[apps]]
name = "plain"
domains = ["plain.example.com"]
upstream = "http://127.0.0.1:9000"
aud = "plain-aud"
{POLICIES}
"""
NAVIGATE = {"Sec-Fetch-Mode": "navigate"}
FETCH = {"Sec-Fetch-Mode": "cors", "Origin": "https://web.example.com"}


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compiled(tmp_path_factory.mktemp("deny"), APPS)


def eve(aud: str, **headers: str) -> dict[str, str]:
    return {**cookie(mint(aud=[aud], email="eve@example.com")), **headers}


def test_a_refused_navigation_shows_the_message_escaped(c: Compiled) -> None:
    action = decide(c, request(url="https://polite.example.com/x", headers=eve(AUD, **NAVIGATE)), NOW)
    assert isinstance(action, Deny) and action.response.status == 403
    body = action.response.body.decode()
    assert "Ask in #access for a seat. &quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script" not in body
    head = action.response.rest.decode()
    assert "content-type: text/html; charset=utf-8" in head and "x-frame-options: DENY" in head


def test_a_refused_fetch_gets_the_plain_403(c: Compiled) -> None:
    action = decide(c, request(url="https://polite.example.com/x", headers=eve(AUD, **FETCH)), NOW)
    assert isinstance(action, Deny) and action.response.body == DENIED_BODY
    api = decide(
        c, request(url="https://polite.example.com/x", headers=eve(AUD, Accept="application/json")), NOW
    )
    assert isinstance(api, Deny) and api.response.body == DENIED_BODY


def test_a_refused_navigation_is_redirected_to_the_deny_url(c: Compiled) -> None:
    action = decide(
        c, request(url="https://elsewhere.example.com/", headers=eve("elsewhere-aud", **NAVIGATE)), NOW
    )
    assert isinstance(action, Deny) and action.response.status == 302
    assert "location: https://help.example.com/denied\r\n" in action.response.rest.decode()
    fetch = decide(
        c, request(url="https://elsewhere.example.com/", headers=eve("elsewhere-aud", **FETCH)), NOW
    )
    assert isinstance(fetch, Deny) and fetch.response.status == 403
    assert "access-control-allow-origin: https://web.example.com" in fetch.response.rest.decode()


def test_without_custom_deny_a_navigation_gets_the_plain_403(c: Compiled) -> None:
    action = decide(c, request(url="https://plain.example.com/", headers=eve("plain-aud", **NAVIGATE)), NOW)
    assert isinstance(action, Deny) and action.response.body == DENIED_BODY


def test_an_allowed_user_is_not_affected(c: Compiled) -> None:
    ok = decide(
        c, request(url="https://polite.example.com/", headers={**cookie(mint(aud=[AUD])), **NAVIGATE}), NOW
    )
    assert isinstance(ok, Forward)


def test_custom_deny_pages_are_built_once(c: Compiled) -> None:
    """Without a request id (`edge explain`) the prebuilt page is answered."""
    first = decide(c, request(url="https://polite.example.com/a", headers=eve(AUD, **NAVIGATE)), NOW)
    second = decide(c, request(url="https://polite.example.com/b", headers=eve(AUD, **NAVIGATE)), NOW)
    assert first.response is second.response


def test_a_custom_deny_page_names_the_request_id(c: Compiled) -> None:
    """A user's screenshot names the access log line; the page is otherwise the same."""
    req = request(url="https://polite.example.com/a", headers=eve(AUD, **NAVIGATE))
    plain = decide(c, req, NOW)
    named = decide(c, msgspec.structs.replace(req, request_id=b"rid-7"), NOW)
    assert isinstance(named, Deny) and named.response.status == 403
    body = named.response.body.decode()
    assert '<footer class="note">Request id: rid-7</footer>' in body
    assert (
        body.replace('\n<footer class="note">Request id: rid-7</footer>', "") == plain.response.body.decode()
    )
    assert named.response.rest.replace(b"%d" % len(body), b"") == plain.response.rest.replace(
        b"%d" % len(plain.response.body), b""
    )
