"""Compiled rules: one class per selector, each a lookup in a set or a
`NetworkTable` built at config compile time; `compile_rule` builds one.

Invariants:
- Compiled once per configuration; evaluation only reads.
- `match(subject, unknown)` returns `unknown` when the subject lacks what
  the rule looks at (no client IP, no identity, no verified certificate):
  the caller passes False in include and require, True in exclude, so an
  unknown never opens access.
- Labels and miss reasons are formatted at compile time: a decision costs
  no string formatting (`fact` and `explain` do, for traces only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from edge.access.lists import EMPTY_LISTS, Lists, NetworkTable, entries
from edge.access.subject import Subject
from edge.config.schema import Rule


class CompiledRule(ABC):
    """One selector. `match(subject, unknown)` returns `unknown` when the
    subject lacks what the selector looks at. `label` names it in traces,
    through the groups it came from (``group staff -> emails``)."""

    __slots__ = ("selector", "label", "require_miss", "exclude_miss")

    def __init__(self, selector: str, label: str) -> None:
        self.selector = selector
        self.label = label
        # Precomputed so a decision costs no string formatting.
        self.require_miss = f"require {label}: not matched"
        self.exclude_miss = f"exclude {label}: matched"

    @abstractmethod
    def match(self, s: Subject, unknown: bool) -> bool:
        """Whether the subject matches; `unknown` when it cannot be told."""

    def fact(self, s: Subject, matched: bool) -> str:
        """What the subject showed this rule, for `edge explain` (never on
        the request path)."""
        return "matched" if matched else "not matched"

    def explain(self, part: str, s: Subject, unknown: bool, indent: str) -> tuple[bool, list[str]]:
        matched = self.match(s, unknown)
        return matched, [f"{indent}{part} {self.label}: {self.fact(s, matched)}"]


def _no_identity(matched: bool) -> str:
    return f"no user identity (unknown: counts as {'matched' if matched else 'not matched'})"


def _listed(matched: bool, where: str) -> str:
    return where if matched else f"not {where}"


class Everyone(CompiledRule):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        return True


class Emails(CompiledRule):
    __slots__ = ("values",)

    def __init__(self, selector: str, label: str, values: frozenset[str]) -> None:
        super().__init__(selector, label)
        self.values = values

    def match(self, s: Subject, unknown: bool) -> bool:
        ident = s.identity
        return unknown if ident is None else ident.email_lower in self.values

    def fact(self, s: Subject, matched: bool) -> str:
        if s.identity is None:
            return _no_identity(matched)
        return f"{s.identity.email or '(no email)'} {_listed(matched, 'listed')}"


class EmailList(Emails):
    """`email_list`: the same lookup as `emails`, in a set shared by every
    rule naming the list."""

    __slots__ = ()

    def fact(self, s: Subject, matched: bool) -> str:
        if s.identity is None:
            return _no_identity(matched)
        where = f"in list ({entries(len(self.values))})"
        return f"{s.identity.email or '(no email)'} {_listed(matched, where)}"


class EmailDomains(Emails):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        ident = s.identity
        return unknown if ident is None else ident.email_domain in self.values

    def fact(self, s: Subject, matched: bool) -> str:
        if s.identity is None:
            return _no_identity(matched)
        return f"domain {s.identity.email_domain or '(none)'} {_listed(matched, 'listed')}"


class Groups(Emails):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        ident = s.identity
        return unknown if ident is None else not self.values.isdisjoint(ident.groups)

    def fact(self, s: Subject, matched: bool) -> str:
        if s.identity is None:
            return _no_identity(matched)
        return f"token groups [{', '.join(sorted(s.identity.groups)[:10])}] {_listed(matched, 'listed')}"


class AuthMethods(Emails):
    """`auth_method`: any of the `amr` values the sign-in reported."""

    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        ident = s.identity
        return unknown if ident is None else not self.values.isdisjoint(ident.amr)

    def fact(self, s: Subject, matched: bool) -> str:
        if s.identity is None:
            return _no_identity(matched)
        return f"amr [{', '.join(sorted(s.identity.amr)[:10])}] {_listed(matched, 'listed')}"


class LoginMethods(Emails):
    """`login_method`: the identity provider of the sign-in (a token
    without one never matches)."""

    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        ident = s.identity
        return unknown if ident is None else ident.idp in self.values

    def fact(self, s: Subject, matched: bool) -> str:
        if s.identity is None:
            return _no_identity(matched)
        return f"provider {s.identity.idp or '(none in the token)'} {_listed(matched, 'listed')}"


class ServiceTokenNames(Emails):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        return s.service_token in self.values

    def fact(self, s: Subject, matched: bool) -> str:
        return f"service token {s.service_token or '(none)'} {_listed(matched, 'listed')}"


class AnyServiceToken(CompiledRule):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        return s.service_token is not None


def _no_certificate(matched: bool) -> str:
    return f"no verified client certificate (unknown: counts as {'matched' if matched else 'not matched'})"


class ValidCertificate(CompiledRule):
    """The connection verified a client certificate against client_ca."""

    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        return unknown if s.client_cn is None else True

    def fact(self, s: Subject, matched: bool) -> str:
        if s.client_cn is None:
            return _no_certificate(matched)
        return "verified client certificate"


class CommonName(Emails):
    """The verified certificate's subject CN is one of `values`, exactly."""

    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        cn = s.client_cn
        return unknown if cn is None else cn in self.values

    def fact(self, s: Subject, matched: bool) -> str:
        if s.client_cn is None:
            return _no_certificate(matched)
        return f"CN {s.client_cn!r} {_listed(matched, 'listed')}"


