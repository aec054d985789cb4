"""Sign-in through an OpenID Connect provider: the flow on the team host
(oidc.py is the relying-party client it drives).

`begin` sends the browser to the provider and keeps the flow (state, nonce,
PKCE verifier, where to return) in a sealed cookie; `callback` checks what
comes back against it and starts the team session.

Invariants:
- The flow cookie is sealed (sealed.FlowState), lives FLOW_TTL, is scoped
  to /cdn-cgi/access and is cleared by every callback answer.
- A flow cookie is at most FLOW_COOKIE_LIMIT bytes: a longer one would be
  dropped by browsers and refused by Sealer.open, so a sign-in could only
  fail after the round trip. A long return address loses its query first.
- The provider down or failing is a gateway error (502), a refusal by the
  user or the provider is 403, anything the browser got wrong is 400.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from edge.access.actions import Endpoint
from edge.access.compile import Compiled
from edge.access.endpoints import CALLBACK_PATH, ENDPOINT_PATH, LOGIN_PATH
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.session import (
    BINDING_COOKIE,
    BINDING_PATH,
    FLOW_COOKIE,
    FLOW_TTL,
    SealError,
    clear_cookie,
    cookie_value,
    new_person,
    same_host_url,
    set_cookie,
    valid_binding,
)
from edge.config.schema import OidcProvider
from edge.login import pages
from edge.login.call import query_of
from edge.login.context import Context, Target
from edge.login.handoff import start_session
from edge.login.oidc import REFUSED, UNAVAILABLE, Flow, OidcError, callback_params
from edge.login.sealed import FLOW, FlowState, SavedTarget, open_sealed, seal

log = logging.getLogger("edge.login")

# Bytes of a sealed OIDC flow cookie value: browsers keep a cookie's name and
# value up to 4096 bytes, and Sealer.open takes no more than that either.
FLOW_COOKIE_LIMIT = 4000


async def begin(
    ctx: Context, provider: OidcProvider, target: Target | None, req: Request, now: float
) -> LocalResponse:
    assert ctx.sealer is not None
    client = ctx.oidc[provider.id][1]
    try:
        url, flow = await client.begin(ctx.team_url + CALLBACK_PATH)
    except OidcError as exc:
        log.warning("oidc %s: %s", provider.id, exc)
        return ctx.message(req, 502, "Sign-in unavailable", exc.public)
    saved = None
    if target is not None:
        saved = SavedTarget(target.host, target.app.aud, target.redirect_url, target.binding)
    state = FlowState(provider.id, flow.state, flow.nonce, flow.verifier, saved)
    sealed = seal(ctx.sealer, FLOW, state, now + FLOW_TTL)
    if len(sealed) > FLOW_COOKIE_LIMIT and saved is not None:
        # Come back to the page without its query (a big query would make a
        # cookie that cannot come back).
        short = urlunsplit(urlsplit(saved.redirect_url)._replace(query="", fragment=""))
        state = FlowState(
            provider.id,
            flow.state,
            flow.nonce,
            flow.verifier,
            SavedTarget(saved.host, saved.aud, short, saved.binding),
        )
        sealed = seal(ctx.sealer, FLOW, state, now + FLOW_TTL)
    if len(sealed) > FLOW_COOKIE_LIMIT:
        return ctx.message(
            req, 414, "Address too long", "This address is too long to sign in from; open a shorter one."
        )
    cookie = set_cookie(FLOW_COOKIE, sealed, max_age=int(FLOW_TTL), path=ENDPOINT_PATH)
    return ctx.redirect(url, [cookie, clear_cookie(BINDING_COOKIE, BINDING_PATH)])


async def callback(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    """/cdn-cgi/access/callback on the team host: the provider sent the browser back."""
    if not action.team:
        return ctx.no_login_service(req)
    assert ctx.sealer is not None
    clear = [clear_cookie(FLOW_COOKIE, ENDPOINT_PATH)]
    try:
        state, _ = open_sealed(
            ctx.sealer, FLOW, cookie_value(req.values(b"cookie"), FLOW_COOKIE) or "", now, FlowState
        )
        provider, client = ctx.oidc[state.provider]
    except (SealError, KeyError):
        return ctx.html(400, _start_again(ctx, req), clear)
    query = query_of(req)
    if "error" in query:
        try:
            callback_params(req.query.decode("latin-1"))
        except OidcError as exc:
            log.info("oidc %s: %s", provider.id, exc)
            status = 403 if exc.public == REFUSED else 502
            page = pages.message_page(
                "Sign-in refused" if status == 403 else "Sign-in failed",
                exc.public,
                link=(ctx.team_url + LOGIN_PATH, "Try again"),
                look=ctx.look,
                request_id=req.request_id.decode("ascii"),
            )
            return ctx.html(status, page, clear)
    flow = Flow(state=state.state, nonce=state.nonce, verifier=state.verifier)
    try:
        claims = await client.finish(
            query.get("code", ""),
            query.get("state", ""),
            flow,
            ctx.team_url + CALLBACK_PATH,
            now,
            returned_iss=query.get("iss"),
        )
    except OidcError as exc:
        log.warning("oidc %s: %s", provider.id, exc)
        page = pages.message_page(
            "Sign-in failed",
            exc.public,
            link=(LOGIN_PATH, "Start again"),
            look=ctx.look,
            request_id=req.request_id.decode("ascii"),
        )
        return ctx.html(502 if exc.public == UNAVAILABLE else 400, page, clear)
    target = _saved_target(c, state.target)
    who = new_person(
        claims.email, claims.groups, provider.id, sub=f"{provider.id}:{claims.sub}", amr=claims.amr
    )
    return start_session(ctx, c, who, target, req, now, clear)


def _saved_target(c: Compiled, saved: SavedTarget | None) -> Target | None:
    """Where the sign-in returns to, checked again (the app may be gone since)."""
    if saved is None:
        return None
    app = c.apps_by_aud.get(saved.aud)
    url = same_host_url(saved.redirect_url, saved.host)
    if app is None or url is None:
        return None
    return Target(app, saved.host, url, valid_binding(saved.binding))


def _start_again(ctx: Context, req: Request) -> bytes:
    return pages.message_page(
        "Sign-in expired",
        "This sign-in took too long or was started elsewhere; please start again.",
        link=(ctx.team_url + LOGIN_PATH, "Start again"),
        look=ctx.look,
        request_id=req.request_id.decode("ascii"),
    )
