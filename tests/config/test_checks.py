"""edge.config.checks and checks_*: cross-field rules as values, no file and no exception.

Each check is called on structs built in Python and must return its problems
as (key path, message); load's wording of the same problems is covered by
test_config*.py.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge.config import checks_apps, checks_server, checks_team, schema
from edge.config.checks import problems
from edge.config.errors import ConfigError, key_path
from edge.config.load import load, loads
from edge.config.problem import Problem
from edge.config.schema import (
    TLS,
    App,
    Config,
    Cors,
    Demo,
    DevProvider,
    DevUser,
    Issuer,
    Login,
    OidcProvider,
    Policy,
    Rule,
    Server,
    ServiceToken,
    Team,
)
from edge.config.syntax import DomainPattern, ListenAddress
from edge.runtime.server import keep_restart_settings

CONFIG_DIR = Path(__file__).resolve().parents[2] / "edge" / "config"
SHA = hashlib.sha256(b"x").hexdigest()
HASH = "scrypt$15$8$1$ajQGKN8a2FLTxJ-7BZEQ3Q$exJqGh1glOXTKS5C-Zm_XqPh-A37Hy4nMsBCA4JIiZQ"
EVERYONE = Rule(everyone=True)
ALLOW = Policy(name="p", action="allow", include=[EVERYONE])


def an_app(**changes: Any) -> App:
    values: dict[str, Any] = {
        "name": "api",
        "domains": ["api.example.com"],
        "upstream": "http://127.0.0.1:9000",
        "policies": [ALLOW],
    }
    return App(**(values | changes))


def a_team(**changes: Any) -> Team:
    dev = DevProvider(users=[DevUser(email="a@example.com", password=HASH)])
    values: dict[str, Any] = {"host": "auth.example.com", "providers": [dev]}
    return Team(**(values | changes))


Check = Callable[[Any], Iterator[Problem]]
P = tuple[tuple[str | int, ...], str]

CASES: list[tuple[Check, Any, list[P]]] = [
    (checks_server.check_tls, TLS(cert="c", key="k"), []),
    (
        checks_server.check_tls,
        TLS(cert="c", key="k", min_version="1.1"),
        [(("min_version",), "Expected '1.2' or '1.3', got '1.1'")],
    ),
    (checks_server.check_server, Server(), []),
    (checks_server.check_server, Server(listen=[]), [(("listen",), "Expected at least one address")]),
    (
        checks_server.check_server,
        Server(listen=["8080", "a:1", "a:1", "[::1]:0", "[0::1]:0"]),
        [
            (("listen", 0), "Expected 'host:port' or '[ipv6]:port', got '8080'"),
            (("listen", 2), "'a:1' is listed twice"),
        ],
    ),
    (
        checks_server.check_server,
        Server(trusted_proxies=["10.0.0.0/8", "10.0.0.1/8"], max_target_bytes=16384),
        [
            (
                ("trusted_proxies", 1),
                "Expected an IP network like '10.0.0.0/8' or '2001:db8::/32', got '10.0.0.1/8' "
                "(10.0.0.1/8 has host bits set)",
            ),
            (("max_target_bytes",), "Expected less than max_header_bytes (16384), got 16384"),
        ],
    ),
    (checks_apps.check_cors, Cors(), []),
    (
        checks_apps.check_cors,
        Cors(allow_all_origins=True, allow_credentials=True, allowed_methods=["GET", "*", "GET"]),
        [
            (
                ("allow_credentials",),
                "Expected false with allow_all_origins = true: any site could read your users' data "
                "(list the origins in allowed_origins instead)",
            ),
            (("allowed_methods", 1), "Expected a name; for any, set allow_all_methods = true"),
            (("allowed_methods", 2), "'GET' is listed twice"),
        ],
    ),
    (
        checks_apps.check_cors,
        Cors(allowed_origins=["null", "https://a.example/"], allow_credentials=True),
        [
            (
                ("allowed_origins", 0),
                "Expected no 'null' origin with allow_credentials = true: sandboxed and file: pages "
                "all send 'null', so it identifies no site",
            ),
            (
                ("allowed_origins", 1),
                "Expected an origin without a trailing slash ('https://a.example'), got 'https://a.example/'",
            ),
            (
                ("allowed_methods",),
                "Expected at least one method (or allow_all_methods = true) when origins are allowed",
            ),
        ],
    ),
    (checks_apps.check_rule, EVERYONE, []),
    (
        checks_apps.check_rule,
        Rule(),
        [((), "Expected exactly one selector (" + ", ".join(schema.SELECTORS) + "), got none")],
    ),
    (
        checks_apps.check_rule,
        Rule(everyone=True, groups=["g"]),
        [((), "Expected exactly one selector (" + ", ".join(schema.SELECTORS) + "), got everyone, groups")],
    ),
    (
        checks_apps.check_rule,
        Rule(everyone=False),
        [(("everyone",), "Expected true (leave the rule out instead of false)")],
    ),
    (checks_apps.check_rule, Rule(emails=[]), [(("emails",), "Expected at least one value")]),
    (
        checks_apps.check_rule,
        Rule(emails=["a@x.com", "nope", "A@x.com"]),
        [
            (("emails", 1), "Expected an email address, got 'nope'"),
            (("emails", 2), "'A@x.com' is listed twice"),
        ],
    ),
    (checks_apps.check_policy, ALLOW, []),
    (
        checks_apps.check_policy,
        Policy(name="p", action="bypass", include=[], require=[Rule(groups=["g"])]),
        [
            (("include",), "Expected at least one rule"),
            (
                ("require", 0, "groups"),
                "Expected no identity selector in a bypass policy: it is decided without a user token",
            ),
        ],
    ),
    (
        checks_apps.check_policy,
        Policy(name="p", action="allow", include=[Rule(any_service_token=True)]),
        [
            (
                ("include", 0, "any_service_token"),
                "Expected service token selectors only in service_auth policies (elsewhere a user login "
                "is needed)",
            )
        ],
    ),
    (checks_apps.check_app, an_app(), []),
    (
        checks_apps.check_app,
        an_app(domains=["a.example.com:80"], upstream="ftp://x", policies=[ALLOW, ALLOW], same_site="lux"),
        [
            (("domains", 0), "Expected no port (ports are ignored when matching), got 'a.example.com:80'"),
            (("upstream",), "Expected an http:// or https:// URL with a host, got 'ftp://x'"),
            (("policies", 1, "name"), "'p' is already used by policies[0]"),
            (("same_site",), "Expected one of lax, strict, none, got 'lux'"),
        ],
    ),
    (
        checks_apps.check_app,
        an_app(cors=Cors(), options_preflight_bypass=True, policies=[]),
        [
            (("policies",), "Expected at least one policy (with none, every request is denied)"),
            (
                ("options_preflight_bypass",),
                "Expected false with cors settings: preflights are either answered at the edge (cors) "
                "or forwarded to the upstream (options_preflight_bypass), not both",
            ),
        ],
    ),
    (checks_apps.check_issuer, Issuer(iss="i", jwks_file="k.json"), []),
    (
        checks_apps.check_issuer,
        Issuer(iss="i", algorithms=["RS256", "XX"]),
        [
            ((), "Expected exactly one of jwks_file, jwks_url or secret, got none"),
            (("algorithms", 1), "Expected one of RS256, ES256, EdDSA, HS256, got 'XX'"),
        ],
    ),
    (
        checks_apps.check_issuer,
        Issuer(iss="i", secret="s" * 32, algorithms=["HS256", "ES256"]),
        [(("algorithms", 1), "Expected only HS256 with a secret")],
    ),
    (checks_apps.check_service_token, ServiceToken(name="ci", client_id="ci", secret_sha256=SHA), []),
    (
        checks_apps.check_service_token,
        ServiceToken(name="ci", client_id="c i", secret_sha256="x"),
        [
            (("client_id",), "Expected a header-safe token (no spaces), got 'c i'"),
            (("secret_sha256",), "Expected 64 lower-case hex digits (sha256 of the secret)"),
        ],
    ),
    (checks_team.check_login, Login(), []),
    (
        checks_team.check_login,
        Login(url="/x?{who}"),
        [(("url",), "Expected placeholders among {host}, {aud}, {redirect_url}, got {who}")],
    ),
    (checks_team.check_dev_user, DevUser(email="a@example.com", password=HASH), []),
    (
        checks_team.check_dev_user,
        DevUser(email="a", password="plain", groups=["", "ok"]),
        [
            (("email",), "Expected an email address, got 'a'"),
            (("password",), "Expected an scrypt hash made by `edge password` (scrypt$15$8$1$<salt>$<hash>)"),
            (("groups", 0), "Expected a non-empty printable string, got ''"),
        ],
    ),
    (
        checks_team.check_dev_provider,
        DevProvider(users=[], id="Dev"),
        [
            (("id",), "Expected 1-32 of a-z 0-9 _ - (starting with a letter or digit), got 'Dev'"),
            (("users",), "Expected at least one user"),
        ],
    ),
    (
        checks_team.check_oidc_provider,
        OidcProvider(
            id="o", issuer="http://idp.example.com", client_id="c", client_secret="s", scopes=["email"]
        ),
        [
            (
                ("issuer",),
                "Expected https:// (plain http only for an issuer on loopback), got 'http://idp.example.com'",
            ),
            (("scopes",), "Expected 'openid' among the scopes (OpenID Connect needs it)"),
        ],
    ),
    (checks_team.check_team, a_team(), []),
    (
        checks_team.check_team,
        a_team(host="*.example.com", url="https://other.example.com", store="disk"),
        [
            (("host",), "Expected a plain host name (no path, no wildcard), got '*.example.com'"),
            (("store",), "Expected one of memory, redis, got 'disk'"),
        ],
    ),
    (
        checks_team.check_team,
        a_team(url="https://other.example.com", providers=[]),
        [
            (
                ("url",),
                "Expected http(s)://auth.example.com[:port] (the team host), got 'https://other.example.com'",
            ),
            (("providers",), "Expected at least one identity provider"),
        ],
    ),
    (checks_server.check_demo, Demo(), []),
    (
        checks_server.check_demo,
        Demo(web_listen="9001"),
        [(("web_listen",), "Expected 'host:port' or '[ipv6]:port', got '9001'")],
    ),
    (
        checks_apps.check_apps,
        Config(apps=[an_app(), an_app(name="two")]),
        [
            (
                ("apps", 1, "domains", 0),
                "'api.example.com' is already covered by $.apps[0].domains[0] ('api'); "
                "one pattern, one application",
            ),
        ],
    ),
    (
        checks_apps.check_apps,
        Config(apps=[an_app(aud="t"), an_app(name="api", aud="t", domains=["b.example.com"])]),
        [
            (("apps", 1, "name"), "'api' is already the name of $.apps[0]"),
            (("apps", 1, "aud"), "'t' is already the aud of $.apps[0]"),
        ],
    ),
    (
        checks_apps.check_references,
        Config(
            apps=[
                an_app(
                    policies=[Policy(name="p", action="service_auth", include=[Rule(service_tokens=["ci"])])]
                )
            ]
        ),
        [
            (
                ("apps", 0, "policies", 0, "include", 0, "service_tokens", 0),
                "Expected the name of a [[service_tokens]] entry, got 'ci' (none are configured)",
            )
        ],
    ),
    (
        checks_team.check_team_config,
        Config(
            server=Server(workers=2, listen=["127.0.0.1:0"]),
            team=a_team(),
            apps=[an_app(domains=["*.example.com"])],
        ),
        [
            (
                ("team", "store"),
                'Expected "redis" with server.workers = 2: logouts and one-time codes must be shared by '
                'every worker ("memory" serves one worker only)',
            ),
            (
                ("team", "url"),
                "Expected a URL here: the first listener's port is 0 (chosen at start), so the team host's "
                "address cannot be derived from it",
            ),
            (
                ("apps", 0, "domains", 0),
                "'*.example.com' covers the team host 'auth.example.com', which the edge serves itself",
            ),
        ],
    ),
]


@pytest.mark.parametrize(("check", "table", "expected"), CASES)
def test_check_returns_path_and_message(check: Check, table: Any, expected: list[P]) -> None:
    assert [(p.path, p.message) for p in check(table)] == expected


def test_problems_prefix_paths_from_the_root() -> None:
    config = Config(
        server=Server(listen=[]),
        apps=[an_app(policies=[Policy(name="p", action="allow", include=[Rule()])])],
    )
    assert [key_path(p.path) for p in problems(config)] == [
        "$.server.listen",
        "$.apps[0].policies[0].include[0]",
    ]


def test_a_table_rules_wait_for_its_inner_tables() -> None:
    """A policy whose rule has no selector is not asked for the selector (it
    would fail); the rule's problem is reported instead."""
    config = Config(apps=[an_app(policies=[Policy(name="", action="allow", include=[Rule()])])])
    assert [key_path(p.path) for p in problems(config)] == ["$.apps[0].policies[0].include[0]"]


