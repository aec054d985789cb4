"""Named lists, compiled: what a 100 000-entry list becomes. An email list
is a set (lower-cased), an IP list a `NetworkTable`; a lookup either way,
whatever its size.

Invariants:
- Built once per configuration and shared by every rule that names a list
  (or the same union of lists); evaluation only reads.
- A `NetworkTable` lookup masks the address once per distinct prefix
  length, never once per network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from edge.access.subject import IPAddress, IPNetwork
from edge.config.schema import List


def entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def distinct_entries(entry: List) -> int:
    """How many different entries a (loaded) list holds, as compiled: emails
    compared case-insensitively, networks by value (``10.0.0.1`` is
    ``10.0.0.1/32``)."""
    items = entry.items or ()
    if entry.type == "email":
        return len({v.lower() for v in items})
    return len({ipaddress.ip_network(v) for v in items})


class NetworkTable:
    """IP networks for lookups: per address family, the network addresses
    (as ints) of each prefix length, longest first. A lookup masks the
    address once per distinct prefix length (at most 33 / 129 set probes),
    whatever the number of networks. `size` is the number of distinct
    networks (a network listed twice is one entry)."""

    __slots__ = ("v4", "v6", "size")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        by_length: dict[tuple[int, int], set[int]] = {}
        for net in networks:
            by_length.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        self.size = sum(len(addresses) for addresses in by_length.values())
        self.v4 = self._table(by_length, 4, 32)
        self.v6 = self._table(by_length, 6, 128)

    @staticmethod
    def _table(
        by_length: dict[tuple[int, int], set[int]], version: int, bits: int
    ) -> tuple[tuple[int, frozenset[int]], ...]:
        lengths = sorted((length for v, length in by_length if v == version), reverse=True)
        full = (1 << bits) - 1
        return tuple(
            (full ^ ((1 << (bits - length)) - 1), frozenset(by_length[version, length])) for length in lengths
        )

    def __contains__(self, ip: IPAddress) -> bool:
        number = int(ip)
        for mask, addresses in self.v4 if ip.version == 4 else self.v6:
            if number & mask in addresses:
                return True
        return False


class Lists:
    """A configuration's lists by name: each compiled once, and each union of
    names a rule asks for built once, so every rule naming it shares it."""

    __slots__ = ("email_lists", "ip_lists", "_email_unions", "_ip_unions")

    def __init__(self, lists: Sequence[List] = ()) -> None:
        self.email_lists: dict[str, frozenset[str]] = {}
        self.ip_lists: dict[str, tuple[IPNetwork, ...]] = {}
        for entry in lists:
            if entry.type == "email":
                self.email_lists[entry.name] = frozenset(v.lower() for v in entry.items or ())
            else:
                self.ip_lists[entry.name] = tuple(ipaddress.ip_network(v) for v in entry.items or ())
        self._email_unions: dict[tuple[str, ...], frozenset[str]] = {}
        self._ip_unions: dict[tuple[str, ...], NetworkTable] = {}

    def emails(self, names: Sequence[str]) -> frozenset[str]:
        key = tuple(names)
        found = self._email_unions.get(key)
        if found is None:
            lists = [self.email_lists[n] for n in key]
            found = lists[0] if len(lists) == 1 else frozenset().union(*lists)
            self._email_unions[key] = found
        return found

    def networks(self, names: Sequence[str]) -> NetworkTable:
        key = tuple(names)
        found = self._ip_unions.get(key)
        if found is None:
            found = self._ip_unions[key] = NetworkTable(net for n in key for net in self.ip_lists[n])
        return found


EMPTY_LISTS = Lists()
