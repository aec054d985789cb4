"""Rules across fields and tables, run on a config msgspec has decoded.

Each check takes one table (or the whole config, for rules between tables)
and yields `Problem`s: a key path relative to that table and a message ready
for a user. Nothing here raises to report a problem, and nothing reads a file.

Invariants:
- `problems` yields in the order `load` reports them: tables nested in a table
  first, then the table's own rules; the tables of a list in their order;
  the rules between top-level tables last.
- A table's own rules run only when the tables inside it have no problems, so
  they may rely on them (a policy reads each rule's one selector; the team
  rules read parsed listen addresses and domains).
- A check yields every problem it finds that does not follow from an earlier
  one; where a later rule needs an earlier one to hold, it stops.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from msgspec import Struct

from edge.config.schema import (
    ACTIONS,
    ALGORITHMS,
    CERT_SELECTORS,
    IDENTITY_SELECTORS,
    LIST_TYPES,
    LOGIN_PLACEHOLDERS,
    SELECTORS,
    SERVICE_SELECTORS,
    SIGNING_ALGORITHMS,
    STORES,
    TEMPLATE_CONTENT,
    TEMPLATE_PLACEHOLDERS,
    TLS,
    App,
    Branding,
    Config,
    Cors,
    Demo,
    DevProvider,
    DevUser,
    Group,
    Issuer,
    List,
    Login,
    Metrics,
    OidcProvider,
    Policy,
    Rule,
    Server,
    ServiceToken,
    Team,
)
from edge.config.syntax import (
    DomainPattern,
    cidr_problem,
    email_domain_problem,
    email_problem,
    is_loopback_host,
    origin_problem,
    parse_domain,
    parse_listen,
    text_problem,
    upstream_problem,
)

# Keys and list indexes from the table a check was given, e.g. ("listen", 0).
KeyPath = tuple[str | int, ...]


class Problem(Struct, frozen=True):
    """Why a config cannot be used: where (`path`) and what (`message`)."""

    path: KeyPath
    message: str


Problems = Iterator[Problem]
T = TypeVar("T")

# PyJWT warns below 32 bytes for HS256 (RFC 7518 3.2: key >= hash size).
MIN_HS256_SECRET = 32

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
_AUD_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 5.6.2 token
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
# A password hash as `edge password` writes it: scrypt$<log2 n>$<r>$<p>$<salt>$<hash>
# (salt and hash base64url without padding).
_SCRYPT_RE = re.compile(r"^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$[A-Za-z0-9_-]{16,}\$[A-Za-z0-9_-]{32,}$")
_PROVIDER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_ACCENT_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
# A template placeholder: {{name}}, spaces inside the braces allowed.
PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
# Longest custom deny message: a sentence or a short paragraph, not a page.
MAX_DENY_MESSAGE = 1000


# -- the whole config ----------------------------------------------------------


def problems(config: Config) -> Problems:
    """Every problem of `config`, paths from its root (see the invariants)."""
    yield from _then(_tables(config), _between_tables(config))


def _tables(config: Config) -> Problems:
    server = config.server
    tls = () if server.tls is None else _under(("tls",), check_tls(server.tls))
    yield from _under(("server",), _then(tls, check_server(server)))
    for i, app in enumerate(config.apps):
        yield from _under(("apps", i), _then(_app_tables(app), check_app(app)))
    yield from _each("issuers", config.issuers, check_issuer)
    yield from _each("service_tokens", config.service_tokens, check_service_token)
    for i, group in enumerate(config.groups):
        yield from _under(("groups", i), _then(_rules(group), check_group(group)))
    yield from _each("lists", config.lists, check_list)
    yield from _under(("login",), check_login(config.login))
    if config.team is not None:
        providers = _each("providers", config.team.providers, _provider_tables)
        yield from _under(("team",), _then(providers, check_team(config.team)))
    if config.demo is not None:
        yield from _under(("demo",), check_demo(config.demo))
    if config.metrics is not None:
        yield from _under(("metrics",), check_metrics(config.metrics))


def _app_tables(app: App) -> Problems:
    for j, policy in enumerate(app.policies):
        yield from _under(("policies", j), _then(_rules(policy), check_policy(policy)))
    if app.cors is not None:
        yield from _under(("cors",), check_cors(app.cors))


def _rules(policy: Policy | Group) -> Problems:
    for part in ("include", "require", "exclude"):
        yield from _each(part, getattr(policy, part), check_rule)


def _provider_tables(provider: DevProvider | OidcProvider) -> Problems:
    if isinstance(provider, OidcProvider):
        return check_oidc_provider(provider)
    return _then(_each("users", provider.users, check_dev_user), check_dev_provider(provider))


def _between_tables(config: Config) -> Problems:
    yield from check_apps(config)
    yield from check_references(config)
    yield from check_groups_and_lists(config)
    yield from check_team_config(config)
    yield from check_client_certs(config)
    yield from check_metrics_listener(config)


def _then(inner: Iterable[Problem], outer: Iterable[Problem]) -> Problems:
    """`inner`'s problems, or when it has none, `outer`'s (a table's rules
    may rely on the tables inside it; `outer` is a generator, so it does not
    run unless asked)."""
    clean = True
    for problem in inner:
        clean = False
        yield problem
    if clean:
        yield from outer


def _under(prefix: KeyPath, found: Iterable[Problem]) -> Problems:
    for problem in found:
        yield Problem(prefix + problem.path, problem.message)


def _each(key: str, tables: list[T], check: Callable[[T], Problems]) -> Problems:
    for i, table in enumerate(tables):
        yield from _under((key, i), check(table))


# -- small rules shared by several tables --------------------------------------


def _name(key: str, value: str) -> Problems:
    if not _NAME_RE.match(value):
        yield Problem(
            (key,),
            f"Expected letters, digits, ' ', '.', '_' or '-' (1-128, starting with a letter or digit), "
            f"got {value!r}",
        )


def _choice(path: KeyPath, value: str, choices: tuple[str, ...]) -> Problems:
    if value not in choices:
        yield Problem(path, f"Expected one of {', '.join(choices)}, got {value!r}")


def _unique(key: str, values: list[str], fold: bool = False) -> Problems:
    seen: set[str] = set()
    for i, value in enumerate(values):
        folded = value.lower() if fold else value
        if folded in seen:
            yield Problem((key, i), f"{value!r} is listed twice")
        seen.add(folded)


def _unique_attr(table: str, values: list[str], key: str, scope: str = "$.") -> Problems:
    """`scope` prefixes the earlier entry's path in the message: "$." from
    Config, "" from a nested table (the wording users have always seen)."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            yield Problem((table, i, key), f"{value!r} is already used by {scope}{table}[{seen[value]}]")
        else:
            seen[value] = i


