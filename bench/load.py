"""Load benchmark of edge's local-response path against two peers, in one run.

Servers under test, each started fresh on 127.0.0.1 and pinned to core 0,
driven by wrk pinned to core 1:

- edge, access_log "off": /cdn-cgi/edge/health (200) and a 404 path;
- edge, access_log to a file: the same two paths, so the log's cost shows;
- the h11 floor (bench/peers/h11_floor.py): uvloop + asyncio.Protocol + h11,
  one canned response sent through h11's public API;
- uvicorn in h11 mode (bench/peers/asgi_app.py), one worker, uvloop.

Rounds are interleaved (edge, floor, uvicorn, edge, ...; the order rotates
each round) and the median per row is reported, so a noisy neighbour on a
shared machine hits every server rather than one. Every wrk run has a fixed
duration and every server is killed in a `finally`.

Usage: python bench/load.py [--duration S] [--connections N] [--rounds R] [--quick]
See bench/README.md for how to read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PEERS = BENCH / "peers"

HEALTH = "/cdn-cgi/edge/health"
MISSING = "/no/such/app"
FLOOR_PATH = "/"

SERVER_CORE = "0"
CLIENT_CORE = "1"
READY_TIMEOUT = 15.0  # seconds for a server to accept its first connection
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
WRK_SLACK = 30.0  # seconds a wrk run may overrun its -d before it is killed

# Targets for edge's local path, measured in the same run (see README).
TARGET_VS_FLOOR = 0.9
TARGET_VS_UVICORN = 1.5

# Row names, also the keys for the ratio columns.
EDGE = "edge"
EDGE_LOG = "edge (access log to file)"
CANDIDATE = "edge candidate"
CANDIDATE_LOG = "edge candidate (access log to file)"
FLOOR = "h11 floor"
UVICORN = "uvicorn-h11"


# -- what is measured ---------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One wrk run."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    server_cpu: float = 0.0  # share of one core the server used during the run, 0..1


@dataclass
class Row:
    server: str
    path: str
    expect_status: int
    samples: list[Sample] = field(default_factory=list)
    response_bytes: int = 0

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples) if self.samples else 0.0


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server; `argv` gets (port, scratch dir)."""

    name: str
    argv: Callable[[int, Path], list[str]]
    paths: tuple[tuple[str, int], ...]  # (path, expected status)
    cwd: Path = ROOT  # `python -m edge` imports the edge package found here


# -- the servers ----------------------------------------------------------------

EDGE_CONFIG = """\
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
server_header = "edge"
drain_timeout = 1.0
access_log = "{access_log}"
"""


def edge_argv(access_log: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, scratch: Path) -> list[str]:
        target = access_log if access_log == "off" else str(scratch / "access.log")
        config = scratch / "edge.toml"
        config.write_text(EDGE_CONFIG.format(port=port, access_log=target))
        return [sys.executable, "-m", "edge", "serve", "-c", str(config)]

    return argv


def floor_argv(port: int, scratch: Path) -> list[str]:
    return [sys.executable, str(PEERS / "h11_floor.py"), "--host", "127.0.0.1", "--port", str(port)]


def uvicorn_argv(port: int, scratch: Path) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS), "asgi_app:app",
        "--host", "127.0.0.1", "--port", str(port),
        "--http", "h11", "--loop", "uvloop", "--no-access-log", "--workers", "1",
        "--lifespan", "off", "--log-level", "warning",
    ]  # fmt: skip


EDGE_PATHS = ((HEALTH, 200), (MISSING, 404))
SPECS: tuple[ServerSpec, ...] = (
    ServerSpec(EDGE, edge_argv("off"), EDGE_PATHS),
    ServerSpec(FLOOR, floor_argv, ((FLOOR_PATH, 200),)),
    ServerSpec(UVICORN, uvicorn_argv, ((FLOOR_PATH, 200),)),
    ServerSpec(EDGE_LOG, edge_argv("file"), EDGE_PATHS),
)


def candidate_specs(directory: Path) -> tuple[ServerSpec, ...]:
    """A second edge (a worktree or scratch copy holding an `edge` package), for A/B in one run."""
    if not (directory / "edge" / "__main__.py").is_file():
        sys.exit(f"load.py: {directory} holds no edge package (edge/__main__.py)")
    return (
        ServerSpec(CANDIDATE, edge_argv("off"), EDGE_PATHS, cwd=directory),
        ServerSpec(CANDIDATE_LOG, edge_argv("file"), EDGE_PATHS, cwd=directory),
    )


# -- processes --------------------------------------------------------------------


