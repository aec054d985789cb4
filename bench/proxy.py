"""Proxy benchmark: edge's forwarding path against nginx, Caddy and an aiohttp proxy, in one run.

Part 1, authenticated GET of a 1 KiB static file (token in the
CF_Authorization cookie), through each proxy to the SAME upstream (nginx, one
process, serving the file):

- edge: `python -m edge serve`, one worker, an issuer with a JWKS file, one
  app with an allow policy on the token's email domain, access_log "off";
- nginx as a reverse proxy (upstream keepalive 32, HTTP/1.1): no token check
  at all, since stock nginx cannot verify a JWT: the "speed of light" peer;
- Caddy's reverse_proxy (GOMAXPROCS=1), no token check either: it stands for
  the Go proxy class (oauth2-proxy, Pomerium) without their token check;
- bench/peers/aiohttp_proxy.py: aiohttp + PyJWT doing the same check with a
  cache of verified tokens, on uvloop: the Python user's obvious alternative;
- bench/peers/byte_pump.py: not a proxy but a floor, bytes pumped between a
  client connection and an upstream connection of its own, nothing parsed:
  what uvloop and the socket calls alone cost a Python process per request.

Part 2, one large upload and one large download (1 GiB; 256 MiB with
--quick) through edge and through nginx, with curl, to an upstream that
discards uploads (bench/peers/upload_sink.py, which answers with the byte
count it read) or serves a sparse file (nginx). Throughput in MB/s, and the
edge's peak RSS (VmHWM).

Pinning: the proxy under test alone on core 0; the upstream and the client
(wrk or curl) share core 1. Rounds are interleaved and medians reported. Every
load has a fixed duration or a --max-time, and every server is stopped in a
`finally`.

Usage: python bench/proxy.py [--quick] [--rounds R] [--duration S] [--metrics] [--no-peers]
(--metrics adds the edge with a [metrics] table, interleaved with the one without.)
See bench/README.md for how to read the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from load import (
    CLIENT_CORE,
    PEERS,
    RESULTS,
    ROOT,
    SERVER_CORE,
    Sample,
    ServerSpec,
    cpu_model,
    cpu_seconds,
    ensure_tools,
    fetch,
    free_port,
    git_revision,
    pinned,
    ratio,
    run_logged,
    running,
    versions,
    wrk,
)

KIB = 1024
MIB = 1024 * KIB
SMALL_PATH = "/1k"  # the 1 KiB file
LARGE_PATH = "/large"  # the sparse file for downloads
UPLOAD_PATH = "/upload"
SMALL_BYTES = 1 * KIB

ISS = "https://auth.example.com"
AUD = "bench-api"
EMAIL = "bench@example.com"
EMAIL_DOMAIN = "example.com"
JWKS = ROOT / "conf" / "example-jwks.json"
PRIVATE_KEY = ROOT / "conf" / "example-key.pem"  # demo key, published on purpose
TOKEN_TTL = 4 * 3600  # seconds: outlives any run

CURL_MIN_RATE = 5e6  # bytes/s: a transfer slower than this is killed (--max-time)

# Targets, each a ratio within one run (see README).
TARGET_GET_VS_NGINX = 0.25
TARGET_GET_VS_CADDY = 1.2
TARGET_GET_VS_AIOHTTP = 2.0
# Issue 11: counting requests may cost the proxied GET no more than 3 %.
TARGET_METRICS_ON = 0.97
TARGET_TRANSFER_VS_NGINX = 0.9  # issue 10: no regression on the 1 GiB transfers
TARGET_PEAK_RSS = 64 * MIB  # issue 10: the edge's peak RSS over the transfers (bytes)

EDGE = "edge"
CANDIDATE = "edge candidate"
EDGE_METRICS = "edge (metrics on)"
NGINX = "nginx (no token check)"
CADDY = "Caddy (no token check)"
AIOHTTP = "aiohttp proxy"
PUMP = "uvloop byte pump (no HTTP)"
DIRECT = "direct (no proxy)"


# -- configurations -------------------------------------------------------------

NGINX_COMMON = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

NGINX_STATIC = """\
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {www};
    }}"""

# Streaming both ways and never to disk, like edge: request buffering off and
# no temp files for responses (nginx then keeps to its in-memory buffers).
NGINX_PROXY = """\
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }}
    }}"""

# One goroutine scheduler thread (GOMAXPROCS=1, set in caddy_spec) on the pinned
# core, like the one-worker Python proxies. Loopback only, no admin endpoint, no
# certificates, no logs (Caddy writes no access log unless told to; the default
# logger is discarded too). storage keeps Caddy's data dir in the scratch dir.
CADDYFILE = """\
{{
	admin off
	auto_https off
	storage file_system {dir}/data
	log {{
		output discard
	}}
}}
:{port} {{
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:{upstream}
}}
"""

EDGE_CONFIG = """\
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
server_header = "edge"
drain_timeout = 1.0
access_log = "off"
max_body_bytes = {max_body}

