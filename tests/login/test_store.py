"""edge/login/store.py: MemoryStore, and RedisStore against a real redis-server.

Two RedisStores in one event loop stand for two workers (or two instances).
The only time bound asserted is the design's: a revocation reaches every store
within CONVERGE seconds, also after Redis comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio
import uvloop
from conftest import free_port
from redis_fixture import RedisServer, redis_server  # noqa: F401

from edge.login.store import MemoryStore, RedisStore, StoreUnavailable, redact

CONVERGE = 5.0  # seconds: a logout is enforced everywhere within this
HOUR = 3600.0

Runner = Callable[[Coroutine[Any, Any, None]], None]


def run_uvloop(coro: Coroutine[Any, Any, None]) -> None:
    uvloop.run(coro)  # as a worker runs (edge/runtime/server.py)


RUNNERS = [pytest.param(run_uvloop, id="uvloop"), pytest.param(asyncio.run, id="asyncio")]


async def eventually(predicate: Callable[[], bool], timeout: float = CONVERGE) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def eventually_async(predicate: Callable[[], Awaitable[bool]], timeout: float = CONVERGE) -> bool:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def started(*stores: RedisStore) -> AsyncIterator[None]:
    try:
        for store in stores:
            await store.start()
        yield
    finally:
        for store in stores:
            await store.close()


@contextlib.asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def store(server: RedisServer, name: str = "edge.store", **kwargs: Any) -> RedisStore:
    return RedisStore(server.url, log=logging.getLogger(name), **kwargs)


# --- MemoryStore -------------------------------------------------------------


def test_memory_store() -> None:
    clock = [1000.0]
    memory = MemoryStore(clock=lambda: clock[0])

    async def main() -> None:
        await memory.start()
        assert memory.healthy
        await memory.revoke("s1", until=1010.0)
        assert memory.revocations.session_revoked("s1", "", 1005.0)
        assert await memory.claim_once("code", until=1060.0)
        assert not await memory.claim_once("code", until=1060.0)
        clock[0] = 1060.0
        assert await memory.claim_once("code", until=1120.0)  # the first claim expired
        assert not await memory.claim_once("late", until=1000.0)  # already expired
        await memory.close()

    asyncio.run(main())


def test_memory_store_sweeps_on_revoke() -> None:
    clock = [0.0]
    memory = MemoryStore(clock=lambda: clock[0])

    async def main() -> None:
        for i in range(100):
            clock[0] = float(i)
            await memory.revoke(f"s{i}", until=i + 5.0)
        assert len(memory.revocations) <= 6

    asyncio.run(main())


# --- RedisStore, Redis up ----------------------------------------------------


@pytest.mark.parametrize("run", RUNNERS)
def test_revocation_reaches_the_other_store(redis_server: RedisServer, run: Runner) -> None:  # noqa: F811
    a, b = store(redis_server), store(redis_server)

    async def main() -> None:
        async with started(a, b), raw_client(redis_server.url) as raw:
            assert a.healthy and b.healthy
            until = time.time() + HOUR
            await a.revoke("s1", until)
            assert a.revocations.session_revoked("s1", "", time.time())  # at once, locally
            assert await eventually(lambda: b.revocations.session_revoked("s1", "", time.time()))
            await b.revoke("s2", until)
            assert await eventually(lambda: a.revocations.session_revoked("s2", "", time.time()))
            assert await raw.zscore("edge:revoked", "s1") == until
            assert not b.revocations.session_revoked("never", "", time.time())

    run(main())


def test_new_store_starts_with_the_shared_revocations(redis_server: RedisServer) -> None:  # noqa: F811
    a, late = store(redis_server), store(redis_server)

    async def main() -> None:
        async with started(a):
            await a.revoke("s1", time.time() + HOUR)
            async with started(late):
                assert late.healthy  # start() waited for the first sync
                assert late.revocations.session_revoked("s1", "", time.time())

    run_uvloop(main())


def test_prefixes_keep_deployments_apart(redis_server: RedisServer) -> None:  # noqa: F811
    a = RedisStore(redis_server.url, prefix="one:")
    b = RedisStore(redis_server.url, prefix="two:")

    async def main() -> None:
        async with started(a, b), raw_client(redis_server.url) as raw:
            await a.revoke("s1", time.time() + HOUR)
            assert await raw.zscore("one:revoked", "s1") is not None
            assert await a.claim_once("code", time.time() + HOUR)
            assert await b.claim_once("code", time.time() + HOUR)
            await b.revoke("marker", time.time() + HOUR)
            assert await eventually(lambda: b.revocations.session_revoked("marker", "", time.time()))
            assert not b.revocations.session_revoked("s1", "", time.time())

    run_uvloop(main())


def test_cutoffs_are_shared_merged_and_trimmed(redis_server: RedisServer) -> None:  # noqa: F811
    """The latest iat a revocation covers travels with it (message and set),
    the later cutoff wins, an entry without one (an older edge's) covers
    every iat, and a trim removes a cutoff with its entry."""
    clock = [time.time()]
    a = store(redis_server, clock=lambda: clock[0])
    b = store(redis_server, clock=lambda: clock[0])

    def cutoffs(s: RedisStore) -> dict[str, float]:
        return {key: cutoff for key, _, cutoff in s.revocations.items(clock[0])}

    async def main() -> None:
        now = clock[0]
        async with started(a, b), raw_client(redis_server.url) as raw:
            await a.revoke("s1", now + HOUR, cutoff=now - 100)
            assert await eventually(lambda: cutoffs(b).get("s1") == now - 100)
            await b.revoke("s1", now + HOUR, cutoff=now)  # logged out again: later tokens too
            assert await eventually(lambda: cutoffs(a).get("s1") == now)
            await a.revoke("s1", now + HOUR, cutoff=now - 50)  # an earlier cutoff changes nothing
            assert await raw.hget("edge:revoked-cutoff", "s1") == repr(now)
            # An older edge's entry and message: no cutoff, every iat.
            await raw.zadd("edge:revoked", {"s2": now + HOUR})
            await raw.publish("edge:revocations", f"{now + HOUR!r} s2")
            assert await eventually(lambda: cutoffs(a).get("s2") == math.inf)
            await b.revoke("s2", now + HOUR, cutoff=now)  # still every iat
            assert await raw.hget("edge:revoked-cutoff", "s2") is None
            async with started(late := store(redis_server, clock=lambda: clock[0])):
                assert cutoffs(late) == {"s1": now, "s2": math.inf}
            # Expired entries leave the set and the hash together.
            await a.revoke("short", now + 1, cutoff=now)
            await raw.hset("edge:revoked-cutoff", "orphan", now)  # an older edge trimmed its member
            assert await raw.hget("edge:revoked-cutoff", "short") is not None
            clock[0] = now + 2
            await a._trim()
            assert await raw.zscore("edge:revoked", "short") is None
            assert await raw.hkeys("edge:revoked-cutoff") == ["s1"]

    run_uvloop(main())


def test_malformed_messages_are_ignored(redis_server: RedisServer) -> None:  # noqa: F811
    b = store(redis_server)

    async def main() -> None:
        async with started(b), raw_client(redis_server.url) as raw:
            for junk in ["", "nonsense", "nan s0", "12"]:
                await raw.publish("edge:revocations", junk)
            await raw.publish("edge:revocations", f"{time.time() + HOUR!r} s1")
            assert await eventually(lambda: b.revocations.session_revoked("s1", "", time.time()))
            assert b.healthy

    run_uvloop(main())


def test_claim_once_is_single_use_across_stores(redis_server: RedisServer) -> None:  # noqa: F811
    a, b = store(redis_server), store(redis_server)

    async def main() -> None:
        async with started(a, b):
            assert await a.claim_once("code", time.time() + HOUR)
            assert not await b.claim_once("code", time.time() + HOUR)
            assert not await a.claim_once("code", time.time() + HOUR)
            assert not await a.claim_once("stale", time.time() - 1)
            results = await asyncio.gather(*(s.claim_once("race", time.time() + HOUR) for s in [a, b] * 5))
            assert results.count(True) == 1
            # A short-lived claim: once it expires, the key can be claimed again.
            assert await a.claim_once("short", time.time() + 0.2)
            assert await eventually_async(lambda: b.claim_once("short", time.time() + HOUR))
            assert not await a.claim_once("short", time.time() + HOUR)

    run_uvloop(main())


def test_failure_counts_are_shared_across_stores(redis_server: RedisServer) -> None:  # noqa: F811
    """Failed sign-ins from one address count in every worker, so N workers
    do not give a password guesser N times the attempts."""
    a, b = store(redis_server), store(redis_server)

    async def main() -> None:
        async with started(a, b):
            assert await a.count("ip", HOUR) == 0
            assert [await s.add("ip", HOUR) for s in (a, b, a)] == [1, 2, 3]
            assert await b.count("ip", HOUR) == 3 and await a.count("other", HOUR) == 0
            # The window starts with the first failure; then the count starts over.
            assert await a.add("brief", 0.2) == 1
            assert await eventually_async(lambda: _is_zero(b.count("brief", 0.2)))

    run_uvloop(main())


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


def test_memory_store_counts() -> None:
    s = MemoryStore()

    async def main() -> None:
        assert [await s.add("ip", HOUR) for _ in range(3)] == [1, 2, 3]
        assert await s.count("ip", HOUR) == 3 and await s.count("other", HOUR) == 0

    run_uvloop(main())


# --- RedisStore, Redis down --------------------------------------------------


def records(caplog: pytest.LogCaptureFixture, name: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == level]


def test_outage_and_recovery(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="edge.store")
    a, b = store(redis_server, "edge.store.a"), store(redis_server, "edge.store.b")
    before, during_a, during_b = time.time() + HOUR, time.time() + HOUR + 1, time.time() + HOUR + 2

    async def main() -> None:
        async with started(a, b):
            await a.revoke("before", before)
            assert await eventually(lambda: b.revocations.session_revoked("before", "", time.time()))

            redis_server.stop()
            assert await eventually(lambda: not a.healthy and not b.healthy)
            await a.revoke("during-a", during_a)
            await b.revoke("during-b", during_b)
            bulk = [f"bulk{i}" for i in range(1200)]  # more than one write-back batch
            for key in bulk:
                await a.revoke(key, during_a)
            assert a.revocations.session_revoked("during-a", "", time.time())
            assert a.revocations.session_revoked("before", "", time.time())  # kept through the outage
            with pytest.raises(StoreUnavailable):
                await a.claim_once("code", time.time() + HOUR)
            await asyncio.sleep(1.5)  # several failed reconnects: still one warning each

            redis_server.start()  # empty, same port
            assert await eventually(lambda: b.revocations.session_revoked("during-a", "", time.time()))
            assert await eventually(lambda: a.revocations.session_revoked("during-b", "", time.time()))
            assert await eventually(
                lambda: all(b.revocations.session_revoked(k, "", time.time()) for k in bulk)
            )
            assert await eventually(lambda: a.healthy and b.healthy)
            async with raw_client(redis_server.url) as raw:
                assert await eventually_async(lambda: has(raw, "before", before))
                assert await raw.zscore("edge:revoked", "during-a") == during_a
            assert await a.claim_once("code", time.time() + HOUR)

    run_uvloop(main())
    for name in ("edge.store.a", "edge.store.b"):
        (warning,) = records(caplog, name, logging.WARNING)
        assert warning.startswith(f"redis at {redis_server.url} unreachable: keeping ")
        assert "retrying every 1 s" in warning
        (info,) = records(caplog, name, logging.INFO)
        assert "reachable again" in info


async def has(raw: redis.asyncio.Redis, key: str, until: float) -> bool:
    return await raw.zscore("edge:revoked", key) == until


def test_unreachable_at_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.store")
    nowhere = RedisStore(f"redis://127.0.0.1:{free_port()}/0", retry=0.1)

    async def main() -> None:
        async with started(nowhere):
            assert not nowhere.healthy
            await nowhere.revoke("s1", time.time() + HOUR)
            assert nowhere.revocations.session_revoked("s1", "", time.time())
            with pytest.raises(StoreUnavailable):
                await nowhere.claim_once("code", time.time() + HOUR)
            # Counting goes on in this worker alone.
            assert [await nowhere.add("ip", HOUR) for _ in range(2)] == [1, 2]
            assert await nowhere.count("ip", HOUR) == 2
            await asyncio.sleep(0.5)

    run_uvloop(main())
    (warning,) = records(caplog, "edge.store", logging.WARNING)
    assert "unreachable: keeping 0 known revocations, retrying every 0.1 s" in warning


def test_hung_redis_does_not_hold_the_caller(redis_server: RedisServer) -> None:  # noqa: F811
    a, b = store(redis_server), store(redis_server)

    async def main() -> None:
        async with started(a, b):
            redis_server.pause()
            try:
                await asyncio.wait_for(a.revoke("s1", time.time() + HOUR), CONVERGE)
                assert a.revocations.session_revoked("s1", "", time.time())
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(a.claim_once("code", time.time() + HOUR), CONVERGE)
            finally:
                redis_server.resume()
            # The failed write is retried once Redis answers again.
            assert await eventually(lambda: b.revocations.session_revoked("s1", "", time.time()))

    run_uvloop(main())


def test_close_without_start_and_twice(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        idle = store(redis_server)
        await idle.close()
        used = store(redis_server)
        await used.start()
        await used.close()
        await used.close()

    run_uvloop(main())


def test_malformed_url_fails_at_construction() -> None:
    with pytest.raises(ValueError):
        RedisStore("http://127.0.0.1:1/0")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:secret@host:6379/1", "redis://:***@host:6379/1"),
        ("rediss://user:secret@host/0", "rediss://user:***@host/0"),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown
