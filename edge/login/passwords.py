"""Password hashes for the development provider: scrypt, self-describing.

Format: ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (salt and hash base64url,
no padding). Only hashes are ever stored in a config file; `edge password`
makes them. Verification is constant-time in the hash comparison and costs
the same whether or not the email exists (see `DUMMY_HASH`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from edge.config.schema import GIB, KIB, MIB

# N = 2^15, r = 8: 32 MiB and a few tens of milliseconds per check, the
# parameters RFC 7914 section 2 suggests for interactive logins.
LOG2_N = 15
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_LOG2_N = 20  # refuse hashes that would cost seconds and a GiB per check
# 128·r·N·p: the bytes one check uses (times p, which multiplies its time).
# At most what N = 2^20, r = 8, p = 1 costs: a GiB, a few seconds.
MAX_COST = GIB
MAX_PASSWORD_BYTES = KIB


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int, size: int) -> bytes:
    n = 1 << log2_n
    # What OpenSSL allocates (128·r·(N+2) + 128·r·p) plus slack; it must stay
    # below 2^31 or hashlib raises, so the cost is bounded before we get here.
    maxmem = 128 * r * (n + p + 2) + MIB
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=size)


def hash_password(password: str, log2_n: int = LOG2_N) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password.encode(), salt, log2_n, R, P, HASH_BYTES)
    return f"scrypt${log2_n}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded`; False for any malformed hash."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or len(password.encode()) > MAX_PASSWORD_BYTES:
        return False
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return False
    if not (1 <= log2_n <= MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16 and expected):
        return False
    if 128 * r * p * (1 << log2_n) > MAX_COST:
        return False
    digest = _scrypt(password.encode(), salt, log2_n, r, p, len(expected))
    return hmac.compare_digest(digest, expected)


# Checked when the email is unknown, so a wrong email costs what a wrong
# password costs (no user enumeration by timing).
DUMMY_HASH = "scrypt$15$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
