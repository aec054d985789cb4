"""IP networks the access tests share: OFFICE, a list of BIG (100 000)
distinct networks (edge.access.lists compiles it), and TRUSTED, the proxy
ranges whose X-Forwarded-For edge.access.subject believes."""

from __future__ import annotations

import ipaddress

BIG = 100_000
# 100 000 distinct networks: /32s counting up from 10.0.0.0 (to 10.1.134.155),
# a /24 and a /12, and two IPv6 ones.
OFFICE = [f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}/32" for i in range(BIG - 4)] + [
    "192.0.2.0/24",
    "172.16.0.0/12",
    "2001:db8::/48",
    "2001:db8:ffff::1",
]

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
