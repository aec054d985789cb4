"""The configuration schema and loader.

Invariants:
- Every struct is frozen and forbids unknown fields: a typo is an error, never
  a silently ignored setting.
- Loading never touches the network or the event loop; it returns plain data.
- Every error is a `ConfigError` whose text names the file and the key path and
  says what was expected (``conf/edge.toml: $.server.header_timeout: Expected
  float >= 0.1, got -1``). Only the CLI turns it into an exit code.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import math
import re
import string
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

SECONDS = 1.0
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Constrained scalar types. A timeout of 0 would disable the protection it
# stands for, so every timeout is strictly positive; 0.1 s is the finest the
# server's timer sweep can honour (see server.SWEEP_INTERVAL).
Timeout = Annotated[float, Meta(ge=0.1, le=86400.0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
HeaderBytes = Annotated[int, Meta(ge=1 * KIB, le=1 * MIB)]
TargetBytes = Annotated[int, Meta(ge=64, le=1 * MIB)]
BodyBytes = Annotated[int, Meta(ge=0, le=1 << 50)]
Connections = Annotated[int, Meta(ge=1, le=1_000_000)]
Workers = Annotated[int, Meta(ge=1, le=256)]
# Printable ASCII words separated by single spaces, or "" for no header: h11
# refuses a value with leading or trailing whitespace (RFC 9110 5.5).
SERVER_HEADER_PATTERN = r"^(?:[\x21-\x7e]+(?: [\x21-\x7e]+)*)?$"
ServerHeader = Annotated[str, Meta(max_length=256, pattern=SERVER_HEADER_PATTERN)]

# A key path prefix that __post_init__ checks put in front of their message so
# the error names the exact field, not just the struct (msgspec reports the
# struct's path for errors raised in __post_init__).
_FIELD_MARK = "@@"


class ConfigError(Exception):
    """A configuration that cannot be used; the message is ready for a user."""


def _field_error(field: str, message: str) -> ValueError:
    return ValueError(f"{_FIELD_MARK}{field}{_FIELD_MARK}{message}")


class ListenAddress(Struct, frozen=True):
    host: str
    port: int

    def display(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# A host is an IPv4 address or a DNS name (resolved when binding); IPv6 needs [].
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})$")


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


class TLS(Struct, frozen=True, forbid_unknown_fields=True):
    """TLS for the listeners; TLS 1.2+ with the ssl module's modern defaults."""

    cert: Annotated[str, Meta(min_length=1)]  # PEM certificate chain
    key: Annotated[str, Meta(min_length=1)]  # PEM private key
    min_version: str = "1.2"

    def __post_init__(self) -> None:
        if self.min_version not in ("1.2", "1.3"):
            raise _field_error("min_version", f"Expected '1.2' or '1.3', got {self.min_version!r}")


class Server(Struct, frozen=True, forbid_unknown_fields=True):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    workers: Workers = 1
    tls: TLS | None = None
    server_header: ServerHeader = "edge"
    # Limits.
    max_header_bytes: HeaderBytes = 16 * KIB
    max_target_bytes: TargetBytes = 8 * KIB
    max_body_bytes: BodyBytes = 1 * GIB
    max_connections: Connections = 10_000
    # Timeouts, in seconds.
    header_timeout: Timeout = 10 * SECONDS
    body_idle_timeout: Timeout = 30 * SECONDS
    keepalive_timeout: Timeout = 75 * SECONDS
    drain_timeout: Timeout = 30 * SECONDS
    # Access log: "off", "stdout", or a file path.
    access_log: Annotated[str, Meta(min_length=1)] = "stdout"
    # Peers (CIDR) whose X-Forwarded-For is believed: the client IP that
    # ip_ranges rules see, and the chain passed on upstream.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # Forward client header fields whose name has `_` (nginx's option of the
    # same name). Off: an upstream on WSGI/CGI, PHP or Rack reads `X_A` and
    # `X-A` as one variable. On, a name that reads as Cf-Access-* or
    # X-Forwarded-* is still dropped (forwarding.EDGE_OWNED_PREFIXES).
    underscores_in_headers: bool = False

    def __post_init__(self) -> None:
        for i, cidr in enumerate(self.trusted_proxies):
            problem = _cidr_problem(cidr)
            if problem is not None:
                raise _field_error(f"trusted_proxies[{i}]", problem)
        if not self.listen:
            raise _field_error("listen", "Expected at least one address")
        seen: set[tuple[str, int]] = set()
        for i, item in enumerate(self.listen):
            try:
                addr = parse_listen(item)
            except ValueError as exc:
                raise _field_error(f"listen[{i}]", str(exc)) from None
            if (addr.host, addr.port) in seen and addr.port != 0:
                raise _field_error(f"listen[{i}]", f"{item!r} is listed twice")
            seen.add((addr.host, addr.port))
        if self.max_target_bytes >= self.max_header_bytes:
            raise _field_error(
                "max_target_bytes",
                f"Expected less than max_header_bytes ({self.max_header_bytes}), got {self.max_target_bytes}",
            )

    @property
    def addresses(self) -> list[ListenAddress]:
        return [parse_listen(item) for item in self.listen]


