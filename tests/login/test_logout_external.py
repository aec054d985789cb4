"""Logout of an external issuer's token that carries no identity_nonce, end to end.

A real `edge serve` on 127.0.0.1 with two external issuers (sharing one key
set, so their tokens differ only in `iss`) and no team, in front of the
recording upstream (tests/support/upstream_server.py). Tokens are minted by
tests/support/access_fixtures.py, an independent signer, against the real
clock. Each test uses sid values of its own: the edge is shared by the module
and its revocations outlive every test.

What a logout revokes (edge/access/revocation.py, sign_in_key): the sign-in
named by the issuer's `sid` when the token has no nonce (every token of it),
else that token alone; never another issuer's token with the same sid, nor
a token whose nonce has the sid's value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
from access_fixtures import DROP, ISS, default_jwks, mint
from conftest import EdgeProcess, write_config
from upstream_server import Upstream

TIMEOUT = 10.0  # seconds, on every client socket
ISS2 = "https://other-idp.example.net"
HOST = "app.test"
LOGOUT = "/cdn-cgi/access/logout"

CONFIG = """
[[issuers]]
iss = "{iss}"
jwks_file = "{jwks}"
algorithms = ["ES256"]

[[issuers]]
iss = "{iss2}"
jwks_file = "{jwks}"
algorithms = ["ES256"]

[[apps]]
name = "app"
domains = ["{host}"]
upstream = "{up}"
aud = "api-aud"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]
"""


class Edge:
    def __init__(self, process: EdgeProcess) -> None:
        self.process = process

    def call(self, path: str, token: str, navigate: bool = False) -> tuple[int, dict[str, str]]:
        """GET `path` on the app with `token` as the CF_Authorization cookie."""
        conn = HTTPConnection("127.0.0.1", self.process.port, timeout=TIMEOUT)
        try:
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", HOST)
            conn.putheader("Cookie", f"CF_Authorization={token}")
            if navigate:
                conn.putheader("Sec-Fetch-Mode", "navigate")
                conn.putheader("Accept", "text/html")
            conn.endheaders()
            r = conn.getresponse()
            r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()

    def status(self, token: str, navigate: bool = False) -> int:
        return self.call("/echo/x", token, navigate)[0]

    def logout(self, token: str) -> None:
        status, headers = self.call(LOGOUT, token, navigate=True)
        assert status == 200, status
        assert headers.get("set-cookie", "").startswith("CF_Authorization=;")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("logout-external")
    jwks = tmp / "jwks.json"
    jwks.write_bytes(default_jwks())
    with Upstream() as upstream:
        text = CONFIG.format(iss=ISS, iss2=ISS2, jwks=jwks, host=HOST, up=upstream.url)
        process = EdgeProcess(write_config(tmp, "", text))
        try:
            yield Edge(process)
        finally:
            process.stop()
        # A handler that raised would have been turned into a bare 500 and logged.
        assert "Traceback" not in process.stderr_text(), process.stderr_text()


def token(iss: str = ISS, email: str = "alice@example.com", **claims: Any) -> str:
    """An app token of `iss`, without identity_nonce unless given, valid for an hour."""
    now = time.time()
    claims.setdefault("identity_nonce", DROP)
    return mint(iss=iss, email=email, exp=now + 3600, iat=now - 5, nbf=now - 5, **claims).decode()


def test_logout_revokes_every_token_of_the_issuers_sid(edge: Edge) -> None:
    mine = token(sid="sid-1")
    sibling = token(sid="sid-1", email="alice.two@example.com")  # another token of the same sign-in
    other_issuer = token(ISS2, sid="sid-1")
    same_value_as_nonce = token(identity_nonce="sid-1")
    other_sid = token(sid="sid-2")
    everyone = (mine, sibling, other_issuer, same_value_as_nonce, other_sid)
    assert [edge.status(t) for t in everyone] == [200] * 5  # the control

    edge.logout(mine)

    assert edge.status(mine) == 401
    assert edge.status(mine, navigate=True) == 302
    assert edge.status(sibling) == 401
    assert [edge.status(t) for t in (other_issuer, same_value_as_nonce, other_sid)] == [200] * 3
    assert any("signed out alice@example.com (session: sid sid-1…)" in line for line in edge.process.lines)


def test_logout_without_nonce_or_sid_revokes_that_token(edge: Edge) -> None:
    mine = token()
    sibling = token(email="alice.three@example.com")  # nothing ties it to the same sign-in
    other_issuer = token(ISS2)
    assert [edge.status(t) for t in (mine, sibling, other_issuer)] == [200] * 3

    edge.logout(mine)

    assert edge.status(mine) == 401
    assert edge.status(mine, navigate=True) == 302
    assert [edge.status(t) for t in (sibling, other_issuer)] == [200, 200]
    assert any("(session: this token only, key s:" in line for line in edge.process.lines)


def test_logout_with_a_nonce_is_keyed_as_before(edge: Edge) -> None:
    """The nonce wins over sid, so revocations stored by earlier edges keep matching."""
    mine = token(identity_nonce="nonce-4", sid="sid-4")
    same_nonce_other_sid = token(identity_nonce="nonce-4", sid="sid-5", email="alice.four@example.com")
    same_sid_no_nonce = token(sid="sid-4")
    assert [edge.status(t) for t in (mine, same_nonce_other_sid, same_sid_no_nonce)] == [200] * 3

    edge.logout(mine)

    assert [edge.status(t) for t in (mine, same_nonce_other_sid, same_sid_no_nonce)] == [401, 401, 200]
