"""Compiling a configuration: everything decide() needs that does not depend
on a request, built once.

Invariants:
- `compile_config` is the only place in edge.access that reads files (JWKS
  files); it raises ConfigError naming the file and key path, and otherwise
  returns a `Compiled` the runtime swaps in as one reference on reload.
- A `Compiled` and its `CompiledApp`s are not changed after compiling. Their
  hot caches are explicit `BoundedCache` objects created here, empty, so a
  reload never serves an answer computed under the previous configuration.
- Responses every application would build identically are built once
  (`Shared`): 10 000 applications need not mean 40 000 responses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import jwt
import msgspec

from edge.access.actions import Preflight
from edge.access.cache import BoundedCache
from edge.access.cors import VARY_ORIGIN, CorsPolicy, refused_preflight
from edge.access.endpoints import DEFAULT_LOGIN_URL
from edge.access.groups import EMPTY_CATALOG, Catalog
from edge.access.headers import Header, TrustedProxies
from edge.access.keysets import JwksError, KeySet, parse_jwks
from edge.access.look import PLAIN, Look, csp, footer, look_of, page
from edge.access.policy import Policies
from edge.access.responses import LocalResponse, Responses
from edge.access.revocation import Revocations
from edge.access.router import Route, Router
from edge.access.subject import IPNetwork, ServiceTokens
from edge.access.tokens import IssuerKeys, Verifier
from edge.config.errors import ConfigError
from edge.config.problem import KeyPath
from edge.config.schema import (
    DEFAULT_LEEWAY,
    SIGNING_ALGORITHMS,
    App,
    Config,
    Issuer,
)

# Edge endpoints must never be framed (clickjacking of the login page).
NO_FRAMING: tuple[Header, ...] = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
)
NO_STORE: Header = (b"cache-control", b"no-store")
DENIED_BODY = b"forbidden: access denied by policy\n"

# Edge-answered preflights by everything their answer depends on: Host,
# path, and the request's Origin and Access-Control-Request-* fields (see
# decide._preflight); a hot preflight then costs one dict lookup (about
# 1.5 us a decision in bench/micro_decide.py, flat from 10 to 10 000 listed
# origins). Entries; a flood of distinct preflights only evicts.
PREFLIGHT_CACHE_SIZE = 10_000
PreflightKey = tuple[bytes | None, ...]


class Shared:
    """Responses every application would build identically, built once per
    configuration."""

    __slots__ = ("responses", "deny_plain", "deny_vary", "preflight_refused", "cors_refused", "look")

    def __init__(self, responses: Responses, look: Look = PLAIN) -> None:
        self.responses = responses
        self.look = look  # the team's branding, for the deny pages
        self.deny_plain = responses.text(403, DENIED_BODY, [NO_STORE], tagged=True)
        self.deny_vary = responses.text(403, DENIED_BODY, [NO_STORE, VARY_ORIGIN], tagged=True)
        # BEHAVIOUR.md section 4, first row: no cookie on a preflight, so
        # Access blocks it, as Cloudflare does.
        self.preflight_refused = responses.text(
            403, b"forbidden: this application answers no CORS preflight\n"
        )
        self.cors_refused = refused_preflight(responses)


class CompiledApp:
    """One application, ready for decisions."""

    __slots__ = (
        "config",
        "name",
        "aud",
        "upstream",
        "policies",
        "cors",
        "preflight_bypass",
        "always_redirect",
        "strip_auth_cookie",
        "rewrite_host",
        "deny_plain",
        "deny_page",
        "preflight_refused",
        "_deny_by_origin",
        "_responses",
    )

    def __init__(self, app: App, shared: Shared, catalog: Catalog = EMPTY_CATALOG) -> None:
        self.config = app
        self.name = app.name
        self.aud = app.tag
        self.upstream = app.upstream
        self.policies = Policies(app.policies, catalog)
        responses = shared.responses
        self.cors = None if app.cors is None else CorsPolicy(app.cors, responses, shared.cors_refused)
        self.preflight_bypass = app.options_preflight_bypass
        self.always_redirect = app.unauthenticated == "redirect"
        self.strip_auth_cookie = not app.keep_auth_cookie
        self.rewrite_host = app.rewrite_host
        self._responses = responses
        self.deny_plain = shared.deny_plain if self.cors is None else shared.deny_vary
        # What a refused navigation gets instead (decide._deny), if the app says.
        self.deny_page = _custom_deny(app, responses, shared.look)
        self.preflight_refused = shared.preflight_refused
        # 403s for allowed origins, keyed by their Access-Control-Allow-Origin
        # value: the response depends on nothing else (no token, no client
        # IP, no clock), so one per listed origin, plus "*", covers them all
        # and is the bound. Filled on first use, not here: most origins
        # are never denied. Building one (h11 validates its head) took 15 us;
        # a hit is a dict lookup.
        self._deny_by_origin: BoundedCache[bytes, LocalResponse] | None = (
            None if self.cors is None else BoundedCache(len(self.cors.origins) + 1)
        )

    def deny_response(self, origin: bytes | None) -> LocalResponse:
        cors = self.cors
        if cors is None or origin is None or not cors.allows(origin):
            return self.deny_plain
        key = cors.allow_origin_value(origin)
        assert self._deny_by_origin is not None  # built whenever cors is
        found = self._deny_by_origin.get(key)
        if found is None:
            found = self._deny_by_origin.put(key, self.build_deny(origin))
        return found

    def build_deny(self, origin: bytes) -> LocalResponse:
        """The 403 for an allowed origin, computed (deny_response's slow path)."""
        assert self.cors is not None
        fields = [NO_STORE, *self.cors.courtesy(origin)]
        return self._responses.text(403, DENIED_BODY, fields, tagged=True)


class DenyPage:
    """custom_deny_message's HTML 403: the team's "denied" page (its branding
    and template, as the login service's access-denied page), escaped,
    framing forbidden, nothing loaded but the team's logo. The page names
    the request's id, so a user's screenshot names the access log line: it
    is built once around the footer's place, the footer joined in per
    request (a refused navigation, never a hot path)."""

    __slots__ = ("fields", "parts", "server", "plain")

    def __init__(self, app_name: str, message: str, server: bytes, look: Look = PLAIN) -> None:
        self.fields = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", csp([look.logo_url])),
            NO_STORE,
        ]
        body = (
            f'<h1>Access denied</h1>\n<p role="status">You do not have access to {escape(app_name)}.</p>\n'
            f'<p class="custom">{escape(message)}</p>'
        )
        # Where the footer goes: a run of NULs the page does not hold (the
        # config's values are printable; a template might hold some). A
        # template naming {{content}} twice gets the footer twice.
        slot = "\x00"
        while slot in page("Access denied", body, look, "denied"):
            slot += "\x00"
        self.parts = page("Access denied", body + slot, look, "denied").encode().split(slot.encode())
        self.server = server
        self.plain = LocalResponse(403, self.fields, b"".join(self.parts), server)  # no id: explain

    def response(self, request_id: bytes) -> LocalResponse:
        if not request_id:
            return self.plain
        # request_id is SAFE (edge.http.request_id); escaped all the same.
        named = footer(request_id.decode("ascii")).encode().join(self.parts)
        return LocalResponse(403, self.fields, named, self.server)


