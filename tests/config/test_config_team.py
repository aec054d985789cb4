"""The [team] and [demo] tables: what is accepted, and the exact errors."""

from __future__ import annotations

import pytest

from edge.config.errors import ConfigError
from edge.config.load import loads
from edge.config.schema import DevProvider, OidcProvider
from edge.login.passwords import hash_password

HASH = hash_password("pw", log2_n=4)
DEV = f'[[team.providers]]\ntype = "dev"\nusers = [{{ email = "a@example.com", password = "{HASH}" }}]\n'
OIDC = (
    '[[team.providers]]\ntype = "oidc"\nid = "sso"\nissuer = "https://idp.example.com"\n'
    'client_id = "edge"\nclient_secret = "s"\n'
)
TEAM = '[team]\nhost = "auth.localhost"\n'
APP = '[[apps]]\nname = "a"\ndomains = ["{d}"]\nupstream = "http://127.0.0.1:9"\n' + (
    '[[apps.policies]]\nname = "p"\naction = "allow"\ninclude = [{ everyone = true }]\n'
)


def test_a_team_with_both_providers() -> None:
    config = loads(TEAM + DEV + OIDC)
    assert config.team is not None
    dev, oidc = config.team.providers
    assert isinstance(dev, DevProvider) and isinstance(oidc, OidcProvider)
    assert (config.team.store, config.team.algorithm, config.team.key_dir) == ("memory", "ES256", "var/keys")
    assert oidc.scopes == ["openid", "email", "profile"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TEAM, "$.team: missing required key 'providers'"),
        (TEAM + "providers = []\n", "$.team.providers: Expected at least one identity provider"),
        (
            TEAM + '[[team.providers]]\ntype = "ldap"\n',
            "$.team.providers[0].type: Expected one of dev, oidc, got 'ldap'",
        ),
        (
            TEAM + DEV.replace(HASH, "hunter2"),
            "$.team.providers[0].users[0].password: Expected an scrypt hash made by `edge password`",
        ),
        (TEAM + DEV + DEV, "$.team.providers[1].id: 'dev' is already used by providers[0]"),
        (
            TEAM + OIDC.replace("https://idp.example.com", "http://idp.example.com"),
            "$.team.providers[0].issuer: Expected https:// (plain http only for an issuer on loopback)",
        ),
        (
            TEAM + OIDC.replace("scopes", "x") + 'scopes = ["email"]\n',
            "$.team.providers[0].scopes: Expected 'openid'",
        ),
        ('[team]\nhost = "*.localhost"\n' + DEV, "$.team.host: Expected a plain host name"),
        (
            TEAM + 'url = "http://other.localhost:8080"\n' + DEV,
            "$.team.url: Expected http(s)://auth.localhost[:port]",
        ),
        (TEAM + 'store = "etcd"\n' + DEV, "$.team.store: Expected one of memory, redis, got 'etcd'"),
        (TEAM + 'algorithm = "HS256"\n' + DEV, "$.team.algorithm: Expected one of ES256, RS256, got 'HS256'"),
        (
            "[server]\nworkers = 2\n" + TEAM + DEV,
            '$.team.store: Expected "redis" with server.workers = 2',
        ),
        (
            '[server]\nlisten = ["127.0.0.1:0"]\n' + TEAM + DEV,
            "$.team.url: Expected a URL here: the first listener's port is 0",
        ),
        (
            TEAM + DEV + APP.replace("{d}", "auth.localhost/x"),
            "$.apps[0].domains[0]: 'auth.localhost/x' covers the team host",
        ),
        (
            TEAM + DEV + APP.replace("{d}", "*.localhost"),
            "$.apps[0].domains[0]: '*.localhost' covers the team host",
        ),
        ('[demo]\nlisten = "nowhere"\n', "$.demo.listen: Expected 'host:port'"),
        # An empty claim name would refuse every sign-in (no email) or read no groups.
        (
            TEAM + OIDC + 'email_claim = ""\n',
            '$.team.providers[0].email_claim: Expected str of length >= 1, got ""',
        ),
        (
            TEAM + OIDC + 'groups_claim = ""\n',
            '$.team.providers[0].groups_claim: Expected str of length >= 1, got ""',
        ),
        (
            TEAM + OIDC + 'groups_claim = "realm_access..roles"\n',
            "$.team.providers[0].groups_claim: Expected str matching",
        ),
    ],
)
def test_team_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, "t.toml")
    assert str(info.value).startswith(f"t.toml: {expected}"), str(info.value)


def test_redis_with_several_workers_is_fine() -> None:
    config = loads("[server]\nworkers = 4\n" + TEAM + 'store = "redis"\n' + DEV)
    assert config.team is not None and config.team.store == "redis"
