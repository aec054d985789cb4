"""Reading a config: decode, check, derive once, hand back a `Config`.

Loading never touches the network or the event loop and returns plain data;
every failure is a `ConfigError` naming the file and the key path
(``conf/edge.toml: $.server.header_timeout: Expected float >= 0.1, got -1``).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from edge.config.checks import problems
from edge.config.errors import ConfigError, format_problem, format_validation_error
from edge.config.schema import Config


def loads(text: str | bytes, source: str = "<config>") -> Config:
    """Decode and validate TOML text; raise ConfigError naming `source`."""
    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(format_validation_error(source, raw, exc)) from None
    first = next(problems(config), None)
    if first is not None:
        raise ConfigError(format_problem(source, first))
    _derive(config)
    return config


def load(path: str | Path) -> Config:
    """Read and validate the config file at `path`."""
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return loads(text, source)


def _derive(config: Config) -> None:
    """Parse every derived value now, once: nothing downstream parses the
    strings again, and a parser that disagreed with its check fails here, at
    load, not when a listener or a route is built."""
    config.server.addresses  # noqa: B018 - a cached property: computing it is the point
    config.server.trusted_networks  # noqa: B018
    for app in config.apps:
        app.tag  # noqa: B018
        app.patterns  # noqa: B018
        for policy in app.policies:
            for rule in (*policy.include, *policy.require, *policy.exclude):
                rule.networks  # noqa: B018
    if config.team is not None:
        config.team.hostname  # noqa: B018
    if config.demo is not None:
        config.demo.address  # noqa: B018
        config.demo.web_address  # noqa: B018
    if config.metrics is not None:
        config.metrics.address  # noqa: B018
