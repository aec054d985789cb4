"""Micro benchmark: decide() cost versus the number of applications and origins.

For N in 10, 1 000 and 10 000: a configuration with N applications (exact
hosts, wildcards, path-scoped apps) where the application under test lists N
allowed origins. Two requests are timed:

- a GET carrying a token that is already in the verified-token cache;
- a CORS preflight from the last listed origin (a prebuilt response).

The requests are built once, before timing, as the connection builds them
before it calls decide (edge.access.request: headers indexed by name), so
the figure is the decision alone.

Sizes are measured round-robin within each repeat, so machine noise hits them
alike; the figure is the median over repeats. Matching is dict and trie
lookups, so the largest/smallest ratio should stay near 1 (target <= 1.3x).

A second table times the same cached-token GET against one application whose
policy is written in different ways: inline, through groups (one deep and
two deep), and with an email list and an IP list of 10 or 100 000 entries
(generated here). Groups are spliced into the policy and lists are a set
and a per-prefix-length table, so every row should cost about the same.

    python bench/micro_decide.py [--repeat 15] [--number 20000] [--only apps|policies]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

# The checkout this script belongs to, not whichever edge the interpreter has
# installed: the other benchmarks start `python -m edge` from it too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.access.actions import Forward, Preflight
from edge.access.compile import Compiled, compile_config
from edge.access.decide import decide
from edge.access.request import Request, build
from edge.config.schema import Config
from edge.login import keys as keylib

SIZES = (10, 1_000, 10_000)
ISS = "https://auth.example.com"
TARGET = "app-target"


def config_for(n: int, jwks_path: Path) -> Config:
    apps: list[dict[str, Any]] = []
    for i in range(n - 1):
        # A mix of shapes so the host table and the tries are both populated.
        domain = (f"app{i}.example.com", f"*.t{i}.example.com", f"shared.example.com/p{i}")[i % 3]
        apps.append(
            {
                "name": f"app-{i}",
                "domains": [domain],
                "upstream": "http://127.0.0.1:9000",
                "cors": {"allowed_origins": [f"https://web{i}.example.com"], "allowed_methods": ["GET"]},
                "policies": [
                    {"name": "staff", "action": "allow", "include": [{"email_domains": ["example.com"]}]}
                ],
            }
        )
    apps.append(
        {
            "name": TARGET,
            "domains": ["api.example.com/v1"],
            "upstream": "http://127.0.0.1:9000",
            "aud": "target-aud",
            "cors": {
                "allowed_origins": [f"https://o{i}.example.com" for i in range(n)],
                "allowed_methods": ["GET", "POST"],
                "allowed_headers": ["Content-Type"],
                "allow_credentials": True,
                "max_age": 600,
            },
            "policies": [
                {"name": "block", "action": "deny", "include": [{"emails": ["eve@example.com"]}]},
                {"name": "staff", "action": "allow", "include": [{"email_domains": ["example.com"]}]},
            ],
        }
    )
    raw = {
        "issuers": [{"iss": ISS, "jwks_file": str(jwks_path), "algorithms": ["ES256"]}],
        "apps": apps,
    }
    return msgspec.convert(raw, Config)


# -- policies: inline, through groups, with big lists ---------------------------

BIG_LIST = 100_000
SMALL_LIST = 10
INLINE = {
    "include": [{"email_domains": ["example.com"]}],
    "require": [{"ip_ranges": ["192.0.2.0/24"]}],
    "exclude": [{"emails": ["eve@example.com"]}],
}
GROUPS: list[dict[str, Any]] = [
    {"name": "staff", **INLINE},
    {"name": "staff-outer", "include": [{"group": ["staff"]}]},
]


def contractors(n: int) -> list[str]:
    return [f"contractor{i}@example.com" for i in range(n)]  # the GET's alice is not among them


def office(n: int) -> list[str]:
    """n distinct networks of mixed prefix lengths, both families: /24s from
    10.0.0.0 on, /32s from 172.16.0.0 on; 192.0.2.0/24 (the GET's client) last."""
    nets = [
        f"{10 + (i >> 16)}.{i >> 8 & 255}.{i & 255}.0/24"
        if i % 3
        else f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}/32"
        for i in range(n - 3)
    ]
    listed = [*nets, "2001:db8::/48", "2001:db8:1::7", "192.0.2.0/24"]
    assert len(set(listed)) == n, "every entry distinct: an n-entry list, not fewer"
    return listed


def policy_cases() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """name -> (the policy's rules, [[lists]])."""

    def lists(n: int) -> list[dict[str, Any]]:
        return [
            {"name": "contractors", "type": "email", "items": contractors(n)},
            {"name": "office", "type": "ip", "items": office(n)},
        ]

    with_lists = {
        "include": [{"email_domains": ["example.com"]}],
        "require": [{"ip_list": ["office"]}],
        "exclude": [{"email_list": ["contractors"]}],
    }
    return {
        "inline rules": (INLINE, []),
        "the same rules as one group": ({"include": [{"group": ["staff"]}]}, []),
        "a group of that group (two deep)": ({"include": [{"group": ["staff-outer"]}]}, []),
        f"email + ip list, {SMALL_LIST} entries each": (with_lists, lists(SMALL_LIST)),
        f"email + ip list, {BIG_LIST:,} entries each": (with_lists, lists(BIG_LIST)),
    }


def policy_config(rules: dict[str, Any], lists: list[dict[str, Any]], jwks_path: Path) -> Config:
    app = {
        "name": TARGET,
        "domains": ["api.example.com/v1"],
        "upstream": "http://127.0.0.1:9000",
        "aud": "target-aud",
        "policies": [{"name": "staff", "action": "allow", **rules}],
    }
    raw = {
        "issuers": [{"iss": ISS, "jwks_file": str(jwks_path), "algorithms": ["ES256"]}],
        "apps": [app],
        "groups": GROUPS,
        "lists": lists,
    }
    return msgspec.convert(raw, Config)


