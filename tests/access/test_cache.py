"""The request path's shortcuts: one BoundedCache implementation, and for each
cache a check that its answer is the slow path's (a fresh compile, or the
builder the cache wraps), so a cache can never change a decision."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from access_fixtures import ISS, NOW, compiled, default_jwks, mint, request
from hypothesis import given, settings
from hypothesis import strategies as st

import edge.access
import edge.proxy.forwarding as forwarding
from edge.access.actions import Deny, Preflight
from edge.access.cache import BoundedCache
from edge.access.compile import Compiled
from edge.access.decide import decide
from edge.access.keysets import KeySet, parse_jwks
from edge.access.responses import LocalResponse
from edge.access.tokens import IssuerKeys, Verifier

APPS = """
[[apps]]
name = "api"
domains = ["api.example.com"]
upstream = "http://127.0.0.1:9000"
aud = "api-aud"
[apps.cors]
allowed_origins = ["https://web.example.com", "https://two.example.com"]
allowed_methods = ["GET", "POST"]
allowed_headers = ["x-one"]
allow_credentials = true
allow_private_network = true
[[apps.policies]]
name = "block"
action = "deny"
include = [{ emails = ["eve@example.com"] }]
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]

[[apps]]
name = "tenants"
domains = ["*.tenants.example.com"]
upstream = "http://127.0.0.1:9003"
aud = "tenants-aud"
[apps.cors]
allow_all_origins = true
allow_all_methods = true
allow_all_headers = true
[[apps.policies]]
name = "block"
action = "deny"
include = [{ emails = ["eve@example.com"] }]