def run_logged(argv: Sequence[str]) -> None:
    print(f"$ {' '.join(argv)}", flush=True)
    subprocess.run(argv, check=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_tools() -> None:
    """Install wrk (Debian package) if it is missing; taskset is in util-linux."""
    if shutil.which("wrk") is None:
        print("wrk not found: installing the Debian package 'wrk'", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        run_logged([*sudo, "apt-get", "update", "-qq"])
        run_logged([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"])
    if shutil.which("taskset") is None:
        sys.exit("load.py: taskset not found (Debian package util-linux)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if core is not None else argv


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server not accepting on port {port} after {READY_TIMEOUT} s:\n{tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


@contextlib.contextmanager
def running(spec: ServerSpec, core: str | None) -> Iterator[tuple[int, int]]:
    """Start `spec` on a free port; yield (port, pid); always stop it."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        scratch = Path(tmp)
        port = free_port()
        log = scratch / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                pinned(core, spec.argv(port, scratch)),
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                wait_ready(proc, port, log)
                yield port, proc.pid
            finally:
                stop(proc)


# -- one request by hand: check the server answers what we think ---------------------


def fetch(port: int, path: str, headers: Sequence[str] = ()) -> tuple[int, int]:
    """GET `path` once, with extra `headers` ("Name: value"); return (status, total response bytes)."""
    extra = "".join(f"{h}\r\n" for h in headers)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed before a response head: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        length = int(m.group(1)) if m else 0
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    status = int(head.split(b" ", 2)[1])
    return status, len(head) + 4 + length


# -- wrk ----------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"unrecognised wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> Sample:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None:
        raise ValueError(f"cannot parse wrk output:\n{output}")
    pct = {p: to_ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)\s*$", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return Sample(
        rps=float(rps.group(1)),
        p50_ms=pct.get("50", 0.0),
        p90_ms=pct.get("90", 0.0),
        p99_ms=pct.get("99", 0.0),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (taskset execs, so the pid is the server's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    port: int,
    path: str,
    seconds: int,
    connections: int,
    core: str | None,
    pid: int = 0,
    headers: Sequence[str] = (),
) -> Sample:
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    url = f"http://127.0.0.1:{port}{path}"
    extra = [arg for h in headers for arg in ("-H", h)]
    argv = pinned(core, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + WRK_SLACK, check=False)
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return replace(parse_wrk(done.stdout), server_cpu=cpu if pid else 0.0)


# -- the run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    duration: int  # seconds
    warmup: int  # seconds
    connections: int
    rounds: int
    server_core: str | None
    client_core: str | None


def measure_server(spec: ServerSpec, rows: dict[tuple[str, str], Row], cfg: Settings) -> None:
    with running(spec, cfg.server_core) as (port, pid):
        for path, expect in spec.paths:
            row = rows[(spec.name, path)]
            status, size = fetch(port, path)
            if status != expect:
                raise RuntimeError(f"{spec.name} {path}: expected {expect}, got {status}")
            row.response_bytes = size
            if cfg.warmup > 0:
                wrk(port, path, cfg.warmup, cfg.connections, cfg.client_core)
            sample = wrk(port, path, cfg.duration, cfg.connections, cfg.client_core, pid)
            row.samples.append(sample)
            print(
                f"  {spec.name:<26} {path:<22} {sample.rps:>10,.0f} req/s"
                f"  p50 {sample.p50_ms:.2f} ms  p99 {sample.p99_ms:.2f} ms"
                f"  server CPU {sample.server_cpu:.0%}"
                + (f"  socket errors {sample.socket_errors}" if sample.socket_errors else ""),
                flush=True,
            )


def run_rounds(specs: Sequence[ServerSpec], cfg: Settings) -> list[Row]:
    rows = {(s.name, p): Row(s.name, p, status) for s in specs for p, status in s.paths}
    for n in range(cfg.rounds):
        print(f"round {n + 1}/{cfg.rounds}", flush=True)
        shift = n % len(specs)
        for spec in [*specs[shift:], *specs[:shift]]:
            measure_server(spec, rows, cfg)
    return list(rows.values())


# -- reporting ---------------------------------------------------------------------------


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def summary_table(rows: Sequence[Row]) -> str:
    floor = next((r.median("rps") for r in rows if r.server == FLOOR), 0.0)
    uvi = next((r.median("rps") for r in rows if r.server == UVICORN), 0.0)
    lines = [
        "| server | path | req/s (median) | p50 | p99 | ratio vs h11 floor | ratio vs uvicorn-h11 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rps = r.median("rps")
        lines.append(
            f"| {r.server} | `{r.path}` ({r.expect_status}) | {rps:,.0f} | {r.median('p50_ms'):.2f} ms"
            f" | {r.median('p99_ms'):.2f} ms | {ratio(rps, floor)} | {ratio(rps, uvi)} |"
        )
    return "\n".join(lines)


def verdict(rows: Sequence[Row]) -> str:
    by = {(r.server, r.path): r.median("rps") for r in rows}
    edge = by.get((EDGE, HEALTH), 0.0)
    floor = by.get((FLOOR, FLOOR_PATH), 0.0)
    uvi = by.get((UVICORN, FLOOR_PATH), 0.0)
    if not (edge and floor and uvi):
        return "targets: not evaluated (edge, floor and uvicorn were not all measured)"
    vf, vu = edge / floor, edge / uvi
    ok_f = "met" if vf >= TARGET_VS_FLOOR else "MISSED"
    ok_u = "met" if vu >= TARGET_VS_UVICORN else "MISSED"
    return (
        f"targets for edge {HEALTH}: {vf:.2f}x the h11 floor (target >= {TARGET_VS_FLOOR}x: {ok_f}); "
        f"{vu:.2f}x uvicorn-h11 (target >= {TARGET_VS_UVICORN}x: {ok_u})"
    )


def candidate_line(rows: Sequence[Row]) -> str:
    by = {(r.server, r.path): r.median("rps") for r in rows}
    twins = ((EDGE, CANDIDATE), (EDGE_LOG, CANDIDATE_LOG))
    pairs = [(base, cand, p) for base, cand in twins for p, _ in EDGE_PATHS]
    parts = [
        f"{c} `{p}` {by[(c, p)] / by[(b, p)]:.2f}x {b}"
        for b, c, p in pairs
        if by.get((b, p)) and by.get((c, p))
    ]
    return "candidate vs edge (req/s): " + "; ".join(parts) if parts else ""


def raw_table(rows: Sequence[Row]) -> str:
    lines = [
        "| server | path | round | req/s | p50 | p90 | p99 | requests | non-2xx/3xx | socket errors"
        " | server CPU | CPU us/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for i, s in enumerate(r.samples, 1):
            lines.append(
                f"| {r.server} | `{r.path}` | {i} | {s.rps:,.0f} | {s.p50_ms:.3f} ms | {s.p90_ms:.3f} ms"
                f" | {s.p99_ms:.3f} ms | {s.requests} | {s.non_2xx} | {s.socket_errors}"
                f" | {s.server_cpu:.0%} | {s.server_cpu * 1e6 / s.rps if s.rps else 0:.1f} |"
            )
    return "\n".join(lines)


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for dist in ("h11", "uvloop", "uvicorn", "httptools", "msgspec"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{dist} {metadata.version(dist)}")
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False, timeout=10)
    wrk_version = (done.stdout + done.stderr).strip().splitlines()
    if wrk_version:
        parts.append(wrk_version[0].split(" [")[0])
    return ", ".join(parts)


def git_revision() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    return done.stdout.strip() or "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def report(
    rows: Sequence[Row], cfg: Settings, started: dt.datetime, command: str, candidate: Path | None
) -> str:
    pinning = (
        f"server on core {cfg.server_core}, wrk on core {cfg.client_core}"
        if cfg.server_core is not None
        else "not pinned (fewer than 2 CPUs)"
    )
    sizes = ", ".join(f"{r.server} `{r.path}` {r.response_bytes} B" for r in rows)
    return "\n".join(
        [
            f"# edge load benchmark, {started:%Y-%m-%d %H:%M:%S} UTC",
            "",
            f"- command: `{command}`",
            f"- edge revision: {git_revision()}"
            + (f"; candidate: {candidate.resolve()}" if candidate else ""),
            f"- {cfg.rounds} round(s) x {cfg.duration:g} s per row (after {cfg.warmup:g} s warm-up),"
            f" wrk -t1 -c{cfg.connections}, keep-alive; {pinning}",
            f"- machine: {os.cpu_count()} CPU(s), {cpu_model()}; {platform.platform()}",
            f"- versions: {versions()}",
            f"- response sizes (head + body): {sizes}",
            "",
            "## Medians",
            "",
            summary_table(rows),
            "",
            verdict(rows),
            "",
            candidate_line(rows),
            "",
            "## Raw runs",
            "",
            raw_table(rows),
            "",
        ]
    )


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Load benchmark: edge vs the h11 floor vs uvicorn-h11.")
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians (default 3)")
    # wrk takes whole seconds only.
    parser.add_argument("--warmup", type=int, default=1, help="whole seconds of warm-up per row (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round x 2 s, 1 s warm-up")
    parser.add_argument(
        "--candidate",
        type=Path,
        metavar="DIR",
        help="also measure the edge package in DIR (e.g. a scratch copy), interleaved, for A/B",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*(s.name for s in SPECS), CANDIDATE, CANDIDATE_LOG],
        help="measure only this server (repeatable; ratios need the floor and uvicorn)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1 or args.warmup < 0:
        parser.error("--duration and --connections must be positive, --rounds >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    two_cores = (os.cpu_count() or 1) >= 2
    if not two_cores:
        print("warning: fewer than 2 CPUs; server and wrk are not pinned", file=sys.stderr)
    cfg = Settings(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        rounds=args.rounds,
        server_core=SERVER_CORE if two_cores else None,
        client_core=CLIENT_CORE if two_cores else None,
    )
    every = [*SPECS, *(candidate_specs(args.candidate.resolve()) if args.candidate else ())]
    specs = [s for s in every if not args.only or s.name in args.only]
    started = dt.datetime.now(dt.UTC)
    command = " ".join(["python", "bench/load.py", *(argv if argv is not None else sys.argv[1:])])
    rows = run_rounds(specs, cfg)
    text = report(rows, cfg, started, command, args.candidate)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load-{started:%Y%m%d-%H%M%S}.md"
    out.write_text(text)
    print()
    print(summary_table(rows))
    print()
    print(verdict(rows))
    if args.candidate:
        print(candidate_line(rows))
    print(f"\nwritten: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
