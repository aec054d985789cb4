"""edge.access.cors: preflight detection and the edge's exact CORS answers
(BEHAVIOUR.md section 4). Pure."""

from __future__ import annotations

from typing import Any

import pytest

from edge.access.cors import CorsPolicy, fetch_method, is_preflight
from edge.access.responses import LocalResponse, Responses
from edge.config.schema import Cors

WEB = b"https://web.example.com"
EVIL = b"https://evil.example.net"
VARY = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


def policy(**settings: Any) -> CorsPolicy:
    return CorsPolicy(Cors(**settings), Responses("edge"))


def head(response: LocalResponse) -> list[tuple[bytes, bytes]]:
    """The response's fields, minus the two every response has."""
    lines = response.rest.decode().split("\r\n")
    fields = [tuple(line.split(": ", 1)) for line in lines if line]
    return [(k.encode(), v.encode()) for k, v in fields if k not in ("server", "content-length")]


LISTED = {"allowed_origins": ["https://web.example.com"], "allowed_methods": ["GET", "POST"]}


@pytest.mark.parametrize(
    ("method", "origin", "acrm", "expected"),
    [
        (b"OPTIONS", b"https://a", b"GET", True),
        (b"OPTIONS", b"https://a", None, False),  # plain OPTIONS with Origin
        (b"OPTIONS", None, b"GET", False),
        (b"GET", b"https://a", b"GET", False),
        (b"options", b"https://a", b"GET", False),  # methods are case-sensitive
    ],
)
def test_is_preflight(method: bytes, origin: bytes | None, acrm: bytes | None, expected: bool) -> None:
    assert is_preflight(method, origin, acrm) is expected


# Every row: settings, (origin, method, requested headers, private network), status, exact fields.
ROWS: list[
    tuple[str, dict[str, Any], tuple[bytes, bytes, bytes | None, bool], int, list[tuple[bytes, bytes]]]
] = [
    (
        "listed origin, lists",
        {**LISTED, "allowed_headers": ["Content-Type", "X-Trace"], "max_age": 600},
        (WEB, b"POST", b"content-type", False),
        200,
        [
            (b"access-control-allow-origin", WEB),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", b"Content-Type, X-Trace"),
            (b"access-control-max-age", b"600"),
            VARY,
        ],
    ),
    (
        "credentials",
        {**LISTED, "allow_credentials": True},
        (WEB, b"GET", None, False),
        200,
        [
            (b"access-control-allow-origin", WEB),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", b"GET, POST"),
            VARY,
        ],
    ),
    (
        "origin not allowed",
        {**LISTED, "allow_credentials": True},
        (EVIL, b"GET", None, False),
        403,
        [(b"content-type", b"text/plain; charset=utf-8"), VARY],
    ),
    (
        "method not in list: still the configured list",
        LISTED,
        (WEB, b"DELETE", b"x-custom", False),
        200,
        [(b"access-control-allow-origin", WEB), (b"access-control-allow-methods", b"GET, POST"), VARY],
    ),
    (
        "all origins: *",
        {"allow_all_origins": True, "allowed_methods": ["GET"]},
        (EVIL, b"GET", None, False),
        200,
        [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"GET"), VARY],
    ),
    (
        "all methods and headers echo the request",
        {
            "allowed_origins": ["https://web.example.com"],
            "allow_all_methods": True,
            "allow_all_headers": True,
        },
        (WEB, b"PATCH", b"authorization, x-trace", False),
        200,
        [
            (b"access-control-allow-origin", WEB),
            (b"access-control-allow-methods", b"PATCH"),
            (b"access-control-allow-headers", b"authorization, x-trace"),
            VARY,
        ],
    ),
    (
        "all headers with credentials: echoed, never *",
        {**LISTED, "allow_all_headers": True, "allow_credentials": True},
        (WEB, b"GET", b"authorization", False),
        200,
        [
            (b"access-control-allow-origin", WEB),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", b"authorization"),
            VARY,
        ],
    ),
    (
        "all headers, none requested: no ACAH",
        {**LISTED, "allow_all_headers": True},
        (WEB, b"GET", None, False),
        200,
        [(b"access-control-allow-origin", WEB), (b"access-control-allow-methods", b"GET, POST"), VARY],
    ),
    (
        "garbage requested headers are not echoed",
        {**LISTED, "allow_all_headers": True},
        (WEB, b"GET", b"a b, <c>", False),
        200,
        [(b"access-control-allow-origin", WEB), (b"access-control-allow-methods", b"GET, POST"), VARY],
    ),
    (
        "private network requested and allowed",
        {**LISTED, "allow_private_network": True},
        (WEB, b"GET", None, True),
        200,
        [
            (b"access-control-allow-origin", WEB),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-private-network", b"true"),
            VARY,
        ],
    ),
    (
        "private network requested, not allowed",
        LISTED,
        (WEB, b"GET", None, True),
        200,
        [(b"access-control-allow-origin", WEB), (b"access-control-allow-methods", b"GET, POST"), VARY],
    ),
    (
        "max_age -1 is sent as is",
        {**LISTED, "max_age": -1},
        (WEB, b"GET", None, False),
        200,
        [
            (b"access-control-allow-origin", WEB),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-max-age", b"-1"),
            VARY,
        ],
    ),
    (
        "null listed",
        {"allowed_origins": ["null"], "allowed_methods": ["GET"]},
        (b"null", b"GET", None, False),
        200,
        [(b"access-control-allow-origin", b"null"), (b"access-control-allow-methods", b"GET"), VARY],
    ),
    (
        "null with all origins, no credentials: * (Fetch accepts it for an opaque origin)",
        {"allow_all_origins": True, "allowed_methods": ["GET"]},
        (b"null", b"GET", None, False),
        200,
        [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"GET"), VARY],
    ),
    (
        "origin compared byte for byte",
        LISTED,
        (b"https://WEB.example.com", b"GET", None, False),
        403,
        [(b"content-type", b"text/plain; charset=utf-8"), VARY],
    ),
    (
        "repeated Origin headers (passed as b'') match nothing",
        {"allow_all_origins": True, "allowed_methods": ["GET"]},
        (b"", b"GET", None, False),
        403,
        [(b"content-type", b"text/plain; charset=utf-8"), VARY],
    ),
    (
        "no origins configured: every preflight refused",
        {},
        (WEB, b"GET", None, False),
        403,
        [(b"content-type", b"text/plain; charset=utf-8"), VARY],
    ),
]


