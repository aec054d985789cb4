"""edge.http.flow.WriteBatch: the worker's writes, sent once per turn of the loop.

The batch is a shortcut for speed (fewer wake-ups of the peers); what it
must never change is what each transport receives and when a transport may
close. Each property below compares the batch with writing at once (its
loop-less mode, the slow path) on the same script of writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.http.flow import WRITE_HIGH_WATER, WriteBatch


class Sink:
    """A transport that records what it is given."""

    def __init__(self, fail: bool = False) -> None:
        self.data = bytearray()
        self.writes = 0
        self.closing = False
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("a write that fails")
        self.writes += 1
        self.data += data

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        self.write(b"".join(pieces))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_writes_wait_for_the_loops_turn_then_leave_in_order(loop: asyncio.AbstractEventLoop) -> None:
    batch = WriteBatch(loop)
    a, b = Sink(), Sink()
    batch.write(a, b"1")  # type: ignore[arg-type]
    batch.write(b, b"x")  # type: ignore[arg-type]
    batch.writelines(a, (b"2", b"3"))  # type: ignore[arg-type]
    batch.write(a, bytearray(b"4"))  # type: ignore[arg-type]
    assert (a.data, b.data) == (b"", b"")
    turn(loop)
    assert (bytes(a.data), bytes(b.data)) == (b"1234", b"x")
    assert a.writes == 2  # "1", then "2", "3" and "4": queued one after another, one write
    assert batch.pending == [] and batch.size == 0


def test_without_a_loop_every_write_goes_out_at_once() -> None:
    batch = WriteBatch(None)
    a = Sink()
    batch.write(a, b"1")  # type: ignore[arg-type]
    batch.writelines(a, (b"2", b"3"))  # type: ignore[arg-type]
    assert bytes(a.data) == b"123" and batch.pending == []


def test_a_full_batch_is_sent_at_once(loop: asyncio.AbstractEventLoop) -> None:
    """The bound: a fast upstream's reads cannot pile up here for a slow
    client; the transport's own buffer (and pause_writing) sees them."""
    batch = WriteBatch(loop)
    a = Sink()
    batch.write(a, b"x" * (WRITE_HIGH_WATER - 1))  # type: ignore[arg-type]
    assert a.data == b""
    batch.writelines(a, (b"y", b"z"))  # type: ignore[arg-type]
    assert len(a.data) == WRITE_HIGH_WATER + 1 and batch.size == 0


def test_a_closed_transport_gets_nothing_and_the_others_get_theirs(loop: asyncio.AbstractEventLoop) -> None:
    batch = WriteBatch(loop)
    a, b = Sink(), Sink()
    batch.write(a, b"lost")  # type: ignore[arg-type]
    batch.write(b, b"kept")  # type: ignore[arg-type]
    a.closing = True  # aborted meanwhile (a client gone)
    turn(loop)
    assert (bytes(a.data), bytes(b.data)) == (b"", b"kept")


def test_a_write_that_raises_costs_only_its_own_connection(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    batch = WriteBatch(loop)
    bad, good = Sink(fail=True), Sink()
    batch.write(bad, b"1")  # type: ignore[arg-type]
    batch.write(good, b"2")  # type: ignore[arg-type]
    turn(loop)
    assert bad.closing and bytes(good.data) == b"2"
    assert "internal error writing" in caplog.text


def test_writes_made_while_flushing_go_out_in_the_same_flush(loop: asyncio.AbstractEventLoop) -> None:
    """A write can call back into a protocol (pause_writing) that writes
    again: that write is not left for a turn that may never come."""
    batch = WriteBatch(loop)
    a, b = Sink(), Sink()

    class Echo(Sink):
        def write(self, data: bytes) -> None:
            super().write(data)
            batch.write(b, b"echo")  # type: ignore[arg-type]

    echo = Echo()
    batch.write(echo, b"1")  # type: ignore[arg-type]
    batch.write(a, b"2")  # type: ignore[arg-type]
    batch.flush()
    assert (bytes(echo.data), bytes(a.data), bytes(b.data)) == (b"1", b"2", b"echo")


def test_a_flush_inside_a_flush_keeps_the_order(loop: asyncio.AbstractEventLoop) -> None:
    """A write whose callback writes again and flushes (a protocol closing
    while the batch is being sent): the inner flush goes on from where the
    outer one is, so nothing queued earlier is overtaken."""
    batch = WriteBatch(loop)
    b = Sink()

    class Reenter(Sink):
        def write(self, data: bytes) -> None:
            super().write(data)
            if data == b"1":
                batch.write(self, b"3")  # type: ignore[arg-type]
                batch.flush()

    a = Reenter()
    batch.write(a, b"1")  # type: ignore[arg-type]
    batch.write(b, b"x")  # type: ignore[arg-type]
    batch.write(a, b"2")  # type: ignore[arg-type]
    batch.flush()
    assert (bytes(a.data), bytes(b.data)) == (b"123", b"x")
    assert batch.pending == [] and batch.sent == 0 and batch.size == 0


# A script: (transport index, op, size); op "write", "lines", "flush" (as a
# caller does before closing), "turn" (the loop's turn).
Step = tuple[int, str, int]
steps = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(["write", "write", "lines", "flush", "turn"]),
        st.integers(1, WRITE_HIGH_WATER // 3),
    ),
    max_size=40,
)


def play(script: list[Step], batch: WriteBatch, loop: asyncio.AbstractEventLoop | None) -> list[bytes]:
    sinks = [Sink() for _ in range(4)]
    written = [b""] * 4  # what each transport has been given, so far
    for n, (index, op, size) in enumerate(script):
        piece = bytes([65 + n % 26]) * size
        sink = sinks[index]
        if op == "write":
            batch.write(sink, piece)  # type: ignore[arg-type]
            written[index] += piece
        elif op == "lines":
            batch.writelines(sink, (piece[:1], piece[1:]))  # type: ignore[arg-type]
            written[index] += piece
        elif op == "flush":
            batch.flush()
            # What a closing caller relies on: everything written so far is out.
            assert [bytes(s.data) for s in sinks] == written
        elif loop is not None:
            turn(loop)
            assert [bytes(s.data) for s in sinks] == written  # one turn sends it all
    if loop is not None:
        turn(loop)
    return [bytes(s.data) for s in sinks]


@settings(max_examples=200, deadline=None)
@given(steps)
def test_any_script_gives_each_transport_what_writing_at_once_gives(script: list[Step]) -> None:
    loop = asyncio.new_event_loop()
    try:
        batched = play(script, WriteBatch(loop), loop)
    finally:
        loop.close()
    assert batched == play(script, WriteBatch(None), None)
