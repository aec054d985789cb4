"""Logout across workers and instances through a real redis-server (BEHAVIOUR.md section 6).

`edge serve` runs with ``workers = 2`` and ``store = "redis"``; the two
workers share the listening port with SO_REUSEPORT, so the kernel spreads
fresh connections over them. The tests do not leave coverage to chance: after
each probe they ask /proc which worker holds the edge's end of the connection
(the socket's inode in /proc/net/tcp, then the worker whose fd points at it),
and every probing loop runs until each worker has answered as required.

Sign-in uses the dev provider (the flows themselves are tested in
tests/login/test_login_e2e.py and tests/login/test_login_oidc.py); here what matters is
what happens to the application token after a logout:

- refused by every worker within CONVERGE seconds;
- with Redis down: refused at once by the worker that handled the logout, the
  edge keeps serving other sessions, one-time codes cannot be claimed (503),
  one warning per worker; with Redis back (empty), the revocation made during
  the outage reaches the other worker within CONVERGE seconds;
- with Redis hung (SIGSTOP): logout and the handoff still answer (each Redis
  call gives up after REDIS_TIMEOUT), and the revocation spreads once it
  answers again;
- two instances sharing the key directory and Redis: a logout on one is
  enforced by the other.

A probe is a fetch-style GET (``Accept: application/json``, no Sec-Fetch-Mode)
with the token in a cookie: 200 from the upstream, or the edge's 401.
"""

from __future__ import annotations

import http.client
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browserless import Browser
from conftest import EdgeProcess, allow_app_toml, free_port, wait_for, write_config
from redis_fixture import RedisServer, redis_server  # noqa: F401
from upstream_server import Upstream

from edge.login.passwords import hash_password

CONVERGE = 5.0  # seconds: a logout is enforced everywhere within this (BEHAVIOUR.md 6: "within seconds")
PROBE_LIMIT = 10.0  # seconds any other probing loop may run
TIMEOUT = 10.0  # seconds on every client socket
PASSWORD = "correct horse"
HASH = hash_password(PASSWORD)
USERS = ("alice@example.com", "bob@example.com")
WORKER_RE = re.compile(r"worker (\d+) started")

# Which worker answered is read from /proc (Linux, as SO_REUSEPORT's spreading is).
pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")

TEAM = """
[team]
host = "auth.localhost"
url = "{team_url}"
key_dir = "{key_dir}"
store = "redis"
redis_url = "{redis_url}"

[[team.providers]]
type = "dev"
id = "dev"
users = [{users}]

"""


# -- which worker answered -----------------------------------------------------------------


def socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the edge's end of our connection 127.0.0.1:client_port -> :server_port."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()  # sl, local, remote, ..., inode (the 10th)
            local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
            if (local, remote) == (server_port, client_port):
                return fields[9]
    return None