class Proxy(Struct, frozen=True, forbid_unknown_fields=True):
    """How the edge talks to upstreams (defaults for every upstream)."""

    # Seconds to establish a connection (TCP and TLS); then 502.
    connect_timeout: Timeout = 5 * SECONDS
    # Seconds the upstream has to send a response head once the request is sent; then 504.
    response_timeout: Timeout = 60 * SECONDS
    # Seconds a response body may stall; then both connections are aborted.
    idle_timeout: Timeout = 60 * SECONDS
    # Idle keep-alive connections kept per upstream, and for how long.
    max_idle: Annotated[int, Meta(ge=0, le=10_000)] = 32
    pool_idle_timeout: Timeout = 30 * SECONDS
    # Verify upstream TLS certificates (https:// upstreams); extra CA bundle, if any.
    verify_tls: bool = True
    ca_file: str = ""


# -- applications, issuers, service tokens (BEHAVIOUR.md sections 1-4) --------
#
# Only syntax and cross-field rules live here; edge.decide.compile_config turns
# these plain values into the runtime objects (tries, key sets, prebuilt
# responses) and reads the JWKS files.

ALGORITHMS = ("RS256", "ES256", "EdDSA", "HS256")
ACTIONS = ("bypass", "service_auth", "allow", "deny")
SELECTORS = (
    "everyone",
    "emails",
    "email_domains",
    "groups",
    "ip_ranges",
    "service_tokens",
    "any_service_token",
)
# Selectors that need a verified user token, and those that need a service token.
IDENTITY_SELECTORS = frozenset({"emails", "email_domains", "groups"})
SERVICE_SELECTORS = frozenset({"service_tokens", "any_service_token"})
# Where an unauthenticated navigation is sent. Relative: the login service on
# the protected host itself (BEHAVIOUR.md section 6), like Cloudflare's
# /cdn-cgi/access/login/<host>.
DEFAULT_LOGIN_URL = "/cdn-cgi/access/login/{host}?kid={aud}&redirect_url={redirect_url}"
LOGIN_PLACEHOLDERS = ("host", "aud", "redirect_url")
# Cloudflare's own limits for Access-Control-Max-Age: -1 (no caching) to 24 h.
MaxAge = Annotated[int, Meta(ge=-1, le=86400)]
# Clock skew tolerated on exp/nbf/iat. 60 s covers NTP-synced hosts with room
# to spare; more would keep a just-expired session alive longer than needed.
DEFAULT_LEEWAY = 60
Leeway = Annotated[int, Meta(ge=0, le=600)]
# Session length of the CF_Authorization cookie: 1 minute to 30 days.
SessionDuration = Annotated[int, Meta(ge=60, le=30 * 86400)]
# PyJWT warns below 32 bytes for HS256 (RFC 7518 3.2: key >= hash size).
MIN_HS256_SECRET = 32

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
_AUD_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 5.6.2 token
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
_ORIGIN_RE = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?$"
)
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_name(field: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise _field_error(
            field,
            f"Expected letters, digits, ' ', '.', '_' or '-' (1-128, starting with a letter or digit), "
            f"got {value!r}",
        )


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _field_error(field, f"Expected one of {', '.join(choices)}, got {value!r}")


def _check_unique(field: str, values: list[str], fold: bool = False) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        key = value.lower() if fold else value
        if key in seen:
            raise _field_error(f"{field}[{i}]", f"{value!r} is listed twice")
        seen.add(key)


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
    if not _HOST_RE.match(host):
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


class Cors(Struct, frozen=True, forbid_unknown_fields=True):
    """CORS settings of an application: its preflights are answered at the edge."""

    allow_all_origins: bool = False
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    allow_all_methods: bool = False
    allowed_methods: list[str] = msgspec.field(default_factory=list)
    allow_all_headers: bool = False
    allowed_headers: list[str] = msgspec.field(default_factory=list)
    allow_credentials: bool = False
    max_age: MaxAge | None = None
    allow_private_network: bool = False
    expose_headers: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.allow_credentials and self.allow_all_origins:
            raise _field_error(
                "allow_credentials",
                "Expected false with allow_all_origins = true: any site could read your users' data "
                "(list the origins in allowed_origins instead)",
            )
        for i, origin in enumerate(self.allowed_origins):
            problem = origin_problem(origin)
            if problem is not None:
                raise _field_error(f"allowed_origins[{i}]", problem)
            if origin == "null" and self.allow_credentials:
                raise _field_error(
                    f"allowed_origins[{i}]",
                    "Expected no 'null' origin with allow_credentials = true: sandboxed and file: pages "
                    "all send 'null', so it identifies no site",
                )
        _check_unique("allowed_origins", self.allowed_origins)
        has_origins = self.allow_all_origins or bool(self.allowed_origins)
        if has_origins and not (self.allow_all_methods or self.allowed_methods):
            raise _field_error(
                "allowed_methods",
                "Expected at least one method (or allow_all_methods = true) when origins are allowed",
            )
        self._check_tokens("allowed_methods", self.allowed_methods, "allow_all_methods")
        self._check_tokens("allowed_headers", self.allowed_headers, "allow_all_headers")
        self._check_tokens("expose_headers", self.expose_headers, None)
        _check_unique("allowed_methods", self.allowed_methods)
        _check_unique("allowed_headers", self.allowed_headers, fold=True)
        _check_unique("expose_headers", self.expose_headers, fold=True)

    @staticmethod
    def _check_tokens(field: str, values: list[str], all_switch: str | None) -> None:
        for i, value in enumerate(values):
            if value == "*" and all_switch is not None:
                raise _field_error(f"{field}[{i}]", f"Expected a name; for any, set {all_switch} = true")
            if not _TOKEN_RE.match(value) or value == "*":
                raise _field_error(
                    f"{field}[{i}]", f"Expected a method or header name (an HTTP token), got {value!r}"
                )


class Rule(Struct, frozen=True, forbid_unknown_fields=True):
    """One selector: a table with exactly one key (``{ emails = [...] }``)."""

    everyone: bool | None = None
    emails: list[str] | None = None
    email_domains: list[str] | None = None
    groups: list[str] | None = None
    ip_ranges: list[str] | None = None
    service_tokens: list[str] | None = None
    any_service_token: bool | None = None

    @property
    def selector(self) -> str:
        return next(name for name in SELECTORS if getattr(self, name) is not None)

    def __post_init__(self) -> None:
        given = [name for name in SELECTORS if getattr(self, name) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"Expected exactly one selector ({', '.join(SELECTORS)}), got {found}")
        name = given[0]
        value = getattr(self, name)
        if isinstance(value, bool):
            if not value:
                raise _field_error(name, "Expected true (leave the rule out instead of false)")
            return
        if not value:
            raise _field_error(name, "Expected at least one value")
        for i, item in enumerate(value):
            problem = _RULE_CHECKS[name](item)
            if problem is not None:
                raise _field_error(f"{name}[{i}]", problem)
        _check_unique(name, value, fold=name in ("emails", "email_domains"))


def _email_problem(value: str) -> str | None:
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in value):
        return f"Expected an email address, got {value!r}"
    return None


