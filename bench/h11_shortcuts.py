"""A/B of edge/http/h11_internals.py's shortcuts against their slow paths, one run.

    python bench/h11_shortcuts.py

The figures the module's comments quote come from this script: each
shortcut (A) and the h11 path it replaces (B) on the same input, in process.
Each pair runs interleaved (A, B, A, B, ...) REPEAT times and the best of
each is kept (on a shared machine the best repeat is the least disturbed).
Prints microseconds per operation. The differential tests that hold each
shortcut to its slow path are in tests/http/test_h11_internals.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import h11

from edge.http.h11_internals import (
    _STAND_INS,
    _stand_in,
    awaiting_head,
    buffered,
    commit_end,
    commit_head,
    commit_request,
    commit_request_end,
    fast_request,
    head_bytes,
    next_cycle,
    pending,
    send_body,
    take_body,
)
from edge.http.message import ResponseHead

REPEAT = 15
HEAD = (
    b"GET /file-1k HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    b"Cookie: CF_Authorization=" + b"x" * 600 + b"\r\n\r\n"
)
# nginx's head for a 1 KiB file, as forwarded (hop-by-hop fields gone)
RESPONSE = ResponseHead(
    200,
    b"OK",
    [
        (b"server", b"nginx/1.22.1"),
        (b"date", b"Sat, 05 Dec 2026 03:00:00 GMT"),
        (b"content-type", b"application/octet-stream"),
        (b"content-length", b"1024"),
        (b"last-modified", b"Sat, 05 Dec 2026 02:00:00 GMT"),
        (b"etag", b'"6931f000-400"'),
        (b"accept-ranges", b"bytes"),
    ],
)


def in_body(length: int) -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % length)
    assert type(conn.next_event()) is h11.Request
    return conn


def sending(length: int) -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.next_event()
    conn.next_event()
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % length)]))
    return conn


def best(pairs: dict[str, tuple[Callable[[], None], Callable[[], None], int]]) -> None:
    for name, (a, b, n) in pairs.items():
        ta: list[float] = []
        tb: list[float] = []
        for _ in range(REPEAT):
            for f, out in ((a, ta), (b, tb)):
                t = time.perf_counter()
                f()
                out.append((time.perf_counter() - t) / n * 1e6)
        print(f"{name:40s} A {min(ta):8.3f} us   B {min(tb):8.3f} us   B-A {min(tb) - min(ta):+8.3f} us")


def main() -> None:
    n = 20000
    pairs: dict[str, tuple[Callable[[], None], Callable[[], None], int]] = {}

    for size in (1024, 65536):
        data = b"x" * size
        consumed: list[bytes] = []
        eat = consumed.append

        def take(
            data: bytes = data,
            eat: Callable[[bytes], None] = eat,
            m: int = n,
            consumed: list[bytes] = consumed,
        ) -> None:
            conn = in_body(1 << 50)
            for _ in range(m):
                k = take_body(conn, len(data))
                eat(data if k == len(data) else data[:k])
            consumed.clear()

        def through(
            data: bytes = data,
            eat: Callable[[bytes], None] = eat,
            m: int = n,
            consumed: list[bytes] = consumed,
        ) -> None:
            conn = in_body(1 << 50)
            for _ in range(m):
                conn.receive_data(data)
                event = conn.next_event()
                eat(event.data)  # type: ignore[union-attr]
                conn.next_event()  # NEED_DATA
            consumed.clear()

        pairs[f"take_body {size} B read"] = (take, through, n)

        out: list[bytes] = []
        write = out.append

        def direct(
            data: bytes = data, m: int = n, write: Callable[[bytes], None] = write, out: list[bytes] = out
        ) -> None:
            conn = sending(1 << 50)
            for _ in range(m):
                send_body(conn, data, write)
            out.clear()

        def public(
            data: bytes = data, m: int = n, write: Callable[[bytes], None] = write, out: list[bytes] = out
        ) -> None:
            conn = sending(1 << 50)
            for _ in range(m):
                sent = conn.send(h11.Data(data=data))
                if sent:
                    write(sent)
            out.clear()

        pairs[f"send_body {size} B, Content-Length"] = (direct, public, n)

    for label, behind in (("nothing", b""), ("700 B", HEAD), ("64 KiB", b"z" * 65536)):
        conn = in_body(10)
        if behind:
            conn.receive_data(behind)  # bytes buffered behind the body
        assert buffered(conn) is bool(behind)

        def in_place(m: int = n, conn: h11.Connection = conn) -> None:
            for _ in range(m):
                buffered(conn)
                pending(conn)
                awaiting_head(conn)
                head_bytes(conn)

        def copies(m: int = n, conn: h11.Connection = conn) -> None:
            for _ in range(m):
                bool(conn.trailing_data[0])
                data, closed = conn.trailing_data
                bool(data) or closed
                conn.their_state is h11.IDLE and not conn.trailing_data[0]
                conn.trailing_data[0]

        pairs[f"buffer reads x4 ({label} buffered)"] = (in_place, copies, n)

    def cached(m: int = n) -> None:
        for _ in range(m):
            _stand_in(200, b"1024", False, False)

    def built(m: int = n) -> None:
        for _ in range(m):
            h11.Response(status_code=200, headers=[(b"content-length", b"1024")], _parsed=True)

    _STAND_INS.put((200, b"1024", False, False), _stand_in(200, b"1024", False, False))
    pairs["_stand_in hit vs built"] = (cached, built, n)

    def cycle(send_head: Callable[[h11.Connection], object], m: int) -> Callable[[], None]:
        def run() -> None:
            conn = h11.Connection(h11.SERVER)
            for _ in range(m):
                request = fast_request(HEAD)
                assert request is not None
                commit_request(conn, request)
                commit_request_end(conn)
                send_head(conn)
                send_body(conn, b"y" * 1024, lambda _: None)
                commit_end(conn)
                next_cycle(conn)

        return run

    def by_hand(conn: h11.Connection) -> object:
        return commit_head(conn, RESPONSE, False)

    def by_h11(conn: h11.Connection) -> object:
        return conn.send(
            h11.Response(status_code=RESPONSE.status, headers=RESPONSE.headers, reason=RESPONSE.reason)
        )

    def by_stand_in(conn: h11.Connection) -> object:
        # commit_head's bytes, its state moved by _process_event (the slow state path)
        conn._process_event(h11.SERVER, _stand_in(200, b"1024", False, False))
        return b"\r\n".join(b": ".join(f) for f in RESPONSE.headers)

    m = 10000
    pairs["cycle: commit_head vs h11 send(Response)"] = (cycle(by_hand, m), cycle(by_h11, m), m)
    pairs["cycle: commit_head vs stand-in via _process_event"] = (cycle(by_hand, m), cycle(by_stand_in, m), m)
    for name in sys.argv[1:] or list(pairs):
        best({name: pairs[name]})


if __name__ == "__main__":
    main()
