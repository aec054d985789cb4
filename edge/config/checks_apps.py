"""The checks of the applications and what their policies name: [[apps]]
with their domains, CORS, policies and rules; [[issuers]] and
[[service_tokens]]; and, between tables, unique application names, audience
tags and domain patterns, and service tokens that policies and groups name
existing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from edge.config.problem import (
    Problem,
    Problems,
    check_choice,
    check_name,
    check_unique,
    check_unique_attr,
    check_web_url,
    every_rule,
    known_names,
)
from edge.config.schema import (
    ACTIONS,
    ALGORITHMS,
    IDENTITY_SELECTORS,
    SELECTORS,
    SERVICE_SELECTORS,
    App,
    Config,
    Cors,
    Issuer,
    Policy,
    Rule,
    ServiceToken,
)
from edge.config.syntax import (
    TOKEN_RE,
    DomainPattern,
    cidr_problem,
    email_domain_problem,
    email_problem,
    origin_problem,
    parse_domain,
    text_problem,
    upstream_problem,
)

# PyJWT warns below 32 bytes for HS256 (RFC 7518 3.2: key >= hash size).
MIN_HS256_SECRET = 32

_AUD_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}\Z")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
# Longest custom deny message: a sentence or a short paragraph, not a page.
MAX_DENY_MESSAGE = 1000


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
    yield from check_unique("allowed_origins", cors.allowed_origins)
    has_origins = cors.allow_all_origins or bool(cors.allowed_origins)
    if has_origins and not (cors.allow_all_methods or cors.allowed_methods):
        yield Problem(
            ("allowed_methods",),
            "Expected at least one method (or allow_all_methods = true) when origins are allowed",
        )
    yield from _tokens("allowed_methods", cors.allowed_methods, "allow_all_methods")
    yield from _tokens("allowed_headers", cors.allowed_headers, "allow_all_headers")
    yield from _tokens("expose_headers", cors.expose_headers, None)
    yield from check_unique("allowed_methods", cors.allowed_methods)
    yield from check_unique("allowed_headers", cors.allowed_headers, fold=True)
    yield from check_unique("expose_headers", cors.expose_headers, fold=True)


def _tokens(key: str, values: list[str], all_switch: str | None) -> Problems:
    for i, value in enumerate(values):
        if value == "*" and all_switch is not None:
            yield Problem((key, i), f"Expected a name; for any, set {all_switch} = true")
        elif not TOKEN_RE.fullmatch(value) or value == "*":
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
    yield from check_unique(name, value, fold=name in ("emails", "email_domains"))


def check_policy(policy: Policy) -> Problems:
    """Its rules must have passed `check_rule` (each has one selector)."""
    yield from check_name("name", policy.name)
    yield from check_choice(("action",), policy.action, ACTIONS)
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
    yield from check_name("name", app.name)
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
    yield from check_unique_attr("policies", [p.name for p in app.policies], "name", scope="")
    if app.aud is not None and not _AUD_RE.match(app.aud):
        yield Problem(("aud",), f"Expected 1-128 characters of A-Z a-z 0-9 . _ ~ -, got {app.aud!r}")
    if app.cors is not None and app.options_preflight_bypass:
        yield Problem(
            ("options_preflight_bypass",),
            "Expected false with cors settings: preflights are either answered at the edge (cors) "
            "or forwarded to the upstream (options_preflight_bypass), not both",
        )
    yield from check_choice(("unauthenticated",), app.unauthenticated, ("auto", "redirect"))
    yield from check_choice(("same_site",), app.same_site, ("lax", "strict", "none"))
    yield from check_unique("allowed_idps", app.allowed_idps or [])
    if app.allowed_idps is not None and not app.allowed_idps:
        yield Problem(("allowed_idps",), "Expected at least one provider id (leave it out to offer all)")
    message = app.custom_deny_message
    if len(message) > MAX_DENY_MESSAGE or not message.replace("\n", " ").isprintable():
        yield Problem(("custom_deny_message",), f"Expected up to {MAX_DENY_MESSAGE} printable characters")
    yield from check_web_url("custom_deny_url", app.custom_deny_url)
    if app.custom_deny_message and app.custom_deny_url:
        yield Problem(
            ("custom_deny_url",),
            'Expected "" with a custom_deny_message: a refused navigation is either shown the message '
            "or redirected to the URL, not both",
        )
    yield from check_web_url("logo_url", app.logo_url)


# -- [[issuers]], [[service_tokens]] --------------------------------------------


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
    yield from check_unique("algorithms", issuer.algorithms)
    for i, alg in enumerate(issuer.algorithms):
        if alg not in ALGORITHMS:
            yield from check_choice(("algorithms", i), alg, ALGORITHMS)
        elif (alg == "HS256") != (issuer.secret is not None):
            message = (
                "Expected HS256 only with a secret (a public JWKS key must never serve as an HMAC key)"
                if alg == "HS256"
                else "Expected only HS256 with a secret"
            )
            yield Problem(("algorithms", i), message)


def check_service_token(token: ServiceToken) -> Problems:
    yield from check_name("name", token.name)
    if not TOKEN_RE.fullmatch(token.client_id):
        yield Problem(("client_id",), f"Expected a header-safe token (no spaces), got {token.client_id!r}")
    if not _HEX64_RE.match(token.secret_sha256):
        yield Problem(("secret_sha256",), "Expected 64 lower-case hex digits (sha256 of the secret)")


# -- rules between top-level tables (every table passed its own checks) -----------


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
    """Service tokens named in policies and groups exist (a group's rules are
    a policy's once used, so a typo there would silently never match); names,
    ids and issuers are unique."""
    yield from check_unique_attr("service_tokens", [t.name for t in config.service_tokens], "name")
    yield from check_unique_attr("service_tokens", [t.client_id for t in config.service_tokens], "client_id")
    yield from check_unique_attr("issuers", [x.iss for x in config.issuers], "iss")
    known = {t.name for t in config.service_tokens}
    listed = known_names(known)
    for path, rule in every_rule(config):
        for m, name in enumerate(rule.service_tokens or ()):
            if name not in known:
                yield Problem(
                    (*path, "service_tokens", m),
                    f"Expected the name of a [[service_tokens]] entry, got {name!r}{listed}",
                )
