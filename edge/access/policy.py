"""Access policies, compiled: an application's policies, evaluated in order.

Invariants:
- Compiled once per configuration; evaluation only reads.
- Order (BEHAVIOUR.md section 2): bypass and service_auth policies first, top
  to bottom; then deny and allow, top to bottom. The first policy that
  matches decides; none matching means deny.
- A policy matches when any include rule, every require rule and no exclude
  rule matches. A rule that cannot be decided (no client IP, no identity)
  does not match in include/require and *does* match in exclude: an unknown
  never opens access.
- Rules are compiled in `edge.access.rules`, groups spliced into a policy's
  rules in `edge.access.groups`, lists shared as sets and tables in
  `edge.access.lists`; what a request presents is its `Subject`.
- Without a verified client certificate, a certificate rule is unknown (see
  above). A service_auth policy needs a machine credential: a valid service
  token, or, when an include or require rule reads the certificate, a
  verified certificate.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.access.groups import EMPTY_CATALOG, Catalog, GroupRule, compile_clause
from edge.access.rules import CompiledRule
from edge.access.subject import Subject
from edge.config.schema import CERT_SELECTORS, Policy

Trace = list[str] | None

FIRST_PHASE = frozenset({"bypass", "service_auth"})


class CompiledPolicy:
    __slots__ = (
        "name",
        "action",
        "include",
        "require",
        "exclude",
        "reason",
        "bypass",
        "no_include",
        "clause",
        "cert_credential",
    )

    def __init__(self, policy: Policy, catalog: Catalog = EMPTY_CATALOG) -> None:
        self.name = policy.name
        self.action = policy.action
        self.clause = compile_clause(policy.include, policy.require, policy.exclude, catalog)
        self.include = self.clause.include
        self.require = self.clause.require
        self.exclude = self.clause.exclude
        self.reason = f'{self.action}: policy "{self.name}"'
        self.bypass = self.action == "bypass"  # what its forwards are counted as (Forward.bypass)
        self.no_include = "include: no rule matched"
        # A certificate rule in include or require makes the certificate a
        # credential of its own (an exclude rule only narrows one), through
        # the groups that were not spliced in too.
        self.cert_credential = _reads_certificate(self.include + self.require)

    def miss(self, s: Subject) -> str | None:
        """None when the policy matches, else which part failed."""
        for rule in self.include:
            if rule.match(s, False):
                break
        else:
            return self.no_include
        for rule in self.require:
            if not rule.match(s, False):
                return rule.require_miss
        for rule in self.exclude:
            if rule.match(s, True):
                return rule.exclude_miss
        return None


def _reads_certificate(rules: Sequence[CompiledRule]) -> bool:
    """Whether a rule, or one in the include or require of a group kept as
    one rule, reads the client certificate."""
    for rule in rules:
        if rule.selector in CERT_SELECTORS:
            return True
        if isinstance(rule, GroupRule) and _reads_certificate(rule.clause.include + rule.clause.require):
            return True
    return False


class Policies:
    """An application's policies, split into the two phases."""

    __slots__ = ("first", "second", "needs_service_token")

    def __init__(self, policies: Sequence[Policy], catalog: Catalog = EMPTY_CATALOG) -> None:
        compiled = [CompiledPolicy(p, catalog) for p in policies]
        self.first = tuple(p for p in compiled if p.action in FIRST_PHASE)
        self.second = tuple(p for p in compiled if p.action not in FIRST_PHASE)
        self.needs_service_token = any(p.action == "service_auth" for p in self.first)

    def first_phase(self, s: Subject, trace: Trace) -> CompiledPolicy | None:
        """The bypass/service_auth policy that decides, if any."""
        for policy in self.first:
            if (
                policy.action == "service_auth"
                and s.service_token is None
                and (s.client_cn is None or not policy.cert_credential)
            ):
                _note(trace, policy, _NO_CREDENTIAL[policy.cert_credential])
                continue
            miss = policy.miss(s)
            _note(trace, policy, miss or "match", s)
            if miss is None:
                return policy
        return None

    def second_phase(self, s: Subject, trace: Trace) -> tuple[CompiledPolicy | None, str]:
        """The allow/deny policy that decides (or None), and the first miss
        of an allow policy, for the log when nothing matched."""
        first_miss = ""
        for policy in self.second:
            miss = policy.miss(s)
            _note(trace, policy, miss or "match", s)
            if miss is None:
                return policy, ""
            if not first_miss and policy.action == "allow":
                first_miss = f'policy "{policy.name}" {miss}'
        return None, first_miss


_NO_CREDENTIAL = {
    False: "skipped: no valid service token",
    True: "skipped: no valid service token or client certificate",
}


def _note(trace: Trace, policy: CompiledPolicy, outcome: str, s: Subject | None = None) -> None:
    """The policy's outcome, then (given the subject) each rule evaluated,
    indented: what it saw, through groups and lists."""
    if trace is not None:
        trace.append(f'policy "{policy.name}" ({policy.action}): {outcome}')
        if s is not None:
            trace += policy.clause.explain(s, False, "  ")
