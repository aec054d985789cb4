"""edge.access.policy, with its rules and groups: selectors,
include/require/exclude, evaluation order, groups and lists. Pure."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from access_networks import BIG, OFFICE, TRUSTED

from edge.access.claims import Identity
from edge.access.groups import Catalog, GroupRule
from edge.access.policy import Policies
from edge.access.rules import EmailList, IpList
from edge.access.subject import Subject
from edge.config.schema import Group, List, Policy


def identity(
    email: str = "alice@example.com",
    groups: tuple[str, ...] = (),
    amr: tuple[str, ...] = (),
    idp: str = "",
) -> Identity:
    return Identity(
        amr=frozenset(amr),
        idp=idp,
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


# -- groups, lists, auth_method, login_method ---------------------------------------

CONTRACTORS = [f"contractor{i}@example.com" for i in range(BIG - 1)] + ["Carol@Example.com"]
GROUPS = [
    # include only: spliced wherever it is used
    {"name": "staff", "include": [{"email_domains": ["example.com"]}, {"groups": ["staff"]}]},
    # two deep: a group of groups, with its own require and exclude
    {
        "name": "engineers",
        "include": [{"group": ["staff"]}],
        "require": [{"groups": ["eng"]}],
        "exclude": [{"email_list": ["contractors"]}],
    },
    {"name": "oncall", "include": [{"group": ["engineers"]}], "require": [{"auth_method": ["mfa", "hwk"]}]},
    {"name": "office", "include": [{"ip_list": ["office"]}]},
    {"name": "not-in-office", "include": [{"everyone": True}], "exclude": [{"ip_list": ["office"]}]},
    {
        "name": "mfa-staff",
        "include": [{"email_domains": ["example.com"]}],
        "require": [{"auth_method": ["mfa"]}],
        "exclude": [{"emails": ["eve@example.com"]}],
    },
]
LISTS = [
    {"name": "contractors", "type": "email", "items": CONTRACTORS},
    {"name": "office", "type": "ip", "items": OFFICE},
    {"name": "vendors", "type": "email", "items": ["vic@vendor.test"]},
]
CATALOG = Catalog([msgspec.convert(g, Group) for g in GROUPS], [msgspec.convert(x, List) for x in LISTS])


def catalog_policies(*items: dict[str, Any]) -> Policies:
    return Policies([msgspec.convert(item, Policy) for item in items], CATALOG)


ALICE = identity(groups=("staff", "eng"), amr=("pwd", "mfa"), idp="dev")
CAROL = identity("carol@example.com", groups=("eng",), amr=("pwd", "mfa"), idp="dev")
BOB = identity("bob@elsewhere.test", groups=("eng",), amr=("pwd",), idp="sso")
VIC = identity("vic@vendor.test", amr=("hwk",), idp="sso")

CATALOG_CASES = [
    # group, spliced (include-only) and nested, two deep, with their own require/exclude
    ({"include": [{"group": ["staff"]}]}, subject(ident=BOB), False),
    (
        {"include": [{"group": ["staff"]}]},
        subject(ident=identity("x@elsewhere.test", groups=("staff",))),
        True,
    ),
    ({"include": [{"group": ["engineers"]}]}, subject(ident=ALICE), True),
    ({"include": [{"group": ["engineers"]}]}, subject(ident=CAROL), False),  # excluded: a contractor
    ({"include": [{"group": ["engineers"]}]}, subject(ident=identity(groups=("staff",))), False),  # no eng
    ({"include": [{"group": ["oncall"]}]}, subject(ident=ALICE), True),
    ({"include": [{"group": ["oncall"]}]}, subject(ident=identity(groups=("eng",), amr=("pwd",))), False),
    # several names: any of them
    ({"include": [{"group": ["oncall", "office"]}]}, subject(ip="192.0.2.7", ident=BOB), True),
    ({"include": [{"group": ["oncall", "office"]}]}, subject(ip="198.51.100.1", ident=BOB), False),
    # require and exclude positions
    ({"include": [{"everyone": True}], "require": [{"group": ["engineers"]}]}, subject(ident=ALICE), True),
    ({"include": [{"everyone": True}], "require": [{"group": ["engineers"]}]}, subject(ident=CAROL), False),
    ({"include": [{"everyone": True}], "exclude": [{"group": ["engineers"]}]}, subject(ident=ALICE), False),
    ({"include": [{"everyone": True}], "exclude": [{"group": ["engineers"]}]}, subject(ident=CAROL), True),
    ({"include": [{"everyone": True}], "exclude": [{"group": ["staff"]}]}, subject(ident=BOB), True),
    ({"include": [{"everyone": True}], "exclude": [{"group": ["office"]}]}, subject(ip="10.0.1.7"), False),
    # unknowns never open access through a group: no identity, no client IP
    ({"include": [{"group": ["engineers"]}]}, subject(), False),
    ({"include": [{"everyone": True}], "require": [{"group": ["engineers"]}]}, subject(), False),
    ({"include": [{"everyone": True}], "exclude": [{"group": ["engineers"]}]}, subject(), False),
    ({"include": [{"everyone": True}], "exclude": [{"group": ["staff"]}]}, subject(), False),
    ({"include": [{"group": ["not-in-office"]}]}, subject(ip="garbage"), False),  # its exclude: unknown
    ({"include": [{"group": ["not-in-office"]}]}, subject(ip="198.51.100.1"), True),
    (
        {"include": [{"everyone": True}], "exclude": [{"group": ["not-in-office"]}]},
        subject(ip="garbage"),
        False,
    ),
    (
        {"include": [{"everyone": True}], "exclude": [{"group": ["not-in-office"]}]},
        subject(ip="10.0.1.7"),
        True,
    ),
    # 100 000-entry lists: emails folded, networks of any prefix length, both families
    ({"include": [{"email_list": ["contractors"]}]}, subject(ident=identity("CAROL@example.com")), True),
    (
        {"include": [{"email_list": ["contractors"]}]},
        subject(ident=identity("contractor99998@example.com")),
        True,
    ),
    (
        {"include": [{"email_list": ["contractors"]}]},
        subject(ident=identity("contractor100000@example.com")),
        False,
    ),
    ({"include": [{"email_list": ["contractors", "vendors"]}]}, subject(ident=VIC), True),
    ({"include": [{"email_list": ["contractors"]}]}, subject(), False),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="10.0.1.7"), True),  # i = 263: 10.0.1.7/32
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="10.1.134.155"), True),  # the last /32
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="10.1.134.156"), False),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="172.31.255.255"), True),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="172.32.0.0"), False),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="::ffff:192.0.2.200"), True),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="2001:db8:0:ffff::9"), True),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="2001:db8:1::9"), False),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="2001:db8:ffff::1"), True),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="2001:db8:ffff::2"), False),
    ({"include": [{"ip_list": ["office"]}]}, subject(ip="not-an-ip"), False),
    # auth_method: any of the sign-in's amr values
    ({"include": [{"auth_method": ["mfa"]}]}, subject(ident=ALICE), True),
    ({"include": [{"auth_method": ["mfa"]}]}, subject(ident=BOB), False),
    ({"include": [{"auth_method": ["mfa", "hwk"]}]}, subject(ident=VIC), True),
    ({"include": [{"auth_method": ["pwd"]}]}, subject(ident=identity()), False),  # a token without amr
    ({"include": [{"everyone": True}], "require": [{"auth_method": ["mfa"]}]}, subject(), False),
    # login_method: the provider's id; a token without one never matches
    ({"include": [{"login_method": ["sso"]}]}, subject(ident=BOB), True),
    ({"include": [{"login_method": ["sso"]}]}, subject(ident=ALICE), False),
    ({"include": [{"login_method": ["dev", "sso"]}]}, subject(ident=ALICE), True),
    ({"include": [{"login_method": ["dev"]}]}, subject(ident=identity()), False),
    (
        {"include": [{"everyone": True}], "exclude": [{"login_method": ["dev"]}]},
        subject(ident=identity()),
        True,
    ),
]


@pytest.mark.parametrize(("parts", "s", "matches"), CATALOG_CASES)
def test_groups_lists_and_sign_in_selectors(parts: dict[str, Any], s: Subject, matches: bool) -> None:
    ps = catalog_policies(allow(**parts))
    assert (decided(ps, s) == "p") is matches


def test_an_include_only_group_is_spliced_into_the_policy() -> None:
    """Inline or through a group, the policy holds the same rules."""
    inline = catalog_policies(allow(include=[{"email_domains": ["example.com"]}, {"groups": ["staff"]}]))
    grouped = catalog_policies(
        allow(include=[{"group": ["staff"]}], exclude=[{"group": ["office"]}], require=[{"group": ["staff"]}])
    )
    inline_rules = inline.second[0].include
    assert [type(r) for r in grouped.second[0].include] == [type(r) for r in inline_rules]
    assert [r.label for r in grouped.second[0].include] == [
        "group staff -> email_domains",
        "group staff -> groups",
    ]
    assert [type(r) for r in grouped.second[0].exclude] == [IpList]
    # a group of two include rules in a require must stay one rule (any of them)
    assert [type(r) for r in grouped.second[0].require] == [GroupRule]


def test_a_group_with_one_include_is_spliced_into_a_require() -> None:
    ps = catalog_policies(allow(include=[{"everyone": True}], require=[{"group": ["mfa-staff"]}]))
    policy = ps.second[0]
    assert [r.label for r in policy.require] == [
        "group mfa-staff -> email_domains",
        "group mfa-staff -> auth_method",
    ]
    assert [r.label for r in policy.exclude] == ["group mfa-staff -> emails"]
    # oncall is engineers' rules (two includes, from staff) plus its own require: one nested rule
    ps = catalog_policies(allow(include=[{"everyone": True}], require=[{"group": ["oncall"]}]))
    assert [type(r) for r in ps.second[0].require] == [GroupRule]


def test_a_group_that_is_the_only_include_becomes_the_policy() -> None:
    """Two deep: oncall -> engineers -> staff, all spliced, labels keeping the path."""
    policy = catalog_policies(allow(include=[{"group": ["oncall"]}])).second[0]
    path = "group oncall -> group engineers -> "
    assert [r.label for r in policy.include] == [
        f"{path}group staff -> email_domains",
        f"{path}group staff -> groups",
    ]
    assert [r.label for r in policy.require] == [f"{path}groups", "group oncall -> auth_method"]
    assert [r.label for r in policy.exclude] == [f"{path}email_list contractors"]


def test_lists_are_compiled_once_and_shared() -> None:
    one = catalog_policies(allow(include=[{"email_list": ["contractors"]}]))
    two = catalog_policies(allow(include=[{"group": ["engineers"]}, {"emails": ["root@example.com"]}]))
    first = one.second[0].include[0]
    assert isinstance(first, EmailList)
    nested = two.second[0].include[0]
    assert isinstance(nested, GroupRule)
    inner = nested.clause.exclude[0]
    assert isinstance(inner, EmailList) and inner.values is first.values
    assert len(first.values) == BIG and "carol@example.com" in first.values  # lower-cased


def test_explain_follows_groups_and_lists_without_dumping_them() -> None:
    ps = catalog_policies(
        allow("staff", include=[{"group": ["staff"]}], exclude=[{"email_list": ["contractors"]}]),
        allow("oncall", include=[{"group": ["oncall"]}]),
        allow("nested", include=[{"group": ["engineers"]}, {"emails": ["root@example.com"]}]),
    )
    trace: list[str] = []
    found, _ = ps.second_phase(subject(ident=CAROL), trace)
    assert found is None
    path = "group oncall -> group engineers -> "
    assert trace == [
        'policy "staff" (allow): exclude email_list contractors: matched',
        "  include group staff -> email_domains: domain example.com listed",
        "  exclude email_list contractors: carol@example.com in list (100000 entries)",
        f'policy "oncall" (allow): exclude {path}email_list contractors: matched',
        f"  include {path}group staff -> email_domains: domain example.com listed",
        f"  require {path}groups: token groups [eng] listed",
        "  require group oncall -> auth_method: amr [mfa, pwd] listed",
        f"  exclude {path}email_list contractors: carol@example.com in list (100000 entries)",
        'policy "nested" (allow): include: no rule matched',
        "  include group engineers: not matched",
        "    include group staff -> email_domains: domain example.com listed",
        "    require groups: token groups [eng] listed",
        "    exclude email_list contractors: carol@example.com in list (100000 entries)",
        "  include emails: carol@example.com not listed",
    ]


@pytest.mark.parametrize(
    ("ident", "outcome", "fact"),
    [
        (BOB, "match", "provider sso listed"),
        (ALICE, "include: no rule matched", "provider dev not listed"),
        (identity(), "include: no rule matched", "provider (none in the token) not listed"),
    ],
)
def test_explain_names_the_provider_login_method_saw(ident: Identity, outcome: str, fact: str) -> None:
    """What `edge explain` prints for a login_method rule: the sign-in's
    provider id, and whether the rule lists it."""
    ps = catalog_policies(allow("sso", include=[{"login_method": ["sso", "okta"]}]))
    trace: list[str] = []
    ps.second_phase(subject(ident=ident), trace)
    assert trace == [f'policy "sso" (allow): {outcome}', f"  include login_method: {fact}"]


def test_policies_evaluate_a_subject_built_from_an_identity_alone() -> None:
    """As the app launcher does: no request, just who the user is."""
    ps = catalog_policies(allow(include=[{"group": ["oncall"]}]))
    assert decided(ps, Subject("", [], (), identity=ALICE)) == "p"
    assert decided(ps, Subject("", [], (), identity=BOB)) is None
