"""A list file is read again on SIGHUP: a real `edge serve`, a real upstream,
the list edited on disk between requests; with workers, every worker serves
the list the supervisor read and checked. Every socket has a timeout and
every wait a deadline; no test asserts a duration."""

from __future__ import annotations

import os
import signal
import threading
from http.client import HTTPConnection
from pathlib import Path

from conftest import EdgeProcess, wait_for, write_config
from procs import children, connections_on
from upstream_server import Upstream

TIMEOUT = 10.0  # seconds, on every socket and every wait

APP = """
[[lists]]
name = "office"
type = "ip"
file = "{office}"

[[apps]]
name = "office"
domains = ["office.test"]
upstream = "{up}"
[[apps.policies]]
name = "from the office"
action = "bypass"
include = [{{ ip_list = ["office"] }}]
"""


def ask(conn: HTTPConnection) -> int:
    conn.request("GET", "/echo/x", headers={"Host": "office.test"})
    response = conn.getresponse()
    response.read()
    return response.status


def status(port: int) -> int:
    conn = HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        return ask(conn)
    finally:
        conn.close()


def hup(proc: EdgeProcess, word: str, times: int = 1) -> str:
    """SIGHUP, then wait until the edge logs `times` more lines with `word`; the last."""
    seen = sum(word in line for line in proc.lines)
    proc.signal(signal.SIGHUP)

    def logged() -> bool:
        return sum(word in line for line in proc.lines) >= seen + times

    assert wait_for(logged, TIMEOUT), proc.stderr_text()
    return [line for line in proc.lines if word in line][-1]


def test_an_edited_list_file_takes_effect_on_sighup(tmp_path: Path) -> None:
    office = tmp_path / "office.txt"
    office.write_text("# the office\n192.0.2.0/24\n")
    with Upstream() as up:
        proc = EdgeProcess(write_config(tmp_path, "", APP.format(office=office, up=up.url)))
        try:
            assert status(proc.port) == 403  # 127.0.0.1 is not in the office

            office.write_text("# the office\n192.0.2.0/24\n127.0.0.1  # this machine\n")
            hup(proc, "reloaded")
            assert status(proc.port) == 200

            # A bad line: the reload is refused with the file and line; the last list stays.
            office.write_text("192.0.2.0/24\n127.0.0.1\nnot-a-network\n")
            refusal = hup(proc, "reload refused")
            assert f"$.lists[0].file: {office}:3: Expected an IP network" in refusal, refusal
            assert status(proc.port) == 200

            office.write_text("192.0.2.0/24\n")
            hup(proc, "reloaded")
            assert status(proc.port) == 403
        finally:
            assert proc.stop() == 0


class FifoList:
    """A list file that is a named pipe: whoever opens it first reads
    `first`, everyone after reads `later`; so it tells the reads apart that
    no timing could (the supervisor's read, then any worker's)."""

    def __init__(self, path: Path, first: bytes, later: bytes) -> None:
        os.mkfifo(path)
        self.path = path
        self.first = first
        self.later = later
        self.reads = 0
        self.closing = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the pipe
            try:
                if self.closing:
                    return
                os.write(fd, self.first if self.reads == 0 else self.later)  # < PIPE_BUF: one write
                self.reads += 1
            except BrokenPipeError:
                pass  # a reader that had read its list already (open again at once), gone since
            finally:
                os.close(fd)

    def close(self) -> None:
        self.closing = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open return
        try:
            self.thread.join(TIMEOUT)
        finally:
            os.close(fd)
        assert not self.thread.is_alive()


def test_every_worker_serves_the_list_file_the_supervisor_checked(tmp_path: Path) -> None:
    """With workers, the supervisor reads the list file with the config on
    SIGHUP and hands its bytes on: the list file edited again meanwhile (here:
    a pipe that gives any later reader another list) changes no worker's."""
    office = tmp_path / "office.txt"
    office.write_text("192.0.2.0/24\n")
    with Upstream() as up:
        proc = EdgeProcess(write_config(tmp_path, "workers = 2", APP.format(office=office, up=up.url)))
        fifo: FifoList | None = None
        conns: list[HTTPConnection] = []
        try:
            started = wait_for(lambda: sum("listening on" in line for line in proc.lines) == 2, 3 * TIMEOUT)
            assert started, proc.stderr_text()  # (a loaded CI box has needed more than 10 s for workers)
            workers = children(proc.proc.pid)
            assert len(workers) == 2
            assert status(proc.port) == 403  # 127.0.0.1 is not in the office

            office.unlink()
            fifo = FifoList(office, b"192.0.2.0/24\n127.0.0.1\n", b"192.0.2.0/24\n")
            hup(proc, "reloaded", times=2)  # both workers
            assert fifo.reads >= 1

            # Fresh connections (kept open, so /proc tells which worker took
            # each) until both workers hold one: every answer is the checked list's.
            def both_answered() -> bool:
                return all(connections_on(pid, proc.port) > 0 for pid in workers)

            while len(conns) < 200 and not both_answered():
                conns.append(HTTPConnection("127.0.0.1", proc.port, timeout=TIMEOUT))
                assert ask(conns[-1]) == 200, f"a worker read the list file itself ({len(conns)} asked)"
            assert both_answered(), "one worker took every connection"
        finally:
            for conn in conns:
                conn.close()
            try:
                assert proc.stop() == 0
            finally:
                if fifo is not None:
                    fifo.close()
