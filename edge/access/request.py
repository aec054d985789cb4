"""The request: one value per request, built once when its head is complete.

Everything past the connection reads this one object: the decision
(edge.access.decide), the forwarded head (edge.proxy.forwarding), the login
endpoints (edge.login) and the access log. Its headers are indexed by name
in the same pass that collects them (edge.http.h11_internals.scan_fields on
the wire; `index_of` for a request built by hand), so no reader scans them
again to find a field.

Invariants:
- A Request is immutable once built: `headers` and `index` are never
  changed by a reader (they are shared by everything above).
- `index` holds exactly the fields of `headers`: every name, its values in
  the order they came (tests/http/test_request_head.py checks that the
  connection's Request equals `build`'s for the same head).
- `host`, `target`, `length` and `chunked` are as the connection validated
  and framed them: `host` routes the request, `target` is origin-form (or
  "*"), and `path` + `query` split it once.
Pure: no I/O, no clock (`started` is the caller's).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from edge.access.headers import Header, Headers

# Field name -> its values, in the order they came.
Index = dict[bytes, list[bytes]]
NO_VALUES: tuple[bytes, ...] = ()

# A protocol the edge never tunnels: after a 101 the upstream would take any
# number of requests, for any path, inside a tunnel the edge authorised once
# for this one. Such a request is forwarded as a plain one, its Upgrade and
# HTTP2-Settings dropped as hop-by-hop.
H2C = b"h2c"


class Request(msgspec.Struct, frozen=True, gc=False):
    # A Struct: built for every request, positionally it costs about a third
    # of a __slots__ class's __init__ (0.07 vs 0.2 us for these fields). No
    # gc: it refers only to bytes, str, and the lists and dict of its head.

    method: bytes  # as sent: methods are case-sensitive tokens
    host: bytes  # the Host (or an absolute-form target's authority), validated; may carry a port
    target: bytes  # origin-form path[?query] (or b"*"), as forwarded
    path: bytes  # target before any "?"
    query: bytes  # target after the first "?" (b"" for none)
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers  # (lower-cased name, value), in order
    index: Index  # the same fields by name (see the invariants)
    client_ip: str  # the peer's address, without port
    scheme: str  # "https" or "http": how the client reached the edge
    length: int | None  # Content-Length, when given
    chunked: bool  # Transfer-Encoding frames the body
    upgrade: bool  # asks to switch to a protocol the edge tunnels (is_upgrade)
    started: float  # epoch seconds: when the head was complete
    # The subject CN of the client certificate the TLS layer verified against
    # [server.tls] client_ca on this request's connection: None without one,
    # "" for a verified certificate without exactly one CN. Never from a header.
    client_cert_cn: str | None = None
    # The request's id (edge.http.request_id): SAFE, so it may go into a log
    # line, a header or a page as it is. b"" only for a Request built by hand.
    request_id: bytes = b""

    def values(self, name: bytes) -> Sequence[bytes]:
        """Every value of the (lower-case) field `name`, in order."""
        return self.index.get(name, NO_VALUES)


def index_of(headers: Sequence[Header]) -> Index:
    """The index of `headers`, for requests not read off the wire (the
    connection builds its index while scanning the head)."""
    index: Index = {}
    for name, value in headers:
        values = index.get(name)
        if values is None:
            index[name] = [value]
        else:
            values.append(value)
    return index


def is_upgrade(index: Index) -> bool:
    """Whether the request asks to switch protocols in a way the edge
    tunnels: Connection names "upgrade", and Upgrade offers something other
    than h2c (see H2C)."""
    connection = index.get(b"connection")
    if connection is None or b"upgrade" not in b",".join(connection).lower():
        return False
    offers = index.get(b"upgrade")
    return offers is not None and H2C not in _protocol_names(offers)


def _protocol_names(offers: Sequence[bytes]) -> set[bytes]:
    # Upgrade = #protocol, protocol = name ["/" version] (RFC 9110 7.8)
    return {t.partition(b"/")[0].strip().lower() for v in offers for t in v.split(b",")}


def build(
    method: bytes,
    host: bytes,
    target: bytes,
    headers: Headers,
    client_ip: str,
    scheme: str = "https",
    *,
    version: bytes = b"1.1",
    started: float = 0.0,
    client_cert_cn: str | None = None,
    request_id: bytes = b"",
) -> Request:
    """A Request from its parts, as the connection would build it for a head
    carrying `headers` (lower-case names): for `edge explain`, the bench and
    tests. The framing comes from the fields; no validation is made."""
    index = index_of(headers)
    path, _, query = target.partition(b"?")
    lengths = index.get(b"content-length")
    return Request(
        method,
        host,
        target,
        path,
        query,
        version,
        headers,
        index,
        client_ip,
        scheme,
        int(lengths[0]) if lengths else None,
        b"transfer-encoding" in index,
        is_upgrade(index),
        started,
        client_cert_cn,
        request_id,
    )
