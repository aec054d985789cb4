"""The built-in demo origin: what `edge serve` starts beside the edge when the
config has a [demo] table (the default config does), so a newcomer sees the
whole product on loopback in a minute.

Two small servers, in one child process of `edge serve`:

- the upstream of the demo applications (`demo.listen`): a page at ``/`` that
  greets the signed-in user by the identity headers the edge added, and a
  JSON API at ``/api/*`` that echoes them (with the CORS headers of a real
  API for the demo's web origin: the edge answers preflights, the upstream
  still decides what an actual response shares);
- a second origin (`demo.web_listen`): one page whose script calls that API
  with ``fetch()`` and credentials, cross-origin, so the browser sends a
  preflight and the edge answers it.

Not a production server: no keep-alive, one request per connection, bounded
head size, loopback only by default. It exits when its parent does.
"""

from __future__ import annotations

import asyncio
import json
import os
from html import escape
from typing import Any

import h11

from edge.config.schema import Config

IDENTITY = ("cf-access-authenticated-user-email", "cf-access-jwt-assertion")
MAX_HEAD = 16 * 1024
READ_TIMEOUT = 10.0  # seconds a client has to send its request


def urls(config: Config) -> dict[str, str]:
    """The addresses a newcomer opens (browsers resolve *.localhost to loopback)."""
    port = config.server.addresses[0].port
    scheme = "https" if config.server.tls is not None else "http"
    suffix = "" if port == (443 if scheme == "https" else 80) else f":{port}"
    app = next((a for a in config.apps if a.cors is not None and not a.domains[0].count("/")), None)
    host = app.domains[0] if app is not None else "app.localhost"
    web = config.demo.web_address if config.demo is not None else None
    return {
        "app": f"{scheme}://{host}{suffix}",
        "web": f"http://{host}:{web.port}" if web is not None else "",
        "api": f"{scheme}://{host}{suffix}/api/me",
    }


def banner(config: Config) -> str:
    assert config.demo is not None
    u = urls(config)
    lines = [
        "",
        "edge demo: everything below runs on this machine (loopback)",
        f"  1. open {u['app']}",
        "     you are sent to the login page on the team host",
        f"  2. sign in as {config.demo.hint}",
        "     you land back on the app, which shows the email the edge vouched for",
        f"  3. open {u['web']}",
        "     a page on another origin calls the API with fetch(); the edge answers its preflight",
        f"  sign out: {u['app']}/cdn-cgi/access/logout",
        "",
    ]
    return "\n".join(lines)


# -- the servers ----------------------------------------------------------------


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Any) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        request = await asyncio.wait_for(_read_request(conn, reader), READ_TIMEOUT)
        status, headers, body = handle(request)
    except (h11.RemoteProtocolError, TimeoutError, ConnectionError):
        status, headers, body = 400, [("content-type", "text/plain")], b"bad request\n"
    headers = [*headers, ("content-length", str(len(body))), ("connection", "close")]
    try:
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
    except (h11.LocalProtocolError, ConnectionError):
        pass
    finally:
        writer.close()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data:
                raise ConnectionError("closed before a request")
        else:
            raise h11.RemoteProtocolError("unexpected", 400)


def _headers(request: h11.Request) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}


def origin_handler(web_origin: str) -> Any:
    """The demo applications' upstream."""

    def handle(request: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = _headers(request)
        path = request.target.decode("latin-1")
        if path.startswith("/api/"):
            doc = {
                "email": headers.get("cf-access-authenticated-user-email"),
                "method": request.method.decode(),
                "path": path,
                "identity_headers": {k: _short(headers[k]) for k in IDENTITY if k in headers},
            }
            fields = [("content-type", "application/json")]
            if headers.get("origin") == web_origin:
                fields += [
                    ("access-control-allow-origin", web_origin),
                    ("access-control-allow-credentials", "true"),
                ]
            return 200, fields, json.dumps(doc, indent=2).encode() + b"\n"
        email = headers.get("cf-access-authenticated-user-email", "")
        return 200, [("content-type", "text/html; charset=utf-8")], _app_page(email, headers, web_origin)

    return handle


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:20] + "…" + value[-12:]


def _app_page(email: str, headers: dict[str, str], web_origin: str) -> bytes:
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td><code>{escape(_short(headers[k]))}</code></td></tr>"
        for k in IDENTITY
        if k in headers
    )
    return f"""<!doctype html>
<html lang="en"><meta charset="utf-8"><title>edge demo app</title>
<main style="font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto">
<h1>Hello, <span id="email">{escape(email or "(no identity)")}</span></h1>
<p>This page comes from the demo origin behind the edge. The edge checked your
token and added these headers; the origin trusts them because only the edge can reach it.</p>
<table>{rows}</table>
<p><a href="/cdn-cgi/access/get-identity">Your identity as JSON</a> ·
<a href="{escape(web_origin)}/">A page on another origin calling this API</a> ·
<a id="logout" href="/cdn-cgi/access/logout">Sign out</a></p>
</main>
""".encode()


def web_handler(api_url: str) -> Any:
    """The second origin: a page that calls the API cross-origin."""
    page = f"""<!doctype html>
<html lang="en"><meta charset="utf-8"><title>edge demo: another origin</title>
<main style="font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto">
<h1>Calling the API from another origin</h1>
<p>This page's origin differs from the API's, so <code>fetch()</code> with a JSON body
needs a CORS preflight. The edge answers it from the application's CORS settings;
the API itself never sees it.</p>
<button id="call" type="button">POST {escape(api_url)}</button>
<pre id="out" aria-live="polite"></pre>
<script>
async function callApi() {{
  const out = document.getElementById("out");
  try {{
    const r = await fetch({json.dumps(api_url)}, {{
      method: "POST", credentials: "include",
      headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{hello: "edge"}})
    }});
    out.textContent = r.status + "\\n" + await r.text();
    return {{status: r.status, body: out.textContent}};
  }} catch (e) {{
    out.textContent = "blocked: " + e.message + " (signed in? open the app first)";
    return {{status: 0, body: out.textContent}};
  }}
}}
document.getElementById("call").addEventListener("click", callApi);
</script>
</main>
""".encode()

    def handle(request: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        return 200, [("content-type", "text/html; charset=utf-8")], page

    return handle


async def serve(config: Config) -> None:
    assert config.demo is not None
    u = urls(config)
    up = config.demo.address
    web = config.demo.web_address
    origin = origin_handler(u["web"])
    page = web_handler(u["api"])
    a = await asyncio.start_server(lambda r, w: _exchange(r, w, origin), up.host, up.port)
    b = await asyncio.start_server(lambda r, w: _exchange(r, w, page), web.host, web.port)
    parent = os.getppid()
    async with a, b:
        while os.getppid() == parent:  # the edge is gone: so are we
            await asyncio.sleep(1.0)


def run(config: Config) -> None:
    asyncio.run(serve(config))
