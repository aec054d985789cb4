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
from collections.abc import Sequence

from edge.access.tokens import Identity
from edge.config.schema import CERT_SELECTORS, Policy, Rule, ServiceToken

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
    subject lacks what the selector looks at."""

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


class EmailDomains(Emails):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        ident = s.identity
        return unknown if ident is None else ident.email_domain in self.values


class Groups(Emails):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        ident = s.identity
        return unknown if ident is None else not self.values.isdisjoint(ident.groups)


class ServiceTokenNames(Emails):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        return s.service_token in self.values


class AnyServiceToken(CompiledRule):
    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        return s.service_token is not None


class IpRanges(CompiledRule):
    __slots__ = ("networks",)

    def __init__(self, selector: str, label: str, networks: tuple[IPNetwork, ...]) -> None:
        super().__init__(selector, label)
        self.networks = networks

    def match(self, s: Subject, unknown: bool) -> bool:
        ip = s.ip
        return unknown if ip is None else in_networks(ip, self.networks)


class ValidCertificate(CompiledRule):
    """The connection verified a client certificate against client_ca."""

    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        return unknown if s.client_cn is None else True


class CommonName(Emails):
    """The verified certificate's subject CN is one of `values`, exactly."""

    __slots__ = ()

    def match(self, s: Subject, unknown: bool) -> bool:
        cn = s.client_cn
        return unknown if cn is None else cn in self.values


def compile_rule(rule: Rule) -> CompiledRule:
    selector = rule.selector
    label = selector
    if selector == "everyone":
        return Everyone(selector, label)
    if selector == "valid_certificate":
        return ValidCertificate(selector, label)
    if selector == "common_name":
        return CommonName(selector, label, frozenset(rule.common_name or ()))
    if selector == "any_service_token":
        return AnyServiceToken(selector, label)
    if selector == "ip_ranges":
        return IpRanges(selector, label, rule.networks)
    values: list[str] = getattr(rule, selector)
    if selector == "emails":
        return Emails(selector, label, frozenset(v.lower() for v in values))
    if selector == "email_domains":
        return EmailDomains(selector, label, frozenset(v.removeprefix("@").lower() for v in values))
    if selector == "groups":
        return Groups(selector, label, frozenset(values))
    return ServiceTokenNames(selector, label, frozenset(values))


# -- policies --------------------------------------------------------------------


class CompiledPolicy:
    __slots__ = ("name", "action", "include", "require", "exclude", "reason", "no_include", "cert_credential")

    def __init__(self, policy: Policy) -> None:
        self.name = policy.name
        self.action = policy.action
        self.include = tuple(compile_rule(r) for r in policy.include)
        self.require = tuple(compile_rule(r) for r in policy.require)
        self.exclude = tuple(compile_rule(r) for r in policy.exclude)
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

    def __init__(self, policies: Sequence[Policy]) -> None:
        compiled = [CompiledPolicy(p) for p in policies]
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
            _note(trace, policy, miss or "match")
            if miss is None:
                return policy
        return None

    def second_phase(self, s: Subject, trace: Trace) -> tuple[CompiledPolicy | None, str]:
        """The allow/deny policy that decides (or None), and the first miss
        of an allow policy, for the log when nothing matched."""
        first_miss = ""
        for policy in self.second:
            miss = policy.miss(s)
            _note(trace, policy, miss or "match")
            if miss is None:
                return policy, ""
            if not first_miss and policy.action == "allow":
                first_miss = f'policy "{policy.name}" {miss}'
        return None, first_miss


_NO_CREDENTIAL = {
    False: "skipped: no valid service token",
    True: "skipped: no valid service token or client certificate",
}


def _note(trace: Trace, policy: CompiledPolicy, outcome: str) -> None:
    if trace is not None:
        trace.append(f'policy "{policy.name}" ({policy.action}): {outcome}')
