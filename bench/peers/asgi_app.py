"""A minimal ASGI app answering every request like edge's health endpoint.

Run under uvicorn in h11 mode (bench/load.py does this):
    uvicorn --app-dir bench/peers asgi_app:app --http h11 --loop uvloop \
        --no-access-log --workers 1 --port 8082
uvicorn adds its own ``date`` and ``server: uvicorn`` headers, so the response
is three bytes longer than edge's; nothing else differs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b"ok\n"
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(BODY)).encode("ascii")),
    ],
}
BODY_MESSAGE: Message = {"type": "http.response.body", "body": BODY}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send(START)
    await send(BODY_MESSAGE)
