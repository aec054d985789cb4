"""The app launcher: the team host's "/" lists the applications a signed-in
user may open.

Which ones is decided as the handoff decides a login (handoff.issue): the
user's team identity and client address against each application's allow and
deny policies. Left out: applications with no such policy (bypass-only and
service-auth-only: nothing to sign in to), those with
`app_launcher_visible = false`, and those with only wildcard domains (no one
address to link to).

Invariants:
- Signed out (no valid team session), the launcher shows nothing: it sends
  the browser to the team's sign-in page, which comes back to "/".
- `launcher_tiles` is pure: same applications, subject and base URL, same tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from edge.access.actions import Endpoint
from edge.access.claims import Identity
from edge.access.compile import Compiled, CompiledApp
from edge.access.endpoints import LOGIN_PATH, LOGOUT_PATH
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.subject import Subject
from edge.config.syntax import DomainPattern
from edge.login import pages
from edge.login.context import Context


async def launcher(
    ctx: Context, c: Compiled, action: Endpoint, req: Request, body: bytes, now: float
) -> LocalResponse:
    if req.method not in (b"GET", b"HEAD"):
        return ctx.not_allowed(req)
    ident = ctx.team_identity(c, req, now)
    if not isinstance(ident, Identity):
        # The team's own sign-in ends at "/" again (Context.signed_in).
        return ctx.redirect(LOGIN_PATH)
    subject = Subject.of(req, c.trusted, ident)
    tiles = launcher_tiles(c.apps, subject, ctx.team_url)
    rid = req.request_id.decode("ascii")
    page = pages.launcher_page(ident.email, tiles, LOGOUT_PATH, ctx.look, rid)
    return ctx.html(200, page)


def launcher_tiles(apps: Sequence[CompiledApp], subject: Subject, team_url: str) -> list[pages.Tile]:
    """The applications `subject` may open, in config order. Links use the
    team host's scheme and port (`team_url`): the applications are served by
    the same listeners."""
    parts = urlsplit(team_url)
    suffix = "" if parts.port is None else f":{parts.port}"
    tiles: list[pages.Tile] = []
    for app in apps:
        config = app.config
        if not config.app_launcher_visible or not app.policies.second:
            continue
        pattern = first_plain(config.patterns)
        if pattern is None:
            continue
        policy, _ = app.policies.second_phase(subject, None)
        if policy is None or policy.action != "allow":
            continue
        path = pattern.path + "/" if pattern.segments else "/"
        tiles.append(pages.Tile(app.name, f"{parts.scheme}://{pattern.host}{suffix}{path}", config.logo_url))
    return tiles


def first_plain(patterns: Sequence[DomainPattern]) -> DomainPattern | None:
    """An application's first domain that names one host (not `*.`)."""
    return next((p for p in patterns if not p.wildcard), None)
