"""An edge as a reverse proxy, for the proxy tests that run `edge serve`: the
config of an open application forwarding to an upstream (with [proxy]
settings), raw requests to send it, and a port nothing listens on (an
upstream that refuses connections)."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from conftest import open_app_toml


def proxy_toml(upstream: str, **settings: float | str) -> str:
    lines = ["[proxy]"]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n" + open_app_toml(upstream)


def build(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    host: str = "app.test",
    version: str = "1.1",
) -> bytes:
    """A raw request; `host=""` sends none."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port
