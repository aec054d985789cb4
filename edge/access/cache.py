"""The one bounded cache the request path uses for its shortcuts.

Invariants:
- At most `limit` entries; inserting a new key into a full cache evicts the
  oldest insertion first (dicts keep insertion order), so a flood of
  distinct keys only evicts, never grows memory.
- A cache only remembers an answer its owner could recompute: what the key
  covers, and what the owner still checks on every hit (token expiry,
  revocation, client IP...), is stated where each cache is created, and a
  test compares the cached answer with the slow path.
- A cache belongs to the object that fills it and dies with it: the ones
  built by compile_config are replaced, empty, on every reload.
- `get` is the dict's own bound method: a hit costs what a dict lookup
  costs (the request path calls it once per request).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A dict with a size bound, oldest insertion evicted first."""

    __slots__ = ("limit", "_data", "get")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a cache holds at least one entry")
        self.limit = limit
        self._data: dict[K, V] = {}
        self.get: Callable[[K], V | None] = self._data.get

    def put(self, key: K, value: V) -> V:
        """Remember `value` under `key` (evicting the oldest when full); returns it."""
        data = self._data
        if key not in data:
            while len(data) >= self.limit:
                del data[next(iter(data))]
        data[key] = value
        return value

    def discard(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        """Keys, oldest first."""
        return iter(self._data)