def requests(n: int, token: str) -> tuple[Request, Request]:
    headers = [
        (b"host", b"api.example.com"),
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
        (b"accept", b"application/json"),
        (b"accept-language", b"en-GB,en;q=0.5"),
        (b"origin", b"https://o0.example.com"),
        (b"sec-fetch-mode", b"cors"),
        (b"cookie", b"theme=dark; CF_Authorization=" + token.encode() + b"; _ga=GA1.2.3"),
    ]
    get = build(b"GET", b"api.example.com", b"/v1/things/42?expand=1", headers, "192.0.2.10", "https")
    preflight_headers = [
        (b"host", b"api.example.com"),
        (b"origin", f"https://o{n - 1}.example.com".encode()),
        (b"access-control-request-method", b"POST"),
        (b"access-control-request-headers", b"content-type"),
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
    ]
    preflight = build(b"OPTIONS", b"api.example.com", b"/v1/things/42", preflight_headers, "192.0.2.10")
    return get, preflight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--only", choices=("apps", "policies"), default=None)
    args = parser.parse_args(argv)

    key = keylib.generate("ES256")
    jwk = keylib.public_jwk(key)
    now = time.time()
    token = keylib.mint(key, jwk["kid"], ISS, "target-aud", "alice@example.com", ttl=86400)
    cases: dict[int, tuple[Callable[[], object], Callable[[], object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        jwks_path = Path(tmp) / "jwks.json"
        jwks_path.write_text(json.dumps({"keys": [jwk]}))
        if args.only != "apps":
            print(policies_table(jwks_path, token, now, args))
        if args.only == "policies":
            return 0
        for n in SIZES:
            started = time.perf_counter()
            compiled = compile_config(config_for(n, jwks_path))
            built = time.perf_counter() - started
            get, preflight = requests(n, token)
            check(compiled, get, preflight, now)
            cases[n] = (_bind(compiled, get, now), _bind(compiled, preflight, now))
            print(f"compiled {n} apps in {built:.2f} s", file=sys.stderr)

    samples: dict[tuple[int, int], list[float]] = {(n, k): [] for n in SIZES for k in (0, 1)}
    for _ in range(args.repeat):
        for n in SIZES:
            for k in (0, 1):
                seconds = timeit.timeit(cases[n][k], number=args.number)
                samples[(n, k)].append(seconds / args.number * 1e6)
    print(table(samples, args))
    return 0


def policies_table(jwks_path: Path, token: str, now: float, args: argparse.Namespace) -> str:
    timed: dict[str, Callable[[], object]] = {}
    for name, (rules, lists) in policy_cases().items():
        started = time.perf_counter()
        compiled = compile_config(policy_config(rules, lists, jwks_path))
        built = time.perf_counter() - started
        get, _ = requests(1, token)
        action = decide(compiled, get, now)
        assert isinstance(action, Forward) and action.reason == 'allow: policy "staff"', action
        timed[name] = _bind(compiled, get, now)
        print(f"compiled {name!r} in {built:.2f} s", file=sys.stderr)
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.repeat):
        for name, call in timed.items():
            samples[name].append(timeit.timeit(call, number=args.number) / args.number * 1e6)
    # The minimum beside the median: on a shared machine the fastest repeat is
    # the one least disturbed by others, and the rows differ by nanoseconds.
    median = {name: statistics.median(values) for name, values in samples.items()}
    least = {name: min(values) for name, values in samples.items()}
    base, base_min = median["inline rules"], least["inline rules"]
    lines = [
        f"decide() per call, one app, the policy written as below; {args.repeat} x {args.number} "
        f"calls (Python {sys.version.split()[0]})",
        "",
        "| policy | GET median (µs) | vs inline | GET min (µs) | vs inline |",
        "|:---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {median[name]:.2f} | {median[name] / base:.2f}x | {least[name]:.2f} | "
        f"{least[name] / base_min:.2f}x |"
        for name in median
    ]
    return "\n".join(lines) + "\n"


def _bind(compiled: Compiled, req: Request, now: float) -> Callable[[], object]:
    return lambda: decide(compiled, req, now)


def check(compiled: Compiled, get: Request, preflight: Request, now: float) -> None:
    """The timed requests must take the paths they claim to."""
    action = decide(compiled, get, now)
    assert isinstance(action, Forward) and action.app == TARGET, action
    answer = decide(compiled, preflight, now)
    assert isinstance(answer, Preflight) and answer.response.status == 200, answer
    again = decide(compiled, preflight, now)
    assert isinstance(again, Preflight) and again.response is answer.response  # prebuilt


def table(samples: dict[tuple[int, int], list[float]], args: argparse.Namespace) -> str:
    median = {key: statistics.median(values) for key, values in samples.items()}
    lines = [
        f"decide() per call, median of {args.repeat} x {args.number} calls (Python {sys.version.split()[0]})",
        "",
        "| apps = listed origins | cached-token GET (µs) | preflight (µs) |",
        "|---:|---:|---:|",
    ]
    for n in SIZES:
        lines.append(f"| {n:,} | {median[(n, 0)]:.2f} | {median[(n, 1)]:.2f} |")
    ratios = []
    for k in (0, 1):
        values = [median[(n, k)] for n in SIZES]
        ratios.append(max(values) / min(values))
    lines.append(f"| largest/smallest | {ratios[0]:.2f}x | {ratios[1]:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
