"""edge.access.decide: the whole per-request decision (BEHAVIOUR.md sections 1-4),
table-driven, pure: a fixed clock, no event loop, no sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from access_fixtures import (
    AUD,
    EC_KEY,
    ISS,
    NOW,
    OTHER_EC_KEY,
    compiled,
    config_text,
    cookie,
    default_jwks,
    jwks,
    mint,
    public_jwk,
    request,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.access.actions import Deny, Endpoint, Forward, NotFound, Preflight, Redirect, Reject, Unauthorized
from edge.access.compile import PREFLIGHT_CACHE_SIZE, Compiled, compile_config
from edge.access.decide import decide, explain, is_navigation, login_url, prefers_html
from edge.access.headers import STRIP_HEADERS
from edge.access.request import build
from edge.access.responses import LocalResponse
from edge.config.errors import ConfigError
from edge.config.load import loads

APPS = """
[[apps]]
name = "api"
domains = ["api.example.com"]
upstream = "http://127.0.0.1:9000"
aud = "api-aud"
[apps.cors]
allowed_origins = ["https://web.example.com"]
allowed_methods = ["GET", "POST"]
allowed_headers = ["Content-Type"]
allow_credentials = true
max_age = 600
expose_headers = ["X-Request-Id"]
[[apps.policies]]
name = "block"
action = "deny"
include = [{ emails = ["eve@example.com"] }]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]
exclude = [{ ip_ranges = ["198.51.100.0/24"] }]

[[apps]]
name = "public"
domains = ["api.example.com/public"]
upstream = "http://127.0.0.1:9000"
options_preflight_bypass = true
[[apps.policies]]
name = "anyone"
action = "bypass"
include = [{ everyone = true }]

[[apps]]
name = "internal"
domains = ["api.example.com/internal"]
upstream = "http://127.0.0.1:9001"
[[apps.policies]]
name = "ci"
action = "service_auth"
include = [{ service_tokens = ["ci"] }]
require = [{ ip_ranges = ["192.0.2.0/24"] }]

[[apps]]
name = "plain"
domains = ["plain.example.com"]
upstream = "https://plain.internal:8443/base"
aud = "plain-aud"
keep_auth_cookie = true
rewrite_host = true
unauthenticated = "redirect"
[[apps.policies]]
name = "all"
action = "allow"
include = [{ everyone = true }]

[[apps]]
name = "docs"
domains = ["docs.example.com"]
upstream = "http://127.0.0.1:9002"
[[apps.policies]]
name = "office"
action = "bypass"
include = [{ ip_ranges = ["203.0.113.0/24"] }]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]

[[apps]]
name = "tenants"
domains = ["*.tenants.example.com"]
upstream = "http://127.0.0.1:9003"
aud = "tenants-aud"
[apps.cors]
allow_all_origins = true
allow_all_methods = true
allow_all_headers = true
[[apps.policies]]
name = "all"
action = "allow"
include = [{ everyone = true }]

