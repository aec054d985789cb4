"""Prebuilt responses and the h11 state shortcut they rely on."""

from __future__ import annotations

import h11
import pytest

from edge.access.responses import Responses, date_line
from edge.http.connection import commit_local

DATE = b"date: Tue, 24 Nov 2026 22:42:08 GMT\r\n"


def test_date_line_is_imf_fixdate() -> None:
    assert date_line(0) == b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


@pytest.mark.parametrize(
    ("close", "head_only", "expected"),
    [
        (
            False,
            False,
            b"HTTP/1.1 404 Not Found\r\n" + DATE + b"content-type: text/plain; charset=utf-8\r\n"
            b"server: edge\r\ncontent-length: 31\r\n\r\nnot found: no application here\n",
        ),
        (
            True,
            True,
            b"HTTP/1.1 404 Not Found\r\n" + DATE + b"content-type: text/plain; charset=utf-8\r\n"
            b"server: edge\r\ncontent-length: 31\r\nconnection: close\r\n\r\n",
        ),
    ],
)
def test_render_exact_bytes(close: bool, head_only: bool, expected: bytes) -> None:
    assert Responses("edge").not_found.render(DATE, close, head_only) == expected


def test_no_server_header_when_empty() -> None:
    assert b"server:" not in Responses("").health.render(DATE, False, False)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ],
)
def test_commit_local_matches_public_send(request_bytes: bytes) -> None:
    """commit_local drives h11's state machine exactly as send() would."""
    response = Responses("edge").not_found
    states = []
    for shortcut in (True, False):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(request_bytes)
        assert isinstance(conn.next_event(), h11.Request)
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        if shortcut:
            commit_local(conn, response.event)
        else:
            conn.send(response.event)
            if not request_bytes.startswith(b"HEAD"):
                conn.send(h11.Data(data=response.body))
            conn.send(h11.EndOfMessage())
        states.append(dict(conn.states))
        if conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            conn.start_next_cycle()
            assert conn.states[h11.SERVER] is h11.IDLE
    assert states[0] == states[1]
