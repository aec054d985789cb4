"""The checks of the login service: [login] (the login URL template),
[team] with its providers, users and branding, the page templates' text
(`template_problem`, which `load` calls on each file it reads), and, between
tables, the team host against the listeners and the applications.
"""

from __future__ import annotations

import re
import string
from urllib.parse import urlsplit

from edge.config.problem import (
    Problem,
    Problems,
    check_choice,
    check_unique,
    check_unique_attr,
    check_web_url,
    under,
)
from edge.config.schema import (
    LOGIN_PLACEHOLDERS,
    SIGNING_ALGORITHMS,
    STORES,
    TEMPLATE_CONTENT,
    TEMPLATE_PLACEHOLDERS,
    Branding,
    Config,
    DevProvider,
    DevUser,
    Login,
    OidcProvider,
    Team,
)
from edge.config.syntax import (
    DomainPattern,
    email_problem,
    is_loopback_host,
    parse_domain,
    text_problem,
    upstream_problem,
)

# A password hash as `edge password` writes it: scrypt$<log2 n>$<r>$<p>$<salt>$<hash>
# (salt and hash base64url without padding).
_SCRYPT_RE = re.compile(r"^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$[A-Za-z0-9_-]{16,}\$[A-Za-z0-9_-]{32,}\Z")
_PROVIDER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")
_ACCENT_RE = re.compile(r"^#[0-9a-fA-F]{6}\Z")
# A template placeholder: {{name}}, spaces inside the braces allowed.
PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


# -- [login] ---------------------------------------------------------------------


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
    yield from check_unique("users", [u.email for u in provider.users], fold=True)


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
    yield from check_unique_attr("providers", [p.id for p in team.providers], "id", scope="")
    yield from check_choice(("algorithm",), team.algorithm, SIGNING_ALGORITHMS)
    yield from check_choice(("store",), team.store, STORES)
    if urlsplit(team.redis_url).scheme not in ("redis", "rediss", "unix"):
        yield Problem(("redis_url",), f"Expected redis://host:port/db, got {team.redis_url!r}")
    yield from under(("branding",), check_branding(team.branding))


def check_branding(branding: Branding) -> Problems:
    if not branding.name.isprintable() or len(branding.name) > 100:
        yield Problem(("name",), "Expected up to 100 printable characters")
    yield from check_web_url("logo_url", branding.logo_url)
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


# -- rules between top-level tables (every table passed its own checks) -----------


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
