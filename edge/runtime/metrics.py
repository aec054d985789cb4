"""Prometheus metrics: what a worker counts, the text format, and the sum
over workers.

Invariants:
- The request path only appends five values (app, kind, status, seconds,
  upstream time) to `pending`: no lookup, no lock (one worker is one
  thread), and the list's tail is the only memory it touches. `flush` (the
  sweep's, at least every SWEEP_MAX_INTERVAL, and every scrape's) counts
  them into preallocated slots: one per (app, decision kind), made when a
  configuration naming the app is installed; a histogram bucket is a
  bisect on a small tuple. So `pending` holds at most one sweep interval
  of requests, and a scrape sees every request answered before it.
- Counters only grow: the slots of an app a reload removed are kept (app
  names come from configuration files, so their number stays bounded), and
  the token counts of a replaced verifier are carried into the next.
- Every label value is from a bounded set: app names and issuers from the
  configuration, kinds and results from fixed tuples here. Nothing a client
  sends becomes a label.
- A scrape reads the worker's state as `Family` values (`WorkerMetrics.
  families`). With several workers each sends its families to the
  supervisor (`encode`/`decode`), which merges them (`merge`): counters,
  histograms and additive gauges are summed; what describes one process
  (its configuration, its start time) keeps one sample per worker, under a
  `worker` label.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

import edge
from edge.access.actions import Deny, Endpoint, Forward, NotFound, Preflight, Redirect, Reject, Unauthorized
from edge.access.compile import Compiled
from edge.access.tokens import Verifier
from edge.config.schema import KIB, Config
from edge.http.connection import LogEntry
from edge.http.faults import FaultLog
from edge.login.store import MemoryStore, Store
from edge.proxy.upstream import UpstreamKind

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# Decision kinds, numbered for LogEntry.kind (0: no decision, the HTTP layer
# refused the request: malformed, too large, timed out).
KINDS = (
    "error",
    "forward",
    "bypass",
    "preflight",
    "redirect",
    "unauthorized",
    "deny",
    "not_found",
    "reject",
    "endpoint",
)
K_FORWARD, K_BYPASS, K_ENDPOINT = KINDS.index("forward"), KINDS.index("bypass"), KINDS.index("endpoint")
KIND_OF: dict[type, int] = {
    Forward: K_FORWARD,
    Preflight: KINDS.index("preflight"),
    Redirect: KINDS.index("redirect"),
    Unauthorized: KINDS.index("unauthorized"),
    Deny: KINDS.index("deny"),
    NotFound: KINDS.index("not_found"),
    Reject: KINDS.index("reject"),
    Endpoint: K_ENDPOINT,
}
# Status classes by status // 100; a status is three digits (h11), so ten slots.
STATUS_CLASSES = 10
# Request durations, seconds: from a cached preflight (well under a
# millisecond) to a slow upload; beyond a minute only the +Inf bucket.
# fmt: off
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# fmt: on
# Upstream response-head times, seconds: the same scale (a part of a
# request's duration), so the two histograms compare bucket by bucket.
UPSTREAM_BUCKETS = DURATION_BUCKETS
# The proxy's failure kinds (UpstreamKind, its owner) as metric labels: one
# entry for each (tests/runtime/test_metrics.py holds the two lists equal),
# else a kind would count as "other".
UPSTREAM_FAILURES: dict[UpstreamKind, str] = {
    "connect refused": "connect_refused",
    "connect timeout": "connect_timeout",
    "connect failed": "connect_error",
    "tls": "tls",
    "timeout": "response_timeout",
    "reset": "reset",
    "closed": "closed",
    "connection error": "reset",
    "invalid response": "bad_response",
    "internal error": "internal",
}
FAILURE_KINDS = tuple(dict.fromkeys(UPSTREAM_FAILURES.values()))
# The same, looked up by the fault log's kinds (plain strings: edge.http's
# FaultLog sits below edge.proxy and cannot name UpstreamKind).
_FAILURE_LABEL: dict[str, str] = {kind: label for kind, label in UPSTREAM_FAILURES.items()}
NO_APP = ""  # the app label of a request no application covers (Prometheus: absent)
JWKS_RESULTS = ("ok", "error")

# How a family's samples from several workers combine.
SUM = "sum"
PER_WORKER = "worker"
SAME = "same"  # equal in every worker (build info): one of them

Labels = tuple[tuple[str, str], ...]


class Sample(msgspec.Struct, array_like=True, frozen=True):
    suffix: str  # "" or _bucket, _sum, _count
    labels: Labels
    value: float


class Family(msgspec.Struct, array_like=True, frozen=True):
    name: str
    type: str  # counter, gauge, histogram
    help: str
    merge: str
    samples: tuple[Sample, ...]


# -- what one worker counts ---------------------------------------------------------


class Histogram:
    """Bucket counts (not cumulative: the rendering adds them up) and a sum."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def samples(self, labels: Labels) -> Iterable[Sample]:
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.buckets, strict=True):
            total += count
            yield Sample("_bucket", (*labels, ("le", _number(bound))), total)
        yield Sample("_sum", labels, self.sum)
        yield Sample("_count", labels, total)


