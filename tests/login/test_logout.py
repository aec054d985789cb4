"""Logout: how long a revocation lasts, whose sessions it covers (BEHAVIOUR.md section 6).

The login service is driven in process here, with the clock passed in: a
logout at NOW, then the same tokens checked days later, without sleeping.
Tokens come from tests/support/access_fixtures.py (an independent signer), from two
external issuers that share nothing but their keys. The stores are the real
ones: MemoryStore, and RedisStore against a real redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio
from access_fixtures import DROP, ISS, NOW, default_jwks, mint
from redis_fixture import RedisServer, redis_server  # noqa: F401

from edge.access.actions import Endpoint
from edge.access.claims import Identity, Refusal
from edge.access.compile import Compiled, compile_config
from edge.access.decide import REVOKED, decide, verify_token
from edge.access.endpoints import EndpointKind
from edge.access.request import Request, build
from edge.access.responses import LocalResponse
from edge.access.revocation import sid_key
from edge.config.load import loads
from edge.config.schema import MAX_LEEWAY, Config
from edge.login.service import LoginService
from edge.login.store import MemoryStore, RedisStore, Store

DAY = 86400.0
ISS2 = "https://other-idp.example.net"
LONG = 30 * DAY  # the issuers' max_token_lifetime here: tokens may live up to a month
# How long the edge used to keep a revocation: the longest session_duration + 60 s.
OLD_HORIZON = DAY + 60
APP_HOST = "app.example.com"


def config_text(jwks: Path, max_lifetime: float | None = LONG) -> str:
    bound = "" if max_lifetime is None else f"max_token_lifetime = {int(max_lifetime)}"
    issuers = "".join(
        f'[[issuers]]\niss = "{iss}"\njwks_file = "{jwks}"\nalgorithms = ["ES256"]\n{bound}\n'
        for iss in (ISS, ISS2)
    )
    return f"""
{issuers}
[[apps]]
name = "app"
domains = ["{APP_HOST}"]
upstream = "http://127.0.0.1:9"
aud = "api-aud"
session_duration = 86400
[[apps.policies]]
name = "staff"
action = "allow"
include = [{{ email_domains = ["example.com"] }}]
"""


def setup(tmp_path: Path, store: Store, max_lifetime: float | None = LONG) -> tuple[Config, Compiled]:
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(default_jwks())
    config = loads(config_text(jwks, max_lifetime))
    return config, compile_config(config, revoked=store.revocations)


def request(
    target: str = "/cdn-cgi/access/logout", token: bytes = b"", *extra: tuple[bytes, bytes]
) -> Request:
    headers = [(b"host", APP_HOST.encode()), *extra]
    if token:
        headers.append((b"cookie", b"CF_Authorization=" + token))
    return build(b"GET", APP_HOST.encode(), target.encode(), headers, "127.0.0.1")


async def logout(service: LoginService, c: Compiled, token: bytes, now: float) -> LocalResponse:
    req = request(token=token)
    action = decide(c, req, now)
    assert isinstance(action, Endpoint) and action.kind is EndpointKind.LOGOUT
    return await service.handle(c, action, req, b"", now)


def accepted(c: Compiled, token: bytes, now: float) -> bool:
    result = verify_token(c, token, now)
    return isinstance(result, Identity)


def token(iss: str = ISS, nonce: str = "shared-nonce", lifetime: float = 20 * DAY) -> bytes:
    return mint(iss=iss, identity_nonce=nonce, iat=NOW - 10, nbf=NOW - 10, exp=NOW - 10 + lifetime)


# -- the issuers' lifetime bound ------------------------------------------------------------


def test_a_token_living_longer_than_its_issuer_allows_is_refused(tmp_path: Path) -> None:
    """A revocation lasts as long as the longest token it may cover; a token
    claiming a longer life than its issuer's bound could outlive it."""
    _, c = setup(tmp_path, MemoryStore(), max_lifetime=7 * DAY)
    assert accepted(c, token(lifetime=7 * DAY), NOW)
    refused = verify_token(c, token(lifetime=7 * DAY + 1), NOW)
    assert isinstance(refused, Refusal) and "max_token_lifetime" in refused.reason


def test_the_default_bound_is_a_day(tmp_path: Path) -> None:
    config, c = setup(tmp_path, MemoryStore(), max_lifetime=None)
    assert [i.max_token_lifetime for i in config.issuers] == [DAY, DAY]
    assert accepted(c, token(lifetime=DAY), NOW)
    assert not accepted(c, token(lifetime=DAY + 1), NOW)


# -- how long a logout lasts ------------------------------------------------------------------


def memory(now: list[float]) -> MemoryStore:
    return MemoryStore(clock=lambda: now[0])


