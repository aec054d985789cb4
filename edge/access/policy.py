"""Access policies, compiled: rules as sets and networks, evaluated in order.

Invariants:
- Compiled once per configuration; evaluation only reads.
- Order (BEHAVIOUR.md section 2): bypass and service_auth policies first, top
  to bottom; then deny and allow, top to bottom. The first policy that
  matches decides; none matching means deny.
- A policy matches when any include rule, every require rule and no exclude
  rule matches. A rule that cannot be decided (no client IP, no identity)
  does not match in include/require and *does* match in exclude: an unknown
  never opens access.
- What a request presents (client IP, service token, identity) is computed
  lazily by the `Subject`, once, and only when a rule asks.
- Groups and lists are compiled into the rules that use them (`Catalog`):
  a group that is a clause's only include rule, or one of include rules
  only used from an include or an exclude, or one with a single include
  rule used from a require, is spliced into the clause (its own require
  and exclude rules joining the clause's: the same logic, unknowns
  included); any other group is one `GroupRule` evaluated like a policy. A list is a
  set (emails, lower-cased) or a `NetworkTable`, built once per config and
  shared by every rule that names it: a lookup, whatever its size.
- A group's unknowns follow the position it is used in: in an include or a
  require an undecidable group does not match, in an exclude it does (its
  own exclude rules take the opposite polarity), so an unknown never opens
  access through a group either.
- A client certificate is known only as the connection verified it (the
  `Request`'s client_cert_cn: None when no certificate chained to
  [server.tls] client_ca); nothing from the request's head stands in for it.
  Without one, a certificate rule is unknown (see above). A service_auth
  policy needs a machine credential: a valid service token, or, when an
  include or require rule reads the certificate, a verified certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from edge.access.claims import Identity
from edge.config.schema import CERT_SELECTORS, Group, List, Policy, Rule, ServiceToken

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Trace = list[str] | None

FIRST_PHASE = frozenset({"bypass", "service_auth"})
# X-Forwarded-For is walked back at most this many hops: a longer chain is
# not one we built, and walking it would cost the attacker nothing.
MAX_FORWARDED_HOPS = 16


def parse_ip(text: str | bytes) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.decode("ascii") if isinstance(text, bytes) else text)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return ip


def in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(ip in net for net in networks)


def client_ip(peer: str, forwarded_for: Sequence[bytes], trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The client's address: the peer, or, when the peer is a trusted proxy,
    the nearest X-Forwarded-For entry that is not itself trusted (walking
    right to left, as nginx's real_ip_recursive does)."""
    ip = parse_ip(peer)
    if ip is None or not trusted or not forwarded_for or not in_networks(ip, trusted):
        return ip
    hops = [h.strip() for line in forwarded_for for h in line.split(b",")]
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        nxt = parse_ip(hop)
        if nxt is None:
            return ip  # a garbled entry: trust stops at the last good hop
        ip = nxt
        if not in_networks(ip, trusted):
            return ip
    return ip


class ServiceTokens:
    """Client id -> (name, sha256 of the secret); secrets never kept."""

    __slots__ = ("by_id",)

    def __init__(self, tokens: Sequence[ServiceToken]) -> None:
        self.by_id = {t.client_id.encode(): (t.name, bytes.fromhex(t.secret_sha256)) for t in tokens}

    def check(self, client_id: bytes | None, secret: bytes | None) -> tuple[str | None, str]:
        """(token name or None, what happened, for the trace)."""
        if client_id is None or secret is None:
            return None, "none presented"
        found = self.by_id.get(client_id.strip())
        if found is None:
            return None, "unknown client id"
        name, digest = found
        if not hmac.compare_digest(hashlib.sha256(secret.strip()).digest(), digest):
            return None, f'"{name}": wrong secret'
        return name, f'"{name}": valid'


class Subject:
    """What a request presents, computed on first use. `identity` is set by
    the caller before the second phase (it needs the app's audience).
    `client_cn`: the subject CN of the client certificate the connection
    verified ("" for a verified certificate without one CN), None without."""

    __slots__ = ("identity", "service_token", "client_cn", "_ip", "_ip_done", "_peer", "_xff", "_trusted")

    def __init__(
        self,
        peer: str,
        forwarded_for: Sequence[bytes],
        trusted: Sequence[IPNetwork],
        service_token: str | None = None,
        identity: Identity | None = None,
        client_cn: str | None = None,
    ) -> None:
        self.identity = identity
        self.service_token = service_token
        self.client_cn = client_cn
        self._peer = peer
        self._xff = forwarded_for
        self._trusted = trusted
        self._ip: IPAddress | None = None
        self._ip_done = False

    @property
    def ip(self) -> IPAddress | None:
        if not self._ip_done:
            self._ip = client_ip(self._peer, self._xff, self._trusted)
            self._ip_done = True
        return self._ip


