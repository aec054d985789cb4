"""What every login flow reads: the login service's settings, keys and store
at one moment (`Context`), with the responses and checks the flows share.

Invariants:
- A Context is immutable; the service builds a new one when the config is
  reloaded or the key ring changes, so a flow sees one consistent view.
- The flows are functions of (Context, Compiled, Request, body, now): the clock
  is passed in, and their only I/O is the store and an OIDC provider (both
  reached through the interfaces held here).
- Handlers never raise for bad input: every outcome is a page, a redirect or
  a small JSON document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from edge.access.claims import Identity, Refusal
from edge.access.compile import Compiled, CompiledApp
from edge.access.decide import verify_token
from edge.access.endpoints import ENDPOINT_PATH, LOGIN_PATH
from edge.access.headers import ACCESS_TOKEN, Header
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.session import (
    CSRF_COOKIE,
    Sealer,
    cookie_value,
    random_token,
    set_cookie,
)
from edge.access.tokens import extract_token
from edge.config.schema import DevProvider, DevUser, OidcProvider, Team
from edge.login import pages
from edge.login.call import target_text
from edge.login.keyring import KeyRing
from edge.login.oidc import Claims, Flow
from edge.login.store import Store

HTML_HEADERS: tuple[Header, ...] = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", pages.CSP),
    (b"x-frame-options", b"DENY"),
    # The login URL carries redirect_url; no page of ours tells another site.
    (b"referrer-policy", b"no-referrer"),
)
JSON_HEADERS: tuple[Header, ...] = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))
CSRF_TTL = 3600  # seconds the login form's CSRF cookie lives
# A CSRF cookie longer than ours (random_token: 32 characters) is replaced.
MAX_CSRF_COOKIE = 64


class RelyingParty(Protocol):
    """An OpenID Connect provider as the OIDC flow uses it (oidc.OidcClient)."""

    async def begin(self, redirect_uri: str) -> tuple[str, Flow]: ...

    async def finish(
        self,
        code: str,
        returned_state: str,
        flow: Flow,
        redirect_uri: str,
        now: float,
        returned_iss: str | None = None,
    ) -> Claims: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where a login is for: an application, its host, where to return."""

    app: CompiledApp
    host: str
    redirect_url: str
    binding: str = ""  # the value of the login binding cookie on the app host


