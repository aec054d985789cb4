"""The access log's buffering: whole lines, pipe-atomic writes."""

from __future__ import annotations

import io
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.runtime.accesslog import PIPE_BUF, AccessLog, AccessRecord, _line_chunks, iso_time


@pytest.mark.parametrize(
    "sizes",
    [[10], [10, 4000, 100], [5000], [4095], [1] * 3000, [100, 5000, 3, 4094, 4094]],
)
def test_chunks_are_whole_lines_within_pipe_buf(sizes: list[int]) -> None:
    buffer = bytearray(b"".join(b"x" * n + b"\n" for n in sizes))
    chunks = _line_chunks(buffer, PIPE_BUF)
    assert b"".join(chunks) == bytes(buffer)
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= PIPE_BUF or chunk.count(b"\n") == 1


def test_records_are_json_lines() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, owned=False)
    for status in (200, 404):
        log.write(AccessRecord("t", "127.0.0.1:1", "GET", "a", "/", status, 0, 10, 0.1, app="x"))
    log.flush()
    lines = stream.getvalue().splitlines()
    assert [msgspec.json.decode(line)["status"] for line in lines] == [200, 404]
    assert msgspec.json.decode(lines[0])["app"] == "x"


@settings(max_examples=300, deadline=None)
@given(epochs=st.lists(st.floats(0, 4_102_444_800, allow_nan=False), min_size=1, max_size=12))
def test_iso_time_with_its_cache_is_strftime(epochs: list[float]) -> None:
    """iso_time caches the whole-second text (accesslog._second): in any
    order of times, repeats and second boundaries included, it is what
    strftime and the millisecond arithmetic give uncached."""
    for epoch in [*epochs, *epochs[::-1]]:
        whole = int(epoch)
        expected = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1000):03d}Z"
        )
        assert iso_time(epoch) == expected
