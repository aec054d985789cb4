"""edge.http.strict without a connection: heads in, statuses out.

The connection-level tests (test_protocol.py, test_malformed.py) send the
same faults over a transport; here each rule is one row, and the resumable
scan of a trickled head is held to the scan of the whole head.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.access.request import Request
from edge.config.schema import Server
from edge.http.strict import authority_of, head_refused, request_line_too_long, same_authority, validate

OK = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"

HEADS = [
    (OK, 0),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n", 0),
    (b"GET / HTTP/1.1\nHost: a\n\n", 0),  # bare LF lines: h11's to judge
    (b"GET /\r\n", 505),  # HTTP/0.9's simple request
    (b"GET /x\n", 505),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),  # a control character
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n\r\n", 0),  # HTAB is allowed
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n", 0),  # obs-text is allowed
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5, 5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", 0),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX: a\x01b\r\n\r\n", 0),  # after the head: the next request's
]


@pytest.mark.parametrize(("head", "status"), HEADS)
def test_head_refused(head: bytes, status: int) -> None:
    assert head_refused(head, 0)[0] == status


@pytest.mark.parametrize(("head", "status"), HEADS)
def test_a_head_trickled_byte_by_byte_gets_the_same_answer(head: bytes, status: int) -> None:
    scanned = 0
    for end in range(1, len(head) + 1):
        found, scanned = head_refused(head[:end], scanned)
        if found:
            break
    assert found == status


@given(st.sampled_from([h for h, _ in HEADS]), st.lists(st.integers(1, 40), max_size=8))
def test_any_split_of_a_head_gets_the_answer_of_the_whole(head: bytes, cuts: list[int]) -> None:
    """The resumable scan (the shortcut: a trickled head is scanned once)
    agrees with a scan of the whole head, wherever the reads end."""
    whole = head_refused(head, 0)[0]
    scanned, found, end = 0, 0, 0
    for cut in [*cuts, len(head)]:
        end = min(len(head), end + cut)
        found, scanned = head_refused(head[:end], scanned)
        if found or end == len(head):
            break
    if not found:
        found = head_refused(head, scanned)[0]
    assert found == whole


@pytest.mark.parametrize(
    ("buffered", "answer"),
    [
        (b"GET /" + b"a" * 10, False),  # still arriving, within the limit
        (b"GET /" + b"a" * 200, True),  # past the limit before its end
        (b"GET /abc HTTP/1.1\r\n", None),  # complete and fine: stop asking
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n", True),
    ],
)
def test_request_line_too_long(buffered: bytes, answer: bool | None) -> None:
    assert request_line_too_long(buffered, 100) is answer


@pytest.mark.parametrize(
    ("target", "split"),
    [
        (b"http://a.example/x?y", (b"a.example", b"/x?y")),
        (b"HTTPS://a.example:8443", (b"a.example:8443", b"/")),
        (b"http://a.example?q", (b"a.example", b"/?q")),
        (b"/x", None),
        (b"ftp://a/x", None),
    ],
)
def test_authority_of(target: bytes, split: tuple[bytes, bytes] | None) -> None:
    assert authority_of(target) == split


def test_same_authority_ignores_case_and_the_default_port() -> None:
    assert same_authority(b"A.example:80", b"a.example", secure=False)
    assert same_authority(b"a.example", b"a.example:443", secure=True)
    assert not same_authority(b"a.example:80", b"a.example", secure=True)
    assert not same_authority(b"a.example", b"b.example", secure=False)


@dataclasses.dataclass
class Peer:
    client_ip: str = "192.0.2.1"
    scheme: str = "http"
    client_cn: str | None = None
    trusted: bool = False
    asked: int = 0

    def trusts_peer(self) -> bool:
        self.asked += 1
        return self.trusted


LIMITS = Server(max_target_bytes=100, max_header_bytes=1000, max_body_bytes=50)


def check(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], version: bytes = b"1.1",
          peer: Peer | None = None) -> Request | int:  # fmt: skip
    index: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        index.setdefault(name, []).append(value)
    size = len(method) + len(target) + 13 + sum(len(n) + len(v) + 4 for n, v in fields)
    return validate(method, target, version, fields, index, size, 1.0, LIMITS, peer or Peer())


H = (b"host", b"a.example")


@pytest.mark.parametrize(
    ("method", "target", "fields", "version", "status"),
    [
        (b"GET", b"/", [H], b"2.0", 505),
        (b"GET", b"/", [H], b"0.9", 505),
        (b"CONNECT", b"a.example:443", [H], b"1.1", 405),
        (b"connect", b"/", [H], b"1.1", 0),  # a method of its own
        (b"POST", b"/", [H, (b"transfer-encoding", b"chunked"), (b"content-length", b"3")], b"1.1", 400),
        (b"POST", b"/", [H, (b"transfer-encoding", b"chunked")], b"1.0", 400),
        (b"POST", b"/", [H, (b"transfer-encoding", b"chunked")], b"1.1", 0),
        (b"GET", b"/" + b"a" * 100, [H], b"1.1", 414),
        (b"GET", b"/admin#x", [H], b"1.1", 400),
        (b"GET", b"/", [H, (b"x", b"a" * 1000)], b"1.1", 431),
        (b"POST", b"/", [H, (b"content-length", b"51")], b"1.1", 413),
        (b"POST", b"/", [H, (b"content-length", b"50")], b"1.1", 0),
        (b"GET", b"http://b.example/x", [H], b"1.1", 400),  # two authorities
        (b"GET", b"http://a.example:80/x", [H], b"1.1", 0),
        (b"GET", b"*", [H], b"1.1", 400),
        (b"OPTIONS", b"*", [H], b"1.1", 0),
        (b"GET", b"x", [H], b"1.1", 400),
        (b"GET", b"/", [(b"host", b"a b")], b"1.1", 400),
        (b"GET", b"/", [(b"host", b"user@a")], b"1.1", 400),
        (b"GET", b"/", [(b"host", b"[::1]:8080")], b"1.1", 0),
        (b"GET", b"/", [], b"1.0", 0),  # HTTP/1.0 may leave out Host
    ],
)
def test_validate_statuses(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], version: bytes, status: int
) -> None:
    found = check(method, target, fields, version)
    assert (found if isinstance(found, int) else 0) == status


def test_validate_builds_the_request() -> None:
    peer = Peer(scheme="https", client_cn="svc")
    found = check(b"GET", b"http://A.example/p?q=1", [(b"host", b"a.example"), (b"content-length", b"007")],
                  peer=peer)  # fmt: skip
    assert isinstance(found, Request)
    assert (found.host, found.target, found.path, found.query) == (b"A.example", b"/p?q=1", b"/p", b"q=1")
    assert (found.length, found.chunked, found.upgrade) == (7, False, False)
    assert (found.client_ip, found.scheme, found.client_cert_cn) == ("192.0.2.1", "https", "svc")
    assert peer.asked == 0  # no X-Request-Id: the peer's trust is never asked


@pytest.mark.parametrize("trusted", [True, False])
def test_a_request_id_is_kept_only_from_a_trusted_peer(trusted: bool) -> None:
    peer = Peer(trusted=trusted)
    found = check(b"GET", b"/", [H, (b"x-request-id", b"abc-123")], peer=peer)
    assert isinstance(found, Request)
    assert peer.asked == 1
    assert (found.request_id == b"abc-123") is trusted


def test_an_upgrade_is_seen_only_through_connection() -> None:
    up = check(b"GET", b"/", [H, (b"connection", b"Upgrade"), (b"upgrade", b"websocket")])
    plain = check(b"GET", b"/", [H, (b"upgrade", b"websocket")])
    assert isinstance(up, Request) and up.upgrade
    assert isinstance(plain, Request) and not plain.upgrade
