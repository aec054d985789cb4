"""Names the whole edge shares: the header-pair type, the line end, the auth
cookie and token header, the identity headers the edge owns, and which
peers' X-Forwarded-* are believed.

The one owner of these: edge.http, edge.proxy and edge.login import them
from here (access imports neither), so a name cannot drift between the
decision and the code that carries it out. Pure constants and one frozen
value type; no state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# A field as it travels: (lower-cased name, value).
Header = tuple[bytes, bytes]
Headers = list[Header]
# The proxy chain a client's request came through (believed only from
# trusted peers: TrustedProxies, edge.access.subject.client_ip).
X_FORWARDED_FOR = b"x-forwarded-for"
# The end of every line of a head (and of a chunk's size and data).
CRLF = b"\r\n"
# Optional whitespace around a field value (RFC 9110 5.6.3), and what joins
# a field's name to its value on the wire.
OWS = b" \t"
FIELD_SEP = b": "

# The cookie (and the cf-access-token header's value) carrying the user's
# token (BEHAVIOUR.md section 3). The str form names it in Set-Cookie; the
# request path compares bytes.
AUTH_COOKIE = "CF_Authorization"
AUTH_COOKIE_BYTES = AUTH_COOKIE.encode("ascii")
# The header that may carry the token instead of the cookie.
ACCESS_TOKEN = b"cf-access-token"

# The identity headers the edge sets; a client's copies are always removed
# first so they cannot be spoofed (BEHAVIOUR.md section 5).
JWT_ASSERTION = b"cf-access-jwt-assertion"
USER_EMAIL = b"cf-access-authenticated-user-email"
IDENTITY_HEADERS = frozenset({JWT_ASSERTION, USER_EMAIL})
# A service token's credentials (BEHAVIOUR.md section 2).
CLIENT_ID = b"cf-access-client-id"
CLIENT_SECRET = b"cf-access-client-secret"
# The request id's field (edge.http.request_id): the edge's own, like the
# identity headers. A client's copies are never forwarded; the edge sends
# the one id it chose, to the upstream and back on every response.
REQUEST_ID = b"x-request-id"
# What the proxy removes from every forwarded request: the identity headers,
# and a service token's secret (the upstream has no use for it).
STRIP_HEADERS = IDENTITY_HEADERS | frozenset({CLIENT_SECRET})


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Peers whose X-Forwarded-* headers are believed and appended to."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def trusts(self, ip: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)
