"""N worker processes on shared listening sockets, and the supervisor that
keeps them alive and hands them reloads.

Invariants:
- The supervisor never runs an event loop and never accepts a connection. It
  handles its signals one at a time, synchronously (they stay blocked and are
  taken with sigtimedwait), so a reload, a death and a restart never
  interleave: a worker is either forked before a reload and sent it, or
  forked after it with the reloaded configuration.
- The supervisor binds and listens on every address once, without
  SO_REUSEPORT, before forking; workers inherit those sockets. So all
  workers serve the same port (port 0 resolved once), a second edge on it
  fails to bind, and connections wait in the backlog while a worker restarts.
- `boot` is the configuration the edge started with; `config` is the one in
  force: `boot` after a reload, with `boot`'s restart-only settings. Every
  worker, restarted ones included, starts with `config`. On SIGHUP only the
  supervisor reads the file; if it is valid it becomes `config` and its
  bytes go to every worker (edge.snapshots); if not, nothing changes.
  Workers ignore SIGHUP, so nothing reaches them that the supervisor has not
  checked.
- On SIGTERM/SIGINT the supervisor stops restarting, tells every worker,
  closes its own copies of the listening sockets (so once the workers close
  theirs, new connections are refused rather than queued), kills any worker
  still alive `drain_timeout + KILL_GRACE` seconds later, and returns 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from . import snapshots
from .accesslog import AccessLog
from .config import Config, ConfigError, loads
from .keydir import KeyDirError
from .login import ensure_keys
from .server import Listeners, check_config, keep_restart_settings, open_listeners

log = logging.getLogger("edge.workers")

KILL_GRACE = 5.0  # seconds past drain_timeout before a stuck worker is killed
RESTART_BACKOFF = 1.0  # seconds; a worker that dies this young is restarted after a pause
SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
REFUSED = "reload refused, still serving the previous configuration:"


@dataclass
class Worker:
    started: float  # monotonic seconds
    channel: socket.socket  # the supervisor's end of its snapshot channel


class Supervisor:
    def __init__(self, config: Config, source: str = "<config>") -> None:
        self.boot = config
        self.config = config
        self.source = source
        self.workers: dict[int, Worker] = {}
        self.restarts: list[float] = []  # monotonic times at which to fork a worker in place of a dead one
        self.kill_at: float | None = None  # set once stopping

    def run(self) -> int:
        # Fail here, once, on what would make every worker die at startup
        # (and be restarted forever): an access log that cannot be opened.
        access_log = AccessLog.open(self.config.server.access_log)
        if access_log is not None:
            access_log.close()
        listeners = open_listeners(self.config)
        log.info(
            "supervisor %d: %d workers on %s",
            os.getpid(),
            self.config.server.workers,
            ", ".join(listeners.bound),
        )
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for _ in range(self.config.server.workers):
                self._spawn(listeners)
            self._loop(listeners)
        finally:
            listeners.close()
            for worker in self.workers.values():
                worker.channel.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return 0

    def _loop(self, listeners: Listeners) -> None:
        while self.workers or (self.restarts and self.kill_at is None):
            info = signal.sigtimedwait(SIGNALS, self._timeout())
            if info is None:
                pass
            elif info.si_signo == signal.SIGHUP:
                self._reload()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self._stop(listeners)
            self._reap()
            self._restart_due(listeners)
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                log.error("workers still running after the drain timeout; killing them")
                self._signal_all(signal.SIGKILL)

    def _timeout(self) -> float:
        """Seconds until the next thing the loop must do on its own."""
        due = [*self.restarts] if self.kill_at is None else [self.kill_at]
        return max(0.0, min(due) - time.monotonic()) if due else 3600.0

    def _spawn(self, listeners: Listeners) -> None:
        ours, theirs = snapshots.pair()
        pid = os.fork()
        if pid == 0:
            self._work(listeners, ours, theirs)
        theirs.close()
        self.workers[pid] = Worker(time.monotonic(), ours)
        log.info("worker %d started", pid)

    def _work(self, listeners: Listeners, ours: socket.socket, theirs: socket.socket) -> NoReturn:
        """The child after fork: serve, then exit without unwinding the
        supervisor's stack."""
        code = 1
        try:
            ours.close()
            for sibling in self.workers.values():  # so the worker sees EOF when the supervisor dies
                sibling.channel.close()
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come, checked, on the channel
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            from .server import run

            run(self.config, source=self.source, listeners=listeners, boot=self.boot, channel=theirs)
            code = 0
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:  # not a worker (the demo origin)
                continue
            worker.channel.close()
            if self.kill_at is not None:
                log.info("worker %d exited", pid)
                continue
            log.warning("worker %d died (%s); restarting it", pid, _describe(status))
            young = time.monotonic() - worker.started < RESTART_BACKOFF
            self.restarts.append(time.monotonic() + (RESTART_BACKOFF if young else 0.0))

    def _restart_due(self, listeners: Listeners) -> None:
        now = time.monotonic()
        due = [t for t in self.restarts if t <= now]
        self.restarts = [t for t in self.restarts if t > now]
        for _ in due:
            self._spawn(listeners)

    def _reload(self) -> None:
        try:
            text = _read(self.source)
            config, kept = keep_restart_settings(self.boot, loads(text, self.source))
            ensure_keys(config)
            check_config(config, self.source)
        except KeyDirError as exc:
            log.error("%s %s: $.team.key_dir: %s", REFUSED, self.source, exc)
            return
        except ConfigError as exc:
            log.error("%s %s", REFUSED, exc)
            return
        if kept:
            log.warning("reload: %s take effect only after a restart", ", ".join(kept))
        self.config = config
        fd = snapshots.snapshot(text)
        try:
            for pid, worker in list(self.workers.items()):
                self._send(pid, worker, fd)
        finally:
            os.close(fd)
        log.info("configuration checked; sent to %d worker(s)", len(self.workers))

    def _send(self, pid: int, worker: Worker, fd: int) -> None:
        try:
            snapshots.send(worker.channel, fd)
        except BlockingIOError:
            # It has not read many reloads: its loop is stuck. Its replacement
            # starts with the configuration in force.
            log.error("worker %d is not taking reloads; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # it has exited; reaping restarts it with the configuration in force

    def _stop(self, listeners: Listeners) -> None:
        if self.kill_at is None:
            self.kill_at = time.monotonic() + self.config.server.drain_timeout + KILL_GRACE
            self.restarts.clear()
        self._signal_all(signal.SIGTERM)
        listeners.close()

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _read(path: str) -> bytes:
    """The file's bytes; a failure worded as config.load words it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
