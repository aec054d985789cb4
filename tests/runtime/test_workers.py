"""The supervisor and its listeners, with real `edge serve` processes: a
worker it restarts serves the configuration in force, and a second edge on a
port an edge already serves exits 1 instead of sharing the traffic."""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BodyCountingUpstream, EdgeProcess, free_port, open_app_toml, wait_for, write_config
from procs import TIME_WAIT, alive, children, connections_on, serving_pids, tcp_sockets

from edge.config.schema import Config
from edge.runtime.workers import Supervisor

Factory = Callable[..., EdgeProcess]
WAIT = 30.0  # seconds: the most any single expected event may take (a restart waits 1 s first;
# a loaded CI box has been seen to need more than 10)
HEALTH = "/cdn-cgi/edge/health"
# Fresh connections opened to look for the restarted worker's answers; the
# kernel hands each to whichever worker accepts first, so a few dozen reach both.
MAX_PROBES = 200
WANTED_ON_REPLACEMENT = 5


@pytest.fixture
def upstream() -> Iterator[BodyCountingUpstream]:
    up = BodyCountingUpstream()
    yield up
    up.close()


def ask(port: int, host: str = "app.test", path: str = "/") -> tuple[int, str]:
    """Status and Server header of one GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("server") or ""
    finally:
        conn.close()


def hup(edge: EdgeProcess, word: str, times: int) -> None:
    """SIGHUP the edge, then wait until `word` has been logged `times` more times."""
    seen = sum(word in line for line in edge.lines)
    edge.signal(signal.SIGHUP)

    def logged() -> bool:
        return sum(word in line for line in edge.lines) >= seen + times

    assert wait_for(logged, WAIT), edge.stderr_text()


def restart_one_worker(edge: EdgeProcess) -> int:
    """SIGKILL one worker; return the pid of the one the supervisor starts
    instead, once it says it is listening."""
    supervisor = edge.proc.pid
    workers = children(supervisor)
    assert len(workers) == 2
    os.kill(min(workers), signal.SIGKILL)
    assert wait_for(lambda: len(children(supervisor) - workers) == 1, WAIT), edge.stderr_text()
    replacement = (children(supervisor) - workers).pop()
    assert wait_for(lambda: replacement in serving_pids(edge.lines), WAIT), edge.stderr_text()
    return replacement


def answers_including(
    edge: EdgeProcess, worker: int, check: Callable[[int, str], None], path: str = "/"
) -> int:
    """Open fresh keep-alive connections, each one GET `path` (the app's host),
    passing every answer to `check`, until `worker` holds a few of them; the
    connections stay open so /proc can tell which worker accepted each.
    Returns how many answers were checked."""
    conns: list[http.client.HTTPConnection] = []
    try:
        while len(conns) < MAX_PROBES and connections_on(worker, edge.port) < WANTED_ON_REPLACEMENT:
            conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=WAIT)
            conns.append(conn)
            conn.request("GET", path, headers={"Host": "app.test"})
            response = conn.getresponse()
            response.read()
            check(response.status, response.getheader("server") or "")
        assert connections_on(worker, edge.port) >= WANTED_ON_REPLACEMENT, "the new worker got no connections"
        return len(conns)
    finally:
        for conn in conns:
            conn.close()


# -- 1. a restarted worker serves the configuration in force ----------------------------


def test_restarted_worker_serves_the_reloaded_config(
    edge_factory: Factory, upstream: BodyCountingUpstream
) -> None:
    server = "workers = 2"
    edge = edge_factory(server, open_app_toml(upstream.url, ("app.test",)))
    assert wait_for(lambda: len(serving_pids(edge.lines)) == 2, WAIT)
    assert ask(edge.port)[0] == 200

    write_config(edge.config_path.parent, server, "")  # the app is gone: 404
    hup(edge, "reloaded", times=2)
    assert ask(edge.port)[0] == 404

    replacement = restart_one_worker(edge)

    def removed(status: int, _server: str) -> None:
        assert status == 404, "a worker answered with the configuration read at startup"

    answers_including(edge, replacement, removed)
    assert edge.stop() == 0


def test_restarted_worker_after_a_refused_reload_and_restart_only_keys(
    edge_factory: Factory, upstream: BodyCountingUpstream, tmp_path: Path
) -> None:
    """A reload that changes restart-only keys (access_log here) applies the
    rest of [server] (server_header) and keeps those; an invalid file is
    refused. A worker restarted afterwards is set up like its siblings.
    (The Server header is the edge's on its own answers, such as health.)"""
    app = open_app_toml(upstream.url, ("app.test",))
    edge = edge_factory('workers = 2\nserver_header = "edge-boot"', app)
    assert wait_for(lambda: len(serving_pids(edge.lines)) == 2, WAIT)
    assert ask(edge.port, path=HEALTH) == (200, "edge-boot")

    access_log = tmp_path / "access.log"
    directory = edge.config_path.parent
    write_config(directory, f'workers = 2\nserver_header = "edge-new"\naccess_log = "{access_log}"', app)
    hup(edge, "reloaded", times=2)
    assert any("server.access_log take effect only after a restart" in line for line in edge.lines)
    assert ask(edge.port, path=HEALTH) == (200, "edge-new"), "server_header was not reloaded"

    write_config(directory, 'workers = 2\nserver_header = "edge-bad"\nnot_a_key = 1', app)
    hup(edge, "reload refused", times=1)
    assert ask(edge.port, path=HEALTH) == (200, "edge-new")

    replacement = restart_one_worker(edge)

    def in_force(status: int, server_header: str) -> None:
        assert (status, server_header) == (200, "edge-new")

    answers_including(edge, replacement, in_force, path=HEALTH)
    assert not access_log.exists(), "a restarted worker opened the access log of a reload"
    assert edge.stop() == 0


def test_single_worker_reload_applies_server_keys_beside_restart_only_ones(
    edge_factory: Factory, upstream: BodyCountingUpstream, tmp_path: Path
) -> None:
    app = open_app_toml(upstream.url, ("app.test",))
    edge = edge_factory("max_target_bytes = 4096", app)
    long_target = "/" + "x" * 1000
    assert ask(edge.port, path=long_target)[0] == 200

    access_log = tmp_path / "access.log"
    server = f'max_target_bytes = 512\naccess_log = "{access_log}"'
    write_config(edge.config_path.parent, server, app)
    hup(edge, "take effect only after a restart", times=1)
    assert any("server.access_log take effect only after a restart" in line for line in edge.lines)
    assert ask(edge.port, path=long_target)[0] == 414, "the reload dropped max_target_bytes"
    assert not access_log.exists()
    assert edge.stop() == 0


# -- 2. one edge per address ------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [(1, 1), (2, 2), (1, 2), (2, 1)])
def test_second_edge_on_a_served_port_exits_1(edge_factory: Factory, first: int, second: int) -> None:
    port = free_port()
    listen = f'listen = ["127.0.0.1:{port}"]'
    edge = edge_factory(f"{listen}\nworkers = {first}")
    assert wait_for(lambda: len(serving_pids(edge.lines)) == first, WAIT)
    serving = serving_pids(edge.lines)

    other = edge_factory(f"{listen}\nworkers = {second}")
    assert other.proc.wait(WAIT) == 1, other.stderr_text()
    assert other.lines[-1] == f"edge: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in other.stderr_text()

    assert all(ask(port, path=HEALTH)[0] == 200 for _ in range(30))
    assert all(alive(pid) for pid in serving)
    assert edge.proc.poll() is None
    assert edge.stop() == 0


def test_two_edges_starting_at_once_on_one_port(tmp_path: Path) -> None:
    """Neither has its sockets yet when the other checks the port: one serves,
    the other exits 1 (never both serving)."""
    port = free_port()
    configs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        configs.append(write_config(tmp_path / name, f'listen = ["127.0.0.1:{port}"]\nworkers = 2'))
    started: list[EdgeProcess] = []
    threads = [threading.Thread(target=lambda c=c: started.append(EdgeProcess(c))) for c in configs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert len(started) == 2
        assert wait_for(lambda: any(e.proc.poll() is not None for e in started), WAIT)
        (loser,) = [e for e in started if e.proc.poll() is not None]
        (winner,) = [e for e in started if e is not loser]
        assert loser.proc.returncode == 1, loser.stderr_text()
        assert loser.lines[-1] == f"edge: cannot listen on 127.0.0.1:{port}: Address already in use"
        assert wait_for(lambda: len(serving_pids(winner.lines)) == 2, WAIT)
        assert all(ask(port, path=HEALTH)[0] == 200 for _ in range(20))
        assert winner.stop() == 0
    finally:
        for edge in started:
            edge.stop()


def test_restart_on_the_same_port_despite_time_wait(edge_factory: Factory) -> None:
    """The edge closes first after `Connection: close`, so the port is left
    with TIME_WAIT sockets; the next edge on it still starts."""
    port = free_port()
    server = f'listen = ["127.0.0.1:{port}"]\nworkers = 2'
    edge = edge_factory(server)
    assert wait_for(lambda: len(serving_pids(edge.lines)) == 2, WAIT)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(f"GET {HEALTH} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
            while sock.recv(65536):
                pass
    assert edge.stop() == 0
    assert (port, TIME_WAIT) in tcp_sockets()

    again = edge_factory(server)
    assert again.port == port
    assert wait_for(lambda: len(serving_pids(again.lines)) == 2, WAIT)
    assert ask(port, path=HEALTH)[0] == 200
    assert again.stop() == 0


def test_workers_leave_when_the_supervisor_is_killed(edge_factory: Factory) -> None:
    """Orphaned workers would hold the port with nobody to restart or reload
    them; they drain and exit, and a new edge can take the port."""
    port = free_port()
    server = f'listen = ["127.0.0.1:{port}"]\nworkers = 2\ndrain_timeout = 1.0'
    edge = edge_factory(server)
    assert wait_for(lambda: len(serving_pids(edge.lines)) == 2, WAIT)
    workers = children(edge.proc.pid)
    edge.proc.kill()
    assert wait_for(lambda: not any(alive(pid) for pid in workers), WAIT), edge.stderr_text()
    again = edge_factory(server)
    assert wait_for(lambda: len(serving_pids(again.lines)) == 2, WAIT)
    assert ask(port, path=HEALTH)[0] == 200
    assert again.stop() == 0


def test_the_supervisor_kills_stuck_workers_once_and_then_waits(caplog: pytest.LogCaptureFixture) -> None:
    """Past its kill deadline the supervisor sends SIGKILL once and then
    sleeps until SIGCHLD: it used to keep the deadline, so its wait timed
    out at once and it spun (and logged "killing them") until the killed
    workers were reaped."""
    supervisor = Supervisor(Config())
    supervisor.kill_at = time.monotonic() - 1.0  # stopping, and the drain time is up
    with caplog.at_level(logging.ERROR, logger="edge"):
        supervisor._kill_if_due()
        assert supervisor._timeout() > 1.0  # not a spin
        supervisor._kill_if_due()
    assert [r.getMessage() for r in caplog.records].count(
        "workers still running after the drain timeout; killing them"
    ) == 1
