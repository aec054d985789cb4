"""Failing upstreams, slow clients and the logs they cause: real sockets, a real
`edge serve` process, fault upstreams of the test's own on 127.0.0.1.

Every test is bounded in count (a few hundred connections at most) and in
time (each client's own deadline, far below the edge's timeouts); none
asserts a timing beyond "answered before that deadline".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import EdgeProcess, read_all, wait_for, write_config
from procs import vm_kib
from proxy_edge import build, closed_port, proxy_toml
from upstream_harness import HOST, Recorder, Transport
from upstream_server import KIB, MIB, Upstream

from edge.http.flow import READ_SIZE, WriteBatch
from edge.proxy.upstream import Target, UpstreamConnection

CLIENTS = 200  # concurrent requests per fault
DEADLINE = 5.0  # seconds each client waits: far below the edge's 60 s timeouts
# What the stderr of an edge must never show: an error nobody handled.
UNHANDLED = ("Task exception was never retrieved", "Traceback", "Exception in callback")


# -- a fault upstream ----------------------------------------------------------------


class FaultUpstream:
    """A listener that misbehaves on every connection it accepts, in one of
    three ways (`mode`):

    reset        accept, then close at once with a TCP reset (SO_LINGER 0)
    close        accept, then close at once cleanly (FIN)
    partial      read the first bytes of the request head, then close
    """

    BACKLOG = 1024  # the test's bursts must not overflow the accept queue (a hang, not a fault)
    PARTIAL = 10  # bytes of the head read before closing

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=self.BACKLOG)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                self._misbehave(conn)

    def _misbehave(self, conn: socket.socket) -> None:
        if self.mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif self.mode == "partial":
            conn.settimeout(DEADLINE)
            with contextlib.suppress(OSError):
                conn.recv(self.PARTIAL)


@pytest.fixture
def fault_upstream() -> Iterator[Callable[[str], FaultUpstream]]:
    made: list[FaultUpstream] = []

    def make(mode: str) -> FaultUpstream:
        up = FaultUpstream(mode)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


def start_edge(tmp_path: Path, upstream: str, server: str = "", **proxy: float | str) -> EdgeProcess:
    return EdgeProcess(write_config(tmp_path, server=server, extra=proxy_toml(upstream, **proxy)))


# -- the race, driven by hand ---------------------------------------------------------


class ClosedTransport(Transport):
    """As uvloop's transport behaves once its handle is closed: a write raises."""

    def write(self, data: bytes) -> None:
        if self.aborted:
            raise RuntimeError("unable to perform operation: the handler is closed")
        super().write(data)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (None, "upstream closed the connection"),
        (ConnectionResetError(104, "Connection reset by peer"), "upstream reset the connection"),
    ],
)
def test_connection_lost_before_its_exchange_is_attached(exc: Exception | None, message: str) -> None:
    """An upstream that closes right after accepting: connection_lost can
    come before the connecting task attaches its exchange. The exchange must
    still hear of it, and nothing may be written to the dead transport."""
    conn = UpstreamConnection(
        Target("http://127.0.0.1:9"), lambda _: None, memoryview(bytearray(READ_SIZE)), WriteBatch(None)
    )
    transport = ClosedTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.eof_received()
    transport.aborted = True
    conn.connection_lost(exc)
    lost = conn.attach(Recorder())
    assert lost is not None and (lost.status, str(lost)) == (502, message)
    assert conn.exchange is None
    conn.send_request(b"GET", b"/", HOST, chunked=False, upgrade=False)  # does not raise
    conn.send_body(b"late")
    assert transport.written == b""


# -- concurrent clients --------------------------------------------------------------


async def _status_of(port: int, request: bytes) -> int | str:
    """The status of the one response on a fresh connection, or what went
    wrong instead (a reset, an empty close, the test's own deadline)."""
    try:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except TimeoutError:
        return "no answer within the deadline"
    except ConnectionError as exc:
        return type(exc).__name__
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else f"bad status line {line!r}"


def statuses(port: int, request: bytes, count: int = CLIENTS) -> list[int | str]:
    async def run() -> list[int | str]:
        return list(await asyncio.gather(*(_status_of(port, request) for _ in range(count))))

    return asyncio.run(run())


# -- 1. an upstream that fails right after accepting ---------------------------------


