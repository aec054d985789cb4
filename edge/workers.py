"""N worker processes on one port, and the supervisor that keeps them alive.

Invariants:
- The supervisor never runs an event loop and never accepts a connection; it
  forks workers, restarts any that die, and forwards SIGTERM/SIGINT/SIGHUP.
- Each worker binds its own listening sockets with SO_REUSEPORT, so the kernel
  spreads connections across them. The supervisor holds a bound,
  non-listening socket per address for its whole life: it reserves the port
  (and resolves port 0 once) so a restarted worker always gets the same one.
- On SIGTERM the supervisor waits for every worker to drain, killing any
  still alive `drain_timeout + KILL_GRACE` seconds later, then returns 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from types import FrameType

import msgspec

from .accesslog import AccessLog
from .config import Config, ListenAddress

log = logging.getLogger("edge.workers")

KILL_GRACE = 5.0  # seconds past drain_timeout before a stuck worker is killed
RESTART_BACKOFF = 1.0  # seconds; a worker that dies this young is restarted after a pause


def reserve_ports(config: Config) -> tuple[Config, list[socket.socket]]:
    """Bind (without listening) every address with SO_REUSEPORT; port 0 is
    resolved here so all workers share the one port the kernel picked."""
    held: list[socket.socket] = []
    listen: list[str] = []
    for addr in config.server.addresses:
        from .server import bind_socket

        try:
            sock = bind_socket(addr, reuse_port=True)
        except OSError:
            for other in held:
                other.close()
            raise
        held.append(sock)
        listen.append(ListenAddress(host=addr.host, port=sock.getsockname()[1]).display())
    server = msgspec.structs.replace(config.server, listen=listen)
    return msgspec.structs.replace(config, server=server), held


class Supervisor:
    def __init__(self, config: Config, source: str = "<config>") -> None:
        self.config = config
        self.source = source
        self.children: dict[int, float] = {}  # pid -> start time
        self.stopping = False

    def run(self) -> int:
        # Fail here, once, on what would make every worker die at startup
        # (and be restarted forever): an access log that cannot be opened.
        access_log = AccessLog.open(self.config.server.access_log)
        if access_log is not None:
            access_log.close()
        config, held = reserve_ports(self.config)
        self.config = config
        log.info(
            "supervisor %d: %d workers on %s",
            os.getpid(),
            config.server.workers,
            ", ".join(config.server.listen),
        )
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_forward)
        signal.signal(signal.SIGALRM, self._on_kill)
        try:
            for _ in range(config.server.workers):
                self._spawn()
            self._wait()
        finally:
            for sock in held:
                sock.close()
        return 0

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
                    signal.signal(sig, signal.SIG_DFL)
                from .server import run

                run(self.config, source=self.source, reuse_port=True)
                code = 0
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = time.monotonic()
        log.info("worker %d started", pid)

    def _wait(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            started = self.children.pop(pid, None)
            if started is None:
                continue
            if self.stopping:
                log.info("worker %d exited", pid)
                continue
            log.warning("worker %d died (%s); restarting it", pid, _describe(status))
            if time.monotonic() - started < RESTART_BACKOFF:
                time.sleep(RESTART_BACKOFF)
            if not self.stopping:
                self._spawn()

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            signal.alarm(int(self.config.server.drain_timeout + KILL_GRACE))
        self._signal_all(signal.SIGTERM)

    def _on_forward(self, signum: int, frame: FrameType | None) -> None:
        self._signal_all(signum)

    def _on_kill(self, signum: int, frame: FrameType | None) -> None:
        log.error("workers still running after the drain timeout; killing them")
        self._signal_all(signal.SIGKILL)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
