"""The handoff: a signed-in user carried from the team host to an
application's host (BEHAVIOUR.md section 6, steps 3 and 4).

On the team host, a new sign-in gets the team cookie (`start_session`);
then, if the application's policies allow, the browser goes to the
application's host with a one-time code (`issue`). There `authorized`
exchanges the code for the application's cookie.

Invariants:
- A code is sealed (sealed.HandoffCode), lives HANDOFF_TTL, names its host
  and redirect, and is claimed once in the store (by its jti) before any
  cookie is set; a code the store cannot claim sets nothing.
- Redirects stay on the application's host (session.same_host_url).
- When the application binds logins, a code only works in the browser that
  started the login (the binding cookie); elsewhere the login starts again
  and the code stays unused.
- A HEAD (a link previewer) never uses a code up.
- A code mints no token for a sign-in a logout has revoked (a code issued
  just before the logout): the revocation covers only tokens issued up to
  it (edge.access.revocation), so the edge never issues a later one.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from urllib.parse import urlencode, urlsplit

from edge.access.actions import Endpoint
from edge.access.claims import Identity
from edge.access.compile import Compiled, CompiledApp
from edge.access.decide import verify_token
from edge.access.endpoints import AUTHORIZED_PATH, LOGOUT_PATH
from edge.access.headers import AUTH_COOKIE, Header
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.revocation import session_key
from edge.access.router import path_segments
from edge.access.session import (
    BINDING_COOKIE,
    BINDING_PATH,
    HANDOFF_TTL,
    Person,
    SealError,
    clear_cookie,
    cookie_value,
    origin_of,
    random_token,
    same_host_url,
    set_cookie,
    token_claims,
)
from edge.access.subject import Subject
from edge.login import pages
from edge.login.call import host_of, query_of
from edge.login.context import Context, Target
from edge.login.sealed import HANDOFF, HandoffCode, open_sealed, seal
from edge.login.store import StoreUnavailable

log = logging.getLogger("edge.login")

JTI_BYTES = 16  # random bytes naming a code in the store
# The logout query field that sends a signed-out browser on to the sign-in
# form instead of the signed-out page (edge.login.logout.sign_out).
THEN_LOGIN = {"then": "login"}


def person_of(ident: Identity) -> Person:
    """The same session, carried on to an application (same nonce, same
    provider and authentication methods)."""
    return Person(
        ident.email, sorted(ident.groups), ident.idp, ident.sub, ident.identity_nonce, sorted(ident.amr)
    )


def start_session(
    ctx: Context,
    c: Compiled,
    who: Person,
    target: Target | None,
    req: Request,
    now: float,
    extra: Sequence[Header] = (),
) -> LocalResponse:
    """A new team session for `who`; then on to the application."""
    assert ctx.ring is not None and ctx.team is not None
    duration = ctx.team.session_duration
    claims = token_claims(
        iss=ctx.team_url, aud=ctx.team.hostname, kind="org", person=who, now=now, lifetime=duration
    )
    token = ctx.ring.sign(claims)
    cookie = set_cookie(AUTH_COOKIE, token, max_age=duration)
    ident = verify_token(c, token.encode(), now)
    if not isinstance(ident, Identity):  # our own fresh token: only a key problem gets here
        log.error("a token just issued does not verify: %s", ident.reason)
        return ctx.message(req, 500, "Sign-in failed", "Please try again.")
    if target is None:
        return ctx.signed_in([cookie, *extra])
    return issue(ctx, c, ident, who, target, req, now, [cookie, *extra])


def issue(
    ctx: Context,
    c: Compiled,
    ident: Identity,
    who: Person,
    target: Target,
    req: Request,
    now: float,
    extra: Sequence[Header] = (),
) -> LocalResponse:
    """Policies allow: a one-time code to the application's host."""
    assert ctx.sealer is not None
    subject = Subject.of(req, c.trusted, ident)
    policy, _ = target.app.policies.second_phase(subject, None)
    if policy is None or policy.action == "deny":
        log.info("login: %s has no access to %s", ident.email, target.app.name)
        app = target.app.config
        if app.custom_deny_url:
            return ctx.redirect(app.custom_deny_url, extra)
        page = pages.denied_page(
            ident.email,
            target.app.name,
            another_account(target),
            app.custom_deny_message,
            ctx.look,
            request_id=req.request_id.decode("ascii"),
        )
        return ctx.html(403, page, extra)
    code = HandoffCode(
        host=target.host,
        aud=target.app.aud,
        redirect_url=target.redirect_url,
        person=who,
        jti=random_token(JTI_BYTES),
        binding=target.binding,
    )
    sealed = seal(ctx.sealer, HANDOFF, code, now + HANDOFF_TTL)
    location = f"{origin_of(target.redirect_url)}{AUTHORIZED_PATH}?code={sealed}"
    return ctx.redirect(location, extra)


