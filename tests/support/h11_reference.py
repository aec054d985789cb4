"""h11's own reading of a request head: the reference that the fast parser
(fast_request in edge/http/h11_internals.py) and the hand-made commits are
held to.

`h11_request` is what h11 makes of some bytes; `fast_conn` the connection as
the edge leaves it when fast_request takes them; `snapshot` everything of
h11's connection state the commits may touch; `assert_agrees_with_h11` makes
every comparison between the two readings. SPLICES are the bytes worth
splicing into a head to mutate it; H is the Host field line of the sample
heads.
"""

from __future__ import annotations

import types

import h11

from edge.http.h11_internals import FastRequest, commit_request, fast_request, scan_fields
from edge.http.strict import CONTROL, LENGTH_FIELD

H = b"Host: a\r\n"
SPLICES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b",", b"\x00", b"\x7f", b"\xff", b"\r\n ", H,
           b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
           b"Expect: 100-continue\r\n", b"Upgrade: x\r\n", b"HTTP/1.0", b"get"]  # fmt: skip


def snapshot(conn: h11.Connection) -> tuple[object, ...]:
    """Everything of h11's connection state the commits may touch."""

    def io(obj: object) -> object:
        if obj is None or isinstance(obj, types.FunctionType):
            return obj
        return type(obj), vars(obj)

    cstate = conn._cstate
    return (
        dict(cstate.states),
        cstate.keep_alive,
        set(cstate.pending_switch_proposals),
        conn._request_method,
        conn.their_http_version,
        conn.client_is_waiting_for_100_continue,
        io(conn._reader),
        io(conn._writer),
        conn.trailing_data,
    )


def h11_request(data: bytes) -> tuple[h11.Connection, h11.Request | None, int]:
    """h11's own reading of `data`: the connection, the Request (or None),
    and how many bytes it took."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return conn, None, 0
    if not isinstance(event, h11.Request):
        return conn, None, 0
    return conn, event, len(data) - len(conn.trailing_data[0])


def fast_conn(data: bytes) -> tuple[h11.Connection, FastRequest | None]:
    conn = h11.Connection(h11.SERVER)
    parsed = fast_request(data)
    if parsed is not None:
        commit_request(conn, parsed)
        if parsed.end < len(data):  # b"" would mean EOF
            conn.receive_data(data[parsed.end :])
    return conn, parsed


def assert_agrees_with_h11(data: bytes) -> FastRequest | None:
    """If fast_request takes `data`, h11 parses the same event from it and
    ends in the same state, and the fields fast_request collected are what
    scan_fields collects from h11's event (the connection reads one or the
    other, depending on which parser took the head). The reference is h11
    plus the edge's own refusals of what h11 lets through
    (strict.head_refused, which a head the fast parser took never
    meets): the fast parser takes no head that those would refuse."""
    ours, parsed = fast_conn(data)
    theirs, event, used = h11_request(data)
    if parsed is None:
        return None
    assert event is not None, data
    head = data[: parsed.end]
    assert CONTROL.search(head) is None, data  # a control character: 400
    lengths = LENGTH_FIELD.findall(head)
    assert len(lengths) <= 1 and b"," not in b"".join(lengths), data  # repeated or listed: 400
    assert b"\n " not in head and b"\n\t" not in head, data  # obs-fold: 400
    mine = parsed.event
    assert (mine.method, mine.target, mine.http_version) == (event.method, event.target, event.http_version)
    assert mine.headers._full_items == event.headers._full_items
    assert parsed.end == used
    assert snapshot(ours) == snapshot(theirs)
    pairs: list[tuple[bytes, bytes]] = []
    index: dict[bytes, list[bytes]] = {}
    size = scan_fields(event, pairs, index)
    assert (parsed.method, parsed.target) == (event.method, event.target)
    assert (parsed.headers, parsed.index, parsed.size) == (pairs, index, size)
    assert list(parsed.index) == list(index)
    return parsed
