"""edge.access.keysets: JWKS parsing (which keys are left out, and why) and
the fetch schedule of a remote key set. Pure: a fixed clock
(access_fixtures.NOW), keys generated in-process."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from access_fixtures import EC_KEY, KEYS, KIDS, NOW, OTHER_EC_KEY, RSA_KEY, default_jwks, jwks, public_jwk
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.access.keysets import REFETCH_MIN_INTERVAL, REFRESH_INTERVAL, JwksError, KeySet, parse_jwks


@pytest.mark.parametrize(
    ("jwk", "note"),
    [
        (public_jwk(EC_KEY, "k", use="enc"), "use is 'enc', not 'sig'"),
        (public_jwk(EC_KEY, "k", key_ops=["encrypt"]), "key_ops does not include 'verify'"),
        (public_jwk(EC_KEY, "k", key_ops="verify"), "key_ops does not include 'verify'"),
        ({k: v for k, v in public_jwk(EC_KEY, "k").items() if k != "kid"}, "no kid"),
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "k"}, "secret or private key material"),
        ({**public_jwk(EC_KEY, "k"), "d": "AAAA"}, "secret or private key material"),
        ({"kty": "XYZ", "kid": "k"}, "Unsupported kty"),
        ("a string", "not a JSON object"),
        (
            public_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024), "k"),
            "below the minimum",
        ),
    ],
)
def test_unusable_jwks_keys_are_left_out(jwk: Any, note: str) -> None:
    keys, notes = parse_jwks(jwks(jwk, public_jwk(RSA_KEY, "good")))
    assert list(keys) == ["good"]
    assert len(notes) == 1 and note in notes[0], notes


@pytest.mark.parametrize(
    "jwk", [public_jwk(EC_KEY, "k", use="sig"), public_jwk(EC_KEY, "k", key_ops=["verify", "sign"])]
)
def test_signature_keys_are_kept(jwk: dict[str, Any]) -> None:
    keys, notes = parse_jwks(jwks(jwk))
    assert list(keys) == ["k"] and notes == []


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"keys": {}}', b'{"nokeys": []}'])
def test_unusable_jwks_documents(body: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(body)


def test_duplicate_kid_keeps_the_first() -> None:
    keys, notes = parse_jwks(jwks(public_jwk(EC_KEY, "k"), public_jwk(OTHER_EC_KEY, "k")))
    assert jwt.PyJWK(public_jwk(EC_KEY, "k")).key.public_numbers() == keys["k"].key.public_numbers()
    assert "appears twice" in notes[0]


def test_remote_key_set_fetch_schedule() -> None:
    ks = KeySet("https://idp/certs", remote=True)
    assert ks.claim_fetch(NOW)  # empty: fetch at once
    assert not ks.claim_fetch(NOW + 1)  # claimed: nobody else fetches
    ks.update(jwks(public_jwk(EC_KEY, "ec-1")), NOW + 1)
    ks.note_unknown_kid()
    assert not ks.claim_fetch(NOW + REFETCH_MIN_INTERVAL - 1)  # rate limited
    assert ks.claim_fetch(NOW + REFETCH_MIN_INTERVAL + 1)
    ks.fetch_failed(NOW + REFETCH_MIN_INTERVAL + 2, "timeout")
    assert ks.last_error == "timeout"
    assert ks.get("ec-1") is not None  # a failed fetch keeps the keys
    assert not ks.claim_fetch(NOW + 100)  # nothing wanted, refresh not due
    assert ks.claim_fetch(NOW + 1 + REFRESH_INTERVAL)  # periodic refresh


def test_file_key_sets_never_ask_for_fetches() -> None:
    keys, _ = parse_jwks(default_jwks())
    ks = KeySet("jwks.json", keys)
    ks.note_unknown_kid()
    assert not ks.claim_fetch(NOW)


@pytest.mark.parametrize("body", [b"not json", jwks(public_jwk(EC_KEY, "k", use="enc")), jwks()])
def test_bad_fetch_keeps_the_old_keys(body: bytes) -> None:
    ks = KeySet("https://idp/certs", remote=True)
    ks.update(jwks(public_jwk(EC_KEY, "ec-1")), NOW)
    with pytest.raises(JwksError):
        ks.update(body, NOW + 60)
    assert list(ks.keys) == ["ec-1"]
    assert ks.last_error


def test_every_algorithm_key_kind_parses() -> None:
    keys, notes = parse_jwks(default_jwks())
    assert notes == []
    assert {k: v.algorithm_name for k, v in keys.items()} == {KIDS[a]: a for a in KEYS}


def test_a_refetch_keeps_identical_keys_and_replaces_changed_ones() -> None:
    """Tokens verified under a key are cached by that key object: a refetch
    that brings the same key (any kind, fields in any order) keeps the
    object; a new key under the same kid, or the same key for another
    algorithm, is a new object."""
    ks = KeySet("https://idp/certs", remote=True)
    ks.update(default_jwks(), NOW)
    before = dict(ks.keys)
    shuffled = [dict(reversed(list(public_jwk(KEYS[alg], KIDS[alg], use="sig").items()))) for alg in KEYS]
    ks.update(jwks(*shuffled), NOW + 60)
    assert all(ks.keys[kid] is key for kid, key in before.items())
    ec_kid = KIDS["ES256"]
    ks.update(jwks(public_jwk(OTHER_EC_KEY, ec_kid, use="sig")), NOW + 120)
    assert ks.keys[ec_kid] is not before[ec_kid]
    rsa_kid = KIDS["RS256"]
    ks.update(jwks(public_jwk(KEYS["RS256"], rsa_kid, use="sig", alg="PS256")), NOW + 180)
    assert ks.keys[rsa_kid] is not before[rsa_kid] and ks.keys[rsa_kid].algorithm_name == "PS256"
