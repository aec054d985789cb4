"""The Access decision end to end: a real `edge serve`, real upstreams, real sockets.

One module-wide edge serves a config written here (keys generated here): an
API with CORS settings, a public path, a service-token path, an app without
CORS, one with `options_preflight_bypass`, one that always redirects, and one
whose issuer publishes its keys at a URL served by a tiny local server.
Every response kind is checked for its status, the exact headers that matter,
what the upstream received (the echo mode returns the raw request) and
whether it received anything at all: `[proxy] max_idle = 0` makes every
forwarded request a new upstream connection, so `Upstream.accepted` counts
forwarded requests. The access log (a file) must name the app and decision.

SIGHUP reloads, JWKS rotation and a WebSocket closed at token expiry use
bounded polls; no test asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h11
import jwt
import pytest
from access_fixtures import ISS, mint, public_jwk, sha256_hex
from access_fixtures import jwks as jwks_doc
from conftest import ROOT, EdgeProcess, wait_for, write_config
from cryptography.hazmat.primitives.asymmetric import ec
from upstream_server import Upstream

from edge.access.keysets import REFETCH_MIN_INTERVAL

TIMEOUT = 10.0  # seconds, on every client socket and single wait
Headers = list[tuple[bytes, bytes]]

# Keys of this module: generated here, published as a jwks_file (KEY) or at a
# URL (ROT_1, then ROT_2 after a rotation). OTHER signs forgeries.
KEY, KID = ec.generate_private_key(ec.SECP256R1()), "e2e-1"
OTHER = ec.generate_private_key(ec.SECP256R1())
ROT_1, ROT_2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
ROT_ISS = "https://rotating.test"

ORIGIN = "https://app.test"  # allowed by the "api" app's CORS settings
EVIL = "https://evil.test"  # allowed nowhere
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
SERVICE_SECRET = "ci-secret-e2e"
STRIPPED = {b"cf-access-jwt-assertion", b"cf-access-authenticated-user-email"}


# -- config ------------------------------------------------------------------------

ISSUERS = """
[[issuers]]
iss = "{iss}"
jwks_file = "{jwks}"
algorithms = ["ES256"]
leeway = 0

[[issuers]]
iss = "{rot_iss}"
jwks_url = "{jwks_url}"
algorithms = ["ES256"]
leeway = 0

[[service_tokens]]
name = "ci"
client_id = "ci.example"
secret_sha256 = "{secret}"
"""

API_APP = """
[[apps]]
name = "api"
domains = ["api.test"]
upstream = "{up}"
aud = "api-aud"
[apps.cors]
allowed_origins = [{origins}]
allowed_methods = ["GET", "POST", "PUT"]
allowed_headers = ["Authorization", "Content-Type", "X-Trace"]
allow_credentials = true
max_age = 600
expose_headers = ["X-Request-Id"]
[[apps.policies]]
name = "blocked"
action = "deny"
include = [{{ emails = ["eve@example.com"] }}]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]
exclude = [{{ emails = ["mallory@example.com"] }}]
"""

OTHER_APPS = """
[[apps]]
name = "api-public"
domains = ["api.test/echo/public"]
upstream = "{up}"
[[apps.policies]]
name = "anyone"
action = "bypass"
include = [{{ everyone = true }}]

[[apps]]
name = "api-internal"
domains = ["api.test/echo/internal"]
upstream = "{up}"
[[apps.policies]]
name = "ci"
action = "service_auth"
include = [{{ service_tokens = ["ci"] }}]

[[apps]]
name = "api-vary"
domains = ["api.test/vary"]
upstream = "{tiny}"
[apps.cors]
allowed_origins = ["{origin}"]
allowed_methods = ["GET"]
[[apps.policies]]
name = "anyone"
action = "bypass"
include = [{{ everyone = true }}]

[[apps]]
name = "plain"
domains = ["plain.test"]
upstream = "{up}"
aud = "plain-aud"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "hooks"
domains = ["hooks.test"]
upstream = "{up}"
aud = "hooks-aud"
options_preflight_bypass = true
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "portal"
domains = ["portal.test"]
upstream = "{up}"
aud = "portal-aud"
unauthenticated = "redirect"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "rot"
domains = ["rot.test"]
upstream = "{up}"
aud = "rot-aud"
[[apps.policies]]
name = "users"
action = "allow"
include = [{{ everyone = true }}]
"""


def config_extra(
    directory: Path, up: str, tiny: str, origins: Sequence[str] = (ORIGIN,), more: str = ""
) -> str:
    """Everything after [server]: issuers, service token, apps."""
    jwks_path = directory / "jwks.json"
    if not jwks_path.exists():
        jwks_path.write_bytes(jwks_doc(public_jwk(KEY, KID, use="sig")))
    listed = ", ".join(f'"{o}"' for o in origins)
    return (
        "[proxy]\nmax_idle = 0\n"
        + ISSUERS.format(
            iss=ISS,
            jwks=jwks_path,
            rot_iss=ROT_ISS,
            jwks_url=f"{tiny}/certs",
            secret=sha256_hex(SERVICE_SECRET),
        )
        + API_APP.format(up=up, origins=listed)
        + OTHER_APPS.format(up=up, tiny=tiny, origin=ORIGIN)
        + more
    )


def token(
    email: str = "alice@example.com",
    aud: str = "api-aud",
    ttl: float = 3600,
    key: Any = KEY,
    kid: str = KID,
    iss: str = ISS,
) -> str:
    now = time.time()
    start = min(now, now + ttl) - 5
    return mint(
        "ES256", kid=kid, key=key, iss=iss, aud=[aud], email=email, exp=now + ttl, iat=start, nbf=start
    ).decode()


# -- a tiny HTTP server: JWKS documents and a Vary-setting upstream ---------------


class Tiny:
    """ThreadingHTTPServer on 127.0.0.1: path prefix -> (status, headers, body),
    changeable while it runs (HTTP/1.0: one request per connection)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
        self.hits: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                prefix = next((p for p in owner.routes if path.startswith(p)), None)
                status, headers, body = owner.routes.get(prefix or "", (404, [], b"no route\n"))
                owner.hits[prefix or path] = owner.hits.get(prefix or path, 0) + 1
                self.send_response(status)
                for k, v in [*headers, ("Content-Length", str(len(body)))]:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve_keys(self, *keys: tuple[Any, str]) -> None:
        body = jwks_doc(*(public_jwk(k, kid, use="sig") for k, kid in keys))
        self.routes["/certs"] = (200, [("Content-Type", "application/json")], body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT)