[[issuers]]
iss = "{iss}"
jwks_file = "{jwks}"
algorithms = ["ES256"]

[[apps]]
name = "bench"
domains = ["127.0.0.1", "localhost"]
upstream = "http://127.0.0.1:{upstream}"
aud = "{aud}"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["{domain}"] }}]
"""


def nginx_argv(body: Callable[[int, Path], str]) -> Callable[[int, Path], list[str]]:
    def argv(port: int, scratch: Path) -> list[str]:
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (scratch / sub).mkdir(exist_ok=True)
        conf = scratch / "nginx.conf"
        conf.write_text(NGINX_COMMON.format(dir=scratch, body=body(port, scratch)))
        return ["nginx", "-c", str(conf), "-p", str(scratch), "-e", str(scratch / "error.log")]

    return argv


def static_spec(www: Path) -> ServerSpec:
    return ServerSpec(
        "nginx upstream", nginx_argv(lambda port, _: NGINX_STATIC.format(port=port, www=www)), ()
    )


def sink_spec() -> ServerSpec:
    def argv(port: int, scratch: Path) -> list[str]:
        return [sys.executable, str(PEERS / "upload_sink.py"), "--port", str(port)]

    return ServerSpec("upload sink", argv, ())


def nginx_proxy_spec(upstream: int) -> ServerSpec:
    return ServerSpec(NGINX, nginx_argv(lambda port, _: NGINX_PROXY.format(port=port, upstream=upstream)), ())


def caddy_spec(upstream: int) -> ServerSpec:
    def argv(port: int, scratch: Path) -> list[str]:
        caddyfile = scratch / "Caddyfile"
        caddyfile.write_text(CADDYFILE.format(dir=scratch, port=port, upstream=upstream))
        # env execs caddy, so the pid that running() measures is Caddy's. HOME and
        # XDG_* keep its autosave.json and data out of the user's home.
        env = [f"{k}={scratch}" for k in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")]
        return ["env", "GOMAXPROCS=1", *env, "caddy", "run", "--config", str(caddyfile),
                "--adapter", "caddyfile"]  # fmt: skip

    return ServerSpec(CADDY, argv, ())


def edge_spec(name: str, upstream: int, max_body: int, cwd: Path = ROOT, metrics: bool = False) -> ServerSpec:
    """`metrics`: with a [metrics] table (counting on, nobody scraping)."""

    def argv(port: int, scratch: Path) -> list[str]:
        config = scratch / "edge.toml"
        text = EDGE_CONFIG.format(
            port=port,
            upstream=upstream,
            max_body=max_body,
            iss=ISS,
            jwks=JWKS,
            aud=AUD,
            domain=EMAIL_DOMAIN,
        )
        if metrics:
            text += f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
        config.write_text(text)
        return [sys.executable, "-m", "edge", "serve", "-c", str(config)]

    return ServerSpec(name, argv, (), cwd=cwd)


def aiohttp_spec(upstream: int) -> ServerSpec:
    def argv(port: int, scratch: Path) -> list[str]:
        return [
            sys.executable, str(PEERS / "aiohttp_proxy.py"), "--port", str(port),
            "--upstream", f"http://127.0.0.1:{upstream}", "--jwks", str(JWKS),
            "--iss", ISS, "--aud", AUD, "--alg", "ES256", "--email-domain", EMAIL_DOMAIN,
        ]  # fmt: skip

    return ServerSpec(AIOHTTP, argv, ())


def pump_spec(upstream: int) -> ServerSpec:
    def argv(port: int, scratch: Path) -> list[str]:
        script = str(PEERS / "byte_pump.py")
        return [sys.executable, script, "--port", str(port), "--upstream-port", str(upstream)]

    return ServerSpec(PUMP, argv, ())


def mint_token() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edge", "token", "--key", str(PRIVATE_KEY), "--iss", ISS,
         "--aud", AUD, "--email", EMAIL, "--ttl", str(TOKEN_TTL)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


# -- measuring helpers --------------------------------------------------------------


def core_busy_ticks(core: str | None) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU (or all of them) from /proc/stat."""
    name = f"cpu{core}" if core is not None else "cpu"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            ticks = [int(x) for x in parts[1:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            return sum(ticks) - idle, sum(ticks)
    return 0, 0


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def status_kib(pid: int, key: str) -> int:
    """A `VmXXX:  N kB` line of /proc/PID/status, in KiB (0 when gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


# -- part 1: authenticated GET ------------------------------------------------------------


@dataclass(frozen=True)
class GetRun:
    sample: Sample  # server_cpu is the proxy's
    upstream_cpu: float  # share of one core the upstream nginx used
    core1_busy: float  # share of core 1 (upstream + wrk + anyone else) busy


@dataclass
class GetRow:
    server: str
    runs: list[GetRun] = field(default_factory=list)
    response_bytes: int = 0
    without_token: int = 0  # the status of the same GET without the cookie

    def med(self, attr: str) -> float:
        return median([getattr(r.sample, attr) for r in self.runs])


@dataclass(frozen=True)
class Settings:
    duration: int
    warmup: int
    connections: int
    rounds: int
    size: int  # bytes per transfer
    transfer_rounds: int
    server_core: str | None
    client_core: str | None


def measure_get(spec: ServerSpec, row: GetRow, upstream_pid: int, cookie: str, cfg: Settings) -> None:
    headers = (f"Cookie: {cookie}",)
    with running(spec, cfg.server_core) as (port, pid):
        status, size = fetch(port, SMALL_PATH, headers)
        if status != 200:
            raise RuntimeError(f"{spec.name} {SMALL_PATH} with the token: expected 200, got {status}")
        row.response_bytes = size
        row.without_token = fetch(port, SMALL_PATH)[0]
        if cfg.warmup > 0:
            wrk(port, SMALL_PATH, cfg.warmup, cfg.connections, cfg.client_core, headers=headers)
        up_before, core_before = cpu_seconds(upstream_pid), core_busy_ticks(cfg.client_core)
        wall = time.monotonic()
        sample = wrk(port, SMALL_PATH, cfg.duration, cfg.connections, cfg.client_core, pid, headers)
        upstream_cpu = (cpu_seconds(upstream_pid) - up_before) / (time.monotonic() - wall)
        core1 = busy_share(core_before, core_busy_ticks(cfg.client_core))
    row.runs.append(GetRun(sample, upstream_cpu, core1))
    print(
        f"  {spec.name:<24} {sample.rps:>9,.0f} req/s"
        f"  p50 {sample.p50_ms:.2f} ms  p99 {sample.p99_ms:.2f} ms  proxy CPU {sample.server_cpu:.0%}"
        f"  upstream CPU {upstream_cpu:.0%}  core {cfg.client_core} {core1:.0%}"
        + (f"  non-2xx {sample.non_2xx}" if sample.non_2xx else "")
        + (f"  socket errors {sample.socket_errors}" if sample.socket_errors else ""),
        flush=True,
    )
    if sample.non_2xx:
        raise RuntimeError(f"{spec.name}: {sample.non_2xx} non-2xx responses under load")


def run_get(
    www: Path, cookie: str, cfg: Settings, candidate: Path | None, metrics: bool = False, peers: bool = True
) -> list[GetRow]:
    print(f"GET {SMALL_PATH} ({SMALL_BYTES} B): {cfg.rounds} round(s) x {cfg.duration} s", flush=True)
    with running(static_spec(www), cfg.client_core) as (up_port, up_pid):
        specs = [edge_spec(EDGE, up_port, cfg.size * 2)]
        if metrics:
            specs.append(edge_spec(EDGE_METRICS, up_port, cfg.size * 2, metrics=True))
        if peers:
            specs += [nginx_proxy_spec(up_port), caddy_spec(up_port), aiohttp_spec(up_port)]
            specs.append(pump_spec(up_port))
        if candidate is not None:
            specs.append(edge_spec(CANDIDATE, up_port, cfg.size * 2, cwd=candidate))
        rows = {s.name: GetRow(s.name) for s in specs}
        for n in range(cfg.rounds):
            print(f"round {n + 1}/{cfg.rounds}", flush=True)
            shift = n % len(specs)
            for spec in [*specs[shift:], *specs[:shift]]:
                measure_get(spec, rows[spec.name], up_pid, cookie, cfg)
    return list(rows.values())


def get_table(rows: Sequence[GetRow]) -> str:
    by = {r.server: r.med("rps") for r in rows}
    nginx, caddy, aio = by.get(NGINX, 0.0), by.get(CADDY, 0.0), by.get(AIOHTTP, 0.0)
    lines = [
        "| server | req/s (median) | p50 | p99 | ratio vs nginx | ratio vs Caddy | ratio vs aiohttp |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rps = r.med("rps")
        lines.append(
            f"| {r.server} | {rps:,.0f} | {r.med('p50_ms'):.2f} ms | {r.med('p99_ms'):.2f} ms"
            f" | {ratio(rps, nginx)} | {ratio(rps, caddy)} | {ratio(rps, aio)} |"
        )
    return "\n".join(lines)


def get_raw_table(rows: Sequence[GetRow]) -> str:
    lines = [
        "| server | round | req/s | p50 | p90 | p99 | requests | socket errors | proxy CPU | proxy CPU us/req"
        " | upstream CPU | client core busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for i, run in enumerate(r.runs, 1):
            s = run.sample
            lines.append(
                f"| {r.server} | {i} | {s.rps:,.0f} | {s.p50_ms:.3f} ms | {s.p90_ms:.3f} ms"
                f" | {s.p99_ms:.3f} ms | {s.requests} | {s.socket_errors} | {s.server_cpu:.0%}"
                f" | {s.server_cpu * 1e6 / s.rps if s.rps else 0:.1f} | {run.upstream_cpu:.0%}"
                f" | {run.core1_busy:.0%} |"
            )
    return "\n".join(lines)


def get_verdict(rows: Sequence[GetRow]) -> str:
    by = {r.server: r.med("rps") for r in rows}
    edge = by.get(EDGE, 0.0)
    targets = ((CADDY, "Caddy", TARGET_GET_VS_CADDY), (AIOHTTP, "the aiohttp proxy", TARGET_GET_VS_AIOHTTP),
               (NGINX, "nginx", TARGET_GET_VS_NGINX))  # fmt: skip
    parts = []
    for row, label, target in targets:
        if edge and by.get(row):
            v = edge / by[row]
            parts.append(f"edge {v:.2f}x {label} (target >= {target}x: {'met' if v >= target else 'MISSED'})")
    if edge and by.get(EDGE_METRICS):
        v = by[EDGE_METRICS] / edge
        ok = "met" if v >= TARGET_METRICS_ON else "MISSED"
        parts.append(f"metrics on {v:.3f}x metrics off (target >= {TARGET_METRICS_ON}x: {ok})")
    return "GET targets: " + "; ".join(parts) if parts else "GET targets: not evaluated"


# -- part 2: large transfers ---------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    seconds: float
    size: int  # bytes moved, as curl counted them
    proxy_cpu: float  # share of one core, over the transfer
    start_rss_kib: int  # the proxy's VmRSS before the transfer
    peak_rss_kib: int  # the proxy's VmHWM after it

    @property
    def mb_s(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds else 0.0


UPLOAD = "upload"
DOWNLOAD = "download"


def curl(
    port: int, direction: str, data: Path, cookie: str, size: int, core: str | None
) -> tuple[float, int]:
    """One transfer; returns (seconds, bytes), after checking it arrived whole."""
    max_time = 60 + size / CURL_MIN_RATE
    argv = ["curl", "-sS", "--max-time", f"{max_time:.0f}", "-H", f"Cookie: {cookie}"]
    with tempfile.NamedTemporaryFile(prefix="edge-bench-curl-") as body:
        if direction == UPLOAD:
            # -T streams the file (with its Content-Length); no Expect: edge and nginx
            # would both answer 100-continue, but curl may wait up to 1 s for it.
            argv += ["-T", str(data), "-H", "Expect:", "-o", body.name, "-w", "%{http_code} %{size_upload}"]
            url = f"http://127.0.0.1:{port}{UPLOAD_PATH}"
        else:
            argv += ["-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
            url = f"http://127.0.0.1:{port}{LARGE_PATH}"
        started = time.monotonic()
        done = subprocess.run(
            pinned(core, [*argv, url]), capture_output=True, text=True, timeout=max_time + 30, check=False
        )
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr.strip()}")
        code, moved = done.stdout.split()
        echoed = Path(body.name).read_text().strip()
    if code != "200" or int(moved) != size:
        raise RuntimeError(f"{direction}: HTTP {code}, {moved} of {size} bytes")
    if direction == UPLOAD and echoed != str(size):
        raise RuntimeError(f"upload: the sink read {echoed!r} bytes, expected {size}")
    return seconds, int(moved)


def measure_transfer(spec: ServerSpec, direction: str, data: Path, cookie: str, cfg: Settings) -> Transfer:
    with running(spec, cfg.server_core) as (port, pid):
        start_rss = status_kib(pid, "VmRSS")
        cpu_before = cpu_seconds(pid)
        seconds, moved = curl(port, direction, data, cookie, cfg.size, cfg.client_core)
        cpu = (cpu_seconds(pid) - cpu_before) / seconds
        peak = status_kib(pid, "VmHWM")
    return Transfer(seconds, moved, cpu, start_rss, peak)


def run_transfers(
    www: Path, data: Path, cookie: str, cfg: Settings, candidate: Path | None
) -> dict[tuple[str, str], list[Transfer]]:
    size_mib = cfg.size / MIB
    print(f"transfers: {size_mib:g} MiB up and down, {cfg.transfer_rounds} round(s)", flush=True)
    results: dict[tuple[str, str], list[Transfer]] = {}
    with (
        running(static_spec(www), cfg.client_core) as (static_port, _),
        running(sink_spec(), cfg.client_core) as (sink_port, _),
    ):
        upstreams = {DOWNLOAD: static_port, UPLOAD: sink_port}
        makers: list[tuple[str, Callable[[int], ServerSpec | None]]] = [
            (EDGE, lambda up: edge_spec(EDGE, up, cfg.size * 2)),
            (NGINX, nginx_proxy_spec),
            (DIRECT, lambda up: None),
        ]
        if candidate is not None:
            makers.append((CANDIDATE, lambda up: edge_spec(CANDIDATE, up, cfg.size * 2, cwd=candidate)))
        for n in range(cfg.transfer_rounds):
            print(f"round {n + 1}/{cfg.transfer_rounds}", flush=True)
            shift = n % len(makers)
            for name, make in [*makers[shift:], *makers[:shift]]:
                for direction in (DOWNLOAD, UPLOAD):
                    spec = make(upstreams[direction])
                    if spec is None:
                        seconds, moved = curl(
                            upstreams[direction], direction, data, cookie, cfg.size, cfg.client_core
                        )
                        t = Transfer(seconds, moved, 0.0, 0, 0)
                    else:
                        t = measure_transfer(spec, direction, data, cookie, cfg)
                    results.setdefault((name, direction), []).append(t)
                    print(
                        f"  {name:<24} {direction:<8} {t.mb_s:>8,.0f} MB/s  {t.seconds:6.2f} s"
                        + (
                            f"  proxy CPU {t.proxy_cpu:.0%}  peak RSS {t.peak_rss_kib / KIB:.1f} MiB"
                            if spec
                            else ""
                        ),
                        flush=True,
                    )
    return results


def transfer_table(results: dict[tuple[str, str], list[Transfer]]) -> str:
    lines = [
        "| server | direction | MB/s (median) | seconds | ratio vs nginx | proxy CPU | RSS at start"
        " | peak RSS (VmHWM) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (name, direction), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0] != EDGE)):
        rate = median([t.mb_s for t in runs])
        nginx = median([t.mb_s for t in results.get((NGINX, direction), [])])
        proxied = name != DIRECT
        lines.append(
            f"| {name} | {direction} | {rate:,.0f} | {median([t.seconds for t in runs]):.2f}"
            f" | {ratio(rate, nginx)}"
            + (
                f" | {median([t.proxy_cpu for t in runs]):.0%}"
                f" | {median([t.start_rss_kib for t in runs]) / KIB:.1f} MiB"
                f" | {max(t.peak_rss_kib for t in runs) / KIB:.1f} MiB |"
                if proxied
                else " | - | - | - |"
            )
        )
    return "\n".join(lines)


def transfer_verdict(results: dict[tuple[str, str], list[Transfer]]) -> str:
    parts = []
    for direction in (UPLOAD, DOWNLOAD):
        edge = median([t.mb_s for t in results.get((EDGE, direction), [])])
        nginx = median([t.mb_s for t in results.get((NGINX, direction), [])])
        if edge and nginx:
            v = edge / nginx
            ok = "met" if v >= TARGET_TRANSFER_VS_NGINX else "MISSED"
            parts.append(f"{direction} {v:.2f}x nginx (target >= {TARGET_TRANSFER_VS_NGINX}x: {ok})")
    peaks = [t.peak_rss_kib for (server, _), runs in results.items() if server == EDGE for t in runs]
    if peaks:
        peak = max(peaks) * KIB
        ok = "met" if peak < TARGET_PEAK_RSS else "MISSED"
        parts.append(f"peak RSS {peak / MIB:.1f} MiB (target < {TARGET_PEAK_RSS // MIB} MiB: {ok})")
    return "transfer targets: edge " + "; ".join(parts) if parts else "transfer targets: not evaluated"


# -- the report ---------------------------------------------------------------------------


def extra_versions() -> str:
    parts = []
    for dist in ("aiohttp", "PyJWT"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{dist} {metadata.version(dist)}")
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False, timeout=10)
    parts.append((done.stderr or done.stdout).strip().replace("nginx version: ", ""))
    if shutil.which("caddy") is not None:
        done = subprocess.run(["caddy", "version"], capture_output=True, text=True, check=False, timeout=10)
        parts.append(f"Caddy {(done.stdout.split() or ['(unknown)'])[0]}")
    done = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False, timeout=10)
    parts.append(" ".join(done.stdout.split()[:2]))
    return ", ".join(parts)


NOTES = """\
- **nginx does no token check**: stock nginx cannot verify a JWT (that needs a
  module), so its row is the cost of proxying alone, the "speed of light".
  It gets the same Cookie header as the others.
- **Caddy does no token check** either: `reverse_proxy` alone, GOMAXPROCS=1,
  pinned like the others, admin endpoint, automatic HTTPS and logs off. It
  stands for the Go proxy class (oauth2-proxy, Pomerium): Go's net/http
  forwarding, without the token check those add on top. (oauth2-proxy
  forwards with Go's httputil.ReverseProxy; Pomerium's data plane is Envoy,
  so for Pomerium this row is a stand-in, not a measurement.)
- The **aiohttp proxy** (bench/peers/aiohttp_proxy.py) does what edge does on
  this path: the cookie, PyJWT verification (key by kid, ES256 pinned, aud,
  iss, exp) with a dict cache of verified tokens, an email-domain check,
  hop-by-hop and auth-cookie stripping, X-Forwarded-* and identity headers,
  streamed responses over a keep-alive ClientSession, uvloop.
- **Pinning**: the proxy under test alone on core 0; the upstream nginx and
  the client (wrk or curl) share core 1. "client core busy" in the raw table
  says how loaded core 1 was: near 100% means the client side, not the proxy,
  may have been the limit (likeliest for the nginx row, whose real ceiling is
  then higher and the ratios against it flattering).
- Transfers: curl `-T file` (Content-Length, no Expect) and `-o /dev/null`;
  the upload sink answers with the number of body bytes it read, which is
  checked. MB/s is 10^6 bytes per second of curl's wall time. Each transfer
  gets a freshly started proxy, so VmHWM is that transfer's peak."""


def report(
    get_rows: Sequence[GetRow] | None,
    transfers: dict[tuple[str, str], list[Transfer]] | None,
    cfg: Settings,
    started: dt.datetime,
    command: str,
    candidate: Path | None,
) -> str:
    pinning = (
        f"proxy on core {cfg.server_core}; upstream and client on core {cfg.client_core}"
        if cfg.server_core is not None
        else "not pinned (fewer than 2 CPUs)"
    )
    out = [
        f"# edge proxy benchmark, {started:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"- command: `{command}`",
        f"- edge revision: {git_revision()}" + (f"; candidate: {candidate}" if candidate else ""),
        f"- {pinning}",
        f"- machine: {os.cpu_count()} CPU(s), {cpu_model()}",
        f"- versions: {versions()}, {extra_versions()}",
    ]
    if get_rows is not None:
        sizes = ", ".join(f"{r.server} {r.response_bytes} B" for r in get_rows)
        without = ", ".join(f"{r.server} {r.without_token}" for r in get_rows)
        out += [
            "",
            f"## Authenticated GET of {SMALL_BYTES} B",
            "",
            f"{cfg.rounds} round(s) x {cfg.duration} s per server (after {cfg.warmup} s warm-up), "
            f"wrk -t1 -c{cfg.connections}, keep-alive, `Cookie: CF_Authorization=<ES256 token>`.",
            f"Response sizes (head + body): {sizes}. Status of the same GET without the token: {without}.",
            "",
            get_table(get_rows),
            "",
            get_verdict(get_rows),
            "",
            "### Raw runs",
            "",
            get_raw_table(get_rows),
        ]
    if transfers is not None:
        out += [
            "",
            f"## Transfers of {cfg.size / MIB:g} MiB",
            "",
            f"{cfg.transfer_rounds} round(s); upload to bench/peers/upload_sink.py, download of a sparse "
            "file from nginx.",
            "",
            transfer_table(transfers),
            "",
            transfer_verdict(transfers),
        ]
    out += ["", "## Notes", "", NOTES, ""]
    return "\n".join(out)


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Proxy benchmark: edge vs nginx vs Caddy vs an aiohttp proxy."
    )
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved GET rounds, medians (default 3)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="whole seconds of warm-up per GET run (default 1)"
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB per transfer (default 1024)")
    parser.add_argument("--transfer-rounds", type=int, default=2, help="rounds of transfers (default 2)")
    parser.add_argument(
        "--part", action="append", choices=["get", "transfer"], help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 GET round x 2 s; 1 round of 256 MiB transfers"
    )
    parser.add_argument(
        "--metrics", action="store_true", help="also measure the edge with [metrics] on (GET, interleaved)"
    )
    parser.add_argument("--no-peers", action="store_true", help="GET: skip nginx, Caddy and aiohttp")
    parser.add_argument(
        "--candidate",
        type=Path,
        metavar="DIR",
        help="also measure the edge package in DIR (A/B, interleaved)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.size_mib, args.transfer_rounds = 1, 2, 256, 1
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1 or args.warmup < 0:
        parser.error("--duration and --connections must be positive, --rounds >= 1, --warmup >= 0")
    if args.size_mib < 1 or args.transfer_rounds < 1:
        parser.error("--size-mib and --transfer-rounds must be >= 1")
    if args.candidate is not None:
        args.candidate = args.candidate.resolve()
        if not (args.candidate / "edge" / "__main__.py").is_file():
            parser.error(f"{args.candidate} holds no edge package (edge/__main__.py)")
    return args


def ensure_packages(parts: set[str]) -> None:
    """apt-get install what is missing: nginx and curl, and Caddy for the GET part."""
    wanted = {"nginx": "nginx", "curl": "curl"} | ({"caddy": "caddy"} if "get" in parts else {})
    missing = [pkg for tool, pkg in wanted.items() if shutil.which(tool) is None]
    if missing:
        print(f"not found: installing the Debian package(s) {', '.join(missing)}", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        run_logged([*sudo, "apt-get", "update", "-qq"])
        run_logged([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing])


@contextlib.contextmanager
def files(size: int) -> Iterator[tuple[Path, Path]]:
    """(document root with the 1 KiB and the sparse large file, a sparse upload file)."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-files-") as tmp:
        www = Path(tmp) / "www"
        www.mkdir()
        (www / SMALL_PATH.lstrip("/")).write_bytes(bytes(range(256)) * (SMALL_BYTES // 256))
        for path in (www / LARGE_PATH.lstrip("/"), Path(tmp) / "upload.bin"):
            with path.open("wb") as f:
                f.truncate(size)
            warm_page_cache(path)
        yield www, Path(tmp) / "upload.bin"


def warm_page_cache(path: Path) -> None:
    """Read `path` once. The first read of a sparse file fills the page cache (1 GiB:
    about 2 s here, 25x a cached read); unwarmed, the first transfer of each file,
    always the same server's in round 1, measured that fill instead of the proxy."""
    chunk = bytearray(MIB)
    with path.open("rb") as f:
        while f.readinto(chunk):
            pass


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts = set(args.part or ("get", "transfer"))
    ensure_tools()
    ensure_packages(parts)
    two_cores = (os.cpu_count() or 1) >= 2
    if not two_cores:
        print("warning: fewer than 2 CPUs; nothing is pinned", file=sys.stderr)
    cfg = Settings(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        rounds=args.rounds,
        size=args.size_mib * MIB,
        transfer_rounds=args.transfer_rounds,
        server_core=SERVER_CORE if two_cores else None,
        client_core=CLIENT_CORE if two_cores else None,
    )
    started = dt.datetime.now(dt.UTC)
    command = " ".join(["python", "bench/proxy.py", *(argv if argv is not None else sys.argv[1:])])
    cookie = f"CF_Authorization={mint_token()}"
    get_rows = transfers = None
    with files(cfg.size) as (www, upload):
        if "get" in parts:
            get_rows = run_get(www, cookie, cfg, args.candidate, args.metrics, not args.no_peers)
        if "transfer" in parts:
            transfers = run_transfers(www, upload, cookie, cfg, args.candidate)
    text = report(get_rows, transfers, cfg, started, command, args.candidate)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"proxy-{started:%Y%m%d-%H%M%S}.md"
    out.write_text(text)
    print()
    if get_rows is not None:
        print(get_table(get_rows), "", get_verdict(get_rows), "", sep="\n")
    if transfers is not None:
        print(transfer_table(transfers), "", transfer_verdict(transfers), "", sep="\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