# The requests of one (app, decision kind) are one flat list: the count per
# status class (status // 100), then the duration histogram's buckets (not
# cumulative), then the sum of the durations. Bisecting PADDED_BUCKETS gives
# the bucket's index in the list at once: its leading -inf entries stand for
# the status classes, and every duration (a negative one after a clock step
# included) sorts after them.
BUCKET0 = STATUS_CLASSES
SUM_AT = BUCKET0 + len(DURATION_BUCKETS) + 1
PADDED_BUCKETS = (-math.inf,) * BUCKET0 + DURATION_BUCKETS
RequestSlot = list[float]


def _slots() -> list[RequestSlot]:
    return [[0] * SUM_AT + [0.0] for _ in KINDS]


def _duration(slot: RequestSlot) -> Histogram:
    histogram = Histogram(DURATION_BUCKETS)
    histogram.buckets = [int(n) for n in slot[BUCKET0:SUM_AT]]
    histogram.sum = slot[SUM_AT]
    return histogram


class WorkerMetrics:
    """The counters of one worker process (see the module invariants)."""

    def __init__(self, started: float) -> None:
        self.started = started  # epoch seconds
        self.no_app = _slots()
        # Requests recorded, not yet counted: five values each (app, kind,
        # status, seconds, upstream_ms; appended by `count`). The
        # request path only appends (a list's tail stays in cache, where
        # the counters, touched per request, cost misses: measured, that
        # was 4-7 % of a preflight's CPU under load); the sweep counts them
        # in one loop. At most one sweep interval of requests.
        self.pending: list[Any] = []
        self.apps: dict[str | None, list[RequestSlot]] = {None: self.no_app}
        self.upstream: dict[str | None, Histogram] = {}
        self.reloads = {"ok": 0, "refused": 0}
        self.generation = 0
        self.config_hash = ""
        self.jwks_fetches: dict[tuple[str, str], int] = {}
        # Token counts of the verifiers replaced by reloads.
        self.tokens_before = {"hits": 0, "misses": 0, "verified": 0, "refused": 0}

    def install(self, config: Config) -> None:
        """A configuration is in force: slots for its apps, its generation and hash."""
        for app in config.apps:
            if app.name not in self.apps:
                self.apps[app.name] = _slots()
                self.upstream[app.name] = Histogram(UPSTREAM_BUCKETS)
        self.generation += 1
        self.config_hash = config_hash(config)

    def retire(self, verifier: Verifier) -> None:
        """A reload replaces `verifier`: keep its counts."""
        before = self.tokens_before
        for name in before:
            before[name] += getattr(verifier, name)

    def count(self, client: str, entry: LogEntry, clock: Callable[[], float] = time.time) -> None:
        """One request answered (or given up on), now by `clock` (epoch
        seconds). The hot path: five values appended to `pending`, counted
        by `flush`. The signature is a worker's log call: a worker writing
        no access log calls this instead of its `access` (ServerState.log),
        one call per request, not two."""
        seconds = clock() - entry.request.started
        self.pending += (entry.app, entry.kind, entry.status, seconds, entry.upstream_ms)

    def flush(
        self,
        _bisect: Callable[[tuple[float, ...], float], int] = bisect_left,
        _bounds: tuple[float, ...] = PADDED_BUCKETS,
    ) -> None:
        """Count the requests recorded since the last flush (the sweep's, at
        least every SWEEP_MAX_INTERVAL; and a scrape's). The defaults bind
        the bisect and the bounds as locals."""
        pending = self.pending
        if not pending:
            return
        apps, no_app, upstream = self.apps, self.no_app, self.upstream
        fields = iter(pending)
        for app, kind, status, seconds, upstream_ms in zip(
            fields, fields, fields, fields, fields, strict=True
        ):
            # An app the configuration no longer names goes with no app.
            slot = (apps.get(app) or no_app)[kind]
            slot[status // 100] += 1
            slot[_bisect(_bounds, seconds)] += 1
            slot[-1] += seconds
            if upstream_ms is not None:
                histogram = upstream.get(app)
                if histogram is not None:
                    histogram.observe(upstream_ms / 1000)
        pending.clear()

    def jwks_fetched(self, iss: str, ok: bool) -> None:
        key = (iss, JWKS_RESULTS[0] if ok else JWKS_RESULTS[1])
        self.jwks_fetches[key] = self.jwks_fetches.get(key, 0) + 1

    # -- a scrape --------------------------------------------------------------

    def families(
        self,
        compiled: Compiled,
        store: Store,
        faults: FaultLog,
        connections: int,
        tunnels: int,
        now: float,
    ) -> list[Family]:
        """Everything this worker knows now (`now`: epoch seconds)."""
        self.flush()
        return [
            *self._requests(),
            *self._upstream(faults),
            Family(
                "edge_open_connections",
                "gauge",
                "Client connections open.",
                SUM,
                (Sample("", (), connections),),
            ),
            Family(
                "edge_open_tunnels",
                "gauge",
                "Upgraded connections (WebSocket) open.",
                SUM,
                (Sample("", (), tunnels),),
            ),
            *self._tokens(compiled.verifier),
            *self._keys(compiled, now),
            *self._store(store),
            *self._config(),
        ]

    def _requests(self) -> Iterable[Family]:
        counts: list[Sample] = []
        durations: list[Sample] = []
        for app, slots in self.apps.items():
            name = NO_APP if app is None else app
            for kind, slot in zip(KINDS, slots, strict=True):
                if not any(slot[:BUCKET0]):
                    continue
                labels = (("app", name), ("kind", kind))
                for klass, count in enumerate(slot[:BUCKET0]):
                    if count:
                        counts.append(Sample("", (*labels, ("status", f"{klass}xx")), count))
                durations.extend(_duration(slot).samples(labels))
        yield Family(
            "edge_requests_total",
            "counter",
            "Requests answered, by application, decision kind and status class.",
            SUM,
            tuple(counts),
        )
        yield Family(
            "edge_request_duration_seconds",
            "histogram",
            "From the complete request head to the end of the answer, by application and decision kind.",
            SUM,
            tuple(durations),
        )

    def _upstream(self, faults: FaultLog) -> Iterable[Family]:
        heads: list[Sample] = []
        for app, histogram in self.upstream.items():
            if any(histogram.buckets):
                heads.extend(histogram.samples((("app", app or NO_APP),)))
        yield Family(
            "edge_upstream_response_head_seconds",
            "histogram",
            "From the request sent upstream to the upstream's response head, by application.",
            SUM,
            tuple(heads),
        )
        failures = dict.fromkeys(FAILURE_KINDS, 0)
        for kind, count in faults.upstream_totals.items():
            label = _FAILURE_LABEL.get(kind, "other")
            failures[label] = failures.get(label, 0) + count
        yield Family(
            "edge_upstream_failures_total",
            "counter",
            "Requests the upstream failed, by kind.",
            SUM,
            tuple(Sample("", (("kind", kind),), count) for kind, count in failures.items()),
        )
        yield Family(
            "edge_connections_shed_total",
            "counter",
            "Connections refused at max_connections (a 503 and a close; no request is read).",
            SUM,
            (Sample("", (), faults.shed_total),),
        )

    def _tokens(self, verifier: Verifier) -> Iterable[Family]:
        before = self.tokens_before
        hits = before["hits"] + verifier.hits
        verified = before["verified"] + verifier.verified
        yield Family(
            "edge_token_verifications_total",
            "counter",
            "User tokens checked, by result (a cache hit is a valid one).",
            SUM,
            (
                Sample("", (("result", "valid"),), hits + verified),
                Sample("", (("result", "invalid"),), before["refused"] + verifier.refused),
            ),
        )
        yield Family(
            "edge_token_cache_hits_total",
            "counter",
            "Token checks answered by the verified-token cache.",
            SUM,
            (Sample("", (), hits),),
        )
        yield Family(
            "edge_token_cache_misses_total",
            "counter",
            "Token checks the verified-token cache could not answer.",
            SUM,
            (Sample("", (), before["misses"] + verifier.misses),),
        )

    def _keys(self, compiled: Compiled, now: float) -> Iterable[Family]:
        yield Family(
            "edge_jwks_fetches_total",
            "counter",
            "JWKS fetches from an issuer's jwks_url, by result.",
            SUM,
            tuple(
                Sample("", (("issuer", iss), ("result", result)), count)
                for (iss, result), count in sorted(self.jwks_fetches.items())
            ),
        )
        held: list[Sample] = []
        for iss, issuer in compiled.verifier.issuers.items():
            if issuer.keys is not None:
                held.append(Sample("", (("issuer", iss),), len(issuer.keys.keys)))
        yield Family("edge_jwks_keys", "gauge", "Signature keys held, by issuer.", PER_WORKER, tuple(held))
        ages: list[Sample] = []
        for remote in compiled.remote_keys:
            last = remote.keys.last_success
            if math.isfinite(last):
                ages.append(Sample("", (("issuer", remote.iss),), max(0.0, now - last)))
        yield Family(
            "edge_jwks_last_fetch_age_seconds",
            "gauge",
            "Seconds since the last good JWKS fetch, by issuer (absent until one succeeds).",
            PER_WORKER,
            tuple(ages),
        )

    def _store(self, store: Store) -> Iterable[Family]:
        state = (
            "memory" if isinstance(store, MemoryStore) else ("redis_up" if store.healthy else "redis_down")
        )
        yield Family(
            "edge_revocation_store_state",
            "gauge",
            "Where revocations live: 1 for the store's state (memory, redis_up, redis_down).",
            PER_WORKER,
            tuple(
                Sample("", (("state", s),), 1 if s == state else 0)
                for s in ("memory", "redis_up", "redis_down")
            ),
        )
        yield Family(
            "edge_revocations",
            "gauge",
            "Revoked sessions this worker knows of (not yet expired).",
            PER_WORKER,
            (Sample("", (), len(store.revocations)),),
        )

    def _config(self) -> Iterable[Family]:
        yield reloads_family(self.reloads)
        yield Family(
            "edge_config_generation",
            "gauge",
            "Configurations installed since the worker started (1: the first).",
            PER_WORKER,
            (Sample("", (), self.generation),),
        )
        yield Family(
            "edge_config_info",
            "gauge",
            "The configuration in force: 1, with its hash (the first 16 hex digits of its SHA-256).",
            PER_WORKER,
            (Sample("", (("hash", self.config_hash),), 1),),
        )
        yield Family(
            "edge_process_start_time_seconds",
            "gauge",
            "When the worker process started, epoch seconds.",
            PER_WORKER,
            (Sample("", (), self.started),),
        )
        yield build_info()


def reloads_family(reloads: dict[str, int]) -> Family:
    return Family(
        "edge_config_reloads_total",
        "counter",
        "Configuration reloads, by result.",
        SUM,
        tuple(Sample("", (("result", r),), n) for r, n in reloads.items()),
    )


def build_info() -> Family:
    return Family(
        "edge_build_info",
        "gauge",
        "The edge's version and Python's: always 1.",
        SAME,
        (Sample("", (("version", edge.__version__), ("python", platform.python_version())), 1),),
    )


def config_hash(config: Config) -> str:
    """The same for the same configuration in every worker (its canonical JSON)."""
    return hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:16]