# -- a client ---------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.encode()]
        return b", ".join(values).decode("latin-1") if values else None

    def untagged(self) -> bytes:
        """The body without the line naming the request id that ends the
        edge's plain-text errors (asserted to be there)."""
        line = f"request id: {self.header('x-request-id')}\n".encode()
        assert self.body.endswith(line), self.body
        return self.body[: -len(line)]

    def cors(self) -> dict[str, str]:
        """Every Access-Control-* header (each must appear once)."""
        found = [(k.decode(), v.decode()) for k, v in self.headers if k.startswith(b"access-control-")]
        assert len({k for k, _ in found}) == len(found), found
        return dict(found)

    def json(self) -> Any:
        return json.loads(self.body)


def build(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Client:
    """One keep-alive connection; responses read strictly with h11."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(
        self, method: str, target: str, host: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> Resp:
        self.sock.sendall(build(method, target, host, headers, body))
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target=target, headers=[("host", host)]))
        conn.send(h11.EndOfMessage())
        head: h11.Response | None = None
        parts: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data, self.buf = self.buf or self.sock.recv(65536), b""
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        self.buf = conn.trailing_data[0]
        assert head is not None
        return Resp(head.status_code, list(head.headers), b"".join(parts))


def forwarded(raw: bytes) -> tuple[h11.Request, Headers]:
    """What the upstream received (the echo body), parsed strictly."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    return event, list(event.headers)


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


# -- the module's edge ---------------------------------------------------------------


@dataclass
class Edge:
    proc: EdgeProcess
    log: Path
    upstream: Upstream
    tiny: Tiny

    @property
    def port(self) -> int:
        return self.proc.port

    def call(
        self, method: str, target: str, host: str = "api.test", headers: Sequence[tuple[str, str]] = ()
    ) -> Resp:
        with Client(self.port) as c:
            return c.request(method, target, host, headers)

    def local(
        self, method: str, target: str, host: str = "api.test", headers: Sequence[tuple[str, str]] = ()
    ) -> Resp:
        """A request the edge must answer itself: the upstream sees nothing."""
        before = self.upstream.accepted
        r = self.call(method, target, host, headers)
        # A forwarded request is accepted upstream before its response exists.
        assert self.upstream.accepted == before, f"{method} {target} reached the upstream"
        return r

    def logged(self, path: str) -> dict[str, Any]:
        """The access log record of the one request to `path` (polled: the
        log is flushed by the server's sweep)."""
        found: list[dict[str, Any]] = []

        def look() -> bool:
            if self.log.exists():
                # Only whole lines: a flush may be under way.
                records = [json.loads(line) for line in self.log.read_text().split("\n")[:-1] if line]
                found[:] = [r for r in records if r["path"] == path]
            return bool(found)

        assert wait_for(look, TIMEOUT), f"no access log record for {path}"
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up
    assert not up.errors, up.errors


@pytest.fixture(scope="module")
def tiny() -> Iterator[Tiny]:
    server = Tiny()
    server.serve_keys((ROT_1, "rot-1"))
    server.routes["/vary"] = (200, [("Vary", "Accept-Encoding"), ("Content-Type", "text/plain")], b"varied\n")
    yield server
    server.close()


@pytest.fixture(scope="module")
def edge(upstream: Upstream, tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    directory = tmp_path_factory.mktemp("access")
    log = directory / "access.log"
    config = write_config(directory, f'access_log = "{log}"', config_extra(directory, upstream.url, tiny.url))
    proc = EdgeProcess(config)
    yield Edge(proc, log, upstream, tiny)
    proc.stop()


def quirky_token(member: bytes) -> str:
    """A token of ours signed over claims JSON with `member` spliced in first:
    JSON that Python's json module (PyJWT's) reads, whatever msgspec makes of it."""
    now = time.time()
    text = json.dumps(
        {"iss": ISS, "aud": ["api-aud"], "email": "bob@example.com", "exp": now + 600, "iat": now}
    )
    payload = b"{" + member + b", " + text[1:].encode()
    return jwt.api_jws.encode(payload, KEY, algorithm="ES256", headers={"kid": "nobody"})


def cookie(tok: str) -> tuple[str, str]:
    return ("Cookie", f"theme=dark; CF_Authorization={tok}")


FETCH = [("Origin", ORIGIN), ("Sec-Fetch-Mode", "cors"), ("Accept", "application/json")]
NAVIGATE = [("Sec-Fetch-Mode", "navigate"), ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")]
COURTESY = {
    "access-control-allow-origin": ORIGIN,
    "access-control-allow-credentials": "true",
    "access-control-expose-headers": "WWW-Authenticate, X-Request-Id",
}


def login_location(host: str, aud: str, target: str) -> str:
    original = quote(f"http://{host}{target}", safe="")
    return f"http://{host}/cdn-cgi/access/login/{host}?kid={aud}&redirect_url={original}"


# -- JWKS from a URL (first half: the key set fetched at start) -------------------------
# The second half (rotation) is the last test of the module, so the edge's
# refetch rate limit, counted from its first fetch, has mostly run out by then.


def test_jwks_url_token_verifies(edge: Edge) -> None:
    tok = token(aud="rot-aud", key=ROT_1, kid="rot-1", iss=ROT_ISS)

    def verified() -> bool:
        return (
            edge.call("GET", "/echo/rot", "rot.test", [cookie(tok), ("Accept", "application/json")]).status
            == 200
        )

    assert wait_for(verified, TIMEOUT), edge.proc.stderr_text()
    r = edge.call("GET", "/echo/rot-ok", "rot.test", [cookie(tok)])
    _, headers = forwarded(r.body)
    assert values(headers, b"cf-access-jwt-assertion") == [tok.encode()]
    assert edge.tiny.hits.get("/certs", 0) >= 1


# -- preflights ----------------------------------------------------------------------------


def test_preflight_answered_at_the_edge(edge: Edge) -> None:
    r = edge.local(
        "OPTIONS",
        "/echo/preflight-ok",
        headers=[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "content-type, x-trace"),
        ],
    )
    assert (r.status, r.body) == (200, b"")
    assert r.cors() == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET, POST, PUT",
        "access-control-allow-headers": "Authorization, Content-Type, X-Trace",
        "access-control-max-age": "600",
    }
    assert r.header("vary") == PREFLIGHT_VARY
    assert r.header("content-length") == "0"
    rec = edge.logged("/echo/preflight-ok")
    assert (rec["status"], rec["app"], rec["decision"], rec["upstream_status"]) == (
        200,
        "api",
        "preflight: allowed",
        None,
    )


def test_preflight_method_not_listed_still_gets_the_lists(edge: Edge) -> None:
    r = edge.local(
        "OPTIONS",
        "/echo/preflight-delete",
        headers=[("Origin", ORIGIN), ("Access-Control-Request-Method", "DELETE")],
    )
    assert r.status == 200
    assert r.cors()["access-control-allow-methods"] == "GET, POST, PUT"


def test_preflight_from_a_disallowed_origin(edge: Edge) -> None:
    r = edge.local(
        "OPTIONS",
        "/echo/preflight-evil",
        headers=[("Origin", EVIL), ("Access-Control-Request-Method", "GET")],
    )
    assert r.status == 403
    assert r.cors() == {}
    assert r.header("vary") == PREFLIGHT_VARY
    rec = edge.logged("/echo/preflight-evil")
    assert (rec["app"], rec["decision"]) == ("api", "preflight: origin not allowed")


def test_preflight_to_an_app_without_cors(edge: Edge) -> None:
    r = edge.local(
        "OPTIONS",
        "/echo/preflight-plain",
        "plain.test",
        [("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")],
    )
    assert r.status == 403
    assert r.cors() == {}
    rec = edge.logged("/echo/preflight-plain")
    assert (rec["app"], rec["decision"]) == ("plain", "preflight: no CORS settings")


def test_preflight_with_bypass_is_forwarded_unauthenticated(edge: Edge) -> None:
    before = edge.upstream.accepted
    r = edge.call(
        "OPTIONS",
        "/echo/preflight-hooks",
        "hooks.test",
        [
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "POST"),
            ("Cf-Access-Jwt-Assertion", "forged"),
        ],
    )
    assert r.status == 200  # the upstream's answer
    assert edge.upstream.accepted == before + 1
    req, headers = forwarded(r.body)
    assert (req.method, req.target) == (b"OPTIONS", b"/echo/preflight-hooks")
    assert values(headers, b"origin") == [ORIGIN.encode()]
    assert values(headers, b"access-control-request-method") == [b"POST"]
    assert not STRIPPED & {k for k, _ in headers}
    assert r.cors() == {}  # no CORS settings: the edge adds nothing
    rec = edge.logged("/echo/preflight-hooks")
    assert (rec["app"], rec["decision"], rec["upstream_status"]) == (
        "hooks",
        "preflight: forwarded (options_preflight_bypass)",
        200,
    )
    # Only preflights bypass Access: anything else still needs a token.
    assert edge.local("GET", "/echo/hooks-get", "hooks.test", FETCH).status == 401
    r = edge.call("POST", "/echo/hooks-post", "hooks.test", [cookie(token(aud="hooks-aud"))])
    assert r.status == 200


