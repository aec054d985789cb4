"""Load benchmark: a CORS preflight answered at the edge, against the h11
floor (a canned response of the same bytes, no logic) and uvicorn running the
same preflight logic with each of its parsers (h11, httptools), in one run,
interleaved.

    python bench/preflight.py [--rounds R] [--duration S] [--quick] [--metrics]

With --metrics, only the edge runs, with and without a [metrics] table
(counting on, nobody scraping), interleaved: issue 11 wants the preflight to
lose no more than 3 % to the counting.

Targets (issue 10): edge >= 1.0x uvicorn-httptools (the fastest stock Python
ASGI server, running the logic per request where edge's answers are prebuilt)
and >= 2.0x the h11 floor (what any server whose requests go through h11 can
reach at best). The table goes to stdout and bench/results/preflight-*.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from load import (
    PEERS,
    RESULTS,
    ROOT,
    WRK_SLACK,
    Row,
    Sample,
    ServerSpec,
    Settings,
    cpu_model,
    cpu_seconds,
    ensure_tools,
    free_port,
    git_revision,
    parse_wrk,
    pinned,
    ratio,
    raw_table,
    running,
    versions,
)

EDGE, FLOOR = "edge", "h11 floor (canned preflight)"
UVICORN, HTTPTOOLS = "uvicorn-h11 (same logic)", "uvicorn-httptools (same logic)"
PATH = "/v1/me"
ORIGIN = "http://app.localhost:8080"
HEADERS = {"Host": "api.localhost", "Origin": ORIGIN, "Access-Control-Request-Method": "PUT"}
TARGET_VS_FLOOR = 2.0
TARGET_VS_HTTPTOOLS = 1.0
EDGE_METRICS = "edge (metrics on)"
TARGET_METRICS_ON = 0.97  # issue 11: metrics on keeps >= 97 % of the preflight rate

EDGE_CONFIG = """\
[server]
listen = ["127.0.0.1:{port}"]
server_header = "edge"
drain_timeout = 1.0
access_log = "off"