def _custom_deny(app: App, responses: Responses, look: Look) -> LocalResponse | DenyPage | None:
    """custom_deny_url: a redirect there; custom_deny_message: a DenyPage."""
    if app.custom_deny_url:
        fields = [(b"location", app.custom_deny_url.encode("ascii")), NO_STORE]
        return responses.text(302, b"access denied\n", fields)
    if not app.custom_deny_message:
        return None
    return DenyPage(app.name, app.custom_deny_message, responses.server, look)


class RemoteKeys(msgspec.Struct, frozen=True, gc=False):
    """A key set the I/O shell keeps fresh from `url`."""

    iss: str
    url: str
    keys: KeySet


@dataclass(frozen=True, slots=True)
class Compiled:
    """The whole configuration, compiled. Swap it as one reference."""

    config: Config
    router: Router[CompiledApp]
    apps: tuple[CompiledApp, ...]
    verifier: Verifier
    remote_keys: tuple[RemoteKeys, ...]
    service_tokens: ServiceTokens
    trusted: tuple[IPNetwork, ...]
    trusted_proxies: TrustedProxies
    login_url: str
    responses: Responses
    endpoint_refused: LocalResponse
    endpoint_pending: LocalResponse
    bad_path: LocalResponse
    ambiguous_token: LocalResponse
    revoked: Revocations
    apps_by_aud: Mapping[str, CompiledApp]
    # Edge-answered preflights (PreflightKey). Only answers of applications
    # with CORS settings are kept: those depend on the key alone, never on a
    # token, the client's address or the clock; created empty per compile.
    preflights: BoundedCache[PreflightKey, Preflight]
    team_host: bytes | None = None  # the login service's own host, if configured
    team_url: str = ""  # how browsers reach it; the iss of the tokens it issues
    builtin: IssuerKeys | None = None  # the team's own keys (from the key directory)
    binds_logins: bool = False  # logins go to the team's own page, which binds them to the browser