# -- [server] -------------------------------------------------------------------


def check_tls(tls: TLS) -> Problems:
    if tls.min_version not in ("1.2", "1.3"):
        yield Problem(("min_version",), f"Expected '1.2' or '1.3', got {tls.min_version!r}")


def check_server(server: Server) -> Problems:
    for i, cidr in enumerate(server.trusted_proxies):
        problem = cidr_problem(cidr)
        if problem is not None:
            yield Problem(("trusted_proxies", i), problem)
    if not server.listen:
        yield Problem(("listen",), "Expected at least one address")
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(server.listen):
        try:
            addr = parse_listen(item)
        except ValueError as exc:
            yield Problem(("listen", i), str(exc))
            continue
        if (addr.host, addr.port) in seen and addr.port != 0:
            yield Problem(("listen", i), f"{item!r} is listed twice")
        seen.add((addr.host, addr.port))
    if server.max_target_bytes >= server.max_header_bytes:
        yield Problem(
            ("max_target_bytes",),
            f"Expected less than max_header_bytes ({server.max_header_bytes}), got {server.max_target_bytes}",
        )


# -- [[apps]] and what is inside --------------------------------------------------


def check_cors(cors: Cors) -> Problems:
    if cors.allow_credentials and cors.allow_all_origins:
        yield Problem(
            ("allow_credentials",),
            "Expected false with allow_all_origins = true: any site could read your users' data "
            "(list the origins in allowed_origins instead)",
        )
    for i, origin in enumerate(cors.allowed_origins):
        problem = origin_problem(origin)
        if problem is not None:
            yield Problem(("allowed_origins", i), problem)
        elif origin == "null" and cors.allow_credentials:
            yield Problem(
                ("allowed_origins", i),
                "Expected no 'null' origin with allow_credentials = true: sandboxed and file: pages "
                "all send 'null', so it identifies no site",
            )
    yield from _unique("allowed_origins", cors.allowed_origins)
    has_origins = cors.allow_all_origins or bool(cors.allowed_origins)
    if has_origins and not (cors.allow_all_methods or cors.allowed_methods):
        yield Problem(
            ("allowed_methods",),
            "Expected at least one method (or allow_all_methods = true) when origins are allowed",
        )
    yield from _tokens("allowed_methods", cors.allowed_methods, "allow_all_methods")
    yield from _tokens("allowed_headers", cors.allowed_headers, "allow_all_headers")
    yield from _tokens("expose_headers", cors.expose_headers, None)
    yield from _unique("allowed_methods", cors.allowed_methods)
    yield from _unique("allowed_headers", cors.allowed_headers, fold=True)
    yield from _unique("expose_headers", cors.expose_headers, fold=True)


