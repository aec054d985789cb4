"""edge.policy: selectors, include/require/exclude, evaluation order, client
IPs behind proxies, service tokens. Pure."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import msgspec
import pytest

from edge.access.policy import Policies, ServiceTokens, Subject, client_ip, parse_ip
from edge.access.tokens import Identity
from edge.config.schema import Policy, ServiceToken

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def identity(email: str = "alice@example.com", groups: tuple[str, ...] = ()) -> Identity:
    return Identity(
        token=b"t",
        iss="i",
        aud=frozenset({"a"}),
        exp=0,
        iat=0,
        email=email,
        groups=frozenset(groups),
        email_lower=email.lower(),
        email_domain=email.rpartition("@")[2].lower(),
    )


def subject(
    ip: str = "192.0.2.10",
    ident: Identity | None = None,
    token: str | None = None,
    xff: list[bytes] | None = None,
) -> Subject:
    return Subject(ip, xff or [], TRUSTED, token, ident)


def policies(*items: dict[str, Any]) -> Policies:
    return Policies([msgspec.convert(item, Policy) for item in items])


def allow(name: str = "p", **parts: Any) -> dict[str, Any]:
    return {"name": name, "action": "allow", **parts}


def decided(ps: Policies, s: Subject) -> str | None:
    found = ps.first_phase(s, None)
    if found is None and ps.second:
        found, _ = ps.second_phase(s, None)
    return None if found is None else found.name


SELECTOR_CASES = [
    ({"everyone": True}, subject(ident=identity()), True),
    ({"emails": ["Alice@Example.com"]}, subject(ident=identity("alice@example.COM")), True),
    ({"emails": ["bob@example.com"]}, subject(ident=identity()), False),
    ({"email_domains": ["example.com"]}, subject(ident=identity("x@EXAMPLE.com")), True),
    ({"email_domains": ["@example.com"]}, subject(ident=identity("x@example.com")), True),
    ({"email_domains": ["example.com"]}, subject(ident=identity("x@sub.example.com")), False),
    ({"email_domains": ["example.com"]}, subject(ident=identity("x@evilexample.com")), False),
    ({"groups": ["eng"]}, subject(ident=identity(groups=("ops", "eng"))), True),
    ({"groups": ["eng"]}, subject(ident=identity(groups=("Eng",))), False),  # groups are exact
    ({"groups": ["eng"]}, subject(ident=identity()), False),
    ({"ip_ranges": ["192.0.2.0/24"]}, subject(ip="192.0.2.99"), True),
    ({"ip_ranges": ["192.0.2.0/24"]}, subject(ip="198.51.100.1"), False),
    ({"ip_ranges": ["2001:db8::/32"]}, subject(ip="2001:db8::5"), True),
    ({"ip_ranges": ["192.0.2.0/24"]}, subject(ip="::ffff:192.0.2.7"), True),  # v4-mapped
    ({"ip_ranges": ["192.0.2.0/24"]}, subject(ip="not-an-ip"), False),
]


@pytest.mark.parametrize(("rule", "s", "matches"), SELECTOR_CASES)
def test_selectors(rule: dict[str, Any], s: Subject, matches: bool) -> None:
    ps = policies(allow(include=[rule]))
    assert (decided(ps, s) == "p") is matches


@pytest.mark.parametrize(
    ("rule", "token", "matches"),
    [
        ({"service_tokens": ["ci"]}, "ci", True),
        ({"service_tokens": ["ci"]}, "backup", False),
        ({"service_tokens": ["ci"]}, None, False),
        ({"any_service_token": True}, "backup", True),
        ({"any_service_token": True}, None, False),
        ({"everyone": True}, "backup", True),
    ],
)
def test_service_auth_selectors(rule: dict[str, Any], token: str | None, matches: bool) -> None:
    ps = policies({"name": "svc", "action": "service_auth", "include": [rule]})
    assert (decided(ps, subject(token=token)) == "svc") is matches


def test_service_auth_needs_a_valid_service_token_even_for_everyone() -> None:
    ps = policies({"name": "svc", "action": "service_auth", "include": [{"everyone": True}]})
    trace: list[str] = []
    assert ps.first_phase(subject(), trace) is None
    assert trace == ['policy "svc" (service_auth): skipped: no valid service token']


@pytest.mark.parametrize(
    ("parts", "s", "outcome"),
    [
        # include: any
        (
            {"include": [{"emails": ["x@y.z"]}, {"email_domains": ["example.com"]}]},
            subject(ident=identity()),
            None,
        ),
        (
            {"include": [{"emails": ["x@y.z"]}, {"groups": ["g"]}]},
            subject(ident=identity()),
            "include: no rule matched",
        ),
        # require: all
        (
            {
                "include": [{"everyone": True}],
                "require": [{"email_domains": ["example.com"]}, {"groups": ["eng"]}],
            },
            subject(ident=identity(groups=("eng",))),
            None,
        ),
        (
            {
                "include": [{"everyone": True}],
                "require": [{"email_domains": ["example.com"]}, {"groups": ["eng"]}],
            },
            subject(ident=identity()),
            "require groups: not matched",
        ),
        # exclude: none
        (
            {"include": [{"everyone": True}], "exclude": [{"ip_ranges": ["192.0.2.0/24"]}]},
            subject(ip="192.0.2.1", ident=identity()),
            "exclude ip_ranges: matched",
        ),
        (
            {"include": [{"everyone": True}], "exclude": [{"ip_ranges": ["192.0.2.0/24"]}]},
            subject(ip="198.51.100.1", ident=identity()),
            None,
        ),
        # an unknown never opens access: no client IP counts as matching an exclude
        (
            {"include": [{"everyone": True}], "exclude": [{"ip_ranges": ["192.0.2.0/24"]}]},
            subject(ip="garbage", ident=identity()),
            "exclude ip_ranges: matched",
        ),
        # ... and as not matching an include or a require
        (
            {"include": [{"everyone": True}], "require": [{"ip_ranges": ["0.0.0.0/0", "::/0"]}]},
            subject(ip="garbage", ident=identity()),
            "require ip_ranges: not matched",
        ),
    ],
)
def test_include_require_exclude(parts: dict[str, Any], s: Subject, outcome: str | None) -> None:
    ps = policies(allow(**parts))
    assert ps.second[0].miss(s) == outcome


def test_order_bypass_and_service_auth_first_then_top_to_bottom() -> None:
    ps = policies(
        allow("everyone", include=[{"everyone": True}]),
        {"name": "block-mallory", "action": "deny", "include": [{"emails": ["mallory@example.com"]}]},
        {"name": "ci", "action": "service_auth", "include": [{"service_tokens": ["ci"]}]},
        {"name": "office", "action": "bypass", "include": [{"ip_ranges": ["203.0.113.0/24"]}]},
    )
    assert [p.name for p in ps.first] == ["ci", "office"]
    assert [p.name for p in ps.second] == ["everyone", "block-mallory"]
    # allow is above deny: the first match decides, so mallory is allowed
    assert decided(ps, subject(ident=identity("mallory@example.com"))) == "everyone"
    assert decided(ps, subject(ip="203.0.113.5", ident=identity("mallory@example.com"))) == "office"
    assert decided(ps, subject(token="ci", ident=identity("mallory@example.com"))) == "ci"


def test_deny_above_allow_wins() -> None:
    ps = policies(
        {"name": "block", "action": "deny", "include": [{"emails": ["mallory@example.com"]}]},
        allow("everyone", include=[{"everyone": True}]),
    )
    assert decided(ps, subject(ident=identity("mallory@example.com"))) == "block"
    assert decided(ps, subject(ident=identity("alice@example.com"))) == "everyone"


def test_no_match_reports_the_first_allow_miss_and_traces_everything() -> None:
    ps = policies(
        allow(
            "contractors",
            include=[{"email_domains": ["example.com"]}],
            exclude=[{"ip_ranges": ["0.0.0.0/0"]}],
        ),
        allow("admins", include=[{"groups": ["admin"]}]),
    )
    trace: list[str] = []
    found, miss = ps.second_phase(subject(ident=identity()), trace)
    assert found is None
    assert miss == 'policy "contractors" exclude ip_ranges: matched'
    assert trace == [
        'policy "contractors" (allow): exclude ip_ranges: matched',
        "  include email_domains: domain example.com listed",
        "  exclude ip_ranges: 192.0.2.10 in range",
        'policy "admins" (allow): include: no rule matched',
        "  include groups: token groups [] not listed",
    ]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("192.0.2.1", [b"198.51.100.7"], "192.0.2.1"),  # untrusted peer: XFF ignored
        ("10.0.0.2", [b"198.51.100.7"], "198.51.100.7"),
        ("10.0.0.2", [b"203.0.113.9, 198.51.100.7, 10.1.1.1"], "198.51.100.7"),  # right to left
        ("10.0.0.2", [b"203.0.113.9", b"198.51.100.7"], "198.51.100.7"),  # several header lines
        ("10.0.0.2", [b"10.0.0.9, 10.0.0.8"], "10.0.0.9"),  # all trusted: the leftmost
        ("10.0.0.2", [b"198.51.100.7, garbage"], "10.0.0.2"),  # trust stops at garbage
        ("10.0.0.2", [], "10.0.0.2"),
        ("fd00::1", [b"2001:db8::9"], "2001:db8::9"),
        ("::ffff:10.0.0.2", [b"198.51.100.7"], "198.51.100.7"),
        ("nonsense", [b"198.51.100.7"], None),
    ],
)
def test_client_ip(peer: str, xff: list[bytes], expected: str | None) -> None:
    found = client_ip(peer, xff, TRUSTED)
    assert (None if found is None else str(found)) == expected


def test_client_ip_without_trusted_proxies_is_the_peer() -> None:
    assert str(client_ip("10.0.0.2", [b"198.51.100.7"], ())) == "10.0.0.2"


def test_parse_ip() -> None:
    assert str(parse_ip(b"::ffff:1.2.3.4")) == "1.2.3.4"
    assert parse_ip(b"\xff") is None


def _tokens() -> ServiceTokens:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    return ServiceTokens([ServiceToken(name="ci", client_id="ci.example", secret_sha256=digest)])


@pytest.mark.parametrize(
    ("client_id", "secret", "name", "reason"),
    [
        (b"ci.example", b"s3cret", "ci", '"ci": valid'),
        (b" ci.example ", b" s3cret ", "ci", '"ci": valid'),
        (b"ci.example", b"wrong", None, '"ci": wrong secret'),
        (b"nobody", b"s3cret", None, "unknown client id"),
        (b"ci.example", None, None, "none presented"),
        (None, b"s3cret", None, "none presented"),
    ],
)
def test_service_tokens(client_id: bytes | None, secret: bytes | None, name: str | None, reason: str) -> None:
    assert _tokens().check(client_id, secret) == (name, reason)


def test_secrets_are_not_kept() -> None:
    tokens = _tokens()
    assert b"s3cret" not in repr(tokens.by_id).encode()
