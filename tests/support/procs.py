"""What a process tells: its children, memory and TCP sockets (from /proc),
the workers that say they are listening (from its log)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LISTEN, ESTABLISHED, TIME_WAIT = "0A", "01", "06"  # socket states in /proc/net/tcp


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.update(int(p) for p in (task / "children").read_text().split())
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def vm_kib(pid: int, key: str) -> int:
    """A memory figure of /proc/<pid>/status in KiB: `key` "VmRSS", "VmHWM", ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_sockets(pid: int | None = None) -> list[tuple[int, str]]:
    """(local port, state) of the TCP sockets process `pid` holds, or of all
    TCP sockets in its network namespace (TIME_WAIT ones belong to no
    process) when `pid` is None."""
    inodes = None if pid is None else _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid or 'self'}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if inodes is None or fields[9] in inodes:
                found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[3]))
    return found


def listening_ports(pid: int) -> set[int]:
    """TCP ports on which process `pid` holds a listening socket."""
    return {port for port, state in tcp_sockets(pid) if state == LISTEN}


def connections_on(pid: int, port: int) -> int:
    """How many established connections to local `port` process `pid` holds."""
    return sum(1 for p, state in tcp_sockets(pid) if p == port and state == ESTABLISHED)


def serving_pids(lines: list[str]) -> set[int]:
    """The processes that logged "listening on" (the log format puts the pid
    third)."""
    return {int(line.split()[2]) for line in lines if "listening on" in line}
