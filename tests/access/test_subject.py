"""edge.access.subject: client IPs behind proxies, service tokens. Pure."""

from __future__ import annotations

import hashlib

import pytest
from access_networks import TRUSTED

from edge.access.subject import ServiceTokens, client_ip, parse_ip
from edge.config.schema import ServiceToken


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("192.0.2.1", [b"198.51.100.7"], "192.0.2.1"),  # untrusted peer: XFF ignored
        ("10.0.0.2", [b"198.51.100.7"], "198.51.100.7"),
        ("10.0.0.2", [b"203.0.113.9, 198.51.100.7, 10.1.1.1"], "198.51.100.7"),  # right to left
        ("10.0.0.2", [b"203.0.113.9", b"198.51.100.7"], "198.51.100.7"),  # several header lines
        ("10.0.0.2", [b"10.0.0.9, 10.0.0.8"], "10.0.0.9"),  # all trusted: the leftmost
        ("10.0.0.2", [b"198.51.100.7, garbage"], "10.0.0.2"),  # trust stops at garbage
        ("10.0.0.2", [], "10.0.0.2"),
        ("fd00::1", [b"2001:db8::9"], "2001:db8::9"),
        ("::ffff:10.0.0.2", [b"198.51.100.7"], "198.51.100.7"),
        ("nonsense", [b"198.51.100.7"], None),
    ],
)
def test_client_ip(peer: str, xff: list[bytes], expected: str | None) -> None:
    found = client_ip(peer, xff, TRUSTED)
    assert (None if found is None else str(found)) == expected


def test_client_ip_without_trusted_proxies_is_the_peer() -> None:
    assert str(client_ip("10.0.0.2", [b"198.51.100.7"], ())) == "10.0.0.2"


def test_parse_ip() -> None:
    assert str(parse_ip(b"::ffff:1.2.3.4")) == "1.2.3.4"
    assert parse_ip(b"\xff") is None


def _tokens() -> ServiceTokens:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    return ServiceTokens([ServiceToken(name="ci", client_id="ci.example", secret_sha256=digest)])


@pytest.mark.parametrize(
    ("client_id", "secret", "name", "reason"),
    [
        (b"ci.example", b"s3cret", "ci", '"ci": valid'),
        (b" ci.example ", b" s3cret ", "ci", '"ci": valid'),
        (b"ci.example", b"wrong", None, '"ci": wrong secret'),
        (b"nobody", b"s3cret", None, "unknown client id"),
        (b"ci.example", None, None, "none presented"),
        (None, b"s3cret", None, "none presented"),
    ],
)
def test_service_tokens(client_id: bytes | None, secret: bytes | None, name: str | None, reason: str) -> None:
    assert _tokens().check(client_id, secret) == (name, reason)


def test_secrets_are_not_kept() -> None:
    tokens = _tokens()
    assert b"s3cret" not in repr(tokens.by_id).encode()
