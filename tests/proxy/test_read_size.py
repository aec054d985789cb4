"""Upstream reads of READ_SIZE (flow.py): what bounds the memory a slow
client costs. The same response must come out byte for byte whatever the
upstream's writes and chunk edges, and no read may take more than READ_SIZE:

1. an UpstreamConnection on a real loopback socket and a real loop, the
   upstream's writes split where hypothesis draws, for Content-Length,
   chunked and close-delimited responses;
2. the edge itself, a large body in each framing, to a client that reads
   fast, stops reading for a while mid-way, then reads on, compared by
   SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvloop
from conftest import EdgeProcess, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_edge import proxy_toml
from upstream_server import KIB, MIB

from edge.http.flow import READ_SIZE, WriteBatch
from edge.http.message import ResponseHead
from edge.proxy.upstream import Pool, UpstreamConnection, UpstreamError

DEADLINE = 5.0  # seconds any one exchange may take: far below the edge's 60 s timeouts
FRAMINGS = ("length", "chunked", "close")
BLOCK = hashlib.shake_256(b"read pacing").digest(MIB + 13)  # odd length: edges drift


def body_of(size: int) -> bytes:
    return (BLOCK * (size // len(BLOCK) + 1))[:size]


def response(framing: str, body: bytes, chunk: int) -> bytes:
    """The whole response, as the upstream sends it (then closes for "close")."""
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + body
    pieces = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    for pos in range(0, len(body), chunk):
        part = body[pos : pos + chunk]
        pieces += [b"%x\r\n" % len(part), part, b"\r\n"]
    pieces.append(b"0\r\n\r\n")
    return b"".join(pieces)


# -- 1. a real socket, drawn splits -------------------------------------------------------


class Collector:
    """An Exchange that keeps the body pieces (one or fewer per read)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.done = asyncio.get_running_loop().create_future()

    def upstream_head(self, head: ResponseHead) -> None:
        assert head.status == 200

    def upstream_data(self, data: bytes) -> None:
        assert type(data) is bytes  # never a view of the shared read buffer
        self.pieces.append(data)

    def upstream_end(self) -> None:
        self.done.set_result(None)

    def upstream_whole(self, head: ResponseHead, body: bytes) -> None:
        self.upstream_head(head)
        if body:
            self.upstream_data(body)
        self.upstream_end()

    def upstream_switch(self, head: ResponseHead) -> None:
        raise AssertionError("no upgrade was asked for")

    def upstream_lost(self, error: UpstreamError) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def upstream_write_paused(self, paused: bool) -> None:
        pass

    def upstream_raw(self, data: bytes) -> None:
        raise AssertionError("not a tunnel")


# The most writes serve_once makes for one response: a drawn split of one
# byte under a body of megabytes would be millions of drained writes, far
# past the test's deadline (hypothesis drew framing="length", size=3134812,
# splits=[1] with --hypothesis-seed=11). Pieces grow to keep within it.
MAX_WRITES = 2000


async def serve_once(data: bytes, splits: list[int], close: bool) -> tuple[asyncio.Server, int]:
    """A one-response upstream: reads the request head, then writes `data`
    in pieces of the drawn sizes (cycled; at least 1/MAX_WRITES of the
    response each), each drained before the next."""
    least = -(-len(data) // MAX_WRITES)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        pos = turn = 0
        while pos < len(data):
            size = max(splits[turn % len(splits)], least)
            writer.write(data[pos : pos + size])
            await writer.drain()
            pos, turn = pos + size, turn + 1
        if close:
            writer.close()
        else:
            await reader.read()  # the proxy closes when done
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def fetch(framing: str, body: bytes, chunk: int, splits: list[int]) -> Collector:
    server, port = await serve_once(response(framing, body, chunk), splits, framing == "close")
    loop = asyncio.get_running_loop()
    pool = Pool(loop, max_idle=0, idle_timeout=1.0, connect_timeout=DEADLINE, writes=WriteBatch(loop))
    try:
        conn: UpstreamConnection = await pool.connect(pool.target(f"http://127.0.0.1:{port}"))
        exchange = Collector()
        assert conn.attach(exchange) is None
        conn.send_request(b"GET", b"/", [(b"host", b"app.test")], chunked=False, upgrade=False)
        conn.end_request()
        await asyncio.wait_for(exchange.done, DEADLINE)
        conn.abort()
        return exchange
    finally:
        server.close()
        await server.wait_closed()


def run(coro: object) -> Collector:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    framing=st.sampled_from(FRAMINGS),
    size=st.integers(0, 3 * MIB),
    chunk=st.integers(1, 300 * KIB),
    splits=st.lists(st.integers(1, 400 * KIB), min_size=1, max_size=6),
)
def test_body_is_the_same_and_no_read_exceeds_read_size(
    framing: str, size: int, chunk: int, splits: list[int]
) -> None:
    body = body_of(size)
    got = run(fetch(framing, body, chunk, splits))
    assert b"".join(got.pieces) == body
    assert max(map(len, got.pieces), default=0) <= READ_SIZE


