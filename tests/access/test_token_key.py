"""A logout that revokes one token (its issuer names no sign-in: no
identity_nonce, no sid) refuses that token however it is respelled: the key
is its header and payload (revocation.token_key), which the signature
covers, not its bytes. Found by a review: '==' after the signature (PyJWT
reads it) and ECDSA's second signature (r, n - s) verified again, under
another key."""

from __future__ import annotations

import base64
from pathlib import Path

from access_fixtures import DROP, NOW, compiled, mint

from edge.access.claims import Identity
from edge.access.decide import REVOKED, verify_token
from edge.login.logout import _revocation

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def malleated(token: bytes) -> bytes:
    """The same ES256 token with the other valid signature, (r, n - s)."""
    head, payload, signature = token.split(b".")
    raw = base64.urlsafe_b64decode(signature + b"==")
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    other = base64.urlsafe_b64encode(r + (P256_ORDER - s).to_bytes(32, "big")).rstrip(b"=")
    return b".".join((head, payload, other))


def test_a_token_revoked_alone_stays_revoked_however_respelled(tmp_path: Path) -> None:
    c = compiled(tmp_path, "")  # verification needs the issuer only
    token = mint("ES256", identity_nonce=DROP)
    ident = verify_token(c, token, NOW)
    assert isinstance(ident, Identity) and not ident.identity_nonce
    until, cutoff = _revocation(c, ident, NOW)
    c.revoked.revoke(ident.session, until, cutoff)
    for spelling in (token, token + b"==", malleated(token)):
        assert verify_token(c, spelling, NOW + 5) is REVOKED, spelling[-12:]
    # Another token of the same user and issuer is another token.
    assert isinstance(verify_token(c, mint("ES256", identity_nonce=DROP, sub="u-2"), NOW + 5), Identity)
