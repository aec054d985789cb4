"""The command line, run as a user runs it: `python -m edge ...`.

Exit codes: 0 ok, 2 configuration error, 1 anything else; errors are one line
on stderr, never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, self_signed_cert

import edge

TIMEOUT = 20  # seconds; a hung CLI fails the test instead of the suite


def run_edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edge: ")
    return lines[0]


def test_version() -> None:
    result = run_edge("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edge {edge.__version__}"


def test_the_console_script_is_the_cli() -> None:
    """`edge` as installed (bin/edge runs .venv/bin/edge): pyproject's entry
    point must name the function, not the package that holds it."""
    script = Path(sys.executable).parent / "edge"
    assert script.exists(), "the project is installed into the interpreter running the tests"
    result = subprocess.run([str(script), "--version"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, f"edge {edge.__version__}"), result.stderr


def test_no_command_is_a_usage_error() -> None:
    result = run_edge()
    assert result.returncode == 2
    assert "usage: edge" in result.stderr


def test_check_default_config() -> None:
    result = run_edge("check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "conf/edge.toml: ok"
    text = result.stdout
    assert "listen:     http://127.0.0.1:8080" in text
    assert "workers:    1" in text
    assert "tls:        off" in text
    assert "timeouts:   header 10 s, body idle 30 s, keep-alive 75 s, drain 30 s" in text
    assert result.stderr == ""


def test_check_the_worked_team_example() -> None:
    """conf/team.toml is the README's worked example of groups, lists and the
    sign-in selectors: `edge check` accepts it as shipped, with no warning."""
    result = run_edge("check", "-c", "conf/team.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "conf/team.toml: ok"
    assert '  group "admins": 1 include, 2 require, 0 exclude; used by admin/admins' in result.stdout
    assert result.stderr == ""


def test_check_prints_the_shutdown_delay_when_set(tmp_path: Path) -> None:
    path = tmp_path / "delay.toml"
    path.write_text("[server]\nshutdown_delay = 15.0\ndrain_timeout = 20.0\n")
    result = run_edge("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "keep-alive 75 s, drain 20 s, shutdown delay 15 s (readiness 503 first)" in result.stdout
    assert "shutdown delay" not in run_edge("check").stdout  # off by default, not mentioned


def test_check_config_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text('[server]\nlisten = ["[::1]:9000", "127.0.0.1:9001"]\nworkers = 3\nserver_header = ""\n')
    result = run_edge("check", env={"EDGE_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{path}: ok"
    assert "http://[::1]:9000, http://127.0.0.1:9001" in result.stdout
    assert "workers:    3" in result.stdout
    assert "(no Server header)" in result.stdout


def test_check_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nheader_timeout = -1\n")
    result = run_edge("check", "-c", str(path))
    assert result.returncode == 2
    assert one_error_line(result) == f"edge: {path}: $.server.header_timeout: Expected float >= 0.1, got -1"
    assert result.stdout == ""


def test_check_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nworker = 2\n")
    result = run_edge("check", "--config", str(path))
    assert result.returncode == 2
    assert one_error_line(result) == f"edge: {path}: $.server: unknown key 'worker' (did you mean 'workers'?)"


def test_check_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\n")
    result = run_edge("check", "-c", str(path))
    assert result.returncode == 2
    assert one_error_line(result).startswith(f"edge: {path}: invalid TOML: ")


def test_serve_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:0", "nonsense"]\n')
    result = run_edge("serve", "-c", str(path))
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"edge: {path}: $.server.listen[1]: Expected 'host:port' or '[ipv6]:port', got 'nonsense'"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    for command in ("check", "serve"):
        result = run_edge(command, "-c", str(path))
        assert result.returncode == 2
        assert one_error_line(result) == f"edge: {path}: cannot read: No such file or directory"


def test_serve_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in (1, 2):
            path = tmp_path / f"busy{workers}.toml"
            path.write_text(
                f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = {workers}\naccess_log = "off"\n'
            )
            result = run_edge("serve", "-c", str(path))
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr
            last = result.stderr.splitlines()[-1]
            assert last == f"edge: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_serve_access_log_cannot_be_opened(tmp_path: Path) -> None:
    # With workers > 1 this used to make every worker die at startup and be
    # restarted forever; now the supervisor refuses before forking.
    target = tmp_path / "no-such-dir" / "access.log"
    for workers in (1, 2):
        path = tmp_path / f"log{workers}.toml"
        path.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = {workers}\naccess_log = "{target}"\n')
        result = run_edge("serve", "-c", str(path))
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        last = result.stderr.splitlines()[-1]
        assert last == f"edge: cannot open access log {target}: No such file or directory"


def test_tls_files_missing(tmp_path: Path) -> None:
    path = tmp_path / "tls.toml"
    cert, key = tmp_path / "missing-cert.pem", tmp_path / "missing-key.pem"
    path.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\n[server.tls]\ncert = "{cert}"\nkey = "{key}"\n')
    for command in ("check", "serve"):
        result = run_edge(command, "-c", str(path))
        assert result.returncode == 2
        line = one_error_line(result)
        assert line.startswith(f"edge: {path}: $.server.tls: cannot load cert '{cert}'")
        assert "No such file or directory" in line


def test_tls_key_does_not_match(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    cert, _ = self_signed_cert(one)
    _, key = self_signed_cert(other)
    path = tmp_path / "tls.toml"
    path.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\n[server.tls]\ncert = "{cert}"\nkey = "{key}"\n')
    result = run_edge("check", "-c", str(path))
    assert result.returncode == 2
    assert one_error_line(result).startswith(f"edge: {path}: $.server.tls: cannot load cert ")


def test_check_tls_ok(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    path = tmp_path / "tls.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:8443"]\n[server.tls]\ncert = "{cert}"\nkey = "{key}"\n'
        'min_version = "1.3"\n'
    )
    result = run_edge("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "listen:     https://127.0.0.1:8443" in result.stdout
    assert "tls:        min TLS 1.3" in result.stdout


# -- the login service's commands and checks ----------------------------------------


def test_password_hashes_what_stdin_gives() -> None:
    from edge.login.passwords import verify_password

    result = subprocess.run(
        [sys.executable, "-m", "edge", "password"],
        cwd=ROOT,
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    encoded = result.stdout.strip()
    assert encoded.startswith("scrypt$15$8$1$")
    assert verify_password("correct horse", encoded) and not verify_password("correct", encoded)


def test_password_refuses_a_too_short_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge", "password"],
        cwd=ROOT,
        input="abc\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert one_error_line(result) == "edge: expected a password of at least 4 characters"


def _team_config(tmp_path: Path, listen: str, host: str = "auth.localhost") -> Path:
    from edge.login.passwords import hash_password

    path = tmp_path / "team.toml"
    path.write_text(
        f'[server]\nlisten = ["{listen}"]\naccess_log = "off"\n'
        f'[team]\nhost = "{host}"\nkey_dir = "{tmp_path / "keys"}"\n'
        '[[team.providers]]\ntype = "dev"\n'
        f'users = [{{ email = "a@example.com", password = "{hash_password("pw", 4)}" }}]\n'
    )
    return path


def test_check_summarises_the_team_without_creating_keys(tmp_path: Path) -> None:
    result = run_edge("check", "-c", str(_team_config(tmp_path, "127.0.0.1:8443")))
    assert result.returncode == 0, result.stderr
    assert "team auth.localhost: issuer http://auth.localhost:8443, ES256 keys in" in result.stdout
    assert "providers: dev (dev)" in result.stdout and "store:     memory" in result.stdout
    assert "tokens:    up to 86400 s (the longest session_duration)\n" in result.stdout
    # The built-in issuer's leeway is 60 s: 86400 + 60 + 600 + 1.
    hold = "logout:    a revocation is kept 87061 s (the lifetime above + leeway 60 s + 600 s,"
    assert hold in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / "keys").exists()  # check never creates the key directory


def test_check_warns_about_the_dev_provider_off_loopback(tmp_path: Path) -> None:
    result = run_edge("check", "-c", str(_team_config(tmp_path, "0.0.0.0:8443", "auth.example.com")))
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert any("the dev provider is enabled and the edge listens on 0.0.0.0:8443" in w for w in warnings)
    assert any("auth.example.com need https" in w for w in warnings), warnings
