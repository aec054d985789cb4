"""CORS through the edge, as a real browser sees it (BEHAVIOUR.md section 4).

How the browser is driven: Debian's headless Chromium is started once for the
module with ``--remote-debugging-port=0`` and a fresh ``--user-data-dir``; the
test talks the Chrome DevTools Protocol to it over a WebSocket (``websockets``'
sync client, a dozen lines below). Every call has a deadline, a watchdog kills
the whole browser process group after BROWSER_LIMIT seconds whatever happens,
and the fixture kills it at the end.

The origins, all on loopback (no Private Network Access preflight: a loopback
page calling a loopback server stays in one address space):

- ``http://localhost:<A>``: the web app's page, listed in ``allowed_origins``;
- ``http://127.0.0.1:<B>``: another site's page, not listed;
- ``http://localhost:<edge>``: the API behind the edge. Application ``api``
  (domain ``localhost``) has CORS settings; application ``plain`` (domain
  ``localhost/plain``) has none; application ``open`` (domain
  ``localhost/open``) allows all origins, without credentials. Ports are
  ignored when matching domains;
- ``null``: a frame of the first page, sandboxed without
  ``allow-same-origin`` (an opaque origin), where ``probeSandboxed`` runs
  the same ``fetch()``.

The page and the API are different *origins* (ports differ: every CORS rule
applies, each non-simple request is preflighted) but the same *site*, as in a
real deployment (``app.example.com`` calling ``api.example.com``).

Each page defines ``probe(url, init)``: it runs ``fetch()`` and resolves to
``{"ok": true, status, body, headers}`` or ``{"ok": false, error}`` (the
exception's name and message). The test calls it with ``Runtime.evaluate``
(awaiting the promise) and reads the JSON back; the browser's own reason for
blocking a request comes from the ``Network.loadingFailed`` event's
``corsErrorStatus``.

The cookie: the test stores ``CF_Authorization`` for
``http://localhost:<edge>/`` with ``Storage.setCookies`` (host-only, HttpOnly,
Secure, ``SameSite=Lax``: the edge's defaults; Chromium accepts Secure cookies
for ``http://localhost``, a potentially trustworthy origin). Cookies ignore
ports, and a same-site ``fetch`` with ``credentials: "include"`` sends a Lax
cookie. Why not a cross-site page (127.0.0.1 calling localhost) with
``SameSite=None``: this Chromium blocks third-party cookies by default (the
DevTools events show ``blockedReasons: ["UserPreferences"]``), so no
credentialed cross-site call could carry the session whatever the edge did.

The upstream is a small recording server of this module: it echoes each
request as JSON and, like a real API (the edge leaves actual responses' CORS
headers to the upstream), adds ``Access-Control-Allow-Origin`` and
``-Credentials`` for the allowed origin only. Its request log proves that no
preflight ever reached it; the edge's access log (a file) shows it answered
them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from access_fixtures import AUD, ISS, default_jwks, mint
from chromium import CALL_TIMEOUT, Browser, DevTools, chromium_binary
from conftest import EdgeProcess, wait_for, write_config

FETCH_TIMEOUT_MS = 5000
EMAIL = "alice@example.com"
IDENTITY_HEADER = "cf-access-authenticated-user-email"
ADMIN_AUD = "admin-aud"
ANY_AUD = "any-aud"
OPEN_AUD = "open-aud"
LOWER_AUD = "lower-aud"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>edge browser test</title>
<pre id="out"></pre>
<script>
async function probe(url, init) {
  let result;
  try {
    const r = await fetch(url, { ...init, signal: AbortSignal.timeout(@TIMEOUT@) });
    const headers = {};
    r.headers.forEach((value, name) => { headers[name] = value; });
    result = { ok: true, status: r.status, body: await r.text(), headers };
  } catch (e) {
    result = { ok: false, error: e.name + ": " + e.message };
  }
  document.getElementById("out").textContent += JSON.stringify(result) + "\\n";
  return result;
}

// probeSandboxed(url, init): the same fetch, run by a frame of this page
// sandboxed without allow-same-origin, so its origin is opaque and its
// requests say "Origin: null". Page and frame talk by postMessage.
function sandboxMain(timeout) {
  addEventListener("message", async (e) => {
    let result;
    try {
      const r = await fetch(e.data.url, { ...e.data.init, signal: AbortSignal.timeout(timeout) });
      const headers = {};
      r.headers.forEach((value, name) => { headers[name] = value; });
      result = { ok: true, status: r.status, body: await r.text(), headers };
    } catch (err) {
      result = { ok: false, error: err.name + ": " + err.message };
    }
    parent.postMessage({ id: e.data.id, origin: self.origin, result }, "*");
  });
  parent.postMessage({ ready: true }, "*");
}
let sandbox = null;
function sandboxed() {
  sandbox ??= new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.sandbox = "allow-scripts";
    frame.srcdoc = "<script>(" + sandboxMain + ")(@TIMEOUT@)<\\/script>";
    addEventListener("message", function ready(e) {
      if (e.source === frame.contentWindow && e.data.ready) {
        removeEventListener("message", ready);
        resolve(frame);
      }
    });
    document.body.appendChild(frame);
  });
  return sandbox;
}
let asked = 0;
async function probeSandboxed(url, init) {
  const frame = await sandboxed();
  const id = ++asked;
  return new Promise((resolve) => {
    addEventListener("message", function answer(e) {
      if (e.source === frame.contentWindow && e.data.id === id) {
        removeEventListener("message", answer);
        resolve({ origin: e.data.origin, ...e.data.result });
      }
    });
    frame.contentWindow.postMessage({ id, url, init }, "*");
  });
}
</script>
""".replace("@TIMEOUT@", str(FETCH_TIMEOUT_MS))


