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
  with ``fetch()`` and credentials on load, cross-origin, and shows for each
  call the preflight the browser sends, the edge's answer to it and what the
  browser then did. A page cannot read a preflight's answer (the browser
  keeps it), so the answer shown is the edge's own explanation of that exact
  request (`edge explain`: decide() on the compiled config, the code the edge
  runs), computed when the page is served; tests compare it with a real
  preflight sent to the edge.

Not a production server: no keep-alive, one request per connection, bounded
head size, loopback only by default; it logs nothing (the edge's access log
already has every request). It exits when its parent does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlsplit

import h11

from edge.access.actions import Forward
from edge.access.compile import Compiled, compile_config
from edge.access.decide import explain
from edge.access.endpoints import GET_IDENTITY_PATH, LOGOUT_PATH
from edge.access.headers import JWT_ASSERTION, USER_EMAIL
from edge.access.request import build
from edge.access.responses import HEALTH_PATH
from edge.config.schema import KIB, Config
from edge.login.pages import ICON

# The identity headers the edge adds, as the demo's str-keyed headers name them.
EMAIL_HEADER = USER_EMAIL.decode("latin-1")
IDENTITY = (EMAIL_HEADER, JWT_ASSERTION.decode("latin-1"))
MAX_HEAD = 16 * KIB
READ_SIZE = 64 * KIB
READ_TIMEOUT = 10.0  # seconds a client has to send its request
EDGE_WAIT = 15.0  # seconds the banner waits for the edge to answer before printing anyway
EDGE_POLL = 0.05  # seconds between two looks at the edge while it starts
# Request headers a page may set without a preflight (Fetch: CORS-safelisted
# request-header), and the Content-Type values that keep it safelisted.
SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language"})
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
SIMPLE_METHODS = frozenset({"GET", "HEAD", "POST"})

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:64rem;padding:0 1rem;color:#222}"
    "h1{font-size:1.7rem;margin:.2rem 0}h2{font-size:1.25rem;margin:0 0 .5rem}"
    "h3{font-size:1rem;margin:.3rem 0;color:#444}"
    "pre,code{font:13px/1.4 ui-monospace,monospace}"
    "pre{white-space:pre-wrap;overflow-wrap:break-word;background:#f5f5f5;padding:.5rem;margin:.2rem 0}"
    ".call{border:1px solid #ccc;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}"
    ".cols{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1.3fr) minmax(0,1fr);gap:1rem}"
    "@media(max-width:50rem){.cols{grid-template-columns:1fr}}"
    ".ok{color:#075}.refused,.error{color:#a00}.note{color:#555;font-size:.9rem}"
    "table{border-collapse:collapse}th,td{text-align:left;padding:.2rem .6rem .2rem 0;vertical-align:top}"
)


def _head(title: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{escape(title)}</title>\n<link rel="icon" href="{escape(ICON)}">\n'
        f"<style>{_STYLE}</style>\n"
    )


def urls(config: Config) -> dict[str, str]:
    """The addresses a newcomer opens (browsers resolve *.localhost to loopback)."""
    port = config.server.addresses[0].port
    scheme = "https" if config.server.tls is not None else "http"
    suffix = "" if port == (443 if scheme == "https" else 80) else f":{port}"
    app = next((a for a in config.apps if a.cors is not None and not a.domains[0].count("/")), None)
    host = app.domains[0] if app is not None else "app.localhost"
    web = config.demo.web_address if config.demo is not None else None
    team = config.team.hostname if config.team is not None else ""
    return {
        "team": f"{scheme}://{team}{suffix}",
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
        "     a page on another origin calls the API with fetch() on load: for each call, the",
        "     browser's preflight, the edge's answer, and what the browser did (two are refused)",
        f"  sign out: {u['app']}{LOGOUT_PATH}",
    ]
    if config.team is not None:
        lines.insert(-1, f"  your apps (the launcher): {u['team']}/")
    if config.metrics is not None:
        lines.append(f"  metrics: http://{config.metrics.listen}/metrics (Prometheus text format)")
    log = config.server.access_log
    if log not in ("stdout", "off"):
        lines.append(f"  access log: {log} (one JSON line per request: tail -f {log})")
    return "\n".join([*lines, ""])


# -- the cross-origin calls ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One fetch() the cross-origin page makes on load."""

    title: str
    method: str
    headers: tuple[tuple[str, str], ...]  # as the page passes them to fetch()
    body: str | None
    why: str  # what it teaches, one sentence