@pytest.mark.parametrize("mode", ["reset", "close", "partial"])
def test_upstream_failing_at_accept_is_502_at_once(
    tmp_path: Path, fault_upstream: Callable[[str], FaultUpstream], mode: str
) -> None:
    up = fault_upstream(mode)
    edge = start_edge(tmp_path, up.url)
    try:
        got = statuses(edge.port, build("GET", "/"))
        wrong = [s for s in got if s != 502]
        assert not wrong, f"{len(wrong)} of {len(got)} clients got no 502: {sorted(set(map(str, wrong)))}"
        # A POST whose body must wait for the upstream connection: the same.
        post = build("POST", "/", [("Content-Length", "4")], b"body")
        assert statuses(edge.port, post, 20) == [502] * 20
    finally:
        edge.stop()
    text = edge.stderr_text()
    assert not [marker for marker in UNHANDLED if marker in text], text[-3000:]


# -- 2. memory per slow-reading client -------------------------------------------------

SLOW_CLIENTS = 200
DOWNLOAD = 16 * MIB  # per client: far more than any buffer, so only flow control bounds memory
SMALL_RCVBUF = 4 * KIB  # bytes: the client's kernel takes little, so the edge must hold back
HOLD = 4.0  # seconds the slow readers are held open (bounded; well below the edge's timeouts)
SLOW_READ = 1 * KIB  # bytes a slow reader takes per turn
RSS_LIMIT = 40 * MIB  # growth of the edge's peak RSS for all the slow readers together


class HeldReaders:
    """An edge before a download upstream, and the clients a test holds open
    (closed, and the edge stopped, on exit); `growth` is its peak RSS growth
    since the warm-up."""

    def __init__(self, tmp_path: Path, upstream: Upstream, clients: int) -> None:
        self.edge = start_edge(tmp_path, upstream.url, server=f"max_connections = {4 * clients}")
        self.socks: list[socket.socket] = []
        assert statuses(self.edge.port, build("GET", "/download?size=100000"), 20) == [200] * 20  # warm up
        self.before = self.peak()
        self.request = build("GET", f"/download?size={DOWNLOAD}")

    def peak(self) -> int:
        return vm_kib(self.edge.proc.pid, "VmHWM") * KIB

    def growth(self) -> int:
        return self.peak() - self.before

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.edge.stop()


@contextlib.contextmanager
def held_readers(tmp_path: Path, clients: int) -> Iterator[HeldReaders]:
    with Upstream() as upstream:
        held = HeldReaders(tmp_path, upstream, clients)
        try:
            yield held
        finally:
            held.close()


def test_slow_readers_cost_bounded_memory(tmp_path: Path) -> None:
    """200 clients with a tiny receive buffer ask for 16 MiB each; half read
    a little now and then, half not at all. The edge may hold about one
    read plus the write high-water mark per client, not the upstream's
    whole burst: its peak RSS grows by less than 40 MiB for all of them."""
    with held_readers(tmp_path, SLOW_CLIENTS) as held:
        socks = held.socks
        for _ in range(SLOW_CLIENTS):
            sock = socket.socket()
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF
            )  # before connect: it sets the window
            sock.settimeout(DEADLINE)
            socks.append(sock)
            sock.connect(("127.0.0.1", held.edge.port))
            sock.sendall(held.request)
        first = [sock.recv(SLOW_READ) for sock in socks]  # every response has started
        assert all(data.startswith(b"HTTP/1.1 200 ") for data in first)
        for sock in socks:
            sock.setblocking(False)
        got = 0
        end = time.monotonic() + HOLD
        while time.monotonic() < end:
            for sock in socks[::2]:
                with contextlib.suppress(BlockingIOError):
                    got += len(sock.recv(SLOW_READ))
            time.sleep(0.05)
        growth = held.growth()
        assert got > 0  # the slow half did move
        assert growth < RSS_LIMIT, (
            f"edge peak RSS grew by {growth / MIB:.1f} MiB for {SLOW_CLIENTS} slow readers"
        )


FAST_CLIENTS = 128
FAST_FIRST = 10 * MIB  # bytes each takes at full speed before it stops reading (past 8 MiB)
FAST_LIMIT = FAST_CLIENTS * 128 * KIB  # peak RSS growth for all: the README's bound per client (2-4 MiB seen)


