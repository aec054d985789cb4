"""Client certificate selectors (valid_certificate, common_name): table-driven
policy evaluation with a CN present, absent or empty; service_auth admitting
on a certificate; decide() reading the CN from the Request only, and the
preflight cache never answering for a different certificate. Pure."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import msgspec
import pytest
from access_fixtures import AUD, NOW, compiled, cookie, mint, request

from edge.access.actions import Deny, Forward, Preflight, Unauthorized
from edge.access.claims import Identity
from edge.access.decide import decide, explain
from edge.access.groups import Catalog
from edge.access.policy import Policies
from edge.access.request import Request
from edge.access.subject import Subject
from edge.config.schema import Group, Policy

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)
NO_CERT = None
NO_CN = ""  # a verified certificate whose subject has no (single) CN


def identity() -> Identity:
    return Identity(
        token=b"t",
        iss="i",
        aud=frozenset({"a"}),
        exp=0,
        iat=0,
        email="alice@example.com",
        groups=frozenset(),
        email_lower="alice@example.com",
        email_domain="example.com",
    )


def subject(cn: str | None, token: str | None = None, ident: Identity | None = None) -> Subject:
    return Subject("192.0.2.1", [], TRUSTED, token, ident, cn)


def policies(*items: dict[str, Any]) -> Policies:
    return Policies([msgspec.convert(item, Policy) for item in items])


def decided(ps: Policies, s: Subject) -> str | None:
    found = ps.first_phase(s, None)
    if found is None and ps.second:
        found, _ = ps.second_phase(s, None)
    return None if found is None else found.name


VALID = {"valid_certificate": True}
CN = {"common_name": ["svc-a", "alice"]}

# (where the rule stands, the rule, the client's certificate CN, matches)
CASES = [
    ("include", VALID, "alice", True),
    ("include", VALID, NO_CN, True),
    ("include", VALID, NO_CERT, False),
    ("include", CN, "alice", True),
    ("include", CN, "svc-a", True),
    ("include", CN, "Alice", False),  # exact: no case folding
    ("include", CN, "alice ", False),
    ("include", CN, "mallory", False),
    ("include", CN, NO_CN, False),
    ("include", CN, NO_CERT, False),
    ("require", VALID, "bob", True),
    ("require", VALID, NO_CERT, False),  # unknown: not matched in require
    ("require", CN, "alice", True),
    ("require", CN, "bob", False),
    ("require", CN, NO_CERT, False),
    ("exclude", VALID, "alice", False),
    ("exclude", VALID, NO_CERT, False),  # unknown: matched in exclude, so refused
    ("exclude", CN, "alice", False),
    ("exclude", CN, "bob", True),
    ("exclude", CN, NO_CN, True),  # known: a certificate without that CN
    ("exclude", CN, NO_CERT, False),  # unknown: matched in exclude
]


@pytest.mark.parametrize(("part", "rule", "cn", "matches"), CASES)
def test_certificate_rules(part: str, rule: dict[str, Any], cn: str | None, matches: bool) -> None:
    parts: dict[str, Any] = {"include": [{"everyone": True}]}
    parts[part] = [rule]  # an include rule replaces everyone
    ps = policies({"name": "p", "action": "allow", **parts})
    assert (decided(ps, subject(cn, ident=identity())) == "p") is matches


@pytest.mark.parametrize(
    ("policy", "cn", "token", "matches"),
    [
        # A certificate rule in include/require: the certificate is the credential.
        ({"include": [{"common_name": ["svc-a"]}]}, "svc-a", None, True),
        ({"include": [{"common_name": ["svc-a"]}]}, "alice", None, False),
        ({"include": [{"common_name": ["svc-a"]}]}, NO_CERT, None, False),
        ({"include": [VALID]}, "anyone", None, True),
        ({"include": [VALID]}, NO_CERT, None, False),
        ({"include": [{"everyone": True}], "require": [VALID]}, "svc-a", None, True),
        ({"include": [{"any_service_token": True}], "require": [VALID]}, "svc-a", None, False),
        ({"include": [{"any_service_token": True}], "require": [VALID]}, "svc-a", "ci", True),
        ({"include": [{"any_service_token": True}], "require": [VALID]}, NO_CERT, "ci", False),
        # Only in exclude, it narrows the service token; it is no credential.
        ({"include": [{"everyone": True}], "exclude": [{"common_name": ["bad"]}]}, "good", None, False),
        ({"include": [{"everyone": True}], "exclude": [{"common_name": ["bad"]}]}, "good", "ci", True),
        ({"include": [{"everyone": True}], "exclude": [{"common_name": ["bad"]}]}, "bad", "ci", False),
        # A policy without a certificate rule still needs its service token.
        ({"include": [{"everyone": True}]}, "svc-a", None, False),
    ],
)
def test_service_auth_on_certificates(
    policy: dict[str, Any], cn: str | None, token: str | None, matches: bool
) -> None:
    ps = policies({"name": "svc", "action": "service_auth", **policy})
    assert (decided(ps, subject(cn, token)) == "svc") is matches


def test_service_auth_skip_says_which_credential_is_missing() -> None:
    ps = policies(
        {"name": "certs", "action": "service_auth", "include": [{"common_name": ["svc-a"]}]},
        {"name": "tokens", "action": "service_auth", "include": [{"any_service_token": True}]},
    )
    trace: list[str] = []
    assert ps.first_phase(subject(NO_CERT), trace) is None
    assert trace == [
        'policy "certs" (service_auth): skipped: no valid service token or client certificate',
        'policy "tokens" (service_auth): skipped: no valid service token',
    ]
    trace.clear()
    assert ps.first_phase(subject("alice"), trace) is None
    assert trace[0] == 'policy "certs" (service_auth): include: no rule matched'


# -- decide(): the CN comes from the Request, never from its head ----------------

APPS = f"""
[[apps]]
name = "svc"
domains = ["svc.example.com"]
upstream = "http://127.0.0.1:9000"
[[apps.policies]]
name = "machines"
action = "service_auth"
include = [{{ common_name = ["svc-a"] }}]