@dataclass(frozen=True, slots=True)
class Context:
    """The login service at one moment. `ring` and `sealer` exist when a team
    is configured; `csrf_sealer` always does."""

    store: Store
    server: bytes  # the Server header's value
    team: Team | None
    team_url: str  # how browsers reach the team host ("" without a team)
    providers: Mapping[str, DevProvider | OidcProvider]
    dev_users: Mapping[str, DevUser]  # by lowercased email
    oidc: Mapping[str, tuple[OidcProvider, RelyingParty]]
    ring: KeyRing | None
    sealer: Sealer | None
    # The team's sealer; without a [team] there is no shared secret, so the
    # logout confirmation's CSRF token is bound to this process (one worker;
    # elsewhere the form is shown again).
    csrf_sealer: Sealer
    look: pages.Look = pages.PLAIN  # the team's branding
    # HTML_HEADERS, with the CSP allowing the configured logos' origins.
    html_headers: tuple[Header, ...] = HTML_HEADERS

    # -- responses ---------------------------------------------------------------

    def html(self, status: int, page: bytes, extra: Sequence[Header] = ()) -> LocalResponse:
        return LocalResponse(status, [*self.html_headers, *extra], page, self.server)

    def message(
        self, req: Request, status: int, title: str, text: str, link: tuple[str, str] | None = None
    ) -> LocalResponse:
        """A page that says one thing; it names the request's id, so a user's
        screenshot names the access log line."""
        rid = req.request_id.decode("ascii")
        return self.html(status, pages.message_page(title, text, link=link, look=self.look, request_id=rid))

    def json(self, status: int, doc: Any, extra: Sequence[Header] = ()) -> LocalResponse:
        return LocalResponse(status, [*JSON_HEADERS, *extra], msgspec.json.encode(doc), self.server)

    def json_error(self, req: Request, status: int, error: str) -> LocalResponse:
        """A JSON error, naming the request's id (as the edge's 401 does)."""
        return self.json(status, {"error": error, "request_id": req.request_id.decode("ascii")})

    def redirect(self, location: str, extra: Sequence[Header] = ()) -> LocalResponse:
        fields = [(b"location", location.encode("ascii")), (b"cache-control", b"no-store"), *extra]
        return LocalResponse(
            302, [(b"content-type", b"text/plain; charset=utf-8"), *fields], b"", self.server
        )

    def no_login_service(self, req: Request) -> LocalResponse:
        return self.message(
            req, 404, "No login service", "This edge has no login service configured ([team])."
        )

    def not_allowed(self, req: Request) -> LocalResponse:
        return self.message(req, 405, "Not allowed", "Nothing to see here.")

    # -- who is asking ---------------------------------------------------------------

    def identity(self, c: Compiled, req: Request, now: float) -> Identity | Refusal:
        """The request's token (cookie, header or bearer), verified."""
        values = req.values
        token = extract_token(
            values(b"cookie"), values(ACCESS_TOKEN), values(b"authorization"), c.verifier.trusts
        )
        return verify_token(c, token, now)

    def team_identity(self, c: Compiled, req: Request, now: float) -> Identity | Refusal:
        """The team session: only the team's own cookie, an `org` token of its issuer."""
        token = extract_token(req.values(b"cookie"), (), (), c.verifier.trusts)
        ident = verify_token(c, token, now)
        if isinstance(ident, Identity) and (ident.iss != self.team_url or ident.type != "org"):
            return Refusal("not a team session token")
        return ident

    # -- forms ---------------------------------------------------------------------------

    def csrf_field(self, req: Request) -> tuple[str, list[Header]]:
        """A form's CSRF field (a MAC of the CSRF cookie), and the cookie if
        the browser has none yet (an existing one is kept: a form open in
        another tab stays valid)."""
        csrf = cookie_value(req.values(b"cookie"), CSRF_COOKIE)
        extra = []
        if not csrf or len(csrf) > MAX_CSRF_COOKIE:
            csrf = random_token()
            extra.append(
                set_cookie(CSRF_COOKIE, csrf, max_age=CSRF_TTL, path=ENDPOINT_PATH, same_site="strict")
            )
        return self.csrf_sealer.csrf_token(csrf), extra

    def csrf_ok(self, req: Request, form: Mapping[str, str]) -> bool:
        return self.csrf_sealer.csrf_ok(cookie_value(req.values(b"cookie"), CSRF_COOKIE), form.get("csrf"))

    def login_page(
        self, status: int, req: Request, target: Target | None, error: str = "", email: str = ""
    ) -> LocalResponse:
        csrf, extra = self.csrf_field(req)
        choices = [
            pages.Choice(p.id, p.name or p.id, "dev" if isinstance(p, DevProvider) else "oidc")
            for p in self.offered(target)
        ]
        # The form posts where the CSRF cookie (Path=/cdn-cgi/access) is sent:
        # the team host's "/" shows this page too, but a post to "/" would
        # arrive without the cookie and always fail.
        action = target_text(req)
        if not action.startswith(f"{ENDPOINT_PATH}/"):
            action = LOGIN_PATH
        page = pages.login_page(
            app_name=None if target is None else target.app.name,
            action=action,
            csrf=csrf,
            providers=choices,
            error=error,
            email=email,
            look=self.look,
            request_id=req.request_id.decode("ascii"),
        )
        return self.html(status, page, extra)

    def offered(self, target: Target | None) -> list[DevProvider | OidcProvider]:
        """The providers a login may use: the application's allowed_idps (in
        the team's order), or every provider for a login to the team itself."""
        allowed = None if target is None else target.app.config.allowed_idps
        return [p for p in self.providers.values() if allowed is None or p.id in allowed]

    def signed_in(self, extra: Sequence[Header] = ()) -> LocalResponse:
        """Signed in to the team itself: on to its "/", the app launcher."""
        return self.redirect("/", extra)