def _tokens(key: str, values: list[str], all_switch: str | None) -> Problems:
    for i, value in enumerate(values):
        if value == "*" and all_switch is not None:
            yield Problem((key, i), f"Expected a name; for any, set {all_switch} = true")
        elif not _TOKEN_RE.match(value) or value == "*":
            yield Problem((key, i), f"Expected a method or header name (an HTTP token), got {value!r}")


_RULE_VALUE_PROBLEMS: dict[str, Callable[[str], str | None]] = {
    "emails": email_problem,
    "email_domains": email_domain_problem,
    "groups": text_problem,
    "ip_ranges": cidr_problem,
    "service_tokens": text_problem,
    "group": text_problem,
    "email_list": text_problem,
    "ip_list": text_problem,
    "auth_method": text_problem,
    "login_method": text_problem,
    "common_name": text_problem,
}


def check_rule(rule: Rule) -> Problems:
    given = [name for name in SELECTORS if getattr(rule, name) is not None]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        yield Problem((), f"Expected exactly one selector ({', '.join(SELECTORS)}), got {found}")
        return
    name = given[0]
    value: bool | list[str] = getattr(rule, name)
    if isinstance(value, bool):
        if not value:
            yield Problem((name,), "Expected true (leave the rule out instead of false)")
        return
    if not value:
        yield Problem((name,), "Expected at least one value")
        return
    for i, item in enumerate(value):
        problem = _RULE_VALUE_PROBLEMS[name](item)
        if problem is not None:
            yield Problem((name, i), problem)
    yield from _unique(name, value, fold=name in ("emails", "email_domains"))


def check_policy(policy: Policy) -> Problems:
    """Its rules must have passed `check_rule` (each has one selector)."""
    yield from _name("name", policy.name)
    yield from _choice(("action",), policy.action, ACTIONS)
    if not policy.include:
        yield Problem(("include",), "Expected at least one rule")
    for part in ("include", "require", "exclude"):
        for i, rule in enumerate(getattr(policy, part)):
            selector = rule.selector
            path = (part, i, selector)
            if selector in IDENTITY_SELECTORS and policy.action in ("bypass", "service_auth"):
                yield Problem(
                    path,
                    f"Expected no identity selector in a {policy.action} policy: it is decided without "
                    "a user token",
                )
            if selector in SERVICE_SELECTORS and policy.action != "service_auth":
                yield Problem(
                    path,
                    "Expected service token selectors only in service_auth policies (elsewhere a user "
                    "login is needed)",
                )


