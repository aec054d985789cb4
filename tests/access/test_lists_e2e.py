"""A list file is read again on SIGHUP: a real `edge serve`, a real upstream,
the list edited on disk between requests. Every socket has a timeout and
every wait a deadline; no test asserts a duration."""

from __future__ import annotations

import signal
from http.client import HTTPConnection
from pathlib import Path

from conftest import EdgeProcess, wait_for, write_config
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


def status(port: int) -> int:
    conn = HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/echo/x", headers={"Host": "office.test"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def hup(proc: EdgeProcess, word: str) -> str:
    """SIGHUP, then wait until the edge logs a line with `word` once more; that line."""
    seen = sum(word in line for line in proc.lines)
    proc.signal(signal.SIGHUP)
    assert wait_for(lambda: sum(word in line for line in proc.lines) > seen, TIMEOUT), proc.stderr_text()
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