[[apps]]
name = "only-service"
domains = ["svc.example.com"]
upstream = "http://127.0.0.1:9004"
[[apps.policies]]
name = "any-token"
action = "service_auth"
include = [{ any_service_token = true }]
"""

WEB = "https://web.example.com"
PREFLIGHT = {"Origin": WEB, "Access-Control-Request-Method": "POST"}
VARY_PREFLIGHT = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compiled(tmp_path_factory.mktemp("decide"), APPS)


def fields(response: LocalResponse) -> dict[str, str]:
    """The header fields of a response rendered without a request id (so
    with its Content-Length whether or not its body is tagged)."""
    lines = response.render(b"", False, True).decode().split("\r\n")[1:]
    return dict(tuple(line.split(": ", 1)) for line in lines if line)  # type: ignore[misc]


def acao_headers(response: LocalResponse) -> dict[str, str]:
    return {k: v for k, v in fields(response).items() if k.startswith("access-control-")}


def run(c: Compiled, *args: Any, **kwargs: Any) -> Any:
    return decide(c, request(*args, **kwargs), NOW)


# -- BEHAVIOUR.md section 4: the preflight table ----------------------------------------


def test_preflight_without_cors_settings_is_refused_never_forwarded(c: Compiled) -> None:
    action = run(c, "OPTIONS", "https://plain.example.com/x", PREFLIGHT)
    assert isinstance(action, Preflight)
    assert action.response.status == 403
    assert acao_headers(action.response) == {}
    assert (action.app, action.reason) == ("plain", "preflight: no CORS settings")


def test_preflight_with_cors_settings_is_answered_at_the_edge(c: Compiled) -> None:
    action = run(c, "OPTIONS", "https://api.example.com/v1/things", PREFLIGHT)
    assert isinstance(action, Preflight)
    assert action.response.status == 200
    assert fields(action.response) == {
        "access-control-allow-origin": WEB,
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": "Content-Type",
        "access-control-max-age": "600",
        "vary": VARY_PREFLIGHT,
        "server": "edge",
        "content-length": "0",
    }


def test_preflight_from_a_foreign_origin_gets_403_without_cors_headers(c: Compiled) -> None:
    action = run(c, "OPTIONS", "https://api.example.com/", {**PREFLIGHT, "Origin": "https://evil.example"})
    assert isinstance(action, Preflight) and action.response.status == 403
    assert acao_headers(action.response) == {}
    assert fields(action.response)["vary"] == VARY_PREFLIGHT


def test_preflight_bypass_forwards_unauthenticated(c: Compiled) -> None:
    action = run(c, "OPTIONS", "https://api.example.com/public/x", PREFLIGHT)
    assert isinstance(action, Forward)
    assert action.app == "public" and action.add_headers == () and action.identity is None
    assert action.strip_headers == STRIP_HEADERS
    assert action.reason == "preflight: forwarded (options_preflight_bypass)"
    # options_preflight_bypass is an app setting, not a bypass policy: the
    # metrics count it as a forward.
    assert not action.bypass


@pytest.mark.parametrize(("ip", "forwarded"), [("203.0.113.7", True), ("192.0.2.1", False)])
def test_preflight_on_a_bypassed_path_is_the_upstreams(c: Compiled, ip: str, forwarded: bool) -> None:
    action = run(c, "OPTIONS", "https://docs.example.com/", PREFLIGHT, client_ip=ip)
    assert isinstance(action, Forward) is forwarded
    if isinstance(action, Forward):
        assert action.bypass and action.reason == 'bypass: policy "office" (preflight)'
    if not forwarded:
        assert isinstance(action, Preflight) and action.response.status == 403


def test_options_without_request_method_is_an_ordinary_request(c: Compiled) -> None:
    action = run(c, "OPTIONS", "https://api.example.com/", {"Origin": WEB})
    assert isinstance(action, Unauthorized)


def test_allow_all_settings_echo_the_request(c: Compiled) -> None:
    headers = {
        "Origin": "https://anything.example",
        "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "authorization, x-a",
    }
    action = run(c, "OPTIONS", "https://t1.tenants.example.com/", headers)
    assert isinstance(action, Preflight)
    assert acao_headers(action.response) == {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": "PATCH",
        "access-control-allow-headers": "authorization, x-a",
    }


def test_repeated_request_headers_lines_are_joined(c: Compiled) -> None:
    headers = [
        ("Origin", "https://a.example"),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "x-a"),
        ("Access-Control-Request-Headers", "x-b"),
    ]
    action = run(c, "OPTIONS", "https://t1.tenants.example.com/", headers)
    assert acao_headers(action.response)["access-control-allow-headers"] == "x-a, x-b"


def test_two_origin_headers_match_nothing(c: Compiled) -> None:
    headers = [("Origin", WEB), ("Origin", WEB), ("Access-Control-Request-Method", "GET")]
    action = run(c, "OPTIONS", "https://api.example.com/", headers)
    assert isinstance(action, Preflight) and action.response.status == 403


# -- authenticated requests ---------------------------------------------------------------


def test_valid_token_is_forwarded_with_identity_headers(c: Compiled) -> None:
    token = mint()
    action = run(c, "GET", "https://api.example.com/v1/me", {**cookie(token), "Origin": WEB})
    assert isinstance(action, Forward)
    assert action.app == "api" and action.upstream == "http://127.0.0.1:9000"
    assert action.add_headers == (
        (b"cf-access-jwt-assertion", token),
        (b"cf-access-authenticated-user-email", b"alice@example.com"),
    )
    assert action.strip_headers == frozenset(
        {b"cf-access-jwt-assertion", b"cf-access-authenticated-user-email", b"cf-access-client-secret"}
    )
    assert action.strip_auth_cookie and not action.rewrite_host
    assert action.vary_origin  # the app has CORS settings
    assert action.exp == NOW + 3600 + 60  # exp + leeway
    assert action.reason == 'allow: policy "staff"'
    assert action.identity is not None and action.identity.email == "alice@example.com"


@pytest.mark.parametrize(
    "headers",
    [
        lambda t: {"cf-access-token": t.decode()},
        lambda t: {"Authorization": "Bearer " + t.decode()},
        lambda t: {**cookie(t), "cf-access-token": t.decode()},
    ],
)
def test_token_sources(c: Compiled, headers: Any) -> None:
    assert isinstance(run(c, "GET", "https://api.example.com/", headers(mint())), Forward)


def test_two_different_tokens_are_refused(c: Compiled) -> None:
    headers = {**cookie(mint()), "cf-access-token": mint(sub="other").decode()}
    action = run(c, "GET", "https://api.example.com/", headers)
    assert isinstance(action, Reject)
    assert action.response.status == 400
    assert action.reason == "reject: ambiguous: two different tokens"


GOOD = mint()
BOB = mint(sub="u-bob", email="bob@example.com")  # valid too: a second identity of ours
FOREIGN = mint(kid="app-key", key=OTHER_EC_KEY, iss="https://app.internal")
# Authorization values that carry BOB however an application may read them:
# any whitespace, a comma-separated list, another scheme, an auth-param.
SECOND_TOKEN = [
    b"Bearer " + BOB,
    b"bearer\t" + BOB,
    b"Bearer\t" + BOB,
    b"Basic YWxp, Bearer " + BOB,
    b"Token x, Bearer " + BOB,
    b"Token x,bearer\t" + BOB,
    b"Token " + BOB,
    b'Token token="' + BOB + b'"',
]
# Values that name no other token of ours: GOOD itself in any spelling, the
# application's own credentials, nothing at all.
NOT_A_SECOND_TOKEN = [
    b"Bearer " + GOOD,
    b"bearer\t" + GOOD,
    b"Basic YWxp, Bearer " + GOOD,
    b"Bearer " + FOREIGN,
    b"Basic YWxp,\tbearer " + FOREIGN,
    b"Bearer e30.e30.",
    b"Bearer ",
    b"Token x, Basic YWxp",
]
AUTHORIZATIONS = SECOND_TOKEN + NOT_A_SECOND_TOKEN


@pytest.mark.parametrize(
    "carrier",
    [cookie, lambda t: {"cf-access-token": t.decode()}],
    ids=["cookie", "cf-access-token"],
)
@pytest.mark.parametrize(
    "bearer",
    [
        lambda: mint(sub="u-bob", email="bob@example.com"),  # another user, our issuer
        lambda: mint(exp=NOW - 3600),  # ours, expired
        lambda: mint(key=OTHER_EC_KEY, iss="https://app.internal"),  # a foreign iss, our kid
        lambda: mint(kid="unknown", key=OTHER_EC_KEY),  # our iss, an unknown kid
    ],
    ids=["other-user", "expired", "our-kid", "our-iss"],
)
def test_a_second_token_of_ours_in_authorization_is_refused(c: Compiled, carrier: Any, bearer: Any) -> None:
    headers = {**carrier(mint()), "Authorization": "Bearer " + bearer().decode()}
    action = run(c, "GET", "https://api.example.com/", headers)
    assert isinstance(action, Reject)
    assert action.response.status == 400
    assert action.reason == "reject: ambiguous: two different tokens"


@pytest.mark.parametrize(
    "spelling",
    ["Bearer\t{}", "bearer {}", "Basic YWxp, Bearer {}", "Token x, Bearer {}", "Token {}", 'Token t="{}"'],
)
def test_a_second_token_of_ours_is_refused_however_spelled(c: Compiled, spelling: str) -> None:
    """A valid cookie for alice and a trusted JWT for bob: the application
    would read bob wherever the edge overlooked him, so the request never
    reaches it."""
    headers = {**cookie(mint()), "Authorization": spelling.format(BOB.decode())}
    action = run(c, "GET", "https://api.example.com/", headers)
    assert isinstance(action, Reject), action
    assert action.response.status == 400
    assert action.reason == "reject: ambiguous: two different tokens"


@pytest.mark.parametrize(
    "credential",
    [
        "Bearer app-secret-123",
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer " + FOREIGN.decode(),
        "Basic YWxp, Bearer " + FOREIGN.decode(),
        "Token x,\tBearer app-secret-123",
    ],
    ids=["opaque-bearer", "basic", "foreign-jwt", "foreign-jwt-in-a-list", "opaque-in-a-list"],
)
def test_the_applications_own_authorization_is_not_a_second_token(c: Compiled, credential: str) -> None:
    token = mint()
    action = run(c, "GET", "https://api.example.com/", {**cookie(token), "Authorization": credential})
    assert isinstance(action, Forward)
    assert action.identity is not None and action.identity.token == token
    assert b"authorization" not in action.strip_headers  # forwarded as sent


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from(AUTHORIZATIONS), max_size=3), st.booleans())
def test_any_authorization_is_decided_never_an_exception(
    c: Compiled, authorizations: list[bytes], with_cookie: bool
) -> None:
    fields = [(b"authorization", value) for value in authorizations]
    if with_cookie:
        fields.append((b"cookie", b"CF_Authorization=" + GOOD))
    action = decide(c, build(b"GET", b"api.example.com", b"/", fields, "192.0.2.1"), NOW)
    assert isinstance(action, (Forward, Reject, Unauthorized, Redirect))
    second = any(value in SECOND_TOKEN for value in authorizations)
    if with_cookie:
        # GOOD is verified: BOB anywhere is a second identity, anything else the application's own.
        if second:
            assert isinstance(action, Reject) and action.reason == "reject: ambiguous: two different tokens"
        else:
            assert isinstance(action, Forward) and action.identity is not None
            assert action.identity.token == GOOD
    elif second and any(GOOD in value for value in authorizations):
        assert isinstance(action, Reject)  # two identities of ours, whichever the edge verifies


def test_the_same_token_in_cookie_and_authorization_is_one_token(c: Compiled) -> None:
    token = mint()
    action = run(
        c, "GET", "https://api.example.com/", {**cookie(token), "Authorization": f"Bearer {token.decode()}"}
    )
    assert isinstance(action, Forward)


def test_token_for_another_application_is_not_accepted(c: Compiled) -> None:
    action = run(c, "GET", "https://api.example.com/", {**cookie(mint(aud=["plain-aud"])), "Accept": "*/*"})
    assert isinstance(action, Unauthorized)
    assert action.reason == "unauthenticated: token is for another application (aud)"


def test_forward_settings_of_the_app(c: Compiled) -> None:
    action = run(c, "GET", "https://plain.example.com/x", cookie(mint(aud="plain-aud")))
    assert isinstance(action, Forward)
    assert action.upstream == "https://plain.internal:8443/base"
    assert not action.strip_auth_cookie and action.rewrite_host and not action.vary_origin


def test_bypass_forwards_without_identity_but_still_strips(c: Compiled) -> None:
    spoof = {"Cf-Access-Authenticated-User-Email": "ceo@example.com", **cookie(mint())}
    action = run(c, "GET", "https://api.example.com/public/status", spoof)
    assert isinstance(action, Forward)
    assert action.add_headers == () and action.identity is None and action.exp is None
    assert b"cf-access-authenticated-user-email" in action.strip_headers
    assert action.reason == 'bypass: policy "anyone"'
    assert action.bypass  # the kind the metrics and access log count, said by the policy, not its text


# -- policies through decide ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "ip", "origin", "kind", "reason"),
    [
        ("alice@example.com", "192.0.2.1", None, Forward, 'allow: policy "staff"'),
        ("eve@example.com", "192.0.2.1", None, Deny, 'deny: policy "block"'),
        (
            "alice@example.com",
            "198.51.100.4",
            None,
            Deny,
            'deny: no policy matched (policy "staff" exclude ip_ranges: matched)',
        ),
        (
            "bob@elsewhere.org",
            "192.0.2.1",
            None,
            Deny,
            'deny: no policy matched (policy "staff" include: no rule matched)',
        ),
    ],
)
def test_policy_outcomes(
    c: Compiled, email: str, ip: str, origin: str | None, kind: type, reason: str
) -> None:
    action = run(c, "GET", "https://api.example.com/", cookie(mint(email=email)), client_ip=ip)
    assert isinstance(action, kind) and action.reason == reason
    assert not isinstance(action, Forward) or not action.bypass  # an allow policy's forward


def test_deny_has_cors_courtesy_for_allowed_origins(c: Compiled) -> None:
    action = run(
        c, "GET", "https://api.example.com/", {**cookie(mint(email="eve@example.com")), "Origin": WEB}
    )
    assert isinstance(action, Deny) and action.response.status == 403
    assert fields(action.response) | {} == {
        "content-type": "text/plain; charset=utf-8",
        "cache-control": "no-store",
        "access-control-allow-origin": WEB,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "WWW-Authenticate, X-Request-Id",
        "vary": "Origin",
        "server": "edge",
        "content-length": str(len(action.response.body)),
    }
    again = run(
        c, "GET", "https://api.example.com/", {**cookie(mint(email="eve@example.com")), "Origin": WEB}
    )
    assert again.response is action.response  # built once per origin


@pytest.mark.parametrize("origin", [None, "https://evil.example"])
def test_deny_without_an_allowed_origin_has_no_cors_headers(c: Compiled, origin: str | None) -> None:
    headers = cookie(mint(email="eve@example.com")) | ({"Origin": origin} if origin else {})
    action = run(c, "GET", "https://api.example.com/", headers)
    assert acao_headers(action.response) == {}
    assert fields(action.response)["vary"] == "Origin"


@pytest.mark.parametrize(
    ("headers", "ip", "kind", "service_token"),
    [
        (
            {"CF-Access-Client-Id": "ci.example", "CF-Access-Client-Secret": "ci-secret"},
            "192.0.2.5",
            Forward,
            "ci",
        ),
        (
            {"CF-Access-Client-Id": "ci.example", "CF-Access-Client-Secret": "ci-secret"},
            "198.51.100.1",
            Deny,
            None,
        ),
        ({"CF-Access-Client-Id": "ci.example", "CF-Access-Client-Secret": "nope"}, "192.0.2.5", Deny, None),
        (
            {"CF-Access-Client-Id": "backup.example", "CF-Access-Client-Secret": "backup-secret"},
            "192.0.2.5",
            Deny,
            None,
        ),
        ({}, "192.0.2.5", Deny, None),
    ],
)
def test_service_auth(
    c: Compiled, headers: dict[str, str], ip: str, kind: type, service_token: str | None
) -> None:
    action = run(c, "POST", "https://api.example.com/internal/jobs", headers, client_ip=ip)
    assert isinstance(action, kind)
    if isinstance(action, Forward):
        assert action.service_token == service_token and action.add_headers == ()
        assert not action.bypass
        assert b"cf-access-client-secret" in action.strip_headers
    else:
        assert action.reason == "deny: no policy matched"


def test_any_service_token(c: Compiled) -> None:
    headers = {"CF-Access-Client-Id": "backup.example", "CF-Access-Client-Secret": "backup-secret"}
    action = run(c, "GET", "https://svc.example.com/", headers)
    assert isinstance(action, Forward) and action.service_token == "backup"


def test_client_ip_behind_a_trusted_proxy(c: Compiled) -> None:
    headers = {**cookie(mint()), "X-Forwarded-For": "198.51.100.4"}
    assert isinstance(run(c, "GET", "https://api.example.com/", headers, client_ip="10.1.2.3"), Deny)
    assert isinstance(run(c, "GET", "https://api.example.com/", headers, client_ip="192.0.2.9"), Forward)


# -- unauthenticated -------------------------------------------------------------------------

LOGIN = (
    "https://api.example.com/cdn-cgi/access/login/api.example.com?kid=api-aud"
    "&redirect_url=https%3A%2F%2Fapi.example.com%2Fv1%2Fme%3Fa%3D1%26b%3D%25C3%25A9"
)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Mode": "navigate"},
        {"Sec-Fetch-Mode": "navigate", "Accept": "application/json"},
        {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
    ],
)
def test_navigation_without_token_is_redirected_to_login(c: Compiled, headers: dict[str, str]) -> None:
    action = run(c, "GET", "https://api.example.com/v1/me?a=1&b=%C3%A9", headers)
    assert isinstance(action, Redirect)
    assert action.response.status == 302
    assert action.location == LOGIN
    assert fields(action.response)["location"] == LOGIN
    assert action.reason == "redirect: login (no token)"


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Mode": "same-origin", "Accept": "text/html"},
        {"Sec-Fetch-Mode": "no-cors"},
        {"X-Requested-With": "XMLHttpRequest", "Accept": "text/html"},
        {"Accept": "application/json"},
        {"Accept": "application/json, text/html;q=0.5"},
        {"Accept": "*/*"},
        {},
    ],
)
def test_fetch_without_token_gets_401(c: Compiled, headers: dict[str, str]) -> None:
    req = request("GET", "https://api.example.com/v1/me?a=1&b=%C3%A9", headers)
    action = decide(c, msgspec.structs.replace(req, request_id=b"rid-1"), NOW)
    assert isinstance(action, Unauthorized)
    assert action.response.status == 401
    # The request's id, so a client's error report names the log line.
    assert json.loads(action.response.body) == {
        "error": "login required",
        "login_url": LOGIN,
        "request_id": "rid-1",
    }
    assert fields(action.response)["content-type"] == "application/json"
    assert fields(action.response)["www-authenticate"] == 'Bearer realm="api.example.com"'


def test_401_for_an_allowed_origin_is_readable(c: Compiled) -> None:
    action = run(c, "GET", "https://api.example.com/", {"Sec-Fetch-Mode": "cors", "Origin": WEB})
    assert acao_headers(action.response) == {
        "access-control-allow-origin": WEB,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "WWW-Authenticate, X-Request-Id",
    }
    assert fields(action.response)["vary"] == "Origin"


def test_401_for_another_origin_has_no_cors_headers(c: Compiled) -> None:
    action = run(
        c, "GET", "https://api.example.com/", {"Sec-Fetch-Mode": "cors", "Origin": "https://evil.example"}
    )
    assert acao_headers(action.response) == {}
    assert fields(action.response)["vary"] == "Origin"


NULL_ORIGIN = {"Origin": "null", "Sec-Fetch-Mode": "cors"}


@pytest.mark.parametrize(
    ("method", "url", "headers", "kind", "status", "acao"),
    [
        # allow_all_origins, no credentials: "*", readable by a sandboxed page.
        ("GET", "https://t1.tenants.example.com/", NULL_ORIGIN, Unauthorized, 401, "*"),
        (
            "OPTIONS",
            "https://t1.tenants.example.com/",
            {"Origin": "null", "Access-Control-Request-Method": "PUT"},
            Preflight,
            200,
            "*",
        ),
        # Listed origins with credentials, null not listed: nothing to read.
        ("GET", "https://api.example.com/", NULL_ORIGIN, Unauthorized, 401, None),
        (
            "OPTIONS",
            "https://api.example.com/",
            {"Origin": "null", "Access-Control-Request-Method": "GET"},
            Preflight,
            403,
            None,
        ),
        (
            "GET",
            "https://api.example.com/",
            {**NULL_ORIGIN, **cookie(mint(email="eve@example.com"))},
            Deny,
            403,
            None,
        ),
    ],
)
def test_null_origin(
    c: Compiled, method: str, url: str, headers: dict[str, str], kind: type, status: int, acao: str | None
) -> None:
    action = run(c, method, url, headers)
    assert isinstance(action, kind)
    assert action.response.status == status
    found = acao_headers(action.response)
    assert found.get("access-control-allow-origin") == acao
    assert "access-control-allow-credentials" not in found


def test_redirect_mode_always_redirects(c: Compiled) -> None:
    action = run(c, "GET", "https://plain.example.com/x", {"Sec-Fetch-Mode": "cors"})
    assert isinstance(action, Redirect)


@pytest.mark.parametrize(
    ("token", "error", "reason"),
    [
        (lambda: mint(exp=NOW - 3600), "session expired", "expired"),
        (lambda: mint(key=EC_KEY, kid="unknown"), "invalid token", "unknown kid 'unknown'"),
        (lambda: b"garbage", "invalid token", "malformed token"),
    ],
)
def test_bad_tokens_are_unauthenticated(c: Compiled, token: Any, error: str, reason: str) -> None:
    action = run(c, "GET", "https://api.example.com/", {**cookie(token()), "Accept": "application/json"})
    assert isinstance(action, Unauthorized)
    assert json.loads(action.response.body)["error"] == error
    assert action.reason == f"unauthenticated: {reason}"


def test_only_service_policies_and_no_token_is_a_deny_not_a_login(c: Compiled) -> None:
    action = run(c, "GET", "https://svc.example.com/", {"Sec-Fetch-Mode": "navigate"})
    assert isinstance(action, Deny)


@pytest.mark.parametrize(
    ("template", "host", "target", "expected"),
    [
        (
            "/cdn-cgi/access/login/{host}?kid={aud}&redirect_url={redirect_url}",
            b"App.example.com:8443",
            b"/",
            "https://App.example.com:8443/cdn-cgi/access/login/app.example.com?kid=a%2Fb"
            "&redirect_url=https%3A%2F%2FApp.example.com%3A8443%2F",
        ),
        (
            "https://auth.example.com/login?to={redirect_url}",
            b"app.example.com:junk",
            b"/x y",
            "https://auth.example.com/login?to=https%3A%2F%2Fapp.example.com%2Fx%20y",
        ),
    ],
)
def test_login_url(template: str, host: bytes, target: bytes, expected: str) -> None:
    req = build(b"GET", host, target, [], "192.0.2.1", "https")
    assert login_url(template, "a/b", req) == expected


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (b"text/html", True),
        (b"text/html;q=0.5, application/json", False),
        (b"application/json;q=0.4, text/html;q=0.5", True),
        (b"application/vnd.api+json, text/html;q=0.9", False),
        (b"*/*", False),
        (b"text/html;q=0", False),
        (b"text/html;q=bogus", False),
        (b"application/xhtml+xml", True),
    ],
)
def test_prefers_html(accept: bytes, html: bool) -> None:
    assert prefers_html(accept) is html


def test_sec_fetch_mode_wins_over_accept() -> None:
    assert not is_navigation({b"sec-fetch-mode": [b"cors"], b"accept": [b"text/html"]})


# -- edge endpoints, unmatched requests -------------------------------------------------------


def test_login_endpoint_refuses_preflights_without_cors_headers(c: Compiled) -> None:
    action = run(c, "OPTIONS", "https://api.example.com/cdn-cgi/access/login/api.example.com", PREFLIGHT)
    assert isinstance(action, Preflight) and action.response.status == 403
    assert acao_headers(action.response) == {}
    assert fields(action.response)["x-frame-options"] == "DENY"


@pytest.mark.parametrize("name", ["login", "authorized", "logout", "get-identity", "certs"])
def test_edge_endpoints_are_local(c: Compiled, name: str) -> None:
    action = run(c, "GET", f"https://api.example.com/cdn-cgi/access/{name}", {"Origin": WEB})
    assert isinstance(action, Endpoint) and action.kind.value == name and action.app == "api"
    assert acao_headers(action.response) == {}
    assert fields(action.response)["content-security-policy"] == "frame-ancestors 'none'"


@pytest.mark.parametrize(
    ("url", "kind", "reason"),
    [
        ("https://api.example.com/cdn-cgi/access/nope", NotFound, "not found: no edge endpoint 'nope'"),
        ("https://unknown.example.com/cdn-cgi/access/login", NotFound, "not found: no application"),
        ("https://unknown.example.com/", NotFound, "not found: no application"),
        ("https://a.b.tenants.example.com/", NotFound, "not found: no application"),
        ("https://api.example.com/a%2Fb", Reject, "reject: ambiguous path (escaped '/' or '\\')"),
    ],
)
def test_unmatched(c: Compiled, url: str, kind: type, reason: str) -> None:
    action = run(c, "GET", url)
    assert isinstance(action, kind) and action.reason == reason
    assert action.response.status == (404 if kind is NotFound else 400)


def test_dot_segments_cannot_escape_a_more_specific_app(c: Compiled) -> None:
    # /public is bypassed; /public/../v1 is the api app, which needs a token.
    action = run(c, "GET", "https://api.example.com/public/../v1/me", {"Accept": "application/json"})
    assert isinstance(action, Unauthorized) and action.app == "api"
    action = run(c, "GET", "https://api.example.com/%70ublic/x")
    assert isinstance(action, Forward) and action.app == "public"


def test_asterisk_target_is_not_found(c: Compiled) -> None:
    req = build(b"OPTIONS", b"api.example.com", b"*", [], "192.0.2.1")
    assert isinstance(decide(c, req, NOW), NotFound)


def test_every_local_action_carries_a_ready_response(c: Compiled) -> None:
    urls = [
        "https://api.example.com/",
        "https://nowhere.example/",
        "https://api.example.com/cdn-cgi/access/login",
    ]
    for url in urls:
        action = run(c, "GET", url)
        assert isinstance(action.response, LocalResponse)
        assert action.response.render(b"date: x\r\n", False, False).startswith(b"HTTP/1.1 ")


# -- explain -----------------------------------------------------------------------------


def test_explain_traces_the_evaluation(c: Compiled) -> None:
    action, trace = explain(c, request("GET", "https://api.example.com/x", cookie(mint())), NOW)
    assert isinstance(action, Forward)
    assert trace == [
        'app "api" (pattern api.example.com, aud api-aud)',
        f"token: valid for alice@example.com until exp {NOW + 3600:.0f}",
        'policy "block" (deny): include: no rule matched',
        "  include emails: alice@example.com not listed",
        'policy "staff" (allow): match',
        "  include email_domains: domain example.com listed",
        "  exclude ip_ranges: 192.0.2.1 not in range",
    ]


# -- compiling ------------------------------------------------------------------------------

ONE_APP = """
[[apps]]
name = "a"
domains = ["a.example.com"]
upstream = "http://127.0.0.1:1"
[[apps.policies]]
name = "p"
action = "allow"
include = [{ everyone = true }]
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "cannot read"),
        (b"{", "not JSON"),
        (jwks(public_jwk(EC_KEY, "k", d="x")), "keys[0]: kid 'k' is secret or private key material"),
        (jwks(public_jwk(EC_KEY, "k", use="enc")), "keys[0]: use is 'enc', not 'sig'"),
    ],
)
def test_unusable_jwks_file_is_a_config_error(tmp_path: Path, body: bytes | None, message: str) -> None:
    path = tmp_path / "jwks.json"
    if body is not None:
        path.write_bytes(body)
    with pytest.raises(ConfigError) as info:
        compile_config(loads(config_text(path, ONE_APP), "edge.toml"), "edge.toml")
    assert str(info.value).startswith("edge.toml: $.issuers[0].jwks_file: ")
    assert message in str(info.value)
    assert info.value.problem is not None and info.value.problem.path == ("issuers", 0, "jwks_file")