def check_app(app: App) -> Problems:
    yield from _name("name", app.name)
    if not app.domains:
        yield Problem(("domains",), "Expected at least one domain")
    for i, text in enumerate(app.domains):
        try:
            parse_domain(text)
        except ValueError as exc:
            yield Problem(("domains", i), str(exc))
    problem = upstream_problem(app.upstream)
    if problem is not None:
        yield Problem(("upstream",), problem)
    if not app.policies:
        yield Problem(("policies",), "Expected at least one policy (with none, every request is denied)")
    yield from _unique_attr("policies", [p.name for p in app.policies], "name", scope="")
    if app.aud is not None and not _AUD_RE.match(app.aud):
        yield Problem(("aud",), f"Expected 1-128 characters of A-Z a-z 0-9 . _ ~ -, got {app.aud!r}")
    if app.cors is not None and app.options_preflight_bypass:
        yield Problem(
            ("options_preflight_bypass",),
            "Expected false with cors settings: preflights are either answered at the edge (cors) "
            "or forwarded to the upstream (options_preflight_bypass), not both",
        )
    yield from _choice(("unauthenticated",), app.unauthenticated, ("auto", "redirect"))
    yield from _choice(("same_site",), app.same_site, ("lax", "strict", "none"))
    yield from _unique("allowed_idps", app.allowed_idps or [])
    if app.allowed_idps is not None and not app.allowed_idps:
        yield Problem(("allowed_idps",), "Expected at least one provider id (leave it out to offer all)")
    message = app.custom_deny_message
    if len(message) > MAX_DENY_MESSAGE or not message.replace("\n", " ").isprintable():
        yield Problem(("custom_deny_message",), f"Expected up to {MAX_DENY_MESSAGE} printable characters")
    yield from _web_url("custom_deny_url", app.custom_deny_url)
    yield from _web_url("logo_url", app.logo_url)


def _web_url(key: str, url: str) -> Problems:
    """An absolute http(s) URL a browser is sent to or loads ("" = none)."""
    if not url:
        return
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not url.isascii()
        or not url.isprintable()
        or " " in url
    ):
        yield Problem((key,), f"Expected an absolute http:// or https:// URL, got {url!r}")


# -- [[issuers]], [[service_tokens]], [login] --------------------------------------


def check_issuer(issuer: Issuer) -> Problems:
    if not issuer.iss or not issuer.iss.isprintable():
        yield Problem(("iss",), f"Expected a non-empty printable string, got {issuer.iss!r}")
    given = [k for k in ("jwks_file", "jwks_url", "secret") if getattr(issuer, k) is not None]
    if len(given) != 1:
        yield Problem(
            (),
            "Expected exactly one of jwks_file, jwks_url or secret, got " + (" and ".join(given) or "none"),
        )
    if issuer.jwks_url is not None and upstream_problem(issuer.jwks_url) is not None:
        yield Problem(("jwks_url",), f"Expected an http:// or https:// URL, got {issuer.jwks_url!r}")
    if issuer.secret is not None and len(issuer.secret.encode()) < MIN_HS256_SECRET:
        yield Problem(("secret",), f"Expected at least {MIN_HS256_SECRET} bytes (RFC 7518 3.2)")
    if not issuer.algorithms:
        yield Problem(("algorithms",), "Expected at least one algorithm")
    yield from _unique("algorithms", issuer.algorithms)
    for i, alg in enumerate(issuer.algorithms):
        if alg not in ALGORITHMS:
            yield from _choice(("algorithms", i), alg, ALGORITHMS)
        elif (alg == "HS256") != (issuer.secret is not None):
            message = (
                "Expected HS256 only with a secret (a public JWKS key must never serve as an HMAC key)"
                if alg == "HS256"
                else "Expected only HS256 with a secret"
            )
            yield Problem(("algorithms", i), message)


def check_service_token(token: ServiceToken) -> Problems:
    yield from _name("name", token.name)
    if not _TOKEN_RE.match(token.client_id):
        yield Problem(("client_id",), f"Expected a header-safe token (no spaces), got {token.client_id!r}")
    if not _HEX64_RE.match(token.secret_sha256):
        yield Problem(("secret_sha256",), "Expected 64 lower-case hex digits (sha256 of the secret)")


def check_login(login: Login) -> Problems:
    """One value, one problem: each rule below assumes the ones above hold."""
    url = login.url
    if url is None:
        return
    if not (url.startswith(("https://", "http://", "/")) and url.isascii() and url.isprintable()):
        yield Problem(("url",), f"Expected an http(s) URL or an absolute path, got {url!r}")
        return
    if " " in url:
        yield Problem(("url",), f"Expected no spaces, got {url!r}")
        return
    try:
        names = [name for _, name, _spec, _conv in string.Formatter().parse(url) if name is not None]
    except ValueError as exc:
        yield Problem(("url",), f"Expected a template with {{host}}, {{aud}}, {{redirect_url}}: {exc}")
        return
    for name in names:
        if name not in LOGIN_PLACEHOLDERS:
            yield Problem(
                ("url",), f"Expected placeholders among {{host}}, {{aud}}, {{redirect_url}}, got {{{name}}}"
            )
            return


