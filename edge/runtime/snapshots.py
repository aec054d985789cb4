"""The channel from the supervisor to one worker: snapshots of the config file
and of the list files it names.

Invariants:
- The supervisor reads the file and its `[[lists]]` files once per SIGHUP,
  checks them, and sends every worker the very bytes it checked (a
  `Snapshot`: the config text, and each list file's bytes by the path the
  config writes); a worker loads those (`edge.config.load.loads` given the
  files) and reads neither itself, so a file edited again meanwhile cannot
  split the workers between two versions.
- One message per snapshot on a SOCK_SEQPACKET socketpair: one byte plus a
  memfd holding the snapshot, msgpack-encoded (SCM_RIGHTS), so a config of
  any size is one small, atomic message and a send never blocks the
  supervisor.
- Only the supervisor holds its end; a worker reading end-of-file knows its
  supervisor is gone.
"""

from __future__ import annotations

import os
import socket

import msgspec

TAG = b"c"  # the message body; the snapshot itself travels as the attached fd


class Snapshot(msgspec.Struct, frozen=True):
    """What the supervisor checked: the config file's bytes, and the bytes of
    each list file it names, by path as written in the config."""

    text: bytes
    files: dict[str, bytes] = msgspec.field(default_factory=dict)


_decoder = msgspec.msgpack.Decoder(Snapshot)


def pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor's end, worker's end), both non-blocking."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


def snapshot(checked: Snapshot) -> int:
    """A memfd holding `checked`; the caller closes it once sent."""
    fd = os.memfd_create("edge-config", os.MFD_CLOEXEC)
    view = memoryview(msgspec.msgpack.encode(checked))
    while view:
        view = view[os.write(fd, view) :]
    return fd


def send(channel: socket.socket, fd: int) -> None:
    """Raises BlockingIOError if the worker has left many snapshots unread,
    OSError if it is gone."""
    socket.send_fds(channel, [TAG], [fd])


class Closed(Exception):
    """The supervisor's end is closed."""


def receive(channel: socket.socket) -> Snapshot | None:
    """The next snapshot, None if none is waiting; raises Closed."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(channel, len(TAG), 1)
    except BlockingIOError:
        return None
    if not data and not fds:
        raise Closed
    try:
        return _decoder.decode(_read(fds[0])) if fds else None
    finally:
        for fd in fds:
            os.close(fd)


def _read(fd: int) -> bytes:
    # pread: the memfd's offset is shared by every worker it was sent to.
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