def test_jwks_file_without_a_key_for_the_pinned_algorithms(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(public_jwk(EC_KEY, "k")))
    text = config_text(path, ONE_APP, algorithms='["RS256"]')
    with pytest.raises(ConfigError, match=r"no key for algorithms RS256 \(found: ES256\)"):
        compile_config(loads(text, "edge.toml"), "edge.toml")


def test_remote_key_sets_are_handed_to_the_shell(tmp_path: Path) -> None:
    text = f"""
[[issuers]]
iss = "{ISS}"
jwks_url = "https://auth.example.com/cdn-cgi/access/certs"
algorithms = ["RS256"]
"""
    c = compile_config(loads(text))
    assert [(r.iss, r.url) for r in c.remote_keys] == [(ISS, "https://auth.example.com/cdn-cgi/access/certs")]
    keys = c.remote_keys[0].keys
    assert keys.claim_fetch(NOW)  # nothing held yet: fetch now
    keys.update(default_jwks(), NOW)
    assert keys.get("rsa-1") is not None


def test_compiled_aud_is_derived_from_the_name(tmp_path: Path) -> None:
    c = compiled(tmp_path, ONE_APP)
    import hashlib

    assert c.apps[0].aud == hashlib.sha256(b"a").hexdigest()
    assert AUD == "api-aud"