def test_rules_between_tables_wait_for_every_table() -> None:
    broken = Config(apps=[an_app(), an_app(domains=["bad:1"])])
    assert [key_path(p.path) for p in problems(broken)] == ["$.apps[1].domains[0]"]


TWO_PROBLEMS = """
[server]
listen = []

[[apps]]
name = "api"
domains = ["api.example.com"]
upstream = "ftp://nowhere"
[[apps.policies]]
name = "p"
action = "allow"
include = [{ everyone = true }]
"""


def test_two_problems_load_reports_the_first_and_both_are_known() -> None:
    """Paths come from the check itself, never from text parsed out of an
    exception: load names the first exactly as it always has, and the
    second is there too."""
    with pytest.raises(ConfigError) as info:
        loads(TWO_PROBLEMS, "edge.toml")
    assert str(info.value) == "edge.toml: $.server.listen: Expected at least one address"
    config = Config(server=Server(listen=[]), apps=[an_app(upstream="ftp://nowhere")])
    assert [(key_path(p.path), p.message) for p in problems(config)] == [
        ("$.server.listen", "Expected at least one address"),
        ("$.apps[0].upstream", "Expected an http:// or https:// URL with a host, got 'ftp://nowhere'"),
    ]


def test_schema_structs_have_no_checks() -> None:
    """Cross-field rules live in checks*.py: a __post_init__ that raised would
    reach the user through msgspec's exception text again."""
    structs = [v for v in vars(schema).values() if isinstance(v, type) and issubclass(v, msgspec.Struct)]
    assert Config in structs
    assert [s.__name__ for s in structs if "__post_init__" in vars(s)] == []


