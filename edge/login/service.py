"""The login service: the team host's pages and every host's /cdn-cgi/access/*.

The flow (BEHAVIOUR.md section 6):

1. An unauthenticated navigation to an application is sent to the team host:
   ``/cdn-cgi/access/login/<app host>?kid=<aud>&redirect_url=<url>``.
2. A user already signed in there (the team's own ``CF_Authorization``
   cookie, an ``org`` token) goes straight on to step 4. Otherwise the page
   offers the identity providers: the dev provider's form, or a button per
   OpenID Connect provider (code flow with PKCE, state and nonce; the flow
   travels in a sealed cookie and comes back to ``/cdn-cgi/access/callback``).
3. Signed in: the team cookie is set; its token's ``identity_nonce`` names the
   session.
4. The application's policies are checked for that identity; if they deny,
   the page says so. If they allow, the browser is sent to the application's
   host, ``/cdn-cgi/access/authorized?code=<one-time code>``; the code is
   sealed, lives a minute, is bound to that host and that redirect, and is
   claimed once in the store. The edge sets the application's cookie and
   redirects to ``redirect_url``.

Logout revokes the sign-in in the store (keyed by issuer and nonce, kept
until its last token is past: revocation.revoked_until): every worker and
instance refuses every token of it issued up to the logout (team and
application tokens alike), and no code issued before it mints another. A
logout that another site sent a signed-in browser to asks first: a page whose
button posts back with the CSRF token.

Invariants:
- Handlers never raise for bad input: every outcome is a page, a redirect or
  a small JSON document; the endpoint cycle turns a bug into a bare 500.
- Nothing a browser sends is trusted unverified: the team cookie is verified
  like any token (and checked against revocations), sealed values are
  authenticated, redirects stay on the application's host, forms carry a CSRF
  token bound to a cookie by a MAC.
- Another site cannot end a live session: a cross-site logout only shows the
  confirmation page, and a POST logout without a valid CSRF token changes nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt

from edge.access.actions import Endpoint
from edge.access.claims import Identity, Refusal
from edge.access.compile import Compiled, team_base_url
from edge.access.endpoints import EndpointKind
from edge.access.headers import Header
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.session import Sealer
from edge.config.errors import ConfigError
from edge.config.schema import Config, DevProvider, DevUser, OidcProvider
from edge.login import keydir, logout, oidc_flow, pages, signin
from edge.login.context import HTML_HEADERS, Context, RelyingParty
from edge.login.cycle import EndpointCall
from edge.login.handoff import authorized
from edge.login.keydir import TeamKeys
from edge.login.launcher import launcher
from edge.login.oidc import OidcClient
from edge.login.store import MemoryStore, RedisStore, Store
from edge.proxy.fetch import FetchError, client_ssl_context

__all__ = [
    "LoginService",
    "ensure_keys",
    "existing_team_keys",
    "identity_document",
    "make_store",
]

Handler = Callable[[Context, Compiled, Endpoint, Request, bytes, float], Awaitable[LocalResponse]]


async def certs(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    """The built-in issuer's keys and certificates (Cloudflare's certs document)."""
    if ctx.ring is None:
        return ctx.json_error(req, 404, "this edge issues no tokens (no [team] configured)")
    return LocalResponse(
        200,
        [(b"content-type", b"application/json"), (b"cache-control", b"public, max-age=60")],
        ctx.ring.certs(),
        ctx.server,
    )


async def get_identity(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    ident = ctx.team_identity(c, req, now) if action.team else ctx.identity(c, req, now)
    if isinstance(ident, Identity) and action.aud is not None and action.aud not in ident.aud:
        ident = Refusal("token is for another application")
    if not isinstance(ident, Identity):
        return ctx.json_error(req, 401, "not signed in")
    return ctx.json(200, identity_document(ident))


# Every endpoint decide() can hand over, and who answers it (a test checks
# that no EndpointKind is missing).
HANDLERS: dict[EndpointKind, Handler] = {
    EndpointKind.LOGIN: signin.login,
    EndpointKind.CALLBACK: oidc_flow.callback,
    EndpointKind.AUTHORIZED: authorized,
    EndpointKind.LOGOUT: logout.logout,
    EndpointKind.GET_IDENTITY: get_identity,
    EndpointKind.CERTS: certs,
    EndpointKind.LAUNCHER: launcher,
}


class LoginService:
    """One per worker: the current Context, rebuilt on reload and on a key change."""

    def __init__(self, config: Config, store: Store, server_header: bytes) -> None:
        self.store = store
        self.server = server_header
        self.keys: TeamKeys | None = None
        # Without a [team] there is no shared secret: the logout confirmation's
        # CSRF token is bound to this process.
        self._own_sealer = Sealer(os.urandom(32))
        self.configure(config)

    # -- configuration and keys --------------------------------------------------

    def configure(self, config: Config) -> None:
        """(Re)read what the login service needs from the config; raises
        keydir.KeyDirError if the key directory cannot be used."""
        team = config.team
        self.config = config
        dev_users: dict[str, DevUser] = {}
        oidc: dict[str, tuple[OidcProvider, RelyingParty]] = {}
        providers: dict[str, DevProvider | OidcProvider] = {}
        for i, provider in enumerate(team.providers if team is not None else ()):
            providers[provider.id] = provider
            if isinstance(provider, DevProvider):
                dev_users.update({u.email.lower(): u for u in provider.users})
                continue
            try:
                oidc[provider.id] = (provider, _oidc_client(provider))
            except (ValueError, FetchError) as exc:
                raise ConfigError.at(("team", "providers", i), str(exc)) from None
        if team is not None and (self.keys is None or team.key_dir != self.keys.key_dir):
            sealer = None if self.keys is None else self.keys.sealer
            self.keys = TeamKeys(team.key_dir, team.key_overlap, time.time(), sealer)
        self.context = Context(
            store=self.store,
            server=self.server,
            team=team,
            team_url=team_base_url(config) if team is not None else "",
            providers=providers,
            dev_users=dev_users,
            oidc=oidc,
            ring=None if team is None or self.keys is None else self.keys.ring,
            sealer=None if team is None or self.keys is None else self.keys.sealer,
            csrf_sealer=self.keys.sealer if team is not None and self.keys is not None else self._own_sealer,
            look=pages.PLAIN if team is None else pages.look_of(team.branding),
            html_headers=_html_headers(config),
        )

    def refresh_keys(self, now: float) -> bool:
        """Reload the key ring if the directory changed (a rotation) or a
        previous key's overlap ended; True if it did."""
        team = self.context.team
        if team is None or self.keys is None or not self.keys.refresh(team.key_overlap, now):
            return False
        self.context = replace(self.context, ring=self.keys.ring)
        return True

    def ring_jwks(self) -> bytes:
        assert self.context.ring is not None
        return self.context.ring.jwks()

    def current_kid(self) -> str:
        return "" if self.context.ring is None else self.context.ring.current.kid

    def verify_keys(self) -> dict[str, jwt.PyJWK]:
        """The ring's public keys, as the built-in issuer's key set holds them."""
        return {} if self.context.ring is None else keydir.verify_keys(self.context.ring)

    # -- dispatch --------------------------------------------------------------------

    def endpoint(self, c: Compiled, action: Endpoint, req: Request) -> EndpointCall:
        async def handler(body: bytes) -> LocalResponse:
            return await self.handle(c, action, req, body, time.time())

        return EndpointCall(handler)

    async def handle(
        self, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
    ) -> LocalResponse:
        return await HANDLERS[action.kind](self.context, c, action, req, body, now)