# -- [[groups]] and [[lists]] ------------------------------------------------------


def check_group(group: Group) -> Problems:
    """Its rules must have passed `check_rule`; references: `check_groups_and_lists`."""
    yield from _name("name", group.name)
    if not group.include:
        yield Problem(("include",), "Expected at least one rule")


def check_list(entry: List) -> Problems:
    """The list's own keys; a file's entries are read and checked by `load`."""
    yield from _name("name", entry.name)
    yield from _choice(("type",), entry.type, LIST_TYPES)
    given = [k for k in ("items", "file") if getattr(entry, k) is not None]
    if len(given) != 1:
        yield Problem((), "Expected exactly one of items or file, got " + (" and ".join(given) or "none"))
        return
    if entry.file is not None and not entry.file.strip():
        yield Problem(("file",), "Expected a file path")
    if entry.items is not None and entry.type in LIST_TYPES:
        for i, item in enumerate(entry.items):
            problem = list_entry_problem(entry.type, item)
            if problem is not None:
                yield Problem(("items", i), problem)


def list_entry_problem(kind: str, value: str) -> str | None:
    """What is wrong with one entry of a list of type `kind` ("email" or
    "ip": an address or a network), or None."""
    if kind == "email":
        return email_problem(value)
    return cidr_problem(value)


# -- [team] and its providers ----------------------------------------------------


def check_dev_user(user: DevUser) -> Problems:
    problem = email_problem(user.email)
    if problem is not None:
        yield Problem(("email",), problem)
    if not _SCRYPT_RE.match(user.password):
        yield Problem(
            ("password",), "Expected an scrypt hash made by `edge password` (scrypt$15$8$1$<salt>$<hash>)"
        )
    for i, group in enumerate(user.groups):
        problem = text_problem(group)
        if problem is not None:
            yield Problem(("groups", i), problem)
    for i, method in enumerate(user.amr):
        problem = text_problem(method)
        if problem is not None:
            yield Problem(("amr", i), problem)


def check_dev_provider(provider: DevProvider) -> Problems:
    yield from _provider(provider.id, provider.name)
    if not provider.users:
        yield Problem(("users",), "Expected at least one user")
    yield from _unique("users", [u.email for u in provider.users], fold=True)


def check_oidc_provider(provider: OidcProvider) -> Problems:
    yield from _provider(provider.id, provider.name or provider.id)
    issuer = provider.issuer
    if upstream_problem(issuer) is not None or "?" in issuer or "#" in issuer:
        yield Problem(("issuer",), f"Expected an http:// or https:// URL, got {issuer!r}")
    elif issuer.startswith("http://") and not is_loopback_host(urlsplit(issuer).hostname or ""):
        yield Problem(
            ("issuer",), f"Expected https:// (plain http only for an issuer on loopback), got {issuer!r}"
        )
    if not provider.client_id or not provider.client_id.isprintable():
        yield Problem(("client_id",), "Expected a non-empty printable string")
    if "openid" not in provider.scopes:
        yield Problem(("scopes",), "Expected 'openid' among the scopes (OpenID Connect needs it)")


def _provider(ident: str, name: str) -> Problems:
    if not _PROVIDER_ID_RE.match(ident):
        yield Problem(
            ("id",), f"Expected 1-32 of a-z 0-9 _ - (starting with a letter or digit), got {ident!r}"
        )
    if not name.isprintable() or len(name) > 100:
        yield Problem(("name",), "Expected up to 100 printable characters")