CALLS = (
    Call(
        "POST with a JSON body",
        "POST",
        (("Content-Type", "application/json"),),
        '{"hello": "edge"}',
        "Content-Type: application/json is not a simple header, so the browser asks the edge first.",
    ),
    Call(
        "DELETE",
        "DELETE",
        (),
        None,
        "DELETE is not a simple method; the app's CORS settings allow only GET and POST.",
    ),
    Call(
        "POST with an X-Debug header",
        "POST",
        (("Content-Type", "application/json"), ("X-Debug", "1")),
        '{"hello": "edge"}',
        "X-Debug is a custom header the app's CORS settings do not allow.",
    ),
)


def requested_headers(call: Call) -> str:
    """Access-Control-Request-Headers as a browser sends it (Fetch: the
    names that are not CORS-safelisted, lower-case, sorted, comma-joined)."""
    names = set()
    for name, value in call.headers:
        lower = name.lower()
        if lower in SAFELISTED_HEADERS:
            continue
        if lower == "content-type" and value.split(";")[0].strip().lower() in SIMPLE_CONTENT_TYPES:
            continue
        names.add(lower)
    return ",".join(sorted(names))


def preflight_headers(call: Call, web_origin: str) -> list[tuple[str, str]]:
    """The headers of the preflight the browser sends before `call` (those the edge reads)."""
    fields = [("Origin", web_origin), ("Access-Control-Request-Method", call.method)]
    wanted = requested_headers(call)
    if wanted:
        fields.append(("Access-Control-Request-Headers", wanted))
    return fields


def explain_preflight(
    compiled: Compiled, api_url: str, web_origin: str, call: Call, now: float
) -> dict[str, Any]:
    """The edge's answer to the preflight before `call`: decide() on the
    Request the connection would build for it, as `edge explain` does."""
    parts = urlsplit(api_url)
    host = parts.netloc.encode("idna")
    sent = preflight_headers(call, web_origin)
    fields = [(b"host", host), *((k.lower().encode(), v.encode()) for k, v in sent)]
    req = build(b"OPTIONS", host, (parts.path or "/").encode(), fields, "127.0.0.1", parts.scheme)
    action, trace = explain(compiled, req, now)
    if isinstance(action, Forward):
        status, answer = 0, []  # forwarded: the upstream answers (options_preflight_bypass)
    else:
        status = action.response.status
        answer = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in action.response.event.headers
            if k.startswith(b"access-control-") or k == b"vary"
        ]
    return {
        "title": call.title,
        "why": call.why,
        "method": call.method,
        "headers": [list(h) for h in call.headers],
        "body": call.body,
        "sent": [["OPTIONS", parts.path or "/"], ["Host", parts.netloc], *map(list, sent)],
        "status": status,
        "answer": [list(a) for a in answer],
        "decision": action.reason,
        "trace": trace,
        "verdict": browser_verdict(call, web_origin, status, answer),
        "command": _explain_command(api_url, sent),
    }


def browser_verdict(call: Call, web_origin: str, status: int, answer: list[tuple[str, str]]) -> str:
    """What the browser concludes from the preflight's answer (Fetch's CORS
    check, for a credentialed request): "" when it goes on, else why not."""
    got = {k.lower(): v for k, v in answer}
    if not 200 <= status < 300:
        return f"the preflight was answered {status or 'by the upstream'}, not 2xx"
    if got.get("access-control-allow-origin") != web_origin:
        return f"Access-Control-Allow-Origin is not {web_origin}"
    if got.get("access-control-allow-credentials") != "true":
        return "Access-Control-Allow-Credentials is not true (the call sends cookies)"
    methods = {m.strip() for m in got.get("access-control-allow-methods", "").split(",") if m.strip()}
    if call.method not in SIMPLE_METHODS and call.method not in methods:
        return (
            f"{call.method} is not in Access-Control-Allow-Methods ({', '.join(sorted(methods)) or 'none'})"
        )
    allowed = {h.strip().lower() for h in got.get("access-control-allow-headers", "").split(",") if h.strip()}
    missing = [h for h in requested_headers(call).split(",") if h and h not in allowed]
    if missing:
        listed = got.get("access-control-allow-headers", "none")
        return f"{', '.join(missing)} is not in Access-Control-Allow-Headers ({listed})"
    return ""


def _explain_command(api_url: str, sent: list[tuple[str, str]]) -> str:
    flags = " ".join(f"-H '{k}: {v}'" for k, v in sent)
    return f"bin/edge explain OPTIONS {api_url} {flags}"


# -- the servers ----------------------------------------------------------------