# -- several workers ----------------------------------------------------------------


def encode(families: Sequence[Family]) -> bytes:
    return msgspec.msgpack.encode(families)


_DECODER = msgspec.msgpack.Decoder(list[Family])


def decode(data: bytes) -> list[Family]:
    """Raises msgspec.DecodeError on a garbled snapshot."""
    return _DECODER.decode(data)


def merge(per_worker: Sequence[tuple[int, Sequence[Family]]]) -> list[Family]:
    """One set of families from each worker's (slot, families), in the first's order."""
    order: list[str] = []
    heads: dict[str, Family] = {}
    values: dict[str, dict[tuple[str, Labels], float]] = {}
    for slot, families in per_worker:
        for family in families:
            if family.name not in heads:
                heads[family.name] = family
                order.append(family.name)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                labels = sample.labels
                if family.merge == PER_WORKER:
                    labels = (("worker", str(slot)), *labels)
                key = (sample.suffix, labels)
                if family.merge == SUM:
                    into[key] = into.get(key, 0) + sample.value
                else:
                    into.setdefault(key, sample.value)
    return [
        msgspec.structs.replace(
            heads[name], samples=tuple(Sample(s, labels, v) for (s, labels), v in values[name].items())
        )
        for name in order
    ]


def overlay(families: Sequence[Family], own: Sequence[Family]) -> list[Family]:
    """`families` with those of the same name replaced by `own` (the
    supervisor's word on what it alone decides), the others of `own` added."""
    mine = {f.name: f for f in own}
    out = [mine.pop(f.name, f) for f in families]
    return out + list(mine.values())