def check_team(team: Team) -> Problems:
    try:
        pattern: DomainPattern | None = parse_domain(team.host)
    except ValueError as exc:
        pattern = None
        yield Problem(("host",), str(exc))
    if pattern is not None and (pattern.segments or pattern.wildcard):
        yield Problem(("host",), f"Expected a plain host name (no path, no wildcard), got {team.host!r}")
    elif pattern is not None and team.url:
        parts = urlsplit(team.url)
        if (
            parts.scheme not in ("http", "https")
            or (parts.hostname or "") != pattern.host
            or (parts.path not in ("", "/") or parts.query or parts.fragment)
        ):
            yield Problem(
                ("url",), f"Expected http(s)://{pattern.host}[:port] (the team host), got {team.url!r}"
            )
    if not team.providers:
        yield Problem(("providers",), "Expected at least one identity provider")
    yield from _unique_attr("providers", [p.id for p in team.providers], "id", scope="")
    yield from _choice(("algorithm",), team.algorithm, SIGNING_ALGORITHMS)
    yield from _choice(("store",), team.store, STORES)
    if urlsplit(team.redis_url).scheme not in ("redis", "rediss", "unix"):
        yield Problem(("redis_url",), f"Expected redis://host:port/db, got {team.redis_url!r}")
    yield from _under(("branding",), check_branding(team.branding))


def check_branding(branding: Branding) -> Problems:
    if not branding.name.isprintable() or len(branding.name) > 100:
        yield Problem(("name",), "Expected up to 100 printable characters")
    yield from _web_url("logo_url", branding.logo_url)
    if branding.accent and not _ACCENT_RE.match(branding.accent):
        yield Problem(("accent",), f"Expected a colour as #rrggbb, got {branding.accent!r}")


def template_problem(text: str) -> str | None:
    """What is wrong with a page template's text, if anything (`load` reads
    the file and reports this with its key path)."""
    names = PLACEHOLDER_RE.findall(text)
    for name in names:
        if name not in TEMPLATE_PLACEHOLDERS:
            known = ", ".join("{{" + n + "}}" for n in TEMPLATE_PLACEHOLDERS)
            return f"Unknown placeholder {{{{{name}}}}} (known: {known})"
    if TEMPLATE_CONTENT not in names:
        return "Expected {{content}} (where the page's own content goes)"
    return None


def check_demo(demo: Demo) -> Problems:
    for key in ("listen", "web_listen"):
        try:
            parse_listen(getattr(demo, key))
        except ValueError as exc:
            yield Problem((key,), str(exc))


def check_metrics(metrics: Metrics) -> Problems:
    try:
        parse_listen(metrics.listen)
    except ValueError as exc:
        yield Problem(("listen",), str(exc))


# -- rules between top-level tables (every table passed its own checks) -----------


_WILDCARDS = {"0.0.0.0", "::"}


def check_metrics_listener(config: Config) -> Problems:
    """Metrics on a public listener would be served to whoever reaches it
    (a wildcard address covers every host on its port)."""
    if config.metrics is None:
        return
    addr = parse_listen(config.metrics.listen)
    for item in config.server.listen:
        public = parse_listen(item)
        hosts = {public.host, addr.host}
        if addr.port != 0 and public.port == addr.port and (len(hosts) == 1 or hosts & _WILDCARDS):
            yield Problem(
                ("metrics", "listen"),
                f"{config.metrics.listen!r} is a public listener ($.server.listen: {item!r})",
            )


def check_apps(config: Config) -> Problems:
    """Names, audience tags and domains are unique across applications."""
    names: dict[str, int] = {}
    tags: dict[str, int] = {}
    patterns: dict[DomainPattern, tuple[int, int]] = {}
    for i, app in enumerate(config.apps):
        if app.name in names:
            yield Problem(
                ("apps", i, "name"), f"{app.name!r} is already the name of $.apps[{names[app.name]}]"
            )
        names.setdefault(app.name, i)
        if app.tag in tags:
            yield Problem(("apps", i, "aud"), f"{app.tag!r} is already the aud of $.apps[{tags[app.tag]}]")
        tags.setdefault(app.tag, i)
        for k, pattern in enumerate(app.patterns):
            if pattern in patterns:
                a, b = patterns[pattern]
                yield Problem(
                    ("apps", i, "domains", k),
                    f"{app.domains[k]!r} is already covered by $.apps[{a}].domains[{b}] "
                    f"({config.apps[a].name!r}); one pattern, one application",
                )
            patterns.setdefault(pattern, (i, k))


