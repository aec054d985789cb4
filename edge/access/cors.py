"""CORS at the edge: preflight detection and an application's compiled policy.

Invariants:
- A `CorsPolicy` is built once per configuration. Every preflight answer that
  does not depend on the request (explicit method and header lists) is a
  `LocalResponse` prebuilt here, one per listed origin; only "allow all
  methods/headers", which echo the request, build a response per request.
- Methods are case-sensitive (RFC 9110 9.1) and Fetch matches the request's
  method against Access-Control-Allow-Methods byte for byte, after upper-casing
  only DELETE, GET, HEAD, OPTIONS, POST and PUT. Listed methods are compiled
  as `fetch_method` normalises them, so a listed `delete` reads DELETE (the
  only spelling a browser sends) and `patch` stays `patch`, not PATCH.
- Origins are compared byte for byte with what the browser sent (config
  validation guarantees the listed ones are in the serialised form browsers
  use). ``null`` is allowed when listed (never with credentials), or under
  "all origins" (no credentials), where every answer says ``*``.
- No response here ever carries ``Access-Control-Allow-Headers: *``: with
  credentials a literal ``*`` is not a wildcard, and even without them it
  never covers ``Authorization`` (Fetch standard, CORS protocol). Requested
  headers are echoed instead.
"""

from __future__ import annotations

import re

from edge.access.headers import Header
from edge.access.responses import LocalResponse, Responses
from edge.config.schema import Cors
from edge.config.syntax import TOKEN

# Exactly the Vary of BEHAVIOUR.md section 4: a preflight answer depends on
# all three request headers.
PREFLIGHT_VARY: Header = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
VARY_ORIGIN: Header = (b"vary", b"Origin")
ACAO = b"access-control-allow-origin"
ACAC: Header = (b"access-control-allow-credentials", b"true")
ACAPN: Header = (b"access-control-allow-private-network", b"true")
# 401 bodies carry the login URL, WWW-Authenticate says how to authenticate:
# both must be readable by the page that got them.
ALWAYS_EXPOSED = b"WWW-Authenticate"

# A method (RFC 9110 token) and a comma-separated list of header names, as a
# browser sends them; anything else is not echoed back.
_TOKEN = TOKEN.encode("ascii")
_TOKEN_RE = re.compile(_TOKEN)
_TOKEN_LIST_RE = re.compile(_TOKEN + rb"(?:[ \t]*,[ \t]*" + _TOKEN + rb")*")


# Fetch's "normalize a method": these are upper-cased whatever case a page
# writes; every other method is sent as written.
FETCH_NORMALIZED = frozenset({b"DELETE", b"GET", b"HEAD", b"OPTIONS", b"POST", b"PUT"})


def fetch_method(method: bytes) -> bytes:
    """A method as fetch() sends it (Fetch standard, "normalize a method")."""
    upper = method.upper()
    return upper if upper in FETCH_NORMALIZED else method


def is_preflight(method: bytes, origin: bytes | None, request_method: bytes | None) -> bool:
    """A CORS preflight per the Fetch standard: OPTIONS with Origin and
    Access-Control-Request-Method. Any other OPTIONS is an ordinary request."""
    return method == b"OPTIONS" and origin is not None and request_method is not None


