"""Reading a config: decode, check, derive once, hand back a `Config`.

Loading never touches the network or the event loop and returns plain data;
every failure is a `ConfigError` naming the file and the key path
(``conf/edge.toml: $.server.header_timeout: Expected float >= 0.1, got -1``).

The files of `[[lists]]` are read here, on every load (a reload reads them
again), into the list's `items`; a bad line names the list file and line.
A caller may pass `files` to `loads`, a dict of those files' bytes by path
(as the config writes it): a path found there is taken from it, not from the
disk; one not found is read and added. So a supervisor checking a reload
passes an empty dict and learns the very bytes it checked, and its workers,
given them with the config text (edge.runtime.snapshots), load exactly those
and read nothing: the same text names the same paths.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from edge.config.checks import problems
from edge.config.checks_groups import list_entry_problem
from edge.config.checks_team import template_problem
from edge.config.errors import ConfigError, format_validation_error
from edge.config.problem import KeyPath
from edge.config.schema import Config, List, TemplateReadError


def loads(text: str | bytes, source: str = "<config>", files: dict[str, bytes] | None = None) -> Config:
    """Decode and validate TOML text; raise ConfigError naming `source`.
    `files`: the list files' bytes by path, taken instead of the disk and
    added to as files are read (see the module docstring)."""
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
        raise ConfigError.at(first.path, first.message, source)
    if any(entry.file is not None for entry in config.lists):
        known = {} if files is None else files
        lists = [_read_list(entry, i, source, known) for i, entry in enumerate(config.lists)]
        config = msgspec.structs.replace(config, lists=lists)
    derive(config)
    _read_templates(config, source)
    return config


def _read_list(entry: List, index: int, source: str, files: dict[str, bytes]) -> List:
    """A file list with its entries in `items`: one a line, blank lines and
    `#` comments (whole-line or trailing) skipped. The file's bytes come from
    `files` if it holds them, else from the disk (and are added to it)."""
    if entry.file is None:
        return entry
    where: KeyPath = ("lists", index, "file")
    try:
        data = files.get(entry.file)
        if data is None:
            data = files[entry.file] = Path(entry.file).read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError.at(where, f"cannot read {entry.file!r}: {reason}", source) from None
    items: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        value = line.partition("#")[0].strip()
        if not value:
            continue
        problem = list_entry_problem(entry.type, value)
        if problem is not None:
            raise ConfigError.at(where, f"{entry.file}:{number}: {problem}", source)
        items.append(value)
    return msgspec.structs.replace(entry, items=items)


def load(path: str | Path) -> Config:
    """Read and validate the config file at `path`."""
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return loads(text, source)


def derive(config: Config) -> None:
    """Parse every derived value now, once: nothing downstream parses the
    strings again (nor writes a frozen struct's cache: compiling only reads),
    and a parser that disagreed with its check fails here, at load, not when
    a listener or a route is built. Whoever rebuilds a struct with
    `msgspec.structs.replace` (a reload keeping the boot settings) calls it
    again: the copy starts with an empty cache."""
    config.server.addresses  # noqa: B018 - a cached property: computing it is the point
    config.server.trusted_networks  # noqa: B018
    for app in config.apps:
        app.tag  # noqa: B018
        app.patterns  # noqa: B018
        for policy in app.policies:
            for rule in (*policy.include, *policy.require, *policy.exclude):
                rule.networks  # noqa: B018
    for group in config.groups:
        for rule in (*group.include, *group.require, *group.exclude):
            rule.networks  # noqa: B018
    if config.team is not None:
        config.team.hostname  # noqa: B018
    if config.demo is not None:
        config.demo.address  # noqa: B018
        config.demo.web_address  # noqa: B018
    if config.metrics is not None:
        config.metrics.address  # noqa: B018


def _read_templates(config: Config, source: str) -> None:
    """Read the team's page templates now, once (a reload reads them again):
    an unreadable file or an unknown placeholder is a config error, never a
    broken page later."""
    if config.team is None:
        return
    templates = config.team.branding.templates
    where: KeyPath = ("team", "branding", "templates")
    try:
        texts = templates.texts
    except TemplateReadError as exc:
        raise ConfigError.at((*where, exc.page), exc.reason, source) from None
    for page, text in texts.items():
        problem = template_problem(text)
        if problem is not None:
            raise ConfigError.at((*where, page), f"{getattr(templates, page)}: {problem}", source)
