"""edge.access.lists: what a 100 000-entry list compiles to. Pure."""

from __future__ import annotations

import ipaddress

from access_networks import BIG, OFFICE

from edge.access.lists import NetworkTable, distinct_entries
from edge.config.schema import List


def test_office_is_a_list_of_distinct_networks() -> None:
    assert len(set(OFFICE)) == len({ipaddress.ip_network(n) for n in OFFICE}) == len(OFFICE) == BIG


def test_network_table_probes_one_set_per_prefix_length() -> None:
    table = NetworkTable(ipaddress.ip_network(n) for n in OFFICE)
    assert table.size == BIG
    assert ipaddress.ip_address("10.1.134.155") in table  # the last of the /32s
    assert ipaddress.ip_address("10.1.134.156") not in table
    assert [bin(mask).count("1") for mask, _ in table.v4] == [32, 24, 12]
    assert [bin(mask).count("1") for mask, _ in table.v6] == [128, 48]
    assert ipaddress.ip_address("172.20.1.1") in table
    assert ipaddress.ip_address("11.0.0.1") not in table


def test_size_counts_distinct_networks_not_lines() -> None:
    """A network listed twice, or written once as an address and once as its
    /32, is one entry: `edge explain` says how many the list holds."""
    lines = ["10.0.0.1", "10.0.0.1/32", "10.0.0.0/8", "10.0.0.0/8", "2001:db8::/32", "2001:db8::/32"]
    table = NetworkTable(ipaddress.ip_network(n) for n in lines)
    assert table.size == 3


def test_distinct_entries_as_compiled() -> None:
    """What `edge check` counts: emails case-insensitively, networks by value."""
    emails = List("c", "email", items=["carol@example.com", "Carol@Example.com", "dave@example.com"])
    office = List("o", "ip", items=["192.0.2.0/24", "192.0.2.0/24", "2001:db8::1", "2001:db8::1/128"])
    assert distinct_entries(emails) == 2
    assert distinct_entries(office) == 2
    assert distinct_entries(List("big", "ip", items=OFFICE)) == BIG
