"""What a decision returns: a few frozen types (edge.access.decide makes them).

Local ones carry a ready `LocalResponse` (built at compile time, or cached);
`Forward` carries what the proxy must add and strip. All carry `app` and a
`reason` for the access log. They name no compiled object, so the compiled
configuration can cache them (edge.access.compile) without importing decide.
"""

from __future__ import annotations

import msgspec

from edge.access.claims import Identity
from edge.access.endpoints import EndpointKind
from edge.access.headers import STRIP_HEADERS, Header
from edge.access.responses import LocalResponse

# -- actions -------------------------------------------------------------------


class LocalAction(msgspec.Struct, frozen=True, gc=False):
    """An action answered at the edge: a ready response, plus the application
    (if any) and the reason for the access log."""

    response: LocalResponse
    app: str | None
    reason: str


class Preflight(LocalAction, frozen=True, gc=False):
    """A CORS preflight answered at the edge (200 or 403)."""


class Redirect(LocalAction, frozen=True, gc=False):
    """302 to the login page."""

    location: str = ""
    binding: str = ""  # the login binding this response set ("" for none): the caller's to renew


class Unauthorized(LocalAction, frozen=True, gc=False):
    """401 with a JSON body naming the login URL."""

    binding: str = ""  # as for Redirect


class Deny(LocalAction, frozen=True, gc=False):
    """403: denied by policy (or by default)."""


class NotFound(LocalAction, frozen=True, gc=False):
    """404: no application covers the request."""


class Reject(LocalAction, frozen=True, gc=False):
    """400: a request the edge will not interpret (ambiguous path or token)."""


class Endpoint(LocalAction, frozen=True, gc=False):
    """An edge endpoint (/cdn-cgi/access/<name>[/<rest>]), answered by the
    login service; `response` is what to send when there is none."""

    kind: EndpointKind
    team: bool = False  # on the team host (else on a protected host)
    aud: str | None = None  # the audience tag of the application covering the path, if any
    rest: str = ""  # what follows the name: the app host of /login/<host>


class Forward(msgspec.Struct, frozen=True, gc=False):
    """Pass the request to `upstream`, rewriting headers as told."""

    app: str
    upstream: str
    reason: str
    add_headers: tuple[Header, ...] = ()
    strip_headers: frozenset[bytes] = STRIP_HEADERS
    strip_auth_cookie: bool = True
    rewrite_host: bool = False
    vary_origin: bool = False  # merge Origin into the response's Vary
    exp: float | None = None  # the authorising token's exp: a tunnel closes then
    identity: Identity | None = None
    service_token: str | None = None
    bypass: bool = False  # a bypass policy let it through: counted as "bypass", not "forward"


Local = Preflight | Redirect | Unauthorized | Deny | NotFound | Reject | Endpoint
Action = Local | Forward
