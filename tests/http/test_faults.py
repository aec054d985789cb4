"""The fault log (edge/http/faults.py), driven by hand: `now` is passed in, so no
test waits for an interval to pass."""

from __future__ import annotations

import logging

import pytest

from edge.http.faults import INTERVAL, FaultLog

URL = "http://127.0.0.1:9000"
SUBJECT = f"upstream {URL}"
OPEN = "100 connections open (max_connections): new connections get 503 and are closed"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == "edge.faults"]
    caplog.clear()
    return out


@pytest.fixture
def faults(caplog: pytest.LogCaptureFixture) -> FaultLog:
    caplog.set_level(logging.WARNING, logger="edge.faults")
    return FaultLog()


def test_first_fault_is_logged_at_once_and_the_rest_summarised(
    faults: FaultLog, caplog: pytest.LogCaptureFixture
) -> None:
    faults.upstream_failed(URL, "connect refused", 100.0, "GET: cannot connect: refused: answered 502")
    assert lines(caplog) == [f"{SUBJECT}: GET: cannot connect: refused: answered 502"]
    for i in range(29):
        faults.upstream_failed(URL, "connect refused", 100.0 + i * 0.1, "x")
    for _ in range(7):
        faults.upstream_failed(URL, "reset", 105.0, "y")
    faults.flush(100.0 + INTERVAL - 0.01)
    assert lines(caplog) == []  # the interval is not over
    faults.flush(100.0 + INTERVAL)
    assert lines(caplog) == [
        f"{SUBJECT}: 37 requests failed in the last 10 s (connect refused: 30, reset: 7)"
    ]


def test_a_single_fault_is_not_logged_twice(faults: FaultLog, caplog: pytest.LogCaptureFixture) -> None:
    faults.upstream_failed(URL, "reset", 0.0, "GET: reset")
    faults.flush(INTERVAL)
    faults.flush(2 * INTERVAL, final=True)
    assert lines(caplog) == [f"{SUBJECT}: GET: reset"]


def test_steady_faults_give_one_line_per_interval(faults: FaultLog, caplog: pytest.LogCaptureFixture) -> None:
    for tick in range(300):  # three intervals of 10 faults a second, the sweep after each
        faults.upstream_failed(URL, "closed", tick / 10, "GET: closed")
        faults.flush((tick + 1) / 10)
    summary = f"{SUBJECT}: 100 requests failed in the last 10 s (closed: 100)"
    assert lines(caplog) == [f"{SUBJECT}: GET: closed", summary, summary, summary]
    faults.flush(30.0 + INTERVAL)  # a quiet interval closes the subject
    assert lines(caplog) == [] and not faults.windows
    faults.upstream_failed(URL, "closed", 45.0, "GET: closed again")
    assert lines(caplog) == [f"{SUBJECT}: GET: closed again"]  # at once: a new burst


def test_subjects_are_counted_apart_and_flushed_on_stop(
    faults: FaultLog, caplog: pytest.LogCaptureFixture
) -> None:
    other = "http://127.0.0.1:9001"
    for _ in range(3):
        faults.upstream_failed(URL, "timeout", 0.0, "GET: timeout")
        faults.upstream_failed(other, "tls", 0.0, "GET: tls")
    faults.shed(("127.0.0.1", 8080), 100, 0.0)
    faults.shed(("::1", 8080, 0, 0), 100, 0.0)
    faults.shed(("127.0.0.1", 8080), 100, 0.0)
    assert lines(caplog) == [
        f"{SUBJECT}: GET: timeout",
        f"upstream {other}: GET: tls",
        f"listener 127.0.0.1:8080: {OPEN}",
        f"listener [::1]:8080: {OPEN}",
    ]
    faults.flush(0.2, final=True)  # a stop does not lose the counts
    assert lines(caplog) == [
        f"{SUBJECT}: 3 requests failed in the last 1 s (timeout: 3)",
        f"upstream {other}: 3 requests failed in the last 1 s (tls: 3)",
        "listener 127.0.0.1:8080: 2 connections shed in the last 1 s (max_connections: 2)",
    ]
    assert not faults.windows
