"""Where a proxied GET's CPU goes: the edge's Python path alone, in process.

bench/proxy.py measures whole processes under load; this measures only the
code between the sockets. One worker's ServerState (the configuration
bench/proxy.py gives the edge) serves an authenticated GET of 1 KiB through
the real HttpProtocol, decide, ProxyCycle and UpstreamConnection, over
in-memory transports: the request head goes in through data_received, the
upstream's response (nginx's own head fields for the file, and its body) in
through the upstream's buffer_updated, as one read each, as under load. No
syscall, no event-loop turn: what is left is the Python the edge runs per
request, the part a faster proxy would have to shrink.

    python bench/get_path.py [--number 50000] [--repeat 5] [--profile]

Prints microseconds per request (the best repeat), and with --profile the
share of the time spent in each part of the edge, h11, and C code (regular
expressions, bytes and list methods), then the most expensive functions.
cProfile's own overhead inflates the per-call figures, more for the parts
with the most calls, so the shares are a map, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop
from proxy import AUD, EDGE_CONFIG, EMAIL_DOMAIN, ISS, JWKS, mint_token

from edge.access.actions import Forward
from edge.access.decide import decide
from edge.access.request import build
from edge.config.load import load
from edge.http.connection import HttpProtocol
from edge.http.h11_internals import fast_request
from edge.http.message import ResponseHead
from edge.proxy.forwarding import response_headers
from edge.proxy.upstream import UpstreamConnection
from edge.proxy.wire import ResponseParser, request_head
from edge.runtime.server import ServerState

UPSTREAM = 9  # never connected to: the one pooled connection is in memory
BODY = b"x" * 1024
# nginx 1.22's head for a static 1 KiB file (bench/proxy.py's upstream).
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 03:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Sat, 05 Dec 2026 02:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6751c5a0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY
)


class MemoryTransport:
    """What the edge's protocols call on a transport, writes kept in a list."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        raise RuntimeError("the edge closed a connection the bench keeps open")

    abort = close


class Exchange:
    """One client connection and one pooled upstream connection of a fresh
    worker state, and the bytes of one exchange between them."""

    def __init__(self, config_path: Path, token: str) -> None:
        config = load(str(config_path))
        self.state = state = ServerState(config, asyncio.get_running_loop(), source=str(config_path))
        # No loop turn runs between the exchanges measured here: every write goes
        # out at once (edge.http.flow.WriteBatch), as the batch sends it under load.
        state.writes.loop = None
        self.client, self.upstream = MemoryTransport(), MemoryTransport()
        self.protocol = HttpProtocol(state, state.dispatch)
        self.protocol.connection_made(self.client)  # type: ignore[arg-type]
        target = state.pool.target(config.apps[0].upstream)
        self.conn = UpstreamConnection(target, lambda _: None, state.pool.read_buffer, state.writes)
        self.conn.connection_made(self.upstream)  # type: ignore[arg-type]
        state.pool.idle.setdefault(target.url, []).append(self.conn)
        self.request = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: CF_Authorization=%s\r\n\r\n" % (
            token.encode()
        )

    def send(self) -> None:
        """The request in, the upstream's response in: one read each."""
        self.protocol.data_received(self.request)
        size = len(RESPONSE)
        self.conn.get_buffer(size)[:size] = RESPONSE
        self.conn.buffer_updated(size)

    def run(self) -> None:
        self.send()
        self.client.out.clear()
        self.upstream.out.clear()

    def check(self) -> None:
        """The exchange is the real one: forwarded with the identity, answered 200."""
        self.send()
        response, forwarded = b"".join(self.client.out), b"".join(self.upstream.out)
        self.client.out.clear()
        self.upstream.out.clear()
        if not response.startswith(b"HTTP/1.1 200 ") or not response.endswith(BODY):
            raise SystemExit(f"unexpected response: {response[:200]!r}")
        if b"cf-access-authenticated-user-email: bench@" not in forwarded:
            raise SystemExit(f"unexpected forwarded request: {forwarded[:300]!r}")


def part_of(filename: str) -> str:
    if filename.startswith("~"):
        return "C (re, bytes, list, dict methods)"
    path = Path(filename)
    if "edge" in path.parts:
        parts = path.parts[path.parts.index("edge") :]
        return "/".join(parts[:2]) if len(parts) > 2 else parts[0]
    if "h11" in path.parts:
        return "h11"
    return "other Python (stdlib, uvloop glue)"