# -- rules ---------------------------------------------------------------------


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


def entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


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


class NetworkTable:
    """IP networks for lookups: per address family, the network addresses
    (as ints) of each prefix length, longest first. A lookup masks the
    address once per distinct prefix length (at most 33 / 129 set probes),
    whatever the number of networks."""

    __slots__ = ("v4", "v6", "size")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        by_length: dict[tuple[int, int], set[int]] = {}
        size = 0
        for net in networks:
            by_length.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
            size += 1
        self.size = size
        self.v4 = self._table(by_length, 4, 32)
        self.v6 = self._table(by_length, 6, 128)

    @staticmethod
    def _table(
        by_length: dict[tuple[int, int], set[int]], version: int, bits: int
    ) -> tuple[tuple[int, frozenset[int]], ...]:
        lengths = sorted((length for v, length in by_length if v == version), reverse=True)
        full = (1 << bits) - 1
        return tuple(
            (full ^ ((1 << (bits - length)) - 1), frozenset(by_length[version, length])) for length in lengths
        )

    def __contains__(self, ip: IPAddress) -> bool:
        number = int(ip)
        for mask, addresses in self.v4 if ip.version == 4 else self.v6:
            if number & mask in addresses:
                return True
        return False


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

    __slots__ = ("groups", "email_lists", "ip_lists", "_email_unions", "_ip_unions", "_clauses")

    def __init__(self, groups: Sequence[Group] = (), lists: Sequence[List] = ()) -> None:
        self.groups = {g.name: g for g in groups}
        self.email_lists: dict[str, frozenset[str]] = {}
        self.ip_lists: dict[str, tuple[IPNetwork, ...]] = {}
        for entry in lists:
            if entry.type == "email":
                self.email_lists[entry.name] = frozenset(v.lower() for v in entry.items or ())
            else:
                self.ip_lists[entry.name] = tuple(ipaddress.ip_network(v) for v in entry.items or ())
        self._email_unions: dict[tuple[str, ...], frozenset[str]] = {}
        self._ip_unions: dict[tuple[str, ...], NetworkTable] = {}
        self._clauses: dict[tuple[str, str], Clause] = {}

    def emails(self, names: Sequence[str]) -> frozenset[str]:
        key = tuple(names)
        found = self._email_unions.get(key)
        if found is None:
            lists = [self.email_lists[n] for n in key]
            found = lists[0] if len(lists) == 1 else frozenset().union(*lists)
            self._email_unions[key] = found
        return found

    def networks(self, names: Sequence[str]) -> NetworkTable:
        key = tuple(names)
        found = self._ip_unions.get(key)
        if found is None:
            found = self._ip_unions[key] = NetworkTable(net for n in key for net in self.ip_lists[n])
        return found

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


def compile_rule(rule: Rule, catalog: Catalog = EMPTY_CATALOG, prefix: str = "") -> CompiledRule:
    """One selector other than `group` (see `compile_clause`)."""
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
        return EmailList(selector, f"{label} {', '.join(values)}", catalog.emails(values))
    if selector == "ip_list":
        return IpList(selector, f"{label} {', '.join(values)}", catalog.networks(values))
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
    for rule in include:
        if rule.group is None:
            inc.append(compile_rule(rule, catalog, prefix))
            continue
        group = _group(rule.group, catalog, prefix)
        if group.require or group.exclude:
            inc.append(_nested(rule.group, catalog, prefix))
        else:
            inc += group.include
    for rule in require:
        if rule.group is None:
            req.append(compile_rule(rule, catalog, prefix))
            continue
        group = _group(rule.group, catalog, prefix)
        if len(group.include) == 1:
            req += (*group.include, *group.require)
            exc += group.exclude
        else:
            req.append(_nested(rule.group, catalog, prefix))
    for rule in exclude:
        if rule.group is None:
            exc.append(compile_rule(rule, catalog, prefix))
            continue
        group = _group(rule.group, catalog, prefix)
        if group.require or group.exclude:
            exc.append(_nested(rule.group, catalog, prefix))
        else:
            exc += group.include
    return Clause(inc, req, exc)


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


# -- policies --------------------------------------------------------------------


class CompiledPolicy:
    __slots__ = (
        "name",
        "action",
        "include",
        "require",
        "exclude",
        "reason",
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
        self.no_include = "include: no rule matched"
        # A certificate rule in include or require makes the certificate a
        # credential of its own (an exclude rule only narrows one).
        self.cert_credential = any(r.selector in CERT_SELECTORS for r in self.include + self.require)

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
