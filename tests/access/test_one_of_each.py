"""One of each: the auth cookie name, the header-pair type and the identity
header names are defined once (edge.access.headers); JWT time checks and
JWKS caching have one implementation each (edge.access.claims,
edge.access.keysets), which the OIDC client uses too."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from access_fixtures import NOW

import edge
from edge.access import headers
from edge.access.claims import Refusal, check_times
from edge.access.keysets import KeySet
from edge.login import oidc

EDGE = Path(edge.__file__).parent
DEFINED_ONCE = {
    "CF_Authorization",
    b"CF_Authorization",
    b"cf-access-jwt-assertion",
    b"cf-access-authenticated-user-email",
    b"cf-access-client-id",
    b"cf-access-client-secret",
    b"cf-access-token",
}


def constants(path: Path) -> set[Any]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}


def test_names_are_spelled_in_one_module() -> None:
    spelled = {
        str(path.relative_to(EDGE)): found
        for path in sorted(EDGE.rglob("*.py"))
        if (found := constants(path) & DEFINED_ONCE)
    }
    assert set(spelled) == {"access/headers.py"}, spelled


def is_header_pair_alias(node: ast.AST) -> bool:
    """`X = tuple[bytes, bytes]` or `X = list[tuple[bytes, bytes]]` at module level."""
    if not isinstance(node, ast.Assign):
        return False
    text = ast.unparse(node.value).replace(" ", "")
    return text in ("tuple[bytes,bytes]", "list[tuple[bytes,bytes]]")


def test_the_header_pair_type_has_one_owner() -> None:
    owners = [
        str(path.relative_to(EDGE))
        for path in sorted(EDGE.rglob("*.py"))
        if any(is_header_pair_alias(node) for node in ast.parse(path.read_text()).body)
    ]
    assert owners == ["access/headers.py"]
    # Nor does another module give its own type one of those names.
    named = [
        str(path.relative_to(EDGE))
        for path in sorted(EDGE.rglob("*.py"))
        if {"Header", "Headers"} & module_level_names(path)
    ]
    assert named == ["access/headers.py"]


def module_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


# Constants that were once defined in two modules, and their one owner.
OWNERS = {
    "CRLF": "access/headers.py",
    "SIGNING_ALGORITHMS": "config/schema.py",  # the built-in issuer's (login.oidc's is another set)
}


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_shared_constants_have_one_owner(name: str) -> None:
    owners = [
        str(path.relative_to(EDGE))
        for path in sorted(EDGE.rglob("*.py"))
        if name in module_level_names(path) and path.name != "oidc.py"
    ]
    assert owners == [OWNERS[name]]


def test_the_token_syntax_is_spelled_once() -> None:
    """The RFC 9110 token's character class: config.syntax.TOKEN, which the
    checks, CORS and the wire parsers import."""
    spelled = [
        str(path.relative_to(EDGE))
        for path in sorted(EDGE.rglob("*.py"))
        for value in constants(path)
        if isinstance(value, (str, bytes)) and ("|~" in str(value))
    ]
    assert spelled == ["config/syntax.py"]


def test_access_does_not_import_proxy_or_http() -> None:
    for path in sorted((EDGE / "access").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("edge.proxy", "edge.http", "edge.login", "edge.runtime")
                ), path


# -- JWT time checks ------------------------------------------------------------------

TIMES: list[dict[str, Any]] = [
    {"exp": NOW + 100, "iat": NOW - 10},
    {"exp": NOW + 100, "iat": NOW - 10, "nbf": NOW - 10},
    {"exp": NOW - 61, "iat": NOW - 100},  # expired beyond the leeway
    {"exp": NOW - 59, "iat": NOW - 100},  # within the leeway
    {"exp": NOW + 100, "iat": NOW + 61},  # issued in the future
    {"exp": NOW + 100, "iat": NOW, "nbf": NOW + 61},  # not yet valid
    {"exp": str(NOW + 100), "iat": NOW},  # a numeric string is no number
    {"exp": True, "iat": NOW},
    {"exp": 10**400, "iat": NOW},  # no float has it
    {"exp": NOW + 100, "iat": NOW, "nbf": "soon"},
    {"exp": NOW + 100},  # no iat
]


@pytest.mark.parametrize("claims", TIMES, ids=range(len(TIMES)))
def test_id_tokens_and_user_tokens_share_the_time_checks(claims: dict[str, Any]) -> None:
    assert oidc.check_times is check_times
    client = oidc.OidcClient("https://idp.example.com", "client", "secret", leeway=60)
    full = {"iss": "https://idp.example.com", "aud": "client", "nonce": "n", **claims}
    verdict = check_times(full, NOW, 60)
    if isinstance(verdict, Refusal):
        with pytest.raises(oidc.OidcError, match="ID token: " + verdict.reason.split(" (")[0]):
            client._check_claims(full, "n", NOW)
    else:
        client._check_claims(full, "n", NOW)


def test_oidc_keeps_its_jwks_in_a_key_set() -> None:
    client = oidc.OidcClient("https://idp.example.com", "client", "secret")
    assert isinstance(client._keys, KeySet)
    assert not any(name.startswith("_check_times") or name == "_number" for name in vars(oidc))
    assert headers.AUTH_COOKIE.encode() == headers.AUTH_COOKIE_BYTES
