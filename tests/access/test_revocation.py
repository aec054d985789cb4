"""edge/access/revocation.py: pure, no event loop, explicit `now`."""

from __future__ import annotations

import pytest

from edge.access.revocation import (
    SESSION_PREFIX,
    Counters,
    OnceClaims,
    Revocations,
    format_message,
    parse_message,
    revoked_until,
    session_key,
    sid_key,
    sign_in_key,
    sign_in_label,
    token_key,
)


def test_revoked_until_expiry() -> None:
    revoked = Revocations()
    assert revoked.revoke("s1", until=100.0)
    assert revoked.is_revoked("s1", now=99.9)
    assert not revoked.is_revoked("s1", now=100.0)  # expiry is exclusive: free from `until` on
    assert not revoked.is_revoked("other", now=0.0)


def test_revoke_again_only_extends() -> None:
    revoked = Revocations()
    assert revoked.revoke("s1", 100.0)
    assert not revoked.revoke("s1", 100.0)
    assert not revoked.revoke("s1", 50.0)  # never shortened
    assert revoked.is_revoked("s1", 99.0)
    assert revoked.revoke("s1", 200.0)
    assert revoked.is_revoked("s1", 150.0)


def test_sweep_drops_expired_only() -> None:
    revoked = Revocations()
    revoked.revoke("old", 10.0)
    revoked.revoke("new", 30.0)
    assert len(revoked) == 2
    revoked.sweep(now=20.0)
    assert len(revoked) == 1
    assert revoked.is_revoked("new", 20.0)
    revoked.sweep(now=30.0)
    assert len(revoked) == 0


def test_sweep_keeps_an_extended_key() -> None:
    # The stale heap entry (until 10) is popped; the key stays until 30.
    revoked = Revocations()
    revoked.revoke("s1", 10.0)
    revoked.revoke("s1", 30.0)
    revoked.sweep(now=20.0)
    assert revoked.is_revoked("s1", 20.0)
    assert revoked.items(20.0) == [("s1", 30.0)]
    revoked.sweep(now=31.0)
    assert len(revoked) == 0


def test_items_are_the_unexpired_entries() -> None:
    revoked = Revocations()
    revoked.revoke("a", 10.0)
    revoked.revoke("b", 30.0)
    assert sorted(revoked.items(now=5.0)) == [("a", 10.0), ("b", 30.0)]
    assert revoked.items(now=10.0) == [("b", 30.0)]  # expired but not swept: still left out


def test_claim_is_single_use_until_expiry() -> None:
    claims = OnceClaims()
    assert claims.claim("code", until=60.0, now=0.0)
    assert not claims.claim("code", until=60.0, now=1.0)
    assert not claims.claim("code", until=120.0, now=59.9)
    assert claims.claim("other", until=60.0, now=1.0)
    assert claims.claim("code", until=120.0, now=60.0)  # the first claim expired


def test_claim_that_already_expired_is_refused() -> None:
    claims = OnceClaims()
    assert not claims.claim("code", until=10.0, now=10.0)
    assert len(claims) == 0


def test_claims_memory_is_bounded_by_unexpired_claims() -> None:
    claims = OnceClaims()
    for i in range(1000):
        assert claims.claim(f"code{i}", until=i + 10.0, now=float(i))
    assert len(claims) == 10  # each claim swept those that expired before it


@pytest.mark.parametrize("key", ["s1", "with space", "ünïcode", "a:b:c"])
def test_message_round_trip(key: str) -> None:
    assert parse_message(format_message(key, 1732500000.123456)) == (key, 1732500000.123456)


@pytest.mark.parametrize("data", ["", "123", "123 ", "abc key", "nan key", "inf key", " key"])
def test_malformed_messages(data: str) -> None:
    assert parse_message(data) is None


def test_counters_window_starts_with_the_first_event() -> None:
    c = Counters()
    assert c.get("k", 0.0) == 0
    assert [c.add("k", t, 10.0) for t in (0.0, 1.0, 9.0)] == [1, 2, 3]
    assert c.get("k", 9.9) == 3
    assert c.get("k", 10.0) == 0  # the window ended at 0 + 10
    assert c.add("k", 10.0, 10.0) == 1  # a new window


def test_counters_stay_bounded() -> None:
    c = Counters(limit=3)
    for i, key in enumerate("abc"):
        c.add(key, float(i), 1.0)  # a ends at 1, b at 2, c at 3
    c.add("d", 2.5, 1.0)  # a and b have expired: they go first
    assert (c.get("c", 2.5), c.get("d", 2.5)) == (1, 1)
    c.add("e", 2.6, 100.0)
    c.add("f", 2.7, 100.0)  # nothing expired: the oldest (c) goes
    assert (c.get("c", 2.7), c.get("d", 2.7), c.get("e", 2.7), c.get("f", 2.7)) == (0, 1, 1, 1)


# -- sessions: keys and how long a logout lasts --------------------------------------------


