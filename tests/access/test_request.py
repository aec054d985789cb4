"""edge/access/request.py: the one request type, its index and its builder;
and that the edge describes a request with it alone."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.access.request import Request, build, index_of, is_upgrade

EDGE = Path(__file__).resolve().parents[2] / "edge"

names = st.sampled_from([b"host", b"cookie", b"accept", b"x-a", b"connection", b"upgrade"])
fields = st.lists(st.tuples(names, st.binary(max_size=8)), max_size=12)


@given(fields)
def test_the_index_holds_every_field_by_name_in_order(headers: list[tuple[bytes, bytes]]) -> None:
    index = index_of(headers)
    assert index == {n: [v for k, v in headers if k == n] for n, _ in headers}
    assert list(index) == list(dict.fromkeys(n for n, _ in headers))  # first appearance first


def test_values_of_an_absent_field_are_empty() -> None:
    req = build(b"GET", b"a.test", b"/", [(b"host", b"a.test"), (b"x", b"1"), (b"x", b"2")], "192.0.2.1")
    assert req.values(b"x") == [b"1", b"2"]
    assert req.values(b"cookie") == ()


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", b"/", b""),
        (b"/a?b=1", b"/a", b"b=1"),
        (b"/a?b?c", b"/a", b"b?c"),
        (b"/a?", b"/a", b""),
        (b"*", b"*", b""),
    ],
)
def test_the_target_is_split_once(target: bytes, path: bytes, query: bytes) -> None:
    req = build(b"GET", b"a.test", target, [], "192.0.2.1")
    assert (req.target, req.path, req.query) == (target, path, query)


@pytest.mark.parametrize(
    ("headers", "length", "chunked"),
    [
        ([], None, False),
        ([(b"content-length", b"005")], 5, False),
        ([(b"transfer-encoding", b"chunked")], None, True),
    ],
)
def test_the_builder_frames_the_body_from_the_fields(
    headers: list[tuple[bytes, bytes]], length: int | None, chunked: bool
) -> None:
    req = build(b"POST", b"a.test", b"/", headers, "192.0.2.1")
    assert (req.length, req.chunked) == (length, chunked)


@pytest.mark.parametrize(
    ("headers", "upgrade"),
    [
        ([(b"connection", b"Upgrade"), (b"upgrade", b"websocket")], True),
        ([(b"connection", b"keep-alive"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")], True),
        ([(b"upgrade", b"websocket")], False),  # Connection does not name it
        ([(b"connection", b"upgrade")], False),  # nothing offered
        ([(b"connection", b"upgrade"), (b"upgrade", b"h2c")], False),
        ([(b"connection", b"upgrade"), (b"upgrade", b"websocket, H2C/1")], False),
    ],
)
def test_upgrade(headers: list[tuple[bytes, bytes]], upgrade: bool) -> None:
    assert is_upgrade(index_of(headers)) is upgrade
    assert build(b"GET", b"a.test", b"/", headers, "192.0.2.1").upgrade is upgrade


def test_a_request_is_immutable() -> None:
    req = build(b"GET", b"a.test", b"/", [], "192.0.2.1")
    with pytest.raises(AttributeError):
        req.method = b"POST"  # type: ignore[misc]
    assert msgspec.structs.replace(req, method=b"POST").method == b"POST"


# -- one type describes a request -----------------------------------------------------

# What a request's description is made of; a class holding two of these
# describes a request (the old RequestInfo, decide.Request, login.Call and
# forwarding.RequestContext each held two or more).
REQUEST_PARTS = {"method", "host", "target", "headers", "client_ip"}


def attributes(node: ast.ClassDef) -> set[str]:
    """A class's fields: its annotations, __slots__ strings, `self.x =` in its methods."""
    found: set[str] = set()
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            found.add(item.target.id)
        elif isinstance(item, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
        ):
            found.update(
                e.value
                for e in ast.walk(item.value)
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            )
    for item in ast.walk(node):
        if (
            isinstance(item, ast.Attribute)
            and isinstance(item.ctx, ast.Store)
            and isinstance(item.value, ast.Name)
            and item.value.id == "self"
        ):
            found.add(item.attr)
    return found


def request_descriptions(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and len(attributes(node) & REQUEST_PARTS) >= 2:
                out.append(f"{path.relative_to(root.parent)}:{node.name}")
    return out


# Classes that hold such parts but describe something else.
NOT_THE_CLIENTS_REQUEST = {
    "edge/proxy/cycle.py:ForwardPlan",  # the request sent upstream, once rewritten
    "edge/runtime/accesslog.py:AccessRecord",  # the access log line's JSON
    # The fast parser's event, as h11.Request is h11's: the connection turns
    # it into the Request at once (its fields are scan_fields' output, handed
    # on, not scanned again), and nothing else reads it.
    "edge/http/h11_internals.py:FastRequest",
    # The demo page's own fetch() calls, spelled for the page's script; the
    # edge's answer to each is decided on a Request built from it.
    "edge/runtime/demo.py:Call",
}


def test_one_type_describes_a_request() -> None:
    """Decide, forwarding, the login endpoints and the access log read the
    one Request; a second description of the request (with its own copy of
    the head, scanned again) fails here, naming it."""
    found = request_descriptions(EDGE)
    assert set(found) >= NOT_THE_CLIENTS_REQUEST  # else the list is stale
    assert [d for d in found if d not in NOT_THE_CLIENTS_REQUEST] == ["edge/access/request.py:Request"]


def test_the_check_finds_a_second_description(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "info.py").write_text(
        "class Info:\n    __slots__ = ('method', 'status')\n"
        "    def __init__(self) -> None:\n        self.host = b''\n"
    )
    assert request_descriptions(tmp_path / "edge") == ["edge/info.py:Info"]


def test_the_request_fields_are_the_ones_checked() -> None:
    assert set(Request.__struct_fields__) >= REQUEST_PARTS