def test_plain_options_is_not_a_preflight(edge: Edge) -> None:
    """OPTIONS without Access-Control-Request-Method is an ordinary request:
    it needs a token like any other."""
    r = edge.local("OPTIONS", "/echo/plain-options", headers=FETCH)
    assert r.status == 401


def test_preflight_to_a_public_path_is_forwarded(edge: Edge) -> None:
    """No CORS settings, but a bypass policy: the path is not Access's to answer."""
    r = edge.call(
        "OPTIONS",
        "/echo/public/preflight",
        headers=[("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")],
    )
    assert r.status == 200
    req, headers = forwarded(r.body)
    assert (req.method, req.target) == (b"OPTIONS", b"/echo/public/preflight")
    assert values(headers, b"access-control-request-method") == [b"GET"]
    rec = edge.logged("/echo/public/preflight")
    assert (rec["app"], rec["decision"]) == ("api-public", 'bypass: policy "anyone" (preflight)')


# -- unauthenticated -----------------------------------------------------------------------


def test_unauthenticated_navigation_redirects_to_login(edge: Edge) -> None:
    r = edge.local("GET", "/echo/nav?x=1&y=a%20b", headers=NAVIGATE)
    assert r.status == 302
    assert r.header("location") == login_location("api.test", "api-aud", "/echo/nav?x=1&y=a%20b")
    assert r.header("location") == (
        "http://api.test/cdn-cgi/access/login/api.test?kid=api-aud"
        "&redirect_url=http%3A%2F%2Fapi.test%2Fecho%2Fnav%3Fx%3D1%26y%3Da%2520b"
    )
    assert r.header("cache-control") == "no-store"
    assert r.cors() == {}
    rec = edge.logged("/echo/nav?x=1&y=a%20b")
    assert (rec["status"], rec["app"], rec["decision"]) == (302, "api", "redirect: login (no token)")