def test_session_keys_are_per_issuer() -> None:
    a, b = session_key("https://a.example", "n1"), session_key("https://b.example", "n1")
    assert a != b and a == session_key("https://a.example", "n1")
    assert session_key("https://a.example", "n2") != a
    # Fixed size whatever the nonce, and safe in Redis and in a published message.
    for key in (a, session_key("i", "x" * 10_000), session_key("i", "with space \ud800")):
        assert key.startswith(SESSION_PREFIX) and len(key) == len(a) and key.isascii() and " " not in key
        assert parse_message(format_message(key, 1.0)) == (key, 1.0)


def test_session_revoked_by_its_key_only() -> None:
    revoked = Revocations()
    mine, theirs = session_key("https://a.example", "n"), session_key("https://b.example", "n")
    revoked.revoke(mine, 100.0)
    assert revoked.session_revoked(mine, "n", 99.0)
    assert not revoked.session_revoked(theirs, "n", 99.0)
    assert not revoked.session_revoked(mine, "n", 100.0)
    assert not revoked.legacy


def test_bare_nonce_entries_of_older_edges_are_still_enforced() -> None:
    """Before revocations were scoped by issuer, logout stored the bare nonce;
    such entries (in Redis while older edges run) keep refusing that nonce,
    for any issuer, until they expire, rather than reopen sessions at the upgrade."""
    revoked = Revocations()
    session = session_key("https://a.example", "old-nonce")
    revoked.revoke("old-nonce", 100.0)
    assert revoked.legacy
    assert revoked.session_revoked(session, "old-nonce", 99.0)
    assert not revoked.session_revoked(session, "old-nonce", 100.0)
    assert not revoked.session_revoked(session_key("https://a.example", "other"), "other", 99.0)


@pytest.mark.parametrize(
    ("valid_until", "expected"),
    [
        (1_000.0 + 600 + 60, 1_000.0 + 3600 + 120),  # a short token: its siblings may live the bound
        (1_000.0 + 5000.0, 1_000.0 + 5000.0),  # longer than the bound (refused from now on anyway)
    ],
)
def test_revoked_until_covers_the_longest_token_of_the_session(valid_until: float, expected: float) -> None:
    assert revoked_until(1_000.0, valid_until, max_lifetime=3600.0, leeway=60.0) == expected


# -- the key of a sign-in of each kind: nonce, the issuer's sid, the token itself ------------


def test_sid_keys_are_per_issuer_and_never_a_nonces() -> None:
    a = sid_key("https://a.example", "s1")
    assert a == sid_key("https://a.example", "s1")
    assert a != sid_key("https://b.example", "s1") and a != sid_key("https://a.example", "s2")
    # Another namespace: a sid never names the sign-in whose nonce has the same value.
    assert a != session_key("https://a.example", "s1")
    assert sid_key("https://a.example", "") != session_key("https://a.example", "sid")
    for key in (a, sid_key("i", "y" * 10_000), sid_key("i", "with space \ud800")):
        assert key.startswith(SESSION_PREFIX) and len(key) == len(a) and key.isascii() and " " not in key
        assert parse_message(format_message(key, 1.0)) == (key, 1.0)


def test_token_keys_are_per_issuer_and_per_token() -> None:
    a = token_key("https://a.example", b"t1.t1.t1")
    assert a == token_key("https://a.example", b"t1.t1.t1")
    assert a != token_key("https://b.example", b"t1.t1.t1") and a != token_key(
        "https://a.example", b"t2.t2.t2"
    )
    assert a != session_key("https://a.example", "t1.t1.t1") and a != sid_key("https://a.example", "t1.t1.t1")
    key = token_key("i", b"x" * 16_384)
    assert key.startswith(SESSION_PREFIX) and len(key) == len(a) and key.isascii()


@pytest.mark.parametrize(
    ("nonce", "sid", "expected"),
    [
        ("n1", "s1", session_key("https://a.example", "n1")),  # the nonce wins: today's keys unchanged
        ("n1", "", session_key("https://a.example", "n1")),
        ("", "s1", sid_key("https://a.example", "s1")),
        ("", "", token_key("https://a.example", b"h.p.s")),
    ],
)
def test_sign_in_key_by_kind(nonce: str, sid: str, expected: str) -> None:
    assert sign_in_key("https://a.example", nonce, sid, b"h.p.s") == expected


def test_revoking_a_sid_leaves_the_same_sid_of_another_issuer_and_a_nonce_alone() -> None:
    revoked = Revocations()
    revoked.revoke(sid_key("https://a.example", "s1"), 100.0)
    assert revoked.session_revoked(sid_key("https://a.example", "s1"), "", 99.0)
    assert not revoked.session_revoked(sid_key("https://b.example", "s1"), "", 99.0)
    assert not revoked.session_revoked(session_key("https://a.example", "s1"), "s1", 99.0)
    assert not revoked.legacy


@pytest.mark.parametrize(
    ("nonce", "sid", "label"),
    [
        ("n0nce-long", "s1", "nonce n0nce-…"),
        ("", "sid-value", "sid sid-va…"),
        ("", "", "this token only, key s:AbCdEf…"),
    ],
)
def test_sign_in_label_names_the_kind_and_a_prefix_only(nonce: str, sid: str, label: str) -> None:
    assert sign_in_label(nonce, sid, "s:AbCdEfGhIj") == label
