"""What every check yields and the small rules the checks share.

A `Problem` is a key path relative to the table a check was given and a
message ready for a user; `under` puts a table's problems under its key.
The rules here (a name, one of some choices, no duplicates, a web URL) and
the walks over every policy and group rule are used by the checks of
several tables (`checks_apps`, `checks_groups`, `checks_team`,
`checks_server`); none of them reads a file or raises to report a problem.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from urllib.parse import urlsplit

from msgspec import Struct

from edge.config.schema import Config, Group, Rule

# Keys and list indexes from the table a check was given, e.g. ("listen", 0).
KeyPath = tuple[str | int, ...]


class Problem(Struct, frozen=True):
    """Why a config cannot be used: where (`path`) and what (`message`)."""

    path: KeyPath
    message: str


Problems = Iterator[Problem]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}\Z")


def under(prefix: KeyPath, found: Iterable[Problem]) -> Problems:
    for problem in found:
        yield Problem(prefix + problem.path, problem.message)


# -- small rules shared by several tables --------------------------------------


def check_name(key: str, value: str) -> Problems:
    if not _NAME_RE.match(value):
        yield Problem(
            (key,),
            f"Expected letters, digits, ' ', '.', '_' or '-' (1-128, starting with a letter or digit), "
            f"got {value!r}",
        )


def check_choice(path: KeyPath, value: str, choices: tuple[str, ...]) -> Problems:
    if value not in choices:
        yield Problem(path, f"Expected one of {', '.join(choices)}, got {value!r}")


def check_unique(key: str, values: list[str], fold: bool = False) -> Problems:
    seen: set[str] = set()
    for i, value in enumerate(values):
        folded = value.lower() if fold else value
        if folded in seen:
            yield Problem((key, i), f"{value!r} is listed twice")
        seen.add(folded)


def check_unique_attr(table: str, values: list[str], key: str, scope: str = "$.") -> Problems:
    """`scope` prefixes the earlier entry's path in the message: "$." from
    Config, "" from a nested table (the wording users have always seen)."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            yield Problem((table, i, key), f"{value!r} is already used by {scope}{table}[{seen[value]}]")
        else:
            seen[value] = i


def check_web_url(key: str, url: str) -> Problems:
    """An absolute http(s) URL a browser is sent to or loads ("" = none)."""
    if not url:
        return
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not url.isascii()
        or not url.isprintable()
        or " " in url
    ):
        yield Problem((key,), f"Expected an absolute http:// or https:// URL, got {url!r}")


def known_names(names: Collection[str]) -> str:
    return f" (known: {', '.join(sorted(names))})" if names else " (none are configured)"


# -- every rule of the policies and groups -------------------------------------


Reference = tuple[KeyPath, Rule]


def policy_rules(config: Config) -> Iterator[tuple[KeyPath, str, Rule]]:
    """Every rule of every application policy: (path, policy action, rule)."""
    for i, app in enumerate(config.apps):
        for j, policy in enumerate(app.policies):
            for part in ("include", "require", "exclude"):
                for k, rule in enumerate(getattr(policy, part)):
                    yield ("apps", i, "policies", j, part, k), policy.action, rule


def group_rules(group: Group, g: int) -> Iterator[Reference]:
    for part in ("include", "require", "exclude"):
        for k, rule in enumerate(getattr(group, part)):
            yield ("groups", g, part, k), rule


def every_rule(config: Config) -> Iterator[Reference]:
    """Every rule of the application policies, then of the groups."""
    for path, _, rule in policy_rules(config):
        yield path, rule
    for g, group in enumerate(config.groups):
        yield from group_rules(group, g)