def test_login_url_keeps_the_port_of_the_host_header(edge: Edge) -> None:
    r = edge.local("GET", "/echo/nav-port", "api.test:8443", NAVIGATE)
    assert r.status == 302
    assert r.header("location") == (
        "http://api.test:8443/cdn-cgi/access/login/api.test?kid=api-aud"
        "&redirect_url=http%3A%2F%2Fapi.test%3A8443%2Fecho%2Fnav-port"
    )


def test_navigation_without_sec_fetch_mode_uses_accept(edge: Edge) -> None:
    r = edge.local("GET", "/echo/nav-accept", headers=[("Accept", "text/html")])
    assert r.status == 302


def test_unauthenticated_fetch_gets_401_json_with_courtesy_headers(edge: Edge) -> None:
    r = edge.local("GET", "/echo/fetch", headers=FETCH)
    assert r.status == 401
    assert r.header("content-type") == "application/json"
    assert r.header("cache-control") == "no-store"
    assert r.header("www-authenticate") == 'Bearer realm="api.test"'
    assert r.json() == {
        "error": "login required",
        "login_url": login_location("api.test", "api-aud", "/echo/fetch"),
        "request_id": r.header("x-request-id"),  # the log line's, below
    }
    assert r.cors() == COURTESY
    assert r.header("vary") == "Origin"
    rec = edge.logged("/echo/fetch")
    assert (rec["status"], rec["app"], rec["decision"]) == (401, "api", "unauthenticated: no token")
    assert rec["request_id"] == r.header("x-request-id")


def test_unauthenticated_fetch_from_a_disallowed_origin_gets_no_cors(edge: Edge) -> None:
    r = edge.local("GET", "/echo/fetch-evil", headers=[("Origin", EVIL), ("Sec-Fetch-Mode", "cors")])
    assert r.status == 401
    assert r.cors() == {}
    assert r.header("vary") == "Origin"


def test_xhr_marker_gets_401(edge: Edge) -> None:
    r = edge.local(
        "GET", "/echo/xhr", headers=[("X-Requested-With", "XMLHttpRequest"), ("Accept", "text/html")]
    )
    assert r.status == 401


def test_redirect_app_redirects_fetches_too(edge: Edge) -> None:
    r = edge.local("GET", "/echo/portal-fetch", "portal.test", FETCH)
    assert r.status == 302
    assert r.header("location") == login_location("portal.test", "portal-aud", "/echo/portal-fetch")
    assert r.cors() == {}
    rec = edge.logged("/echo/portal-fetch")
    assert (rec["app"], rec["decision"]) == ("portal", "redirect: login (no token)")


@pytest.mark.parametrize(
    ("case", "make", "error", "reason"),
    [
        (
            "wrong-aud",
            lambda: token(aud="plain-aud"),
            "invalid token",
            "token is for another application (aud)",
        ),
        ("expired", lambda: token(ttl=-30), "session expired", "expired"),
        ("bad-sig", lambda: token(key=OTHER), "invalid token", "bad signature"),
        ("unknown-kid", lambda: token(kid="nobody"), "invalid token", "unknown kid 'nobody'"),
    ],
)
def test_bad_tokens(edge: Edge, case: str, make: Any, error: str, reason: str) -> None:
    tok = make()
    fetch_path, nav_path = f"/echo/{case}-fetch", f"/echo/{case}-nav"
    r = edge.local("GET", fetch_path, headers=[*FETCH, cookie(tok)])
    assert r.status == 401
    assert r.json() == {
        "error": error,
        "login_url": login_location("api.test", "api-aud", fetch_path),
        "request_id": r.header("x-request-id"),
    }
    assert r.cors() == COURTESY
    r = edge.local("GET", nav_path, headers=[*NAVIGATE, cookie(tok)])
    assert r.status == 302
    assert r.header("location") == login_location("api.test", "api-aud", nav_path)
    assert edge.logged(fetch_path)["decision"] == f"unauthenticated: {reason}"
    assert edge.logged(nav_path)["decision"] == f"redirect: login ({reason})"


