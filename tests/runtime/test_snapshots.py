"""The supervisor-to-worker channel, on a real socketpair and memfds."""

from __future__ import annotations

import os
import socket

import pytest

from edge.runtime import snapshots


def send_text(ours: socket.socket, text: bytes) -> None:
    fd = snapshots.snapshot(text)
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
        assert snapshots.receive(theirs) == b"[server]\n"
        assert snapshots.receive(theirs) == big
        assert snapshots.receive(theirs) == b""  # an empty file is a snapshot too
        assert snapshots.receive(theirs) is None


def test_one_snapshot_to_many_workers() -> None:
    """One memfd goes to every worker; each reads it whole (the file offset
    is shared between them)."""
    pairs = [snapshots.pair() for _ in range(3)]
    text = b"[server]\nworkers = 3\n" * 1000
    fd = snapshots.snapshot(text)
    try:
        for ours, _ in pairs:
            snapshots.send(ours, fd)
    finally:
        os.close(fd)
    for ours, theirs in pairs:
        assert snapshots.receive(theirs) == text
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
        assert snapshots.receive(theirs) == b"[server]\n"  # what was sent still arrives
        with pytest.raises(snapshots.Closed):
            snapshots.receive(theirs)


def test_a_worker_that_reads_nothing_never_blocks_the_supervisor() -> None:
    ours, theirs = snapshots.pair()
    with ours, theirs:
        fd = snapshots.snapshot(b"[server]\n")
        try:
            with pytest.raises(BlockingIOError):
                for _ in range(100_000):
                    snapshots.send(ours, fd)
        finally:
            os.close(fd)
