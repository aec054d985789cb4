"""The supervisor-to-worker channel, on a real socketpair and memfds, and
what the supervisor puts in it on SIGHUP."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from edge.config.load import load, loads
from edge.runtime import snapshots
from edge.runtime.snapshots import Snapshot
from edge.runtime.workers import Supervisor, Worker


def send_text(ours: socket.socket, text: bytes, files: dict[str, bytes] | None = None) -> None:
    fd = snapshots.snapshot(Snapshot(text, files or {}))
    try:
        snapshots.send(ours, fd)
    finally:
        os.close(fd)


def test_snapshots_arrive_whole_and_in_order() -> None:
    ours, theirs = snapshots.pair()
    with ours, theirs:
        assert snapshots.receive(theirs) is None  # nothing waiting
        big = b"# " + b"x" * (4 << 20) + b"\n"  # far beyond any socket buffer
        for text in (b"[server]\n", big, b""):
            send_text(ours, text)
        assert snapshots.receive(theirs) == Snapshot(b"[server]\n")
        assert snapshots.receive(theirs) == Snapshot(big)
        assert snapshots.receive(theirs) == Snapshot(b"")  # an empty file is a snapshot too
        assert snapshots.receive(theirs) is None


def test_a_snapshot_carries_the_list_files_it_was_checked_with() -> None:
    """The config file and, by path as the config names them, the bytes of
    its list files as the supervisor read them: a worker loads those."""
    ours, theirs = snapshots.pair()
    with ours, theirs:
        files = {"conf/office.txt": b"# office\n192.0.2.0/24\n", "/abs/big.txt": b"10.0.0.0/8\n" * 100_000}
        send_text(ours, b'[[lists]]\nname = "office"\n', files)
        received = snapshots.receive(theirs)
        assert received == Snapshot(b'[[lists]]\nname = "office"\n', files)
        assert received is not None and received.files == files


def test_one_snapshot_to_many_workers() -> None:
    """One memfd goes to every worker; each reads it whole (the file offset
    is shared between them)."""
    pairs = [snapshots.pair() for _ in range(3)]
    text = b"[server]\nworkers = 3\n" * 1000
    fd = snapshots.snapshot(Snapshot(text, {"office.txt": b"192.0.2.0/24\n"}))
    try:
        for ours, _ in pairs:
            snapshots.send(ours, fd)
    finally:
        os.close(fd)
    for ours, theirs in pairs:
        assert snapshots.receive(theirs) == Snapshot(text, {"office.txt": b"192.0.2.0/24\n"})
        ours.close()
        theirs.close()


def test_a_message_without_a_file_is_not_an_empty_config() -> None:
    ours, theirs = snapshots.pair()
    with ours, theirs:
        ours.send(snapshots.TAG)
        assert snapshots.receive(theirs) is None


def test_supervisor_gone() -> None:
    ours, theirs = snapshots.pair()
    with theirs:
        send_text(ours, b"[server]\n")
        ours.close()
        assert snapshots.receive(theirs) == Snapshot(b"[server]\n")  # what was sent still arrives
        with pytest.raises(snapshots.Closed):
            snapshots.receive(theirs)


def test_a_worker_that_reads_nothing_never_blocks_the_supervisor() -> None:
    ours, theirs = snapshots.pair()
    with ours, theirs:
        fd = snapshots.snapshot(Snapshot(b"[server]\n"))
        try:
            with pytest.raises(BlockingIOError):
                for _ in range(100_000):
                    snapshots.send(ours, fd)
        finally:
            os.close(fd)


def test_the_supervisor_sends_the_list_files_it_checked(tmp_path: Path) -> None:
    """On SIGHUP the supervisor reads the config and its list files once and
    sends those bytes: a worker loading the snapshot serves that list, even
    once the file on disk says otherwise."""
    office = tmp_path / "office.txt"
    office.write_bytes(b"192.0.2.0/24\n")
    path = tmp_path / "edge.toml"
    text = (
        f'[server]\naccess_log = "off"\n[[lists]]\nname = "office"\ntype = "ip"\nfile = "{office}"\n'
        '[[apps]]\nname = "a"\ndomains = ["a.test"]\nupstream = "http://127.0.0.1:9"\n'
        '[[apps.policies]]\nname = "p"\naction = "bypass"\ninclude = [{ ip_list = ["office"] }]\n'
    )
    path.write_text(text)
    supervisor = Supervisor(load(path), str(path))
    ours, theirs = snapshots.pair()
    with ours, theirs:
        supervisor.workers[os.getpid()] = Worker(0, 0.0, ours)  # a worker that is never sent a signal
        office.write_bytes(b"192.0.2.0/24\n198.51.100.0/24\n")
        supervisor._reload()
        office.write_bytes(b"203.0.113.0/24\n")  # edited again before the worker loads
        received = snapshots.receive(theirs)
    assert received == Snapshot(text.encode(), {str(office): b"192.0.2.0/24\n198.51.100.0/24\n"})
    assert supervisor.reloads == {"ok": 1, "refused": 0}
    assert loads(received.text, str(path), dict(received.files)).lists[0].items == [
        "192.0.2.0/24",
        "198.51.100.0/24",
    ]