[[apps]]
name = "plain"
domains = ["plain.example.com"]
upstream = "http://127.0.0.1:9001"
[[apps.policies]]
name = "all"
action = "allow"
include = [{ everyone = true }]
"""


def sent(response: LocalResponse) -> bytes:
    return response.render(b"", False, False)


# -- the one implementation ------------------------------------------------------------


def test_bounded_cache_evicts_the_oldest_insertion() -> None:
    cache: BoundedCache[str, int] = BoundedCache(3)
    for i, key in enumerate("abcde"):
        assert cache.put(key, i) == i
    assert list(cache) == ["c", "d", "e"] and len(cache) == 3
    assert cache.get("a") is None and cache.get("e") == 4
    cache.put("c", 9)  # a key already held replaces in place: nothing evicted
    assert list(cache) == ["c", "d", "e"] and cache.get("c") == 9
    cache.discard("d")
    cache.discard("missing")
    assert "d" not in cache and list(cache) == ["c", "e"]


def test_bounded_cache_needs_room_for_one() -> None:
    with pytest.raises(ValueError):
        BoundedCache(0)


MUTATORS = frozenset({"clear", "pop", "popitem", "setdefault", "update", "__setitem__", "__delitem__"})


def mutated_module_dicts(source: str) -> list[str]:
    """Module-level dicts that the module writes to after import: a cache
    that is not a BoundedCache."""
    tree = ast.parse(source)
    dicts = set()
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if isinstance(value, ast.Dict) or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict"
        ):
            dicts.update(t.id for t in targets if isinstance(t, ast.Name))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            name = node.value
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS
        ):
            name = node.func.value
        else:
            continue
        if isinstance(name, ast.Name) and name.id in dicts:
            found.append(f"{name.id} (line {node.lineno})")
    return found


def request_path_modules() -> list[Path]:
    """The pure core, the client connection (h11_internals' shortcuts
    included) and the proxy: every module a request passes through."""
    edge_dir = Path(edge.access.__file__).parent.parent
    return [
        path for package in ("access", "http", "proxy") for path in sorted((edge_dir / package).glob("*.py"))
    ]


def setattrs_on_existing_objects(source: str) -> list[str]:
    """`__setattr__` reached for anywhere, except `object.__setattr__` on an
    object the same function has just made with `object.__new__` (building
    an event around its __init__, h11_internals.FastRequest.event): that
    fills in a new object, it writes through no frozen one."""
    tree = ast.parse(source)
    allowed: set[ast.AST] = set()
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef):
            continue
        fresh = {
            target.id
            for node in ast.walk(func)
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "object.__new__"
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        allowed.update(
            node.func
            for node in ast.walk(func)
            if isinstance(node, ast.Call)
            and ast.unparse(node.func) == "object.__setattr__"
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in fresh
        )
    found = [
        node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "__setattr__"
    ]
    return [
        f"{ast.unparse(node)} (line {node.lineno})"
        for node in sorted(found, key=lambda n: n.lineno)
        if node not in allowed
    ]


@pytest.mark.parametrize("path", request_path_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_request_path_cache_is_a_bare_dict(path: Path) -> None:
    """Every cache on the request path (the pure core, the client connection
    with h11_internals, the proxy) is a BoundedCache: no module-level dict
    written after import, no setattr through an existing object."""
    source = path.read_text()
    assert mutated_module_dicts(source) == []
    assert setattrs_on_existing_objects(source) == []


def test_the_setattr_check_sees_a_write_through_a_frozen_object() -> None:
    source = (
        "def fill(event, value):\n"
        "    object.__setattr__(event, 'method', value)\n"  # an object made elsewhere: refused
        "def build(value):\n"
        "    event = object.__new__(Request)\n"
        "    object.__setattr__(event, 'method', value)\n"  # just made here: allowed
        "    setter = Thing.__setattr__\n"
    )
    assert setattrs_on_existing_objects(source) == [
        "object.__setattr__ (line 2)",
        "Thing.__setattr__ (line 6)",
    ]


def test_the_dict_check_sees_a_dict_cache() -> None:
    old = (
        "_SETS: dict[int, int] = {}\n"
        "def f(k):\n"
        "    if len(_SETS) > 9:\n"
        "        _SETS.clear()\n"
        "    _SETS[k] = 1\n"
    )
    assert sorted(mutated_module_dicts(old)) == ["_SETS (line 4)", "_SETS (line 5)"]


def test_the_compiled_caches_are_bounded_cache_objects(tmp_path: Path) -> None:
    """The frozen Compiled holds its caches as BoundedCache objects made at
    compile time; its only dict is a table built then and never written."""
    c = compiled(tmp_path, APPS)
    assert isinstance(c.preflights, BoundedCache)
    assert isinstance(c.verifier.cache, BoundedCache) and isinstance(c.verifier.failures, BoundedCache)
    dicts = {f.name for f in dataclasses.fields(c) if isinstance(getattr(c, f.name), dict)}
    assert dicts == {"apps_by_aud"}


# -- preflight answers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compiled(tmp_path_factory.mktemp("warm"), APPS)


@pytest.fixture(scope="module")
def jwks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fresh")


ORIGINS = st.sampled_from(
    ["https://web.example.com", "https://two.example.com", "https://evil.example", "null", ""]
)
TOKENS = st.text(alphabet="abcxyzXY-", min_size=1, max_size=6)


@st.composite
def preflights(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    host = draw(st.sampled_from(["api.example.com", "a.tenants.example.com", "plain.example.com"]))
    path = draw(st.sampled_from(["/", "/v1/things", "/x?y=1"]))
    headers = [("Origin", draw(ORIGINS))]
    headers.append(("Access-Control-Request-Method", draw(st.sampled_from(["GET", "POST", "PUT", "patch"]))))
    for value in draw(st.lists(TOKENS, max_size=2)):
        headers.append(("Access-Control-Request-Headers", value))
    if draw(st.booleans()):
        headers.append(("Access-Control-Request-Private-Network", "true"))
    return f"https://{host}{path}", headers


@settings(max_examples=60, deadline=None)
@given(preflights())
def test_a_cached_preflight_equals_a_fresh_compiles_answer(
    warm: Compiled, jwks_dir: Path, case: tuple[str, list[tuple[str, str]]]
) -> None:
    url, headers = case
    req = request("OPTIONS", url, headers)
    decide(warm, req, NOW)  # fills the cache, when the answer may be cached
    hit = decide(warm, req, NOW)
    slow = decide(compiled(jwks_dir, APPS), req, NOW)  # an empty cache: computed
    assert type(hit) is type(slow) and (hit.app, hit.reason) == (slow.app, slow.reason)
    if isinstance(slow, Preflight):
        assert isinstance(hit, Preflight) and sent(hit.response) == sent(slow.response)


def test_the_preflight_cache_is_used_and_holds_only_edge_answers(tmp_path: Path) -> None:
    c = compiled(tmp_path, APPS)
    cors = request(
        "OPTIONS",
        "https://api.example.com/",
        [("Origin", "https://web.example.com"), ("Access-Control-Request-Method", "POST")],
    )
    assert decide(c, cors, NOW) is decide(c, cors, NOW)
    # No CORS settings: refused, but never cached (it would not depend on the key alone).
    plain = request(
        "OPTIONS",
        "https://plain.example.com/",
        [("Origin", "https://web.example.com"), ("Access-Control-Request-Method", "POST")],
    )
    decide(c, plain, NOW)
    assert len(c.preflights) == 1


# -- per-origin denials ------------------------------------------------------------------


@pytest.mark.parametrize("app", ["api", "tenants"])
@pytest.mark.parametrize(
    "origin", [b"https://web.example.com", b"https://two.example.com", b"https://evil.example", b"null", None]
)
def test_a_cached_denial_equals_the_built_one(tmp_path: Path, app: str, origin: bytes | None) -> None:
    c = compiled(tmp_path, APPS)
    compiled_app = next(a for a in c.apps if a.name == app)
    first = compiled_app.deny_response(origin)
    again = compiled_app.deny_response(origin)
    assert again is first  # the cache answered
    assert compiled_app.cors is not None
    if origin is not None and compiled_app.cors.allows(origin):
        assert sent(first) == sent(compiled_app.build_deny(origin))
    else:
        assert first is compiled_app.deny_plain
    assert compiled_app._deny_by_origin is not None
    assert len(compiled_app._deny_by_origin) <= len(compiled_app.cors.origins) + 1


def test_denials_through_decide_equal_a_fresh_compile(tmp_path: Path) -> None:
    eve = mint(aud=["api-aud", "tenants-aud"], email="eve@example.com")
    warm = compiled(tmp_path, APPS)
    for url in ("https://api.example.com/", "https://a.tenants.example.com/"):
        for origin in ("https://web.example.com", "https://evil.example", "null"):
            req = request("GET", url, {"Origin": origin, "Cookie": "CF_Authorization=" + eve.decode()})
            decide(warm, req, NOW)
            hit, slow = decide(warm, req, NOW), decide(compiled(tmp_path, APPS), req, NOW)
            assert isinstance(hit, Deny) and isinstance(slow, Deny)
            assert sent(hit.response) == sent(slow.response)


# -- verified tokens and failures --------------------------------------------------------


def verifier() -> Verifier:
    keys, _ = parse_jwks(default_jwks())
    return Verifier([IssuerKeys(ISS, ["ES256"], 60, KeySet("t", keys), None)])


def outcome(result: Any) -> Any:
    return result.reason if hasattr(result, "reason") else (result.sub, result.exp, result.add_headers)


@settings(max_examples=60, deadline=None)
@given(
    exp=st.integers(min_value=-100, max_value=3600),
    nbf=st.integers(min_value=-100, max_value=200),
    later=st.integers(min_value=0, max_value=4000),
)
def test_a_cached_verification_equals_a_fresh_one(exp: int, nbf: int, later: int) -> None:
    """Whatever the first call cached (identity or failure), a later call at
    any `now` answers as a verifier that never saw the token: the cache never
    skips expiry."""
    token = mint(exp=NOW + exp, nbf=NOW + nbf)
    v = verifier()
    v.verify(token, NOW)
    assert outcome(v.verify(token, NOW + later)) == outcome(verifier().verify(token, NOW + later))


def test_forged_tokens_are_cached_as_failures_with_the_fresh_answer() -> None:
    forged = mint(sub="x")[:-4] + b"AAAA"
    v = verifier()
    first = v.verify(forged, NOW)
    assert forged in v.failures and v.verify(forged, NOW) is first
    assert outcome(first) == outcome(verifier().verify(forged, NOW))


def test_a_cached_token_is_still_checked_against_revocations(tmp_path: Path) -> None:
    from edge.access.decide import REVOKED, verify_token
    from edge.access.revocation import session_key

    c = compiled(tmp_path, APPS)
    token = mint(aud=["api-aud"], identity_nonce="n-1")
    assert verify_token(c, token, NOW) is not REVOKED  # now cached
    # As a logout at NOW revokes it: every token issued up to then, for a day.
    c.revoked.revoke(session_key(ISS, "n-1"), NOW + 86400, cutoff=NOW + 60)
    assert verify_token(c, token, NOW) is REVOKED


# -- forwarding's hop-by-hop and drop sets -----------------------------------------------


CONNECTION = st.lists(
    st.sampled_from([b"keep-alive", b"close", b"upgrade", b"x-custom", b"Host", b"te, x-a", b" X-B ,"]),
    max_size=3,
)


@settings(max_examples=80, deadline=None)
@given(values=CONNECTION, keep_upgrade=st.booleans())
def test_cached_hop_sets_equal_the_computed_ones(values: list[bytes], keep_upgrade: bool) -> None:
    headers = [(b"connection", v) for v in values]
    cached = forwarding.hop_by_hop(headers, keep_upgrade)
    assert forwarding.hop_by_hop(headers, keep_upgrade) == cached
    if values or keep_upgrade:
        assert cached == forwarding._hop_set(values, keep_upgrade)
    else:
        assert cached == forwarding.HOP_BY_HOP


@settings(max_examples=40, deadline=None)
@given(
    values=CONNECTION,
    strip=st.sampled_from([frozenset(), frozenset({b"cf-access-client-secret"})]),
    trusted=st.booleans(),
)
def test_cached_drop_sets_equal_the_computed_ones(
    values: list[bytes], strip: frozenset[bytes], trusted: bool
) -> None:
    hop = forwarding.hop_by_hop([(b"connection", v) for v in values])
    assert forwarding._drop_set(hop, strip, trusted) == forwarding._build_drop_set(hop, strip, trusted)
