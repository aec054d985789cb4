"""decide() is a function of its inputs: compiling (which reads files) lives in
edge.access.compile; deciding draws no randomness, reads no clock and does
no I/O, so the same Compiled, request, `now` and binding give equal actions.
"""

from __future__ import annotations

import ast
import datetime
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from access_fixtures import NOW, compiled, cookie, mint, request

import edge.access
from edge.access.actions import Action, Redirect, Unauthorized
from edge.access.compile import Compiled, CompiledApp
from edge.access.decide import decide
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.session import BINDING_COOKIE
from edge.login.passwords import hash_password

ACCESS = Path(edge.access.__file__).parent
# Modules that would let a decision depend on something other than its inputs.
IMPURE = frozenset({"asyncio", "socket", "time", "random", "secrets", "os", "select", "selectors"})


def access_imports(module: str) -> set[str]:
    """The edge.access modules `module` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((ACCESS / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edge.access."):
            found.add(node.module.removeprefix("edge.access."))
    return found


def closure(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(access_imports(module))
    return seen


# The pure core: every module of edge.access that decide() can reach, and
# compile.py, which reads JWKS files (pathlib) but has no clock or
# randomness either. session.py serves the login service too, which draws
# random values: test_decide_draws_no_randomness_from_session limits decide
# to its pure helpers.
PURE_CORE = tuple(sorted((closure("decide") | closure("compile")) - {"session"}))

APPS = """
[[apps]]
name = "api"
domains = ["api.example.com"]
upstream = "http://127.0.0.1:9000"
aud = "api-aud"
[apps.cors]
allowed_origins = ["https://web.example.com"]
allowed_methods = ["GET", "POST"]
allow_credentials = true
[[apps.policies]]
name = "block"
action = "deny"
include = [{ emails = ["eve@example.com"] }]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]

