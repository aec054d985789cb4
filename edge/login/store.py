"""Where revocations and one-time claims live: in this process, or shared through Redis.

One Store per worker process. The request path reads `store.revocations`
synchronously (a dict lookup, never Redis); only the login endpoints await the
store (`revoke`, `claim_once`, `count`, `add`), and every Redis call they make is bounded by
REDIS_TIMEOUT.

Invariants (RedisStore):
- Local first: `revoke` adds to the local view before anything else, so this
  worker enforces a logout at once whatever Redis is doing.
- Redis holds the union. The sorted set `{prefix}revoked` (score = until)
  and the hash `{prefix}revoked-cutoff` (key -> the latest iat it covers;
  no field: every iat, as the entries of older edges, which knew no hash)
  are what a (re)connecting worker loads; the channel `{prefix}revocations`
  carries each new or widened entry ("<until>,<cutoff> <key>", or
  "<until> <key>" without a cutoff) to the workers already connected. An
  entry is added to the set before it is published, and a worker subscribes
  before it loads the set, so no entry falls in between. The scripts below
  change and read the set and the hash together: a member's cutoff is the
  latest any worker gave it, removed with the member when it expires.
- After every (re)connect a worker writes back every unexpired revocation it
  knows and publishes those Redis did not have (ZADD GT CH, then PUBLISH, in
  one script so that neither happens without the other): a Redis that
  restarted empty learns them again, and revocations made while this worker
  could not reach Redis reach the others. While it is not connected (`healthy`
  is false) `revoke` stays local: the write-back at the next connect covers it.
- The clients never retry on their own: a failure surfaces at once and only the
  background task reconnects, with a backoff capped at `retry` seconds.
- Single use (`claim_once`) is decided by Redis alone (SET NX PXAT); when Redis
  cannot answer, the claim fails with StoreUnavailable rather than fall back to
  a local guess the other instances would not share. A Redis without
  persistence forgets its claims when it restarts.
- Counters (failed sign-ins per address) are kept locally and in Redis
  (`{prefix}count:<key>`, SET NX PX then INCR: the window starts with the
  first event); a worker reports the larger of the two, so an outage only
  falls back to per-worker limits.
- `until` is wall-clock time (time.time()) on every host: clocks must agree.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import random
import time
import urllib.parse
from collections.abc import Callable
from typing import cast

import redis.asyncio
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from edge.access.revocation import Counters, OnceClaims, Revocations, parse_message

logger = logging.getLogger("edge.store")

REDIS_TIMEOUT = 1.0  # seconds for a connect or a reply: a hung Redis holds a login at most this long
LISTEN_TICK = 0.5  # seconds a pubsub read waits before the loop looks at its other duties
# Seconds between trims of expired members. The trim doubles as the liveness
# check for a Redis that stops answering without closing the connection.
MAINTAIN_EVERY = 5.0
FIRST_RETRY = 0.05  # seconds; the reconnect backoff doubles from here up to `retry`
# Seconds start() waits for the first connect, so that a new worker begins with
# the shared revocations; an unreachable Redis fails faster than this.
START_WAIT = 2 * REDIS_TIMEOUT
PUSH_BATCH = 500  # revocations per script call when writing them back

# Add revocations to the set and the hash, and publish the ones that are new,
# held longer or for later tokens, in one atomic step: were the two separate,
# a write that reached the set but not the channel (a connection lost in
# between) would look old to every later write-back, and the workers that
# stayed connected would never hear of it. What is published is the entry as
# merged here, in the format edge.access.revocation.parse_message reads
# ("<until>,<cutoff> <key>", or "<until> <key>" for no cutoff).
# KEYS[1]: the set; KEYS[2]: the hash of cutoffs; ARGV[1]: the channel;
# ARGV[2]: now; then (until, key, cutoff) triples, cutoff "" for none (any iat).
SHARE_SCRIPT = """
local fresh = 0
local now = tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
    local expiry, key, cutoff = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local score = redis.call('ZSCORE', KEYS[1], key)
    local held = score and tonumber(score) > now
    local field = redis.call('HGET', KEYS[2], key)
    local changed = redis.call('ZADD', KEYS[1], 'GT', 'CH', expiry, key)
    if not held then
        -- a new entry (or one past its until, not trimmed yet): this cutoff is its
        if cutoff == '' then
            redis.call('HDEL', KEYS[2], key)
        else
            redis.call('HSET', KEYS[2], key, cutoff)
        end
        changed = 1
    elseif field then
        -- held with a cutoff: keep the later one ('' is later than any)
        if cutoff == '' then
            redis.call('HDEL', KEYS[2], key)
            changed = 1
        elseif tonumber(cutoff) > tonumber(field) then
            redis.call('HSET', KEYS[2], key, cutoff)
            changed = 1
        end
    end
    -- (held without a field: it covers every iat already)
    if changed == 1 then
        local message = redis.call('ZSCORE', KEYS[1], key)
        local merged = redis.call('HGET', KEYS[2], key)
        if merged then
            message = message .. ',' .. merged
        end
        redis.call('PUBLISH', ARGV[1], message .. ' ' .. key)
        fresh = fresh + 1
    end
