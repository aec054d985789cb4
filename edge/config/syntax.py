"""The syntax of single config values: parsers and "why not" predicates.

Shared by the checks (which turn a refusal into a key path and message) and by
the schema's derived values (which parse a value the checks already passed).
Pure: no I/O, no clock. A parser raises ValueError with a user-ready reason;
a `*_problem` function returns that reason, or None when the value is fine.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from msgspec import Struct

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# An RFC 9110 5.6.2 token (a method, a field name) as a regex fragment: the
# one spelling, for config values here and, encoded, for the wire (edge.http,
# edge.access.cors). Fullmatch it: a `^...$` match lets a trailing newline by.
TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
TOKEN_RE = re.compile(TOKEN)


class ListenAddress(Struct, frozen=True):
    host: str
    port: int

    def display(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# A host is an IPv4 address or a DNS name (resolved when binding); IPv6 needs [].
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})\Z")


def parse_listen(text: str) -> ListenAddress:
    """Parse ``host:port`` or ``[v6]:port``; raise ValueError with a clear reason."""
    m = _LISTEN_RE.match(text)
    if m is None:
        raise ValueError(f"Expected 'host:port' or '[ipv6]:port', got {text!r}")
    port = int(m["port"])
    if port > 65535:
        raise ValueError(f"Expected a port <= 65535, got {port}")
    host = m["v6"] or m["host"]
    if m["v6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(host))  # one spelling, so duplicates show
        except ValueError:
            raise ValueError(f"Expected an IPv6 address inside [], got {host!r}") from None
    return ListenAddress(host=host, port=port)


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\Z")
_ORIGIN_RE = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?\Z"
)
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


class DomainPattern(Struct, frozen=True):
    """A parsed application domain: host (lower case, maybe ``*.`` + parent)
    and path segments (``example.com/api/*`` -> ``("api",)``)."""

    host: str
    segments: tuple[str, ...]

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments)

    def display(self) -> str:
        return self.host + (self.path if self.segments else "")


def parse_domain(text: str) -> DomainPattern:
    """Parse ``host[/path][/*]``; raise ValueError with the reason."""
    host, slash, path = text.strip().partition("/")
    host = host.lower().removesuffix(".")
    if ":" in host:
        raise ValueError(f"Expected no port (ports are ignored when matching), got {text!r}")
    if "*" in host and not (host.startswith("*.") and "*" not in host[2:]):
        raise ValueError(f"Expected '*' only as a whole first label ('*.example.com'), got {text!r}")
    if not HOST_RE.match(host):
        raise ValueError(f"Expected a host name like 'app.example.com' or '*.example.com', got {text!r}")
    segments = [s for s in path.split("/") if s] if slash else []
    if segments and segments[-1] == "*":
        segments.pop()  # a path covers everything below it anyway
    for seg in segments:
        if "*" in seg:
            raise ValueError(f"Expected '*' in a path only as a trailing '/*', got {text!r}")
        if seg in (".", "..") or any(c in seg for c in "?#%\\"):
            raise ValueError(f"Expected a plain path (no '.', '..', '?', '#', '%', '\\'), got {text!r}")
        if not seg.isascii() or not seg.isprintable() or " " in seg:
            raise ValueError(f"Expected a path of printable ASCII without spaces, got {text!r}")
    return DomainPattern(host=host, segments=tuple(segments))


def origin_problem(origin: str) -> str | None:
    """Why `origin` can never equal a browser's serialised Origin, or None.

    Browsers send ``scheme://host[:port]`` in lower case, punycode, with no
    path and no default port (RFC 6454 6.1), or the literal ``null``; the edge
    compares byte for byte, so anything else would silently never match.
    """
    if origin == "null":
        return None
    if "*" in origin:
        return f"Expected an exact origin (use allow_all_origins for any), got {origin!r}"
    if "://" not in origin:
        return f"Expected scheme://host[:port], got {origin!r}"
    if origin.endswith("/"):
        return f"Expected an origin without a trailing slash ({origin.rstrip('/')!r}), got {origin!r}"
    if "/" in origin.partition("://")[2] or "?" in origin or "#" in origin:
        return f"Expected an origin without a path, got {origin!r}"
    if not origin.isascii():
        return f"Expected an ASCII origin (write the host in punycode, xn--...), got {origin!r}"
    if origin != origin.lower():
        return f"Expected lower case, as browsers send it ({origin.lower()!r}), got {origin!r}"
    m = _ORIGIN_RE.match(origin)
    if m is None:
        return f"Expected scheme://host[:port], got {origin!r}"
    if m["port"] is not None and _DEFAULT_PORTS.get(m["scheme"]) == m["port"]:
        return f"Expected no default port (browsers omit it: {origin.rsplit(':', 1)[0]!r}), got {origin!r}"
    return None


def upstream_problem(url: str) -> str | None:
    """Why `url` cannot be an upstream, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"Expected an http:// or https:// URL, got {url!r} ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"Expected an http:// or https:// URL with a host, got {url!r}"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"Expected no query, fragment or user info in an upstream URL, got {url!r}"
    if not re.fullmatch(r"[!-~]*", parts.path):
        # The path prefixes every forwarded target, written as is: no spaces,
        # no controls, no non-ASCII (percent-encode them).
        return f"Expected a path of visible ASCII characters (percent-encoded), got {parts.path!r}"
    return None


def email_problem(value: str) -> str | None:
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in value):
        return f"Expected an email address, got {value!r}"
    return None


def email_domain_problem(value: str) -> str | None:
    domain = value.removeprefix("@")
    if not domain or "@" in domain or not HOST_RE.match(domain.lower()) or domain.startswith("*"):
        return f"Expected an email domain like 'example.com', got {value!r}"
    return None


# IPv4-mapped IPv6 (::ffff:a.b.c.d): the edge compares a client's address as
# IPv4 (a dual-stack socket's mapped peer is unmapped first), so a network
# written in this form would never match: in an exclude or a block list, it
# would let the very clients it names through.
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def cidr_problem(value: str) -> str | None:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return f"Expected an IP network like '10.0.0.0/8' or '2001:db8::/32', got {value!r} ({exc})"
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(IPV4_MAPPED):
        mapped = net.network_address.ipv4_mapped
        written = f"{mapped}/{net.prefixlen - 96}"
        return f"Expected an IPv4 network written as one ({written!r}), got the IPv4-mapped {value!r}"
    return None


def parse_networks(cidrs: list[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings that passed `cidr_problem`, parsed."""
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def text_problem(value: str) -> str | None:
    return None if value and value.isprintable() else f"Expected a non-empty printable string, got {value!r}"


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine: localhost and
    *.localhost (RFC 6761: browsers resolve them to loopback), 127/8, ::1."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