def _domain_problem(value: str) -> str | None:
    domain = value.removeprefix("@")
    if not domain or "@" in domain or not _HOST_RE.match(domain.lower()) or domain.startswith("*"):
        return f"Expected an email domain like 'example.com', got {value!r}"
    return None


def _cidr_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return f"Expected an IP network like '10.0.0.0/8' or '2001:db8::/32', got {value!r} ({exc})"
    return None


def _text_problem(value: str) -> str | None:
    return None if value and value.isprintable() else f"Expected a non-empty printable string, got {value!r}"


_RULE_CHECKS = {
    "emails": _email_problem,
    "email_domains": _domain_problem,
    "groups": _text_problem,
    "ip_ranges": _cidr_problem,
    "service_tokens": _text_problem,
}


class Policy(Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    action: str
    include: list[Rule]
    require: list[Rule] = msgspec.field(default_factory=list)
    exclude: list[Rule] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        _check_choice("action", self.action, ACTIONS)
        if not self.include:
            raise _field_error("include", "Expected at least one rule")
        for part in ("include", "require", "exclude"):
            for i, rule in enumerate(getattr(self, part)):
                self._check_rule(f"{part}[{i}]", rule.selector)

    def _check_rule(self, field: str, selector: str) -> None:
        if selector in IDENTITY_SELECTORS and self.action in ("bypass", "service_auth"):
            raise _field_error(
                f"{field}.{selector}",
                f"Expected no identity selector in a {self.action} policy: it is decided without a user "
                "token",
            )
        if selector in SERVICE_SELECTORS and self.action != "service_auth":
            raise _field_error(
                f"{field}.{selector}",
                "Expected service token selectors only in service_auth policies (elsewhere a user login "
                "is needed)",
            )


class App(Struct, frozen=True, forbid_unknown_fields=True):
    """An application: domains it protects, policies, CORS and cookie settings."""

    name: str
    domains: list[str]
    upstream: str
    policies: list[Policy]
    aud: str | None = None
    cors: Cors | None = None
    options_preflight_bypass: bool = False
    unauthenticated: str = "auto"
    same_site: str = "lax"
    http_only: bool = True
    path_scoped: bool = False
    session_duration: SessionDuration = 86400
    keep_auth_cookie: bool = False
    rewrite_host: bool = False

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        if not self.domains:
            raise _field_error("domains", "Expected at least one domain")
        for i, text in enumerate(self.domains):
            try:
                parse_domain(text)
            except ValueError as exc:
                raise _field_error(f"domains[{i}]", str(exc)) from None
        problem = upstream_problem(self.upstream)
        if problem is not None:
            raise _field_error("upstream", problem)
        if not self.policies:
            raise _field_error(
                "policies", "Expected at least one policy (with none, every request is denied)"
            )
        _check_unique_attr("policies", [p.name for p in self.policies], "name", scope="")
        if self.aud is not None and not _AUD_RE.match(self.aud):
            raise _field_error("aud", f"Expected 1-128 characters of A-Z a-z 0-9 . _ ~ -, got {self.aud!r}")
        if self.cors is not None and self.options_preflight_bypass:
            raise _field_error(
                "options_preflight_bypass",
                "Expected false with cors settings: preflights are either answered at the edge (cors) "
                "or forwarded to the upstream (options_preflight_bypass), not both",
            )
        _check_choice("unauthenticated", self.unauthenticated, ("auto", "redirect"))
        _check_choice("same_site", self.same_site, ("lax", "strict", "none"))

    @property
    def tag(self) -> str:
        """The audience tag tokens must carry: `aud`, or one derived from the
        name (64 hex digits, like Cloudflare's application AUD tags)."""
        return self.aud if self.aud is not None else hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def patterns(self) -> list[DomainPattern]:
        return [parse_domain(text) for text in self.domains]


# The longest lifetime (exp - iat, seconds) an issuer's tokens may claim; longer
# ones are refused. A logout keeps its session refused this long (plus leeway),
# so no token of it can outlive the revocation. A day, like the default
# session_duration; an issuer that grants longer sessions must say so.
DEFAULT_MAX_TOKEN_LIFETIME = 86400


class Issuer(Struct, frozen=True, forbid_unknown_fields=True):
    """Who signs user tokens, and with which keys and algorithms."""

    iss: str
    jwks_file: str | None = None
    jwks_url: str | None = None
    secret: str | None = None
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256"])
    leeway: Leeway = DEFAULT_LEEWAY
    max_token_lifetime: SessionDuration = DEFAULT_MAX_TOKEN_LIFETIME

    def __post_init__(self) -> None:
        if not self.iss or not self.iss.isprintable():
            raise _field_error("iss", f"Expected a non-empty printable string, got {self.iss!r}")
        given = [k for k in ("jwks_file", "jwks_url", "secret") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "Expected exactly one of jwks_file, jwks_url or secret, got "
                + (" and ".join(given) or "none")
            )
        if self.jwks_url is not None and upstream_problem(self.jwks_url) is not None:
            raise _field_error("jwks_url", f"Expected an http:// or https:// URL, got {self.jwks_url!r}")
        if self.secret is not None and len(self.secret.encode()) < MIN_HS256_SECRET:
            raise _field_error("secret", f"Expected at least {MIN_HS256_SECRET} bytes (RFC 7518 3.2)")
        if not self.algorithms:
            raise _field_error("algorithms", "Expected at least one algorithm")
        _check_unique("algorithms", self.algorithms)
        for i, alg in enumerate(self.algorithms):
            _check_choice(f"algorithms[{i}]", alg, ALGORITHMS)
            if (alg == "HS256") != (self.secret is not None):
                message = (
                    "Expected HS256 only with a secret (a public JWKS key must never serve as an HMAC key)"
                    if alg == "HS256"
                    else "Expected only HS256 with a secret"
                )
                raise _field_error(f"algorithms[{i}]", message)


class ServiceToken(Struct, frozen=True, forbid_unknown_fields=True):
    """A machine credential: CF-Access-Client-Id + CF-Access-Client-Secret."""

    name: str
    client_id: str
    secret_sha256: str

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        if not _TOKEN_RE.match(self.client_id):
            raise _field_error(
                "client_id", f"Expected a header-safe token (no spaces), got {self.client_id!r}"
            )
        if not _HEX64_RE.match(self.secret_sha256):
            raise _field_error("secret_sha256", "Expected 64 lower-case hex digits (sha256 of the secret)")


class Login(Struct, frozen=True, forbid_unknown_fields=True):
    """Where unauthenticated users are sent."""

    # None: the team host's login page when [team] is set, else
    # DEFAULT_LOGIN_URL (the protected host's own /cdn-cgi/access/login).
    url: str | None = None

    def __post_init__(self) -> None:
        if self.url is None:
            return
        if not (
            self.url.startswith(("https://", "http://", "/"))
            and self.url.isascii()
            and self.url.isprintable()
        ):
            raise _field_error("url", f"Expected an http(s) URL or an absolute path, got {self.url!r}")
        if " " in self.url:
            raise _field_error("url", f"Expected no spaces, got {self.url!r}")
        try:
            names = [name for _, name, spec, conv in string.Formatter().parse(self.url) if name is not None]
        except ValueError as exc:
            raise _field_error(
                "url", f"Expected a template with {{host}}, {{aud}}, {{redirect_url}}: {exc}"
            ) from None
        for name in names:
            if name not in LOGIN_PLACEHOLDERS:
                raise _field_error(
                    "url", f"Expected placeholders among {{host}}, {{aud}}, {{redirect_url}}, got {{{name}}}"
                )


# -- the login service: team host, identity providers, built-in issuer -----------

# A password hash as `edge password` writes it: scrypt$<log2 n>$<r>$<p>$<salt>$<hash>
# (salt and hash base64url without padding).
_SCRYPT_RE = re.compile(r"^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$[A-Za-z0-9_-]{16,}\$[A-Za-z0-9_-]{32,}$")
_PROVIDER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SIGNING_ALGORITHMS = ("ES256", "RS256")
STORES = ("memory", "redis")
# How long a rotated-out signing key keeps verifying: 0 (at once) to 30 days.
KeyOverlap = Annotated[float, Meta(ge=0, le=30 * 86400)]


class DevUser(Struct, frozen=True, forbid_unknown_fields=True):
    """A user of the development provider."""

    email: str
    password: str  # an scrypt hash from `edge password`, never the password itself
    groups: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        problem = _email_problem(self.email)
        if problem is not None:
            raise _field_error("email", problem)
        if not _SCRYPT_RE.match(self.password):
            raise _field_error(
                "password", "Expected an scrypt hash made by `edge password` (scrypt$15$8$1$<salt>$<hash>)"
            )
        for i, group in enumerate(self.groups):
            problem = _text_problem(group)
            if problem is not None:
                raise _field_error(f"groups[{i}]", problem)


class DevProvider(Struct, frozen=True, forbid_unknown_fields=True, tag="dev", tag_field="type"):
    """Sign-in with users listed here. For trying the edge out, not for
    production: `edge check` warns when it is enabled on a listener that is
    not loopback."""

    users: list[DevUser]
    id: str = "dev"
    name: str = "Development sign-in (not for production)"

    def __post_init__(self) -> None:
        _check_provider(self.id, self.name)
        if not self.users:
            raise _field_error("users", "Expected at least one user")
        _check_unique("users", [u.email for u in self.users], fold=True)


class OidcProvider(Struct, frozen=True, forbid_unknown_fields=True, tag="oidc", tag_field="type"):
    """An OpenID Connect provider: discovery from `issuer`, code flow with PKCE."""

    id: str
    issuer: str
    client_id: str
    client_secret: str
    name: str = ""
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "email", "profile"])
    email_claim: str = "email"
    groups_claim: str = "groups"
    verify_tls: bool = True
    ca_file: str = ""

    def __post_init__(self) -> None:
        _check_provider(self.id, self.name or self.id)
        if upstream_problem(self.issuer) is not None or "?" in self.issuer or "#" in self.issuer:
            raise _field_error("issuer", f"Expected an http:// or https:// URL, got {self.issuer!r}")
        if self.issuer.startswith("http://") and not is_loopback_host(urlsplit(self.issuer).hostname or ""):
            raise _field_error(
                "issuer",
                f"Expected https:// (plain http only for an issuer on loopback), got {self.issuer!r}",
            )
        if not self.client_id or not self.client_id.isprintable():
            raise _field_error("client_id", "Expected a non-empty printable string")
        if "openid" not in self.scopes:
            raise _field_error("scopes", "Expected 'openid' among the scopes (OpenID Connect needs it)")


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine: localhost and
    *.localhost (RFC 6761: browsers resolve them to loopback), 127/8, ::1."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_provider(ident: str, name: str) -> None:
    if not _PROVIDER_ID_RE.match(ident):
        raise _field_error(
            "id", f"Expected 1-32 of a-z 0-9 _ - (starting with a letter or digit), got {ident!r}"
        )
    if not name.isprintable() or len(name) > 100:
        raise _field_error("name", "Expected up to 100 printable characters")


