"""The login service's pages: plain, small, accessible HTML.

Every value that comes from a request or a config is escaped here, once.
Pages load nothing from anywhere (no script, no style sheet, no image), so
the Content-Security-Policy sent with them can forbid everything but the
inline style below and form posts to the page's own origin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

CSP = (
    b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; "
    b"frame-ancestors 'none'; base-uri 'none'"
)

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "h1{font-size:1.4rem}label{display:block;margin:.6rem 0 .2rem}"
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


def _page(title: str, body: str, request_id: str = "") -> bytes:
    # The request id names the access log line a user's screenshot shows.
    footer = f'<footer class="note">Request id: {escape(request_id)}</footer>\n' if request_id else ""
    return (
        '<!doctype html>\n<html lang="en">\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n"
        f"<main>\n{body}\n</main>\n{footer}"
    ).encode()


def login_page(
    *,
    app_name: str | None,
    action: str,
    csrf: str,
    providers: Sequence[Choice],
    error: str = "",
    email: str = "",
) -> bytes:
    """The sign-in page: a form per provider, all posting back to `action`."""
    title = f"Sign in to {app_name}" if app_name else "Sign in"
    parts = [f"<h1>{escape(title)}</h1>"]
    if error:
        parts.append(f'<p class="error" role="alert">{escape(error)}</p>')
    for choice in providers:
        parts.append(_provider_form(choice, action, csrf, email))
    return _page(title, "\n".join(parts))


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
    title: str, message: str, *, link: tuple[str, str] | None = None, request_id: str = ""
) -> bytes:
    """A page that says one thing (signed out, denied, link expired...)."""
    body = f'<h1>{escape(title)}</h1>\n<p role="status">{escape(message)}</p>'
    if link is not None:
        body += f'\n<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>'
    return _page(title, body, request_id)


def denied_page(email: str, app_name: str, logout: str, request_id: str = "") -> bytes:
    return message_page(
        "Access denied",
        f"That account ({email}) does not have access to {app_name}.",
        link=(logout, "Sign in with another account"),
        request_id=request_id,
    )
