"""The configuration schema: what a config file may say, and nothing else.

Invariants:
- Every struct is frozen and forbids unknown fields: a typo is an error, never
  a silently ignored setting.
- Types and per-value bounds live here (``Annotated[..., Meta(...)]``, checked
  by msgspec while decoding); rules across fields live in `checks`, which
  report a key path and a message instead of raising.
- Derived values (`Server.addresses`, `Server.trusted_networks`,
  `Rule.networks`, `App.patterns`, `App.tag`, `Team.hostname`, `Demo.address`,
  `Demo.web_address`) are cached: parsed once, by `load` right after the
  checks passed, and never again from the strings. They are meaningful only
  on a config the checks accepted. `msgspec.structs.replace` starts the copy
  with an empty cache (a reload keeping the boot listeners relies on it), so
  a derived value never outlives the fields it was parsed from.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from edge.config.syntax import (
    DomainPattern,
    IPNetwork,
    ListenAddress,
    parse_domain,
    parse_listen,
    parse_networks,
)

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


class TLS(Struct, frozen=True, forbid_unknown_fields=True):
    """TLS for the listeners; TLS 1.2+ with the ssl module's modern defaults."""

    cert: Annotated[str, Meta(min_length=1)]  # PEM certificate chain
    key: Annotated[str, Meta(min_length=1)]  # PEM private key
    min_version: str = "1.2"


# dict=True: room for the cached derived values (a frozen struct has no other).
class Server(Struct, frozen=True, forbid_unknown_fields=True, dict=True):
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

    @cached_property
    def addresses(self) -> tuple[ListenAddress, ...]:
        return tuple(parse_listen(item) for item in self.listen)

    @cached_property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.trusted_proxies)


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
# Only syntax lives here (cross-field rules: `checks`); edge.access.decide's
# compile_config turns these plain values into the runtime objects (tries,
# key sets, prebuilt responses) and reads the JWKS files.

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
# The longest lifetime (exp - iat, seconds) an issuer's tokens may claim; longer
# ones are refused. A logout keeps its session refused this long (plus leeway),
# so no token of it can outlive the revocation. A day, like the default
# session_duration; an issuer that grants longer sessions must say so.
DEFAULT_MAX_TOKEN_LIFETIME = 86400


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


class Rule(Struct, frozen=True, forbid_unknown_fields=True, dict=True):
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

    @cached_property
    def networks(self) -> tuple[IPNetwork, ...]:
        """The parsed `ip_ranges` (empty for any other selector)."""
        return parse_networks(self.ip_ranges or [])


class Policy(Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    action: str
    include: list[Rule]
    require: list[Rule] = msgspec.field(default_factory=list)
    exclude: list[Rule] = msgspec.field(default_factory=list)


class App(Struct, frozen=True, forbid_unknown_fields=True, dict=True):
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

    @cached_property
    def tag(self) -> str:
        """The audience tag tokens must carry: `aud`, or one derived from the
        name (64 hex digits, like Cloudflare's application AUD tags)."""
        return self.aud if self.aud is not None else hashlib.sha256(self.name.encode()).hexdigest()

    @cached_property
    def patterns(self) -> tuple[DomainPattern, ...]:
        return tuple(parse_domain(text) for text in self.domains)


class Issuer(Struct, frozen=True, forbid_unknown_fields=True):
    """Who signs user tokens, and with which keys and algorithms."""

    iss: str
    jwks_file: str | None = None
    jwks_url: str | None = None
    secret: str | None = None
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256"])
    leeway: Leeway = DEFAULT_LEEWAY
    max_token_lifetime: SessionDuration = DEFAULT_MAX_TOKEN_LIFETIME


class ServiceToken(Struct, frozen=True, forbid_unknown_fields=True):
    """A machine credential: CF-Access-Client-Id + CF-Access-Client-Secret."""

    name: str
    client_id: str
    secret_sha256: str


class Login(Struct, frozen=True, forbid_unknown_fields=True):
    """Where unauthenticated users are sent."""

    # None: the team host's login page when [team] is set, else
    # DEFAULT_LOGIN_URL (the protected host's own /cdn-cgi/access/login).
    url: str | None = None


# -- the login service: team host, identity providers, built-in issuer -----------

SIGNING_ALGORITHMS = ("ES256", "RS256")
STORES = ("memory", "redis")
# How long a rotated-out signing key keeps verifying: 0 (at once) to 30 days.
KeyOverlap = Annotated[float, Meta(ge=0, le=30 * 86400)]


class DevUser(Struct, frozen=True, forbid_unknown_fields=True):
    """A user of the development provider."""

    email: str
    password: str  # an scrypt hash from `edge password`, never the password itself
    groups: list[str] = msgspec.field(default_factory=list)


class DevProvider(Struct, frozen=True, forbid_unknown_fields=True, tag="dev", tag_field="type"):
    """Sign-in with users listed here. For trying the edge out, not for
    production: `edge check` warns when it is enabled on a listener that is
    not loopback."""

    users: list[DevUser]
    id: str = "dev"
    name: str = "Development sign-in (not for production)"


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


Provider = DevProvider | OidcProvider


class Team(Struct, frozen=True, forbid_unknown_fields=True, dict=True):
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

    @cached_property
    def hostname(self) -> str:
        return parse_domain(self.host).host


class Demo(Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """The built-in demo origin (`edge serve` starts it when this table is present)."""

    listen: str = "127.0.0.1:9000"  # the demo apps' upstream
    web_listen: str = "127.0.0.1:9001"  # a second origin whose page calls the API with fetch()
    hint: str = "a user of the dev provider"  # who to sign in as, for the startup banner

    @cached_property
    def address(self) -> ListenAddress:
        return parse_listen(self.listen)

    @cached_property
    def web_address(self) -> ListenAddress:
        return parse_listen(self.web_listen)


class Metrics(Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """Prometheus metrics (`GET /metrics`) on a listener of their own, never
    on a public one: a protected host cannot expose them."""

    listen: str = "127.0.0.1:9301"

    @cached_property
    def address(self) -> ListenAddress:
        return parse_listen(self.listen)


class Config(Struct, frozen=True, forbid_unknown_fields=True):
    server: Server = Server()
    proxy: Proxy = Proxy()
    apps: list[App] = msgspec.field(default_factory=list)
    issuers: list[Issuer] = msgspec.field(default_factory=list)
    service_tokens: list[ServiceToken] = msgspec.field(default_factory=list)
    login: Login = Login()
    team: Team | None = None
    demo: Demo | None = None
    metrics: Metrics | None = None  # off unless the table is present