def check_references(config: Config) -> Problems:
    """Service tokens named in policies exist; names, ids and issuers are unique."""
    yield from _unique_attr("service_tokens", [t.name for t in config.service_tokens], "name")
    yield from _unique_attr("service_tokens", [t.client_id for t in config.service_tokens], "client_id")
    yield from _unique_attr("issuers", [x.iss for x in config.issuers], "iss")
    known = {t.name for t in config.service_tokens}
    listed = f" (known: {', '.join(sorted(known))})" if known else " (none are configured)"
    for i, app in enumerate(config.apps):
        for j, policy in enumerate(app.policies):
            for part in ("include", "require", "exclude"):
                for k, rule in enumerate(getattr(policy, part)):
                    for m, name in enumerate(rule.service_tokens or ()):
                        if name not in known:
                            yield Problem(
                                ("apps", i, "policies", j, part, k, "service_tokens", m),
                                f"Expected the name of a [[service_tokens]] entry, got {name!r}{listed}",
                            )


def check_team_config(config: Config) -> Problems:
    """The team host against the listeners and the applications."""
    team = config.team
    if team is None:
        for i, app in enumerate(config.apps):
            for key in ("allowed_idps", "auto_redirect_to_identity"):
                if getattr(app, key):
                    yield Problem(
                        ("apps", i, key), "Expected a [team]: only the team's login service has providers"
                    )
        return
    if team.store == "memory" and config.server.workers > 1:
        yield Problem(
            ("team", "store"),
            f'Expected "redis" with server.workers = {config.server.workers}: logouts and one-time '
            'codes must be shared by every worker ("memory" serves one worker only)',
        )
    if not team.url and config.server.addresses[0].port == 0:
        yield Problem(
            ("team", "url"),
            "Expected a URL here: the first listener's port is 0 (chosen at start), so the "
            "team host's address cannot be derived from it",
        )
    host = team.hostname
    ids = [p.id for p in team.providers]
    for i, app in enumerate(config.apps):
        for k, ident in enumerate(app.allowed_idps or ()):
            if ident not in ids:
                yield Problem(
                    ("apps", i, "allowed_idps", k),
                    f"Expected the id of a [[team.providers]] entry, got {ident!r} (known: {', '.join(ids)})",
                )
        allowed = len(ids if app.allowed_idps is None else app.allowed_idps)
        if app.auto_redirect_to_identity and allowed != 1:
            yield Problem(
                ("apps", i, "auto_redirect_to_identity"),
                f"Expected exactly one allowed identity provider to go straight to, got {allowed} "
                "(set allowed_idps to one provider id)",
            )
        for k, pattern in enumerate(app.patterns):
            if pattern.host == host or (pattern.host.startswith("*.") and host.endswith(pattern.host[1:])):
                yield Problem(
                    ("apps", i, "domains", k),
                    f"{app.domains[k]!r} covers the team host {host!r}, which the edge serves itself",
                )


Reference = tuple[KeyPath, Rule]


def _policy_rules(config: Config) -> Iterator[tuple[KeyPath, str, Rule]]:
    """Every rule of every application policy: (path, policy action, rule)."""
    for i, app in enumerate(config.apps):
        for j, policy in enumerate(app.policies):
            for part in ("include", "require", "exclude"):
                for k, rule in enumerate(getattr(policy, part)):
                    yield ("apps", i, "policies", j, part, k), policy.action, rule


def _group_rules(group: Group, g: int) -> Iterator[Reference]:
    for part in ("include", "require", "exclude"):
        for k, rule in enumerate(getattr(group, part)):
            yield ("groups", g, part, k), rule


