"""edge.runtime.server, without sockets: what a reload may change in a
running worker, and what stays as the edge started."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge.config.errors import ConfigError
from edge.config.load import loads
from edge.config.problem import Problem
from edge.config.schema import TLS, Config
from edge.login.keydir import MANIFEST
from edge.login.service import existing_team_keys
from edge.runtime.server import ServerState, keep_restart_settings, make_ssl_context

BASE = """
[server]
listen = ["127.0.0.1:0"]
max_connections = {max_connections}
header_timeout = {header_timeout}

[team]
host = "auth.localhost"
url = "http://auth.localhost:8080"
key_dir = "{key_dir}"

[[team.providers]]
type = "dev"
id = "dev"
users = [{{ email = "alice@example.com", password = "{password}" }}]
"""


# conf/edge.toml's demo user: any valid hash will do, none is checked here.
PASSWORD = "scrypt$15$8$1$ajQGKN8a2FLTxJ-7BZEQ3Q$exJqGh1glOXTKS5C-Zm_XqPh-A37Hy4nMsBCA4JIiZQ"


def config(key_dir: str = "var/keys", max_connections: int = 100, header_timeout: float = 10.0) -> Config:
    text = BASE.format(
        key_dir=key_dir, max_connections=max_connections, header_timeout=header_timeout, password=PASSWORD
    )
    return loads(text, "edge.toml")


def test_a_reload_applies_what_a_worker_can_change() -> None:
    new, kept = keep_restart_settings(config(), config(header_timeout=5.0))
    assert (new.server.header_timeout, kept) == (5.0, [])


@pytest.mark.parametrize(
    ("changed", "key"),
    [
        ({"max_connections": 5}, "server.max_connections"),
        # Every worker seals one-time codes and login state with the key
        # directory's secret: a worker restarted after a reload that moved it
        # would open none of what the others sealed.
        ({"key_dir": "var/other-keys"}, "team.key_dir"),
    ],
)
def test_restart_only_settings_stay_as_the_edge_started(changed: dict[str, object], key: str) -> None:
    boot = config()
    new, kept = keep_restart_settings(boot, config(**changed))  # type: ignore[arg-type]
    assert key in kept
    assert new.server.max_connections == boot.server.max_connections
    assert new.team is not None and boot.team is not None
    assert new.team.key_dir == boot.team.key_dir


def test_a_reloaded_config_carries_its_derived_values() -> None:
    """keep_restart_settings rebuilds structs with msgspec.structs.replace,
    whose copies start with no cached derived value: they are derived again
    there, as load does, not parsed later by whoever first reads them."""
    boot = config()
    new, kept = keep_restart_settings(boot, config(max_connections=5, key_dir="var/other-keys"))
    assert {"server.max_connections", "team.key_dir"} <= set(kept)
    assert new.team is not None and new.server is not boot.server and new.team is not boot.team
    assert {"addresses", "trusted_networks"} <= set(vars(new.server))
    assert "hostname" in vars(new.team)
    assert new.server.addresses == boot.server.addresses


OIDC_WITH_MISSING_CA = """
[[team.providers]]
type = "oidc"
id = "sso"
issuer = "https://idp.example.com"
client_id = "edge"
client_secret = "s"
ca_file = "{ca_file}"
"""


def test_an_unusable_provider_is_a_config_problem_naming_the_file(tmp_path: Path) -> None:
    """The login service's config errors are Problems (key path + message),
    formatted by edge.config.errors like the load's, with the file named once."""
    missing = tmp_path / "missing-ca.pem"
    text = BASE.format(
        key_dir=tmp_path / "keys", max_connections=100, header_timeout=10.0, password=PASSWORD
    ) + OIDC_WITH_MISSING_CA.format(ca_file=missing)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ConfigError) as info:
            ServerState(loads(text, "edge.toml"), loop, source="edge.toml")
    finally:
        loop.close()
    message = f"CA file {missing}: [Errno 2] No such file or directory"
    assert str(info.value) == f"edge.toml: $.team.providers[1]: {message}"
    assert info.value.problem == Problem(("team", "providers", 1), message)


def test_an_unusable_key_dir_is_a_config_problem_naming_the_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / MANIFEST).write_text("not a manifest\n")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ConfigError) as info:
            ServerState(config(key_dir=str(keys)), loop, source="edge.toml")
    finally:
        loop.close()
    assert str(info.value).startswith("edge.toml: $.team.key_dir: ")
    assert info.value.problem is not None and info.value.problem.path == ("team", "key_dir")
    with pytest.raises(ConfigError) as again:
        existing_team_keys(config(key_dir=str(keys)), "edge.toml")
    assert str(again.value) == str(info.value)
    assert again.value.problem == info.value.problem


def test_unusable_tls_files_are_config_problems(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as info:
        make_ssl_context(TLS(cert=missing, key=missing))
    assert str(info.value).startswith(f"$.server.tls: cannot load cert {missing!r} / key {missing!r}: ")
    assert info.value.problem is not None and info.value.problem.path == ("server", "tls")
    assert str(info.value.named("edge.toml")) == f"edge.toml: {info.value}"