[[apps]]
name = "api"
domains = ["api.localhost"]
upstream = "http://127.0.0.1:9"
[apps.cors]
allowed_origins = ["{origin}"]
allowed_methods = ["GET", "POST", "PUT", "DELETE"]
allowed_headers = ["Authorization", "Content-Type"]
allow_credentials = true
max_age = 600
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]
"""


def edge_argv(port: int, scratch: Path) -> list[str]:
    config = scratch / "edge.toml"
    config.write_text(EDGE_CONFIG.format(port=port, origin=ORIGIN))
    return [sys.executable, "-m", "edge", "serve", "-c", str(config)]


def edge_metrics_argv(port: int, scratch: Path) -> list[str]:
    config = scratch / "edge.toml"
    metrics = f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
    config.write_text(EDGE_CONFIG.format(port=port, origin=ORIGIN) + metrics)
    return [sys.executable, "-m", "edge", "serve", "-c", str(config)]


def floor_argv(port: int, scratch: Path) -> list[str]:
    return [sys.executable, str(PEERS / "preflight_floor.py"), "--port", str(port)]


def uvicorn_argv(http: str) -> Callable[[int, Path], list[str]]:
    """uvicorn with the HTTP parser `http` ("h11" or "httptools"), the same app either way."""

    def argv(port: int, scratch: Path) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS), "asgi_preflight:app",
            "--host", "127.0.0.1", "--port", str(port), "--http", http, "--loop", "uvloop",
            "--no-access-log", "--workers", "1", "--lifespan", "off", "--log-level", "warning",
        ]  # fmt: skip

    return argv


SPECS = (
    ServerSpec(EDGE, edge_argv, ((PATH, 200),)),
    ServerSpec(FLOOR, floor_argv, ((PATH, 200),)),
    ServerSpec(UVICORN, uvicorn_argv("h11"), ((PATH, 200),)),
    ServerSpec(HTTPTOOLS, uvicorn_argv("httptools"), ((PATH, 200),)),
)
METRICS_SPECS = (
    ServerSpec(EDGE, edge_argv, ((PATH, 200),)),
    ServerSpec(EDGE_METRICS, edge_metrics_argv, ((PATH, 200),)),
)


def preflight_once(port: int) -> tuple[int, bytes]:
    """One preflight by hand: (status, the whole response head)."""
    lines = [f"OPTIONS {PATH} HTTP/1.1", *(f"{k}: {v}" for k, v in HEADERS.items()), "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.partition(b"\r\n\r\n")[0]
    return int(head.split(b" ", 2)[1]), head


def lua_script(directory: Path) -> Path:
    path = directory / "preflight.lua"
    fields = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in HEADERS.items())
    path.write_text(f'wrk.method = "OPTIONS"\n{fields}\n')
    return path


def wrk(port: int, script: Path, seconds: int, cfg: Settings, pid: int = 0) -> Sample:
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    argv = pinned(
        cfg.client_core,
        ["wrk", "-t1", f"-c{cfg.connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}{PATH}"],
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + WRK_SLACK, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    return replace(parse_wrk(done.stdout), server_cpu=cpu if pid else 0.0)


def run(cfg: Settings, script: Path, specs: Sequence[ServerSpec] = SPECS) -> list[Row]:
    rows = {s.name: Row(s.name, PATH, 200) for s in specs}
    for n in range(cfg.rounds):
        print(f"round {n + 1}/{cfg.rounds}", flush=True)
        shift = n % len(specs)
        for spec in [*specs[shift:], *specs[:shift]]:
            with running(spec, cfg.server_core) as (port, pid):
                status, head = preflight_once(port)
                if status != 200 or b"access-control-allow-origin" not in head.lower():
                    raise RuntimeError(f"{spec.name}: not an allowed preflight answer:\n{head.decode()}")
                rows[spec.name].response_bytes = len(head) + 4
                if cfg.warmup:
                    wrk(port, script, cfg.warmup, cfg)
                sample = wrk(port, script, cfg.duration, cfg, pid)
                rows[spec.name].samples.append(sample)
                print(f"  {spec.name:<30} {sample.rps:>10,.0f} req/s  p99 {sample.p99_ms:.2f} ms", flush=True)
    return list(rows.values())


def table(rows: Sequence[Row]) -> str:
    by = {r.server: r.median("rps") for r in rows}
    lines = [
        "| server | req/s (median) | p50 | p99 | response head | ratio vs h11 floor | ratio vs uvicorn-h11"
        " | ratio vs uvicorn-httptools |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rps = r.median("rps")
        lines.append(
            f"| {r.server} | {rps:,.0f} | {r.median('p50_ms'):.2f} ms | {r.median('p99_ms'):.2f} ms"
            f" | {r.response_bytes} B | {ratio(rps, by[FLOOR])} | {ratio(rps, by[UVICORN])}"
            f" | {ratio(rps, by[HTTPTOOLS])} |"
        )
    return "\n".join(lines)


def metrics_table(rows: Sequence[Row]) -> str:
    by = {r.server: r.median("rps") for r in rows}
    lines = [
        "| server | req/s (median) | p50 | p99 | ratio vs metrics off |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rps = r.median("rps")
        lines.append(
            f"| {r.server} | {rps:,.0f} | {r.median('p50_ms'):.2f} ms | {r.median('p99_ms'):.2f} ms"
            f" | {ratio(rps, by[EDGE])} |"
        )
    return "\n".join(lines)


def metrics_verdict(rows: Sequence[Row]) -> str:
    by = {r.server: r.median("rps") for r in rows}
    v = by[EDGE_METRICS] / by[EDGE] if by[EDGE] else 0.0
    ok = "met" if v >= TARGET_METRICS_ON else "MISSED"
    return f"preflight with metrics on: {v:.3f}x metrics off (target >= {TARGET_METRICS_ON}x: {ok})"


def verdict(rows: Sequence[Row]) -> str:
    by = {r.server: r.median("rps") for r in rows}
    vh, vf = by[EDGE] / by[HTTPTOOLS], by[EDGE] / by[FLOOR]
    ok_h = "met" if vh >= TARGET_VS_HTTPTOOLS else "MISSED"
    ok_f = "met" if vf >= TARGET_VS_FLOOR else "MISSED"
    return (
        f"targets for the edge preflight: {vh:.2f}x uvicorn-httptools (target >= {TARGET_VS_HTTPTOOLS}x:"
        f" {ok_h}); {vf:.2f}x the h11 floor (target >= {TARGET_VS_FLOOR}x: {ok_f})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 round x 2 s")
    parser.add_argument("--metrics", action="store_true", help="only the edge, metrics off and on")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    ensure_tools()
    two = (os.cpu_count() or 1) >= 2
    cfg = Settings(
        args.duration, args.warmup, args.connections, args.rounds, "0" if two else None, "1" if two else None
    )
    started = dt.datetime.now(dt.UTC)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = run(cfg, lua_script(RESULTS), METRICS_SPECS if args.metrics else SPECS)
    render_table, render_verdict = (metrics_table, metrics_verdict) if args.metrics else (table, verdict)
    command = " ".join(["python", "bench/preflight.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join(
        [
            f"# edge preflight load benchmark, {started:%Y-%m-%d %H:%M:%S} UTC",
            "",
            f"- command: `{command}`; edge revision {git_revision()}",
            f"- {cfg.rounds} round(s) x {cfg.duration} s, wrk -t1 -c{cfg.connections}, keep-alive,"
            f" OPTIONS {PATH} with Origin + Access-Control-Request-Method; server core 0, wrk core 1",
            f"- machine: {os.cpu_count()} CPU(s), {cpu_model()}; versions: {versions()}",
            "",
            render_table(rows),
            "",
            render_verdict(rows),
            "",
            "## Raw runs",
            "",
            raw_table(rows),
            "",
        ]
    )
    out = RESULTS / f"preflight-{started:%Y%m%d-%H%M%S}.md"
    out.write_text(text)
    print()
    print(render_table(rows))
    print()
    print(render_verdict(rows))
    print(f"\nwritten: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