# -- helpers ------------------------------------------------------------------------------


def _oidc_client(provider: OidcProvider) -> OidcClient:
    return OidcClient(
        provider.issuer,
        provider.client_id,
        provider.client_secret,
        scopes=provider.scopes,
        email_claim=provider.email_claim,
        groups_claim=provider.groups_claim,
        allow_unverified_email=provider.allow_unverified_email,
        ssl_context=client_ssl_context(provider.verify_tls, provider.ca_file),
    )


def _html_headers(config: Config) -> tuple[Header, ...]:
    """The pages' headers, their CSP allowing the configured logos (team and apps)."""
    logos = [app.logo_url for app in config.apps]
    if config.team is not None:
        logos.append(config.team.branding.logo_url)
    policy = pages.csp(logos)
    return tuple((k, policy) if k == b"content-security-policy" else (k, v) for k, v in HTML_HEADERS)


def identity_document(ident: Identity) -> dict[str, Any]:
    """What /cdn-cgi/access/get-identity shows."""
    return {
        "email": ident.email,
        "sub": ident.sub,
        "groups": sorted(ident.groups),
        "iss": ident.iss,
        "aud": sorted(ident.aud),
        "type": ident.type,
        "identity_nonce": ident.identity_nonce,
        "iat": int(ident.iat),
        "exp": int(ident.exp),
    }


def ensure_keys(config: Config) -> bool:
    """Create the key directory with a first key if missing (before workers
    start); True if anything was created."""
    if config.team is None:
        return False
    return keydir.ensure(Path(config.team.key_dir), config.team.algorithm, time.time())


def existing_team_keys(config: Config, source: str) -> dict[str, jwt.PyJWK] | None:
    """The built-in issuer's keys if its key directory exists (for `edge
    check` and `edge explain`, which never create it); ConfigError if it is
    unusable."""
    team = config.team
    if team is None or keydir.fingerprint(team.key_dir) is None:
        return None
    try:
        ring = keydir.load(team.key_dir, team.key_overlap, time.time())
    except keydir.KeyDirError as exc:
        raise ConfigError.at(("team", "key_dir"), str(exc), source) from None
    return keydir.verify_keys(ring)


def make_store(config: Config) -> Store:
    """The worker's store: Redis when the team shares one, else in-process."""
    team = config.team
    if team is not None and team.store == "redis":
        return RedisStore(team.redis_url, prefix=team.redis_prefix, log=logging.getLogger("edge.store"))
    return MemoryStore()