Reply = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body
Handler = Callable[[h11.Request], Reply]


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler) -> None:
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
            data = await reader.read(READ_SIZE)
            conn.receive_data(data)
            if not data:
                raise ConnectionError("closed before a request")
        else:
            raise h11.RemoteProtocolError("unexpected", 400)


def _headers(request: h11.Request) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}


def origin_handler(web_origin: str) -> Handler:
    """The demo applications' upstream."""

    def handle(request: h11.Request) -> Reply:
        headers = _headers(request)
        path = request.target.decode("latin-1")
        if path.startswith("/api/"):
            doc = {
                "email": headers.get(EMAIL_HEADER),
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
        email = headers.get(EMAIL_HEADER, "")
        return 200, [("content-type", "text/html; charset=utf-8")], _app_page(email, headers, web_origin)

    return handle


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:20] + "..." + value[-12:]


def _app_page(email: str, headers: dict[str, str], web_origin: str) -> bytes:
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td><code>{escape(_short(headers[k]))}</code></td></tr>"
        for k in IDENTITY
        if k in headers
    )
    return f"""{_head("edge demo app")}<main style="max-width:40rem;margin:0 auto">
<h1>Hello, <span id="email">{escape(email or "(no identity)")}</span></h1>
<p>This page comes from the demo origin behind the edge. The edge checked your
token and added these headers; the origin trusts them because only the edge can reach it.</p>
<table>{rows}</table>
<p><a href="{GET_IDENTITY_PATH}">Your identity as JSON</a> ·
<a href="{escape(web_origin)}/">A page on another origin calling this API</a> ·
<a id="logout" href="{LOGOUT_PATH}">Sign out</a></p>
</main>
""".encode()


# The page's script: runs every call on load, one after another (so the
# results read in order), and fills in each call's last column. Everything it
# shows from a response is set as text, never as HTML.
_SCRIPT = """
const API = document.body.dataset.api;
const calls = JSON.parse(document.getElementById("calls").textContent);
function show(box, cls, text) {
  const p = document.createElement("p");
  p.className = cls; p.textContent = text; box.appendChild(p); return p;
}
async function runCall(call, i) {
  const section = document.getElementById("call-" + i);
  const box = section.querySelector(".result");
  box.replaceChildren();
  const init = {method: call.method, credentials: "include", headers: Object.fromEntries(call.headers)};
  if (call.body !== null) init.body = call.body;
  let result;
  try {
    const r = await fetch(API, init);
    result = {outcome: r.ok ? "ok" : "status", status: r.status, body: await r.text()};
  } catch (e) {
    result = {outcome: "refused", status: 0, body: String(e)};
  }
  section.dataset.outcome = result.outcome;
  section.dataset.status = String(result.status);
  if (result.outcome === "refused") {
    show(box, "refused", "Refused by the browser: fetch() threw " + result.body +
      ". The request was never sent; the page cannot see why (the browser console says).");
  } else {
    show(box, result.outcome === "ok" ? "ok" : "error",
      call.method + " sent, answered " + result.status + (result.outcome === "ok" ? " (OK)" : ""));
    const pre = document.createElement("pre");
    pre.className = "body"; pre.textContent = result.body; box.appendChild(pre);
    if (result.status === 401) {
      let url = null;
      try { url = JSON.parse(result.body).login_url; } catch (e) {}
      const p = show(box, "note", "The edge answered 401 (no valid CF_Authorization cookie " +
        "for the API's host). Its JSON names where to sign in: ");
      if (typeof url === "string" && /^https?:\\/\\//.test(url)) {
        const a = document.createElement("a");
        a.href = url; a.textContent = "sign in"; a.className = "login"; p.appendChild(a);
        p.appendChild(document.createTextNode(", then reload this page."));
      }
    }
  }
  return result;
}
async function runAll() {
  const results = [];
  for (let i = 0; i < calls.length; i++) results.push(await runCall(calls[i], i));
  document.body.dataset.done = "true";
  return results;
}
window.demoRun = runAll();
"""


