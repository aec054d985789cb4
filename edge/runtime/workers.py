"""N worker processes on one port, and the supervisor that keeps them alive
and hands them reloads.

Invariants:
- The supervisor never runs an event loop and never accepts a connection on
  a public listener (with [metrics], one thread of its own serves the
  metrics listener: edge.runtime.metrics_server). It handles its signals
  one at a time, synchronously (they stay blocked, in every thread, and are
  taken with sigtimedwait), so a reload, a death and a restart never
  interleave: a worker is either forked before a reload and sent it, or
  forked after it with the reloaded configuration.
- Before forking, the supervisor makes every listening socket: per address,
  one per worker slot, in one SO_REUSEPORT group, so the kernel spreads
  connections evenly (with one shared socket, whichever worker wakes first
  takes a whole burst). It holds them for its whole life and a restarted
  worker gets its slot's sockets, so all serve one port (port 0 resolved
  once) and connections wait in the backlog while a worker restarts.
- SO_REUSEPORT would let a second edge join that group and silently take
  part of the traffic. So before making the group, a plain bind and listen
  on the address (no SO_REUSEPORT) must succeed, proving nobody serves it;
  and edges starting at the same moment take the probe and the group in
  turn (a lock file), so neither can slip in between.
- `boot` is the configuration the edge started with; `config` is the one in
  force: the last file a SIGHUP found valid (else `boot`), with `boot`'s
  restart-only settings. Every worker, restarted ones included, starts with
  `config`. On SIGHUP only the supervisor reads the file and the list files
  it names; if they are valid the result becomes `config` and their bytes go
  to every worker (edge.runtime.snapshots); if not, nothing changes. Workers
  ignore SIGHUP, so nothing reaches them that the supervisor has not checked.
- On SIGTERM/SIGINT the supervisor stops restarting, tells every worker,
  closes its own copies of the listening sockets (so once the workers close
  theirs, new connections are refused rather than queued), kills any worker
  still alive `shutdown_delay + drain_timeout + KILL_GRACE` seconds later,
  and returns 0. A second SIGTERM/SIGINT sends the workers HURRY (they skip
  the rest of their shutdown delay) and brings the kill forward to
  `drain_timeout + KILL_GRACE` from then, if that is sooner.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from edge.config.errors import ConfigError
from edge.config.load import loads
from edge.config.schema import Config
from edge.config.syntax import ListenAddress
from edge.login.keydir import KeyDirError
from edge.login.service import ensure_keys
from edge.runtime import metrics, metrics_server, snapshots
from edge.runtime.accesslog import AccessLog
from edge.runtime.server import (
    HURRY,
    Listeners,
    check_config,
    keep_restart_settings,
    listen_socket,
    server_ssl,
)

log = logging.getLogger("edge.workers")

IDLE_WAIT = 3600.0  # seconds: the longest the supervisor sleeps with nothing due (signals wake it)
KILL_GRACE = 5.0  # seconds past shutdown_delay + drain_timeout before a stuck worker is killed
RESTART_BACKOFF = 1.0  # seconds; a worker that dies this young is restarted after a pause
SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
LOCK_NAME = "edge-listen.lock"
LOCK_MODE = 0o644  # others may take the lock (flock needs only read access), not change it
REFUSED = "reload refused, still serving the previous configuration:"


@dataclass
class Worker:
    slot: int  # which of the supervisor's sets of listening sockets it accepts on
    started: float  # monotonic seconds
    channel: socket.socket  # the supervisor's end of its snapshot channel
    metrics: socket.socket | None = None  # the supervisor's end of its scrape channel


def open_slots(config: Config, count: int) -> list[Listeners]:
    """`count` sets of listening sockets, one per worker; raises ConfigError
    (TLS files), OSError naming the address (served already, or a bind)."""
    ctx = server_ssl(config)
    groups: list[list[socket.socket]] = []
    try:
        for addr in config.server.addresses:
            groups.append(_group(addr, count))
    except OSError:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return [Listeners(tuple(group[i] for group in groups), ctx) for i in range(count)]


def _group(addr: ListenAddress, count: int) -> list[socket.socket]:
    if addr.port == 0:  # a port free now; the probe below checks it again
        with listen_socket(addr) as free:
            addr = ListenAddress(addr.host, free.getsockname()[1])
    group: list[socket.socket] = []
    with _startup_lock():
        listen_socket(addr).close()  # raises, naming the address, if anyone serves it
        try:
            for _ in range(count):
                group.append(listen_socket(addr, share=True))
        except OSError:
            for sock in group:
                sock.close()
            raise
    return group


@contextlib.contextmanager
def _startup_lock() -> Iterator[None]:
    """Held while an edge checks an address and makes its group, so edges
    starting at once take turns (for a few milliseconds; one file for all
    ports, so none is left behind per port). Only a process of the same
    user can join a SO_REUSEPORT group, so another user's lock file that
    cannot be opened is not needed."""
    path = os.path.join(tempfile.gettempdir(), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, or by the kernel if we die
        yield
    finally:
        os.close(fd)


class Supervisor:
    def __init__(self, config: Config, source: str = "<config>") -> None:
        self.boot = config
        self.config = config
        self.source = source
        self.workers: dict[int, Worker] = {}
        self.slots: list[Listeners] = []
        self.restarts: list[tuple[float, int]] = []  # (monotonic time, slot): a dead worker's replacement
        self.kill_at: float | None = None  # set once stopping
        self.scrapes: metrics_server.SupervisorMetrics | None = None
        # The supervisor checks reloads: with it, the edge's reload count is its own.
        self.reloads = {"ok": 0, "refused": 0}

    def run(self) -> int:
        # Fail here, once, on what would make every worker die at startup
        # (and be restarted forever): an access log that cannot be opened.
        access_log = AccessLog.open(self.config.server.access_log)
        if access_log is not None:
            access_log.close()
        self.slots = open_slots(self.config, self.config.server.workers)
        # Bound before the line that says the edge is up, as the public sockets are.
        metrics_sock = None
        if self.boot.metrics is not None:
            try:
                metrics_sock = listen_socket(self.boot.metrics.address)
            except OSError:
                self._close_slots()
                raise
        log.info(
            "supervisor %d: %d workers on %s",
            os.getpid(),
            self.config.server.workers,
            ", ".join(self.slots[0].bound),
        )
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            if metrics_sock is not None:
                # Blocked above first, so its thread never takes a signal.
                self.scrapes = metrics_server.SupervisorMetrics(
                    metrics_sock,
                    self._scrape_channels,
                    lambda: [metrics.reloads_family(dict(self.reloads))],
                )
                where = ListenAddress(*metrics_sock.getsockname()[:2]).display()
                log.info("metrics on http://%s/metrics", where)
            for slot in range(len(self.slots)):
                self._spawn(slot)
            if self.scrapes is not None:
                self.scrapes.start()
            self._loop()
        finally:
            if self.scrapes is not None:
                self.scrapes.stop()
            self._close_slots()
            for worker in self.workers.values():
                worker.channel.close()
                metrics_server.close_quietly(worker.metrics)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return 0

    def _loop(self) -> None:
        while self.workers or (self.restarts and self.kill_at is None):
            info = signal.sigtimedwait(SIGNALS, self._timeout())
            if info is None:
                pass
            elif info.si_signo == signal.SIGHUP:
                self._reload()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self._stop()
            self._reap()
            self._restart_due()
            self._kill_if_due()

    def _kill_if_due(self) -> None:
        """Past the kill deadline: SIGKILL every worker left, once. The
        deadline then moves to never, so the loop sleeps until SIGCHLD says
        they are gone instead of waking at once until they are reaped."""
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            log.error("workers still running after the drain timeout; killing them")
            self._signal_all(signal.SIGKILL)
            self.kill_at = math.inf

    def _timeout(self) -> float:
        """Seconds until the next thing the loop must do on its own (at most IDLE_WAIT)."""
        due = [t for t, _ in self.restarts] if self.kill_at is None else [self.kill_at]
        return min(IDLE_WAIT, max(0.0, min(due) - time.monotonic())) if due else IDLE_WAIT

    def _scrape_channels(self) -> list[tuple[int, socket.socket]]:
        """For the metrics thread: (slot, scrape channel) of each live worker."""
        return [(w.slot, w.metrics) for w in list(self.workers.values()) if w.metrics is not None]

    def _spawn(self, slot: int) -> None:
        ours, theirs = snapshots.pair()
        scrape = socket.socketpair() if self.scrapes is not None else None
        pid = os.fork()
        if pid == 0:
            self._work(slot, ours, theirs, scrape)
        theirs.close()
        if scrape is not None:
            scrape[1].close()
        self.workers[pid] = Worker(slot, time.monotonic(), ours, None if scrape is None else scrape[0])
        log.info("worker %d started", pid)

    def _work(
        self,
        slot: int,
        ours: socket.socket,
        theirs: socket.socket,
        scrape: tuple[socket.socket, socket.socket] | None,
    ) -> NoReturn:
        """The child after fork: serve, then exit without unwinding the
        supervisor's stack."""
        code = 1
        try:
            ours.close()
            if scrape is not None:
                scrape[0].close()
            if self.scrapes is not None:  # the supervisor's thread is not in this process
                self.scrapes.listener.close()
                metrics_server.close_quietly(self.scrapes.conn)
            for sibling in self.workers.values():  # so the worker sees EOF when the supervisor dies
                sibling.channel.close()
                metrics_server.close_quietly(sibling.metrics)
            for other, listeners in enumerate(self.slots):
                if other != slot:
                    listeners.close()
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come, checked, on the channel
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            from edge.runtime.server import run

            run(
                self.config,
                source=self.source,
                listeners=self.slots[slot],
                boot=self.boot,
                channel=theirs,
                metrics_channel=None if scrape is None else scrape[1],
            )
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
            metrics_server.close_quietly(worker.metrics)
            if self.kill_at is not None:
                log.info("worker %d exited", pid)
                continue
            log.warning("worker %d died (%s); restarting it", pid, _describe(status))
            young = time.monotonic() - worker.started < RESTART_BACKOFF
            self.restarts.append((time.monotonic() + (RESTART_BACKOFF if young else 0.0), worker.slot))

    def _restart_due(self) -> None:
        now = time.monotonic()
        due = [slot for t, slot in self.restarts if t <= now]
        self.restarts = [(t, slot) for t, slot in self.restarts if t > now]
        for slot in due:
            self._spawn(slot)

    def _reload(self) -> None:
        try:
            text = _read(self.source)
            files: dict[str, bytes] = {}  # the list files' bytes, as this load read them
            config, kept = keep_restart_settings(self.boot, loads(text, self.source, files))
            ensure_keys(config)
            check_config(config, self.source)
        except KeyDirError as exc:
            log.error("%s %s: $.team.key_dir: %s", REFUSED, self.source, exc)
            self.reloads["refused"] += 1
            return
        except ConfigError as exc:
            log.error("%s %s", REFUSED, exc)
            self.reloads["refused"] += 1
            return
        self.reloads["ok"] += 1
        if kept:
            log.warning("reload: %s take effect only after a restart", ", ".join(kept))
        self.config = config
        fd = snapshots.snapshot(snapshots.Snapshot(text, files))
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

    def _stop(self) -> None:
        # The configuration in force is the one the workers were sent, so
        # they wait as long as is counted here.
        server = self.config.server
        now = time.monotonic()
        if self.kill_at is None:
            self.kill_at = now + server.shutdown_delay + server.drain_timeout + KILL_GRACE
            self.restarts.clear()
            self._signal_all(signal.SIGTERM)
        else:
            self.kill_at = min(self.kill_at, now + server.drain_timeout + KILL_GRACE)
            self._signal_all(HURRY)
        self._close_slots()

    def _close_slots(self) -> None:
        for listeners in self.slots:
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
