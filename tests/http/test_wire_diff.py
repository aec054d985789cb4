"""Differential test: the fast request-head parser against h11.

edge/http/h11_internals.py `fast_request` takes the common request heads without h11's
parser; h11's parser stays the reference for everything. The fast parser
may decline anything (None: h11 then parses the bytes), but a head it takes
must be one h11 takes too, read into the same request (method, target,
version, fields in order, names as sent and lower-cased, values) ending at the
same byte, with h11's state machine left as its own parse would leave it
(tests/support/h11_reference.py assert_agrees_with_h11 makes every one of
those comparisons).

Heads are generated from a grammar that mostly produces valid heads, each
part drawn now and then from its edge cases (lower-case and odd methods, other
versions, targets with spaces or fragments, empty values, whitespace,
obs-text, control characters, long lines, repeated framing fields), then
mutated (bytes inserted, deleted or replaced; CRLF swapped for LF or CR; cut
short). A run also checks that the grammar is worth something: the fast
parser took many of the heads, h11 alone many others, and both refused some.
"""

from __future__ import annotations

from collections import Counter

from h11_reference import SPLICES, assert_agrees_with_h11, h11_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = 3000  # per run: under 10 s; the mix of outcomes is checked below

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
visible = st.binary(min_size=1, max_size=24).map(lambda b: bytes(0x21 + c % 94 for c in b))


ODD = 12  # one part in ODD is an edge case: a head has some twenty parts, and most heads should be valid


def mostly(common: st.SearchStrategy[bytes], odd: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """`common`, or one time in ODD an edge case."""
    return st.integers(0, ODD - 1).flatmap(lambda n: odd if n == 0 else common)


methods = mostly(
    st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"]),
    st.sampled_from([b"get", b"patch", b"Get", b"NEW", b"M-SEARCH", b"CONNECT", b"G@T", b"", b"GET\x00"])
    | tokens
    | st.binary(max_size=6),
)
targets = mostly(
    st.sampled_from([b"/", b"/x?y=1", b"/a/b/c", b"/caf%C3%A9"]) | visible.map(lambda v: b"/" + v),
    st.sampled_from(
        [b"*", b"http://a/x", b"https://a:443/", b"a:443", b"/a b", b"/a\tb", b"", b"/#f", b"/\xff", b"/\x7f"]
    )
    | st.binary(max_size=12),
)
versions = mostly(
    st.just(b"HTTP/1.1"),
    st.sampled_from(
        [
            b"HTTP/1.0",
            b"HTTP/1.2",
            b"HTTP/2.0",
            b"HTTP/0.9",
            b"http/1.1",
            b"HTTP/1.10",
            b"HTTP/1",
            b"HTTP/11",
            b"",
        ]
    ),
)
names = mostly(
    st.sampled_from([b"X-A", b"Accept", b"Cookie", b"User-Agent", b"x-b"]) | tokens,
    st.sampled_from(
        [
            b"Host",
            b"HOST",
            b"Content-Length",
            b"content-length",
            b"Transfer-Encoding",
            b"Connection",
            b"Upgrade",
            b"Expect",
            b"X_A",
            b"X A",
            b"",
            b"X:A",
            b"\xff",
            b" X",
        ]
    ),
)
values = mostly(
    st.sampled_from([b"a", b"text/html", b"a=b; c=d", b"1"]) | visible,
    st.sampled_from(
        [
            b"",
            b" a ",
            b"\ta\t",
            b"a  b",
            b"close",
            b"keep-alive",
            b"Upgrade",
            b"websocket",
            b"100-continue",
            b"chunked",
            b"5",
            b"05",
            b"5, 5",
            b"+5",
            b"caf\xc3\xa9",
            b"\x00",
            b"a\x01b",
            b"a\x7f",
            b"a\x0bb",
            b"a\rb",
            b"a\nb",
            b"a" * 9000,
        ]
    )
    | st.binary(max_size=8),
)
separators = mostly(st.just(b": "), st.sampled_from([b":", b":\t", b" :", b":  ", b"\t:"]))
line_ends = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\n ", b"\r\n\t", b" \r\n"]))
spaces = mostly(st.just(b" "), st.sampled_from([b"  ", b"\t", b""]))
fields = st.lists(st.tuples(names, separators, values, line_ends), max_size=6)
tails = st.sampled_from([b"", b"hello", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n", b"0\r\n\r\n"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """A request head from the grammar, Host: a first more often than not."""
    sp = draw(spaces)
    parts = [draw(methods), sp, draw(targets), sp, draw(versions), draw(line_ends)]
    if draw(st.integers(0, 3)):
        parts.append(b"Host: a\r\n")
    for name, sep, value, end in draw(fields):
        parts += [name, sep, value, end]
    parts.append(draw(line_ends))
    parts.append(draw(tails))
    return b"".join(parts)


edits = st.lists(
    st.tuples(st.integers(0, 1 << 16), st.integers(0, 3), st.sampled_from(SPLICES) | st.binary(max_size=3)),
    max_size=3,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A head from the grammar, then a few splices, CRLFs swapped, or a cut."""
    data = draw(heads())
    for at, cut, piece in draw(edits):
        at %= len(data) + 1
        data = data[:at] + piece + data[at + cut :]
    swap = draw(st.sampled_from([None, None, None, b"\n", b"\r", b"\n\r"]))
    if swap is not None:
        nth = draw(st.integers(0, 8))
        at = -1
        for _ in range(nth + 1):
            at = data.find(b"\r\n", at + 1)
        if at >= 0:
            data = data[:at] + swap + data[at + 2 :]
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


def test_fast_request_agrees_with_h11_on_generated_heads() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.one_of(heads(), mutated()))
    def check(data: bytes) -> None:
        if assert_agrees_with_h11(data) is not None:
            seen["fast"] += 1
        elif h11_request(data)[1] is not None:
            seen["h11 only"] += 1
        else:
            seen["refused"] += 1

    check()
    # The comparison means something only if each outcome was common.
    assert min(seen["fast"], seen["h11 only"], seen["refused"]) >= EXAMPLES // 20, seen
