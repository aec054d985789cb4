"""A small HTTP/1.1 client for the edge's own needs (JWKS, OpenID Connect).

Off the request path: used by background tasks and the login service only.

Invariants:
- One request per connection (``Connection: close``); no redirects are
  followed, no cookies kept, no proxies consulted.
- Every exchange is bounded: `timeout` covers connecting, the TLS handshake,
  sending and reading the whole response; `limit` bounds the body, and h11
  bounds the response head (16 KiB).
- https verifies the peer (certificate chain and host name) unless the caller
  passes a context that does not; see `client_ssl_context`.
- Any failure is a FetchError whose message names the method and URL and is
  fit for the log (it never contains the request body, where secrets live).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import h11

from edge.config.schema import KIB, MIB

FETCH_TIMEOUT = 5.0  # seconds for the whole exchange
# bytes; a JWKS is a few KiB, a rotated set a few more (the limit of every
# JWKS fetch: edge.login.oidc uses it too)
FETCH_LIMIT = MIB
READ_SIZE = 64 * KIB  # bytes per read from the socket

# Request fields as the login service passes them: str pairs, not the
# proxy's (bytes, bytes) Headers.
TextFields = Sequence[tuple[str, str]]


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in received order
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)


def client_ssl_context(verify: bool = True, ca_file: str = "") -> ssl.SSLContext:
    """A client TLS context: the system's trust store, or only `ca_file` when
    given. `verify=False` turns off certificate and host-name checks (a
    private test provider only; the caller should warn about it)."""
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"CA file {ca_file}: {exc}") from None


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # Loading the system trust store costs milliseconds; do it once.
    return ssl.create_default_context()


async def fetch(url: str, timeout: float = FETCH_TIMEOUT, limit: int = FETCH_LIMIT) -> bytes:
    """GET `url` and return the body of a 200 response (anything else fails)."""
    response = await request(
        "GET", url, headers=[("accept", "application/json")], timeout=timeout, limit=limit
    )
    if response.status != 200:
        raise FetchError(f"GET {url}: status {response.status}")
    return response.body


async def request(
    method: str,
    url: str,
    *,
    headers: TextFields = (),
    body: bytes = b"",
    timeout: float = FETCH_TIMEOUT,
    limit: int = FETCH_LIMIT,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """One HTTP request; any status is returned, only transport failures raise.

    `ssl_context` is used for https URLs (default: the system trust store).
    """
    try:
        return await asyncio.wait_for(_exchange(method, url, headers, body, limit, ssl_context), timeout)
    except TimeoutError:
        raise FetchError(f"{method} {url}: timed out after {timeout:g} s") from None
    except (OSError, h11.ProtocolError, UnicodeError) as exc:
        raise FetchError(f"{method} {url}: {exc or type(exc).__name__}") from None


def _parse_url(method: str, url: str) -> tuple[SplitResult, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"{method} {url}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{method} {url}: not an http(s) URL")
    return parts, port or (443 if parts.scheme == "https" else 80)


async def _exchange(
    method: str, url: str, headers: TextFields, body: bytes, limit: int, ssl_context: ssl.SSLContext | None
) -> Response:
    parts, port = _parse_url(method, url)
    ctx = (ssl_context or _default_ssl_context()) if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
    try:
        conn = h11.Connection(h11.CLIENT)
        head = h11.Request(
            method=method, target=_target(parts), headers=_request_headers(parts, method, headers, body)
        )
        writer.write(conn.send(head) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        return await _read_response(conn, reader, f"{method} {url}", limit)
    finally:
        writer.close()


def _target(parts: SplitResult) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _request_headers(
    parts: SplitResult, method: str, extra: TextFields, body: bytes
) -> list[tuple[str, str]]:
    given = {name.lower() for name, _ in extra}
    headers = [("host", parts.netloc.rpartition("@")[2])] if "host" not in given else []
    headers.extend(extra)
    # Some servers answer a bodiless POST without a length with 411.
    if (body or method not in ("GET", "HEAD")) and "content-length" not in given:
        headers.append(("content-length", str(len(body))))
    headers.append(("connection", "close"))
    return headers


async def _read_response(
    conn: h11.Connection, reader: asyncio.StreamReader, what: str, limit: int
) -> Response:
    body = bytearray()
    head: h11.Response | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_SIZE))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise FetchError(f"{what}: body larger than {limit} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None  # h11 yields the head before any body event
            return Response(head.status_code, _decode_headers(head), bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchError(f"{what}: connection closed early")


def _decode_headers(head: h11.Response) -> tuple[tuple[str, str], ...]:
    # h11 lower-cases names; values are latin-1 on the wire (RFC 9110 5.5).
    return tuple((name.decode("ascii"), value.decode("latin-1")) for name, value in head.headers)
