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
instance refuses every token of it (team and application tokens alike). A
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

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import jwt
import msgspec

from edge.access.compile import Compiled, CompiledApp, team_base_url
from edge.access.decide import Endpoint, verify_token
from edge.access.headers import Header
from edge.access.policy import Subject, client_ip
from edge.access.responses import LocalResponse
from edge.access.revocation import revoked_until
from edge.access.router import normalize_host, path_segments
from edge.access.session import (
    AUTH_COOKIE,
    BINDING_COOKIE,
    BINDING_PATH,
    CSRF_COOKIE,
    ENDPOINT_PATH,
    FLOW_COOKIE,
    FLOW_TTL,
    HANDOFF_TTL,
    Sealer,
    SealError,
    clear_cookie,
    cookie_value,
    cross_site,
    origin_of,
    person,
    random_token,
    same_host_url,
    set_cookie,
    token_claims,
    valid_binding,
)
from edge.access.tokens import Identity, Refusal, extract_token, parse_jwks
from edge.config.schema import Config, ConfigError, DevProvider, DevUser, OidcProvider, Team
from edge.login import keydir, pages
from edge.login.cycle import EndpointCall
from edge.login.oidc import REFUSED as OIDC_REFUSED
from edge.login.oidc import UNAVAILABLE as OIDC_UNAVAILABLE
from edge.login.oidc import Flow, OidcClient, OidcError, callback_params
from edge.login.passwords import DUMMY_HASH, verify_password
from edge.login.store import MemoryStore, RedisStore, Store, StoreUnavailable
from edge.proxy.fetch import FetchError, client_ssl_context

log = logging.getLogger("edge.login")

