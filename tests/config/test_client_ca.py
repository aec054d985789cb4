"""[server.tls] client_ca and the certificate selectors in configs: load's
errors with their key paths, the TLS context it makes (only client_ca
verifies, a certificate is optional, renegotiation is off), an unreadable
CA file as a clear error, and `edge check` / `edge explain` showing them."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from certs import client_certs

from edge.cli.main import EXIT_CONFIG, EXIT_OK, main
from edge.config.errors import ConfigError
from edge.config.load import loads
from edge.config.schema import TLS
from edge.runtime.server import make_ssl_context

SOURCE = "edge.toml"
TLS_TABLE = '[server.tls]\ncert = "c.pem"\nkey = "k.pem"\n'
TLS_WITH_CA = TLS_TABLE + 'client_ca = "ca.pem"\n'


def app(policies: str) -> str:
    return f'[[apps]]\nname = "svc"\ndomains = ["svc.test"]\nupstream = "http://127.0.0.1:9000"\n{policies}'


def policy(action: str, include: str, extra: str = "") -> str:
    return f'[[apps.policies]]\nname = "p"\naction = "{action}"\ninclude = [{include}]\n{extra}'


def group(name: str, include: str, extra: str = "") -> str:
    return f'[[groups]]\nname = "{name}"\ninclude = [{include}]\n{extra}'


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, SOURCE)
    return str(info.value)


@pytest.mark.parametrize(
    ("tls", "policies", "path"),
    [
        (
            "",
            policy("allow", "{ valid_certificate = true }"),
            "$.apps[0].policies[0].include[0].valid_certificate",
        ),
        (
            TLS_TABLE,
            policy("service_auth", '{ common_name = ["svc-a"] }'),
            "$.apps[0].policies[0].include[0].common_name",
        ),
        (
            TLS_TABLE + 'client_ca = ""\n',
            policy("allow", "{ everyone = true }", "require = [{ valid_certificate = true }]\n"),
            "$.apps[0].policies[0].require[0].valid_certificate",
        ),
        (
            "",
            policy("allow", "{ everyone = true }", 'exclude = [{ common_name = ["x"] }]\n'),
            "$.apps[0].policies[0].exclude[0].common_name",
        ),
        # inside a group, and two deep: the error names the group's own rule
        (
            "",
            group("machines", "{ valid_certificate = true }") + policy("allow", '{ group = ["machines"] }'),
            "$.groups[0].include[0].valid_certificate",
        ),
        (
            TLS_TABLE,
            group("machines", "{ everyone = true }", 'exclude = [{ common_name = ["old"] }]\n')
            + group("fleet", '{ group = ["machines"] }')
            + policy("service_auth", '{ group = ["fleet"] }'),
            "$.groups[0].exclude[0].common_name",
        ),
        (
            "",
            group("fleet", '{ group = ["machines"] }')
            + group("machines", '{ common_name = ["svc-a"] }')
            + policy("service_auth", "{ any_service_token = true }", 'require = [{ group = ["fleet"] }]\n'),
            "$.groups[1].include[0].common_name",
        ),
    ],
)
def test_certificate_selector_needs_client_ca(tls: str, policies: str, path: str) -> None:
    message = error(tls + app(policies))
    assert message == (
        f"{SOURCE}: {path}: Expected [server.tls] client_ca to be set: without it no client "
        "certificate is asked for, so this rule could never match"
    )


@pytest.mark.parametrize(
    ("include", "path", "wording"),
    [
        ("{ valid_certificate = false }", "include[0].valid_certificate", "Expected true"),
        ("{ common_name = [] }", "include[0].common_name", "Expected at least one value"),
        ('{ common_name = ["a", "a"] }', "include[0].common_name[1]", "'a' is listed twice"),
        ('{ common_name = [""] }', "include[0].common_name[0]", "Expected a non-empty printable string"),
        ('{ common_name = ["a\\nb"] }', "include[0].common_name[0]", "Expected a non-empty printable string"),
        (
            '{ common_name = ["a"], valid_certificate = true }',
            "include[0]",
            "Expected exactly one selector",
        ),
    ],
)
def test_certificate_selector_values(include: str, path: str, wording: str) -> None:
    message = error(TLS_WITH_CA + app(policy("allow", include)))
    assert message.startswith(f"{SOURCE}: $.apps[0].policies[0].{path}: {wording}"), message


@pytest.mark.parametrize("action", ["allow", "deny", "bypass", "service_auth"])
def test_certificate_selectors_load_in_every_action(action: str) -> None:
    config = loads(TLS_WITH_CA + app(policy(action, '{ common_name = ["svc-a"] }')), SOURCE)
    assert config.server.tls is not None and config.server.tls.client_ca == "ca.pem"
    assert config.apps[0].policies[0].include[0].selector == "common_name"


def test_client_ca_is_off_by_default() -> None:
    config = loads(TLS_TABLE, SOURCE)
    assert config.server.tls is not None and config.server.tls.client_ca == ""


# -- the TLS context ------------------------------------------------------------------


def test_context_verifies_with_client_ca_only(tmp_path: Path) -> None:
    certs = client_certs(tmp_path)
    ctx = make_ssl_context(
        TLS(str(certs.server.cert), str(certs.server.key), client_ca=str(certs.client_ca.cert_path))
    )
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    # Exactly the configured CA: no system store, so no public CA vouches for a client.
    assert [dict(item[0] for item in c["subject"])["commonName"] for c in ctx.get_ca_certs()] == [
        "Test Client CA"
    ]
    assert ctx.options & ssl.OP_NO_RENEGOTIATION


def test_context_without_client_ca_asks_for_no_certificate(tmp_path: Path) -> None:
    certs = client_certs(tmp_path)
    ctx = make_ssl_context(TLS(str(certs.server.cert), str(certs.server.key)))
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.get_ca_certs() == []


@pytest.mark.parametrize("content", [None, b"", b"not a certificate\n", b"key"])
def test_unreadable_client_ca_is_a_clear_error(tmp_path: Path, content: bytes | None) -> None:
    certs = client_certs(tmp_path / "certs")
    ca = tmp_path / "ca.pem"
    if content == b"key":
        ca.write_bytes(certs.alice.key.read_bytes())  # a private key, no certificate
    elif content is not None:
        ca.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        make_ssl_context(TLS(str(certs.server.cert), str(certs.server.key), client_ca=str(ca)))
    assert str(info.value).startswith(f"$.server.tls.client_ca: cannot load CA file {str(ca)!r}: ")


# -- edge check and edge explain ------------------------------------------------------


def write(tmp_path: Path, client_ca: str, policies: str) -> Path:
    certs = client_certs(tmp_path / "certs")
    path = tmp_path / "edge.toml"
    path.write_text(
        '[server]\nlisten = ["127.0.0.1:8443"]\naccess_log = "off"\n'
        f'[server.tls]\ncert = "{certs.server.cert}"\nkey = "{certs.server.key}"\nclient_ca = "{client_ca}"\n'
        + app(policies)
    )
    return path


def test_check_shows_client_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "certs" / "test-client-ca.pem"
    path = write(tmp_path, str(ca), policy("service_auth", '{ common_name = ["svc-a"] }'))
    assert main(["check", "-c", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"  client_ca:  {ca} (client certificates asked for, optional)" in out


def test_check_refuses_a_missing_client_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.pem"
    path = write(tmp_path, str(missing), policy("service_auth", '{ common_name = ["svc-a"] }'))
    assert main(["check", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"edge: {path}: $.server.tls.client_ca: cannot load CA file {str(missing)!r}: " in err
    assert "Traceback" not in err


def test_explain_simulates_a_verified_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "unused.pem", policy("service_auth", '{ common_name = ["svc-a"] }'))
    url = "https://svc.test/x"
    assert main(["explain", "-c", str(path), "GET", url, "--client-cn", "svc-a"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "cert:     verified against client_ca, CN 'svc-a'" in out
    assert '  policy "p" (service_auth): match' in out
    assert 'decision: Forward: service_auth: policy "p"' in out
    assert main(["explain", "-c", str(path), "GET", url, "--client-cn", "alice"]) == EXIT_OK
    out = capsys.readouterr().out
    assert '  policy "p" (service_auth): include: no rule matched' in out
    assert "decision: Deny:" in out
    assert main(["explain", "-c", str(path), "GET", url]) == EXIT_OK
    out = capsys.readouterr().out
    assert "cert:" not in out
    assert '  policy "p" (service_auth): skipped: no valid service token or client certificate' in out