def test_no_marker_strings_in_config_package() -> None:
    """No error text is parsed for a hidden key path (the old "@@field@@" scheme)."""
    for path in CONFIG_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        strings = [
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        assert not [s for s in strings if "@@" in s], path.name


def test_derived_values_are_computed_at_load() -> None:
    config = loads(
        '[server]\nlisten = ["127.0.0.1:8080", "[::1]:9000"]\ntrusted_proxies = ["10.0.0.0/8"]\n[demo]\n'
        + '[team]\nhost = "Auth.Example.com"\n[[team.providers]]\ntype = "dev"\n'
        + f'[[team.providers.users]]\nemail = "a@example.com"\npassword = "{HASH}"\n'
        + '[[apps]]\nname = "api"\ndomains = ["API.example.com/v1/*"]\nupstream = "http://127.0.0.1:9"\n'
        + '[[apps.policies]]\nname = "p"\naction = "allow"\ninclude = [{ everyone = true }]\n'
        + 'require = [{ ip_ranges = ["192.0.2.0/24"] }]\n'
    )
    app, team, demo = config.apps[0], config.team, config.demo
    assert team is not None and demo is not None
    # Cached in the instance by load, before anyone asked.
    rule = app.policies[0].require[0]
    assert {"addresses", "trusted_networks"} <= set(vars(config.server))
    assert {"patterns", "tag"} <= set(vars(app)) and {"networks"} <= set(vars(rule))
    assert {"hostname"} <= set(vars(team)) and {"address", "web_address"} <= set(vars(demo))
    assert config.server.addresses == (ListenAddress("127.0.0.1", 8080), ListenAddress("::1", 9000))
    assert config.server.trusted_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert rule.networks == (ipaddress.ip_network("192.0.2.0/24"),)
    assert app.patterns == (DomainPattern("api.example.com", ("v1",)),)
    assert app.tag == hashlib.sha256(b"api").hexdigest()
    assert team.hostname == "auth.example.com"
    assert demo.address == ListenAddress("127.0.0.1", 9000)
    assert demo.web_address == ListenAddress("127.0.0.1", 9001)


def test_a_replaced_struct_derives_again() -> None:
    """runtime.server keeps the boot listeners with msgspec.structs.replace;
    the copy must not carry the addresses parsed from the replaced list."""
    server = loads('[server]\nlisten = ["127.0.0.1:8080"]\n').server
    assert server.addresses == (ListenAddress("127.0.0.1", 8080),)
    kept = msgspec.structs.replace(server, listen=["127.0.0.1:9090"])
    assert kept.addresses == (ListenAddress("127.0.0.1", 9090),)


def test_group_rules_are_derived_at_load() -> None:
    """A [[groups]] rule is a config struct like a policy's: its networks are
    parsed by load, not filled in later by whoever compiles it."""
    config = loads(
        '[[groups]]\nname = "office"\ninclude = [{ ip_ranges = ["198.51.100.0/24"] }]\n'
        + 'require = [{ ip_ranges = ["198.51.100.0/25"] }]\nexclude = [{ ip_ranges = ["198.51.100.7/32"] }]\n'
        + '[[apps]]\nname = "api"\ndomains = ["api.example.com"]\nupstream = "http://127.0.0.1:9"\n'
        + '[[apps.policies]]\nname = "p"\naction = "allow"\ninclude = [{ group = ["office"] }]\n'
    )
    group = config.groups[0]
    for rule in (*group.include, *group.require, *group.exclude):
        assert "networks" in vars(rule)
    assert group.include[0].networks == (ipaddress.ip_network("198.51.100.0/24"),)


def structs_in(value: object) -> Iterator[msgspec.Struct]:
    """Every config struct reachable from `value`."""
    if isinstance(value, msgspec.Struct):
        yield value
        for name in value.__struct_fields__:
            yield from structs_in(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from structs_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from structs_in(item)


def lazy_names(struct: msgspec.Struct) -> set[str]:
    """The cached properties of a struct's class: values derived from it."""
    return {
        name
        for klass in type(struct).__mro__
        for name, member in vars(klass).items()
        if isinstance(member, functools.cached_property)
    }


EVERY_DERIVED = (
    '[server]\nlisten = ["127.0.0.1:8080"]\ntrusted_proxies = ["10.0.0.0/8"]\n[demo]\n'
    '[metrics]\nlisten = "127.0.0.1:9301"\n'
    '[team]\nhost = "auth.example.com"\n[[team.providers]]\ntype = "dev"\n'
    f'[[team.providers.users]]\nemail = "a@example.com"\npassword = "{HASH}"\n'
    '[[groups]]\nname = "office"\ninclude = [{ ip_ranges = ["198.51.100.0/24"] }]\n'
    '[[apps]]\nname = "api"\ndomains = ["api.example.com"]\nupstream = "http://127.0.0.1:9"\n'
    '[[apps.policies]]\nname = "p"\naction = "allow"\ninclude = [{ group = ["office"] }]\n'
)


@pytest.mark.parametrize("source", ["every table", "conf/edge.toml", "conf/team.toml"])
def test_every_derived_value_is_computed_at_load(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only the ones named above: every cached property of every config
    struct is in the instance when load returns (edge.config.load.derive), so
    nothing parses, or reads a file, later: on the request path, or in a
    frozen struct after it was handed out. A new derived value that derive()
    forgets fails here."""
    if source == "every table":
        config = loads(EVERY_DERIVED)
    else:
        monkeypatch.chdir(Path(__file__).resolve().parents[2])
        config = load(source)
    checked = 0
    for struct in structs_in(config):
        lazy = lazy_names(struct)
        missing = lazy - set(vars(struct)) if lazy else set()
        assert not missing, f"{type(struct).__name__}: {sorted(missing)} not derived at load"
        checked += len(lazy)
    assert checked >= 8  # the walk reaches the structs that have some


def test_a_reload_keeping_boot_settings_derives_the_copies() -> None:
    """keep_restart_settings rebuilds structs with msgspec.structs.replace;
    the copies start with an empty cache and must be derived again."""
    boot = loads(EVERY_DERIVED)
    new = loads(EVERY_DERIVED.replace("127.0.0.1:8080", "127.0.0.1:8081").replace("9301", "9302"))
    kept, names = keep_restart_settings(boot, new)
    assert {"server.listen", "metrics"} <= set(names)
    for struct in structs_in(kept):
        lazy = lazy_names(struct)
        assert not lazy or not lazy - set(vars(struct)), type(struct).__name__
