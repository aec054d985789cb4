"""The login service's pages: plain, small, accessible HTML.

Every value that comes from a request or a config is escaped here, once.
The frame around a page's content (edge.access.look) is shared with the
edge's own deny page: the team's branding (`Look`: a name, a logo and an
accent colour), a custom template per page, and the Content-Security-Policy
the pages are sent with (they load nothing but the logos a config names).
Every page names the request's id, so a user's screenshot names the access
log line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Re-exported: the login service knows them as pages.*.
from edge.access.look import CSP as CSP
from edge.access.look import ICON as ICON
from edge.access.look import PLAIN as PLAIN
from edge.access.look import Look as Look
from edge.access.look import csp as csp
from edge.access.look import look_of as look_of
from edge.access.look import page


def _page(title: str, body: str, look: Look = PLAIN, kind: str = "", request_id: str = "") -> bytes:
    """A whole page (look.page), encoded."""
    return page(title, body, look, kind, request_id).encode()


@dataclass(frozen=True, slots=True)
class Choice:
    """One identity provider as the login page offers it."""

    id: str
    name: str
    kind: str  # "dev" (email + password form) or "oidc" (a button)


def login_page(
    *,
    app_name: str | None,
    action: str,
    csrf: str,
    providers: Sequence[Choice],
    error: str = "",
    email: str = "",
    look: Look = PLAIN,
    request_id: str = "",
) -> bytes:
    """The sign-in page: a form per provider, all posting back to `action`."""
    title = f"Sign in to {app_name}" if app_name else "Sign in"
    parts = [f"<h1>{escape(title)}</h1>"]
    if error:
        parts.append(f'<p class="error" role="alert">{escape(error)}</p>')
    for choice in providers:
        parts.append(_provider_form(choice, action, csrf, email))
    return _page(title, "\n".join(parts), look, "login", request_id)


def _provider_form(choice: Choice, action: str, csrf: str, email: str) -> str:
    hidden = (
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="provider" value="{escape(choice.id)}">'
    )
    ident = escape(choice.id)
    head = f'<section aria-labelledby="p-{ident}"><h2 id="p-{ident}">{escape(choice.name)}</h2>'
    if choice.kind == "oidc":
        return (
            f'{head}<form method="post" action="{escape(action)}">{hidden}'
            f'<button type="submit">Continue with {escape(choice.name)}</button></form></section>'
        )
    return (
        f'{head}<form method="post" action="{escape(action)}">{hidden}'
        f'<label for="email-{escape(choice.id)}">Email</label>'
        f'<input id="email-{escape(choice.id)}" name="email" type="email" autocomplete="username" '
        f'required value="{escape(email)}">'
        f'<label for="password-{escape(choice.id)}">Password</label>'
        f'<input id="password-{escape(choice.id)}" name="password" type="password" '
        f'autocomplete="current-password" required>'
        f'<button type="submit">Sign in</button>'
        f'<p class="note">Development sign-in: users listed in the edge\'s config. Not for production.</p>'
        f"</form></section>"
    )


def logout_page(
    *,
    action: str,
    csrf: str,
    who: str | None,
    error: str = "",
    look: Look = PLAIN,
    request_id: str = "",
) -> bytes:
    """Asks before signing out, when another site sent the user here: one
    button that posts back (with the CSRF token) to `action`. Branded; no
    template of its own (the templates are the four pages TEMPLATE_PAGES names)."""
    parts = ["<h1>Sign out?</h1>"]
    if error:
        parts.append(f'<p class="error" role="alert">{escape(error)}</p>')
    signed_in = f"You are signed in as {escape(who)}. " if who else ""
    parts.append(
        f"<p>{signed_in}A page on another site may have sent you here to sign out; "
        "nothing happens unless you confirm.</p>"
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<button type="submit">Sign out</button></form>'
    )
    return _page("Sign out?", "\n".join(parts), look, request_id=request_id)


def message_page(
    title: str,
    message: str,
    *,
    link: tuple[str, str] | None = None,
    look: Look = PLAIN,
    kind: str = "",
    note: str = "",
    request_id: str = "",
) -> bytes:
    """A page that says one thing (signed out, denied, link expired...);
    `kind` names the team template it may take, `note` is a second paragraph."""
    body = f'<h1>{escape(title)}</h1>\n<p role="status">{escape(message)}</p>'
    if note:
        body += f'\n<p class="custom">{escape(note)}</p>'
    if link is not None:
        body += f'\n<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>'
    return _page(title, body, look, kind, request_id)


def denied_page(
    email: str, app_name: str, logout: str, message: str = "", look: Look = PLAIN, request_id: str = ""
) -> bytes:
    """The policies refused a signed-in user; `message` is the app's custom_deny_message."""
    return message_page(
        "Access denied",
        f"That account ({email}) does not have access to {app_name}.",
        link=(logout, "Sign in with another account"),
        look=look,
        kind="denied",
        note=message,
        request_id=request_id,
    )


@dataclass(frozen=True, slots=True)
class Tile:
    """One application in the launcher."""

    name: str
    url: str
    logo_url: str = ""


def launcher_page(
    email: str, tiles: Sequence[Tile], logout: str, look: Look = PLAIN, request_id: str = ""
) -> bytes:
    """The team host's "/": the applications a signed-in user may open."""
    title = "Your applications"
    parts = [
        f"<h1>{escape(title)}</h1>",
        f'<p role="status">You are signed in as {escape(email)}.</p>',
    ]
    if tiles:
        items = []
        for tile in tiles:
            logo = f'<img src="{escape(tile.logo_url)}" alt="" height="24"> ' if tile.logo_url else ""
            items.append(f'<li class="app">{logo}<a href="{escape(tile.url)}">{escape(tile.name)}</a></li>')
        parts.append('<ul class="apps">' + "".join(items) + "</ul>")
    else:
        parts.append('<p class="note">There are no applications for you to open here.</p>')
    parts.append(f'<p><a href="{escape(logout)}">Sign out</a></p>')
    return _page(title, "\n".join(parts), look, "launcher", request_id)
