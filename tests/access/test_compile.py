"""edge.access.compile reads a loaded config and builds runtime objects from
it; it never writes the config. The config's structs are frozen, and their
derived values (edge.config.schema's cached properties) are computed by
load: a compile that filled one in would be mutating a frozen struct."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from edge.access.compile import compile_config
from edge.config.load import loads

CONFIG = """
[server]
listen = ["127.0.0.1:8080"]
trusted_proxies = ["10.0.0.0/8"]

[metrics]
listen = "127.0.0.1:9100"

[team]
host = "Auth.Example.com"

[[team.providers]]
type = "dev"
[[team.providers.users]]
email = "a@example.com"
password = "scrypt$15$8$1$ajQGKN8a2FLTxJ-7BZEQ3Q$exJqGh1glOXTKS5C-Zm_XqPh-A37Hy4nMsBCA4JIiZQ"

[[lists]]
name = "staff"
type = "email"
items = ["a@example.com"]

[[lists]]
name = "vpn"
type = "ip"
items = ["203.0.113.0/24"]

[[groups]]
name = "office"
include = [{ ip_ranges = ["198.51.100.0/24"] }]
require = [{ ip_ranges = ["198.51.100.0/25"] }]
exclude = [{ ip_ranges = ["198.51.100.7/32"] }]

[[groups]]
name = "nested"
include = [{ group = ["office"] }, { ip_list = ["vpn"] }]

[[apps]]
name = "api"
domains = ["api.example.com/v1/*"]
upstream = "http://127.0.0.1:9"

[[apps.policies]]
name = "public"
action = "bypass"
include = [{ ip_ranges = ["192.0.2.0/24"] }]

[[apps.policies]]
name = "p"
action = "allow"
include = [{ group = ["nested"] }, { email_list = ["staff"] }]
exclude = [{ ip_ranges = ["192.0.2.9/32"] }]
"""


def structs(value: Any, path: str = "$") -> Iterator[tuple[str, msgspec.Struct]]:
    """Every struct inside `value`, with its key path."""
    if isinstance(value, msgspec.Struct):
        yield path, value
        for field in value.__struct_fields__:
            yield from structs(getattr(value, field), f"{path}.{field}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from structs(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from structs(item, f"{path}.{key}")


def state(config: msgspec.Struct) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each struct's fields and its cached derived values (its __dict__)."""
    return {path: (msgspec.to_builtins(s), dict(getattr(s, "__dict__", {}))) for path, s in structs(config)}


def test_compiling_a_loaded_config_writes_none_of_its_structs() -> None:
    config = loads(CONFIG)
    before = state(config)
    assert any(derived for _, derived in before.values())  # the walk sees the derived values
    compile_config(config)
    assert state(config) == before
