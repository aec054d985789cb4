"""Logout: revoke the sign-in everywhere, and ask first when another site
sent the browser here.

Invariants:
- A logout revokes the session in the store (Identity.session: keyed by
  issuer and nonce, else by issuer and the issuer's own `sid`, else by the
  token itself; kept until its last token is past: revocation.revoked_until):
  every worker and instance refuses every token of it issued up to the
  logout (revocation.revocation_cutoff), team and application tokens alike,
  until that token expires.
- Another site cannot end a live session: a cross-site GET only shows the
  confirmation page, whose button posts back with the CSRF token; a POST
  without a valid CSRF token changes nothing.
- A dead or absent session has nothing to protect, so the team's leg of an
  app logout (cross-site when the team is another site) just clears its cookie.
- The signed-out page leads to a sign-in form: back to the application named
  by the logout's `kid` and `redirect_url` (the login link's own fields, as
  the app leg passes them) when signin.target_of accepts them, else the
  team's own sign-in page. Only ever a link.
- With `then=login` (handoff.THEN_LOGIN: the access-denied page's "Sign in
  with another account") the team host's logout goes on at once to that
  sign-in form instead: a redirect to a path on the team host itself, for an
  application target_of accepted (kid, redirect_url and binding checked as
  for the login link), never to an address the query names.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlencode, urlsplit

from edge.access.actions import Endpoint
from edge.access.claims import Identity, Refusal
from edge.access.compile import Compiled, CompiledApp
from edge.access.endpoints import LOGIN_PATH, LOGOUT_PATH
from edge.access.headers import AUTH_COOKIE
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.revocation import revocation_cutoff, revoked_until, sign_in_label
from edge.access.session import clear_cookie, cross_site
from edge.login import pages
from edge.login.call import host_of, query_of, read_form
from edge.login.context import Context, Target
from edge.login.handoff import THEN_LOGIN
from edge.login.signin import target_of

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
    query = f"?{req.query.decode('latin-1')}" if req.query else ""  # where the signed-out page leads
    page = pages.logout_page(
        action=f"{LOGOUT_PATH}{query}",
        csrf=csrf,
        who=who,
        error=error,
        look=ctx.look,
        request_id=req.request_id.decode("ascii"),
    )
    return ctx.html(status, page, extra)


async def sign_out(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, ident: Identity | Refusal, now: float
) -> LocalResponse:
    if isinstance(ident, Identity) and ident.session:
        until, cutoff = _revocation(c, ident, now)
        await ctx.store.revoke(ident.session, until, cutoff)
        label = sign_in_label(ident.identity_nonce, ident.sid, ident.session)
        log.info("signed out %s (session: %s)", ident.email or ident.sub, label)
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
        # Its signed-out page then leads back to this app's sign-in.
        back = ""
        if action.aud is not None:
            home = f"{req.scheme}://{req.host.decode('latin-1')}/"
            back = "?" + urlencode({"kid": action.aud, "redirect_url": home})
        return ctx.redirect(f"{ctx.team_url}{LOGOUT_PATH}{back}", clear)
    target = _sign_in_target(c, action, req)
    if action.team and all(query_of(req).get(k) == v for k, v in THEN_LOGIN.items()):
        return ctx.redirect(_sign_in_form(target), clear)
    link = _sign_in_link(action, target)
    page = pages.message_page(
        "Signed out",
        "You are signed out.",
        link=link,
        look=ctx.look,
        kind="signed_out",
        request_id=req.request_id.decode("ascii"),
    )
    return ctx.html(200, page, clear)


def _sign_in_target(c: Compiled, action: Endpoint, req: Request) -> Target | None:
    """The application the logout's query names, if signin.target_of accepts
    it (on the team host only: an app host has no login service)."""
    if not action.team:
        return None
    url = query_of(req).get("redirect_url", "")
    try:
        host = (urlsplit(url).hostname or "") if url.isascii() else ""
    except ValueError:  # e.g. "http://[x/": a hint that names no host
        host = ""
    target = target_of(c, host, req) if host else None
    return None if target is None or isinstance(target, str) else target


def _sign_in_link(action: Endpoint, target: Target | None) -> tuple[str, str] | None:
    """Where the signed-out page leads: a sign-in form (see the invariants)."""
    if not action.team:
        # No login service here: the application's own page sends a
        # signed-out browser to its login URL.
        return ("/", "Sign in again") if action.aud is not None else None
    if target is None:
        return (LOGIN_PATH, "Sign in")
    # The application sends a signed-out browser to its sign-in form, with
    # a fresh login binding (a direct link to the form would carry none).
    return (target.redirect_url, f"Sign in to {target.app.name}")


def _sign_in_form(target: Target | None) -> str:
    """The team's sign-in form for `target` (the login link's own fields), or
    the team's own sign-in form: a path on this host, whatever the query said."""
    if target is None:
        return LOGIN_PATH
    fields = {"kid": target.app.aud, "redirect_url": target.redirect_url}
    if target.binding:
        fields["b"] = target.binding
    return f"{LOGIN_PATH}/{quote(target.host, safe='')}?{urlencode(fields)}"


def _revocation(c: Compiled, ident: Identity, now: float) -> tuple[float, float]:
    """Until when a logout refuses `ident`'s sign-in, and the latest iat it
    covers (revoked_until, revocation_cutoff)."""
    issuer = c.verifier.issuers[ident.iss]  # it verified the token
    until = revoked_until(now, ident.valid_until, issuer.max_lifetime, issuer.leeway)
    return until, revocation_cutoff(now, issuer.leeway)


def _scoped_paths(app: CompiledApp, host: str) -> list[str]:
    """The cookie paths a path-scoped `app` may have set on `host`."""
    return sorted(
        {
            p.path
            for p in app.config.patterns
            if p.segments and (p.host == host or (p.wildcard and host.endswith(p.host[1:])))
        }
    )
