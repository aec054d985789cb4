"""The edge's own endpoints (/cdn-cgi/access/<name>), named once.

decide() reads the segment after /cdn-cgi/access/ through the two tables
below and hands the login service an `EndpointKind`; the login service
dispatches on it. A name in neither table is a 404 before the login service
sees it: the tables are the whole surface (deny by default).
"""

from __future__ import annotations

import enum


class EndpointKind(enum.Enum):
    """One edge endpoint; the value is its path segment."""

    LOGIN = "login"  # the team's sign-in page (on an application host: a redirect to it)
    CALLBACK = "callback"  # an OpenID Connect provider's redirect back (team host)
    AUTHORIZED = "authorized"  # a one-time code exchanged for the application's cookie
    LOGOUT = "logout"
    GET_IDENTITY = "get-identity"
    CERTS = "certs"  # the built-in issuer's keys and certificates
    LAUNCHER = "launcher"  # the team host's "/": the applications a signed-in user may open


# Where they are served, and each one's path: built here, never spelled out.
ENDPOINT_PATH = "/cdn-cgi/access"
# ENDPOINT_PATH's two segments, as decide() matches a request's path segments.
CDN_CGI_SEGMENT, ACCESS_SEGMENT = ENDPOINT_PATH.encode().lstrip(b"/").split(b"/")
LOGIN_PATH = f"{ENDPOINT_PATH}/{EndpointKind.LOGIN.value}"
GET_IDENTITY_PATH = f"{ENDPOINT_PATH}/{EndpointKind.GET_IDENTITY.value}"
CALLBACK_PATH = f"{ENDPOINT_PATH}/{EndpointKind.CALLBACK.value}"
AUTHORIZED_PATH = f"{ENDPOINT_PATH}/{EndpointKind.AUTHORIZED.value}"
LOGOUT_PATH = f"{ENDPOINT_PATH}/{EndpointKind.LOGOUT.value}"
# Where an unauthenticated navigation is sent when [login] url is unset.
# Relative: the login service on the protected host itself (BEHAVIOUR.md
# section 6), like Cloudflare's /cdn-cgi/access/login/<host>. Its placeholders
# are config.schema.LOGIN_PLACEHOLDERS. (Here, not in config: config is the
# layer below access and cannot read LOGIN_PATH.)
DEFAULT_LOGIN_URL = f"{LOGIN_PATH}/{{host}}?kid={{aud}}&redirect_url={{redirect_url}}"

# What a protected host serves under /cdn-cgi/access/.
APP_ENDPOINTS: dict[str, EndpointKind] = {
    k.value: k
    for k in (
        EndpointKind.LOGIN,
        EndpointKind.AUTHORIZED,
        EndpointKind.LOGOUT,
        EndpointKind.GET_IDENTITY,
        EndpointKind.CERTS,
    )
}
# The team host serves the login service itself: its pages and the identity
# provider's callback.
TEAM_ENDPOINTS: dict[str, EndpointKind] = {
    k.value: k
    for k in (
        EndpointKind.LOGIN,
        EndpointKind.CALLBACK,
        EndpointKind.LOGOUT,
        EndpointKind.GET_IDENTITY,
        EndpointKind.CERTS,
        EndpointKind.LAUNCHER,
    )
}
