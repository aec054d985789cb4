"""/cdn-cgi/access/login: the team's sign-in page, and on an application's
host the way to it.

The page's link names the application (`kid`), where to return
(`redirect_url`, on the application's host and inside the application) and
the login binding (`b`). A user already signed in at the team goes straight
on to the handoff; otherwise the page offers the providers, and its forms
post back here (CSRF-protected) to the dev provider or an OIDC provider.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from edge.access.actions import Endpoint
from edge.access.claims import Identity
from edge.access.compile import Compiled
from edge.access.endpoints import LOGIN_PATH
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.router import path_segments
from edge.access.session import same_host_url, valid_binding
from edge.config.schema import OidcProvider
from edge.login import dev, oidc_flow
from edge.login.call import query_of, read_form
from edge.login.context import Context, Target
from edge.login.handoff import issue, person_of


async def login(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    if not action.team:
        return _app_login(ctx, action, req)
    if req.method == b"POST":
        return await _login_post(ctx, c, action, req, body, now)
    return await _login_get(ctx, c, action, req, now)


def _app_login(ctx: Context, action: Endpoint, req: Request) -> LocalResponse:
    """/cdn-cgi/access/login/<host> on a protected host: the team's page."""
    if ctx.team is None:
        return ctx.no_login_service(req)
    query = req.query.decode("latin-1")
    return ctx.redirect(f"{ctx.team_url}{LOGIN_PATH}/{quote(action.rest)}?{query}")


def target_of(c: Compiled, host: str, req: Request) -> Target | str | None:
    """The login's destination: None for a login to the team itself, a
    message if the link is not valid."""
    if not host:
        return None
    query = query_of(req)
    app = c.apps_by_aud.get(query.get("kid", ""))
    url = same_host_url(query.get("redirect_url", ""), host.lower())
    if app is None or url is None:
        return "This sign-in link is not valid (unknown application, or a return address on another site)."
    segments = path_segments(urlsplit(url).path.encode("latin-1"))
    route = None if segments is None else c.router.match(host.lower().encode(), segments)
    if route is None or route.app is not app:
        return "This sign-in link is not valid (the return address is not part of the application)."
    return Target(app, host.lower(), url, valid_binding(query.get("b")))


async def _login_get(ctx: Context, c: Compiled, action: Endpoint, req: Request, now: float) -> LocalResponse:
    target = target_of(c, action.rest, req)
    if isinstance(target, str):
        return ctx.message(req, 400, "Sign-in link not valid", target)
    ident = ctx.team_identity(c, req, now)
    offered = ctx.offered(target)
    error = ""
    if isinstance(ident, Identity):
        if target is None:
            return ctx.signed_in()
        if target.app.config.allowed_idps is None or ident.idp in {p.id for p in offered}:
            return issue(ctx, c, ident, person_of(ident), target, req, now)
        # allowed_idps holds for a team session too: one from a provider this
        # application does not offer is not carried on; the user signs in
        # again with one it offers (a session without an idp, with any).
        error = f"You are signed in with another provider; {target.app.name} asks you to sign in again."
    # auto_redirect_to_identity (checked at load: one allowed provider): an
    # OIDC provider is gone to at once; the dev provider's form is all this
    # page shows anyway. Not for a HEAD: a link previewer starts no flow.
    if (
        target is not None
        and target.app.config.auto_redirect_to_identity
        and req.method == b"GET"
        and len(offered) == 1
        and isinstance(offered[0], OidcProvider)
    ):
        return await oidc_flow.begin(ctx, offered[0], target, req, now)
    return ctx.login_page(200, req, target, error)


async def _login_post(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    assert ctx.sealer is not None
    form = read_form(req, body)
    if form is None:
        return ctx.message(req, 400, "Bad request", "Expected a sign-in form.")
    target = target_of(c, action.rest, req)
    if isinstance(target, str):
        return ctx.message(req, 400, "Sign-in link not valid", target)
    if not ctx.csrf_ok(req, form):
        return ctx.login_page(403, req, target, "The form expired; please sign in again.")
    provider = ctx.providers.get(form.get("provider", ""))
    if provider is not None and provider not in ctx.offered(target):
        # Hidden from this application's page is not enough: refused here too.
        return ctx.login_page(403, req, target, "This application does not offer that way to sign in.")
    if isinstance(provider, OidcProvider):
        return await oidc_flow.begin(ctx, provider, target, req, now)
    if provider is None:
        return ctx.login_page(400, req, target, "Choose a way to sign in.")
    return await dev.sign_in(ctx, c, provider, form, req, target, now)
