"""Clauses and groups: a policy's or a group's include, require and
exclude rules compiled (`compile_clause`), groups spliced into them where
the result is the same, else nested as one `GroupRule`.

Invariants:
- Compiled once per configuration (`Catalog`: each group once per label
  prefix it is used under); evaluation only reads.
- A group that is a clause's only include rule, or one of include rules
  only used from an include or an exclude, or one with a single include
  rule used from a require, is spliced into the clause (its own require
  and exclude rules joining the clause's: the same logic, unknowns
  included); any other group is one `GroupRule` evaluated like a policy.
- A group's unknowns follow the position it is used in: in an include or a
  require an undecidable group does not match, in an exclude it does (its
  own exclude rules take the opposite polarity), so an unknown never opens
  access through a group either.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.access.lists import Lists
from edge.access.rules import CompiledRule, compile_rule
from edge.access.subject import Subject
from edge.config.schema import Group, List, Rule


class Clause:
    """Include, require and exclude rules: a policy's, or a group's."""

    __slots__ = ("include", "require", "exclude")

    def __init__(
        self,
        include: Sequence[CompiledRule],
        require: Sequence[CompiledRule] = (),
        exclude: Sequence[CompiledRule] = (),
    ) -> None:
        self.include = tuple(include)
        self.require = tuple(require)
        self.exclude = tuple(exclude)

    def explain(self, s: Subject, unknown: bool, indent: str) -> list[str]:
        """The rules evaluated, as `match` evaluates them, one line each."""
        lines: list[str] = []
        for rule in self.include:
            matched, found = rule.explain("include", s, unknown, indent)
            lines += found
            if matched:
                break
        else:
            return lines
        for rule in self.require:
            matched, found = rule.explain("require", s, unknown, indent)
            lines += found
            if not matched:
                return lines
        for rule in self.exclude:
            matched, found = rule.explain("exclude", s, not unknown, indent)
            lines += found
            if matched:
                return lines
        return lines


class GroupRule(CompiledRule):
    """A group that could not be spliced: any include, every require, no
    exclude, with the unknowns of the position it is used in."""

    __slots__ = ("clause",)

    def __init__(self, label: str, clause: Clause) -> None:
        super().__init__("group", label)
        self.clause = clause

    def match(self, s: Subject, unknown: bool) -> bool:
        clause = self.clause
        for rule in clause.include:
            if rule.match(s, unknown):
                break
        else:
            return False
        for rule in clause.require:
            if not rule.match(s, unknown):
                return False
        for rule in clause.exclude:  # noqa: SIM110 - a loop: all() over a generator costs more
            if rule.match(s, not unknown):
                return False
        return True

    def explain(self, part: str, s: Subject, unknown: bool, indent: str) -> tuple[bool, list[str]]:
        matched = self.match(s, unknown)
        head = f"{indent}{part} {self.label}: {'matched' if matched else 'not matched'}"
        return matched, [head, *self.clause.explain(s, unknown, indent + "  ")]


class Catalog:
    """A configuration's groups and lists, compiled once and shared by
    every application's policies (a 100 000-entry list is one set)."""

    __slots__ = ("groups", "lists", "_clauses")

    def __init__(self, groups: Sequence[Group] = (), lists: Sequence[List] = ()) -> None:
        self.groups = {g.name: g for g in groups}
        self.lists = Lists(lists)
        self._clauses: dict[tuple[str, str], Clause] = {}

    def clause(self, name: str, prefix: str) -> Clause:
        """Group `name` compiled, its rules labelled under `prefix`."""
        key = (name, prefix)
        found = self._clauses.get(key)
        if found is None:
            group = self.groups[name]
            found = self._clauses[key] = compile_clause(
                group.include, group.require, group.exclude, self, prefix
            )
        return found


EMPTY_CATALOG = Catalog()


def compile_clause(
    include: Sequence[Rule],
    require: Sequence[Rule],
    exclude: Sequence[Rule],
    catalog: Catalog = EMPTY_CATALOG,
    prefix: str = "",
) -> Clause:
    """Rules compiled, groups spliced in where the result is the same (see
    the invariants); a group referenced here was checked to exist and not
    to cycle."""
    inc: list[CompiledRule] = []
    req: list[CompiledRule] = []
    exc: list[CompiledRule] = []
    if len(include) == 1 and include[0].group is not None:
        # The group is all there is to include: its rules become the clause's.
        group = _group(include[0].group, catalog, prefix)
        inc, req, exc = list(group.include), list(group.require), list(group.exclude)
        include = ()
    inc += _any_of(include, catalog, prefix)
    for rule in require:
        if rule.group is None:
            req.append(compile_rule(rule, catalog.lists, prefix))
            continue
        group = _group(rule.group, catalog, prefix)
        if len(group.include) == 1:
            req += (*group.include, *group.require)
            exc += group.exclude
        else:
            req.append(_nested(rule.group, catalog, prefix))
    exc += _any_of(exclude, catalog, prefix)
    return Clause(inc, req, exc)


def _any_of(rules: Sequence[Rule], catalog: Catalog, prefix: str) -> list[CompiledRule]:
    """Include or exclude rules (any of them counts): a group of include
    rules only joins them, any other group is one nested rule."""
    found: list[CompiledRule] = []
    for rule in rules:
        if rule.group is None:
            found.append(compile_rule(rule, catalog.lists, prefix))
            continue
        group = _group(rule.group, catalog, prefix)
        if group.require or group.exclude:
            found.append(_nested(rule.group, catalog, prefix))
        else:
            found += group.include
    return found


def _group(names: Sequence[str], catalog: Catalog, prefix: str) -> Clause:
    """`{ group = [names] }` as one clause, labels under `prefix`: any of
    the groups. Groups of include rules only are spliced into the include."""
    if len(names) == 1:
        return catalog.clause(names[0], f"{prefix}group {names[0]} -> ")
    include: list[CompiledRule] = []
    for name in names:
        clause = catalog.clause(name, f"{prefix}group {name} -> ")
        if clause.require or clause.exclude:
            include.append(GroupRule(f"{prefix}group {name}", catalog.clause(name, "")))
        else:
            include += clause.include
    return Clause(include)


def _nested(names: Sequence[str], catalog: Catalog, prefix: str) -> GroupRule:
    """The group(s) as one rule; the rules inside are labelled relative to
    it (`edge explain` shows them indented under it)."""
    if len(names) == 1:
        return GroupRule(f"{prefix}group {names[0]}", catalog.clause(names[0], ""))
    return GroupRule(f"{prefix}group {', '.join(names)}", _group(names, catalog, ""))
