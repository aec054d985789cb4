"""Client certificates end to end: a real `edge serve` with [server.tls]
client_ca, real TLS sockets from Python's ssl client (with and without a
client certificate, all generated in the test), a real upstream.

What is asserted: a good certificate is forwarded; no certificate connects
and is refused by policy (403, or 401 where a login is still missing); a
certificate from another CA, or an expired one, fails the handshake: the
connection ends without an HTTP answer (TLS 1.2 and 1.3), nothing reaches
the upstream, and the same client with a good certificate is served; the CN belongs to
its connection (interleaved keep-alive connections with different
certificates never see each other's)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from access_fixtures import AUD, ISS, default_jwks, mint
from certs import ClientCerts, Issued, client_certs
from conftest import EdgeProcess, wait_for, write_config
from upstream_server import Upstream

WAIT = 10.0  # seconds: a bound on every socket operation, never an expectation


@dataclass
class Setup:
    edge: EdgeProcess
    certs: ClientCerts
    upstream: Upstream
    log: Path


def config(directory: Path, certs: ClientCerts, upstream: str) -> str:
    jwks = directory / "jwks.json"
    jwks.write_bytes(default_jwks())
    return f"""
[server.tls]
cert = "{certs.server.cert}"
key = "{certs.server.key}"
client_ca = "{certs.client_ca.cert_path}"

[[issuers]]
iss = "{ISS}"
jwks_file = "{jwks}"
algorithms = ["ES256"]

[[apps]]
name = "svc"
domains = ["svc.test"]
upstream = "{upstream}"
[[apps.policies]]
name = "machines"
action = "service_auth"
include = [{{ common_name = ["svc-a"] }}]

[[apps]]
name = "api"
domains = ["api.test"]
upstream = "{upstream}"
aud = "{AUD}"
[[apps.policies]]
name = "staff on a managed device"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]
require = [{{ valid_certificate = true }}]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("mtls")
    certs = client_certs(directory / "certs")
    log = directory / "access.log"
    with Upstream() as upstream:
        path = write_config(directory, f'access_log = "{log}"', config(directory, certs, upstream.url))
        edge = EdgeProcess(path)
        try:
            yield Setup(edge, certs, upstream, log)
        finally:
            edge.stop()


def context(certs: ClientCerts, client: Issued | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.server_ca.cert_path))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def connection(s: Setup, client: Issued | None) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        "127.0.0.1", s.edge.port, timeout=WAIT, context=context(s.certs, client)
    )


def get(
    conn: http.client.HTTPSConnection, host: str, path: str, headers: dict[str, str] | None = None
) -> int:
    conn.request("GET", path, headers={"Host": host, "Accept": "application/json", **(headers or {})})
    response = conn.getresponse()
    response.read()
    return response.status


def status(
    s: Setup, client: Issued | None, host: str, path: str, headers: dict[str, str] | None = None
) -> int:
    conn = connection(s, client)
    try:
        return get(conn, host, path, headers)
    finally:
        conn.close()


def upstream_saw(s: Setup, path: str) -> bool:
    return ("request", (b"GET", path.encode())) in s.upstream.events


def user_token() -> str:
    now = time.time()
    return mint(iat=now - 10, nbf=now - 10, exp=now + 600).decode()


# -- service_auth on the certificate's CN: a machine with no token -----------------


def test_machine_certificate_is_forwarded_without_a_token(setup: Setup) -> None:
    assert status(setup, setup.certs.machine, "svc.test", "/echo/machine") == 200
    assert upstream_saw(setup, "/echo/machine")


def test_no_certificate_connects_and_is_refused_by_policy(setup: Setup) -> None:
    assert status(setup, None, "svc.test", "/echo/no-cert") == 403
    assert not upstream_saw(setup, "/echo/no-cert")


def test_a_good_certificate_with_another_cn_is_refused(setup: Setup) -> None:
    assert status(setup, setup.certs.alice, "svc.test", "/echo/alice") == 403
    assert status(setup, setup.certs.no_cn, "svc.test", "/echo/no-cn") == 403
    assert not upstream_saw(setup, "/echo/alice")
    assert not upstream_saw(setup, "/echo/no-cn")


def test_headers_cannot_stand_in_for_a_certificate(setup: Setup) -> None:
    spoofed = {
        "X-Client-Cert-CN": "svc-a",
        "X-SSL-Client-S-DN": "CN=svc-a",
        "Ssl-Client-Verify": "SUCCESS",
        "Cf-Client-Cert-Common-Name": "svc-a",
    }
    assert status(setup, None, "svc.test", "/echo/spoofed", spoofed) == 403
    assert status(setup, setup.certs.alice, "svc.test", "/echo/spoofed-alice", spoofed) == 403


# -- a certificate that does not verify: the handshake fails -------------------------
# OpenSSL fails the handshake on a presented certificate it cannot verify
# (CERT_OPTIONAL only forgives a missing one), and the event loop's TLS layer
# then closes the connection without sending the alert OpenSSL prepared. So
# the client sees the connection end: no HTTP answer at all, never a 200.

TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def refused(s: Setup, client: Issued, path: str, version: ssl.TLSVersion) -> bool:
    """Whether the connection ended without a byte of HTTP. With TLS 1.2 the
    client's handshake fails; with TLS 1.3 its side of the handshake is over
    before the server reads its certificate, so the end comes at the first read."""
    ctx = context(s.certs, client)
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", s.edge.port), timeout=WAIT) as raw:
        try:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
        except ssl.SSLError:
            return version == ssl.TLSVersion.TLSv1_2
        with tls:
            try:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: svc.test\r\n\r\n".encode())
                answer = tls.recv(65536)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                answer = b""
    assert answer == b"", f"the edge answered a client whose certificate does not verify: {answer!r}"
    return version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_certificate_from_another_ca_fails_the_handshake(setup: Setup, version: ssl.TLSVersion) -> None:
    # Same CN as a good certificate ("alice"): only the chain differs.
    path = f"/echo/other-ca-{version.name}"
    assert refused(setup, setup.certs.other_ca, path, version)
    assert not upstream_saw(setup, path)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_expired_certificate_fails_the_handshake(setup: Setup, version: ssl.TLSVersion) -> None:
    path = f"/echo/expired-{version.name}"
    assert refused(setup, setup.certs.expired, path, version)
    assert not upstream_saw(setup, path)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_the_same_client_with_a_good_certificate_is_served(setup: Setup, version: ssl.TLSVersion) -> None:
    """The control for the two above: same versions, same path, a good one."""
    ctx = context(setup.certs, setup.certs.machine)
    ctx.minimum_version = ctx.maximum_version = version
    conn = http.client.HTTPSConnection("127.0.0.1", setup.edge.port, timeout=WAIT, context=ctx)
    try:
        assert get(conn, "svc.test", f"/echo/good-{version.name}") == 200
    finally:
        conn.close()


def test_a_failed_handshake_leaves_the_listener_serving(setup: Setup) -> None:
    for _ in range(3):
        assert refused(setup, setup.certs.other_ca, "/echo/again", ssl.TLSVersion.TLSv1_3)
    assert status(setup, setup.certs.machine, "svc.test", "/echo/after-failures") == 200
    assert "Traceback" not in setup.edge.stderr_text()


# -- allow: identity and a certificate together ---------------------------------------


def test_allow_policy_requiring_a_certificate(setup: Setup) -> None:
    signed_in = {"Cookie": f"CF_Authorization={user_token()}"}
    assert status(setup, setup.certs.alice, "api.test", "/echo/user-cert", signed_in) == 200
    assert status(setup, None, "api.test", "/echo/user-no-cert", signed_in) == 403
    # A certificate is not a login.
    assert status(setup, setup.certs.alice, "api.test", "/echo/cert-no-user") == 401
    assert upstream_saw(setup, "/echo/user-cert")
    assert not upstream_saw(setup, "/echo/user-no-cert")
    assert not upstream_saw(setup, "/echo/cert-no-user")


# -- per connection ----------------------------------------------------------------


def test_each_keep_alive_connection_keeps_its_own_certificate(setup: Setup) -> None:
    machine, anonymous, alice = (
        connection(setup, setup.certs.machine),
        connection(setup, None),
        connection(setup, setup.certs.alice),
    )
    try:
        for round_ in range(3):
            assert get(machine, "svc.test", f"/echo/m{round_}") == 200
            assert get(anonymous, "svc.test", f"/echo/n{round_}") == 403
            assert get(alice, "svc.test", f"/echo/a{round_}") == 403
            assert get(machine, "svc.test", f"/echo/m{round_}b") == 200
    finally:
        for conn in (machine, anonymous, alice):
            conn.close()


def test_access_log_names_the_policy(setup: Setup) -> None:
    assert status(setup, setup.certs.machine, "svc.test", "/echo/logged") == 200
    found: list[dict[str, object]] = []

    def logged() -> bool:
        if setup.log.exists():
            records = [json.loads(line) for line in setup.log.read_text().split("\n")[:-1] if line]
            found[:] = [r for r in records if r.get("path") == "/echo/logged"]
        return bool(found)

    assert wait_for(logged, WAIT)
    assert "machines" in str(found[0].get("decision"))


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_resumed_session_keeps_its_certificate(setup: Setup, version: ssl.TLSVersion) -> None:
    """A resumed TLS session carries the certificate verified when it began
    (OpenSSL keeps it with the session), so the CN is read the same way."""
    ctx = context(setup.certs, setup.certs.machine)
    ctx.minimum_version = ctx.maximum_version = version
    session = None
    reused = []
    for i in range(2):
        with (
            socket.create_connection(("127.0.0.1", setup.edge.port), timeout=WAIT) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            path = f"/echo/resumed-{version.name}-{i}"
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert upstream_saw(setup, path)
            reused.append(tls.session_reused)
            session = tls.session
    assert reused == [False, True]