def check_groups_and_lists(config: Config) -> Problems:
    """Group and list names are unique and every reference resolves: to a
    group (no cycle), to a list of the selector's type; a group used by a
    bypass or service_auth policy has no selector that policy cannot use."""
    yield from _unique_attr("groups", [g.name for g in config.groups], "name")
    yield from _unique_attr("lists", [x.name for x in config.lists], "name")
    groups = {g.name: g for g in config.groups}
    kinds = {x.name: x.type for x in config.lists}
    refs: list[Reference] = [(path, rule) for path, _, rule in _policy_rules(config)]
    for g, group in enumerate(config.groups):
        refs.extend(_group_rules(group, g))
    clean = True
    for path, rule in refs:
        for problem in _reference_problems(rule, groups, kinds):
            clean = False
            yield Problem(path + problem.path, problem.message)
    if not clean:
        return
    for g, group in enumerate(config.groups):
        for path, rule in _group_rules(group, g):
            for m, name in enumerate(rule.group or ()):
                cycle = _cycle(groups, group.name, name)
                if cycle is not None:
                    yield Problem(
                        (*path, "group", m), f"Expected no cycle of groups, got {' -> '.join(cycle)}"
                    )
    for path, action, rule in _policy_rules(config):
        if action not in ("bypass", "service_auth"):
            for m, name in enumerate(rule.group or ()):
                if SERVICE_SELECTORS & _selectors(groups, name):
                    yield Problem(
                        (*path, "group", m),
                        f"Expected no service token selector in group {name!r}: it is used by "
                        f"{'an' if action == 'allow' else 'a'} {action} policy (service tokens count only "
                        "in service_auth policies)",
                    )
            continue
        for m, name in enumerate(rule.group or ()):
            if IDENTITY_SELECTORS & _selectors(groups, name):
                yield Problem(
                    (*path, "group", m),
                    f"Expected no identity selector in group {name!r}: it is used by a {action} policy, "
                    "which is decided without a user token",
                )


def _reference_problems(rule: Rule, groups: dict[str, Group], kinds: dict[str, str]) -> Problems:
    for m, name in enumerate(rule.group or ()):
        if name not in groups:
            yield Problem(
                ("group", m), f"Expected the name of a [[groups]] entry, got {name!r}{_known(groups)}"
            )
    for key, kind in (("email_list", "email"), ("ip_list", "ip")):
        for m, name in enumerate(getattr(rule, key) or ()):
            if name not in kinds:
                yield Problem(
                    (key, m), f"Expected the name of a [[lists]] entry, got {name!r}{_known(kinds)}"
                )
            elif kinds[name] != kind:
                yield Problem(
                    (key, m), f"Expected a list of type {kind!r}, got {name!r} of type {kinds[name]!r}"
                )


def _known(names: Mapping[str, object]) -> str:
    return f" (known: {', '.join(sorted(names))})" if names else " (none are configured)"


def _cycle(groups: dict[str, Group], start: str, name: str) -> list[str] | None:
    """The names from `start` back to itself through `name`, if there is
    such a cycle (others are reported at their own groups). Depth-first,
    each group visited once; references were checked to exist."""
    visited: set[str] = set()

    def walk(current: str, trail: list[str]) -> list[str] | None:
        if current == start:
            return [*trail, current]
        if current in visited:
            return None
        visited.add(current)
        for rule in _rules_of(groups[current]):
            for inner in rule.group or ():
                found = walk(inner, [*trail, current])
                if found is not None:
                    return found
        return None

    return walk(name, [start])


def _rules_of(group: Group) -> list[Rule]:
    return [*group.include, *group.require, *group.exclude]


def _selectors(groups: dict[str, Group], name: str) -> set[str]:
    """Every selector a group uses, through the groups it references."""
    found: set[str] = set()
    todo, seen = [name], {name}
    while todo:
        for rule in _rules_of(groups[todo.pop()]):
            found.add(rule.selector)
            for inner in rule.group or ():
                if inner not in seen:
                    seen.add(inner)
                    todo.append(inner)
    return found


def check_client_certs(config: Config) -> Problems:
    """A certificate selector needs a listener that asks for certificates:
    without [server.tls] client_ca no request ever has one, and the rule
    could never match."""
    tls = config.server.tls
    if tls is not None and tls.client_ca:
        return
    rules: list[Reference] = [(path, rule) for path, _, rule in _policy_rules(config)]
    for g, group in enumerate(config.groups):
        rules.extend(_group_rules(group, g))
    for path, rule in rules:
        if rule.selector in CERT_SELECTORS:
            yield Problem(
                (*path, rule.selector),
                "Expected [server.tls] client_ca to be set: without it no client "
                "certificate is asked for, so this rule could never match",
            )
