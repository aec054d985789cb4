"""The readiness answer as a pure function: facts in, status and JSON body out.

Table-driven: each row is the facts a worker could see and the answer a load
balancer must get. `usable` is checked against real key sets parsed from JWKS
documents (no stand-ins for keys).
"""

from __future__ import annotations

import json

import pytest
from access_fixtures import EC_KEY, RSA_KEY, public_jwk
from access_fixtures import jwks as jwks_doc

from edge.access.keysets import KeySet, parse_jwks
from edge.access.tokens import IssuerKeys
from edge.runtime.readiness import Facts, answer, issuer_facts, usable

A, B = "https://a.test", "https://b.test"

CASES = [
    # (id, facts, status, body)
    (
        "all ok",
        Facts(True, ((A, True), (B, True)), True, False),
        200,
        {"ready": True, "draining": False, "config": "ok", "issuers": {A: "ok", B: "ok"}, "store": "ok"},
    ),
    (
        "no issuers at all",
        Facts(True, (), True, False),
        200,
        {"ready": True, "draining": False, "config": "ok", "issuers": {}, "store": "ok"},
    ),
    (
        "one issuer without keys",
        Facts(True, ((A, True), (B, False)), True, False),
        503,
        {
            "ready": False,
            "draining": False,
            "config": "ok",
            "issuers": {A: "ok", B: "no usable keys"},
            "store": "ok",
        },
    ),
    (
        "store unreachable",
        Facts(True, ((A, True),), False, False),
        503,
        {
            "ready": False,
            "draining": False,
            "config": "ok",
            "issuers": {A: "ok"},
            "store": "redis unreachable",
        },
    ),
    (
        "config not loaded",
        Facts(False, (), True, False),
        503,
        {"ready": False, "draining": False, "config": "not loaded", "issuers": {}, "store": "ok"},
    ),
    (
        "draining, everything else fine",
        Facts(True, ((A, True),), True, True),
        503,
        {"ready": False, "draining": True, "config": "ok", "issuers": {A: "ok"}, "store": "ok"},
    ),
    (
        "everything wrong",
        Facts(False, ((A, False),), False, True),
        503,
        {
            "ready": False,
            "draining": True,
            "config": "not loaded",
            "issuers": {A: "no usable keys"},
            "store": "redis unreachable",
        },
    ),
]


@pytest.mark.parametrize(("facts", "status", "body"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_answer(facts: Facts, status: int, body: dict[str, object]) -> None:
    got_status, got_body = answer(facts)
    assert got_status == status
    assert json.loads(got_body) == body


def _keys(*jwks: dict[str, object], remote: bool = False) -> KeySet:
    parsed, _ = parse_jwks(jwks_doc(*jwks))
    return KeySet("test", parsed, remote=remote)


EC_JWK = public_jwk(EC_KEY, "ec-1", use="sig")
RSA_JWK = public_jwk(RSA_KEY, "rsa-1", use="sig")

USABLE = [
    ("key of an accepted algorithm", IssuerKeys(A, ["ES256"], 0, _keys(EC_JWK), None), True),
    ("one of several matches", IssuerKeys(A, ["RS256"], 0, _keys(EC_JWK, RSA_JWK), None), True),
    ("keys only of other algorithms", IssuerKeys(A, ["RS256"], 0, _keys(EC_JWK), None), False),
    ("jwks_url not fetched yet", IssuerKeys(A, ["ES256"], 0, KeySet("url", remote=True), None), False),
    ("empty key ring (built-in)", IssuerKeys(A, ["ES256"], 0, KeySet("key directory", {}), None), False),
    ("shared secret", IssuerKeys(A, ["HS256"], 0, None, b"0123456789abcdef0123456789abcdef"), True),
]


@pytest.mark.parametrize(("issuer", "expected"), [c[1:] for c in USABLE], ids=[c[0] for c in USABLE])
def test_usable(issuer: IssuerKeys, expected: bool) -> None:
    assert usable(issuer) is expected


def test_a_fetched_jwks_makes_a_remote_issuer_usable() -> None:
    keys = KeySet("url", remote=True)
    issuer = IssuerKeys(A, ["ES256"], 0, keys, None)
    assert issuer_facts([issuer]) == ((A, False),)
    keys.update(jwks_doc(EC_JWK), 1_800_000_000.0)
    assert issuer_facts([issuer]) == ((A, True),)
