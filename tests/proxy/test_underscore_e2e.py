"""Header names an application server reads as the edge's own, end to end.

A WSGI server (the standard library's wsgiref, in a thread on 127.0.0.1) is
the upstream: like CGI, PHP and Rack it maps `Cf_Access_Authenticated_User_Email`
and `Cf-Access-Authenticated-User-Email` to one environ key, and joins the
values of both with a comma. Its app answers with the environ it got, as
JSON, so the test sees exactly what the application would see. Two edges
serve the same apps: one with the defaults (every client name with `_`
dropped) and one with `[server] underscores_in_headers = true` (an innocent
name with `_` passes; the look-alikes of the edge's own still do not).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from access_fixtures import ISS, default_jwks, mint
from conftest import EdgeProcess, wait_for, write_config

TIMEOUT = 10.0  # seconds, on every client socket: far below any edge timeout that could answer instead
AUD = "wsgi-aud"
EMAIL = "alice@example.com"
# The environ keys that carry the edge's own fields (and the service token's).
OWNED = ("HTTP_CF_ACCESS_", "HTTP_X_FORWARDED_")
# What a hostile client adds to every request: each name is read by a WSGI
# server as one of the edge's own fields (or the service token's).
SPOOFS = [
    ("Cf_Access_Authenticated_User_Email", "mallory@example.com"),
    ("CF_ACCESS_JWT_ASSERTION", "forged.jwt.value"),
    ("cf-access_jwt-assertion", "forged.again"),
    ("Cf_Access_Client_Id", "ci.example"),
    ("Cf_Access_Client_Secret", "guessed"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("x-forwarded_host", "evil.test"),
    ("X_Forwarded_Proto", "https"),
]
INNOCENT = ("X_Custom_Thing", "innocent")


def environ_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    seen = {k: v for k, v in environ.items() if isinstance(v, str)}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest treats stray stderr as noise, not as a failure; keep it clean


@pytest.fixture(scope="module")
def wsgi() -> Iterator[str]:
    server: WSGIServer = make_server("127.0.0.1", 0, environ_app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def apps_toml(jwks: Path, upstream: str) -> str:
    return f"""
[[issuers]]
iss = "{ISS}"
jwks_file = "{jwks}"
algorithms = ["ES256"]
leeway = 0

[[apps]]
name = "protected"
domains = ["app.test"]
upstream = "{upstream}"
aud = "{AUD}"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]

[[apps]]
name = "public"
domains = ["open.test"]
upstream = "{upstream}"
[[apps.policies]]
name = "anyone"
action = "bypass"
include = [{{ everyone = true }}]
"""


@pytest.fixture(scope="module", params=[False, True], ids=["default", "underscores_in_headers"])
def edge(
    request: pytest.FixtureRequest, wsgi: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    keep: bool = request.param
    directory = tmp_path_factory.mktemp("underscore")
    jwks = directory / "jwks.json"
    jwks.write_bytes(default_jwks())
    server = "underscores_in_headers = true" if keep else ""
    proc = EdgeProcess(write_config(directory, server, apps_toml(jwks, wsgi)))
    try:
        assert proc.port, proc.stderr_text()  # EdgeProcess returns on exit too
        yield proc, keep
    finally:
        proc.stop()


def token() -> str:
    now = time.time()
    return mint("ES256", aud=[AUD], email=EMAIL, exp=now + 600, iat=now - 5, nbf=now - 5).decode()


def environ_of(port: int, host: str, headers: list[tuple[str, str]]) -> dict[str, str]:
    """GET / through the edge; the environ the WSGI app saw."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body
    seen: dict[str, str] = json.loads(body)
    return seen


def owned(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(OWNED)}


EDGE_FORWARDED = {
    "HTTP_X_FORWARDED_FOR": "127.0.0.1",
    "HTTP_X_FORWARDED_PROTO": "http",
}


def test_protected_app_sees_only_the_edges_values(edge: tuple[EdgeProcess, bool]) -> None:
    proc, keep = edge
    jwt = token()
    environ = environ_of(proc.port, "app.test", [("Cookie", f"CF_Authorization={jwt}"), *SPOOFS, INNOCENT])
    assert owned(environ) == {
        "HTTP_CF_ACCESS_AUTHENTICATED_USER_EMAIL": EMAIL,
        "HTTP_CF_ACCESS_JWT_ASSERTION": jwt,
        **EDGE_FORWARDED,
        "HTTP_X_FORWARDED_HOST": "app.test",
    }
    assert environ.get("HTTP_X_CUSTOM_THING") == ("innocent" if keep else None)


def test_bypass_app_sees_no_identity_at_all(edge: tuple[EdgeProcess, bool]) -> None:
    proc, keep = edge
    environ = environ_of(proc.port, "open.test", [*SPOOFS, INNOCENT])
    assert owned(environ) == {**EDGE_FORWARDED, "HTTP_X_FORWARDED_HOST": "open.test"}
    assert environ.get("HTTP_X_CUSTOM_THING") == ("innocent" if keep else None)


def test_hyphen_spelling_of_an_innocent_name_passes(edge: tuple[EdgeProcess, bool]) -> None:
    # The control: the WSGI server does report ordinary fields, so an absent
    # key above means the edge dropped the field, not that wsgiref did.
    proc, _ = edge
    environ = environ_of(proc.port, "open.test", [("X-Custom-Thing", "plain")])
    assert environ["HTTP_X_CUSTOM_THING"] == "plain"


def test_option_follows_a_sighup_reload(wsgi: str, tmp_path: Path) -> None:
    # Not a restart-only key: a reload switches it for the next request.
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(default_jwks())
    proc = EdgeProcess(write_config(tmp_path, "", apps_toml(jwks, wsgi)))
    try:
        assert proc.port, proc.stderr_text()
        assert "HTTP_X_CUSTOM_THING" not in environ_of(proc.port, "open.test", [INNOCENT])
        write_config(tmp_path, "underscores_in_headers = true", apps_toml(jwks, wsgi))
        seen = proc.stderr_text().count("reloaded")
        proc.signal(signal.SIGHUP)
        assert wait_for(lambda: proc.stderr_text().count("reloaded") > seen, TIMEOUT), proc.stderr_text()
        environ = environ_of(proc.port, "open.test", [*SPOOFS, INNOCENT])
        assert environ["HTTP_X_CUSTOM_THING"] == "innocent"
        assert owned(environ) == {**EDGE_FORWARDED, "HTTP_X_FORWARDED_HOST": "open.test"}
    finally:
        proc.stop()
