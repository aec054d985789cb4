"""Request ids: one per request, named in the access log line, the upstream's
X-Request-Id and every response's (and in the 401 JSON and the login
service's access-denied page), so a user's screenshot names the log line.

Where an id comes from (`request_id`): a client's X-Request-Id is taken only
from a trusted proxy ([server] trusted_proxies, as for X-Forwarded-For), only
when it is the one field of that name, and only when it matches SAFE;
anything else is replaced by a generated id (`new_id`). An id is never a
secret: it is an index into the logs, not a credential.

Generation: 96 random bits per id, from a per-process generator seeded from
os.urandom (reseeded in every forked child), 16 base64url characters. Measured
with timeit on the build machine (Python 3.11, per id, best of 5 x 200 000):

    random prefix + "%06x" counter      ~150 ns   (not random per id: it counts
                                                   the requests a worker serves)
    getrandbits(96 x 256), b64url, cut  ~160 ns   (new_id: a batch at a time)
    Random.getrandbits(96), b64url      ~250 ns
    os.urandom(12), b64url              ~600 ns   (a system call per id)
    secrets.token_urlsafe(12)           ~790 ns

An id is not a secret, so a seeded generator is enough; each id random means
it tells a client nothing about the traffic (a counter would), at about
the counter's cost once drawn a batch at a time.

Invariants:
- Every id `new_id` returns is ID_CHARS characters of SAFE, so generated and
  accepted ids share one pattern.
- The generator is seeded from os.urandom at import and again in every forked
  child (os.register_at_fork), which also drops the batch of ids drawn
  before the fork: two processes (workers, restarts) never draw the same
  sequence, and two ids collide with odds of about n^2 / 2^97.
"""

from __future__ import annotations

import base64
import os
import random
import re
from collections.abc import Sequence

# Longest id accepted from a trusted proxy, in bytes. Common formats fit with
# room to spare (a UUID is 36, nginx's $request_id 32, a ULID 26, AWS's
# "Root=1-..." trace header 40), and a bound keeps a proxy's id from bloating
# every log line and header it is copied into.
MAX_LENGTH = 64
# What an id may hold: RFC 3986's unreserved characters and ':'. Nothing that
# means something in a log line (quote, backslash, space), in HTML (<, >, &,
# quotes) or in a header (CR, LF, comma, semicolon).
SAFE = re.compile(rb"[A-Za-z0-9_.~:-]{1,%d}" % MAX_LENGTH)

ID_BITS = 96  # random bits per id: 12 bytes, 16 base64url characters, no padding
ID_BYTES = ID_BITS // 8
ID_CHARS = ID_BYTES * 4 // 3

_random = random.Random(os.urandom(32))


# Ids are drawn and encoded BATCH at a time (96 bits are 12 bytes, 16
# base64 characters with no padding, so a batch's encoding cuts into ids
# exactly): an id then costs a list pop.
BATCH = 256
_ids: list[bytes] = []


def _reseed() -> None:
    _random.seed(os.urandom(32))
    _ids.clear()  # the parent's undrawn ids are the parent's


# A forked worker must not draw its parent's sequence.
os.register_at_fork(after_in_child=_reseed)


def new_id() -> bytes:
    """A fresh id: ID_CHARS URL-safe characters, random (see the invariants)."""
    return _ids.pop() if _ids else _draw()


def _draw() -> bytes:
    """Refill the batch; return one id of it."""
    text = base64.urlsafe_b64encode(_random.getrandbits(ID_BITS * BATCH).to_bytes(ID_BYTES * BATCH, "big"))
    _ids.extend(text[i : i + ID_CHARS] for i in range(0, len(text), ID_CHARS))
    return _ids.pop()


def accepted(values: Sequence[bytes] | None, trusted: bool) -> bytes | None:
    """The client's X-Request-Id values, if they may name this request: from
    a trusted peer, exactly one field, and SAFE. Pure."""
    if not trusted or values is None or len(values) != 1:
        return None
    value = values[0]
    return value if SAFE.fullmatch(value) is not None else None


def request_id(values: Sequence[bytes] | None, trusted: bool) -> bytes:
    """The id of a request whose X-Request-Id fields are `values` (None: no
    such field) from a peer that is (or is not) a trusted proxy."""
    found = accepted(values, trusted)
    return new_id() if found is None else found