Provider = DevProvider | OidcProvider


class Team(Struct, frozen=True, forbid_unknown_fields=True):
    """The team host: the edge's own login service and token issuer."""

    host: str
    providers: list[Provider]
    # How browsers reach the team host, scheme://host[:port] ("" = from the
    # first listener: http(s)://<host>:<port>). Also the `iss` of its tokens.
    url: str = ""
    key_dir: str = "var/keys"
    algorithm: str = "ES256"
    key_overlap: KeyOverlap = 86400.0
    session_duration: SessionDuration = 86400
    store: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9:._-]{0,64}$")] = "edge:"

    def __post_init__(self) -> None:
        try:
            pattern = parse_domain(self.host)
        except ValueError as exc:
            raise _field_error("host", str(exc)) from None
        if pattern.segments or pattern.wildcard:
            raise _field_error(
                "host", f"Expected a plain host name (no path, no wildcard), got {self.host!r}"
            )
        if self.url:
            parts = urlsplit(self.url)
            if (
                parts.scheme not in ("http", "https")
                or (parts.hostname or "") != pattern.host
                or (parts.path not in ("", "/") or parts.query or parts.fragment)
            ):
                raise _field_error(
                    "url", f"Expected http(s)://{pattern.host}[:port] (the team host), got {self.url!r}"
                )
        if not self.providers:
            raise _field_error("providers", "Expected at least one identity provider")
        _check_unique_attr("providers", [p.id for p in self.providers], "id", scope="")
        _check_choice("algorithm", self.algorithm, SIGNING_ALGORITHMS)
        _check_choice("store", self.store, STORES)
        if urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise _field_error("redis_url", f"Expected redis://host:port/db, got {self.redis_url!r}")

    @property
    def hostname(self) -> str:
        return parse_domain(self.host).host


