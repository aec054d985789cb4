"""edge.access.lists: what a 100 000-entry list compiles to. Pure."""

from __future__ import annotations

import ipaddress

from edge.access.lists import NetworkTable

BIG = 100_000
# 100 000 networks of every prefix length from /16 to /32, and a few IPv6 ones.
OFFICE = [f"10.{i >> 8 & 255}.{i & 255}.{(i * 7) & 255}/32" for i in range(BIG - 4)] + [
    "192.0.2.0/24",
    "172.16.0.0/12",
    "2001:db8::/48",
    "2001:db8:ffff::1",
]


def test_network_table_probes_one_set_per_prefix_length() -> None:
    table = NetworkTable(ipaddress.ip_network(n) for n in OFFICE)
    assert table.size == BIG
    assert [bin(mask).count("1") for mask, _ in table.v4] == [32, 24, 12]
    assert [bin(mask).count("1") for mask, _ in table.v6] == [128, 48]
    assert ipaddress.ip_address("172.20.1.1") in table
    assert ipaddress.ip_address("11.0.0.1") not in table