HTML_HEADERS: tuple[Header, ...] = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", pages.CSP),
    (b"x-frame-options", b"DENY"),
    # The login URL carries redirect_url; no page of ours tells another site.
    (b"referrer-policy", b"no-referrer"),
)
JSON_HEADERS: tuple[Header, ...] = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))
CALLBACK = f"{ENDPOINT_PATH}/callback"
# Failed password checks allowed per client address in a window, then 429.
MAX_FAILURES = 10
FAILURE_WINDOW = 300.0  # seconds
CSRF_TTL = 3600  # seconds the login form's CSRF cookie lives
# Bytes of a sealed OIDC flow cookie value: browsers keep a cookie's name and
# value up to 4096 bytes, and Sealer.open takes no more than that either.
FLOW_COOKIE_LIMIT = 4000


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler needs of the request."""

    method: bytes
    host: str  # normalised, no port
    target: str  # path?query as sent
    query: dict[str, str]
    cookies: tuple[bytes, ...]
    access_tokens: tuple[bytes, ...]
    authorizations: tuple[bytes, ...]
    forwarded_for: tuple[bytes, ...]
    content_type: bytes
    client_ip: str
    # Where the request comes from, as the browser tells (see session.cross_site).
    fetch_site: tuple[bytes, ...] = ()
    origin: tuple[bytes, ...] = ()
    referer: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """Where a login is for: an application, its host, where to return."""

    app: CompiledApp
    host: str
    redirect_url: str
    binding: str = ""  # the value of the login binding cookie on the app host


def make_call(method: bytes, host: bytes, target: bytes, headers: Sequence[Header], client_ip: str) -> Call:
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        by_name.setdefault(name, []).append(value)
    text = target.decode("latin-1")
    try:
        query = {k: v[0] for k, v in parse_qs(urlsplit(text).query, max_num_fields=20).items()}
    except ValueError:  # more fields than any link of ours has: treated as none
        query = {}
    return Call(
        method=method,
        host=normalize_host(host).decode("ascii", "replace"),
        target=text,
        query=query,
        cookies=tuple(by_name.get(b"cookie", ())),
        access_tokens=tuple(by_name.get(b"cf-access-token", ())),
        authorizations=tuple(by_name.get(b"authorization", ())),
        forwarded_for=tuple(by_name.get(b"x-forwarded-for", ())),
        content_type=b";".join(by_name.get(b"content-type", ())).split(b";")[0].strip().lower(),
        client_ip=client_ip,
        fetch_site=tuple(by_name.get(b"sec-fetch-site", ())),
        origin=tuple(by_name.get(b"origin", ())),
        referer=tuple(by_name.get(b"referer", ())),
    )


class LoginService:
    """One per worker. `ring` and `sealer` exist when a team is configured."""

    def __init__(self, config: Config, store: Store, server_header: bytes) -> None:
        self.store = store
        self.server = server_header
        self.ring: keydir.KeyRing | None = None
        self.sealer: Sealer | None = None
        # Without a [team] there is no shared secret: the logout confirmation's
        # CSRF token is bound to this process (one worker; elsewhere the form
        # is shown again).
        self._own_sealer = Sealer(os.urandom(32))
        self.key_dir = ""
        self.configure(config)

    # -- configuration and keys --------------------------------------------------

    def configure(self, config: Config) -> None:
        """(Re)read what the login service needs from the config; raises
        keydir.KeyDirError if the key directory cannot be used."""
        self.config = config
        self.team: Team | None = config.team
        self.team_url = team_base_url(config) if config.team is not None else ""
        self.dev_users: dict[str, DevUser] = {}
        self.oidc: dict[str, tuple[OidcProvider, OidcClient]] = {}
        self.providers: dict[str, DevProvider | OidcProvider] = {}
        if config.team is None:
            return
        for i, provider in enumerate(config.team.providers):
            self.providers[provider.id] = provider
            if isinstance(provider, DevProvider):
                self.dev_users.update({u.email.lower(): u for u in provider.users})
                continue
            try:
                self.oidc[provider.id] = (provider, _oidc_client(provider))
            except (ValueError, FetchError) as exc:
                raise ConfigError(f"$.team.providers[{i}]: {exc}") from None
        if config.team.key_dir != self.key_dir:
            self.key_dir = config.team.key_dir
            self.ring = None
            self.refresh_keys(time.time())

    def refresh_keys(self, now: float) -> bool:
        """Reload the key ring if the directory changed (a rotation) or a
        previous key's overlap ended; True if it did."""
        team = self.team
        if team is None:
            return False
        ring = self.ring
        if (
            ring is not None
            and keydir.fingerprint(self.key_dir) == ring.fingerprint
            and (ring.expires is None or now < ring.expires)
        ):
            return False
        self.ring = keydir.load(self.key_dir, team.key_overlap, now)
        if self.sealer is None:
            self.sealer = Sealer(keydir.secret(self.key_dir))
        return True

    def ring_jwks(self) -> bytes:
        assert self.ring is not None
        return self.ring.jwks()

    def current_kid(self) -> str:
        return "" if self.ring is None else self.ring.current.kid

    def verify_keys(self) -> dict[str, jwt.PyJWK]:
        """The ring's public keys, as the built-in issuer's key set holds them."""
        if self.ring is None:
            return {}
        keys, _ = parse_jwks(self.ring.jwks())
        return keys

    # -- dispatch --------------------------------------------------------------------

    def endpoint(self, c: Compiled, action: Endpoint, call: Call) -> EndpointCall:
        async def handler(body: bytes) -> LocalResponse:
            return await self.handle(c, action, call, body, time.time())

        return EndpointCall(handler)

    async def handle(
        self, c: Compiled, action: Endpoint, call: Call, body: bytes, now: float
    ) -> LocalResponse:
        name = action.name
        if name == "certs":
            return self._certs()
        if name == "get-identity":
            return self._get_identity(c, action, call, now)
        if name == "logout":
            return await self._logout(c, action, call, body, now)
        if action.team:
            if name == "callback":
                return await self._callback(c, call, now)
            if call.method == b"POST":
                return await self._login_post(c, action, call, body, now)
            return self._login_get(c, action, call, now)
        if name == "authorized":
            return await self._authorized(c, call, now)
        return self._app_login(action, call)

    # -- responses -----------------------------------------------------------------

    def _html(self, status: int, page: bytes, extra: Sequence[Header] = ()) -> LocalResponse:
        return LocalResponse(status, [*HTML_HEADERS, *extra], page, self.server)

    def _message(
        self, status: int, title: str, text: str, link: tuple[str, str] | None = None
    ) -> LocalResponse:
        return self._html(status, pages.message_page(title, text, link=link))

    def _json(self, status: int, doc: Any, extra: Sequence[Header] = ()) -> LocalResponse:
        return LocalResponse(status, [*JSON_HEADERS, *extra], msgspec.json.encode(doc), self.server)

    def _redirect(self, location: str, extra: Sequence[Header] = ()) -> LocalResponse:
        fields = [(b"location", location.encode("ascii")), (b"cache-control", b"no-store"), *extra]
        return LocalResponse(
            302, [(b"content-type", b"text/plain; charset=utf-8"), *fields], b"", self.server
        )

    def _no_login_service(self) -> LocalResponse:
        return self._message(404, "No login service", "This edge has no login service configured ([team]).")

    # -- every host ------------------------------------------------------------------

    def _certs(self) -> LocalResponse:
        if self.ring is None:
            return self._json(404, {"error": "this edge issues no tokens (no [team] configured)"})
        return LocalResponse(
            200,
            [(b"content-type", b"application/json"), (b"cache-control", b"public, max-age=60")],
            self.ring.certs(),
            self.server,
        )

    def _identity(self, c: Compiled, call: Call, now: float) -> Identity | Refusal:
        token = extract_token(call.cookies, call.access_tokens, call.authorizations, c.verifier.trusts)
        return verify_token(c, token, now)

    def _get_identity(self, c: Compiled, action: Endpoint, call: Call, now: float) -> LocalResponse:
        ident = self._team_identity(c, call, now) if action.team else self._identity(c, call, now)
        if isinstance(ident, Identity) and action.target is not None and action.target.aud not in ident.aud:
            ident = Refusal("token is for another application")
        if not isinstance(ident, Identity):
            return self._json(401, {"error": "not signed in"})
        return self._json(200, identity_document(ident))

    async def _logout(
        self, c: Compiled, action: Endpoint, call: Call, body: bytes, now: float
    ) -> LocalResponse:
        """Sign out at once, unless another site sent the browser here while
        its session is live: then ask first (a form posting back with the CSRF
        token). A dead or absent session has nothing to protect, so the team's
        leg of an app logout (cross-site when the team is another site) just
        clears its cookie."""
        ident = self._team_identity(c, call, now) if action.team else self._identity(c, call, now)
        if call.method == b"POST":
            form = _form(call, body) or {}
            if not self._csrf_sealer().csrf_ok(cookie_value(call.cookies, CSRF_COOKIE), form.get("csrf")):
                error = "This sign-out form expired; confirm again."
                return self._confirm_logout(403, call, ident, error)
        elif isinstance(ident, Identity) and cross_site(
            call.host, call.fetch_site, call.origin, call.referer
        ):
            return self._confirm_logout(200, call, ident)
        return await self._sign_out(c, action, call, ident, now)

    def _confirm_logout(
        self, status: int, call: Call, ident: Identity | Refusal, error: str = ""
    ) -> LocalResponse:
        csrf, extra = self._csrf_field(call)
        who = (ident.email or ident.sub) if isinstance(ident, Identity) else None
        page = pages.logout_page(action=f"{ENDPOINT_PATH}/logout", csrf=csrf, who=who, error=error)
        return self._html(status, page, extra)

    async def _sign_out(
        self, c: Compiled, action: Endpoint, call: Call, ident: Identity | Refusal, now: float
    ) -> LocalResponse:
        if isinstance(ident, Identity) and ident.session:
            await self.store.revoke(ident.session, _revoked_until(c, ident, now))
            log.info("signed out %s (session %s…)", ident.email or ident.sub, ident.identity_nonce[:6])
        clear = [clear_cookie(AUTH_COOKIE)]
        if not action.team:
            # A path-scoped cookie (Path=/area) is never sent to /cdn-cgi/access,
            # so which app it belongs to cannot be told here: clear every
            # scoped path on this host (its session ends with the team's).
            paths = {p for app in c.apps if app.config.path_scoped for p in _scoped_paths(app, call.host)}
            clear.extend(clear_cookie(AUTH_COOKIE, path) for path in sorted(paths))
        if not action.team and self.team is not None:
            # The team session ends too: its cookie is cleared on its own host.
            return self._redirect(f"{self.team_url}{ENDPOINT_PATH}/logout", clear)
        return self._html(200, pages.message_page("Signed out", "You are signed out."), clear)

    # -- the protected host's side -----------------------------------------------------

    def _app_login(self, action: Endpoint, call: Call) -> LocalResponse:
        """/cdn-cgi/access/login/<host> on a protected host: the team's page."""
        if action.name != "login" or self.team is None:
            return self._no_login_service()
        query = urlsplit(call.target).query
        return self._redirect(f"{self.team_url}{ENDPOINT_PATH}/login/{quote(action.rest)}?{query}")

    async def _authorized(self, c: Compiled, call: Call, now: float) -> LocalResponse:
        """Exchange a one-time code for the application's cookie."""
        if self.sealer is None or self.ring is None:
            return self._no_login_service()
        if call.method != b"GET":  # a HEAD (a link previewer) must not use the code up
            return self._message(405, "Not allowed", "Use the sign-in link as it was given.")
        try:
            code = self.sealer.open("handoff", call.query.get("code", ""), now)
        except SealError as exc:
            log.info("handoff refused: %s", exc)
            return self._message(
                400, "Sign-in link not valid", "This sign-in link is not valid or has expired."
            )
        app = c.apps_by_aud.get(str(code.get("a")))
        url = same_host_url(str(code.get("r")), call.host)
        if code.get("h") != call.host or app is None or url is None or url != code.get("r"):
            log.warning("handoff refused: code for %r used on %r", code.get("h"), call.host)
            return self._message(400, "Sign-in link not valid", "This sign-in link is for another site.")
        unbound = self._unbound(c, code, call, url)
        if unbound is not None:
            return unbound
        try:
            first = await self.store.claim_once(f"code:{code['j']}", float(code["exp"]))
        except StoreUnavailable:
            # The claim may still land later: offer a fresh start (a new
            # code), never this link again.
            log.warning(
                "handoff for %s on %s: the store is unreachable (503)", code["p"].get("email"), call.host
            )
            return self._message(
                503, "Try again", "Sign-in is briefly unavailable; please try again.", link=(url, "Try again")
            )
        if not first:
            log.warning("handoff refused: code replayed on %s", call.host)
            return self._message(
                400,
                "Sign-in link already used",
                "This sign-in link was already used.",
                link=(url, "Continue"),
            )
        return self._set_app_cookie(c, app, code["p"], url, call.host, now)

    def _unbound(self, c: Compiled, code: dict[str, Any], call: Call, url: str) -> LocalResponse | None:
        """None if the code belongs to this browser's login; else start the
        login again (the code is left unused: it was meant for someone else,
        or for an older login of this browser)."""
        if not c.binds_logins:
            return None
        held = cookie_value(call.cookies, BINDING_COOKIE)
        bound = str(code.get("b") or "")
        if bound and held is not None and hmac.compare_digest(held.encode(), bound.encode()):
            return None
        log.info("handoff on %s: not the browser that started this login; starting again", call.host)
        if held is None and bound:
            return self._message(
                400,
                "Sign-in not started here",
                "This sign-in link was started in another browser, or this browser blocks cookies.",
                link=(url, "Sign in here"),
            )
        return self._redirect(url)

    def _set_app_cookie(
        self, c: Compiled, app: CompiledApp, who: dict[str, Any], url: str, host: str, now: float
    ) -> LocalResponse:
        assert self.ring is not None
        duration = app.config.session_duration
        claims = token_claims(
            iss=self.team_url, aud=app.aud, kind="app", person=who, now=now, lifetime=duration
        )
        token = self.ring.sign(claims)
        cookie = set_cookie(
            AUTH_COOKIE,
            token,
            max_age=duration,
            path=_cookie_path(c, app, host, url),
            http_only=app.config.http_only,
            same_site=app.config.same_site,
        )
        log.info("signed in %s to %s", who["email"], app.name)
        return self._redirect(url, [cookie, clear_cookie(BINDING_COOKIE, BINDING_PATH)])

    # -- the team host ---------------------------------------------------------------

    def _team_identity(self, c: Compiled, call: Call, now: float) -> Identity | Refusal:
        token = extract_token(call.cookies, (), (), c.verifier.trusts)
        ident = verify_token(c, token, now)
        if isinstance(ident, Identity) and (ident.iss != self.team_url or ident.type != "org"):
            return Refusal("not a team session token")
        return ident

    def _target(self, c: Compiled, host: str, call: Call) -> Target | str | None:
        """The login's destination: None for a login to the team itself, a
        message if the link is not valid."""
        if not host:
            return None
        app = c.apps_by_aud.get(call.query.get("kid", ""))
        url = same_host_url(call.query.get("redirect_url", ""), host.lower())
        if app is None or url is None:
            return (
                "This sign-in link is not valid (unknown application, or a return address on another site)."
            )
        segments = path_segments(urlsplit(url).path.encode("latin-1"))
        route = None if segments is None else c.router.match(host.lower().encode(), segments)
        if route is None or route.app is not app:
            return "This sign-in link is not valid (the return address is not part of the application)."
        return Target(app, host.lower(), url, valid_binding(call.query.get("b")))

    def _login_get(self, c: Compiled, action: Endpoint, call: Call, now: float) -> LocalResponse:
        if action.name != "login":
            return self._message(405, "Not allowed", "Nothing to see here.")
        target = self._target(c, action.rest, call)
        if isinstance(target, str):
            return self._message(400, "Sign-in link not valid", target)
        ident = self._team_identity(c, call, now)
        if isinstance(ident, Identity):
            if target is None:
                return self._signed_in(ident)
            return self._handoff(c, ident, _person_of(ident), target, call, now)
        return self._login_page(200, call, target)

    def _csrf_sealer(self) -> Sealer:
        return self.sealer if self.sealer is not None else self._own_sealer

    def _csrf_field(self, call: Call) -> tuple[str, list[Header]]:
        """A form's CSRF field (a MAC of the CSRF cookie), and the cookie if
        the browser has none yet (an existing one is kept: a form open in
        another tab stays valid)."""
        csrf = cookie_value(call.cookies, CSRF_COOKIE)
        extra = []
        if not csrf or len(csrf) > 64:
            csrf = random_token()
            extra.append(
                set_cookie(CSRF_COOKIE, csrf, max_age=CSRF_TTL, path=ENDPOINT_PATH, same_site="strict")
            )
        return self._csrf_sealer().csrf_token(csrf), extra

    def _login_page(
        self, status: int, call: Call, target: Target | None, error: str = "", email: str = ""
    ) -> LocalResponse:
        csrf, extra = self._csrf_field(call)
        choices = [
            pages.Choice(p.id, p.name or p.id, "dev" if isinstance(p, DevProvider) else "oidc")
            for p in self.providers.values()
        ]
        # The form posts where the CSRF cookie (Path=/cdn-cgi/access) is sent:
        # the team host's "/" shows this page too, but a post to "/" would
        # arrive without the cookie and always fail.
        action = call.target if call.target.startswith(f"{ENDPOINT_PATH}/") else f"{ENDPOINT_PATH}/login"
        page = pages.login_page(
            app_name=None if target is None else target.app.name,
            action=action,
            csrf=csrf,
            providers=choices,
            error=error,
            email=email,
        )
        return self._html(status, page, extra)

    def _signed_in(self, ident: Identity, extra: Sequence[Header] = ()) -> LocalResponse:
        page = pages.message_page(
            "Signed in", f"You are signed in as {ident.email}.", link=(f"{ENDPOINT_PATH}/logout", "Sign out")
        )
        return self._html(200, page, extra)

    async def _login_post(
        self, c: Compiled, action: Endpoint, call: Call, body: bytes, now: float
    ) -> LocalResponse:
        assert self.sealer is not None
        if action.name != "login":
            return self._message(405, "Not allowed", "Nothing to see here.")
        form = _form(call, body)
        if form is None:
            return self._message(400, "Bad request", "Expected a sign-in form.")
        target = self._target(c, action.rest, call)
        if isinstance(target, str):
            return self._message(400, "Sign-in link not valid", target)
        if not self.sealer.csrf_ok(cookie_value(call.cookies, CSRF_COOKIE), form.get("csrf")):
            return self._login_page(403, call, target, "The form expired; please sign in again.")
        provider = self.providers.get(form.get("provider", ""))
        if isinstance(provider, OidcProvider):
            return await self._oidc_begin(provider, target, now)
        if provider is None:
            return self._login_page(400, call, target, "Choose a way to sign in.")
        return await self._dev_login(c, provider, form, call, target, now)

    async def _dev_login(
        self,
        c: Compiled,
        provider: DevProvider,
        form: dict[str, str],
        call: Call,
        target: Target | None,
        now: float,
    ) -> LocalResponse:
        email = form.get("email", "").strip()
        # Throttled per client; behind a trusted proxy, per the address it
        # forwards for (by the proxy's own, one guesser would lock out everyone).
        ip = client_ip(call.client_ip, call.forwarded_for, c.trusted)
        client = call.client_ip if ip is None else str(ip)
        if await self.store.count(f"signin:{client}", FAILURE_WINDOW) >= MAX_FAILURES:
            return self._login_page(429, call, target, "Too many failed attempts; wait a few minutes.", email)
        user = self.dev_users.get(email.lower())
        if user is not None and user not in provider.users:
            user = None
        encoded = user.password if user is not None else DUMMY_HASH
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, verify_password, form.get("password", ""), encoded)
        if not ok or user is None:
            await self.store.add(f"signin:{client}", FAILURE_WINDOW)
            log.info("dev sign-in failed for %r from %s", email[:100], client)
            return self._login_page(401, call, target, "Wrong email or password.", email)
        return self._session(c, person(user.email, user.groups, provider.id), target, call, now)

    async def _oidc_begin(self, provider: OidcProvider, target: Target | None, now: float) -> LocalResponse:
        assert self.sealer is not None
        client = self.oidc[provider.id][1]
        try:
            url, flow = await client.begin(self.team_url + CALLBACK)
        except OidcError as exc:
            log.warning("oidc %s: %s", provider.id, exc)
            return self._message(502, "Sign-in unavailable", exc.public)
        state = {
            "i": provider.id,
            "s": flow.state,
            "n": flow.nonce,
            "v": flow.verifier,
            "t": None
            if target is None
            else [target.host, target.app.aud, target.redirect_url, target.binding],
        }
        sealed = self.sealer.seal("flow", state, now + FLOW_TTL)
        if len(sealed) > FLOW_COOKIE_LIMIT and target is not None:
            # A long return address (a big query) would make a cookie browsers
            # drop and Sealer.open refuses: after a round trip to the provider
            # the sign-in could only fail. Come back to the page without its query.
            short = urlunsplit(urlsplit(target.redirect_url)._replace(query="", fragment=""))
            state["t"] = [target.host, target.app.aud, short, target.binding]
            sealed = self.sealer.seal("flow", state, now + FLOW_TTL)
        if len(sealed) > FLOW_COOKIE_LIMIT:
            return self._message(
                414, "Address too long", "This address is too long to sign in from; open a shorter one."
            )
        cookie = set_cookie(FLOW_COOKIE, sealed, max_age=int(FLOW_TTL), path=ENDPOINT_PATH)
        return self._redirect(url, [cookie, clear_cookie(BINDING_COOKIE, BINDING_PATH)])

    async def _callback(self, c: Compiled, call: Call, now: float) -> LocalResponse:
        assert self.sealer is not None
        clear = [clear_cookie(FLOW_COOKIE, ENDPOINT_PATH)]
        try:
            state = self.sealer.open("flow", cookie_value(call.cookies, FLOW_COOKIE) or "", now)
            entry = self.oidc[str(state["i"])]
        except (SealError, KeyError):
            return self._html(400, _start_again(self.team_url), clear)
        provider, client = entry
        if "error" in call.query:
            try:
                callback_params(urlsplit(call.target).query)
            except OidcError as exc:
                log.info("oidc %s: %s", provider.id, exc)
                status = 403 if exc.public == OIDC_REFUSED else 502
                page = pages.message_page(
                    "Sign-in refused" if status == 403 else "Sign-in failed",
                    exc.public,
                    link=(f"{self.team_url}{ENDPOINT_PATH}/login", "Try again"),
                )
                return self._html(status, page, clear)
        flow = Flow(state=str(state["s"]), nonce=str(state["n"]), verifier=str(state["v"]))
        try:
            claims = await client.finish(
                call.query.get("code", ""), call.query.get("state", ""), flow, self.team_url + CALLBACK, now
            )
        except OidcError as exc:
            log.warning("oidc %s: %s", provider.id, exc)
            page = pages.message_page(
                "Sign-in failed", exc.public, link=(f"{ENDPOINT_PATH}/login", "Start again")
            )
            # The provider down or failing is a gateway error (as in _oidc_begin), not the browser's.
            return self._html(502 if exc.public == OIDC_UNAVAILABLE else 400, page, clear)
        target = self._saved_target(c, state.get("t"))
        who = person(claims.email, claims.groups, provider.id, sub=f"{provider.id}:{claims.sub}")
        response = self._session(c, who, target, call, now, clear)
        return response

    def _saved_target(self, c: Compiled, saved: Any) -> Target | None:
        if not isinstance(saved, list) or len(saved) != 4:
            return None
        app = c.apps_by_aud.get(str(saved[1]))
        url = same_host_url(str(saved[2]), str(saved[0]))
        if app is None or url is None:
            return None
        return Target(app, str(saved[0]), url, valid_binding(str(saved[3])))

    def _session(
        self,
        c: Compiled,
        who: dict[str, Any],
        target: Target | None,
        call: Call,
        now: float,
        extra: Sequence[Header] = (),
    ) -> LocalResponse:
        """A new team session for `who`; then on to the application."""
        assert self.ring is not None and self.team is not None
        duration = self.team.session_duration
        claims = token_claims(
            iss=self.team_url, aud=self.team.hostname, kind="org", person=who, now=now, lifetime=duration
        )
        token = self.ring.sign(claims)
        cookie = set_cookie(AUTH_COOKIE, token, max_age=duration)
        ident = verify_token(c, token.encode(), now)
        if not isinstance(ident, Identity):  # our own fresh token: only a key problem gets here
            log.error("a token just issued does not verify: %s", ident.reason)
            return self._message(500, "Sign-in failed", "Please try again.")
        if target is None:
            return self._signed_in(ident, [cookie, *extra])
        return self._handoff(c, ident, who, target, call, now, [cookie, *extra])

    def _handoff(
        self,
        c: Compiled,
        ident: Identity,
        who: dict[str, Any],
        target: Target,
        call: Call,
        now: float,
        extra: Sequence[Header] = (),
    ) -> LocalResponse:
        """Policies allow: a one-time code to the application's host."""
        assert self.sealer is not None
        subject = Subject(call.client_ip, call.forwarded_for, c.trusted, identity=ident)
        policy, _ = target.app.policies.second_phase(subject, None)
        if policy is None or policy.action == "deny":
            log.info("login: %s has no access to %s", ident.email, target.app.name)
            page = pages.denied_page(ident.email, target.app.name, f"{ENDPOINT_PATH}/logout")
            return self._html(403, page, extra)
        payload = {
            "b": target.binding,
            "h": target.host,
            "a": target.app.aud,
            "r": target.redirect_url,
            "p": who,
            "j": random_token(16),
        }
        code = self.sealer.seal("handoff", payload, now + HANDOFF_TTL)
        location = f"{origin_of(target.redirect_url)}{ENDPOINT_PATH}/authorized?code={code}"
        return self._redirect(location, extra)


