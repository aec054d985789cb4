"""What a request presents to the policies: its client IP (behind trusted
proxies), a service token checked against the configured ones, and the
`Subject` that carries them with the identity and a client certificate.

Invariants:
- What a request presents (client IP, service token, identity) is computed
  lazily by the `Subject`, once, and only when a rule asks.
- A client certificate is known only as the connection verified it (the
  `Request`'s client_cert_cn: None when no certificate chained to
  [server.tls] client_ca); nothing from the request's head stands in for it.
- Service token secrets are never kept: only their sha256, compared in
  constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

from edge.access.claims import Identity
from edge.access.headers import X_FORWARDED_FOR
from edge.access.request import Request
from edge.config.schema import ServiceToken

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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

    @classmethod
    def of(cls, req: Request, trusted: Sequence[IPNetwork], identity: Identity | None = None) -> Subject:
        """What `req` presents: its peer, its X-Forwarded-For (believed from
        `trusted` peers only), its client certificate's CN; and `identity`."""
        return cls(req.client_ip, req.values(X_FORWARDED_FOR), trusted, None, identity, req.client_cert_cn)

    @property
    def ip(self) -> IPAddress | None:
        if not self._ip_done:
            self._ip = client_ip(self._peer, self._xff, self._trusted)
            self._ip_done = True
        return self._ip
