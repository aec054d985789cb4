"""edge/access/revocation.py: pure, no event loop, explicit `now`."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.access.revocation import (
    SESSION_PREFIX,
    Counters,
    OnceClaims,
    Revocations,
    parse_message,
    revocation_cutoff,
    revoked_until,
    session_key,
    sid_key,
    sign_in_key,
    sign_in_label,
    token_key,
)


def format_message(key: str, until: float, cutoff: float = math.inf) -> str:
    """A revocation as published to the other workers: "<until>,<cutoff> <key>",
    or "<until> <key>" for an entry without a cutoff (as older edges wrote
    every entry). edge/login/store.py's SHARE_SCRIPT writes them; this is the
    format written out, the spec parse_message is held to."""
    if math.isinf(cutoff):
        return f"{until!r} {key}"
    return f"{until!r},{cutoff!r} {key}"


def test_revoked_until_expiry() -> None:
    revoked = Revocations()
    assert revoked.revoke("s1", until=100.0)
    assert revoked.session_revoked("s1", "", now=99.9)
    assert not revoked.session_revoked("s1", "", now=100.0)  # expiry is exclusive: free from `until` on
    assert not revoked.session_revoked("other", "", now=0.0)


def test_revoke_again_only_extends() -> None:
    revoked = Revocations()
    assert revoked.revoke("s1", 100.0)
    assert not revoked.revoke("s1", 100.0)
    assert not revoked.revoke("s1", 50.0)  # never shortened
    assert revoked.session_revoked("s1", "", 99.0)
    assert revoked.revoke("s1", 200.0)
    assert revoked.session_revoked("s1", "", 150.0)


def test_sweep_drops_expired_only() -> None:
    revoked = Revocations()
    revoked.revoke("old", 10.0)
    revoked.revoke("new", 30.0)
    assert len(revoked) == 2
    revoked.sweep(now=20.0)
    assert len(revoked) == 1
    assert revoked.session_revoked("new", "", 20.0)
    revoked.sweep(now=30.0)
    assert len(revoked) == 0


def test_sweep_keeps_an_extended_key() -> None:
    # The stale heap entry (until 10) is popped; the key stays until 30.
    revoked = Revocations()
    revoked.revoke("s1", 10.0)
    revoked.revoke("s1", 30.0)
    revoked.sweep(now=20.0)
    assert revoked.session_revoked("s1", "", 20.0)
    assert revoked.items(20.0) == [("s1", 30.0, math.inf)]
    revoked.sweep(now=31.0)
    assert len(revoked) == 0


def test_items_are_the_unexpired_entries() -> None:
    revoked = Revocations()
    revoked.revoke("a", 10.0)
    revoked.revoke("b", 30.0)
    revoked.revoke("c", 40.0, cutoff=5.0)
    assert sorted(revoked.items(now=5.0)) == [("a", 10.0, math.inf), ("b", 30.0, math.inf), ("c", 40.0, 5.0)]
    # "a" expired but is not swept: still left out.
    assert revoked.items(now=10.0) == [("b", 30.0, math.inf), ("c", 40.0, 5.0)]


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
@pytest.mark.parametrize("cutoff", [math.inf, 1732400000.5, 0.0])
def test_message_round_trip(key: str, cutoff: float) -> None:
    until = 1732500000.123456
    assert parse_message(format_message(key, until, cutoff)) == (key, until, cutoff)


def test_a_message_without_a_cutoff_is_an_older_edges() -> None:
    """The format every edge wrote before revocations had a cutoff, "<until> <key>",
    is still the one of an entry without one (math.inf: every token within the hold)."""
    assert format_message("s:k", 10.0) == "10.0 s:k"
    assert parse_message("10.0 s:k") == ("s:k", 10.0, math.inf)
    assert format_message("s:k", 10.0, 4.5) == "10.0,4.5 s:k"
    assert parse_message("1.7e+09,1.6e+09 s:k") == ("s:k", 1.7e9, 1.6e9)  # as Redis writes doubles


@pytest.mark.parametrize(
    "data",
    ["", "123", "123 ", "abc key", "nan key", "inf key", " key", "1, key", "1,x key", "1,nan key", "1,inf k"],
)
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
        assert parse_message(format_message(key, 1.0)) == (key, 1.0, math.inf)


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
        # A short token: its siblings may live the bound (+ 1 s, so that no
        # rounding in these sums leaves one of them outside the hold).
        # The leeway may be raised to 600 by a reload after the logout: the
        # hold counts it, so a token covered then is still covered after.
        (1_000.0 + 600 + 60, 1_000.0 + 3600 + 60 + 600 + 1),
        (1_000.0 + 5000.0, 1_000.0 + 5000.0),  # longer than the bound (refused from now on anyway)
    ],
)
def test_revoked_until_covers_the_longest_token_of_the_session(valid_until: float, expected: float) -> None:
    assert revoked_until(1_000.0, valid_until, max_lifetime=3600.0, leeway=60.0) == expected


def test_the_cutoff_is_the_logout_plus_the_issuers_leeway() -> None:
    """A token minted before the logout by an issuer whose clock runs ahead
    (within the leeway) is still one the logout covers."""
    assert revocation_cutoff(1_000.0, leeway=60.0) == 1_060.0


# -- which tokens a revocation refuses: issued up to its cutoff, never refused then accepted -----


def test_a_revocation_refuses_the_tokens_issued_up_to_its_cutoff() -> None:
    revoked = Revocations()
    revoked.revoke("s1", until=1_000.0, cutoff=100.0)
    assert revoked.session_revoked("s1", "", 50.0, iat=100.0, valid_until=900.0)
    assert revoked.session_revoked("s1", "", 899.0, iat=100.0, valid_until=900.0)
    assert not revoked.session_revoked("s1", "", 150.0, iat=100.5, valid_until=900.0)  # minted later
    assert not revoked.session_revoked("s1", "", 999.0, iat=100.5, valid_until=1_000.0)
    # A token that would outlive the hold is never covered: it would be accepted once the hold lapsed.
    assert not revoked.session_revoked("s1", "", 50.0, iat=90.0, valid_until=1_000.5)
    # Without a token: whether the sign-in is signed out at all.
    assert revoked.session_revoked("s1", "", 999.0)
    assert not revoked.session_revoked("s1", "", 1_000.0)


def test_revoking_again_extends_the_hold_and_the_cutoff() -> None:
    revoked = Revocations()
    assert revoked.revoke("s1", 1_000.0, cutoff=100.0)
    assert not revoked.revoke("s1", 1_000.0, cutoff=100.0)
    assert revoked.revoke("s1", 900.0, cutoff=200.0)  # covers later tokens: news for the others
    assert revoked.items(0.0) == [("s1", 1_000.0, 200.0)]
    assert revoked.revoke("s1", 1_100.0, cutoff=150.0)
    assert revoked.items(0.0) == [("s1", 1_100.0, 200.0)]
    assert revoked.revoke("s1", 1_100.0)  # an entry without a cutoff (an older edge's) covers every iat
    assert not revoked.revoke("s1", 1_100.0, cutoff=300.0)
    assert revoked.items(0.0) == [("s1", 1_100.0, math.inf)]


def test_an_entry_without_a_cutoff_refuses_every_token_that_expires_within_it() -> None:
    """What an older edge stored (no logout time): any iat, but only tokens
    it can hold refused until they expire."""
    revoked = Revocations()
    revoked.revoke("s1", 1_000.0)
    assert revoked.session_revoked("s1", "", 500.0, iat=400.0, valid_until=1_000.0)
    assert not revoked.session_revoked("s1", "", 500.0, iat=400.0, valid_until=1_000.1)


def test_sweep_forgets_the_cutoff_with_the_key() -> None:
    revoked = Revocations()
    revoked.revoke("s1", 10.0, cutoff=5.0)
    revoked.sweep(10.0)
    assert len(revoked) == 0
    revoked.revoke("s1", 30.0)  # a new entry without a cutoff, not the old one's
    assert revoked.items(0.0) == [("s1", 30.0, math.inf)]


_SECONDS = st.floats(min_value=0, max_value=10**7, allow_nan=False)
_MAX_LIFETIMES = st.floats(min_value=60, max_value=30 * 86400)
_LEEWAYS = st.floats(min_value=0, max_value=600)


@st.composite
def logouts(draw: st.DrawFn) -> tuple[float, float, float, float, float]:
    """(logout time, leeway, max_lifetime, presented token's valid_until, another logout's time)."""
    logout, leeway, lifetime = draw(_SECONDS), draw(_LEEWAYS), draw(_MAX_LIFETIMES)
    # The token presented at the logout was accepted then: iat <= now + leeway,
    # exp - iat <= max_lifetime, exp + leeway > now.
    iat = draw(st.floats(min_value=logout - lifetime, max_value=logout + leeway))
    low = max(iat, logout - leeway)
    # (iat + lifetime) can round below logout - leeway when iat is logout - lifetime.
    exp = draw(st.floats(min_value=low, max_value=max(low, iat + lifetime)))
    again = draw(st.floats(min_value=logout, max_value=logout + 3 * lifetime))
    return logout, leeway, lifetime, exp + leeway, again


@settings(max_examples=500, deadline=None)
@given(
    logouts(),
    st.booleans(),
    st.booleans(),
    st.floats(min_value=-2, max_value=2),
    st.floats(min_value=0, max_value=1),
    st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=8),
)
def test_no_token_is_refused_and_then_accepted(
    logout: tuple[float, float, float, float, float],
    legacy: bool,
    twice: bool,
    issued: float,
    life: float,
    checks: list[float],
) -> None:
    """Whatever the logout(s), the token and the times it is presented at: once
    refused, refused until it expires. A token the issuer minted up to the
    cutoff (and within its lifetime bound) is refused from the logout until
    it expires; one minted later is never refused."""
    at, leeway, lifetime, presented_until, again = logout
    revoked = Revocations()
    until = revoked_until(at, presented_until, lifetime, leeway)
    cutoff = math.inf if legacy else revocation_cutoff(at, leeway)
    revoked.revoke("s", until, cutoff)
    iat = at + issued * lifetime
    valid_until = iat + life * lifetime + leeway
    refused_once = False
    exact = not legacy  # the coverage of one logout with a cutoff is known exactly
    for t in sorted(at + c * lifetime for c in checks):
        if twice and t >= again:  # the same sign-in logged out again, e.g. with a later token
            twice = False
            until_again = revoked_until(again, again, lifetime, leeway)
            revoked.revoke("s", until_again, revocation_cutoff(again, leeway))
            exact = False
        if not iat - leeway <= t < valid_until:
            continue  # not a time the token is otherwise accepted at
        revoked.sweep(t)
        refused = revoked.session_revoked("s", "", t, iat=iat, valid_until=valid_until)
        assert refused or not refused_once, f"refused, then accepted at {t}"
        refused_once = refused
        if exact:
            assert refused is (iat <= cutoff), (t, iat, cutoff)


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
        assert parse_message(format_message(key, 1.0)) == (key, 1.0, math.inf)


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


@pytest.mark.parametrize("new_leeway", [60.0, 180.0, 600.0])
def test_a_leeway_raised_after_the_logout_revives_no_token(new_leeway: float) -> None:
    """A logout at T with leeway 60 covers a token minted 10 s before it;
    verified after a reload that raised the issuer's leeway (up to the
    schema's 600), the token is accepted until exp + the new leeway: it is
    still refused (found by a review: the hold counted the old leeway)."""
    logout, lifetime = 10_000.0, 3600.0
    iat = logout - 10
    exp = iat + lifetime
    revoked = Revocations()
    key = session_key("https://a.example", "n")
    until = revoked_until(logout, exp + 60.0, lifetime, 60.0)
    revoked.revoke(key, until, revocation_cutoff(logout, 60.0))
    assert revoked.session_revoked(key, "n", logout + 100, iat, exp + new_leeway)
