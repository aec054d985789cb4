"""The operator commands of the decision core: `edge check` (apps and
warnings), `edge explain`, `edge keys generate`, `edge token`. In-process."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import jwt
import pytest
from access_fixtures import NOW, default_jwks, mint

from edge.access.compile import compile_config
from edge.access.keysets import parse_jwks
from edge.cli.main import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, main
from edge.cli.tools import build_request, explain_text
from edge.config.load import load
from edge.login.keys import load_private, public_jwk, thumbprint

ISS = "https://auth.example.com"


def write_config(tmp_path: Path, apps: str, jwks_body: bytes | None = None) -> Path:
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_bytes(jwks_body or default_jwks())
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[server]
access_log = "off"

[[issuers]]
iss = "{ISS}"
jwks_file = "{jwks_path}"
algorithms = ["ES256", "RS256", "EdDSA"]
{apps}
"""
    )
    return path


APP = """
[[apps]]
name = "api"
domains = ["api.example.com", "*.api.example.com/v1"]
upstream = "http://127.0.0.1:9000"
aud = "api-aud"
same_site = "none"
[apps.cors]
allowed_origins = ["https://web.example.com"]
allowed_methods = ["GET"]
allow_all_headers = true
allow_credentials = true
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ email_domains = ["example.com"] }]
"""


