"""The checks of [[groups]] and [[lists]] and of the references to them:
names unique, every group or list a rule names exists (a list of the
selector's type), no cycle of groups, and no selector in a group that a
policy using it cannot decide. `list_entry_problem` also serves `load`,
which reads a list's file.
"""

from __future__ import annotations

from edge.config.problem import (
    Problem,
    Problems,
    check_choice,
    check_name,
    check_unique_attr,
    every_rule,
    group_rules,
    known_names,
    policy_rules,
)
from edge.config.schema import IDENTITY_SELECTORS, LIST_TYPES, SERVICE_SELECTORS, Config, Group, List, Rule
from edge.config.syntax import cidr_problem, email_problem

# -- [[groups]] and [[lists]] ------------------------------------------------------


def check_group(group: Group) -> Problems:
    """Its rules must have passed `check_rule`; references: `check_groups_and_lists`."""
    yield from check_name("name", group.name)
    if not group.include:
        yield Problem(("include",), "Expected at least one rule")


def check_list(entry: List) -> Problems:
    """The list's own keys; a file's entries are read and checked by `load`."""
    yield from check_name("name", entry.name)
    yield from check_choice(("type",), entry.type, LIST_TYPES)
    given = [k for k in ("items", "file") if getattr(entry, k) is not None]
    if len(given) != 1:
        yield Problem((), "Expected exactly one of items or file, got " + (" and ".join(given) or "none"))
        return
    if entry.file is not None and not entry.file.strip():
        yield Problem(("file",), "Expected a file path")
    if entry.items is not None and entry.type in LIST_TYPES:
        for i, item in enumerate(entry.items):
            problem = list_entry_problem(entry.type, item)
            if problem is not None:
                yield Problem(("items", i), problem)


def list_entry_problem(kind: str, value: str) -> str | None:
    """What is wrong with one entry of a list of type `kind` ("email" or
    "ip": an address or a network), or None."""
    if kind == "email":
        return email_problem(value)
    return cidr_problem(value)


# -- rules between top-level tables (every table passed its own checks) -----------


def check_groups_and_lists(config: Config) -> Problems:
    """Group and list names are unique and every reference resolves: to a
    group (no cycle), to a list of the selector's type; a group has no
    selector that a policy using it cannot use: no identity selector under a
    bypass or service_auth policy, no service token selector under any but
    service_auth (as `check_policy` refuses them inline)."""
    yield from check_unique_attr("groups", [g.name for g in config.groups], "name")
    yield from check_unique_attr("lists", [x.name for x in config.lists], "name")
    groups = {g.name: g for g in config.groups}
    kinds = {x.name: x.type for x in config.lists}
    clean = True
    for path, rule in every_rule(config):
        for problem in _reference_problems(rule, groups, kinds):
            clean = False
            yield Problem(path + problem.path, problem.message)
    if not clean:
        return
    for g, group in enumerate(config.groups):
        for path, rule in group_rules(group, g):
            for m, name in enumerate(rule.group or ()):
                cycle = _cycle(groups, group.name, name)
                if cycle is not None:
                    yield Problem(
                        (*path, "group", m), f"Expected no cycle of groups, got {' -> '.join(cycle)}"
                    )
    for path, action, rule in policy_rules(config):
        for m, name in enumerate(rule.group or ()):
            used = _selectors(groups, name)
            if action != "service_auth" and SERVICE_SELECTORS & used:
                yield Problem(
                    (*path, "group", m),
                    f"Expected no service token selector in group {name!r}: it is used by "
                    f"{'an' if action == 'allow' else 'a'} {action} policy (service tokens count only "
                    "in service_auth policies)",
                )
            if action in ("bypass", "service_auth") and IDENTITY_SELECTORS & used:
                yield Problem(
                    (*path, "group", m),
                    f"Expected no identity selector in group {name!r}: it is used by a {action} policy, "
                    "which is decided without a user token",
                )


def _reference_problems(rule: Rule, groups: dict[str, Group], kinds: dict[str, str]) -> Problems:
    for m, name in enumerate(rule.group or ()):
        if name not in groups:
            yield Problem(
                ("group", m), f"Expected the name of a [[groups]] entry, got {name!r}{known_names(groups)}"
            )
    for key, kind in (("email_list", "email"), ("ip_list", "ip")):
        for m, name in enumerate(getattr(rule, key) or ()):
            if name not in kinds:
                yield Problem(
                    (key, m), f"Expected the name of a [[lists]] entry, got {name!r}{known_names(kinds)}"
                )
            elif kinds[name] != kind:
                yield Problem(
                    (key, m), f"Expected a list of type {kind!r}, got {name!r} of type {kinds[name]!r}"
                )


def _cycle(groups: dict[str, Group], start: str, name: str) -> list[str] | None:
    """The names from `start` back to itself through `name`, if there is
    such a cycle (others are reported at their own groups). Depth-first,
    each group visited once; references were checked to exist."""
    visited: set[str] = set()

    def walk(current: str, trail: list[str]) -> list[str] | None:
        if current == start:
            return [*trail, current]
        if current in visited:
            return None
        visited.add(current)
        for rule in _rules_of(groups[current]):
            for inner in rule.group or ():
                found = walk(inner, [*trail, current])
                if found is not None:
                    return found
        return None

    return walk(name, [start])


def _rules_of(group: Group) -> list[Rule]:
    return [*group.include, *group.require, *group.exclude]


def _selectors(groups: dict[str, Group], name: str) -> set[str]:
    """Every selector a group uses, through the groups it references."""
    found: set[str] = set()
    todo, seen = [name], {name}
    while todo:
        for rule in _rules_of(groups[todo.pop()]):
            found.add(rule.selector)
            for inner in rule.group or ():
                if inner not in seen:
                    seen.add(inner)
                    todo.append(inner)
    return found