def test_readers_that_stall_after_a_fast_start_cost_bounded_memory(tmp_path: Path) -> None:
    """128 clients each take 10 MiB as fast as they can, then stop reading,
    all held open together: however fast a client was, it costs no more
    than one READ_SIZE read plus the write high-water mark (128 KiB), the
    README's bound. (That reads never grow is test_read_size's.)"""
    with held_readers(tmp_path, FAST_CLIENTS) as held:
        for _ in range(FAST_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", held.edge.port), timeout=DEADLINE)
            held.socks.append(sock)
            sock.sendall(held.request)
            got = 0
            while got < FAST_FIRST:
                data = sock.recv(1 * MIB)
                assert data, "the edge closed a fast reader"
                got += len(data)
        time.sleep(0.5)  # the edge fills what each stopped client's socket does not take
        growth = held.growth()
        assert growth < FAST_LIMIT, (
            f"edge peak RSS grew by {growth / MIB:.1f} MiB for {FAST_CLIENTS} readers"
            " stalled after a fast start"
        )


# -- 3. logs under faults -------------------------------------------------------------------

FAILURES = 60  # requests driven into a failing upstream
SUMMARY_RE = re.compile(
    r"(upstream|listener) (\S+): (\d+) (?:requests failed|connections shed) in the last \d+ s \((.*)\)$"
)


def fault_lines(edge: EdgeProcess, subject: str) -> list[str]:
    return [line for line in edge.lines if f" edge.faults: {subject}: " in line]


def summed(lines: list[str]) -> dict[str, int]:
    """The counts of every summary line, added up by kind."""
    counts: dict[str, int] = {}
    for line in lines:
        m = SUMMARY_RE.search(line)
        if m is None:
            continue
        total = 0
        for part in m.group(4).split(", "):
            kind, _, n = part.rpartition(": ")
            counts[kind] = counts.get(kind, 0) + int(n)
            total += int(n)
        assert total == int(m.group(3)), line
    return counts


def test_upstream_failures_are_logged_once_then_counted(tmp_path: Path) -> None:
    port = closed_port()
    subject = f"upstream http://127.0.0.1:{port}"
    edge = start_edge(tmp_path, f"http://127.0.0.1:{port}")
    try:
        assert statuses(edge.port, build("GET", "/"), FAILURES) == [502] * FAILURES
        # The first failure is in the log at once, not at the end of its interval.
        assert wait_for(lambda: fault_lines(edge, subject), DEADLINE)
        first = fault_lines(edge, subject)[0]
        assert "cannot connect" in first and "answered 502" in first, first
    finally:
        edge.stop()
    lines = fault_lines(edge, subject)
    # One line at once, then a few summaries (one per 10 s): never one per request.
    assert 2 <= len(lines) < FAILURES // 10, "\n".join(lines)
    assert summed(lines) == {"connect refused": FAILURES}
    assert not [line for line in edge.lines if "edge.proxy" in line], "a line per request is still logged"


def test_failures_of_one_upstream_are_counted_by_kind(tmp_path: Path) -> None:
    with Upstream() as upstream:
        subject = f"upstream {upstream.url}"
        edge = start_edge(tmp_path, upstream.url)
        try:
            assert statuses(edge.port, build("GET", "/reset-head"), 10) == [502] * 10
            assert statuses(edge.port, build("GET", "/garbage"), 5) == [502] * 5
        finally:
            edge.stop()
    lines = fault_lines(edge, subject)
    assert len(lines) < 5, "\n".join(lines)
    assert summed(lines) == {"reset": 10, "invalid response": 5}


def test_shedding_at_max_connections_is_logged(tmp_path: Path) -> None:
    limit, shed = 4, 12
    edge = start_edge(tmp_path, "http://127.0.0.1:9", server=f"max_connections = {limit}")
    subject = f"listener 127.0.0.1:{edge.port}"
    held = [edge.connect() for _ in range(limit)]
    try:
        for sock in held:  # each is registered before the next connection is accepted
            sock.sendall(b"GET /cdn-cgi/edge/health HTTP/1.1\r\nHost: a\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        refused = []
        for _ in range(shed):
            with edge.connect() as sock:
                refused.append(read_all(sock, DEADLINE)[:12])
        assert refused == [b"HTTP/1.1 503"] * shed
        assert wait_for(lambda: fault_lines(edge, subject), DEADLINE)
        assert f"{limit} connections open (max_connections)" in fault_lines(edge, subject)[0]
    finally:
        for sock in held:
            sock.close()
        edge.stop()
    lines = fault_lines(edge, subject)
    assert len(lines) < 5, "\n".join(lines)
    assert summed(lines) == {"max_connections": shed}
