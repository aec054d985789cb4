"""Logout: revoke the sign-in everywhere, and ask first when another site
sent the browser here.

Invariants:
- A logout revokes the session in the store (keyed by issuer and nonce,
  kept until its last token is past: revocation.revoked_until): every worker
  and instance refuses every token of it, team and application tokens alike.
- Another site cannot end a live session: a cross-site GET only shows the
  confirmation page, whose button posts back with the CSRF token; a POST
  without a valid CSRF token changes nothing.
- A dead or absent session has nothing to protect, so the team's leg of an
  app logout (cross-site when the team is another site) just clears its cookie.
"""

from __future__ import annotations

import logging

from edge.access.actions import Endpoint
from edge.access.compile import Compiled, CompiledApp
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.revocation import revoked_until
from edge.access.session import AUTH_COOKIE, ENDPOINT_PATH, clear_cookie, cross_site
from edge.access.tokens import Identity, Refusal
from edge.login import pages
from edge.login.call import host_of, read_form
from edge.login.context import Context

log = logging.getLogger("edge.login")


async def logout(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    """Sign out at once, unless another site sent the browser here while its
    session is live: then ask first."""
    ident = ctx.team_identity(c, req, now) if action.team else ctx.identity(c, req, now)
    if req.method == b"POST":
        if not ctx.csrf_ok(req, read_form(req, body) or {}):
            return confirm(ctx, 403, req, ident, "This sign-out form expired; confirm again.")
    elif isinstance(ident, Identity) and _cross_site(req):
        return confirm(ctx, 200, req, ident)
    return await sign_out(ctx, c, action, req, ident, now)


def _cross_site(req: Request) -> bool:
    """Whether another site sent the browser here (session.cross_site)."""
    fetch_site, origin, referer = req.values(b"sec-fetch-site"), req.values(b"origin"), req.values(b"referer")
    return cross_site(host_of(req), fetch_site, origin, referer)


def confirm(
    ctx: Context, status: int, req: Request, ident: Identity | Refusal, error: str = ""
) -> LocalResponse:
    """The confirmation page: one button posting back with the CSRF token."""
    csrf, extra = ctx.csrf_field(req)
    who = (ident.email or ident.sub) if isinstance(ident, Identity) else None
    page = pages.logout_page(action=f"{ENDPOINT_PATH}/logout", csrf=csrf, who=who, error=error)
    return ctx.html(status, page, extra)


async def sign_out(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, ident: Identity | Refusal, now: float
) -> LocalResponse:
    if isinstance(ident, Identity) and ident.session:
        await ctx.store.revoke(ident.session, _revoked_until(c, ident, now))
        log.info("signed out %s (session %s…)", ident.email or ident.sub, ident.identity_nonce[:6])
    clear = [clear_cookie(AUTH_COOKIE)]
    if not action.team:
        # A path-scoped cookie (Path=/area) is never sent to /cdn-cgi/access,
        # so which app it belongs to cannot be told here: clear every
        # scoped path on this host (its session ends with the team's).
        host = host_of(req)
        paths = {p for app in c.apps if app.config.path_scoped for p in _scoped_paths(app, host)}
        clear.extend(clear_cookie(AUTH_COOKIE, path) for path in sorted(paths))
    if not action.team and ctx.team is not None:
        # The team session ends too: its cookie is cleared on its own host.
        return ctx.redirect(f"{ctx.team_url}{ENDPOINT_PATH}/logout", clear)
    return ctx.html(
        200, pages.message_page("Signed out", "You are signed out.", look=ctx.look, kind="signed_out"), clear
    )


def _revoked_until(c: Compiled, ident: Identity, now: float) -> float:
    """Until when a logout refuses `ident`'s sign-in (see revoked_until)."""
    issuer = c.verifier.issuers[ident.iss]  # it verified the token
    return revoked_until(now, ident.valid_until, issuer.max_lifetime, issuer.leeway)


def _scoped_paths(app: CompiledApp, host: str) -> list[str]:
    """The cookie paths a path-scoped `app` may have set on `host`."""
    return sorted(
        {
            p.path
            for p in app.config.patterns
            if p.segments and (p.host == host or (p.wildcard and host.endswith(p.host[1:])))
        }
    )
