"""A small HTTP/1.1 GET client for the edge's own needs (JWKS documents).

Off the request path: used by background tasks only. Bounded in time and
size; any failure is a FetchError with a message fit for the log.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import h11

FETCH_TIMEOUT = 5.0  # seconds for the whole exchange
FETCH_LIMIT = 1024 * 1024  # bytes; a JWKS is a few KiB


class FetchError(Exception):
    pass


async def fetch(url: str, timeout: float = FETCH_TIMEOUT, limit: int = FETCH_LIMIT) -> bytes:
    try:
        return await asyncio.wait_for(_get(url, limit), timeout)
    except TimeoutError:
        raise FetchError(f"GET {url}: timed out after {timeout:g} s") from None
    except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
        raise FetchError(f"GET {url}: {exc}") from None


async def _get(url: str, limit: int) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"GET {url}: not an http(s) URL")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    ctx = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
    try:
        conn = h11.Connection(h11.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("host", host), ("accept", "application/json"), ("connection", "close")],
        )
        writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
        return await _read_body(conn, reader, url, limit)
    finally:
        writer.close()


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader, url: str, limit: int) -> bytes:
    body = bytearray()
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise FetchError(f"GET {url}: body larger than {limit} bytes")
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchError(f"GET {url}: connection closed early")
    if status != 200:
        raise FetchError(f"GET {url}: status {status}")
    return bytes(body)
