"""edge.access.router: host table, path tries, most specific wins. Pure."""

from __future__ import annotations

import pytest

from edge.access.router import Route, Router, normalize_host, path_segments
from edge.config.syntax import parse_domain

APPS = {
    "exact": "app.example.com",
    "exact-admin": "app.example.com/admin",
    "exact-admin-users": "app.example.com/admin/users/*",
    "wild": "*.example.com",
    "wild-api": "*.example.com/api",
    "apex": "example.com",
    "deep-wild": "*.b.example.com",
}


def router() -> Router[str]:
    return Router(Route(name, parse_domain(text)) for name, text in APPS.items())


def match(host: bytes, path: bytes) -> str | None:
    segments = path_segments(path)
    assert segments is not None
    route = router().match(normalize_host(host), segments)
    return None if route is None else route.app


@pytest.mark.parametrize(
    ("host", "path", "app"),
    [
        # exact host, path specificity by whole segments
        (b"app.example.com", b"/", "exact"),
        (b"app.example.com", b"/x", "exact"),
        (b"app.example.com", b"/admin", "exact-admin"),
        (b"app.example.com", b"/admin/", "exact-admin"),
        (b"app.example.com", b"/admin/settings", "exact-admin"),
        (b"app.example.com", b"/administrator", "exact"),
        (b"app.example.com", b"/admin/users", "exact-admin-users"),
        (b"app.example.com", b"/admin/users/42", "exact-admin-users"),
        (b"app.example.com", b"/admin/usersx", "exact-admin"),
        # ports, case and a trailing dot never change the host
        (b"app.example.com:8443", b"/admin", "exact-admin"),
        (b"APP.Example.COM", b"/", "exact"),
        (b"app.example.com.", b"/", "exact"),
        # paths are case-sensitive
        (b"app.example.com", b"/Admin", "exact"),
        # wildcard: exactly one label
        (b"a.example.com", b"/", "wild"),
        (b"a.example.com", b"/api/v1", "wild-api"),
        (b"a.example.com", b"/apis", "wild"),
        (b"example.com", b"/", "apex"),
        (b"x.b.example.com", b"/", "deep-wild"),
        (b"a.c.example.com", b"/", None),
        (b".example.com", b"/", None),
        (b"a_b.example.com", b"/", "wild"),
        (b"bad!label.example.com", b"/", None),
        # the exact host has no app for /api: the wildcard covers it
        # (a.example.com/api is wild-api; app.example.com/api is exact's root)
        (b"app.example.com", b"/api", "exact"),
        # unknown hosts
        (b"example.org", b"/", None),
        (b"", b"/", None),
        # normalisation: dot segments, empty segments, escaped unreserved chars
        (b"app.example.com", b"/x/../admin", "exact-admin"),
        (b"app.example.com", b"/admin/../x", "exact"),
        (b"app.example.com", b"/./admin", "exact-admin"),
        (b"app.example.com", b"//admin", "exact-admin"),
        (b"app.example.com", b"/%61dmin", "exact-admin"),
        (b"app.example.com", b"/%2e%2e/admin", "exact-admin"),
        (b"app.example.com", b"/x/%2E%2E/admin/users", "exact-admin-users"),
        (b"app.example.com", b"/../../admin", "exact-admin"),
    ],
)
def test_match(host: bytes, path: bytes, app: str | None) -> None:
    assert match(host, path) == app


def test_wildcard_falls_back_only_when_exact_host_has_no_route() -> None:
    r = Router(
        Route(n, parse_domain(t)) for n, t in {"x": "app.example.com/only", "w": "*.example.com"}.items()
    )
    assert r.match(b"app.example.com", [b"only", b"z"]).app == "x"  # type: ignore[union-attr]
    assert r.match(b"app.example.com", [b"other"]).app == "w"  # type: ignore[union-attr]


@pytest.mark.parametrize("path", [b"/a%2fb", b"/a%2Fb", b"/a%5cb", b"/a\\b", b"/%5C"])
def test_ambiguous_paths_are_refused(path: bytes) -> None:
    assert path_segments(path) is None


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        (b"/", []),
        (b"/a/b/", [b"a", b"b"]),
        (b"/a//b", [b"a", b"b"]),
        (b"/a/./b/../c", [b"a", b"c"]),
        (b"/%7euser", [b"~user"]),
        (b"/caf%c3%a9", [b"caf%C3%A9"]),
        (b"/.hidden", [b".hidden"]),
        (b"/a/..", []),
    ],
)
def test_path_segments(path: bytes, segments: list[bytes]) -> None:
    assert path_segments(path) == segments


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"App.Example.com:443", b"app.example.com"),
        (b"example.com.", b"example.com"),
        (b"[::1]:80", b"[::1]"),
        (b"[2001:DB8::1]", b"[2001:db8::1]"),
        (b"", b""),
    ],
)
def test_normalize_host(raw: bytes, host: bytes) -> None:
    assert normalize_host(raw) == host


def test_knows_hosts_with_any_route() -> None:
    r = router()
    assert r.knows(b"app.example.com")
    assert r.knows(b"zzz.example.com")
    assert not r.knows(b"example.org")
    assert not r.knows(b"a.c.example.com")


def test_same_pattern_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="routed twice"):
        Router(Route(n, parse_domain("a.example.com/x/*")) for n in ("one", "two"))


def test_match_cost_does_not_depend_on_app_count() -> None:
    """Structure, not timing: one dict probe per table, one per segment."""
    r: Router[str] = Router(Route(f"a{i}", parse_domain(f"h{i}.example.com/p{i}")) for i in range(5000))
    assert len(r.exact) == 5000
    assert r.match(b"h4999.example.com", [b"p4999", b"x"]).app == "a4999"  # type: ignore[union-attr]
    assert r.match(b"h4999.example.com", [b"p1"]) is None