def profile(run: Callable[[], None], number: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(number):
        run()
    profiler.disable()
    stats = pstats.Stats(profiler)
    by_part: dict[str, float] = defaultdict(float)
    rows = []
    total = 0.0
    for (filename, line, name), (_, calls, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_part[part_of(filename)] += own
        total += own
        rows.append((own, calls, f"{Path(filename).name}:{line}({name})"))
    print(f"\ncProfile, {number} requests ({total / number * 1e6:.1f} us/request with its overhead)")
    print("| part | share |\n| --- | ---: |")
    for part, own in sorted(by_part.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {own / total:.0%} |")
    calls_per_request = sum(calls for _, calls, _ in rows) / number
    print(f"\n{calls_per_request:.0f} calls per request; the 15 largest own times:")
    for own, calls, where in sorted(rows, reverse=True)[:15]:
        print(f"  {own / number * 1e6:5.2f} us  {calls / number:5.1f} calls  {where}")


def best_of(repeat: int, number: int, work: Callable[[], object]) -> float:
    """Microseconds per call of `work`, the best of `repeat` runs."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            work()
        runs.append((time.perf_counter() - started) / number * 1e6)
    return min(runs)


def halves(exchange: Exchange, repeat: int, number: int) -> tuple[float, float]:
    """Microseconds per request of each half: the client's head in until the
    upstream's request out, and the upstream's response in until the
    client's response out."""
    clock = time.perf_counter
    request, conn, size = exchange.request, exchange.conn, len(RESPONSE)
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        first = second = 0.0
        for _ in range(number):
            t0 = clock()
            exchange.protocol.data_received(request)
            t1 = clock()
            conn.get_buffer(size)[:size] = RESPONSE
            conn.buffer_updated(size)
            t2 = clock()
            first += t1 - t0
            second += t2 - t1
            exchange.client.out.clear()
            exchange.upstream.out.clear()
        best = min(best, (first / number * 1e6, second / number * 1e6))
    return best


def parts(exchange: Exchange, repeat: int, number: int) -> list[tuple[str, float]]:
    """The main steps on their own, on the same bytes (each also runs inside
    the exchange; the rest of it is the glue between them)."""
    state = exchange.state
    parsed = fast_request(exchange.request)
    assert parsed is not None
    req = build(b"GET", b"127.0.0.1", b"/1k", parsed.headers, "127.0.0.1", "http", request_id=b"x" * 16)
    now = time.time()
    action = decide(state.compiled, req, now)
    assert isinstance(action, Forward), action

    def parse_response() -> tuple[object, ...]:
        parser = ResponseParser()
        parser.feed(RESPONSE)
        return parser.next_event(), parser.next_event(), parser.next_event()

    head = parse_response()[0]
    assert isinstance(head, ResponseHead)
    plan = state.forward_plan(req, action)
    compiled, raw = state.compiled, exchange.request
    return [
        ("parse the request head (fast_request)", best_of(repeat, number, lambda: fast_request(raw))),
        ("decide (cached token, one policy)", best_of(repeat, number, lambda: decide(compiled, req, now))),
        ("forwarded fields (forward_plan)", best_of(repeat, number, lambda: state.forward_plan(req, action))),
        ("forwarded head bytes (request_head)", best_of(
            repeat, number, lambda: request_head(b"GET", plan.path, plan.headers))),
        ("parse the response (head, body, end)", best_of(repeat, number, parse_response)),
        ("client's fields (response_headers)", best_of(
            repeat, number, lambda: response_headers(head.headers, False, False, req.request_id))),
    ]  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="edge-get-path-") as scratch:
        config = Path(scratch) / "edge.toml"
        config.write_text(
            EDGE_CONFIG.format(
                port=0, upstream=UPSTREAM, max_body=1 << 20, iss=ISS, jwks=JWKS, aud=AUD, domain=EMAIL_DOMAIN
            )
        )
        exchange = Exchange(config, mint_token())
        exchange.check()
        for _ in range(min(args.number, 5000)):  # warm the caches (verified token, hop sets)
            exchange.run()
        whole = best_of(args.repeat, args.number, exchange.run)
        first, second = halves(exchange, args.repeat, args.number)
        print(f"Proxied GET, the edge's Python path in process (best of {args.repeat} x {args.number}):\n")
        print("| step | us/request |\n| --- | ---: |")
        print(f"| **whole exchange** | **{whole:.1f}** |")
        print(f"| request half: head in -> forwarded head out | {first:.1f} |")
        print(f"| response half: response in -> client's response out | {second:.1f} |")
        for name, cost in parts(exchange, args.repeat, args.number):
            print(f"| of which: {name} | {cost:.1f} |")
        if args.profile:
            profile(exchange.run, args.number)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=50_000, help="requests per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also profile, and show where the time goes")
    args = parser.parse_args()
    if args.number < 1 or args.repeat < 1:
        parser.error("--number and --repeat must be positive")
    return args


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