class Demo(Struct, frozen=True, forbid_unknown_fields=True):
    """The built-in demo origin (`edge serve` starts it when this table is present)."""

    listen: str = "127.0.0.1:9000"  # the demo apps' upstream
    web_listen: str = "127.0.0.1:9001"  # a second origin whose page calls the API with fetch()
    hint: str = "a user of the dev provider"  # who to sign in as, for the startup banner

    def __post_init__(self) -> None:
        for key in ("listen", "web_listen"):
            try:
                parse_listen(getattr(self, key))
            except ValueError as exc:
                raise _field_error(key, str(exc)) from None


def _check_team(config: Config) -> None:
    team = config.team
    if team is None:
        return
    if team.store == "memory" and config.server.workers > 1:
        raise _field_error(
            "team.store",
            f'Expected "redis" with server.workers = {config.server.workers}: logouts and one-time '
            'codes must be shared by every worker ("memory" serves one worker only)',
        )
    if not team.url and config.server.addresses[0].port == 0:
        raise _field_error(
            "team.url",
            "Expected a URL here: the first listener's port is 0 (chosen at start), so the "
            "team host's address cannot be derived from it",
        )
    host = team.hostname
    for i, app in enumerate(config.apps):
        for k, pattern in enumerate(app.patterns):
            if pattern.host == host or (pattern.host.startswith("*.") and host.endswith(pattern.host[1:])):
                raise _field_error(
                    f"apps[{i}].domains[{k}]",
                    f"{app.domains[k]!r} covers the team host {host!r}, which the edge serves itself",
                )