def test_check_lists_apps_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, APP)
    assert main(["check", "-c", str(path)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert f"{path}: ok" in out
    assert '  app "api" -> http://127.0.0.1:9000' in out
    assert "    domains:  api.example.com, *.api.example.com/v1" in out
    assert "    aud:      api-aud" in out
    assert "    cors:     1 origin(s); GET; any header; credentials" in out
    assert f"  issuer {ISS}: ES256, RS256, EdDSA via {tmp_path / 'jwks.json'}" in out
    # The bound a logout's revocation relies on (the default: a day), and the
    # hold it gets: T + L + M + 600 s + 1 s past the logout (86400 + 60 + 600 + 1).
    assert "    tokens:   up to 86400 s (max_token_lifetime)\n" in out
    assert (
        "    logout:   a revocation is kept 87061 s (the lifetime above + leeway 60 s + 600 s, "
        "the largest leeway a reload may set, + 1 s)\n"
    ) in out
    assert "Authorization is allowed only implicitly" in err
    assert "same_site = 'none' needs a Secure cookie" in err


def test_check_shows_the_hold_of_an_issuers_own_lifetime_and_leeway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The two keys land in the [[issuers]] table write_config leaves open.
    path = write_config(tmp_path, "leeway = 30\nmax_token_lifetime = 3600\n" + APP)
    assert main(["check", "-c", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "    tokens:   up to 3600 s (max_token_lifetime)\n" in out
    # 3600 + 30 + 600 + 1: the reload margin is the same whatever the leeway is now.
    assert "    logout:   a revocation is kept 4231 s (the lifetime above + leeway 30 s + 600 s," in out


def test_check_reports_jwks_problems_as_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, APP, jwks_body=b"{}")
    assert main(["check", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"edge: {path}: $.issuers[0].jwks_file: ")


def test_explain_shows_policies_decision_and_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, APP)
    argv = ["explain", "-c", str(path), "GET", "https://api.example.com/x", "-H", "Accept: application/json"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert 'app "api" (pattern api.example.com, aud api-aud)' in out
    assert "token: refused: no token" in out
    assert "decision: Unauthorized: unauthenticated: no token" in out
    assert "  HTTP/1.1 401 Unauthorized" in out
    assert '  www-authenticate: Bearer realm="api.example.com"' in out


def test_explain_a_preflight(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, APP)
    argv = ["explain", "-c", str(path), "OPTIONS", "https://api.example.com/x"]
    argv += ["-H", "Origin: https://web.example.com", "-H", "Access-Control-Request-Method: GET"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "decision: Preflight: preflight: allowed" in out
    assert "  access-control-allow-origin: https://web.example.com" in out


def test_explain_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, APP)
    assert main(["explain", "-c", str(path), "GET", "ftp://x/"]) == EXIT_FAILURE
    assert main(["explain", "-c", str(path), "GET", "https://x/", "-H", "nocolon"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Expected an http:// or https:// URL" in err and "Expected -H 'Name: value'" in err


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_keys_generate_then_token_then_explain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alg: str
) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", "generate", "--out", str(keys), "--alg", alg]) == EXIT_OK
    (pem,) = keys.glob("*.pem")
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    jwks_body = (keys / "jwks.json").read_bytes()
    published, notes = parse_jwks(jwks_body)
    assert notes == [] and list(published) == [pem.stem]
    capsys.readouterr()

    argv = ["token", "--key", str(pem), "--iss", ISS, "--aud", "api-aud", "--email", "bob@example.com"]
    assert main([*argv, "--ttl", "600", "--groups", "eng, ops"]) == EXIT_OK
    token = capsys.readouterr().out.strip()
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": pem.stem, "typ": "JWT"}
    claims = jwt.decode(token, published[pem.stem], algorithms=[alg], audience="api-aud", issuer=ISS)
    assert claims["email"] == "bob@example.com" and claims["groups"] == ["eng", "ops"]
    assert claims["exp"] - claims["iat"] == 600

    path = write_config(tmp_path, APP, jwks_body=jwks_body)
    cookie = f"Cookie: CF_Authorization={token}"
    assert main(["explain", "-c", str(path), "GET", "https://api.example.com/", "-H", cookie]) == EXIT_OK
    out = capsys.readouterr().out
    assert 'decision: Forward: allow: policy "staff"' in out
    assert "  add:    cf-access-authenticated-user-email: bob@example.com" in out


def test_keys_generate_appends_for_rotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path)]) == EXIT_OK
    assert main(["keys", "generate", "--out", str(tmp_path), "--alg", "RS256"]) == EXIT_OK
    doc = json.loads((tmp_path / "jwks.json").read_bytes())
    assert [k["kty"] for k in doc["keys"]] == ["RSA", "EC"]  # newest first, the previous kept
    kids = {k["kid"] for k in doc["keys"]}
    assert kids == {p.stem for p in tmp_path.glob("*.pem")}


def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    # RFC 7638 section 3.1 example key and thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368Q"
        "QMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcR"
        "wr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_token_with_a_missing_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "--key", str(tmp_path / "nope.pem"), "--iss", ISS, "--aud", "a", "--email", "e@x.y"]
    assert main(argv) == EXIT_FAILURE
    assert "nope.pem" in capsys.readouterr().err


def test_the_demo_key_matches_the_shipped_jwks() -> None:
    root = Path(__file__).resolve().parents[2]
    key = load_private((root / "conf" / "example-key.pem").read_bytes())
    published, notes = parse_jwks((root / "conf" / "example-jwks.json").read_bytes())
    jwk = public_jwk(key)
    assert notes == [] and jwk["kid"] in published


@pytest.mark.parametrize(
    ("written", "explained"), [("options", "OPTIONS"), ("get", "GET"), ("patch", "patch")]
)
def test_explain_takes_the_method_as_a_browser_sends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str, explained: str
) -> None:
    """Methods are case-sensitive: only Fetch's six are upper-cased, `patch` stays `patch`."""
    path = write_config(tmp_path, APP)
    assert main(["explain", "-c", str(path), written, "https://api.example.com/x"]) == EXIT_OK
    assert f"request:  {explained} https://api.example.com/x" in capsys.readouterr().out


# -- groups and lists -----------------------------------------------------------------

TEAM_APP = """
[[groups]]
name = "staff"
include = [{ email_domains = ["example.com"] }]
exclude = [{ email_list = ["contractors"] }]

[[groups]]
name = "unused"
include = [{ ip_list = ["office"] }]

[[lists]]
name = "contractors"
type = "email"
file = "{contractors}"

[[lists]]
name = "office"
type = "ip"
items = ["192.0.2.0/24"]

[[apps]]
name = "api"
domains = ["api.example.com"]
upstream = "http://127.0.0.1:9000"
aud = "api-aud"
[[apps.policies]]
name = "staff"
action = "allow"
include = [{ group = ["staff"] }]
[[apps.policies]]
name = "office"
action = "allow"
include = [{ ip_list = ["office"] }]
"""


def team_config(tmp_path: Path, size: int) -> Path:
    contractors = tmp_path / "contractors.txt"
    lines = ["# contractors", "carol@example.com", *(f"c{i}@example.com" for i in range(size - 1))]
    contractors.write_text("\n".join(lines) + "\n")
    return write_config(tmp_path, TEAM_APP.replace("{contractors}", str(contractors)))


def test_check_summarises_groups_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = team_config(tmp_path, 3)
    assert main(["check", "-c", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert '  group "staff": 1 include, 0 require, 1 exclude; used by api/staff' in out
    assert '  group "unused": 1 include, 0 require, 0 exclude; not used' in out
    assert (
        f'  list "contractors": email, 3 entries, from {tmp_path / "contractors.txt"}; used by group staff'
        in out
    )
    assert '  list "office": ip, 1 entry; used by api/office, group unused' in out


def test_check_and_explain_count_distinct_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A list counts what it compiles to: an email listed again in another
    case, a network listed again (or as an address and as its /32) is one entry."""
    contractors = tmp_path / "contractors.txt"
    contractors.write_text("carol@example.com\nCarol@Example.com\ndave@example.com\n")
    office = 'items = ["192.0.2.0/24", "192.0.2.0/24", "198.51.100.7", "198.51.100.7/32"]'
    text = TEAM_APP.replace("{contractors}", str(contractors)).replace('items = ["192.0.2.0/24"]', office)
    path = write_config(tmp_path, text)
    assert main(["check", "-c", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f'  list "contractors": email, 2 entries (1 duplicate), from {contractors}; used by' in out
    assert '  list "office": ip, 2 entries (2 duplicates); used by' in out
    token = mint(aud="api-aud", email="carol@example.com").decode()
    cookie = f"Cookie: CF_Authorization={token}"
    req = build_request("GET", "https://api.example.com/", [cookie], "203.0.113.9")
    explained = explain_text(compile_config(load(path), str(path)), req, NOW)
    assert "carol@example.com in list (2 entries)" in explained
    assert "    include ip_list office: 203.0.113.9 not in list (2 entries)" in explained


def test_explain_goes_through_groups_and_lists_without_dumping_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = team_config(tmp_path, 100_000)
    token = mint(aud="api-aud", email="carol@example.com").decode()
    argv = [
        "explain",
        "-c",
        str(path),
        "GET",
        "https://api.example.com/",
        "-H",
        f"Cookie: CF_Authorization={token}",
    ]
    config = load(path)
    req = build_request(
        "GET", "https://api.example.com/", [f"Cookie: CF_Authorization={token}"], "198.51.100.7"
    )
    text = explain_text(compile_config(config, str(path)), req, NOW)
    assert text.splitlines()[4:9] == [
        '  policy "staff" (allow): exclude group staff -> email_list contractors: matched',
        "    include group staff -> email_domains: domain example.com listed",
        "    exclude group staff -> email_list contractors: carol@example.com in list (100000 entries)",
        '  policy "office" (allow): include: no rule matched',
        "    include ip_list office: 198.51.100.7 not in list (1 entry)",
    ]
    assert "c99@example.com" not in text
    assert main(argv) == EXIT_OK  # the command itself, on the real clock: the token is not yet valid there
    assert "token: refused" in capsys.readouterr().out


def test_check_warns_of_a_login_method_no_provider_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path,
        APP.replace(
            'include = [{ email_domains = ["example.com"] }]', 'include = [{ login_method = ["ssso"] }]'
        ),
    )
    assert main(["check", "-c", str(path)]) == EXIT_OK
    err = capsys.readouterr().err
    assert (
        "$.apps[0].policies[0].include[0].login_method[0]: login_method 'ssso' is not the id of a "
        "[[team.providers]] entry" in err
    )


def test_check_warns_of_a_login_method_no_provider_has_in_a_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    group = (
        '[[groups]]\nname = "sso"\ninclude = [{ everyone = true }]\n'
        'require = [{ login_method = ["okta", "ssso"] }]\n'
    )
    path = write_config(
        tmp_path,
        group
        + APP.replace('include = [{ email_domains = ["example.com"] }]', 'include = [{ group = ["sso"] }]'),
    )
    assert main(["check", "-c", str(path)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "$.groups[0].require[0].login_method[0]: login_method 'okta'" in err
    assert "$.groups[0].require[0].login_method[1]: login_method 'ssso'" in err


@pytest.mark.parametrize(
    ("listen", "warned"), [("0.0.0.0:9301", True), ("[::]:9301", True), ("127.0.0.1:9301", False)]
)
def test_check_warns_of_metrics_beyond_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str, warned: bool
) -> None:
    """Metrics name the apps, issuers and traffic, without authentication:
    legal on another interface (a remote Prometheus), but said out loud."""
    path = write_config(tmp_path, APP + f'\n[metrics]\nlisten = "{listen}"\n')
    assert main(["check", "-c", str(path)]) == EXIT_OK
    err = capsys.readouterr().err
    assert ("$.metrics.listen: metrics are served without authentication on " in err) is warned
