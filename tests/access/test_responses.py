"""Prebuilt responses (the h11 state shortcut they rely on, commit_local, is
tested in tests/http/test_h11_internals.py)."""

from __future__ import annotations

import pytest

from edge.access.responses import Responses, date_line

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