def test_a_fast_upstream_is_still_read_read_size_at_a_time() -> None:
    """The drawn cases above must include reads that could have been larger: one that must."""
    body = body_of(12 * MIB)  # past the 8 MiB after which reads once grew for a fast client
    got = run(fetch("length", body, 0, [4 * READ_SIZE]))
    assert b"".join(got.pieces) == body
    assert max(map(len, got.pieces)) == READ_SIZE  # reads fill up, and no further


# -- 2. through the edge ----------------------------------------------------------------

BIG = 24 * MIB  # far more than the kernel's socket buffers hold
STALL = 0.3  # seconds the client stops reading mid-body: the edge's buffer for it fills
STALL_AT = 12 * MIB  # bytes read fast before the stall


class RawUpstream:
    """Serves BIG bytes in the framing the path names (/length, /chunked,
    /close), from a thread; one response per connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.body = body_of(BIG)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the test is over
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(DEADLINE)
            head = b""
            while b"\r\n\r\n" not in head:
                got = conn.recv(4096)
                if not got:
                    return
                head += got
            framing = head.split(b" ", 2)[1].strip(b"/").decode()
            try:
                conn.sendall(response(framing, self.body, 100 * KIB + 7))
                if framing != "close":
                    conn.recv(1)  # the edge pools or closes the connection
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def edge_and_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeProcess, RawUpstream]]:
    upstream = RawUpstream()
    config = write_config(
        tmp_path_factory.mktemp("read_size"), extra=proxy_toml(f"http://127.0.0.1:{upstream.port}")
    )
    edge = EdgeProcess(config)
    try:
        yield edge, upstream
    finally:
        edge.stop()
        upstream.close()


def download_with_a_stall(port: int, path: str) -> tuple[bytes, bytes]:
    """(head, body) of one GET, reading fast except for one pause."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n" % path.encode())
        data = bytearray()
        stalled = False
        end = time.monotonic() + 4 * DEADLINE  # the whole transfer: bounded
        while time.monotonic() < end:
            got = sock.recv(4 * READ_SIZE)
            if not got:
                break
            data += got
            if not stalled and len(data) > STALL_AT:
                stalled = True
                time.sleep(STALL)
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        return head, body


@pytest.mark.parametrize("framing", FRAMINGS)
def test_edge_body_is_whole_across_a_stall(
    edge_and_upstream: tuple[EdgeProcess, RawUpstream], framing: str
) -> None:
    edge, upstream = edge_and_upstream
    head, body = download_with_a_stall(edge.port, f"/{framing}")
    assert head.startswith(b"HTTP/1.1 200 ")
    # The edge keeps a Content-Length and chunks the rest (its own chunks).
    assert (b"transfer-encoding: chunked" in head.lower()) == (framing != "length")
    if framing != "length":
        body = dechunk(body)
    assert len(body) == BIG
    assert hashlib.sha256(body).digest() == hashlib.sha256(upstream.body).digest()


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        line_end = data.index(b"\r\n", pos)
        size = int(data[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if not size:
            return bytes(out)
        out += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2