def test_bearer_and_header_tokens_are_accepted(edge: Edge) -> None:
    tok = token()
    for i, header in enumerate([("Authorization", f"Bearer {tok}"), ("Cf-Access-Token", tok)]):
        r = edge.call("GET", f"/echo/other-carrier-{i}", headers=[header])
        assert r.status == 200
        _, headers = forwarded(r.body)
        assert values(headers, b"cf-access-jwt-assertion") == [tok.encode()]


def test_two_different_tokens_are_refused(edge: Edge) -> None:
    r = edge.local(
        "GET", "/echo/two", headers=[cookie(token()), ("Cf-Access-Token", token(email="bob@example.com"))]
    )
    assert r.status == 400
    assert r.body == b"bad request: two different access tokens\n"
    rec = edge.logged("/echo/two")
    assert (rec["app"], rec["decision"]) == ("api", "reject: ambiguous: two different tokens")


@pytest.mark.parametrize(
    ("case", "bearer"),
    [
        ("other-user", lambda: token(email="bob@example.com")),  # another user's, from our issuer
        ("our-kid", lambda: token(key=OTHER, iss="https://evil.test")),  # a foreign iss, our kid
        ("our-iss", lambda: token(kid="nobody")),  # our iss, a kid we do not hold
        # Our iss behind JSON that msgspec refuses and PyJWT reads (a kid we do not hold).
        ("our-iss-nan", lambda: quirky_token(b'"x": NaN')),
        ("our-iss-surrogate", lambda: quirky_token(b'"x": "\\ud800"')),
        ("our-iss-duplicate", lambda: quirky_token(b'"iss": 7')),
    ],
)
def test_a_second_token_in_authorization_is_refused(edge: Edge, case: str, bearer: Any) -> None:
    path = f"/echo/second-token-{case}"
    r = edge.local("GET", path, headers=[cookie(token()), ("Authorization", f"Bearer {bearer()}")])
    assert r.status == 400
    assert r.body == b"bad request: two different access tokens\n"
    assert edge.logged(path)["decision"] == "reject: ambiguous: two different tokens"


@pytest.mark.parametrize(
    "credential",
    [
        "Bearer app-secret-123",
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer " + mint("ES256", kid="app-key", key=OTHER, iss="https://app.internal", aud=["app"]).decode(),
    ],
    ids=["opaque-bearer", "basic", "foreign-jwt"],
)
def test_the_applications_own_authorization_passes_untouched(edge: Edge, credential: str) -> None:
    tok = token()
    r = edge.call("GET", "/echo/app-credential", headers=[cookie(tok), ("Authorization", credential)])
    assert r.status == 200
    _, headers = forwarded(r.body)
    assert values(headers, b"authorization") == [credential.encode()]
    assert values(headers, b"cf-access-jwt-assertion") == [tok.encode()]


@pytest.mark.parametrize(
    ("case", "spelling"),
    [
        ("tab", "Bearer\t{}"),
        ("list", "Basic YWxp, Bearer {}"),
        ("other-scheme-first", "Token x, Bearer {}"),
        ("auth-param", 'Token token="{}"'),
    ],
)
def test_a_second_token_in_authorization_is_refused_however_spelled(
    edge: Edge, case: str, spelling: str
) -> None:
    """An application splits Authorization on any whitespace and on commas:
    bob's token there, next to alice's cookie, never reaches it."""
    path = f"/echo/second-token-spelled-{case}"
    bob = token(email="bob@example.com")
    r = edge.local("GET", path, headers=[cookie(token()), ("Authorization", spelling.format(bob))])
    assert r.status == 400
    assert r.body == b"bad request: two different access tokens\n"
    assert edge.logged(path)["decision"] == "reject: ambiguous: two different tokens"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_absurd_claim_values_are_401_not_500(edge: Edge, claim: str) -> None:
    now = time.time()
    good = {"exp": now + 3600, "nbf": now - 5, "iat": now - 5}
    tok = mint("ES256", kid=KID, key=KEY, aud=["api-aud"], **{**good, claim: 10**400}).decode()
    stderr_before = len(edge.proc.lines)
    for attempt in range(2):  # the repeat is answered from the failure cache
        path = f"/echo/absurd-{claim}-{attempt}"
        r = edge.local("GET", path, headers=[*FETCH, cookie(tok)])
        assert r.status == 401
        assert r.json()["error"] == "invalid token"
        # One log line per refusal: its access-log record, one line, naming the reason...
        assert edge.logged(path)["decision"] == f"unauthenticated: {claim} is out of range"
        lines = [line for line in edge.log.read_text().splitlines() if f'"{path}"' in line]
        assert len(lines) == 1, lines
    # ... and nothing on the edge's own log: no traceback, no warning, no second line about it.
    about = [
        line
        for line in edge.proc.lines[stderr_before:]
        if f"absurd-{claim}" in line
        or "out of range" in line
        or any(level in line for level in (" WARNING ", " ERROR ", " CRITICAL "))
    ]
    assert about == [], about
    assert not [line for line in edge.proc.lines if "Traceback" in line], edge.proc.lines


