"""The server end to end: a real `edge serve` process, real loopback sockets.

Limits and timeouts are configured small so each behaviour shows in well under
a second; every wait is bounded, and no test asserts how long anything took.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BodyCountingUpstream as Upstream
from conftest import EdgeProcess, open_app_toml, self_signed_cert, wait_for
from procs import alive, children, listening_ports, serving_pids

from edge.runtime.accesslog import AccessRecord

Factory = Callable[..., EdgeProcess]
HEALTH = "/cdn-cgi/edge/health"
WAIT = 5.0  # seconds: the most any single expected event may take


# -- a tiny client ---------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return values[-1] if values else None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"


class Client:
    """A socket plus a read buffer, so pipelined responses can be split."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(WAIT)

    @classmethod
    def to(cls, port: int, host: str = "127.0.0.1") -> Client:
        return cls(socket.create_connection((host, port), timeout=WAIT))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, path: str = "/", host: str = "example.test", extra: str = "") -> Response:
        self.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        return self.response()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; buffered: {self.buf!r}")
        self.buf += chunk

    def response(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines)]
        length = 0 if head_only else int(dict(headers).get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(int(status), headers, body)

    def closed_by_peer(self, timeout: float = WAIT) -> bool:
        """True once the server closes (EOF or reset) with nothing more to
        read; False if it is still open after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(WAIT)
        assert data == b"", f"unexpected bytes: {data!r}"
        return True


# -- a tiny upstream, so request bodies are actually read --------------------------


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


def proxy_to(up: Upstream) -> str:
    return open_app_toml(up.url)


# -- keep-alive, pipelining, basics ----------------------------------------------------


def test_keep_alive_several_requests(edge_factory: Factory) -> None:
    edge = edge_factory()
    with Client.to(edge.port) as c:
        for path, status in [("/a", 404), (HEALTH, 200), ("/b?q=1", 404), (HEALTH, 200)]:
            r = c.get(path)
            assert r.status == status
            assert not r.closes
        assert r.body == b"ok\n"
        c.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.response(head_only=True)
        assert r.status == 404
        assert int(r.header("content-length") or 0) > 0
        assert c.get(HEALTH).status == 200


def test_pipelining_answers_in_order(edge_factory: Factory) -> None:
    edge = edge_factory()
    paths = ["/one", HEALTH, "/two", HEALTH, HEALTH, "/three"]
    with Client.to(edge.port) as c:
        c.send(b"".join(f"GET {p} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for p in paths))
        statuses = [c.response().status for _ in paths]
        assert statuses == [200 if p == HEALTH else 404 for p in paths]
        assert c.buf == b""
        assert c.get(HEALTH).status == 200


def test_date_header(edge_factory: Factory) -> None:
    edge = edge_factory()
    with Client.to(edge.port) as c:
        r = c.get("/")
    date = r.header("date")
    assert date is not None
    day = "(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
    month = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    assert re.fullmatch(rf"{day}, \d\d {month} \d{{4}} \d\d:\d\d:\d\d GMT", date)
    # IMF-fixdate of (about) now: a sanity check of the clock, not a timing.
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 60
    assert [k for k, _ in r.headers].count("date") == 1


def test_server_header(edge_factory: Factory) -> None:
    with Client.to(edge_factory().port) as c:
        assert c.get("/").header("server") == "edge"
    with Client.to(edge_factory('server_header = "acme/2 (test)"').port) as c:
        assert c.get("/").header("server") == "acme/2 (test)"


def test_empty_server_header_sends_none(edge_factory: Factory) -> None:
    edge = edge_factory('server_header = ""')
    with Client.to(edge.port) as c:
        for path in ("/", HEALTH):
            r = c.get(path)
            assert r.header("server") is None
        c.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host: an error response
        r = c.response()
        assert r.status == 400
        assert r.header("server") is None


# -- limits ------------------------------------------------------------------------------


def test_431_head_too_large(edge_factory: Factory) -> None:
    edge = edge_factory("max_header_bytes = 1024\nmax_target_bytes = 256")
    with Client.to(edge.port) as c:
        assert c.get("/", extra="X-Pad: " + "p" * 500 + "\r\n").status == 404  # fits
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 2000 + b"\r\n\r\n")
        r = c.response()
        assert r.status == 431
        assert r.closes
        assert c.closed_by_peer()


def test_431_many_small_headers(edge_factory: Factory) -> None:
    edge = edge_factory("max_header_bytes = 1024\nmax_target_bytes = 256")
    with Client.to(edge.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 300 + b"\r\n")
        assert c.response().status == 431


def test_414_target_too_long(edge_factory: Factory) -> None:
    edge = edge_factory("max_target_bytes = 64")
    with Client.to(edge.port) as c:
        assert c.get("/" + "a" * 63).status == 404  # exactly at the limit
    with Client.to(edge.port) as c:
        r = c.get("/" + "a" * 64)
        assert r.status == 414
        assert r.closes
        assert c.closed_by_peer()


def test_414_before_the_request_line_ends(edge_factory: Factory) -> None:
    # A request line that keeps coming is refused once it is past the limit,
    # not when (if ever) the head completes.
    edge = edge_factory("max_target_bytes = 64")
    with Client.to(edge.port) as c:
        c.send(b"GET /" + b"a" * 500)
        assert c.response().status == 414


def test_413_content_length_over_limit(edge_factory: Factory) -> None:
    edge = edge_factory("max_body_bytes = 100")
    body = b"x" * (512 * 1024)  # far more than the socket buffers hold
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
        # The server answers at once, half-closes and discards the upload it
        # did not want, so the client can finish sending and read the 413.
        c.send(body)
        r = c.response()
        assert r.status == 413
        assert r.closes
        assert c.closed_by_peer()


def test_413_content_length_at_limit_is_fine(edge_factory: Factory, upstream: Upstream) -> None:
    edge = edge_factory("max_body_bytes = 100", proxy_to(upstream))
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        r = c.response()
        assert (r.status, r.body) == (200, b"got 100 bytes\n")


def test_413_chunked_over_limit(edge_factory: Factory, upstream: Upstream) -> None:
    # Chunked bodies have no length up front: the limit applies as they are
    # read, which happens when the request is forwarded.
    edge = edge_factory("max_body_bytes = 100", proxy_to(upstream))
    chunk = b"x" * 4096
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):  # 256 KiB in all
            try:
                c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
        r = c.response()
        assert r.status == 413
        assert r.closes


def test_chunked_under_limit(edge_factory: Factory, upstream: Upstream) -> None:
    edge = edge_factory("max_body_bytes = 100", proxy_to(upstream))
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n" + b"y" * 50)
        c.send(b"\r\n32\r\n" + b"z" * 50 + b"\r\n0\r\n\r\n")
        r = c.response()
        assert (r.status, r.body) == (200, b"got 100 bytes\n")


def test_max_connections(edge_factory: Factory) -> None:
    edge = edge_factory("max_connections = 2")
    with Client.to(edge.port) as a, Client.to(edge.port) as b:
        # A completed request proves the server has registered each of them.
        assert a.get(HEALTH).status == 200
        assert b.get(HEALTH).status == 200
        with Client.to(edge.port) as extra:
            r = extra.response()
            assert r.status == 503
            assert r.closes
            assert extra.closed_by_peer()
        assert a.get(HEALTH).status == 200
    # Both gone: there is room again.
    assert wait_for(lambda: _health_ok(edge.port), timeout=WAIT)


def test_max_connections_extra_client_that_sends_first(edge_factory: Factory) -> None:
    # A real client writes its request at once; it must still read the 503
    # rather than a reset caused by its unread request.
    edge = edge_factory("max_connections = 1")
    with Client.to(edge.port) as a:
        assert a.get(HEALTH).status == 200
        for _ in range(5):
            with Client.to(edge.port) as extra:
                extra.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                assert extra.response().status == 503


def _health_ok(port: int) -> bool:
    try:
        with Client.to(port) as c:
            return c.get(HEALTH).status == 200
    except (OSError, EOFError):
        return False


# -- timeouts ------------------------------------------------------------------------------


def test_408_slowloris_head(edge_factory: Factory) -> None:
    # One byte every 0.1 s keeps the connection busy forever unless the head
    # has a deadline from its first byte.
    edge = edge_factory("header_timeout = 0.5")
    trickle = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Slow: " + b"s" * 1000
    with Client.to(edge.port) as c:
        c.sock.setblocking(False)
        deadline = time.monotonic() + 10 * WAIT
        for byte in trickle:
            assert time.monotonic() < deadline
            try:
                c.sock.send(bytes([byte]))
                got = c.sock.recv(65536)
            except BlockingIOError:
                time.sleep(0.1)
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            c.buf += got
            break
        else:
            pytest.fail("the server kept reading a head that never ends")
        c.sock.setblocking(True)
        c.sock.settimeout(WAIT)
        r = c.response()
        assert r.status == 408
        assert r.closes


def test_408_request_head_never_completes(edge_factory: Factory) -> None:
    edge = edge_factory("header_timeout = 0.3")
    with Client.to(edge.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        r = c.response()
        assert r.status == 408
        assert c.closed_by_peer()


def test_408_body_stalled(edge_factory: Factory, upstream: Upstream) -> None:
    edge = edge_factory("body_idle_timeout = 0.3", proxy_to(upstream))
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        r = c.response()
        assert r.status == 408
        assert r.closes
        assert c.closed_by_peer()


def test_early_answered_body_stalled_is_closed(edge_factory: Factory) -> None:
    # With nothing to forward to, the edge answers 404 before the body and
    # then drains it; a body that stalls is not waited for forever.
    edge = edge_factory("body_idle_timeout = 0.3")
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        assert c.response().status == 404
        assert c.closed_by_peer()


def test_slow_but_moving_upload_is_not_cut_off(edge_factory: Factory, upstream: Upstream) -> None:
    # 10 pieces, one every 0.2 s: twice the 1 s idle timeout in total, but
    # never idle for that long.
    edge = edge_factory("body_idle_timeout = 1.0", proxy_to(upstream))
    pieces = 10
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (pieces * 10))
        for _ in range(pieces):
            time.sleep(0.2)
            c.send(b"u" * 10)
        r = c.response()
        assert (r.status, r.body) == (200, b"got 100 bytes\n")
        assert not r.closes
        assert c.get(HEALTH).status == 200


def test_slow_but_moving_upload_answered_early_keeps_connection(edge_factory: Factory) -> None:
    edge = edge_factory("body_idle_timeout = 1.0")
    with Client.to(edge.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        assert c.response().status == 404
        for _ in range(10):
            time.sleep(0.2)
            c.send(b"u" * 10)
        # The drained body was not taken for the next request.
        assert c.get(HEALTH).status == 200


def test_keep_alive_idle_close(edge_factory: Factory) -> None:
    edge = edge_factory("keepalive_timeout = 0.3")
    with Client.to(edge.port) as c:
        assert c.get(HEALTH).status == 200
        assert c.closed_by_peer()


def test_keep_alive_timer_restarts_per_request(edge_factory: Factory) -> None:
    edge = edge_factory("keepalive_timeout = 1.0")
    with Client.to(edge.port) as c:
        for _ in range(4):  # 4 x 0.4 s: longer than one idle timeout in all
            assert c.get(HEALTH).status == 200
            time.sleep(0.4)
        assert c.get(HEALTH).status == 200


# -- access log ------------------------------------------------------------------------------

LOG_FIELDS = {"time", "client", "method", "host", "path", "status", "bytes_in", "bytes_out", "duration_ms"}


def test_access_log_to_file(edge_factory: Factory, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    edge = edge_factory(f'access_log = "{log_path}"')
    with Client.to(edge.port) as c:
        assert c.get("/a/b?x=1", host="app.example").status == 404
        assert c.get(HEALTH, host="app.example:8443").status == 200
        c.send(b"POST /form HTTP/1.1\r\nHost: b.example\r\nContent-Length: 5\r\n\r\nhello")
        assert c.response().status == 404
        port = c.sock.getsockname()[1]

    def lines() -> list[str]:
        return log_path.read_text().splitlines() if log_path.exists() else []

    assert wait_for(lambda: len(lines()) >= 3, timeout=WAIT)
    records = [json.loads(line) for line in lines()]
    assert len(records) == 3
    for rec in records:
        assert set(rec) >= LOG_FIELDS
        assert set(rec) <= set(AccessRecord.__struct_fields__)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
        assert rec["client"] == f"127.0.0.1:{port}"
        assert isinstance(rec["duration_ms"], float | int) and rec["duration_ms"] >= 0
        assert rec["bytes_out"] > 0
    a, health, form = records
    assert (a["method"], a["host"], a["path"]) == ("GET", "app.example", "/a/b?x=1")
    assert (a["status"], a["bytes_in"]) == (404, 0)
    assert (health["host"], health["path"], health["status"]) == ("app.example:8443", HEALTH, 200)
    assert (form["method"], form["host"], form["status"], form["bytes_in"]) == ("POST", "b.example", 404, 5)
    assert edge.stop() == 0


def test_access_log_to_stdout_and_errors_logged(edge_factory: Factory) -> None:
    edge = edge_factory('access_log = "stdout"\nmax_target_bytes = 64')
    with Client.to(edge.port) as c:
        assert c.get(HEALTH).status == 200
    with Client.to(edge.port) as c:
        assert c.get("/" + "a" * 100).status == 414
    assert wait_for(lambda: len(edge.stdout) >= 2, timeout=WAIT)
    records = [json.loads(line) for line in edge.stdout]
    assert [r["status"] for r in records] == [200, 414]
    assert all(set(r) >= LOG_FIELDS for r in records)


def test_access_log_off(edge_factory: Factory) -> None:
    edge = edge_factory('access_log = "off"')
    with Client.to(edge.port) as c:
        assert c.get(HEALTH).status == 200
    assert edge.stop() == 0
    assert edge.stdout == []


# -- TLS and IPv6 ------------------------------------------------------------------------------


def test_tls(edge_factory: Factory, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    edge = edge_factory(extra=f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n')
    assert any("https://127.0.0.1:" in line for line in edge.lines)
    ctx = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", edge.port), timeout=WAIT)
    with Client(ctx.wrap_socket(raw, server_hostname="localhost")) as c:
        tls = c.sock
        assert isinstance(tls, ssl.SSLSocket)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        assert c.get("/").status == 404
        r = c.get(HEALTH)
        assert (r.status, r.body) == (200, b"ok\n")


def test_tls_min_version_13_refuses_12(edge_factory: Factory, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    edge = edge_factory(extra=f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\nmin_version = "1.3"\n')
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", edge.port), timeout=WAIT) as raw, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_plain_http_to_tls_port_is_not_served(edge_factory: Factory, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    edge = edge_factory(extra=f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n')
    with Client.to(edge.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try:
            data = c.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"HTTP/1.1 404")
    with Client.to(edge.port):
        pass
    assert edge.proc.poll() is None


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1)")
def test_ipv6_listener(edge_factory: Factory, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    edge = edge_factory(f'listen = ["[::1]:0"]\naccess_log = "{log_path}"')
    assert any("http://[::1]:" in line for line in edge.lines)
    with Client.to(edge.port, host="::1") as c:
        assert c.get(HEALTH, host="[::1]").status == 200
        assert c.get("/").status == 404
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", edge.port), timeout=WAIT).close()
    assert wait_for(lambda: log_path.exists() and log_path.read_text().count("\n") >= 2, timeout=WAIT)
    first = json.loads(log_path.read_text().splitlines()[0])
    assert first["client"].startswith("::1:")
    assert first["host"] == "[::1]"


# -- graceful drain ------------------------------------------------------------------------------


def test_graceful_drain(edge_factory: Factory) -> None:
    edge = edge_factory("header_timeout = 5.0\ndrain_timeout = 10.0")
    with Client.to(edge.port) as arriving, Client.to(edge.port) as idle:
        assert arriving.get(HEALTH).status == 200
        arriving.send(b"GET /late HTTP/1.1\r\nHost: a\r\n")  # head still arriving
        assert idle.get(HEALTH).status == 200  # idle keep-alive from here on
        time.sleep(0.2)  # let the server read the partial head

        edge.signal(signal.SIGTERM)
        assert wait_for(lambda: "draining" in edge.stderr_text(), timeout=WAIT)
        assert idle.closed_by_peer()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", edge.port), timeout=WAIT).close()
        assert edge.proc.poll() is None  # still serving the request in progress

        arriving.send(b"X-Last: header\r\n\r\n")
        r = arriving.response()
        assert r.status == 404
        assert r.closes
        assert arriving.closed_by_peer()
    assert edge.proc.wait(WAIT) == 0
    assert "Traceback" not in edge.stderr_text()


def test_graceful_drain_waits_for_slow_request(edge_factory: Factory, upstream: Upstream) -> None:
    edge = edge_factory("drain_timeout = 10.0", proxy_to(upstream))
    with Client.to(edge.port) as c:
        c.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        assert upstream.started.wait(WAIT)
        edge.signal(signal.SIGTERM)
        r = c.response()
        assert (r.status, r.body) == (200, b"got 0 bytes\n")
        assert c.closed_by_peer()  # and not kept alive for another request
    assert edge.proc.wait(WAIT) == 0


def test_drain_timeout_aborts_what_remains(edge_factory: Factory) -> None:
    edge = edge_factory("header_timeout = 30.0\ndrain_timeout = 0.5")
    with Client.to(edge.port) as c:
        c.send(b"GET / HTTP/1.1\r\n")  # and never more
        time.sleep(0.2)
        edge.signal(signal.SIGTERM)
        assert c.closed_by_peer()
    assert edge.proc.wait(WAIT) == 0


def test_sigint_also_drains(edge_factory: Factory) -> None:
    edge = edge_factory()
    assert _health_ok(edge.port)
    edge.signal(signal.SIGINT)
    assert edge.proc.wait(WAIT) == 0
    assert "stopped" in edge.stderr_text()


# -- workers ------------------------------------------------------------------------------


def test_workers(edge_factory: Factory) -> None:
    edge = edge_factory("workers = 2\ndrain_timeout = 2.0")
    supervisor = edge.proc.pid
    assert wait_for(lambda: len(serving_pids(edge.lines)) == 2, timeout=WAIT)
    workers = children(supervisor)
    assert workers == serving_pids(edge.lines)
    # The supervisor holds every worker's listening socket (it never accepts
    # on them); each worker accepts on its own, all on the one port.
    for pid in (supervisor, *workers):
        assert listening_ports(pid) == {edge.port}
    for _ in range(20):
        assert _health_ok(edge.port)

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(children(supervisor) - {victim}) == 2, timeout=3 * WAIT)
    replacement = (children(supervisor) - workers).pop()
    assert wait_for(lambda: replacement in serving_pids(edge.lines), timeout=WAIT)
    assert listening_ports(replacement) == {edge.port}
    assert any(f"worker {victim} died (signal SIGKILL)" in line for line in edge.lines)
    for _ in range(20):
        assert _health_ok(edge.port)

    running = children(supervisor)
    edge.signal(signal.SIGTERM)
    assert edge.proc.wait(3 * WAIT) == 0
    assert wait_for(lambda: not any(alive(pid) for pid in running), timeout=WAIT)
    assert "Traceback" not in edge.stderr_text()


def test_workers_fixed_port(edge_factory: Factory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    edge = edge_factory(f'listen = ["127.0.0.1:{port}"]\nworkers = 2')
    assert edge.port == port
    assert wait_for(lambda: len(serving_pids(edge.lines)) == 2, timeout=WAIT)
    with Client.to(port) as c:
        for _ in range(5):
            assert c.get(HEALTH).status == 200
    assert edge.stop() == 0
