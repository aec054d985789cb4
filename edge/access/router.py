"""Which application covers a request: a host table and per-host path tries.

Invariants:
- Built once per configuration and never mutated afterwards; `match` only
  reads dicts, so its cost depends on the number of path segments of the
  request, never on the number of applications (BEHAVIOUR.md section 1).
- Most specific wins: an exact host beats a wildcard host; within a host, the
  longest path (by whole segments) wins. A wildcard is consulted only when the
  exact host has no application covering the path.
- Matching sees the path as the upstream will: percent-escaped unreserved
  characters decoded, dot segments resolved, empty segments merged. A path
  whose meaning depends on the upstream's decoding (an escaped ``/`` or
  ``\\``) is refused rather than guessed (`path_segments` returns None).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Generic, TypeVar

from edge.config.syntax import DomainPattern

T = TypeVar("T")

# RFC 3986 2.3: escapes of these are equivalent to the character itself.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE_RE = re.compile(rb"%([0-9A-Fa-f]{2})")
# One DNS label, as a wildcard may stand for (the exact table needs no check:
# only configured names are in it).
_LABEL_RE = re.compile(rb"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
# Escapes that would change the segment structure if an upstream decoded them.
_AMBIGUOUS = (b"%2f", b"%5c", b"\\")
_PERCENT, _BACKSLASH, _DOT = ord("%"), ord("\\"), ord(".")


class Route(Generic[T]):
    """One domain pattern of one application."""

    __slots__ = ("app", "pattern")

    def __init__(self, app: T, pattern: DomainPattern) -> None:
        self.app = app
        self.pattern = pattern


class _Node(Generic[T]):
    __slots__ = ("children", "route")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node[T]] = {}
        self.route: Route[T] | None = None


def normalize_host(host: bytes) -> bytes:
    """Host header -> lookup key: lower case, port and trailing dot removed."""
    if host[:1] == b"[":  # IPv6 literal: the port follows the bracket
        return host[: host.find(b"]") + 1].lower()
    return host.partition(b":")[0].rstrip(b".").lower()


def _unescape(match: re.Match[bytes]) -> bytes:
    code = int(match.group(1), 16)
    return bytes((code,)) if code in _UNRESERVED else b"%" + match.group(1).upper()


def path_segments(path: bytes) -> list[bytes] | None:
    """The normalised segments of an origin-form path (no query), or None
    when the path is ambiguous (see the module invariants)."""
    # Single bytes are tested as ints: `int in bytes` is a plain scan, while
    # `bytes in bytes` costs a buffer-protocol round trip (CPython 3.11).
    if _PERCENT in path:
        lower = path.lower()
        if any(lower.find(a) >= 0 for a in _AMBIGUOUS):
            return None
        path = _ESCAPE_RE.sub(_unescape, path)
    elif _BACKSLASH in path:
        return None
    parts = path.split(b"/")
    if _DOT in path:
        return _resolve_dots(parts)
    del parts[0]  # before the leading "/"
    return [s for s in parts if s] if b"" in parts else parts


def _resolve_dots(parts: list[bytes]) -> list[bytes]:
    """RFC 3986 5.2.4, on segments: "." vanishes, ".." removes its parent."""
    out: list[bytes] = []
    for seg in parts:
        if seg == b"..":
            if out:
                out.pop()
        elif seg and seg != b".":
            out.append(seg)
    return out


class Router(Generic[T]):
    """Host table -> path trie -> the most specific route."""

    __slots__ = ("exact", "wildcard")

    def __init__(self, routes: Iterable[Route[T]]) -> None:
        self.exact: dict[bytes, _Node[T]] = {}
        self.wildcard: dict[bytes, _Node[T]] = {}  # keyed by the parent domain
        for route in routes:
            self._add(route)

    def _add(self, route: Route[T]) -> None:
        pattern = route.pattern
        host = pattern.host.encode("ascii")
        table, key = (self.wildcard, host[2:]) if pattern.wildcard else (self.exact, host)
        node = table.get(key)
        if node is None:
            node = table[key] = _Node()
        for seg in pattern.segments:
            child = node.children.get(seg.encode("ascii"))
            if child is None:
                child = node.children[seg.encode("ascii")] = _Node()
            node = child
        if node.route is not None:
            raise ValueError(f"{pattern.display()!r} is routed twice")
        node.route = route

    def match(self, host: bytes, segments: list[bytes]) -> Route[T] | None:
        """The route for a normalised host and path, or None."""
        node = self.exact.get(host)
        if node is not None:
            found = _walk(node, segments)
            if found is not None:
                return found
        node = self._wildcard_node(host)
        return None if node is None else _walk(node, segments)

    def knows(self, host: bytes) -> bool:
        """Whether any application covers some path of `host`."""
        return host in self.exact or self._wildcard_node(host) is not None

    def _wildcard_node(self, host: bytes) -> _Node[T] | None:
        if not self.wildcard:
            return None
        label, dot, parent = host.partition(b".")
        node = self.wildcard.get(parent) if dot else None
        if node is None or _LABEL_RE.match(label) is None:
            return None
        return node


def _walk(node: _Node[T], segments: list[bytes]) -> Route[T] | None:
    best = node.route
    children = node.children
    for seg in segments:
        child = children.get(seg)
        if child is None:
            break
        if child.route is not None:
            best = child.route
        children = child.children
    return best