# -- authenticated ------------------------------------------------------------------------------


def test_valid_token_reaches_the_upstream_with_identity(edge: Edge) -> None:
    tok = token()
    before = edge.upstream.accepted
    r = edge.call(
        "GET",
        "/echo/me",
        headers=[
            ("Origin", ORIGIN),
            ("Cookie", f"theme=dark; CF_Authorization={tok}; lang=en"),
            ("Cf-Access-Jwt-Assertion", "forged.jwt.value"),
            ("Cf-Access-Authenticated-User-Email", "ceo@example.com"),
            ("X-Forwarded-For", "6.6.6.6"),
        ],
    )
    assert r.status == 200
    assert edge.upstream.accepted == before + 1
    req, headers = forwarded(r.body)
    assert (req.method, req.target) == (b"GET", b"/echo/me")
    assert values(headers, b"host") == [b"api.test"]
    assert values(headers, b"cookie") == [b"theme=dark; lang=en"]
    assert values(headers, b"cf-access-jwt-assertion") == [tok.encode()]
    assert values(headers, b"cf-access-authenticated-user-email") == [b"alice@example.com"]
    assert values(headers, b"x-forwarded-for") == [b"127.0.0.1"]
    assert values(headers, b"origin") == [ORIGIN.encode()]
    assert b"CF_Authorization" not in r.body and b"forged" not in r.body and b"ceo@" not in r.body
    # The upstream sets its own CORS headers; the edge only merges Vary.
    assert r.cors() == {}
    assert r.header("vary") == "Origin"
    rec = edge.logged("/echo/me")
    assert (rec["status"], rec["app"], rec["decision"], rec["upstream_status"]) == (
        200,
        "api",
        'allow: policy "staff"',
        200,
    )


def test_vary_origin_merged_into_the_upstreams_vary(edge: Edge) -> None:
    r = edge.call("GET", "/vary/x", headers=[("Origin", ORIGIN)])
    assert (r.status, r.body) == (200, b"varied\n")
    assert values(r.headers, b"vary") == [b"Accept-Encoding, Origin"]
    assert edge.logged("/vary/x")["app"] == "api-vary"


def test_no_vary_added_for_an_app_without_cors(edge: Edge) -> None:
    r = edge.call("GET", "/echo/plain-ok", "plain.test", [("Origin", ORIGIN), cookie(token(aud="plain-aud"))])
    assert r.status == 200
    assert r.header("vary") is None
    _, headers = forwarded(r.body)
    assert values(headers, b"cf-access-authenticated-user-email") == [b"alice@example.com"]


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("eve@example.com", 'deny: policy "blocked"'),
        ("mallory@example.com", 'deny: no policy matched (policy "staff" exclude emails: matched)'),
        ("alice@elsewhere.test", 'deny: no policy matched (policy "staff" include: no rule matched)'),
    ],
)
def test_policy_deny_is_403_with_courtesy_headers(edge: Edge, email: str, reason: str) -> None:
    path = f"/echo/deny-{email}"
    r = edge.local("GET", path, headers=[*FETCH, cookie(token(email=email))])
    assert r.status == 403
    assert r.untagged() == b"forbidden: access denied by policy\n"
    assert r.cors() == COURTESY
    assert r.header("vary") == "Origin"
    assert r.header("cache-control") == "no-store"
    rec = edge.logged(path)
    assert (rec["status"], rec["app"]) == (403, "api")
    assert rec["decision"] == reason


def test_policy_deny_for_a_disallowed_origin_has_no_cors(edge: Edge) -> None:
    r = edge.local(
        "GET", "/echo/deny-evil", headers=[("Origin", EVIL), cookie(token(email="eve@example.com"))]
    )
    assert r.status == 403
    assert r.cors() == {}
    assert r.header("vary") == "Origin"


def test_service_token(edge: Edge) -> None:
    good = [("CF-Access-Client-Id", "ci.example"), ("CF-Access-Client-Secret", SERVICE_SECRET)]
    r = edge.call("GET", "/echo/internal/svc", headers=[*good, ("Cf-Access-Jwt-Assertion", "forged")])
    assert r.status == 200
    req, headers = forwarded(r.body)
    assert req.target == b"/echo/internal/svc"
    assert values(headers, b"cf-access-client-id") == [b"ci.example"]
    # The secret is of no use to the upstream; no identity headers for a machine.
    assert not values(headers, b"cf-access-client-secret")
    assert not STRIPPED & {k for k, _ in headers}
    rec = edge.logged("/echo/internal/svc")
    assert (rec["app"], rec["decision"], rec["upstream_status"]) == (
        "api-internal",
        'service_auth: policy "ci"',
        200,
    )

    bad = [("CF-Access-Client-Id", "ci.example"), ("CF-Access-Client-Secret", "wrong")]
    r = edge.local("GET", "/echo/internal/svc-bad", headers=bad)
    assert r.status == 403
    assert r.untagged() == b"forbidden: access denied by policy\n"
    rec = edge.logged("/echo/internal/svc-bad")
    assert (rec["app"], rec["decision"]) == ("api-internal", "deny: no policy matched")
    # A user's token opens no service-token path, navigation or not.
    r = edge.local("GET", "/echo/internal/svc-user", headers=[*NAVIGATE, cookie(token())])
    assert r.status == 403


