"""Pure pieces of the login service: sealed values, cookies, claims, checks.

Invariants:
- Everything the browser carries between steps of a login (the OIDC flow
  cookie, the one-time handoff code) is sealed with AES-GCM under a key
  derived from the key directory's secret, with a purpose label as
  associated data, so a value sealed for one purpose never opens as another
  and nothing in it can be read or altered by the browser.
- Sealed values carry their own expiry; `open_sealed` refuses expired ones.
  Single use (handoff codes) is the store's job, keyed by the value's `jti`.
- A redirect after login only ever goes to the host the login was for
  (`same_host_url`): never an open redirect.
- A request counts as cross-site (`cross_site`) unless the browser says it
  is not; what cannot be read as our own site counts as another.
- No I/O and no clock: callers pass `now`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.access.endpoints import AUTHORIZED_PATH
from edge.access.headers import Header
from edge.access.router import normalize_host

FLOW_COOKIE = "edge_flow"  # the OIDC flow in progress (team host)
CSRF_COOKIE = "edge_csrf"  # double-submit base for the login forms (team host)
# Set on the application's host when a login starts; the one-time code names
# its value, so a code only works in the browser that started that login (a
# code sent to someone else cannot sign them in as its owner).
BINDING_COOKIE = "edge_login"
BINDING_PATH = AUTHORIZED_PATH  # the cookie is sent there only
BINDING_TTL = 900  # seconds a user has to finish a login
BINDING_BYTES = 18  # random bytes: 144 bits, 24 URL-safe characters
_BINDING_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
HANDOFF_TTL = 60.0  # seconds a one-time code is good for ("about a minute")
FLOW_TTL = 600.0  # seconds a user has at the identity provider
NONCE_BYTES = 12  # AES-GCM nonce
MAX_SEALED_BYTES = 4096


class SealError(ValueError):
    """A sealed value that is malformed, forged, for another purpose or expired."""


class Sealer:
    """Seals small JSON objects for one edge team (same secret = same key)."""

    __slots__ = ("_aead", "_mac_key")

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(hashlib.sha256(b"edge seal v1\x00" + secret).digest())
        self._mac_key = hashlib.sha256(b"edge csrf v1\x00" + secret).digest()

    def seal(self, purpose: str, payload: Mapping[str, Any], exp: float) -> str:
        nonce = os.urandom(NONCE_BYTES)
        data = msgspec.json.encode({**payload, "exp": exp})
        box = self._aead.encrypt(nonce, data, purpose.encode())
        return base64.urlsafe_b64encode(nonce + box).rstrip(b"=").decode()

    def open(self, purpose: str, text: str, now: float) -> dict[str, Any]:
        if not text or len(text) > MAX_SEALED_BYTES:
            raise SealError("missing or oversized")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], purpose.encode())
            payload = msgspec.json.decode(data)
        except (ValueError, InvalidTag, msgspec.DecodeError):
            raise SealError("not sealed by this edge (or for another purpose)") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), (int, float)):
            raise SealError("malformed")
        if payload["exp"] <= now:
            raise SealError("expired")
        return payload

    def csrf_token(self, cookie: str) -> str:
        """The form field that goes with a CSRF cookie value: a MAC of it, so
        a cookie planted by a sibling subdomain is useless without our key."""
        mac = hmac.new(self._mac_key, cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def csrf_ok(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field:
            return False
        return hmac.compare_digest(self.csrf_token(cookie), field)


def random_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


def new_binding_value() -> str:
    """A fresh login binding value (random: drawn by the runtime, never by decide)."""
    return random_token(BINDING_BYTES)


def binding_cookie(value: str) -> Header:
    """The cookie that binds a login to the browser that starts it."""
    return set_cookie(BINDING_COOKIE, value, max_age=BINDING_TTL, path=BINDING_PATH)


def valid_binding(value: str | None) -> str:
    return value if value is not None and _BINDING_RE.match(value) else ""


# -- cookies ----------------------------------------------------------------------


def set_cookie(
    name: str,
    value: str,
    *,
    max_age: int,
    path: str = "/",
    http_only: bool = True,
    secure: bool = True,
    same_site: str = "lax",
) -> Header:
    """A Set-Cookie field. Host-only (no Domain): a cookie for one host is
    never offered to its siblings. max_age 0 clears the cookie."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}"]
    if http_only:
        parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    parts.append(f"SameSite={same_site.capitalize()}")
    return (b"set-cookie", "; ".join(parts).encode("ascii"))


