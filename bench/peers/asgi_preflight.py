"""The same preflight logic as edge's benchmark app, as an ASGI app (for
uvicorn, with h11 or with httptools): detect a preflight, check the origin
against a set, answer 200 with the configured Access-Control-* lists or 403;
the headers are built per request, as a typical middleware does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ALLOWED_ORIGINS = frozenset({b"http://app.localhost:8080"})
METHODS = b"GET, POST, PUT, DELETE"
HEADERS = b"Authorization, Content-Type"
VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    origin = headers.get(b"origin")
    preflight = (
        scope["method"] == "OPTIONS" and origin is not None and b"access-control-request-method" in headers
    )
    if not preflight:
        response = [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 404, "headers": response})
    elif origin in ALLOWED_ORIGINS:
        response = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", METHODS),
            (b"access-control-allow-headers", HEADERS),
            (b"access-control-max-age", b"600"),
            (b"vary", VARY),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": response})
    else:
        response = [(b"vary", VARY), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 403, "headers": response})
    await send({"type": "http.response.body", "body": b""})