# -- loopback servers -------------------------------------------------------------------


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class PageHandler(_Quiet):
    def do_GET(self) -> None:
        body = PAGE.encode() if self.path == "/" else b"not found\n"
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class UpstreamHandler(_Quiet):
    """Echoes the request as JSON; CORS headers for the allowed origin only."""

    server: RecordingServer

    def _any(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append(Seen(self.command, self.path, headers))
        payload = {"method": self.command, "path": self.path, "headers": headers, "body": body}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        origin = self.headers.get("origin")
        if origin is not None and origin == self.server.allowed_origin:
            self.send_header("access-control-allow-origin", origin)
            self.send_header("access-control-allow-credentials", "true")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_OPTIONS = _any
    do_patch = _any  # fetch() sends any method but the six it normalises as written


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    allowed_origin = ""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[Seen] = []
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


@dataclass
class Tab:
    """A page of one origin, attached through a flat DevTools session."""

    tools: DevTools
    session: str
    origin: str
    mark: int = 0  # where the events of the last fetch start

    def fetch(self, url: str, **init: Any) -> dict[str, Any]:
        """Run the page's probe(url, init) and return what it resolved to."""
        self.mark = len(self.tools.events)
        expression = f"probe({json.dumps(url)}, {json.dumps(init)})"
        reply = self.tools.call(
            "Runtime.evaluate", self.session, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"the page threw: {reply['exceptionDetails']}")
        result: dict[str, Any] = reply["result"]["value"]
        return result

    def fetch_sandboxed(self, url: str, **init: Any) -> dict[str, Any]:
        """probeSandboxed(url, init): fetch() from an opaque origin."""
        self.mark = len(self.tools.events)
        expression = f"probeSandboxed({json.dumps(url)}, {json.dumps(init)})"
        reply = self.tools.call(
            "Runtime.evaluate", self.session, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"the page threw: {reply['exceptionDetails']}")
        result: dict[str, Any] = reply["result"]["value"]
        return result

    def events(self, method: str, count: int = 1) -> list[dict[str, Any]]:
        """The last fetch's `method` events, waiting (briefly) for `count`: the
        network events may trail the promise's settling."""

        def found() -> list[dict[str, Any]]:
            return [
                e["params"]
                for e in self.tools.events[self.mark :]
                if e.get("sessionId") == self.session and e["method"] == method
            ]

        deadline = time.monotonic() + 3
        while len(found()) < count and time.monotonic() < deadline:
            self.tools.call("Runtime.evaluate", self.session, expression="0")  # collects what came meanwhile
            time.sleep(0.02)
        return found()

    def responses(self, count: int = 1) -> list[dict[str, str]]:
        """Response heads as received (preflights included), in order: status
        under ":status", header names in lower case."""
        return [
            {":status": str(r["statusCode"]), **{k.lower(): v for k, v in r["headers"].items()}}
            for r in self.events("Network.responseReceivedExtraInfo", count)
        ]

    def preflight_answer(self, responses: int) -> dict[str, str]:
        """The one preflight answer among the last fetch's `responses` responses."""
        heads = self.responses(responses)
        found = [h for h in heads if h.get("vary") == PREFLIGHT_VARY]
        assert len(found) == 1, f"expected one preflight answer among {heads}"
        return found[0]

    def cors_errors(self) -> list[dict[str, Any]]:
        """What the browser blamed, per failed load (`corsErrorStatus`)."""
        return [f["corsErrorStatus"] for f in self.events("Network.loadingFailed") if "corsErrorStatus" in f]


class ProbeBrowser(Browser):
    """Opens pages that define probe() (PAGE above)."""

    def open(self, url: str) -> Tab:
        assert self.tools is not None
        target = self.tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.tools.call("Network.enable", session)
        self.tools.call("Page.enable", session)
        self.tools.call("Page.navigate", session, url=url)
        origin = url.rstrip("/")
        deadline = time.monotonic() + CALL_TIMEOUT
        check = "location.origin + ' ' + document.readyState + ' ' + typeof probe"
        state = ""
        while time.monotonic() < deadline:
            reply = self.tools.call("Runtime.evaluate", session, expression=check, returnByValue=True)
            state = reply["result"].get("value", "")
            if state == f"{origin} complete function":
                return Tab(self.tools, session, origin)
            time.sleep(0.05)
        raise AssertionError(f"page {url} did not load: {state!r}")


# -- the world: pages, upstream, edge, browser ---------------------------------------------


@dataclass
class World:
    page_a: RecordingServer
    page_b: RecordingServer
    upstream: RecordingServer
    edge: EdgeProcess
    access_log: Path
    browser: ProbeBrowser
    allowed: Tab
    other: Tab

    @property
    def api(self) -> str:
        return f"http://localhost:{self.edge.port}"

    def upstream_saw(self, path: str) -> list[Seen]:
        return [s for s in self.upstream.seen if s.path == path]

    def edge_log(self, path: str | None, count: int) -> list[dict[str, Any]]:
        """The edge's access records for `path` (None: all), once there are
        `count` (the edge flushes its log every sweep)."""

        def records() -> list[dict[str, Any]]:
            if not self.access_log.exists():
                return []
            rows = [json.loads(line) for line in self.access_log.read_text().splitlines() if line]
            return [r for r in rows if path is None or r["path"] == path]

        wait_for(lambda: len(records()) >= count, timeout=5)
        return records()


def edge_config(jwks: Path, upstream: str, allowed_origin: str) -> str:
    return f"""
[[issuers]]
iss = "{ISS}"
jwks_file = "{jwks}"
algorithms = ["ES256"]

[[apps]]
name = "api"
domains = ["localhost"]
upstream = "{upstream}"
aud = "{AUD}"
[apps.cors]
allowed_origins = ["{allowed_origin}"]
allowed_methods = ["GET", "POST", "PUT"]
allowed_headers = ["Content-Type", "X-Custom"]
allow_credentials = true
max_age = 600
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "admin"
domains = ["localhost/admin"]
upstream = "{upstream}"
aud = "{ADMIN_AUD}"
[apps.cors]
allowed_origins = ["{allowed_origin}"]
allowed_methods = ["GET"]
allow_credentials = true
[[apps.policies]]
name = "root only"
action = "allow"
include = [{{ emails = ["root@example.com"] }}]

[[apps]]
name = "any"
domains = ["localhost/any"]
upstream = "{upstream}"
aud = "{ANY_AUD}"
[apps.cors]
allowed_origins = ["{allowed_origin}"]
allow_all_methods = true
allow_all_headers = true
allow_credentials = true
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "open"
domains = ["localhost/open"]
upstream = "{upstream}"
aud = "{OPEN_AUD}"
[apps.cors]
allow_all_origins = true
allowed_methods = ["GET", "PUT"]
allowed_headers = ["Content-Type"]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "lower"
domains = ["localhost/lower"]
upstream = "{upstream}"
aud = "{LOWER_AUD}"
[apps.cors]
allowed_origins = ["{allowed_origin}"]
allowed_methods = ["GET", "patch", "delete"]
allowed_headers = ["Content-Type"]
allow_credentials = true
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "plain"
domains = ["localhost/plain"]
upstream = "{upstream}"
aud = "{AUD}-plain"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    binary = chromium_binary()
    tmp = tmp_path_factory.mktemp("browser")
    servers: list[RecordingServer] = []
    edge: EdgeProcess | None = None
    browser: ProbeBrowser | None = None
    try:
        page_a = RecordingServer(PageHandler)
        servers.append(page_a)
        page_b = RecordingServer(PageHandler)
        servers.append(page_b)
        upstream = RecordingServer(UpstreamHandler)
        servers.append(upstream)
        origin_a = f"http://localhost:{page_a.port}"
        upstream.allowed_origin = origin_a
        jwks = tmp / "jwks.json"
        jwks.write_bytes(default_jwks())
        access_log = tmp / "access.log"
        config = edge_config(jwks, f"http://127.0.0.1:{upstream.port}", origin_a)
        edge = EdgeProcess(write_config(tmp, f'access_log = "{access_log}"', config))
        browser = ProbeBrowser(binary, tmp / "profile")
        assert browser.tools is not None
        now = int(time.time())
        token = mint(
            "ES256",
            aud=[AUD, ADMIN_AUD, ANY_AUD, LOWER_AUD],
            email=EMAIL,
            iat=now - 10,
            nbf=now - 10,
            exp=now + 600,
        )
        stored = browser.tools.call(
            "Storage.setCookies",
            cookies=[
                {
                    "name": "CF_Authorization",
                    "value": token.decode(),
                    "url": f"http://localhost:{edge.port}/",
                    "secure": True,
                    "httpOnly": True,
                    "sameSite": "Lax",
                }
            ],
        )
        assert stored == {}, stored
        allowed = browser.open(origin_a + "/")
        other = browser.open(f"http://127.0.0.1:{page_b.port}/")
        yield World(page_a, page_b, upstream, edge, access_log, browser, allowed, other)
    finally:
        if browser is not None:
            browser.close()
        if edge is not None:
            edge.stop()
        for server in servers:
            server.stop()


# -- the cases -----------------------------------------------------------------------------


def test_allowed_origin_credentialed_put_passes_the_edge_preflight(world: World) -> None:
    url = world.api + "/v1/items/1"
    result = world.allowed.fetch(
        url,
        method="PUT",
        credentials="include",
        headers={"Content-Type": "application/json", "X-Custom": "yes"},
        body='{"name": "widget"}',
    )
    assert result["ok"], result
    assert result["status"] == 200
    echoed = json.loads(result["body"])
    assert echoed["method"] == "PUT"
    assert echoed["body"] == '{"name": "widget"}'
    assert echoed["headers"]["x-custom"] == "yes"
    assert echoed["headers"]["origin"] == world.allowed.origin
    assert echoed["headers"][IDENTITY_HEADER] == EMAIL
    assert "cookie" not in echoed["headers"] or "CF_Authorization" not in echoed["headers"]["cookie"]
    # The preflight was answered at the edge; only the PUT reached the upstream.
    assert [s.method for s in world.upstream_saw("/v1/items/1")] == ["PUT"]
    records = world.edge_log("/v1/items/1", 2)
    assert [(r["method"], r["status"], r["decision"]) for r in records] == [
        ("OPTIONS", 200, "preflight: allowed"),
        ("PUT", 200, records[1]["decision"]),
    ]
    assert records[0]["upstream_status"] is None
    assert records[1]["upstream_status"] == 200
    # What the browser got: the preflight answer, then the upstream's answer
    # with Origin merged into its Vary by the edge.
    answer = world.allowed.preflight_answer(responses=2)
    assert answer[":status"] == "200"
    assert answer["access-control-allow-origin"] == world.allowed.origin
    assert answer["access-control-allow-credentials"] == "true"
    assert answer["access-control-allow-methods"] == "GET, POST, PUT"
    assert answer["access-control-allow-headers"] == "Content-Type, X-Custom"
    assert answer["access-control-max-age"] == "600"
    assert answer["vary"] == PREFLIGHT_VARY
    final = world.allowed.responses(2)[-1]
    assert final["access-control-allow-origin"] == world.allowed.origin
    assert "Origin" in [v.strip() for v in final["vary"].split(",")]


def test_preflight_is_cached_for_max_age(world: World) -> None:
    for n in range(2):
        result = world.allowed.fetch(
            world.api + "/v1/cached", method="PUT", credentials="include", headers={"X-Custom": str(n)}
        )
        assert (result["ok"], result["status"]) == (True, 200), result
    records = world.edge_log("/v1/cached", 3)
    assert [(r["method"], r["status"]) for r in records] == [("OPTIONS", 200), ("PUT", 200), ("PUT", 200)]
    assert [s.method for s in world.upstream_saw("/v1/cached")] == ["PUT", "PUT"]


def test_allow_all_echoes_method_and_headers_even_authorization(world: World) -> None:
    """With credentials a literal ``*`` would not do, and never covers
    Authorization: the edge echoes what the browser asked for."""
    result = world.allowed.fetch(
        world.api + "/any/thing",
        method="DELETE",
        credentials="include",
        headers={"Authorization": "Bearer the-app-s-own", "X-Trace": "t1"},
    )
    assert (result["ok"], result["status"]) == (True, 200), result
    echoed = json.loads(result["body"])
    assert echoed["method"] == "DELETE"
    assert echoed["headers"]["authorization"] == "Bearer the-app-s-own"
    assert echoed["headers"][IDENTITY_HEADER] == EMAIL
    answer = world.allowed.preflight_answer(responses=2)
    assert answer["access-control-allow-methods"] == "DELETE"
    assert answer["access-control-allow-headers"] == "authorization,x-trace"
    assert answer["access-control-allow-origin"] == world.allowed.origin
    assert [s.method for s in world.upstream_saw("/any/thing")] == ["DELETE"]


def test_disallowed_origin_is_blocked_by_the_browser(world: World) -> None:
    result = world.other.fetch(
        world.api + "/v1/other",
        method="PUT",
        credentials="include",
        headers={"Content-Type": "application/json", "X-Custom": "yes"},
        body="{}",
    )
    assert not result["ok"], result
    assert result["error"].startswith("TypeError"), result
    assert [e["corsError"] for e in world.other.cors_errors()] == ["PreflightMissingAllowOriginHeader"]
    [answer] = world.other.responses()
    assert answer[":status"] == "403"
    assert answer["vary"] == PREFLIGHT_VARY
    assert not [k for k in answer if k.startswith("access-control-")]
    assert world.upstream_saw("/v1/other") == []
    records = world.edge_log("/v1/other", 1)
    assert [(r["method"], r["status"], r["decision"]) for r in records] == [
        ("OPTIONS", 403, "preflight: origin not allowed")
    ]


def test_disallowed_method_is_blocked_by_the_browser(world: World) -> None:
    result = world.allowed.fetch(world.api + "/v1/patch", method="PATCH", credentials="include", body="{}")
    assert not result["ok"], result
    assert result["error"].startswith("TypeError"), result
    errors = world.allowed.cors_errors()
    assert [(e["corsError"], e["failedParameter"]) for e in errors] == [
        ("MethodDisallowedByPreflightResponse", "PATCH")
    ]
    # Still 200, with the configured lists: the browser names what failed.
    [answer] = world.allowed.responses()
    assert (answer[":status"], answer["access-control-allow-methods"]) == ("200", "GET, POST, PUT")
    assert world.upstream_saw("/v1/patch") == []
    records = world.edge_log("/v1/patch", 1)
    assert [(r["method"], r["status"]) for r in records] == [("OPTIONS", 200)]


# Methods are case-sensitive (RFC 9110 9.1). fetch() upper-cases DELETE, GET,
# HEAD, OPTIONS, POST and PUT only; `patch` goes out as written, is matched
# against Access-Control-Allow-Methods byte for byte, and reaches the
# upstream as written.


def test_lower_case_patch_echoed_by_allow_all_reaches_the_upstream(world: World) -> None:
    result = world.allowed.fetch(
        world.api + "/any/patched",
        method="patch",
        credentials="include",
        headers={"Content-Type": "application/json"},
        body='{"n": 1}',
    )
    assert (result["ok"], result["status"]) == (True, 200), result
    echoed = json.loads(result["body"])
    assert (echoed["method"], echoed["body"]) == ("patch", '{"n": 1}')
    assert echoed["headers"][IDENTITY_HEADER] == EMAIL
    answer = world.allowed.preflight_answer(responses=2)
    assert answer["access-control-allow-methods"] == "patch"
    assert [s.method for s in world.upstream_saw("/any/patched")] == ["patch"]
    records = world.edge_log("/any/patched", 2)
    assert [(r["method"], r["status"]) for r in records] == [("OPTIONS", 200), ("patch", 200)]


def test_lower_case_patch_listed_as_written_reaches_the_upstream(world: World) -> None:
    result = world.allowed.fetch(world.api + "/lower/item", method="patch", credentials="include", body="x")
    assert (result["ok"], result["status"]) == (True, 200), result
    assert json.loads(result["body"])["method"] == "patch"
    answer = world.allowed.preflight_answer(responses=2)
    assert answer["access-control-allow-methods"] == "GET, patch, DELETE"
    assert [s.method for s in world.upstream_saw("/lower/item")] == ["patch"]


def test_listed_delete_in_lower_case_allows_what_fetch_sends(world: World) -> None:
    """fetch() upper-cases `delete`, and Chromium matches the allowed list
    byte for byte: the edge compiles a listed `delete` as DELETE."""
    result = world.allowed.fetch(world.api + "/lower/gone", method="delete", credentials="include")
    assert (result["ok"], result["status"]) == (True, 200), result
    answer = world.allowed.preflight_answer(responses=2)
    assert answer["access-control-allow-methods"] == "GET, patch, DELETE"
    assert [s.method for s in world.upstream_saw("/lower/gone")] == ["DELETE"]


def test_upper_case_patch_is_not_the_listed_lower_case_one(world: World) -> None:
    result = world.allowed.fetch(world.api + "/lower/upper", method="PATCH", credentials="include", body="x")
    assert not result["ok"], result
    errors = world.allowed.cors_errors()
    assert [(e["corsError"], e["failedParameter"]) for e in errors] == [
        ("MethodDisallowedByPreflightResponse", "PATCH")
    ]
    assert world.upstream_saw("/lower/upper") == []


def test_disallowed_header_is_blocked_by_the_browser(world: World) -> None:
    result = world.allowed.fetch(
        world.api + "/v1/header", method="GET", credentials="include", headers={"X-Forbidden": "1"}
    )
    assert not result["ok"], result
    assert result["error"].startswith("TypeError"), result
    errors = world.allowed.cors_errors()
    assert [(e["corsError"], e["failedParameter"].lower()) for e in errors] == [
        ("HeaderDisallowedByPreflightResponse", "x-forbidden")
    ]
    [answer] = world.allowed.responses()
    assert (answer[":status"], answer["access-control-allow-headers"]) == ("200", "Content-Type, X-Custom")
    assert world.upstream_saw("/v1/header") == []
    records = world.edge_log("/v1/header", 1)
    assert [(r["method"], r["status"]) for r in records] == [("OPTIONS", 200)]


def test_app_without_cors_settings_fails_the_preflight(world: World) -> None:
    result = world.allowed.fetch(
        world.api + "/plain/thing",
        method="PUT",
        credentials="include",
        headers={"X-Custom": "yes"},
        body="{}",
    )
    assert not result["ok"], result
    assert result["error"].startswith("TypeError"), result
    assert [e["corsError"] for e in world.allowed.cors_errors()] == ["PreflightMissingAllowOriginHeader"]
    [answer] = world.allowed.responses()
    assert answer[":status"] == "403"
    assert not [k for k in answer if k.startswith("access-control-")]
    assert world.upstream_saw("/plain/thing") == []
    records = world.edge_log("/plain/thing", 1)
    assert [(r["method"], r["status"], r["app"], r["decision"]) for r in records] == [
        ("OPTIONS", 403, "plain", "preflight: no CORS settings")
    ]


def test_unauthenticated_fetch_reads_the_401(world: World) -> None:
    result = world.allowed.fetch(world.api + "/v1/anonymous", credentials="omit")
    assert result["ok"], result
    assert result["status"] == 401
    body = json.loads(result["body"])
    assert body["error"] == "login required"
    assert "/cdn-cgi/access/login/localhost" in body["login_url"]
    assert body["login_url"].startswith(world.api)
    assert result["headers"]["www-authenticate"].startswith("Bearer")  # exposed to the page
    [head] = world.allowed.responses()
    assert head["access-control-allow-origin"] == world.allowed.origin
    assert head["access-control-allow-credentials"] == "true"
    assert world.upstream_saw("/v1/anonymous") == []


def test_denied_by_policy_reads_the_403(world: World) -> None:
    result = world.allowed.fetch(world.api + "/admin/users", credentials="include")
    assert result["ok"], result
    assert result["status"] == 403
    assert "denied by policy" in result["body"]
    assert world.allowed.responses()[0]["access-control-allow-origin"] == world.allowed.origin
    assert world.upstream_saw("/admin/users") == []
    records = world.edge_log("/admin/users", 1)
    assert [(r["method"], r["status"], r["app"]) for r in records] == [("GET", 403, "admin")]
    assert records[0]["decision"].startswith("deny")


def test_simple_get_with_the_cookie_reaches_the_upstream(world: World) -> None:
    result = world.allowed.fetch(world.api + "/v1/me", credentials="include")
    assert result["ok"], result
    assert result["status"] == 200
    echoed = json.loads(result["body"])
    assert echoed["method"] == "GET"
    assert echoed["headers"][IDENTITY_HEADER] == EMAIL
    # A simple request: no preflight at all, the GET went straight through.
    assert [s.method for s in world.upstream_saw("/v1/me")] == ["GET"]
    records = world.edge_log("/v1/me", 1)
    assert [(r["method"], r["status"]) for r in records] == [("GET", 200)]


def test_sandboxed_page_reads_the_401_of_an_all_origins_app(world: World) -> None:
    """Origin: null under allow_all_origins (no credentials): the edge's own
    answers say ``*``, which Fetch accepts for an opaque origin."""
    result = world.allowed.fetch_sandboxed(world.api + "/open/anonymous")
    assert result["origin"] == "null"
    assert result["ok"], result
    assert result["status"] == 401
    assert json.loads(result["body"])["error"] == "login required"
    assert result["headers"]["www-authenticate"].startswith("Bearer")  # exposed
    assert world.upstream_saw("/open/anonymous") == []
    records = world.edge_log("/open/anonymous", 1)
    assert [(r["method"], r["status"], r["app"]) for r in records] == [("GET", 401, "open")]


def test_sandboxed_page_passes_the_preflight_of_an_all_origins_app(world: World) -> None:
    result = world.allowed.fetch_sandboxed(
        world.api + "/open/items", method="PUT", headers={"Content-Type": "application/json"}, body="{}"
    )
    assert result["ok"], result
    assert result["status"] == 401  # no cookie from an opaque origin: the edge's 401, readable
    records = world.edge_log("/open/items", 2)
    assert [(r["method"], r["status"]) for r in records] == [("OPTIONS", 200), ("PUT", 401)]
    assert world.upstream_saw("/open/items") == []


def test_sandboxed_page_cannot_read_an_app_with_listed_origins(world: World) -> None:
    """null is not listed for "api" (and could not be, with credentials)."""
    result = world.allowed.fetch_sandboxed(world.api + "/v1/from-a-sandbox")
    assert result["origin"] == "null"
    assert not result["ok"], result
    assert result["error"].startswith("TypeError"), result
    records = world.edge_log("/v1/from-a-sandbox", 1)
    assert [(r["method"], r["status"]) for r in records] == [("GET", 401)]
    assert world.upstream_saw("/v1/from-a-sandbox") == []


def test_no_preflight_ever_reached_the_upstream(world: World) -> None:
    """Across every case of the module (this one runs last), and this one."""
    result = world.allowed.fetch(world.api + "/v1/last", method="POST", headers={"X-Custom": "1"})
    assert (result["ok"], result["status"]) == (True, 401), result  # no cookie without credentials
    assert [(r["method"], r["status"]) for r in world.edge_log("/v1/last", 2)] == [
        ("OPTIONS", 200),
        ("POST", 401),
    ]
    assert world.upstream.seen, "no request reached the upstream at all"
    assert [s for s in world.upstream.seen if s.method == "OPTIONS"] == []
    preflights = [r for r in world.edge_log(None, 0) if r["method"] == "OPTIONS"]
    assert len(preflights) >= 1
    assert all(r["upstream_status"] is None for r in preflights), preflights
