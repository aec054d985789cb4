"""A real redis-server on a free loopback port, for tests: `RedisServer` and the
`redis_server` fixture (import it into a test module to use it).

The server keeps nothing on disk (`--save "" --appendonly no`), so `stop()`
then `start()` gives an empty Redis on the same port, like a restart without
persistence. Every wait is bounded; the fixture always kills the server.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from conftest import free_port

START_TIMEOUT = 10.0  # seconds for a new server to answer PING
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on 127.0.0.1:`port` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`redis-server` on 127.0.0.1:`port`, logging to `directory`/redis.log."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, empty, on the same port) and wait until PING answers."""
        if self.proc is not None:
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (bin/test installs it)")
        self._log = (self.directory / "redis.log").open("ab")
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), *options, "--dir", str(self.directory)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        log = (self.directory / "redis.log").read_text(errors="replace")
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); a no-op when it is not running."""
        self.resume()  # a frozen server would not act on SIGTERM
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
