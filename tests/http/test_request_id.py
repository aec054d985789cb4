"""Request ids (edge.http.request_id): which client values are kept, what is
generated, and that whatever comes in, what goes out is safe."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.http.request_id import MAX_LENGTH, SAFE, accepted, new_id, request_id

# What a generated id looks like: 16 base64url characters, nothing else.
GENERATED = re.compile(rb"[A-Za-z0-9_-]{16}")
UUID = b"0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.mark.parametrize(
    ("values", "trusted", "kept"),
    [
        pytest.param([UUID], True, UUID, id="trusted-uuid-kept"),
        pytest.param([b"a"], True, b"a", id="trusted-one-char-kept"),
        pytest.param([b"Root=1-5759e988"], True, None, id="trusted-equals-sign-refused"),
        pytest.param([b"svc:req.42_~x"], True, b"svc:req.42_~x", id="trusted-all-safe-punctuation-kept"),
        pytest.param([b"x" * MAX_LENGTH], True, b"x" * MAX_LENGTH, id="trusted-longest-kept"),
        pytest.param([b"x" * (MAX_LENGTH + 1)], True, None, id="trusted-too-long"),
        pytest.param([b""], True, None, id="trusted-empty"),
        pytest.param([b"a b"], True, None, id="trusted-space"),
        pytest.param([b'a"b'], True, None, id="trusted-quote"),
        pytest.param([b"<script>"], True, None, id="trusted-html"),
        pytest.param([b"a,b"], True, None, id="trusted-list"),
        pytest.param([b"a\xc3\xa9"], True, None, id="trusted-non-ascii"),
        pytest.param([b"a\\nb"], True, None, id="trusted-backslash"),
        pytest.param([b"one", b"two"], True, None, id="trusted-two-fields"),
        pytest.param([UUID], False, None, id="untrusted-uuid-ignored"),
        pytest.param([b"a"], False, None, id="untrusted-anything-ignored"),
        pytest.param(None, True, None, id="trusted-none-sent"),
        pytest.param(None, False, None, id="untrusted-none-sent"),
    ],
)
def test_which_client_ids_are_kept(values: list[bytes] | None, trusted: bool, kept: bytes | None) -> None:
    assert accepted(values, trusted) == kept
    got = request_id(values, trusted)
    if kept is not None:
        assert got == kept
    else:
        assert GENERATED.fullmatch(got), got
        assert values is None or got not in values


def test_generated_ids_are_unique_and_url_safe() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(GENERATED.fullmatch(i) for i in ids)
    assert all(SAFE.fullmatch(i) for i in ids)


def test_a_forked_child_draws_its_own_ids() -> None:
    """Workers are forked: a child continuing its parent's generator would
    hand out the parent's next ids too, and one keeping its batch the rest
    of that batch."""
    new_id()  # the batch is drawn: the parent's next id waits in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id, leave at once
        os.close(read)
        os.write(write, new_id())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        child = f.read()
    os.waitpid(pid, 0)
    parent = new_id()  # the parent's next id: the child's first, had it not reseeded
    assert GENERATED.fullmatch(child)
    assert child != parent


@given(
    values=st.one_of(st.none(), st.lists(st.binary(max_size=80), max_size=3)),
    trusted=st.booleans(),
)
def test_whatever_comes_in_the_id_is_safe(values: list[bytes] | None, trusted: bool) -> None:
    got = request_id(values, trusted)
    assert SAFE.fullmatch(got) is not None
    assert len(got) <= MAX_LENGTH
    if not trusted:
        assert GENERATED.fullmatch(got)


@given(st.text(alphabet="abcXYZ019-._~:_", min_size=1, max_size=MAX_LENGTH))
def test_a_trusted_safe_value_is_kept_whole(value: str) -> None:
    assert request_id([value.encode()], True) == value.encode()