def test_hot_preflights_are_answered_from_the_cache(tmp_path: Path) -> None:
    c = compiled(tmp_path, APPS)  # a fresh cache
    first = run(c, "OPTIONS", "https://api.example.com/v1/things", PREFLIGHT)
    assert run(c, "OPTIONS", "https://api.example.com/v1/things", PREFLIGHT) is first
    foreign = run(
        c, "OPTIONS", "https://api.example.com/v1/things", {**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert foreign.response.status == 403
    # Echoed values are part of the key: different requested headers, different answers.
    url = "https://a.tenants.example.com/"
    one = run(c, "OPTIONS", url, {**PREFLIGHT, "Access-Control-Request-Headers": "x-one"})
    two = run(c, "OPTIONS", url, {**PREFLIGHT, "Access-Control-Request-Headers": "x-two"})
    assert fields(one.response)["access-control-allow-headers"] == "x-one"
    assert fields(two.response)["access-control-allow-headers"] == "x-two"
    repeated = [("Origin", WEB), ("Access-Control-Request-Method", "PUT")]
    three = run(
        c,
        "OPTIONS",
        url,
        [*repeated, ("Access-Control-Request-Headers", "a"), ("Access-Control-Request-Headers", "b")],
    )
    four = run(
        c,
        "OPTIONS",
        url,
        [*repeated, ("Access-Control-Request-Headers", "c"), ("Access-Control-Request-Headers", "d")],
    )
    assert (
        fields(three.response)["access-control-allow-headers"]
        != fields(four.response)["access-control-allow-headers"]
    )


def test_preflight_cache_is_bounded(tmp_path: Path) -> None:
    c = compiled(tmp_path, APPS)
    for i in range(PREFLIGHT_CACHE_SIZE + 50):
        run(c, "OPTIONS", f"https://api.example.com/p{i}", PREFLIGHT)
    assert len(c.preflights) == PREFLIGHT_CACHE_SIZE