[[apps]]
name = "api"
domains = ["api.example.com"]
upstream = "http://127.0.0.1:9001"
aud = "{AUD}"
[apps.cors]
allowed_origins = ["https://web.example.com"]
allowed_methods = ["GET"]
[[apps.policies]]
name = "staff with a device"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]
require = [{{ valid_certificate = true }}]

[[apps]]
name = "public"
domains = ["public.example.com"]
upstream = "http://127.0.0.1:9002"
[[apps.policies]]
name = "devices"
action = "bypass"
include = [{{ valid_certificate = true }}]
"""
TLS = '[server.tls]\ncert = "c.pem"\nkey = "k.pem"\nclient_ca = "ca.pem"\n'


def with_cn(req: Request, cn: str | None) -> Request:
    return msgspec.structs.replace(req, client_cert_cn=cn)


@pytest.fixture
def c(tmp_path: Path) -> Any:
    return compiled(tmp_path, APPS, TLS)


# Headers a client might hope the edge believes; it reads none of them.
SPOOFED = {
    "X-Client-Cert-CN": "svc-a",
    "X-SSL-Client-S-DN": "CN=svc-a",
    "Ssl-Client-Verify": "SUCCESS",
    "Cf-Client-Cert-Common-Name": "svc-a",
}


def test_decide_service_auth_on_common_name(c: Any) -> None:
    req = request(url="https://svc.example.com/x")
    assert isinstance(decide(c, with_cn(req, "svc-a"), NOW), Forward)
    assert isinstance(decide(c, with_cn(req, "alice"), NOW), Deny)
    assert isinstance(decide(c, req, NOW), Deny)
    assert isinstance(decide(c, request(url="https://svc.example.com/x", headers=SPOOFED), NOW), Deny)


def test_decide_allow_requires_identity_and_certificate(c: Any) -> None:
    token = mint(iat=NOW - 10, nbf=NOW - 10, exp=NOW + 600)
    signed_in = request(url="https://api.example.com/x", headers=cookie(token))
    assert isinstance(decide(c, with_cn(signed_in, "laptop-7"), NOW), Forward)
    denied = decide(c, signed_in, NOW)
    assert isinstance(denied, Deny)
    assert (
        denied.reason
        == 'deny: no policy matched (policy "staff with a device" require valid_certificate: not matched)'
    )
    # A certificate is no identity: without a token, still a login.
    assert isinstance(
        decide(c, with_cn(request(url="https://api.example.com/x"), "laptop-7"), NOW), Unauthorized
    )
    spoofed = request(url="https://api.example.com/x", headers={**cookie(token), **SPOOFED})
    assert isinstance(decide(c, spoofed, NOW), Deny)


def test_decide_bypass_on_certificate_also_for_preflights(c: Any) -> None:
    get = request(url="https://public.example.com/")
    assert isinstance(decide(c, with_cn(get, NO_CN), NOW), Forward)
    assert isinstance(decide(c, get, NOW), Deny)
    headers = {"Origin": "https://web.example.com", "Access-Control-Request-Method": "GET"}
    preflight = request("OPTIONS", "https://public.example.com/", headers)
    assert isinstance(decide(c, with_cn(preflight, "x"), NOW), Forward)  # a public path: forwarded
    assert isinstance(decide(c, preflight, NOW), Preflight)
    # Again in the other order: no cache carries one client's answer to another.
    assert isinstance(decide(c, preflight, NOW), Preflight)
    assert isinstance(decide(c, with_cn(preflight, "x"), NOW), Forward)


def test_explain_shows_the_certificate_rule_outcome(c: Any) -> None:
    req = request(url="https://svc.example.com/x")
    action, trace = explain(c, with_cn(req, "alice"), NOW)
    assert isinstance(action, Deny)
    assert 'policy "machines" (service_auth): include: no rule matched' in trace
    action, trace = explain(c, with_cn(req, "svc-a"), NOW)
    assert isinstance(action, Forward)
    assert 'policy "machines" (service_auth): match' in trace


def test_a_certificate_rule_inside_a_group_is_a_machine_credential() -> None:
    """A group that is not spliced (it has a require, beside another include
    rule) is one rule: the certificate rule inside it still makes the
    certificate a credential of the service_auth policy."""
    machines = msgspec.convert(
        {
            "name": "machines",
            "include": [{"common_name": ["svc"]}],
            "require": [{"ip_ranges": ["192.0.2.0/24"]}],
        },
        Group,
    )
    policy = msgspec.convert(
        {
            "name": "m",
            "action": "service_auth",
            "include": [{"group": ["machines"]}, {"service_tokens": ["ci"]}],
        },
        Policy,
    )
    policies = Policies([policy], Catalog([machines], []))
    assert policies.first_phase(Subject("192.0.2.1", [], (), client_cn="svc"), None) is not None
    assert policies.first_phase(Subject("198.51.100.1", [], (), client_cn="svc"), None) is None
    assert policies.first_phase(Subject("192.0.2.1", [], ()), None) is None  # no certificate, no token