class CorsPolicy:
    """One application's CORS settings, compiled."""

    __slots__ = (
        "all_origins",
        "origins",
        "credentials",
        "methods",
        "headers",
        "max_age",
        "private_network",
        "expose",
        "server",
        "_ok",
        "_ok_pna",
        "refused",
    )

    def __init__(self, cors: Cors, responses: Responses, refused: LocalResponse | None = None) -> None:
        self.all_origins = cors.allow_all_origins
        self.origins = frozenset(o.encode("ascii") for o in cors.allowed_origins)
        self.credentials = cors.allow_credentials
        # None: echo the request's value (allow all).
        self.methods = None if cors.allow_all_methods else _method_list(cors.allowed_methods)
        self.headers = None if cors.allow_all_headers else ", ".join(cors.allowed_headers).encode("ascii")
        self.max_age = None if cors.max_age is None else str(cors.max_age).encode("ascii")
        self.private_network = cors.allow_private_network
        self.expose = b", ".join([ALWAYS_EXPOSED, *(h.encode("ascii") for h in cors.expose_headers)])
        self.server = responses.server
        # The same for every application: pass one in to share it.
        self.refused = refused or refused_preflight(responses)
        # Keyed by origin (b"*" stands for every origin when all are allowed).
        self._ok: dict[bytes, LocalResponse] = {}
        self._ok_pna: dict[bytes, LocalResponse] = {}
        if self.methods is not None and self.headers is not None:
            keys = [b"*"] if self.all_origins else []
            for key in [*keys, *self.origins]:
                self._ok[key] = self._build(key, self.methods, self.headers, False)
                if self.private_network:
                    self._ok_pna[key] = self._build(key, self.methods, self.headers, True)

    def allows(self, origin: bytes) -> bool:
        if origin in self.origins:
            return True
        # All origins means credentials are off (config validation), so the
        # answer is "*", which Fetch accepts for an opaque "null" origin as
        # for any other. b"" stands for repeated Origin headers.
        return self.all_origins and origin != b""

    def allow_origin_value(self, origin: bytes) -> bytes:
        """ACAO for an allowed origin: ``*`` when every origin is allowed
        (credentials are then off: config validation), else the origin."""
        return b"*" if self.all_origins else origin

    def preflight(
        self, origin: bytes, method: bytes, headers: bytes | None, private_network: bool
    ) -> tuple[LocalResponse, str]:
        """The edge's answer to a preflight, and the reason for the log."""
        if not self.allows(origin):
            return self.refused, "preflight: origin not allowed"
        pna = private_network and self.private_network
        prebuilt = (self._ok_pna if pna else self._ok).get(self.allow_origin_value(origin))
        if prebuilt is not None:
            return prebuilt, "preflight: allowed"
        allow_methods = self.methods if self.methods is not None else _echo(method, _TOKEN_RE)
        allow_headers = self.headers if self.headers is not None else _echo(headers, _TOKEN_LIST_RE)
        response = self._build(self.allow_origin_value(origin), allow_methods, allow_headers, pna)
        return response, "preflight: allowed"

    def unlisted(self, method: bytes, headers: bytes | None) -> list[str]:
        """What a preflight from an allowed origin asks for that the answer
        does not list: the browser then refuses the call (Fetch's CORS
        check), though the edge answered 200. For explanations (`edge
        explain`, the demo), never on the request path. GET, HEAD and POST
        need no listing (CORS-safelisted methods); every header a browser
        names in Access-Control-Request-Headers does, in any case."""
        notes: list[str] = []
        safelisted = method in (b"GET", b"HEAD", b"POST")
        if self.methods is not None and not safelisted and method not in self.methods.split(b", "):
            notes.append(f"method {method.decode('latin-1')} is not in allowed_methods")
        if self.headers is not None and headers:
            listed = {h.strip().lower() for h in self.headers.split(b",")}
            for name in headers.split(b","):
                name = name.strip()
                if name and name.lower() not in listed:
                    notes.append(f"header {name.decode('latin-1')} is not in allowed_headers")
        return notes

    def _build(self, acao: bytes, methods: bytes | None, headers: bytes | None, pna: bool) -> LocalResponse:
        fields: list[Header] = [(ACAO, acao)]
        if self.credentials:
            fields.append(ACAC)
        if methods:
            fields.append((b"access-control-allow-methods", methods))
        if headers:
            fields.append((b"access-control-allow-headers", headers))
        if self.max_age is not None:
            fields.append((b"access-control-max-age", self.max_age))
        if pna:
            fields.append(ACAPN)
        fields.append(PREFLIGHT_VARY)
        return LocalResponse(200, fields, b"", self.server)

    def courtesy(self, origin: bytes | None) -> list[Header]:
        """Headers that let an allowed page read an edge's 401/403 instead of
        seeing an opaque CORS failure; Vary: Origin either way."""
        if origin is None or not self.allows(origin):
            return [VARY_ORIGIN]
        fields: list[Header] = [(ACAO, self.allow_origin_value(origin))]
        if self.credentials:
            fields.append(ACAC)
        fields.append((b"access-control-expose-headers", self.expose))
        fields.append(VARY_ORIGIN)
        return fields

    def summary(self) -> str:
        """One line for `edge check`."""
        origins = "all origins" if self.all_origins else f"{len(self.origins)} origin(s)"
        methods = "any method" if self.methods is None else self.methods.decode()
        headers = "any header" if self.headers is None else (self.headers.decode() or "no extra headers")
        parts = [origins, methods, headers]
        if self.credentials:
            parts.append("credentials")
        if self.max_age is not None:
            parts.append(f"max-age {self.max_age.decode()}")
        if self.private_network:
            parts.append("private network")
        return "; ".join(parts)


def refused_preflight(responses: Responses) -> LocalResponse:
    """403 for a preflight from an origin that is not allowed."""
    return responses.text(403, b"forbidden: origin not allowed by CORS\n", [PREFLIGHT_VARY])


def _method_list(methods: list[str]) -> bytes:
    """Access-Control-Allow-Methods for a list, each method as a browser
    sends it (a listed `delete` would otherwise never match DELETE); the
    first of spellings that normalise alike is kept."""
    sent = dict.fromkeys(fetch_method(m.encode("ascii")) for m in methods)
    return b", ".join(sent)


def _echo(value: bytes | None, shape: re.Pattern[bytes]) -> bytes | None:
    """A request value to reflect, only if it has the shape browsers send."""
    if value is None:
        return None
    value = value.strip()
    return value if shape.fullmatch(value) else None