# -- helpers ------------------------------------------------------------------------------


def _revoked_until(c: Compiled, ident: Identity, now: float) -> float:
    """Until when a logout refuses `ident`'s sign-in (see revoked_until)."""
    issuer = c.verifier.issuers[ident.iss]  # it verified the token
    return revoked_until(now, ident.valid_until, issuer.max_lifetime, issuer.leeway)


def _oidc_client(provider: OidcProvider) -> OidcClient:
    return OidcClient(
        provider.issuer,
        provider.client_id,
        provider.client_secret,
        scopes=provider.scopes,
        email_claim=provider.email_claim,
        groups_claim=provider.groups_claim,
        ssl_context=client_ssl_context(provider.verify_tls, provider.ca_file),
    )


def _person_of(ident: Identity) -> dict[str, Any]:
    """The same session, carried on to an application (same nonce)."""
    return {
        "email": ident.email,
        "groups": sorted(ident.groups),
        "idp": "",
        "sub": ident.sub,
        "nonce": ident.identity_nonce,
    }


def _form(call: Call, body: bytes) -> dict[str, str] | None:
    if call.content_type != b"application/x-www-form-urlencoded":
        return None
    try:
        parsed = parse_qs(body.decode("utf-8"), max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in parsed.items()}


def _cookie_path(c: Compiled, app: CompiledApp, host: str, url: str) -> str:
    """Path=/ unless the application scopes its cookie to the matched path."""
    if not app.config.path_scoped:
        return "/"
    segments = path_segments(urlsplit(url).path.encode("latin-1")) or []
    route = c.router.match(host.encode(), segments)
    if route is None or route.app is not app or not route.pattern.segments:
        return "/"
    return route.pattern.path


def _scoped_paths(app: CompiledApp, host: str) -> list[str]:
    """The cookie paths a path-scoped `app` may have set on `host`."""
    return sorted(
        {
            p.path
            for p in app.config.patterns
            if p.segments and (p.host == host or (p.wildcard and host.endswith(p.host[1:])))
        }
    )


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


def _start_again(team_url: str) -> bytes:
    return pages.message_page(
        "Sign-in expired",
        "This sign-in took too long or was started elsewhere; please start again.",
        link=(f"{team_url}{ENDPOINT_PATH}/login", "Start again"),
    )


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
        raise ConfigError(f"{source}: $.team.key_dir: {exc}") from None
    return parse_jwks(ring.jwks())[0]


def make_store(config: Config) -> Store:
    """The worker's store: Redis when the team shares one, else in-process."""
    team = config.team
    if team is not None and team.store == "redis":
        return RedisStore(team.redis_url, prefix=team.redis_prefix, log=logging.getLogger("edge.store"))
    return MemoryStore()
