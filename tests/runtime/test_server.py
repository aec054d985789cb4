"""edge.runtime.server, without sockets: what a reload may change in a
running worker, and what stays as the edge started."""

from __future__ import annotations

import pytest

from edge.config.load import loads
from edge.config.schema import Config
from edge.runtime.server import keep_restart_settings

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
