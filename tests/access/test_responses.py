"""Prebuilt responses (the h11 state shortcut they rely on, commit_local, is
tested in tests/http/test_h11_internals.py)."""

from __future__ import annotations

import h11
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


def test_render_splices_the_request_id_after_the_date() -> None:
    assert Responses("edge").health.render(DATE, True, False, b"rid-1") == (
        b"HTTP/1.1 200 OK\r\n" + DATE + b"x-request-id: rid-1\r\n"
        b"content-type: text/plain; charset=utf-8\r\nserver: edge\r\ncontent-length: 3\r\n"
        b"connection: close\r\n\r\nok\n"
    )


def test_a_tagged_body_ends_with_the_request_id() -> None:
    """A plain-text error names its request id in its body too (a
    screenshot of it names the access log line), its Content-Length
    written to match; rendered without an id (`edge explain`), it is the
    bare body."""
    not_found = Responses("edge").not_found
    assert not_found.render(DATE, True, False, b"rid-1") == (
        b"HTTP/1.1 404 Not Found\r\n" + DATE + b"x-request-id: rid-1\r\n"
        b"content-type: text/plain; charset=utf-8\r\nserver: edge\r\ncontent-length: 49\r\n"
        b"connection: close\r\n\r\nnot found: no application here\nrequest id: rid-1\n"
    )
    assert not_found.render(DATE, False, True, b"rid-1").endswith(b"content-length: 49\r\n\r\n")
    assert all(response.tagged for response in Responses("edge").errors.values())
    assert not Responses("edge").health.tagged


@pytest.mark.parametrize("tagged", [False, True])
@pytest.mark.parametrize("head_only", [False, True])
@pytest.mark.parametrize("status", [200, 302, 401, 403, 404, 503])
def test_render_with_a_request_id_is_what_h11_would_send(status: int, head_only: bool, tagged: bool) -> None:
    """The prebuilt bytes with the id spliced in (in the head, and for a
    tagged response at the end of the body) are exactly h11's own
    serialisation of the same response with that field and body: the splice
    cannot break the framing commit_local assumes
    (tests/http/test_h11_internals.py)."""
    rid = b"AbC-_09xyz000001"
    response = Responses("edge").text(status, b"body\n", [(b"vary", b"Origin")], tagged=tagged)
    body = response.body + (b"request id: %s\n" % rid if tagged else b"")
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"%s / HTTP/1.1\r\nHost: a\r\n\r\n" % (b"HEAD" if head_only else b"GET"))
    assert isinstance(conn.next_event(), h11.Request)
    fields = [
        (b"date", DATE[6:-2]),
        (b"x-request-id", rid),
        *[(k, v) for k, v in response.event.headers.raw_items() if k != b"content-length"],
        (b"content-length", b"%d" % len(body)),
    ]
    sent = conn.send(h11.Response(status_code=status, headers=fields, reason=response.event.reason))
    if not head_only:
        sent += conn.send(h11.Data(data=body))
    sent += conn.send(h11.EndOfMessage())
    assert response.render(DATE, False, head_only, rid) == sent


def test_a_local_response_never_carries_its_own_request_id() -> None:
    with pytest.raises(ValueError, match="request id"):
        Responses("edge").text(200, b"x\n", [(b"X-Request-Id", b"fixed")])
