"""Shared fixtures: a real `edge serve` process on an ephemeral loopback port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

# Support modules whose helpers assert (moved out of test modules): pytest
# rewrites their asserts too, so a failure shows the values compared.
pytest.register_assert_rewrite("h11_reference", "login_site", "protocol_harness", "raw_client")

ROOT = Path(__file__).resolve().parent.parent
# The port of the first address; `(?=,|$)` skips the colons inside "[::1]".
READY_RE = re.compile(r"(?:listening on|workers on) .*?:(\d+)(?=,|$)")


class EdgeProcess:
    """`python -m edge serve -c CONFIG`, with its stderr collected."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "serve", "-c", str(config_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.stdout: list[bytes] = []
        self._ready = threading.Event()
        self.port = 0
        # Each reader closes its pipe at EOF; stop() waits for them, so no
        # pipe is left for the garbage collector (a ResourceWarning).
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if not self._ready.wait(15):
            self.stop()
            raise RuntimeError("edge did not start:\n" + "\n".join(self.lines))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                m = READY_RE.search(line)
                if m and not self._ready.is_set():
                    self.port = int(m.group(1))
                    self._ready.set()
        self._ready.set()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for raw in self.proc.stdout:
                self.stdout.append(raw)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        return code

    def stderr_text(self) -> str:
        return "\n".join(self.lines)

    def connect(self, timeout: float = 5) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def write_config(tmp: Path, server: str = "", extra: str = "") -> Path:
    """A config listening on an ephemeral loopback port; `server` adds
    lines to [server] (later keys override nothing: do not repeat listen)."""
    path = tmp / "edge.toml"
    lines = ["[server]"]
    if "listen" not in server:
        lines.append('listen = ["127.0.0.1:0"]')
    if "access_log" not in server:
        lines.append('access_log = "off"')
    lines.append(server)
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator[object]:
    started: list[EdgeProcess] = []

    def start(server: str = "", extra: str = "", env: dict[str, str] | None = None) -> EdgeProcess:
        sub = tmp_path / f"edge{len(started)}"
        sub.mkdir()
        proc = EdgeProcess(write_config(sub, server, extra), env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free right now (all held until all are chosen),
    for a server whose address must be known before it starts (a team URL, a
    demo origin). Another process could take one in between; that server then
    fails to start, loudly, rather than a test passing wrongly."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the peer closes or `timeout` passes with nothing new."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def self_signed_cert(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A fresh self-signed certificate for `host`, 127.0.0.1 and ::1; returns
    (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName(host),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


OPEN_DOMAINS = ("a", "app.test", "localhost", "127.0.0.1")


def open_app_toml(upstream: str, domains: tuple[str, ...] = OPEN_DOMAINS, name: str = "open") -> str:
    """An application that lets everyone through to `upstream` (a bypass
    policy): for tests of the server and proxy rather than of the decision."""
    listed = ", ".join(f'"{d}"' for d in domains)
    return (
        f'[[apps]]\nname = "{name}"\ndomains = [{listed}]\nupstream = "{upstream}"\n'
        '[[apps.policies]]\nname = "public"\naction = "bypass"\ninclude = [{ everyone = true }]\n'
    )


def allow_app_toml(
    name: str,
    domain: str,
    upstream: str,
    include: str = '{ email_domains = ["example.com"] }',
    policy: str = "staff",
) -> str:
    """An application with one allow policy (`include` is a TOML inline table)."""
    return (
        f'\n[[apps]]\nname = "{name}"\ndomains = ["{domain}"]\nupstream = "{upstream}"\n'
        f'[[apps.policies]]\nname = "{policy}"\naction = "allow"\ninclude = [{include}]\n'
    )


class BodyCountingUpstream:
    """An HTTP/1.1 origin in threads, so request bodies are really read: reads
    each body whole, then answers 200 ``got N bytes``; a path starting /slow
    waits SLOW s first. Counts requests."""

    SLOW = 1.0

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.started = threading.Event()  # set when a /slow request arrives
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for sock in [self.sock, *self.conns]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        target, size = b"", 0
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Request):
                    target, size = event.target, 0
                    self.requests += 1
                    if target.startswith(b"/slow"):
                        self.started.set()
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    if target.startswith(b"/slow"):
                        time.sleep(self.SLOW)
                    body = b"got %d bytes\n" % size
                    head = h11.Response(status_code=200, headers=[("content-length", str(len(body)))])
                    sock.sendall(
                        conn.send(head) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                    )
                    if conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                else:
                    return
        except (OSError, h11.ProtocolError):
            return