def test_public_path_without_a_token(edge: Edge) -> None:
    r = edge.call(
        "GET",
        "/echo/public/status",
        headers=[("Cf-Access-Authenticated-User-Email", "ceo@example.com"), ("Origin", EVIL)],
    )
    assert r.status == 200
    req, headers = forwarded(r.body)
    assert req.target == b"/echo/public/status"
    assert not STRIPPED & {k for k, _ in headers}
    assert r.header("vary") is None  # api-public has no CORS settings of its own
    rec = edge.logged("/echo/public/status")
    assert (rec["app"], rec["decision"], rec["upstream_status"]) == (
        "api-public",
        'bypass: policy "anyone"',
        200,
    )


def test_unmatched_host_is_404_and_not_forwarded(edge: Edge) -> None:
    r = edge.local("GET", "/echo/nowhere", "nowhere.test", [cookie(token())])
    assert (r.status, r.untagged()) == (404, b"not found: no application here\n")
    rec = edge.logged("/echo/nowhere")
    assert (rec["app"], rec["decision"]) == (None, "not found: no application")


# -- the login path ----------------------------------------------------------------------------


def test_login_path_never_sends_cors_headers(edge: Edge) -> None:
    path = "/cdn-cgi/access/login/api.test?kid=api-aud"
    r = edge.local("GET", path, headers=[*FETCH, cookie(token())])
    assert r.cors() == {}
    assert r.header("x-frame-options") == "DENY"
    assert "frame-ancestors 'none'" in r.header("content-security-policy")
    r = edge.local(
        "OPTIONS", path + "&pre=1", headers=[("Origin", ORIGIN), ("Access-Control-Request-Method", "POST")]
    )
    assert r.status == 403
    assert r.cors() == {}
    assert r.header("x-frame-options") == "DENY"
    rec = edge.logged(path + "&pre=1")
    assert rec["status"] == 403
    assert rec["decision"].startswith("preflight: edge endpoint 'login'"), rec


# -- WebSocket: the tunnel ends when the token does -------------------------------------------


def test_websocket_tunnel_closed_at_token_expiry(edge: Edge, upstream: Upstream) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    tok = token(ttl=2.5)
    mark = upstream.mark()
    sock = socket.create_connection(("127.0.0.1", edge.port), timeout=TIMEOUT)
    with (
        contextlib.closing(sock),
        connect(
            "ws://api.test/ws",
            sock=sock,
            additional_headers={"Cookie": f"CF_Authorization={tok}"},
            open_timeout=TIMEOUT,
            close_timeout=2,
            ping_interval=None,
            proxy=None,
        ) as ws,
    ):
        ws.send("before expiry")
        assert ws.recv(timeout=TIMEOUT) == "before expiry"
        ident = upstream.wait_event("ws-open", mark)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=15)  # nothing is sent: only the edge can end this
    upstream.wait_event("conn-closed", mark, value=ident)
    rec = edge.logged("/ws")
    # Logged as what it was (not as 499, "the client went away unanswered").
    assert (rec["status"], rec["upstream_status"], rec["app"], rec["decision"]) == (
        101,
        101,
        "api",
        'allow: policy "staff"',
    )


def test_websocket_upgrade_without_token_is_refused(edge: Edge) -> None:
    r = edge.local(
        "GET",
        "/ws-refused",
        headers=[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Origin", ORIGIN),
        ],
    )
    assert r.status == 401


# -- the operator's commands on the same config ---------------------------------------------