[[apps]]
name = "docs"
domains = ["docs.example.com"]
upstream = "http://127.0.0.1:9002"
unauthenticated = "redirect"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]
"""


def team(tmp_path: Path) -> str:
    return (
        f'[team]\nhost = "login.example.com"\nurl = "https://login.example.com"\n'
        f'key_dir = "{tmp_path / "keys"}"\n'
        '[[team.providers]]\ntype = "dev"\n'
        f'users = [{{ email = "a@example.com", password = "{hash_password("pw", 4)}" }}]\n'
    )


WEB = "https://web.example.com"
# One request per kind of outcome: forwarded, denied (with and without an
# allowed Origin), unauthenticated (401 and 302), a preflight, an endpoint,
# the team host, not found, rejected.
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "https://api.example.com/v1", cookie(mint(aud=["api-aud"]))),
    ("GET", "https://api.example.com/v1", {**cookie(mint(aud=["api-aud"], email="eve@example.com"))}),
    (
        "GET",
        "https://api.example.com/v1",
        {"Origin": WEB, **cookie(mint(aud=["api-aud"], email="eve@example.com"))},
    ),
    ("GET", "https://api.example.com/v1", {"Accept": "application/json", "Origin": WEB}),
    ("GET", "https://api.example.com/v1", {"Sec-Fetch-Mode": "navigate"}),
    ("GET", "https://docs.example.com/", {}),
    ("GET", "https://docs.example.com/", cookie(b"not-a-token")),
    ("OPTIONS", "https://api.example.com/v1", {"Origin": WEB, "Access-Control-Request-Method": "POST"}),
    (
        "OPTIONS",
        "https://api.example.com/v1",
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    ),
    ("GET", "https://api.example.com/cdn-cgi/access/logout", {}),
    ("GET", "https://login.example.com/", {}),
    ("GET", "https://nowhere.example.com/", {}),
    ("GET", "https://api.example.com/a%2Fb", {}),
]


def snapshot(value: Any) -> Any:
    """An action as plain data: responses as the bytes they send, applications by name."""
    if isinstance(value, LocalResponse):
        return value.render(b"", False, False)
    if isinstance(value, CompiledApp):
        return value.name
    if isinstance(value, msgspec.Struct):
        return (type(value).__name__, {k: snapshot(v) for k, v in msgspec.structs.asdict(value).items()})
    if isinstance(value, (tuple, list)):
        return [snapshot(v) for v in value]
    return value


def decisions(c: Compiled, binding: str) -> list[Any]:
    out = []
    for method, url, headers in REQUESTS:
        action: Action = decide(c, request(method, url, headers), NOW, binding=binding)
        out.append(snapshot(action))
    return out


@pytest.mark.parametrize("with_team", [False, True], ids=["external-login", "team-binds-logins"])
def test_decide_is_deterministic(tmp_path: Path, with_team: bool) -> None:
    extra = team(tmp_path) if with_team else ""
    c = compiled(tmp_path, APPS, extra)
    assert c.binds_logins is with_team
    binding = "b" * 24
    first = decisions(c, binding)
    # Twice on the same Compiled (its caches now warm), and once on a fresh one.
    assert decisions(c, binding) == first
    assert decisions(compiled(tmp_path, APPS, extra), binding) == first


def test_the_login_binding_is_the_callers(tmp_path: Path) -> None:
    """The binding cookie and the login URL carry exactly the value passed in;
    the action names it so the caller can renew it."""
    c = compiled(tmp_path, APPS, team(tmp_path))
    for method, url, headers in [
        ("GET", "https://docs.example.com/", {}),
        ("GET", "https://api.example.com/v1", {"Accept": "application/json"}),
    ]:
        for binding in ("A" * 24, "B" * 24):
            action = decide(c, request(method, url, headers), NOW, binding=binding)
            assert isinstance(action, Redirect | Unauthorized)
            assert action.binding == binding
            sent = action.response.render(b"", False, False).decode()
            assert f"&b={binding}" in sent
            assert f"set-cookie: {BINDING_COOKIE}={binding};" in sent


def test_without_a_team_no_binding_is_used(tmp_path: Path) -> None:
    c = compiled(tmp_path, APPS)
    action = decide(c, request("GET", "https://docs.example.com/"), NOW, binding="C" * 24)
    assert isinstance(action, Redirect) and action.binding == ""
    assert b"C" * 24 not in action.response.render(b"", False, False)


def test_a_forwarded_request_uses_no_binding(tmp_path: Path) -> None:
    c = compiled(tmp_path, APPS, team(tmp_path))
    req: Request = request("GET", "https://api.example.com/v1", cookie(mint(aud=["api-aud"])))
    action = decide(c, req, NOW, binding="D" * 24)
    assert not isinstance(action, Redirect | Unauthorized)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (top-level name), anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", PURE_CORE)
def test_the_pure_core_imports_no_clock_randomness_or_io(module: str) -> None:
    assert imported_modules(ACCESS / f"{module}.py") & IMPURE == set()


def test_the_pure_core_is_what_decide_runs() -> None:
    """The list above follows decide's imports (a module added to the path
    is checked without anyone remembering to list it)."""
    assert {"decide", "tokens", "claims", "policy", "rules", "router", "cors", "request"} <= set(PURE_CORE)


_CLOCKS = frozenset({"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
                     "process_time", "localtime", "gmtime", "ctime", "strftime"})  # fmt: skip
_DATE_CLOCKS = frozenset({"now", "utcnow", "today"})


def clock_or_dice(function: Callable[..., Any]) -> str | None:
    """What `function` (a C function about to be called) reads, if it is a
    clock or a source of randomness."""
    name = getattr(function, "__name__", "")
    owner = getattr(function, "__self__", None)
    module = getattr(function, "__module__", None) or getattr(owner, "__name__", "")
    if module == "time" and name in _CLOCKS:
        return f"time.{name}"
    if name in _DATE_CLOCKS and isinstance(owner, type) and issubclass(owner, datetime.date):
        return f"{owner.__name__}.{name}"
    if name in {"urandom", "getrandom"}:
        return f"os.{name}"
    if isinstance(owner, random.Random):
        return f"random.{name}"
    return None


def test_decide_calls_no_clock_and_draws_no_randomness(tmp_path: Path) -> None:
    """Not only imports: run decide over every kind of request, on a fresh
    Compiled (every token verified, keys looked up) and a warm one, and
    record every C function it calls. No clock is read and nothing random is
    drawn, by edge's code or by a library it calls (PyJWT's claim checks
    read the clock even with every time check off: tokens.py verifies the
    signature through PyJWS and checks the claims itself)."""
    c = compiled(tmp_path, APPS, team(tmp_path))
    requests = [request(method, url, headers) for method, url, headers in REQUESTS]
    seen: list[str] = []

    def profile(frame: object, event: str, arg: Any) -> None:
        if event == "c_call":
            found = clock_or_dice(arg)
            if found is not None:
                seen.append(found)

    for _ in range(2):  # cold caches, then warm
        sys.setprofile(profile)
        try:
            for req in requests:
                decide(c, req, NOW, binding="E" * 24)
        finally:
            sys.setprofile(None)
    assert seen == []


def test_the_clock_detector_sees_what_it_looks_for() -> None:
    """The test above cannot pass by missing calls."""
    import os
    import time

    seen: list[str] = []

    def profile(frame: object, event: str, arg: Any) -> None:
        if event == "c_call" and clock_or_dice(arg) is not None:
            seen.append(str(clock_or_dice(arg)))

    sys.setprofile(profile)
    try:
        time.time()
        time.monotonic()
        datetime.datetime.now(tz=datetime.UTC)
        os.urandom(1)
        random.random()
    finally:
        sys.setprofile(None)
    assert seen == ["time.time", "time.monotonic", "datetime.now", "os.urandom", "random.random"]


def test_decide_draws_no_randomness_from_session() -> None:
    """edge.access.session also serves the login service, which draws random
    values (random_token, Sealer, person, new_binding_value): decide may
    only use its pure cookie helpers."""
    used = {
        alias.name
        for node in ast.walk(ast.parse((ACCESS / "decide.py").read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "edge.access.session"
        for alias in node.names
    }
    assert used <= {"binding_cookie", "BINDING_COOKIE", "set_cookie"}


def test_decide_does_not_compile() -> None:
    """Reading files and building the Compiled are compile.py's: decide.py
    neither reads a path nor imports the config loader's pieces it needs."""
    source = (ACCESS / "decide.py").read_text()
    tree = ast.parse(source)
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    assert not names & {"compile_config", "Compiled", "CompiledApp", "Shared", "RemoteKeys", "_read_jwks"}
    assert "pathlib" not in imported_modules(ACCESS / "decide.py")
    assert "edge" in imported_modules(ACCESS / "decide.py")
