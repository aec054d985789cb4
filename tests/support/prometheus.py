"""A real Prometheus server (Debian package `prometheus`) scraping the edge,
and a reader of the text format for tests that scrape it themselves.

The server runs on a free loopback port with a config written to tmp_path,
its TSDB in tmp_path, scraping every second; `value` asks its HTTP API.
Every wait is bounded; the process is stopped (SIGTERM, then SIGKILL) by the
fixture's teardown.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port
from required_tools import missing

BINARY = shutil.which("prometheus")
START_TIMEOUT = 30.0  # seconds for Prometheus to answer /-/ready (a TSDB in tmp, a loaded box)
SCRAPE_INTERVAL = "1s"
STOP_TIMEOUT = 10.0  # seconds before SIGKILL

Labels = frozenset[tuple[str, str]]

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_text(body: str) -> dict[tuple[str, Labels], float]:
    """Samples of a text-format 0.0.4 body: (name, labels) -> value."""
    samples: dict[tuple[str, Labels], float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        labels = frozenset(
            (k, v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
            for k, v in _LABEL_RE.findall(m.group(2) or "")
        )
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def labels(**pairs: str) -> Labels:
    return frozenset(pairs.items())


class Prometheus:
    def __init__(self, directory: Path, target: str) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: edge\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        assert BINARY is not None
        self.log = (directory / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                BINARY,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("prometheus did not start:\n" + (directory / "prometheus.log").read_text())
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value `expr` has now, or None when it has none."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])

    def wait_value(self, expr: str, expected: float, timeout: float = 30.0) -> float | None:
        """Wait (bounded) until `expr` is `expected`; the last value seen."""
        deadline = time.monotonic() + timeout
        last = self.value(expr)
        while last != expected and time.monotonic() < deadline:
            time.sleep(0.25)
            last = self.value(expr)
        return last

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """prometheus(target "host:port") starts a server scraping it."""
    if BINARY is None:
        missing("the prometheus binary is not installed (Debian package prometheus)")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        directory = tmp_path / f"prometheus{len(started)}"
        directory.mkdir()
        server = Prometheus(directory, target)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