def run_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_explain_and_check(edge: Edge) -> None:
    config = str(edge.proc.config_path)
    result = run_edge("check", "-c", config)
    assert result.returncode == 0, result.stderr
    for name in ("api", "api-public", "api-internal", "plain", "hooks", "portal", "rot"):
        assert f'app "{name}"' in result.stdout
    assert "preflights forwarded to the upstream (options_preflight_bypass)" in result.stdout

    result = run_edge(
        "explain", "-c", config, "GET", "http://api.test/echo/x", "-H", f"Cookie: CF_Authorization={token()}"
    )
    assert result.returncode == 0, result.stderr
    assert 'app "api"' in result.stdout
    assert 'decision: Forward: allow: policy "staff"' in result.stdout

    result = run_edge(
        "explain", "-c", config, "OPTIONS", "http://api.test/echo/x",
        "-H", f"Origin: {ORIGIN}", "-H", "Access-Control-Request-Method: PUT",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'app "api"' in result.stdout
    assert "decision: Preflight: preflight: allowed" in result.stdout
    assert f"access-control-allow-origin: {ORIGIN}" in result.stdout

    result = run_edge("explain", "-c", config, "GET", "http://portal.test/", "-H", "Sec-Fetch-Mode: cors")
    assert result.returncode == 0, result.stderr
    assert 'app "portal"' in result.stdout
    assert "decision: Redirect: redirect: login (no token)" in result.stdout


# -- SIGHUP -------------------------------------------------------------------------------------


EXTRA_APP = """
[[apps]]
name = "extra"
domains = ["extra.test"]
upstream = "{up}"
[[apps.policies]]
name = "anyone"
action = "bypass"
include = [{{ everyone = true }}]
"""


def reloads(proc: EdgeProcess, word: str) -> int:
    return sum(word in line for line in proc.lines)


def hup(proc: EdgeProcess, word: str) -> None:
    """SIGHUP, then wait until the edge logs `word` once more."""
    seen = reloads(proc, word)
    proc.signal(signal.SIGHUP)
    assert wait_for(lambda: reloads(proc, word) > seen, TIMEOUT), proc.stderr_text()


def test_sighup_reload(upstream: Upstream, tiny: Tiny, tmp_path: Path) -> None:
    server = f'access_log = "{tmp_path / "access.log"}"'
    config = write_config(tmp_path, server, config_extra(tmp_path, upstream.url, tiny.url))
    proc = EdgeProcess(config)
    pre = [("Origin", "https://new.test"), ("Access-Control-Request-Method", "GET")]
    try:
        with Client(proc.port) as kept:
            assert kept.request("OPTIONS", "/echo/pre", "api.test", pre).status == 403
            assert kept.request("GET", "/echo/extra", "extra.test").status == 404

            extra = EXTRA_APP.format(up=upstream.url)
            origins = (ORIGIN, "https://new.test")
            write_config(tmp_path, server, config_extra(tmp_path, upstream.url, tiny.url, origins, extra))
            hup(proc, "reloaded")

            # The same keep-alive connection sees the new configuration.
            r = kept.request("OPTIONS", "/echo/pre", "api.test", pre)
            assert r.status == 200
            assert r.cors()["access-control-allow-origin"] == "https://new.test"
            r = kept.request("GET", "/echo/extra", "extra.test")
            assert r.status == 200
            assert forwarded(r.body)[0].target == b"/echo/extra"
            assert r.header("connection") is None  # and the connection stays open

            # An invalid configuration is refused; the previous one keeps serving.
            bad = extra.replace('name = "extra"', 'name = "extra"\nunauthenticated = "sometimes"')
            write_config(tmp_path, server, config_extra(tmp_path, upstream.url, tiny.url, origins, bad))
            hup(proc, "reload refused")
            refusal = next(line for line in proc.lines if "reload refused" in line)
            assert f"{config}: $.apps[" in refusal and "].unauthenticated" in refusal, refusal
            assert kept.request("OPTIONS", "/echo/pre", "api.test", pre).status == 200
            assert kept.request("GET", "/echo/extra", "extra.test").status == 200
            with Client(proc.port) as fresh:
                assert fresh.request("GET", "/echo/extra", "extra.test").status == 200
    finally:
        assert proc.stop() == 0


def test_reload_keeps_the_keys_of_a_jwks_url_that_is_down(upstream: Upstream, tmp_path: Path) -> None:
    """BEHAVIOUR.md section 3: if a fetch fails, the keys already held keep
    working. A reload must not throw them away."""
    keys = Tiny()
    keys.serve_keys((ROT_1, "rot-1"))
    server = 'access_log = "off"'
    config = write_config(tmp_path, server, config_extra(tmp_path, upstream.url, keys.url))
    proc = EdgeProcess(config)
    tok = token(aud="rot-aud", key=ROT_1, kid="rot-1", iss=ROT_ISS)
    try:
        with Client(proc.port) as kept:

            def verified() -> bool:
                return kept.request("GET", "/echo/rot", "rot.test", [cookie(tok), *FETCH]).status == 200

            assert wait_for(verified, TIMEOUT), proc.stderr_text()
            keys.routes["/certs"] = (503, [], b"down\n")
            hup(proc, "reloaded")
            failed = reloads(proc, "keeping the keys already held")
            assert verified(), "the reload dropped the keys fetched before"
            assert wait_for(lambda: reloads(proc, "keeping the keys already held") > failed, TIMEOUT)
            assert verified(), "a failed fetch after the reload dropped the keys"
    finally:
        assert proc.stop() == 0
        keys.close()


# -- JWKS from a URL (second half: rotation); keep this test last ------------------------------


def test_jwks_url_rotation(edge: Edge) -> None:
    old = token(aud="rot-aud", key=ROT_1, kid="rot-1", iss=ROT_ISS)
    new = token(aud="rot-aud", key=ROT_2, kid="rot-2", iss=ROT_ISS)
    edge.tiny.serve_keys((ROT_2, "rot-2"), (ROT_1, "rot-1"))  # the issuer rotates, keeping the old key

    def verified() -> bool:
        r = edge.call("GET", "/echo/rotated", "rot.test", [cookie(new), *FETCH])
        assert r.status in (200, 401), r
        return r.status == 200

    # An unknown kid asks for one refetch, rate limited from the edge's last fetch.
    assert wait_for(verified, REFETCH_MIN_INTERVAL + 15, 0.25), edge.proc.stderr_text()
    r = edge.call("GET", "/echo/rotated-old", "rot.test", [cookie(old)])
    assert r.status == 200
    assert values(forwarded(r.body)[1], b"cf-access-jwt-assertion") == [old.encode()]