@pytest.mark.parametrize(
    ("settings", "ask", "status", "fields"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_preflight_answer(
    settings: dict[str, Any],
    ask: tuple[bytes, bytes, bytes | None, bool],
    status: int,
    fields: list[tuple[bytes, bytes]],
) -> None:
    response, reason = policy(**settings).preflight(*ask)
    assert response.status == status
    assert head(response) == fields
    assert response.body == b"" if status == 200 else response.body.startswith(b"forbidden")
    assert reason == ("preflight: allowed" if status == 200 else "preflight: origin not allowed")


def test_explicit_lists_are_prebuilt_per_origin() -> None:
    p = policy(allowed_origins=["https://a.example", "https://b.example"], allowed_methods=["GET"])
    first, _ = p.preflight(b"https://a.example", b"GET", None, False)
    again, _ = p.preflight(b"https://a.example", b"PUT", b"x-y", False)
    other, _ = p.preflight(b"https://b.example", b"GET", None, False)
    assert first is again  # the same object: nothing built per request
    assert other is not first


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        (b"get", b"GET"),
        (b"Delete", b"DELETE"),
        (b"options", b"OPTIONS"),
        (b"hEaD", b"HEAD"),
        (b"post", b"POST"),
        (b"put", b"PUT"),
        (b"patch", b"patch"),
        (b"Patch", b"Patch"),
        (b"PATCH", b"PATCH"),
        (b"connect", b"connect"),
        (b"getx", b"getx"),
    ],
)
def test_fetch_method_normalises_only_the_six(written: bytes, sent: bytes) -> None:
    assert fetch_method(written) == sent


def test_allowed_methods_compile_as_fetch_sends_them() -> None:
    """Fetch matches the request's method against Access-Control-Allow-Methods
    byte for byte, after upper-casing only DELETE, GET, HEAD, OPTIONS, POST
    and PUT: a listed `delete` must read DELETE to ever match, `patch` stays
    `patch` (and is not PATCH)."""
    p = policy(
        allowed_origins=["https://a.example"],
        allowed_methods=["get", "delete", "patch", "PATCH", "GET", "Put"],
    )
    answer, _ = p.preflight(b"https://a.example", b"DELETE", None, False)
    assert (b"access-control-allow-methods", b"GET, DELETE, patch, PATCH, PUT") in head(answer)
    assert p.summary().split("; ")[1] == "GET, DELETE, patch, PATCH, PUT"


def test_echo_keeps_the_requested_method_as_sent() -> None:
    p = policy(allowed_origins=["https://a.example"], allow_all_methods=True)
    for method in (b"patch", b"PATCH", b"M-SEARCH"):
        answer, _ = p.preflight(b"https://a.example", method, None, False)
        assert (b"access-control-allow-methods", method) in head(answer)


