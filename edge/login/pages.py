"""The login service's pages: plain, small, accessible HTML.

Every value that comes from a request or a config is escaped here, once.
Pages load nothing from anywhere (no script, no style sheet) but the logos a
config names, so the Content-Security-Policy sent with them can forbid
everything but the inline style and icon below, images from those logos'
origins (`csp`) and form posts to the page's own origin.

The team's branding (`Look`) sets a name, a logo and an accent colour; a
custom template replaces the page around its content. In a template, every
placeholder's value is escaped except {{content}}, the markup built here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import urlsplit

from edge.config.schema import TEMPLATE_CONTENT, Branding

# One img-src directive (a second one would be ignored): the inline icon's
# data: URL, then the configured logos' origins (`csp`).
_IMG_SRC = b"img-src data:"
_CSP_REST = (
    b"; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"
)
CSP = b"default-src 'none'; " + _IMG_SRC + _CSP_REST
# As config.checks_team.PLACEHOLDER_RE, which checked every template at load.
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def csp(logo_urls: Iterable[str]) -> bytes:
    """The pages' CSP: CSP, plus images from the origins of the configured logos."""
    origins = sorted({_origin(url) for url in logo_urls if url})
    if not origins:
        return CSP
    logos = " ".join(origins).encode("ascii")
    return b"default-src 'none'; " + _IMG_SRC + b" " + logos + _CSP_REST


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True, slots=True)
class Look:
    """The team's branding as the pages use it (`look_of`)."""

    team_name: str = ""
    logo_url: str = ""
    accent: str = ""  # "#rrggbb" (checked at load) or "" for the built-in look
    templates: Mapping[str, str] = field(default_factory=dict)  # page -> template text


PLAIN = Look()


def look_of(branding: Branding) -> Look:
    return Look(branding.name, branding.logo_url, branding.accent.lower(), dict(branding.templates.texts))


# The favicon, inline (a data: URL, allowed by the CSP's img-src): a page
# that loads nothing needs no /favicon.ico route. Also used by the demo origin.
ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Crect width='16' height='16' rx='3' fill='%23246'/%3E"
    "%3Cpath d='M4 4h8v2H6v1h5v2H6v1h6v2H4z' fill='%23fff'/%3E%3C/svg%3E"
)

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "h1{font-size:1.4rem}h2{font-size:1.1rem}label{display:block;margin:.6rem 0 .2rem}"
    "input{width:100%;padding:.45rem;font:inherit;box-sizing:border-box}"
    "button{margin-top:1rem;padding:.5rem 1rem;font:inherit;cursor:pointer}"
    ".note{color:#555;font-size:.9rem}.error{color:#a00;border-left:3px solid #a00;padding-left:.6rem}"
    "section{border-top:1px solid #ddd;margin-top:1.5rem;padding-top:.5rem}"
)


@dataclass(frozen=True, slots=True)
class Choice:
    """One identity provider as the login page offers it."""

    id: str
    name: str
    kind: str  # "dev" (email + password form) or "oidc" (a button)


def _page(title: str, body: str, look: Look = PLAIN, kind: str = "", request_id: str = "") -> bytes:
    """A whole page: the team's template for `kind` if it has one, else the
    built-in one, with the team's name, logo and accent. The request id, when
    given, names the access log line a user's screenshot shows."""
    if request_id:
        body += f'\n<footer class="note">Request id: {escape(request_id)}</footer>'
    template = look.templates.get(kind)
    if template is not None:
        values = {
            "title": escape(title),
            "team_name": escape(look.team_name),
            "logo_url": escape(look.logo_url),
            "accent": escape(look.accent),
            TEMPLATE_CONTENT: body,
        }
        # Unknown names were refused at load; keep one as it is regardless.
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template).encode()
    style = _STYLE
    if look.accent:
        accent = escape(look.accent)
        style += (
            f"h1{{color:{accent}}}a{{color:{accent}}}"
            f"button{{background:{accent};color:#fff;border:1px solid {accent};border-radius:3px}}"
        )
    header = ""
    if look.team_name or look.logo_url:
        logo = f'<img src="{escape(look.logo_url)}" alt="" height="32"> ' if look.logo_url else ""
        header = f'<header class="team">{logo}<span>{escape(look.team_name)}</span></header>\n'
    full_title = f"{title} · {look.team_name}" if look.team_name else title
    return (
        '<!doctype html>\n<html lang="en">\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{escape(full_title)}</title>\n<link rel="icon" href="{escape(ICON)}">\n'
        f"<style>{style}</style>\n"
        f"{header}<main>\n{body}\n</main>\n"
    ).encode()


def login_page(
    *,
    app_name: str | None,
    action: str,
    csrf: str,
    providers: Sequence[Choice],
    error: str = "",
    email: str = "",
    look: Look = PLAIN,
) -> bytes:
    """The sign-in page: a form per provider, all posting back to `action`."""
    title = f"Sign in to {app_name}" if app_name else "Sign in"
    parts = [f"<h1>{escape(title)}</h1>"]
    if error:
        parts.append(f'<p class="error" role="alert">{escape(error)}</p>')
    for choice in providers:
        parts.append(_provider_form(choice, action, csrf, email))
    return _page(title, "\n".join(parts), look, "login")


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


def logout_page(*, action: str, csrf: str, who: str | None, error: str = "") -> bytes:
    """Asks before signing out, when another site sent the user here: one
    button that posts back (with the CSRF token) to `action`."""
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
    return _page("Sign out?", "\n".join(parts))


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


def launcher_page(email: str, tiles: Sequence[Tile], logout: str, look: Look = PLAIN) -> bytes:
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
    return _page(title, "\n".join(parts), look, "launcher")