def _check_apps(config: Config) -> None:
    """Rules across applications: names, audience tags and domains are unique."""
    names: dict[str, int] = {}
    tags: dict[str, int] = {}
    patterns: dict[DomainPattern, tuple[int, int]] = {}
    for i, app in enumerate(config.apps):
        if app.name in names:
            raise _field_error(
                f"apps[{i}].name", f"{app.name!r} is already the name of $.apps[{names[app.name]}]"
            )
        names[app.name] = i
        if app.tag in tags:
            raise _field_error(f"apps[{i}].aud", f"{app.tag!r} is already the aud of $.apps[{tags[app.tag]}]")
        tags[app.tag] = i
        for k, pattern in enumerate(app.patterns):
            if pattern in patterns:
                a, b = patterns[pattern]
                raise _field_error(
                    f"apps[{i}].domains[{k}]",
                    f"{app.domains[k]!r} is already covered by $.apps[{a}].domains[{b}] "
                    f"({config.apps[a].name!r}); one pattern, one application",
                )
            patterns[pattern] = (i, k)


def _check_references(config: Config) -> None:
    """Service tokens named in policies exist; names, ids and issuers are unique."""
    _check_unique_attr("service_tokens", [t.name for t in config.service_tokens], "name")
    _check_unique_attr("service_tokens", [t.client_id for t in config.service_tokens], "client_id")
    _check_unique_attr("issuers", [x.iss for x in config.issuers], "iss")
    known = {t.name for t in config.service_tokens}
    for i, app in enumerate(config.apps):
        for j, policy in enumerate(app.policies):
            for part in ("include", "require", "exclude"):
                for k, rule in enumerate(getattr(policy, part)):
                    for m, name in enumerate(rule.service_tokens or ()):
                        if name not in known:
                            raise _field_error(
                                f"apps[{i}].policies[{j}].{part}[{k}].service_tokens[{m}]",
                                f"Expected the name of a [[service_tokens]] entry, got {name!r}"
                                + (
                                    f" (known: {', '.join(sorted(known))})"
                                    if known
                                    else " (none are configured)"
                                ),
                            )