def test_logout_holds_until_the_token_expires_memory(tmp_path: Path) -> None:
    clock = [NOW]
    store = memory(clock)
    config, c = setup(tmp_path, store)
    service = LoginService(config, store, b"edge")
    far = token(lifetime=20 * DAY)
    assert accepted(c, far, NOW)

    answer = asyncio.run(logout(service, c, far, NOW))
    assert answer.status == 200
    later = NOW + OLD_HORIZON + DAY
    clock[0] = later
    asyncio.run(store.revoke("unrelated", later + 1))  # sweeps what has expired by `later`
    assert verify_token(c, far, later) is REVOKED
    # ... and no longer than needed: forgotten once the token itself is past.
    end = NOW + LONG + 60 + MAX_LEEWAY + 1  # revoked_until: the hold counts the largest leeway
    store.revocations.sweep(end)
    assert len(store.revocations) == 0


def test_logout_holds_until_the_token_expires_redis(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    clock = [NOW]
    later = NOW + OLD_HORIZON + DAY

    async def main() -> None:
        worker = RedisStore(redis_server.url, clock=lambda: clock[0])
        config, c = setup(tmp_path, worker)
        far = token(lifetime=20 * DAY)
        await worker.start()
        try:
            assert worker.healthy
            await logout(LoginService(config, worker, b"edge"), c, far, NOW)
        finally:
            await worker.close()
        # A worker that starts days later loads what Redis still holds for then.
        fresh = RedisStore(redis_server.url, clock=lambda: later)
        await fresh.start()
        try:
            assert fresh.healthy
            c_fresh = compile_config(config, revoked=fresh.revocations)
            assert verify_token(c_fresh, far, later) is REVOKED
        finally:
            await fresh.close()

    asyncio.run(main())


# -- tokens minted after the logout: one answer, never refused and then accepted -------------------

HOUR = 3600.0
# When the sequence below is checked: soon after the late token was minted, and
# after the revocation (a day's max_token_lifetime + 2 x 60 s leeway) has lapsed.
CHECKS = (NOW + HOUR + 10, NOW + DAY + 200)


def sid_token(iat: float, lifetime: float, sid: str = "sid-late") -> bytes:
    """A token of an external issuer's sign-in named by `sid` (no nonce), minted at `iat`."""
    return mint(iss=ISS, identity_nonce=DROP, sid=sid, iat=iat, nbf=iat, exp=iat + lifetime)


def answers(c: Compiled, token: bytes, times: tuple[float, ...] = CHECKS) -> list[str]:
    """What the edge makes of `token` at each time: accepted, or the refusal."""
    results = [verify_token(c, token, t) for t in times]
    return ["accepted" if isinstance(r, Identity) else r.reason for r in results]


def test_a_token_minted_after_the_logout_gets_one_answer_memory(tmp_path: Path) -> None:
    """Logout at T; the issuer mints a token of the same sid at T + 1 h with a
    day's exp. It is not covered (issued after the logout): accepted at
    T + 3610 s and still at T + 86600 s, where it used to be refused first,
    then accepted once the revocation lapsed."""
    clock = [NOW]
    store = memory(clock)
    config, c = setup(tmp_path, store, max_lifetime=DAY)
    signed_out = sid_token(NOW - 10, 20 * HOUR)
    assert asyncio.run(logout(LoginService(config, store, b"edge"), c, signed_out, NOW)).status == 200
    late = sid_token(NOW + HOUR, DAY)

    late_answers, signed_out_answers = [], []
    for t in CHECKS:
        clock[0] = t
        store.revocations.sweep(t)
        late_answers += answers(c, late, (t,))
        signed_out_answers += answers(c, signed_out, (t,))
    assert late_answers == ["accepted", "accepted"]
    # The token signed out stays refused until it expires.
    assert signed_out_answers == [REVOKED.reason, "expired"]


def test_a_token_minted_after_the_logout_gets_one_answer_redis(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """The same sequence through Redis: a worker connected at the logout
    (the published message) and workers started at each check (the set they
    load) answer alike."""
    signed_out = sid_token(NOW - 10, 20 * HOUR)
    late = sid_token(NOW + HOUR, DAY)

    async def main() -> None:
        a = RedisStore(redis_server.url, clock=lambda: NOW)
        b = RedisStore(redis_server.url, clock=lambda: NOW)
        config, c_a = setup(tmp_path, a, max_lifetime=DAY)
        c_b = compile_config(config, revoked=b.revocations)
        await a.start()
        await b.start()
        try:
            assert a.healthy and b.healthy
            await logout(LoginService(config, a, b"edge"), c_a, signed_out, NOW)
            assert await eventually(lambda: verify_token(c_b, signed_out, NOW + 1) is REVOKED)
            assert answers(c_a, late) == answers(c_b, late) == ["accepted", "accepted"]
        finally:
            await a.close()
            await b.close()
        for t in CHECKS:
            fresh = RedisStore(redis_server.url, clock=lambda t=t: t)
            await fresh.start()
            try:
                assert fresh.healthy
                c_fresh = compile_config(config, revoked=fresh.revocations)
                assert answers(c_fresh, late, (t,)) == ["accepted"]
                expected = REVOKED.reason if t < NOW + 20 * HOUR else "expired"
                assert answers(c_fresh, signed_out, (t,)) == [expected]
            finally:
                await fresh.close()

    asyncio.run(main())


def test_an_entry_of_the_previous_edge_never_flips_either(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """An entry the previous edge wrote (the key, held until logout + a day +
    2 x leeway, no logout time) stays readable: it refuses every token that
    expires within it, until that token expires, and no token is refused and
    then accepted."""
    until = NOW + DAY + 120

    async def main() -> None:
        raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await raw.zadd("edge:revoked", {sid_key(ISS, "sid-late"): until})
        finally:
            await raw.aclose()
        for t in CHECKS:
            worker = RedisStore(redis_server.url, clock=lambda t=t: t)
            _, c = setup(tmp_path, worker, max_lifetime=DAY)
            await worker.start()
            try:
                assert worker.healthy
                signed_out = sid_token(NOW - 10, 20 * HOUR)
                expected = REVOKED.reason if t < NOW + 20 * HOUR else "expired"
                assert answers(c, signed_out, (t,)) == [expected]
                assert answers(c, sid_token(NOW + HOUR, DAY), (t,)) == ["accepted"]
            finally:
                await worker.close()

    asyncio.run(main())


# -- whose sessions a logout covers ------------------------------------------------------------


@pytest.mark.parametrize(("signed_out", "other"), [(ISS, ISS2), (ISS2, ISS)])
def test_logout_of_one_issuer_leaves_the_other_with_the_same_nonce(
    tmp_path: Path, signed_out: str, other: str
) -> None:
    store = MemoryStore(clock=lambda: NOW)
    config, c = setup(tmp_path, store)
    mine, theirs = token(signed_out, "same-value", DAY), token(other, "same-value", DAY)
    assert accepted(c, mine, NOW) and accepted(c, theirs, NOW)
    asyncio.run(logout(LoginService(config, store, b"edge"), c, mine, NOW))
    assert verify_token(c, mine, NOW + 1) is REVOKED
    assert accepted(c, theirs, NOW + 1)


def test_issuer_scoped_revocations_travel_through_redis(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def main() -> None:
        a, b = (RedisStore(redis_server.url, clock=lambda: NOW) for _ in range(2))
        config, c_a = setup(tmp_path, a)
        c_b = compile_config(config, revoked=b.revocations)
        mine, theirs = token(ISS, "same-value", DAY), token(ISS2, "same-value", DAY)
        await a.start()
        await b.start()
        try:
            await logout(LoginService(config, a, b"edge"), c_a, mine, NOW)
            assert await eventually(lambda: verify_token(c_b, mine, NOW + 1) is REVOKED)
            assert accepted(c_b, theirs, NOW + 1) and accepted(c_a, theirs, NOW + 1)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_bare_nonce_entries_already_in_redis_are_still_enforced(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """An entry an older edge wrote (the bare nonce, held for the longest
    session_duration + 60 s, no logout time) keeps refusing, for any issuer,
    every token of that nonce that expires within it, until the token
    expires. A token that outlives it is not covered: accepted throughout,
    never refused first and accepted later."""
    until = NOW + OLD_HORIZON

    async def main() -> None:
        raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await raw.zadd("edge:revoked", {"old-nonce": until})
        finally:
            await raw.aclose()
        worker = RedisStore(redis_server.url, clock=lambda: NOW)
        _, c = setup(tmp_path, worker)
        await worker.start()
        try:
            for iss in (ISS, ISS2):
                short = token(iss, "old-nonce", 20 * HOUR)
                assert answers(c, short, (NOW, NOW + 20 * HOUR - 20, NOW + 20 * HOUR + 60)) == [
                    REVOKED.reason,
                    REVOKED.reason,
                    "expired",
                ]
                outliving = token(iss, "old-nonce", 20 * DAY)
                assert answers(c, outliving, (NOW, until - 1, until)) == ["accepted"] * 3
            assert accepted(c, token(ISS, "new-nonce", DAY), NOW)
        finally:
            await worker.close()

    asyncio.run(main())


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