class IpList(CompiledRule):
    __slots__ = ("table",)

    def __init__(self, selector: str, label: str, table: NetworkTable) -> None:
        super().__init__(selector, label)
        self.table = table

    def match(self, s: Subject, unknown: bool) -> bool:
        ip = s.ip
        return unknown if ip is None else ip in self.table

    def fact(self, s: Subject, matched: bool) -> str:
        if s.ip is None:
            return f"no client IP (unknown: counts as {'matched' if matched else 'not matched'})"
        return f"{s.ip} {_listed(matched, f'in list ({entries(self.table.size)})')}"


class IpRanges(IpList):
    """`ip_ranges`: the same table as a list's, built from the rule."""

    __slots__ = ()

    def fact(self, s: Subject, matched: bool) -> str:
        if s.ip is None:
            return f"no client IP (unknown: counts as {'matched' if matched else 'not matched'})"
        return f"{s.ip} {_listed(matched, 'in range')}"


def compile_rule(rule: Rule, lists: Lists = EMPTY_LISTS, prefix: str = "") -> CompiledRule:
    """One selector other than `group` (see `edge.access.groups.compile_clause`)."""
    selector = rule.selector
    label = prefix + selector
    if selector == "everyone":
        return Everyone(selector, label)
    if selector == "valid_certificate":
        return ValidCertificate(selector, label)
    if selector == "common_name":
        return CommonName(selector, label, frozenset(rule.common_name or ()))
    if selector == "any_service_token":
        return AnyServiceToken(selector, label)
    if selector == "ip_ranges":
        return IpRanges(selector, label, NetworkTable(rule.networks))
    values: list[str] = getattr(rule, selector)
    if selector == "email_list":
        return EmailList(selector, f"{label} {', '.join(values)}", lists.emails(values))
    if selector == "ip_list":
        return IpList(selector, f"{label} {', '.join(values)}", lists.networks(values))
    if selector == "emails":
        return Emails(selector, label, frozenset(v.lower() for v in values))
    if selector == "email_domains":
        return EmailDomains(selector, label, frozenset(v.removeprefix("@").lower() for v in values))
    if selector == "groups":
        return Groups(selector, label, frozenset(values))
    if selector == "auth_method":
        return AuthMethods(selector, label, frozenset(values))
    if selector == "login_method":
        return LoginMethods(selector, label, frozenset(values))
    return ServiceTokenNames(selector, label, frozenset(values))
