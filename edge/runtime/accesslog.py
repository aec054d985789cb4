"""The access log: one JSON object per request, one line each.

Lines are buffered and flushed by the server's sweep (and when the buffer
grows past FLUSH_BYTES), so a request costs one encode and one list append,
never a write system call.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import IO

import msgspec

from edge.config.schema import KIB

FLUSH_BYTES = 64 * KIB
# Workers share stdout: a pipe write of at most PIPE_BUF bytes is atomic
# (POSIX), so each write carries whole lines and never more than that, and
# lines from different workers never interleave mid-line. (A file opened
# with O_APPEND gets whole writes appended atomically anyway.)
PIPE_BUF = 4096


def _line_chunks(buffer: bytearray, limit: int) -> list[bytes]:
    """Split into whole-line chunks of at most `limit` bytes (a longer line
    is a chunk of its own)."""
    chunks: list[bytes] = []
    view = bytes(buffer)
    start = 0
    while start < len(view):
        end = view.rfind(b"\n", start, start + limit) + 1
        if end <= start:  # one line longer than the limit
            end = view.find(b"\n", start) + 1 or len(view)
        chunks.append(view[start:end])
        start = end
    return chunks


class AccessRecord(msgspec.Struct, omit_defaults=False):
    time: str
    client: str
    method: str
    host: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    app: str | None = None
    decision: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    request_id: str = ""  # edge.http.request_id: also in X-Request-Id and the edge's pages


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    # strftime was 5% of a logged request's CPU; the text changes once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def iso_time(epoch: float) -> str:
    whole = int(epoch)
    millis = int((epoch - whole) * 1000)
    return f"{_second(whole)}.{millis:03d}Z"


class AccessLog:
    """Buffered JSON-lines writer to stdout or a file."""

    def __init__(self, stream: IO[bytes], owned: bool) -> None:
        self.stream = stream
        self.owned = owned
        self.encoder = msgspec.json.Encoder()
        self.buffer = bytearray()

    @classmethod
    def open(cls, target: str) -> AccessLog | None:
        if target == "off":
            return None
        if target == "stdout":
            return cls(sys.stdout.buffer, owned=False)
        try:
            stream = open(target, "ab")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open access log {target}: {exc.strerror or exc}") from None
        return cls(stream, owned=True)

    def write(self, record: AccessRecord) -> None:
        self.encoder.encode_into(record, self.buffer, -1)
        self.buffer += b"\n"
        if len(self.buffer) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            try:
                for chunk in _line_chunks(self.buffer, PIPE_BUF):
                    self.stream.write(chunk)
                    self.stream.flush()
            except (OSError, ValueError):
                pass  # a full disk or closed stdout must not stop the edge
            self.buffer.clear()

    def close(self) -> None:
        self.flush()
        if self.owned:
            self.stream.close()