def another_account(target: Target) -> str:
    """The denied page's "Sign in with another account": sign out, then
    (THEN_LOGIN) straight on to this application's sign-in form, in the same
    login (its binding, so the new account's code works in this browser)."""
    fields = {"kid": target.app.aud, "redirect_url": target.redirect_url}
    if target.binding:
        fields["b"] = target.binding
    return f"{LOGOUT_PATH}?{urlencode({**fields, **THEN_LOGIN})}"


async def authorized(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    """/cdn-cgi/access/authorized?code=...: exchange a one-time code for the
    application's cookie."""
    if action.team:
        return ctx.not_allowed(req)
    if ctx.sealer is None or ctx.ring is None:
        return ctx.no_login_service(req)
    if req.method != b"GET":  # a HEAD (a link previewer) must not use the code up
        return ctx.message(req, 405, "Not allowed", "Use the sign-in link as it was given.")
    try:
        code, exp = open_sealed(ctx.sealer, HANDOFF, query_of(req).get("code", ""), now, HandoffCode)
    except SealError as exc:
        log.info("handoff refused: %s", exc)
        return ctx.message(
            req, 400, "Sign-in link not valid", "This sign-in link is not valid or has expired."
        )
    app = c.apps_by_aud.get(code.aud)
    host = host_of(req)
    url = same_host_url(code.redirect_url, host)
    if code.host != host or app is None or url is None or url != code.redirect_url:
        log.warning("handoff refused: code for %r used on %r", code.host, host)
        return ctx.message(req, 400, "Sign-in link not valid", "This sign-in link is for another site.")
    unbound = _unbound(ctx, c, code, req, url)
    if unbound is not None:
        return unbound
    nonce = code.person.nonce
    if c.revoked.session_revoked(session_key(ctx.team_url, nonce), nonce, now):
        log.info("handoff refused: %s signed out of this sign-in", code.person.email)
        return ctx.message(
            req,
            400,
            "Signed out",
            "This sign-in link belongs to a session that was signed out.",
            link=(url, "Sign in again"),
        )
    try:
        first = await ctx.store.claim_once(f"code:{code.jti}", exp)
    except StoreUnavailable:
        # The claim may still land later: offer a fresh start (a new
        # code), never this link again.
        log.warning("handoff for %s on %s: the store is unreachable (503)", code.person.email, host)
        return ctx.message(
            req,
            503,
            "Try again",
            "Sign-in is briefly unavailable; please try again.",
            link=(url, "Try again"),
        )
    if not first:
        log.warning("handoff refused: code replayed on %s", host)
        return ctx.message(
            req,
            400,
            "Sign-in link already used",
            "This sign-in link was already used.",
            link=(url, "Continue"),
        )
    return _set_app_cookie(ctx, c, app, code.person, url, host, now)


def _unbound(ctx: Context, c: Compiled, code: HandoffCode, req: Request, url: str) -> LocalResponse | None:
    """None if the code belongs to this browser's login; else start the
    login again (the code is left unused: it was meant for someone else,
    or for an older login of this browser)."""
    if not c.binds_logins:
        return None
    held = cookie_value(req.values(b"cookie"), BINDING_COOKIE)
    bound = code.binding
    if bound and held is not None and hmac.compare_digest(held.encode(), bound.encode()):
        return None
    log.info("handoff on %s: not the browser that started this login; starting again", host_of(req))
    if held is None and bound:
        return ctx.message(
            req,
            400,
            "Sign-in not started here",
            "This sign-in link was started in another browser, or this browser blocks cookies.",
            link=(url, "Sign in here"),
        )
    return ctx.redirect(url)


def _set_app_cookie(
    ctx: Context, c: Compiled, app: CompiledApp, who: Person, url: str, host: str, now: float
) -> LocalResponse:
    assert ctx.ring is not None
    duration = app.config.session_duration
    claims = token_claims(iss=ctx.team_url, aud=app.aud, kind="app", person=who, now=now, lifetime=duration)
    token = ctx.ring.sign(claims)
    cookie = set_cookie(
        AUTH_COOKIE,
        token,
        max_age=duration,
        path=cookie_path(c, app, host, url),
        http_only=app.config.http_only,
        same_site=app.config.same_site,
    )
    log.info("signed in %s to %s", who.email, app.name)
    return ctx.redirect(url, [cookie, clear_cookie(BINDING_COOKIE, BINDING_PATH)])


def cookie_path(c: Compiled, app: CompiledApp, host: str, url: str) -> str:
    """Path=/ unless the application scopes its cookie to the matched path."""
    if not app.config.path_scoped:
        return "/"
    segments = path_segments(urlsplit(url).path.encode("latin-1")) or []
    route = c.router.match(host.encode(), segments)
    if route is None or route.app is not app or not route.pattern.segments:
        return "/"
    return route.pattern.path
