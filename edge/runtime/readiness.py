"""The readiness answer (`/cdn-cgi/edge/ready`): facts in, status and body out.

Liveness (`/cdn-cgi/edge/health`) says the process answers; readiness says a
load balancer should send it traffic: the config is loaded, every issuer can
verify a token, and a shared revocation store is reachable when one is
configured. An edge on its way out is never ready, from the first SIGTERM
on: during its `shutdown_delay`, while it still accepts and serves as usual,
and during the drain; so traffic stops before connections close.

Pure: the runtime (edge.runtime.server) gathers the facts from what it owns;
nothing here performs I/O or reads a clock. The body names each part in a
fixed vocabulary and no internals (no URLs, no error texts): the answer is
served on every host, to anyone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from edge.access.tokens import IssuerKeys

OK = "ok"
NOT_LOADED = "not loaded"
NO_KEYS = "no usable keys"
STORE_DOWN = "redis unreachable"


@dataclass(frozen=True, slots=True)
class Facts:
    """What readiness depends on, as the runtime saw it just now."""

    config_loaded: bool
    issuers: tuple[tuple[str, bool], ...]  # (iss, holds a usable key), in config order
    store_reachable: bool  # True when no shared store is configured (the in-process one always is)
    draining: bool  # stopping: SIGTERM/SIGINT seen (the shutdown delay, then the drain)


def usable(issuer: IssuerKeys) -> bool:
    """Whether `issuer` can verify a token now: a shared secret, or at least
    one key of an algorithm it accepts (a jwks_url issuer holds none until
    its first fetch succeeds)."""
    if issuer.secret is not None:
        return True
    keys = issuer.keys
    return keys is not None and any(k.algorithm_name in issuer.algorithms for k in keys.keys.values())


def issuer_facts(issuers: Iterable[IssuerKeys]) -> tuple[tuple[str, bool], ...]:
    return tuple((issuer.iss, usable(issuer)) for issuer in issuers)


def answer(facts: Facts) -> tuple[int, bytes]:
    """The status (200 ready, else 503) and the JSON body naming each part."""
    issuers = {iss: OK if ok else NO_KEYS for iss, ok in facts.issuers}
    ready = (
        facts.config_loaded
        and facts.store_reachable
        and not facts.draining
        and all(ok for _, ok in facts.issuers)
    )
    body = {
        "ready": ready,
        "draining": facts.draining,
        "config": OK if facts.config_loaded else NOT_LOADED,
        "issuers": issuers,
        "store": OK if facts.store_reachable else STORE_DOWN,
    }
    return (200 if ready else 503), msgspec.json.encode(body) + b"\n"