def holder(inode: str, pids: list[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


@dataclass
class Answer:
    status: int
    worker: int | None  # the pid of the worker that answered, when /proc could tell
    location: str


def call(edge: Edge, host: str, path: str, token: str) -> Answer:
    """One request on a fresh connection; the connection stays open until the
    worker holding its other end has been looked up."""
    port = edge.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        headers = {"Host": f"{host}:{port}", "Accept": "application/json"}
        if token:
            headers["Cookie"] = f"CF_Authorization={token}"
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        assert conn.sock is not None, "the edge closed the connection; the worker cannot be told"
        client_port = conn.sock.getsockname()[1]
        inode = socket_inode(port, client_port)
        worker = None if inode is None else holder(inode, edge.pids)
        return Answer(r.status, worker, r.getheader("location") or "")
    finally:
        conn.close()


# -- the edge ---------------------------------------------------------------------------


@dataclass
class Edge:
    proc: EdgeProcess
    port: int  # where it listens
    pids: list[int]  # its workers

    def browser(self) -> Browser:
        return Browser(self.port)

    def url(self, host: str, path: str = "/echo/page") -> str:
        return f"http://{host}:{self.port}{path}"

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.proc.lines if re.search(pattern, line)]


def start_edge(
    directory: Path, redis: RedisServer, upstream: Upstream, *, workers: int, port: int, team_port: int
) -> Edge:
    """`edge serve` listening on `port`; its team URL names `team_port` (two
    instances behind one name share it: the tokens' iss is that URL)."""
    directory.mkdir()
    users = ", ".join(f'{{ email = "{u}", password = "{HASH}" }}' for u in USERS)
    extra = TEAM.format(
        team_url=f"http://auth.localhost:{team_port}",
        key_dir=directory.parent / "keys",
        redis_url=redis.url,
        users=users,
    ) + "".join(allow_app_toml(name, f"{name}.localhost", upstream.url) for name in ("app", "other"))
    server = f'listen = ["127.0.0.1:{port}"]\nworkers = {workers}'
    proc = EdgeProcess(write_config(directory, server, extra))
    # Ready means every worker listens (the supervisor's line comes first).
    if not wait_for(lambda: len([ln for ln in proc.lines if "listening on" in ln]) >= workers, PROBE_LIMIT):
        proc.stop()
        raise RuntimeError("workers did not start:\n" + proc.stderr_text())
    pids = [int(m.group(1)) for ln in proc.lines if (m := WORKER_RE.search(ln))]
    if workers == 1:
        pids = [proc.proc.pid]  # no supervisor: the process is the worker
    assert len(pids) == workers, proc.stderr_text()
    return Edge(proc, port, pids)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def edges(tmp_path: Path, redis_server: RedisServer, upstream: Upstream) -> Iterator[Callable[..., Edge]]:  # noqa: F811
    started: list[Edge] = []

    def start(workers: int = 2, team_port: int | None = None) -> Edge:
        # The team URL names the port, so it is chosen before the edge starts.
        port = free_port()
        edge = start_edge(
            tmp_path / f"edge{len(started)}",
            redis_server,
            upstream,
            workers=workers,
            port=port,
            team_port=team_port or port,
        )
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.proc.stop()


# -- sign-in and probing --------------------------------------------------------------------


def signed_in(edge: Edge, email: str) -> tuple[Browser, str]:
    """Sign in to app.localhost with the dev provider: the browser and its app token."""
    browser = edge.browser()
    page = browser.get(edge.url("app.localhost"))
    assert page.status == 200 and "<form" in page.text, (page.status, page.text[:300])
    fields = {"csrf": page.form_field("csrf"), "provider": "dev", "email": email, "password": PASSWORD}
    final = browser.post_form(page.url, fields)
    assert final.status == 200, (final.status, final.text[:300])
    token = browser.cookie("app.localhost")
    assert token
    return browser, token


def probe(edge: Edge, token: str) -> Answer:
    return call(edge, "app.localhost", "/echo/probe", token)


def until_every_worker(edge: Edge, token: str, status: int, timeout: float) -> dict[int, int]:
    """Probe on fresh connections until each worker has answered `status`
    (or `timeout` passes); returns, per worker, the last status it gave."""
    last: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = probe(edge, token)
        if answer.worker is not None:
            last[answer.worker] = answer.status
        if len(last) == len(edge.pids) and all(s == status for s in last.values()):
            break
        time.sleep(0.01)
    return last


def every_worker_gives(edge: Edge, token: str, wanted: dict[int, int]) -> dict[int, int]:
    """Probe until each worker has answered once; every answer must be the
    worker's `wanted` status. Returns the last status per worker."""
    last: dict[int, int] = {}
    deadline = time.monotonic() + PROBE_LIMIT
    while time.monotonic() < deadline and len(last) < len(wanted):
        answer = probe(edge, token)
        if answer.worker is not None:
            assert answer.status == wanted[answer.worker], (answer, wanted)
            last[answer.worker] = answer.status
    return last


def spread(edge: Edge, token: str, n: int = 30) -> dict[int, set[int]]:
    """`n` probes on fresh connections: per worker, the statuses it gave. (That
    30 probes all land on one of two workers has odds of about 1 in 10^9.)"""
    seen: dict[int, set[int]] = {}
    for _ in range(n):
        answer = probe(edge, token)
        assert answer.worker is not None, "could not tell which worker answered"
        seen.setdefault(answer.worker, set()).add(answer.status)
    return seen


def logout(edge: Edge, token: str) -> Answer:
    """The app host's logout: revokes the session, then redirects to the team's."""
    answer = call(edge, "app.localhost", "/cdn-cgi/access/logout", token)
    assert answer.status == 302 and "auth.localhost" in answer.location, answer
    return answer


# -- the tests ------------------------------------------------------------------------------


def test_logout_is_enforced_by_every_worker(edges: Callable[..., Edge]) -> None:
    edge = edges(workers=2)
    _, token = signed_in(edge, USERS[0])
    # The token works on both workers: the probes below reach both and mean something.
    accepted = until_every_worker(edge, token, 200, PROBE_LIMIT)
    assert accepted == dict.fromkeys(edge.pids, 200), accepted

    answer = logout(edge, token)
    assert answer.worker in edge.pids
    refused = until_every_worker(edge, token, 401, CONVERGE)
    assert refused == dict.fromkeys(edge.pids, 401), refused
    # From then on no worker lets it through, on any connection.
    assert spread(edge, token) == {pid: {401} for pid in edge.pids}
    assert "Traceback" not in edge.proc.stderr_text()


def test_redis_outage_and_recovery(edges: Callable[..., Edge], redis_server: RedisServer) -> None:  # noqa: F811
    edge = edges(workers=2)
    _, alice = signed_in(edge, USERS[0])
    bob_browser, bob = signed_in(edge, USERS[1])
    assert until_every_worker(edge, alice, 200, PROBE_LIMIT) == dict.fromkeys(edge.pids, 200)

    redis_server.stop()
    unreachable = r"WARNING edge\.store: redis at .* unreachable"
    # Each worker notices (its subscription drops) and says so.
    assert wait_for(lambda: len(edge.lines(unreachable)) >= 2, CONVERGE), edge.proc.stderr_text()

    # A logout during the outage takes effect at once in the worker that handled it...
    handled = logout(edge, alice).worker
    assert handled in edge.pids
    other = next(pid for pid in edge.pids if pid != handled)
    last = every_worker_gives(edge, alice, {handled: 401, other: 200})
    assert last == {handled: 401, other: 200}, last  # ...and the other cannot know yet
    # The edge keeps serving: bob's session works on both workers.
    assert until_every_worker(edge, bob, 200, PROBE_LIMIT) == dict.fromkeys(edge.pids, 200)
    assert bob_browser.get(edge.url("app.localhost", "/cdn-cgi/edge/health")).status == 200

    # A one-time code cannot be claimed without Redis: a clear 503, no cookie.
    r = bob_browser.get(edge.url("other.localhost"))
    assert r.status == 503, (r.status, r.text[:300])
    assert "text/html" in (r.header("content-type") or "")
    assert "briefly unavailable" in r.text
    assert bob_browser.cookie("other.localhost") is None

    # Several reconnect attempts (the backoff is capped at 1 s) fail meanwhile:
    # still one warning per worker, not one per attempt.
    time.sleep(2.0)
    warned = [int(line.split()[2]) for line in edge.lines(unreachable)]
    assert sorted(warned) == sorted(edge.pids), edge.proc.stderr_text()

    # Redis comes back empty; the worker that knows writes the revocation back.
    redis_server.start()
    refused = until_every_worker(edge, alice, 401, CONVERGE)
    assert refused == dict.fromkeys(edge.pids, 401), refused
    assert spread(edge, alice) == {pid: {401} for pid in edge.pids}
    assert wait_for(lambda: len(edge.lines(r"INFO edge\.store: redis at .* reachable again")) == 2, CONVERGE)
    # Single use works again, and bob was never signed out.
    r = bob_browser.get(edge.url("other.localhost"))
    assert r.status == 200, (r.status, r.text[:300])
    assert spread(edge, bob) == {pid: {200} for pid in edge.pids}
    assert len(edge.lines(unreachable)) == 2
    assert "Traceback" not in edge.proc.stderr_text()


def test_redis_hangs(edges: Callable[..., Edge], redis_server: RedisServer) -> None:  # noqa: F811
    """A Redis that accepts connections but never answers (SIGSTOP): every
    call to it gives up after REDIS_TIMEOUT, so logout and the handoff still
    answer; once it answers again, the revocation reaches every worker."""
    edge = edges(workers=2)
    _, alice = signed_in(edge, USERS[0])
    bob_browser, _ = signed_in(edge, USERS[1])

    redis_server.pause()
    handled = logout(edge, alice).worker
    assert handled in edge.pids
    other = next(pid for pid in edge.pids if pid != handled)
    last = every_worker_gives(edge, alice, {handled: 401, other: 200})
    assert last == {handled: 401, other: 200}, last
    r = bob_browser.get(edge.url("other.localhost"))
    assert r.status == 503 and "briefly unavailable" in r.text, (r.status, r.text[:300])
    assert bob_browser.cookie("other.localhost") is None

    redis_server.resume()
    refused = until_every_worker(edge, alice, 401, CONVERGE)
    assert refused == dict.fromkeys(edge.pids, 401), refused
    assert spread(edge, alice) == {pid: {401} for pid in edge.pids}
    assert bob_browser.get(edge.url("other.localhost")).status == 200
    assert "Traceback" not in edge.proc.stderr_text()


def test_logout_on_one_instance_is_enforced_by_another(edges: Callable[..., Edge]) -> None:
    a = edges(workers=1)
    # B listens elsewhere but is the same team: same URL (the tokens' iss),
    # same key directory, same Redis; as two instances behind one name.
    b = edges(workers=1, team_port=a.port)
    _, token = signed_in(a, USERS[0])
    assert probe(b, token).status == 200

    logout(a, token)
    assert probe(a, token).status == 401
    deadline = time.monotonic() + CONVERGE
    while probe(b, token).status != 401 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(b, token).status == 401
    for edge in (a, b):
        assert "Traceback" not in edge.proc.stderr_text()