# -- the text format 0.0.4 -------------------------------------------------------------


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            if sample.labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
                lines.append(f"{family.name}{sample.suffix}{{{inner}}} {_number(sample.value)}")
            else:
                lines.append(f"{family.name}{sample.suffix} {_number(sample.value)}")
    lines.append("")
    return "\n".join(lines).encode()


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


# -- the HTTP side --------------------------------------------------------------------

METRICS_PATH = b"/metrics"
MAX_HEAD_BYTES = 8 * KIB  # a scraper's request head is a few hundred bytes
SCRAPE_TIMEOUT = 5.0  # seconds a scraper has to send its request head


def answer(head: bytes, body: bytes | None) -> bytes:
    """The whole HTTP/1.1 response to the request `head` (closing the
    connection): `body` is the rendered metrics, or None when they could
    not be gathered."""
    line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
        return _response(400, b"text/plain", b"bad request\n", head_only=False)
    method, target = line[0], line[1].split(b"?", 1)[0]
    head_only = method == b"HEAD"
    if target != METRICS_PATH:
        return _response(404, b"text/plain", b"not found: metrics are at /metrics\n", head_only)
    if method not in (b"GET", b"HEAD"):
        return _response(
            405, b"text/plain", b"method not allowed\n", head_only, extra=b"allow: GET, HEAD\r\n"
        )
    if body is None:
        return _response(503, b"text/plain", b"metrics unavailable\n", head_only)
    return _response(200, CONTENT_TYPE, body, head_only)


def wants_metrics(head: bytes) -> bool:
    """Whether gathering is worth it for this request head (a GET or HEAD of /metrics)."""
    line = head.split(b"\r\n", 1)[0].split(b" ")
    return len(line) == 3 and line[0] in (b"GET", b"HEAD") and line[1].split(b"?", 1)[0] == METRICS_PATH


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    503: b"Service Unavailable",
}


def _response(status: int, ctype: bytes, body: bytes, head_only: bool, extra: bytes = b"") -> bytes:
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\ncache-control: no-store\r\n"
        b"connection: close\r\n%s\r\n" % (status, _REASONS[status], ctype, len(body), extra)
    )
    return head if head_only else head + body