def _check_unique_attr(table: str, values: list[str], key: str, scope: str = "$.") -> None:
    """`scope` prefixes the earlier entry's path in the message: "$." from
    Config, "" from a nested table (which does not know its own path)."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            message = f"{value!r} is already used by {scope}{table}[{seen[value]}]"
            raise _field_error(f"{table}[{i}].{key}", message)
        seen[value] = i


class Config(Struct, frozen=True, forbid_unknown_fields=True):
    server: Server = Server()
    proxy: Proxy = Proxy()
    apps: list[App] = msgspec.field(default_factory=list)
    issuers: list[Issuer] = msgspec.field(default_factory=list)
    service_tokens: list[ServiceToken] = msgspec.field(default_factory=list)
    login: Login = Login()
    team: Team | None = None
    demo: Demo | None = None

    def __post_init__(self) -> None:
        _check_apps(self)
        _check_references(self)
        _check_team(self)


# -- loading ----------------------------------------------------------------

_PATH_RE = re.compile(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`$", re.S)
_PATH_PART_RE = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")


def _lookup(raw: Any, path: str) -> tuple[bool, Any]:
    """Find the value at a msgspec key path like ``$.server.listen[0]``."""
    node = raw
    for m in _PATH_PART_RE.finditer(path[1:]):
        key, index = m.group(1), m.group(2)
        if key is not None and isinstance(node, dict) and key in node:
            node = node[key]
        elif index is not None and isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        else:
            return False, None
    return True, node


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "an array"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # nan, inf, -inf: as TOML spells them (JSON would say null)
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


# msgspec speaks JSON ("object", "field"); a config file is TOML ("table", "key").
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING_RE = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")
_REGEX_RE = re.compile(r"^Expected `str` matching regex '(?P<pattern>.*)'$", re.S)
_TYPE_WORDS = {"`object | null`": "a table", "`object`": "a table", "`array`": "an array"}
_PATTERN_WORDS = {SERVER_HEADER_PATTERN: 'printable ASCII words separated by single spaces (or "" for none)'}


def _known_keys(path: str) -> list[str]:
    """The keys of the table at a key path like ``$.server.tls``."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for m in _PATH_PART_RE.finditer(path[1:]):
        if m.group(2) is not None:  # [n]: a table inside an array of tables
            if not isinstance(info, msgspec.inspect.ListType):
                return []
            info = info.item_type
            continue
        info = _struct_of(info) or info
        if not isinstance(info, msgspec.inspect.StructType):
            return []
        fields = {f.encode_name: f.type for f in info.fields}
        if m.group(1) not in fields:
            return []
        info = fields[m.group(1)]
    struct = _struct_of(info)
    return [] if struct is None else [f.encode_name for f in struct.fields]


def _struct_of(info: msgspec.inspect.Type) -> msgspec.inspect.StructType | None:
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
        return structs[0] if structs else None
    return info if isinstance(info, msgspec.inspect.StructType) else None


def _reword(path: str, message: str) -> str:
    if m := _UNKNOWN_RE.match(message):
        key, known = m["key"], _known_keys(path)
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        return f"unknown key {key!r} (known keys: {', '.join(known)})" if known else f"unknown key {key!r}"
    if m := _MISSING_RE.match(message):
        return f"missing required key {m['key']!r}"
    if path.endswith(".type") and message.startswith("Invalid value"):
        return f"Expected one of dev, oidc, got {message.removeprefix('Invalid value ')}"
    if m := _REGEX_RE.match(message):
        words = _PATTERN_WORDS.get(m["pattern"].encode().decode("unicode_escape"))
        return f"Expected {words}" if words else message
    for word, toml_word in _TYPE_WORDS.items():
        message = message.replace(word, toml_word)
    return message


def format_validation_error(source: str, raw: Any, exc: msgspec.ValidationError) -> str:
    text = str(exc)
    m = _PATH_RE.match(text)
    path, message = ("$", text) if m is None else (m["path"], m["message"])
    if message.startswith(_FIELD_MARK):
        field, _, message = message[len(_FIELD_MARK) :].partition(_FIELD_MARK)
        path = f"{path}.{field}" if not field.startswith("[") else path + field
        return f"{source}: {path}: {message}"
    message = _reword(path, message).replace("`", "")
    if ", got " not in message and message.startswith("Expected"):
        found, value = _lookup(raw, path)
        if found:
            message = f"{message}, got {_show(value)}"
    return f"{source}: {path}: {message}"


def loads(text: str | bytes, source: str = "<config>") -> Config:
    """Decode and validate TOML text; raise ConfigError naming `source`."""
    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(format_validation_error(source, raw, exc)) from None


def load(path: str | Path) -> Config:
    """Read and validate the config file at `path`."""
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return loads(text, source)