end
return fresh
"""

# The unexpired entries, each as key, until, cutoff ("" for none).
# KEYS[1]: the set; KEYS[2]: the hash; ARGV[1]: the lowest until, exclusive ("(<now>").
LOAD_SCRIPT = """
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
    out[#out + 1] = found[i]
    out[#out + 1] = found[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[2], found[i]) or ''
end
return out
"""

# Remove the expired entries from the set and the hash; then look at the next
# few fields of the hash (HSCAN from the cursor the last trim returned) and
# drop those without a member: the trim of an older edge removes members only.
# KEYS[1]: the set; KEYS[2]: the hash; ARGV[1]: now; ARGV[2]: the cursor.
# Returns the next cursor.
TRIM_SCRIPT = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #gone, 500 do
    redis.call('HDEL', KEYS[2], unpack(gone, i, math.min(i + 499, #gone)))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local scan = redis.call('HSCAN', KEYS[2], ARGV[2], 'COUNT', 200)
local fields = scan[2]
for i = 1, #fields, 2 do
    if not redis.call('ZSCORE', KEYS[1], fields[i]) then
        redis.call('HDEL', KEYS[2], fields[i])
    end
end
return scan[1]
"""

REDIS_ERRORS = (RedisError, OSError)


class StoreUnavailable(Exception):
    """The store cannot give the guarantee asked for (Redis is unreachable)."""


class Store(abc.ABC):
    """Revocations and one-time claims for one worker process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.revocations = Revocations()
        self._clock = clock
        self._counters = Counters()

    async def count(self, key: str, window: float) -> int:
        """Events of `key` in its current window (failed sign-ins from one
        address), as every worker sees them when possible; never raises."""
        return self._counters.get(key, self._clock())

    async def add(self, key: str, window: float) -> int:
        """One more event of `key`; the count after it. Never raises."""
        return self._counters.add(key, self._clock(), window)

    async def start(self) -> None:  # noqa: B027 - a store without background work needs nothing
        """Begin background work in the running loop; never raises for Redis trouble."""

    async def close(self) -> None:  # noqa: B027 - as start()
        """Stop background work and close connections."""

    @abc.abstractmethod
    async def revoke(self, key: str, until: float, cutoff: float = math.inf) -> None:
        """Revoke the tokens of `key` issued up to `cutoff` (math.inf: any iat)
        until `until` (edge.access.revocation): here at once, elsewhere when
        possible; never raises."""

    @abc.abstractmethod
    async def claim_once(self, key: str, until: float) -> bool:
        """True for the first claim of `key` anywhere; StoreUnavailable if that cannot be guaranteed."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether revocations are being shared as designed."""

    def _revoke_locally(self, key: str, until: float, cutoff: float = math.inf) -> bool:
        self.revocations.sweep(self._clock())
        return self.revocations.revoke(key, until, cutoff)


class MemoryStore(Store):
    """Everything in this process: for a single worker."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._claims = OnceClaims()

    async def revoke(self, key: str, until: float, cutoff: float = math.inf) -> None:
        self._revoke_locally(key, until, cutoff)

    async def claim_once(self, key: str, until: float) -> bool:
        return self._claims.claim(key, until, self._clock())

    @property
    def healthy(self) -> bool:
        return True


class RedisStore(Store):
    """Revocations and claims shared by every worker and instance through one Redis."""

    def __init__(
        self,
        url: str,
        prefix: str = "edge:",
        log: logging.Logger | None = None,
        retry: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self._where = redact(url)
        self._zset, self._channel, self._once = f"{prefix}revoked", f"{prefix}revocations", f"{prefix}once:"
        self._cutoffs = f"{prefix}revoked-cutoff"
        self._cursor = "0"  # where the next trim goes on looking for cutoffs without an entry
        self._count = f"{prefix}count:"
        self._log = log or logger
        self._retry = retry
        # Raises ValueError for a malformed URL here, before any connection.
        self._client = redis.asyncio.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._share = self._client.register_script(SHARE_SCRIPT)
        self._load = self._client.register_script(LOAD_SCRIPT)
        self._trim_expired = self._client.register_script(TRIM_SCRIPT)
        self._task: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()  # set once the first connect succeeded or failed
        self._sharing = False  # connected: revoke() writes to Redis itself
        self._healthy = False  # connected and synced
        self._dirty = False  # a write failed while connected: write everything back
        self._warned = False  # the "unreachable" warning is out and no recovery logged yet

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="edge.store.redis")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), START_WAIT)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._sharing = self._healthy = False
        await self._client.aclose()

    async def revoke(self, key: str, until: float, cutoff: float = math.inf) -> None:
        if not self._revoke_locally(key, until, cutoff) or not self._sharing:
            return
        try:
            await self._push([(key, until, cutoff)])
        except REDIS_ERRORS as exc:
            self._dirty = True
            self._log.debug("revocation not shared yet (redis at %s: %s)", self._where, exc)

    async def claim_once(self, key: str, until: float) -> bool:
        if until <= self._clock():
            return False
        try:
            claimed = await self._client.set(self._once + key, "1", nx=True, pxat=math.ceil(until * 1000))
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis at {self._where} unreachable: single use not guaranteed") from exc
        return bool(claimed)

    async def count(self, key: str, window: float) -> int:
        local = await super().count(key, window)
        try:
            shared = await self._client.get(self._count + key)
        except REDIS_ERRORS:
            return local  # Redis down: this worker's own count still limits
        return max(local, int(shared or 0))

    async def add(self, key: str, window: float) -> int:
        local = await super().add(key, window)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                # The window starts with the first event (SET NX keeps its expiry).
                pipe.set(self._count + key, 0, nx=True, px=max(1, math.ceil(window * 1000)))
                pipe.incr(self._count + key)
                shared = (await pipe.execute())[1]
        except REDIS_ERRORS:
            return local
        return max(local, int(shared))

    async def _run(self) -> None:
        """Connect, sync and listen; after a failure, retry with a capped backoff. Runs until cancelled."""
        delay = FIRST_RETRY
        while True:
            began = time.monotonic()
            if await self._attempt() and time.monotonic() - began >= self._retry:
                delay = FIRST_RETRY  # it was up a while: a new outage, so retry quickly at first
            # Jitter, so that the workers of every instance do not reconnect in lockstep.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(2 * delay, self._retry)

    async def _attempt(self) -> bool:
        """One connection's life; returns whether it got as far as syncing."""
        try:
            await self._session()
        except REDIS_ERRORS as exc:
            return self._lost(exc)
        except Exception as exc:
            self._log.exception("revocation sharing through redis at %s failed", self._where)
            return self._lost(exc)
        finally:
            self._attempted.set()
        return False  # unreachable: a session only ends by an exception

    async def _session(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            await self._sync()
            await self._listen(pubsub)
        finally:
            await pubsub.aclose()

    async def _sync(self) -> None:
        """Write back what this worker knows, then load what the others know."""
        now = self._clock()
        # From here on revoke() writes through; everything revoked before is in this snapshot.
        self._sharing, self._dirty = True, False
        await self._push(self.revocations.items(now))
        known = cast("list[str]", await self._load(keys=[self._zset, self._cutoffs], args=[f"({now!r}"]))
        for i in range(0, len(known), 3):
            key, until, cutoff = known[i], float(known[i + 1]), known[i + 2]
            self._revoke_locally(key, until, float(cutoff) if cutoff else math.inf)
        self._healthy = True
        self._attempted.set()
        if self._warned:
            self._warned = False
            self._log.info("redis at %s reachable again: %d revocations known", self._where, self._known())
        else:
            self._log.debug("sharing revocations through redis at %s", self._where)

    async def _listen(self, pubsub: PubSub) -> None:
        next_trim = time.monotonic() + MAINTAIN_EVERY
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_TICK)
            if message is not None:
                self._apply(message["data"])
            if self._dirty:
                self._dirty = False
                await self._push(self.revocations.items(self._clock()))
            if time.monotonic() >= next_trim:
                await self._trim()
                next_trim = time.monotonic() + MAINTAIN_EVERY

    def _apply(self, data: str) -> None:
        parsed = parse_message(data)
        if parsed is None:
            self._log.debug("ignoring a malformed revocation message %r", data)
        else:
            self._revoke_locally(*parsed)

    async def _push(self, items: list[tuple[str, float, float]]) -> None:
        """Add `items` (key, until, cutoff) to the shared set and hash, and
        publish those it did not have (or had shorter, or for fewer tokens)."""
        for start in range(0, len(items), PUSH_BATCH):
            args: list[str | float] = [self._channel, self._clock()]
            for key, until, cutoff in items[start : start + PUSH_BATCH]:
                args += [until, key, "" if math.isinf(cutoff) else cutoff]
            await self._share(keys=[self._zset, self._cutoffs], args=args)

    async def _trim(self) -> None:
        now = self._clock()
        self.revocations.sweep(now)
        cursor = await self._trim_expired(keys=[self._zset, self._cutoffs], args=[now, self._cursor])
        self._cursor = str(cursor)

    def _lost(self, exc: Exception) -> bool:
        """Note a lost (or failed) connection; returns whether it had synced."""
        was_healthy = self._healthy
        self._sharing = self._healthy = False
        if not self._warned:
            self._warned = True
            self._log.warning(
                "redis at %s unreachable: keeping %d known revocations, retrying every %g s (%s)",
                self._where,
                self._known(),
                self._retry,
                exc,
            )
        else:
            self._log.debug("redis at %s still unreachable (%s)", self._where, exc)
        return was_healthy

    def _known(self) -> int:
        self.revocations.sweep(self._clock())
        return len(self.revocations)


def redact(url: str) -> str:
    """`url` without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
