"""The configuration schema: what a config file may say, and nothing else.

Invariants:
- Every struct is frozen and forbids unknown fields: a typo is an error, never
  a silently ignored setting.
- Types and per-value bounds live here (``Annotated[..., Meta(...)]``, checked
  by msgspec while decoding); rules across fields live in `checks`, which
  report a key path and a message instead of raising.
- Derived values (`Server.addresses`, `Server.trusted_networks`,
  `Rule.networks`, `App.patterns`, `App.tag`, `Team.hostname`, `Demo.address`,
  `Demo.web_address`, `Templates.texts`) are cached: parsed once, by `load` right after the
  checks passed, and never again from the strings. They are meaningful only
  on a config the checks accepted. `msgspec.structs.replace` starts the copy
  with an empty cache (a reload keeping the boot listeners relies on it), so
  a derived value never outlives the fields it was parsed from.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
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
HeaderBytes = Annotated[int, Meta(ge=1 * KIB, le=1 * MIB)]
TargetBytes = Annotated[int, Meta(ge=64, le=1 * MIB)]
BodyBytes = Annotated[int, Meta(ge=0, le=1 << 50)]
Connections = Annotated[int, Meta(ge=1, le=1_000_000)]
Workers = Annotated[int, Meta(ge=1, le=256)]
# A wait that may be off: 0 (none), else bounded as the timeouts are.
Delay = Annotated[float, Meta(ge=0.0, le=86400.0)]
# Printable ASCII words separated by single spaces, or "" for no header: h11
# refuses a value with leading or trailing whitespace (RFC 9110 5.5).
SERVER_HEADER_PATTERN = r"^(?:[\x21-\x7e]+(?: [\x21-\x7e]+)*)?$"
ServerHeader = Annotated[str, Meta(max_length=256, pattern=SERVER_HEADER_PATTERN)]


class TLS(Struct, frozen=True, forbid_unknown_fields=True):
    """TLS for the listeners; TLS 1.2+ with the ssl module's modern defaults."""

    cert: Annotated[str, Meta(min_length=1)]  # PEM certificate chain
    key: Annotated[str, Meta(min_length=1)]  # PEM private key
    min_version: str = "1.2"
    # PEM CA bundle for client certificates ("" = none asked for). Set, the
    # listener asks every client for a certificate but does not require one;
    # a presented one that does not chain to these CAs (or has expired) fails
    # the handshake. Policies read the result with valid_certificate and
    # common_name.
    client_ca: str = ""


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
    # Seconds from SIGTERM/SIGINT to the drain, serving as usual but with
    # readiness 503, so load balancers stop sending while the edge still
    # accepts (Caddy's shutdown_delay). 0: drain at once.
    shutdown_delay: Delay = 0.0
    # Access log: "off", "stdout", or a file path.
    access_log: Annotated[str, Meta(min_length=1)] = "stdout"
    # Peers (CIDR) whose X-Forwarded-For is believed: the client IP that
    # ip_ranges rules see, and the chain passed on upstream. Their (safe)
    # X-Request-Id is kept as the request's id (edge.http.request_id).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # Forward client header fields whose name has `_` (nginx's option of the
    # same name). Off: an upstream on WSGI/CGI, PHP or Rack reads `X_A` and
    # `X-A` as one variable. On, a name that reads as Cf-Access-*,
    # X-Forwarded-* or X-Request-Id is still dropped (forwarding.EDGE_OWNED_PREFIXES).
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
    # Idle keep-alive connections kept per upstream, and for how long. At
    # least the peak of requests in flight to one upstream: below it, the
    # connections a burst releases beyond max_idle are closed and the next
    # burst opens them again (with 32 and 50 clients, a new connection for
    # one request in ten, which cost the proxied GET a fifth of its rate in
    # bench/proxy.py). 256 idle sockets cost an upstream little.
    max_idle: Annotated[int, Meta(ge=0, le=10_000)] = 256
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
    "group",
    "email_list",
    "ip_list",
    "auth_method",
    "login_method",
    # client certificates
    "valid_certificate",
    "common_name",
)
# Selectors that need a verified user token, and those that need a service token.
# (`group` is neither: a group is checked by what its own rules need.)
IDENTITY_SELECTORS = frozenset(
    {"emails", "email_domains", "groups", "email_list", "auth_method", "login_method"}
)
SERVICE_SELECTORS = frozenset({"service_tokens", "any_service_token"})
# Selectors that read the client certificate: they need [server.tls] client_ca.
CERT_SELECTORS = frozenset({"valid_certificate", "common_name"})
# The placeholders a [login] url may use (and edge.access.endpoints.DEFAULT_LOGIN_URL uses).
LOGIN_PLACEHOLDERS = ("host", "aud", "redirect_url")
# Cloudflare's own limits for Access-Control-Max-Age: -1 (no caching) to 24 h.
MaxAge = Annotated[int, Meta(ge=-1, le=86400)]
# Clock skew tolerated on exp/nbf/iat. 60 s covers NTP-synced hosts with room
# to spare; more would keep a just-expired session alive longer than needed.
DEFAULT_LEEWAY = 60
MAX_LEEWAY = 600  # seconds; a revocation's hold counts it (edge.access.revocation)
Leeway = Annotated[int, Meta(ge=0, le=MAX_LEEWAY)]
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
    group: list[str] | None = None  # [[groups]] names: any of them
    email_list: list[str] | None = None  # [[lists]] names of type "email"
    ip_list: list[str] | None = None  # [[lists]] names of type "ip"
    auth_method: list[str] | None = None  # amr values reported at sign-in (mfa, hwk, otp, ...)
    login_method: list[str] | None = None  # identity provider ids ([[team.providers]] id)
    # client certificates
    valid_certificate: bool | None = None
    common_name: list[str] | None = None

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


class Group(Struct, frozen=True, forbid_unknown_fields=True):
    """Reusable rules, referenced as ``{ group = ["name"] }`` from a policy or
    another group: it matches like a policy does (any include, every
    require, no exclude)."""

    name: str
    include: list[Rule]
    require: list[Rule] = msgspec.field(default_factory=list)
    exclude: list[Rule] = msgspec.field(default_factory=list)


LIST_TYPES = ("email", "ip")


class List(Struct, frozen=True, forbid_unknown_fields=True):
    """A named list of emails or IP networks, referenced as
    ``{ email_list = [...] }`` / ``{ ip_list = [...] }``. Entries inline
    (`items`) or one a line in `file` (relative to the working directory,
    like jwks_file; `#` comments and blank lines allowed). `load` reads the
    file and puts its entries in `items` (keeping `file`), so after load
    `items` always holds the entries."""

    name: str
    type: str
    items: list[str] | None = None
    file: str | None = None


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
    # Sign-in and pages. The provider ids this app's login page offers (None:
    # every provider of the team); a provider left out is refused even when
    # posted to directly.
    allowed_idps: list[str] | None = None
    # With exactly one allowed provider: no chooser, straight to its sign-in.
    auto_redirect_to_identity: bool = False
    # For a user the policies refuse: shown on the 403 page (escaped), or
    # instead a navigation is redirected to this absolute http(s) URL.
    custom_deny_message: str = ""
    custom_deny_url: str = ""
    # The team host's app launcher lists the app (when the user may open it).
    app_launcher_visible: bool = True
    logo_url: str = ""  # http(s) URL of an image shown beside the app's name in the launcher

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
    # edge.access.endpoints.DEFAULT_LOGIN_URL (the protected host's own
    # /cdn-cgi/access/login).
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
    # Authentication methods reported for this user's sign-ins (the token's
    # `amr`, matched by auth_method rules), e.g. ["pwd", "mfa"].
    amr: list[str] = msgspec.field(default_factory=lambda: ["pwd"])


class DevProvider(Struct, frozen=True, forbid_unknown_fields=True, tag="dev", tag_field="type"):
    """Sign-in with users listed here. For trying the edge out, not for
    production: `edge check` warns when it is enabled on a listener that is
    not loopback."""

    users: list[DevUser]
    id: str = "dev"
    name: str = "Development sign-in (not for production)"


# A claim name, or a dotted path into nested claims: no empty name or step
# (one would read nothing, and every sign-in would lack an email).
ClaimPath = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^.]+(?:\.[^.]+)*$")]


class OidcProvider(Struct, frozen=True, forbid_unknown_fields=True, tag="oidc", tag_field="type"):
    """An OpenID Connect provider: discovery from `issuer`, code flow with PKCE."""

    id: str
    issuer: str
    client_id: str
    client_secret: str
    name: str = ""
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "email", "profile"])
    email_claim: ClaimPath = "email"  # a claim name or a dotted path into nested claims
    groups_claim: ClaimPath = "groups"  # e.g. "realm_access.roles"; a list of strings, or one string
    allow_unverified_email: bool = False  # accept email_verified = false (absent is accepted)
    verify_tls: bool = True
    ca_file: str = ""


Provider = DevProvider | OidcProvider

# The pages a template may replace, and what a template may say: {{name}} is
# replaced by the value, HTML-escaped, except `content` (the page's own
# markup, which the edge builds and escapes itself).
TEMPLATE_PAGES = ("login", "denied", "signed_out", "launcher")
TEMPLATE_PLACEHOLDERS = ("title", "team_name", "logo_url", "accent", "content")
TEMPLATE_CONTENT = "content"


class Templates(Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """Custom HTML templates for the team's pages: file paths ("" = built in)."""

    login: str = ""
    denied: str = ""
    signed_out: str = ""
    launcher: str = ""

    @cached_property
    def texts(self) -> dict[str, str]:
        """The templates' text by page, read once (by `load`, which checks
        it and reports a TemplateReadError with the key path)."""
        texts: dict[str, str] = {}
        for page in TEMPLATE_PAGES:
            path = getattr(self, page)
            if not path:
                continue
            try:
                texts[page] = Path(path).read_text("utf-8")
            except OSError as exc:
                raise TemplateReadError(page, f"cannot read {path!r}: {exc.strerror or exc}") from None
            except UnicodeDecodeError:
                raise TemplateReadError(page, f"{path}: Expected UTF-8 text") from None
        return texts


class TemplateReadError(Exception):
    """A template file that cannot be used: which page, and why."""

    def __init__(self, page: str, reason: str) -> None:
        super().__init__(f"{page}: {reason}")
        self.page = page
        self.reason = reason


class Branding(Struct, frozen=True, forbid_unknown_fields=True):
    """How the team's pages (login, denied, signed out, launcher) look."""

    name: str = ""  # the team's name, shown in titles and headings ("" = none)
    logo_url: str = ""  # http(s) URL of the team's logo ("" = none)
    accent: str = ""  # "#rrggbb": headings, buttons and links ("" = the built-in look)
    templates: Templates = Templates()


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
    branding: Branding = Branding()

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
    groups: list[Group] = msgspec.field(default_factory=list)
    lists: list[List] = msgspec.field(default_factory=list)
    login: Login = Login()
    team: Team | None = None
    demo: Demo | None = None
    metrics: Metrics | None = None  # off unless the table is present