def clear_cookie(name: str, path: str = "/", same_site: str = "lax") -> Header:
    return set_cookie(name, "", max_age=0, path=path, same_site=same_site)


def cookie_value(cookie_headers: Sequence[bytes], name: str) -> str | None:
    """The first cookie called `name` (our own cookies: the edge set them)."""
    wanted = name.encode() + b"="
    for header in cookie_headers:
        for part in header.split(b";"):
            part = part.strip()
            if part.startswith(wanted):
                try:
                    return part[len(wanted) :].decode("ascii")
                except UnicodeDecodeError:
                    return None
    return None


# -- where a login may return to ------------------------------------------------------


def same_host_url(url: str, host: str) -> str | None:
    """`url` if it is an absolute http(s) URL on `host` (any port), else None."""
    if not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.username is not None or parts.password is not None:
        return None
    if (parts.hostname or "").rstrip(".") != host or not parts.path.startswith("/") or port == 0:
        return None
    return url


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- where a request comes from --------------------------------------------------------

# Sec-Fetch-Site values (Fetch Metadata) of requests a page on another site
# did not make: one of this site's own pages, or the user (a typed or
# bookmarked URL, a link opened from another application). Any other value,
# a new one included, is treated as cross-site.
OWN_SITE = frozenset({b"same-origin", b"same-site", b"none"})


def cross_site(
    host: str, fetch_site: Sequence[bytes], origin: Sequence[bytes], referer: Sequence[bytes]
) -> bool:
    """Whether a request to `host` (normalised) came from another site.

    Sec-Fetch-Site decides when the browser sends it (every current one does;
    a page cannot forge it). From an older browser, the Origin, else the
    Referer, must name `host` itself (any scheme or port): without a public
    suffix list a sibling host cannot be told from another site, so it counts
    as one. With none of the three, the user opened the URL directly.
    """
    if fetch_site:
        return len(fetch_site) != 1 or fetch_site[0].strip().lower() not in OWN_SITE
    for values in (origin, referer):
        if values:
            return len(values) != 1 or _url_host(values[0]) != host
    return False


def _url_host(url: bytes) -> str | None:
    """The normalised host of an absolute http(s) URL (or origin), else None."""
    try:
        parts = urlsplit(url.strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return normalize_host(parts.netloc.rpartition("@")[2].encode()).decode()


# -- claims -----------------------------------------------------------------------------


def token_claims(
    *,
    iss: str,
    aud: str,
    kind: str,
    person: Person,
    now: float,
    lifetime: float,
) -> dict[str, Any]:
    """The claims of a token the edge issues (BEHAVIOUR.md section 3)."""
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": [aud],
        "type": kind,
        "sub": person.sub,
        "email": person.email,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + lifetime),
        "identity_nonce": person.nonce,
    }
    if person.groups:
        claims["groups"] = list(person.groups)
    # How the user signed in, for auth_method and login_method rules: the
    # provider's `amr` (RFC 8176) and its id, in an object as Cloudflare's
    # identity names it (`idp: {id, type}`).
    if person.amr:
        claims["amr"] = list(person.amr)
    if person.idp:
        claims["idp"] = {"id": person.idp}
    return claims


class Person(msgspec.Struct, frozen=True):
    """Who signed in, as the login steps carry it (sealed in a one-time code,
    login.sealed) and as the edge's tokens name them (token_claims); `nonce`
    names the session (logout revokes it, and with it every token of this
    sign-in)."""

    email: str
    groups: list[str]
    idp: str  # the provider's id ([[team.providers]] id)
    sub: str
    nonce: str
    # The provider's authentication methods (the tokens' `amr`); a default,
    # so a code sealed before this field existed still opens.
    amr: list[str] = msgspec.field(default_factory=list)


def new_person(email: str, groups: Sequence[str], idp: str, sub: str = "", amr: Sequence[str] = ()) -> Person:
    """A new sign-in: its subject (the provider's, or one per account and
    provider) and a fresh session nonce."""
    return Person(
        email=email,
        groups=list(groups),
        idp=idp,
        sub=sub or hashlib.sha256(f"{idp}\x00{email.lower()}".encode()).hexdigest()[:32],
        nonce=random_token(18),
        amr=list(amr),
    )