def web_page(compiled: Compiled, api_url: str, web_origin: str, now: float) -> bytes:
    """The cross-origin page, with the edge's answer to each call's preflight."""
    explained = [explain_preflight(compiled, api_url, web_origin, call, now) for call in CALLS]
    sections = "\n".join(_call_section(i, e) for i, e in enumerate(explained))
    data = json.dumps(explained).replace("<", "\\u003c")  # no "</script>" inside the script
    return f"""{_head("edge demo: calling an API from another origin")}<body data-api="{escape(api_url)}">
<main>
<h1>Calling an API from another origin</h1>
<p>This page, on <code>{escape(web_origin)}</code>, calls <code>{escape(api_url)}</code> with
<code>fetch()</code> and the user's cookies (<code>credentials: "include"</code>) as soon as it loads.
The origins differ, so before each call below the browser sends a CORS <em>preflight</em>
(<code>OPTIONS</code>) asking whether the call may be made. The edge answers it itself, from the
app's CORS settings in <code>conf/edge.toml</code>; the API never sees it. Then the browser checks
the answer and either sends the call or refuses it.</p>
<p class="note">A page cannot read a preflight's answer: the one shown is the edge's own
explanation of that exact request (<code>edge explain</code>, the same code that answers it).</p>
{sections}
<script type="application/json" id="calls">{data}</script>
<script>{_SCRIPT}</script>
</main>
</body></html>
""".encode()


def _call_section(i: int, e: dict[str, Any]) -> str:
    sent = "\n".join(f"{k}: {v}" if k != "OPTIONS" else f"OPTIONS {v}" for k, v in e["sent"])
    fetch_init = {"method": e["method"], "credentials": "include"}
    if e["headers"]:
        fetch_init["headers"] = dict(e["headers"])
    status = e["status"]
    answer = "\n".join(
        [str(status) if status else "(forwarded to the upstream)", *(f"{k}: {v}" for k, v in e["answer"])]
    )
    verdict = e["verdict"]
    check = (
        f'<p class="refused verdict">The browser refuses: {escape(verdict)}.</p>'
        if verdict
        else '<p class="ok verdict">The browser goes on: the answer allows this call.</p>'
    )
    return f"""<section class="call" id="call-{i}" data-expect="{"refused" if verdict else "allowed"}">
<h2>{i + 1}. {escape(e["title"])}</h2>
<p class="note">{escape(e["why"])} <code>fetch(api, {escape(json.dumps(fetch_init))})</code></p>
<div class="cols">
<div><h3>The browser sent (preflight)</h3><pre class="sent">{escape(sent)}</pre></div>
<div><h3>The edge answered</h3><pre class="answer">{escape(answer)}</pre>
<p class="note">Decision: <code class="decision">{escape(e["decision"])}</code></p>{check}</div>
<div><h3>Result</h3><div class="result" aria-live="polite"><p>running…</p></div></div>
</div>
<details><summary>Explain it yourself</summary><pre>{escape(e["command"])}</pre></details>
</section>"""


def web_handler(compiled: Compiled, api_url: str, web_origin: str) -> Handler:
    """The second origin: a page that calls the API cross-origin."""

    def handle(request: h11.Request) -> Reply:
        if request.target.split(b"?")[0] != b"/":
            return 404, [("content-type", "text/plain")], b"not found\n"
        page = web_page(compiled, api_url, web_origin, time.time())
        return 200, [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")], page

    return handle


def _announce(config: Config) -> None:
    """Print the banner once the edge serves, so that its own startup lines
    come first and the banner is the last thing on the terminal."""
    address = config.server.addresses[0]
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    deadline = time.monotonic() + EDGE_WAIT
    while time.monotonic() < deadline and not _edge_serves(host.strip("[]"), address.port):
        time.sleep(EDGE_POLL)
    print(banner(config), file=sys.stderr, flush=True)


def _edge_serves(host: str, port: int) -> bool:
    """Whether the edge's event loop handles connections. A bare connect is
    not enough (the kernel accepts on a bound socket before the edge has
    logged that it listens); any reply to a health check, or a close (a TLS
    listener's answer to plain text), comes from the edge itself."""
    try:
        with socket.create_connection((host, port), timeout=EDGE_POLL * 10) as sock:
            sock.sendall(b"GET " + HEALTH_PATH + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            sock.recv(1)
            return True
    except OSError:
        return False


async def serve(config: Config) -> None:
    assert config.demo is not None
    compiled = compile_config(config, "the demo")
    u = urls(config)
    up = config.demo.address
    web = config.demo.web_address
    origin = origin_handler(u["web"])
    page = web_handler(compiled, u["api"], u["web"])
    a = await asyncio.start_server(lambda r, w: _exchange(r, w, origin), up.host, up.port)
    b = await asyncio.start_server(lambda r, w: _exchange(r, w, page), web.host, web.port)
    parent = os.getppid()
    async with a, b:
        await asyncio.to_thread(_announce, config)
        while os.getppid() == parent:  # the edge is gone: so are we
            await asyncio.sleep(1.0)


def run(config: Config) -> None:
    asyncio.run(serve(config))