def test_echoing_settings_build_per_request() -> None:
    p = policy(allowed_origins=["https://a.example"], allow_all_methods=True)
    one, _ = p.preflight(b"https://a.example", b"GET", None, False)
    two, _ = p.preflight(b"https://a.example", b"PUT", None, False)
    assert (b"access-control-allow-methods", b"PUT") in head(two)
    assert one is not two


@pytest.mark.parametrize(
    ("settings", "origin", "fields"),
    [
        (
            {**LISTED, "allow_credentials": True, "expose_headers": ["X-Request-Id"]},
            WEB,
            [
                (b"access-control-allow-origin", WEB),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", b"WWW-Authenticate, X-Request-Id"),
                (b"vary", b"Origin"),
            ],
        ),
        (
            {"allow_all_origins": True, "allowed_methods": ["GET"]},
            EVIL,
            [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", b"WWW-Authenticate"),
                (b"vary", b"Origin"),
            ],
        ),
        (LISTED, EVIL, [(b"vary", b"Origin")]),
        (LISTED, None, [(b"vary", b"Origin")]),
    ],
)
def test_courtesy_headers(
    settings: dict[str, Any], origin: bytes | None, fields: list[tuple[bytes, bytes]]
) -> None:
    assert policy(**settings).courtesy(origin) == fields


def test_summary() -> None:
    text = policy(**LISTED, allow_credentials=True, max_age=5, allow_private_network=True).summary()
    assert text == "1 origin(s); GET, POST; no extra headers; credentials; max-age 5; private network"


# Origin: null (sandboxed frames, file: pages, some redirects). Under
# allow_all_origins without credentials Fetch accepts "*" for it like for any
# origin; otherwise it is a distinct origin that matches only when listed
# (and config validation never lets it be listed with credentials).
NULL_ROWS: list[tuple[str, dict[str, Any], bool, bytes | None]] = [
    ("all origins", {"allow_all_origins": True, "allowed_methods": ["GET"]}, True, b"*"),
    (
        "all origins and all methods",
        {"allow_all_origins": True, "allow_all_methods": True},
        True,
        b"*",
    ),
    ("listed origins without null", LISTED, False, None),
    ("listed origins with credentials", {**LISTED, "allow_credentials": True}, False, None),
    ("null listed", {"allowed_origins": ["null"], "allowed_methods": ["GET"]}, True, b"null"),
    (
        "null listed beside others",
        {"allowed_origins": ["https://web.example.com", "null"], "allowed_methods": ["GET"]},
        True,
        b"null",
    ),
]


@pytest.mark.parametrize(
    ("settings", "allowed", "acao"), [r[1:] for r in NULL_ROWS], ids=[r[0] for r in NULL_ROWS]
)
def test_null_origin(settings: dict[str, Any], allowed: bool, acao: bytes | None) -> None:
    p = policy(**settings)
    assert p.allows(b"null") is allowed
    response, _ = p.preflight(b"null", b"GET", None, False)
    assert response.status == (200 if allowed else 403)
    assert dict(head(response)).get(b"access-control-allow-origin") == acao
    courtesy = dict(p.courtesy(b"null"))
    assert courtesy.get(b"access-control-allow-origin") == acao
    assert b"access-control-allow-credentials" not in courtesy


LISTS = {
    "allowed_origins": ["https://web.test"],
    "allowed_methods": ["GET", "PUT", "patch"],
    "allowed_headers": ["Content-Type", "X-Trace"],
}


@pytest.mark.parametrize(
    ("settings", "method", "headers", "notes"),
    [
        (LISTS, b"PUT", b"content-type, x-trace", []),
        (LISTS, b"POST", None, []),  # safelisted: needs no listing
        (LISTS, b"HEAD", b"X-TRACE", []),  # header names in any case
        (LISTS, b"patch", None, []),  # as written: Fetch sends patch so
        (LISTS, b"PATCH", None, ["method PATCH is not in allowed_methods"]),
        (
            LISTS,
            b"DELETE",
            b"x-trace, authorization",
            [
                "method DELETE is not in allowed_methods",
                "header authorization is not in allowed_headers",
            ],
        ),
        ({**LISTS, "allow_all_methods": True, "allowed_methods": []}, b"DELETE", None, []),
        ({**LISTS, "allow_all_headers": True, "allowed_headers": []}, b"GET", b"x-any", []),
    ],
)
def test_unlisted_names_what_the_browser_will_refuse(
    settings: dict[str, Any], method: bytes, headers: bytes | None, notes: list[str]
) -> None:
    assert policy(**settings).unlisted(method, headers) == notes