def compile_config(
    config: Config,
    source: str = "<config>",
    *,
    team_keys: Mapping[str, jwt.PyJWK] | None = None,
    revoked: Revocations | None = None,
) -> Compiled:
    """Build the runtime objects; raises ConfigError (naming `source`) when a
    JWKS file cannot be used. `team_keys` are the built-in issuer's current
    verification keys (the I/O shell reads the key directory and keeps them
    fresh); `revoked` is the worker's revocation view, kept across reloads."""
    responses = Responses(config.server.server_header)
    issuers, remote = _compile_issuers(config.issuers, source)
    team_url = builtin = None
    if config.team is not None:
        team_url = team_base_url(config)
        builtin = IssuerKeys(
            team_url,
            SIGNING_ALGORITHMS,
            DEFAULT_LEEWAY,
            KeySet("key directory", team_keys),
            None,
            _longest_session(config),
        )
        issuers.append(builtin)
    shared = Shared(responses, PLAIN if config.team is None else look_of(config.team.branding))
    # Groups and lists once, for every application: a list is one set however
    # many policies name it.
    catalog = Catalog(config.groups, config.lists)
    apps = tuple(CompiledApp(app, shared, catalog) for app in config.apps)
    router = Router(Route(app, pattern) for app in apps for pattern in app.config.patterns)
    trusted = config.server.trusted_networks
    return Compiled(
        config=config,
        router=router,
        apps=apps,
        verifier=Verifier(issuers),
        remote_keys=remote,
        service_tokens=ServiceTokens(config.service_tokens),
        trusted=trusted,
        trusted_proxies=TrustedProxies(trusted),
        login_url=config.login.url or (team_url + DEFAULT_LOGIN_URL if team_url else DEFAULT_LOGIN_URL),
        responses=responses,
        endpoint_refused=responses.text(403, b"forbidden: no cross-site requests here\n", NO_FRAMING),
        endpoint_pending=responses.text(
            404, b"not found: the login service is not available yet\n", NO_FRAMING
        ),
        bad_path=responses.text(400, b"bad request: ambiguous path (escaped '/' or '\\')\n"),
        ambiguous_token=responses.text(400, b"bad request: two different access tokens\n", [NO_STORE]),
        revoked=revoked if revoked is not None else Revocations(),
        apps_by_aud={app.aud: app for app in apps},
        preflights=BoundedCache(PREFLIGHT_CACHE_SIZE),
        team_host=None if config.team is None else config.team.hostname.encode(),
        team_url=team_url or "",
        builtin=builtin,
        binds_logins=builtin is not None and config.login.url is None,
    )


def _longest_session(config: Config) -> int:
    """The longest lifetime the built-in issuer grants: the team's or an app's session."""
    assert config.team is not None
    return max([config.team.session_duration, *(app.session_duration for app in config.apps)])


def team_base_url(config: Config) -> str:
    """How browsers reach the team host: `team.url`, or the first listener's
    scheme and port with the team host's name."""
    assert config.team is not None
    if config.team.url:
        return config.team.url.rstrip("/")
    scheme = "https" if config.server.tls is not None else "http"
    port = config.server.addresses[0].port
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{config.team.hostname}" + ("" if port == default else f":{port}")


def _compile_issuers(
    issuers: Sequence[Issuer], source: str
) -> tuple[list[IssuerKeys], tuple[RemoteKeys, ...]]:
    compiled: list[IssuerKeys] = []
    remote: list[RemoteKeys] = []
    for i, issuer in enumerate(issuers):
        keys: KeySet | None = None
        if issuer.jwks_file is not None:
            keys = KeySet(issuer.jwks_file, _read_jwks(issuer, ("issuers", i, "jwks_file"), source))
        elif issuer.jwks_url is not None:
            keys = KeySet(issuer.jwks_url, remote=True)
            remote.append(RemoteKeys(issuer.iss, issuer.jwks_url, keys))
        secret = None if issuer.secret is None else issuer.secret.encode()
        compiled.append(
            IssuerKeys(issuer.iss, issuer.algorithms, issuer.leeway, keys, secret, issuer.max_token_lifetime)
        )
    return compiled, tuple(remote)


def _read_jwks(issuer: Issuer, where: KeyPath, source: str) -> dict[str, jwt.PyJWK]:
    assert issuer.jwks_file is not None
    try:
        body = Path(issuer.jwks_file).read_bytes()
    except OSError as exc:
        message = f"cannot read {issuer.jwks_file!r}: {exc.strerror or exc}"
        raise ConfigError.at(where, message, source) from None
    try:
        keys, notes = parse_jwks(body)
    except JwksError as exc:
        raise ConfigError.at(where, f"{issuer.jwks_file}: {exc}", source) from None
    if notes:
        raise ConfigError.at(where, f"{issuer.jwks_file}: {notes[0]}", source)
    usable = {kid: k for kid, k in keys.items() if k.algorithm_name in issuer.algorithms}
    if not usable:
        found = ", ".join(sorted({k.algorithm_name for k in keys.values()})) or "none"
        message = f"{issuer.jwks_file}: no key for algorithms {', '.join(issuer.algorithms)} (found: {found})"
        raise ConfigError.at(where, message, source)
    return keys
