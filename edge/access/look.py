"""The frame of every HTML page the edge shows a person: the team's branding
(`Look`), the built-in page or the team's template around a page's content,
and the Content-Security-Policy such a page is sent with.

One owner for the login service's pages (edge.login.pages) and the edge's
own deny page (compile.DenyPage), so both look the same. Pure string
building: no I/O, no clock.

Every value that comes from a config is escaped here; the content handed in
is markup its builder has escaped. In a template, every placeholder's value
is escaped except {{content}}. Pages load nothing from anywhere (no script,
no style sheet) but the logos a config names, so the CSP can forbid
everything but the inline style and icon, images from those logos' origins
(`csp`) and form posts to the page's own origin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from urllib.parse import urlsplit

from edge.config.checks_team import PLACEHOLDER_RE as _PLACEHOLDER
from edge.config.schema import TEMPLATE_CONTENT, Branding

# One img-src directive (a second one would be ignored): the inline icon's
# data: URL, then the configured logos' origins (`csp`).
_IMG_SRC = b"img-src data:"
_CSP_REST = (
    b"; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"
)
CSP = b"default-src 'none'; " + _IMG_SRC + _CSP_REST


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


def footer(request_id: str) -> str:
    """The line naming the access log line a user's screenshot shows."""
    return f'\n<footer class="note">Request id: {escape(request_id)}</footer>'


def page(title: str, body: str, look: Look = PLAIN, kind: str = "", request_id: str = "") -> str:
    """A whole page: the team's template for `kind` if it has one, else the
    built-in one, with the team's name, logo and accent. `body` is markup
    (escaped by its builder); the request id, when given, ends it."""
    if request_id:
        body += footer(request_id)
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
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
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
    )
