"""edge.config: the schema, its constraints and the wording of its errors.

Pure: no sockets, no event loop. Errors are compared as whole lines where the
wording matters to a user, and by file + key path elsewhere.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import msgspec
import pytest

from edge.config.errors import ConfigError
from edge.config.load import load, loads
from edge.config.schema import TLS, Config, Server
from edge.config.syntax import ListenAddress, parse_listen

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "conf" / "edge.toml"
SOURCE = "conf/edge.toml"

# The options conf/edge.toml sets to another value than the default, each
# saying so in its comment: the access log goes to a file so that the demo's
# startup banner stays readable (the quick start, issue 11).
NOT_DEFAULT = {("server", "access_log"): "var/access.log"}

TIMEOUTS = ["header_timeout", "body_idle_timeout", "keepalive_timeout", "drain_timeout"]


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, SOURCE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{SOURCE}: ")
    return message


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def server(**values: object) -> str:
    """A [server] table with `values` encoded as TOML."""
    return "[server]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


# -- the default config ------------------------------------------------------


def test_default_config_loads() -> None:
    config = load(DEFAULT_CONFIG)
    server = msgspec.structs.replace(Config().server, access_log=NOT_DEFAULT[("server", "access_log")])
    assert config.server == server and config.proxy == Config().proxy
    assert config.server.addresses == (ListenAddress("127.0.0.1", 8080),)


@pytest.mark.parametrize("section", ["server", "proxy"])
def test_default_config_lists_every_field_with_its_default(section: str) -> None:
    """conf/edge.toml promises every option with its default value."""
    tables = tomllib.loads(DEFAULT_CONFIG.read_text())
    assert section in tables, f"conf/edge.toml has no [{section}] table"
    written = tables[section]
    defaults = getattr(Config(), section)
    # Optional sub-tables (server.tls) are off by default: TOML cannot spell None.
    expected = {name for name in defaults.__struct_fields__ if getattr(defaults, name) is not None}
    for name in expected:
        assert name in written, f"conf/edge.toml does not list {section}.{name}"
        default = NOT_DEFAULT.get((section, name), getattr(defaults, name))
        assert written[name] == default, f"{section}.{name} differs from its default"
    assert set(written) == expected


def test_default_config_documents_tls_keys() -> None:
    text = DEFAULT_CONFIG.read_text()
    assert "# [server.tls]" in text
    for name in TLS.__struct_fields__:
        assert f"# {name} = " in text


def test_empty_file_means_defaults() -> None:
    assert loads("", SOURCE) == Config()
    assert loads("[server]\n", SOURCE) == Config()


# -- exact wording -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nheader_timeout = -1", "$.server.header_timeout: Expected float >= 0.1, got -1"),
        ("[server]\nworkers = 0", "$.server.workers: Expected int >= 1, got 0"),
        ("[server]\nworkers = 257", "$.server.workers: Expected int <= 256, got 257"),
        ("[server]\nworkers = '2'", "$.server.workers: Expected int, got str"),
        ("[server]\nlisten = []", "$.server.listen: Expected at least one address"),
        (
            "[server]\nlisten = ['127.0.0.1:80', '127.0.0.1:80']",
            "$.server.listen[1]: '127.0.0.1:80' is listed twice",
        ),
        (
            "[server]\nlisten = ['8080']",
            "$.server.listen[0]: Expected 'host:port' or '[ipv6]:port', got '8080'",
        ),
        ("[server]\nlisten = ['a:70000']", "$.server.listen[0]: Expected a port <= 65535, got 70000"),
        (
            "[server]\nmax_target_bytes = 16384",
            "$.server.max_target_bytes: Expected less than max_header_bytes (16384), got 16384",
        ),
        ("[server]\naccess_log = ''", '$.server.access_log: Expected str of length >= 1, got ""'),
        (
            "[server]\nheader_timout = 5",
            "$.server: unknown key 'header_timout' (did you mean 'header_timeout'?)",
        ),
        ("colour = 1", f"$: unknown key 'colour' (known keys: {', '.join(Config.__struct_fields__)})"),
        (
            "[server.tls]\ncert = 'c'\nkey = 'k'\npassword = 'x'",
            "$.server.tls: unknown key 'password' (known keys: cert, key, min_version, client_ca)",
        ),
        ("[server.tls]\ncert = 'c'", "$.server.tls: missing required key 'key'"),
        ("server = 1", "$.server: Expected a table, got int"),
        ("[server]\ntls = true", "$.server.tls: Expected a table, got bool"),
        ("[server]\nlisten = '127.0.0.1:80'", "$.server.listen: Expected an array, got str"),
        (
            "[server]\nserver_header = 'edge  1'",
            "$.server.server_header: Expected printable ASCII words separated by single spaces "
            '(or "" for none), got "edge  1"',
        ),
        ("[server]\nheader_timeout = nan", "$.server.header_timeout: Expected float >= 0.1, got nan"),
        (
            "[server.tls]\ncert = 'c'\nkey = 'k'\nmin_version = '1.1'",
            "$.server.tls.min_version: Expected '1.2' or '1.3', got '1.1'",
        ),
    ],
)
def test_exact_error_text(text: str, expected: str) -> None:
    assert error_of(text) == f"{SOURCE}: {expected}"


def test_invalid_toml() -> None:
    message = error_of("[server\nlisten = 1")
    assert message.startswith(f"{SOURCE}: invalid TOML: ")
    assert "line 1" in message


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nkeepalive_timeout = 0\n")
    with pytest.raises(
        ConfigError, match=r"^.*bad\.toml: \$\.server\.keepalive_timeout: Expected float >= 0\.1"
    ):
        load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


# -- timeouts ----------------------------------------------------------------


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize("value", [0, 0.0, 0.09, -1, -0.5, 86400.5, float("inf")])
def test_timeout_out_of_range(name: str, value: float) -> None:
    assert error_of(server(**{name: value})).startswith(f"{SOURCE}: $.server.{name}: Expected float ")


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize("value", [0.1, 1, 2.5, 86400])
def test_timeout_in_range(name: str, value: float) -> None:
    got = getattr(loads(server(**{name: value})).server, name)
    assert got == value
    assert isinstance(got, float)


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize("value", ["1", True, [1]])
def test_timeout_wrong_type(name: str, value: object) -> None:
    assert error_of(server(**{name: value})).startswith(f"{SOURCE}: $.server.{name}: Expected float, got ")


def test_shutdown_delay_is_off_by_default() -> None:
    assert Server().shutdown_delay == 0.0


@pytest.mark.parametrize(("value", "bound"), [(-0.5, ">= 0.0"), (-1, ">= 0.0"), (86400.5, "<= 86400.0")])
def test_shutdown_delay_out_of_range(value: float, bound: str) -> None:
    assert error_of(server(shutdown_delay=value)) == (
        f"{SOURCE}: $.server.shutdown_delay: Expected float {bound}, got {value}"
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "2", True])
def test_shutdown_delay_not_a_number_of_seconds(value: object) -> None:
    message = error_of(server(shutdown_delay=value))
    assert message.startswith(f"{SOURCE}: $.server.shutdown_delay: Expected float")


@pytest.mark.parametrize("value", [0, 0.0, 0.05, 2, 86400])
def test_shutdown_delay_in_range(value: float) -> None:
    # 0 is allowed, unlike a timeout's: no delay is today's drain at once.
    got = loads(server(shutdown_delay=value)).server.shutdown_delay
    assert got == value
    assert isinstance(got, float)


# -- listen ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:8080", "::1", 8080),
        ("[::]:443", "::", 443),
        ("[0:0::1]:80", "::1", 80),  # normalised, so duplicates are caught
        ("[::ffff:127.0.0.1]:80", "::ffff:7f00:1", 80),
    ],
)
def test_parse_listen(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == ListenAddress(host, port)


@pytest.mark.parametrize(
    "text",
    ["", "8080", ":8080", "127.0.0.1", "127.0.0.1:", "::1:8080", "[::1]", "[::1]8080", "[nothex]:80",
     "[1.2.3.4]:80", "host:port", "a b:80", "*:80", "127.0.0.1:123456", "127.0.0.1:-1", "[::1]:80 "],
)  # fmt: skip
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"^Expected "):
        parse_listen(text)


def test_listen_display_round_trips() -> None:
    for text in ["127.0.0.1:80", "[::1]:8080", "example.com:1"]:
        assert parse_listen(text).display() == text


def test_listen_several_and_port_zero_twice() -> None:
    s = loads(server(listen=["127.0.0.1:0", "127.0.0.1:0", "[::1]:9000", "127.0.0.1:9000"])).server
    assert [a.port for a in s.addresses] == [0, 0, 9000, 9000]


@pytest.mark.parametrize(
    ("listen", "index"),
    [
        (["127.0.0.1:80", "127.0.0.1:80"], 1),
        (["[::1]:80", "127.0.0.1:80", "[0::1]:80"], 2),
        (["a:1", "b:1", "c:1", "b:1"], 3),
    ],
)
def test_listen_duplicates(listen: list[str], index: int) -> None:
    message = error_of(server(listen=listen))
    assert message.startswith(f"{SOURCE}: $.server.listen[{index}]: ")
    assert message.endswith("is listed twice")


@pytest.mark.parametrize("item", [1, True, ["127.0.0.1:80"], {"host": "a"}])
def test_listen_item_wrong_type(item: object) -> None:
    assert error_of(server(listen=["127.0.0.1:80", item])).startswith(
        f"{SOURCE}: $.server.listen[1]: Expected str, got "
    )


def test_listen_bad_item_is_indexed() -> None:
    assert error_of(server(listen=["127.0.0.1:80", "[zz]:80"])) == (
        f"{SOURCE}: $.server.listen[1]: Expected 'host:port' or '[ipv6]:port', got '[zz]:80'"
    )


# -- sizes, counts, strings ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("workers", 1, 256),
        ("max_header_bytes", 1024, 1024 * 1024),
        ("max_target_bytes", 64, 1024 * 1024 - 1),
        ("max_body_bytes", 0, 1 << 50),
        ("max_connections", 1, 1_000_000),
    ],
)
def test_int_ranges(name: str, low: int, high: int) -> None:
    # The two head limits are checked against each other; keep the other one out of the way.
    others = {
        "max_target_bytes": {"max_header_bytes": 1024 * 1024},
        "max_header_bytes": {"max_target_bytes": 64},
    }
    extra = others.get(name, {})
    assert getattr(loads(server(**{name: low}, **extra)).server, name) == low
    assert getattr(loads(server(**{name: high}, **extra)).server, name) == high
    assert error_of(server(**{name: low - 1}, **extra)) == (
        f"{SOURCE}: $.server.{name}: Expected int >= {low}, got {low - 1}"
    )
    if name != "max_target_bytes":  # its upper bound is max_header_bytes, checked below
        assert error_of(server(**{name: high + 1})).startswith(f"{SOURCE}: $.server.{name}: Expected int <= ")


@pytest.mark.parametrize(
    "name", ["workers", "max_header_bytes", "max_target_bytes", "max_body_bytes", "max_connections"]
)
@pytest.mark.parametrize("value", [1.0, "10", True, [1]])
def test_int_wrong_type(name: str, value: object) -> None:
    assert error_of(server(**{name: value})).startswith(f"{SOURCE}: $.server.{name}: Expected int, got ")


@pytest.mark.parametrize(("target", "header"), [(2048, 2048), (4096, 2048), (8192, 8192)])
def test_target_must_be_below_header(target: int, header: int) -> None:
    assert error_of(server(max_target_bytes=target, max_header_bytes=header)) == (
        f"{SOURCE}: $.server.max_target_bytes: Expected less than max_header_bytes ({header}), got {target}"
    )


def test_target_below_header_ok() -> None:
    s = loads(server(max_target_bytes=2047, max_header_bytes=2048)).server
    assert (s.max_target_bytes, s.max_header_bytes) == (2047, 2048)


@pytest.mark.parametrize("value", ["edge", "", "edge/0.1 (linux)", "a b c", "x" * 256, "!~"])
def test_server_header_ok(value: str) -> None:
    assert loads(server(server_header=value)).server.server_header == value


@pytest.mark.parametrize(
    "value", [" edge", "edge ", "a  b", "a\tb", "a\r\nX-Evil: 1", "é", "\x00", "x" * 257]
)
def test_server_header_rejected(value: str) -> None:
    assert error_of(server(server_header=value)).startswith(f"{SOURCE}: $.server.server_header: Expected ")


def test_server_header_accepted_values_are_valid_h11_headers() -> None:
    # A value the schema accepts must never crash the server at startup.
    from edge.access.responses import Responses

    for value in ["edge", "", "edge/0.1 (linux)", "x" * 256]:
        Responses(loads(server(server_header=value)).server.server_header)


@pytest.mark.parametrize("value", ["off", "stdout", "/var/log/edge/access.log", "relative.log"])
def test_access_log_ok(value: str) -> None:
    assert loads(server(access_log=value)).server.access_log == value


def test_access_log_wrong_type() -> None:
    assert error_of(server(access_log=False)) == f"{SOURCE}: $.server.access_log: Expected str, got bool"


@pytest.mark.parametrize("value", [False, True])
def test_underscores_in_headers(value: bool) -> None:
    assert Server().underscores_in_headers is False  # dropped unless asked: the safe side
    assert loads(server(underscores_in_headers=value)).server.underscores_in_headers is value


def test_underscores_in_headers_wrong_type() -> None:
    assert (
        error_of(server(underscores_in_headers="on"))
        == f"{SOURCE}: $.server.underscores_in_headers: Expected bool, got str"
    )


# -- TLS ---------------------------------------------------------------------


def test_tls_ok() -> None:
    tls = loads("[server.tls]\ncert = 'c.pem'\nkey = 'k.pem'\n").server.tls
    assert tls == TLS(cert="c.pem", key="k.pem", min_version="1.2")
    tls = loads("[server.tls]\ncert = 'c.pem'\nkey = 'k.pem'\nmin_version = '1.3'\n").server.tls
    assert tls is not None and tls.min_version == "1.3"


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        ("key = 'k'", "$.server.tls: missing required key 'cert'"),
        ("cert = 'c'", "$.server.tls: missing required key 'key'"),
        ("cert = ''\nkey = 'k'", "$.server.tls.cert: Expected str of length >= 1"),
        ("cert = 'c'\nkey = ''", "$.server.tls.key: Expected str of length >= 1"),
        ("cert = 1\nkey = 'k'", "$.server.tls.cert: Expected str, got int"),
        ("cert = 'c'\nkey = 'k'\nmin_version = 1.2", "$.server.tls.min_version: Expected str, got float"),
        (
            "cert = 'c'\nkey = 'k'\nmin_version = 'TLSv1.3'",
            "$.server.tls.min_version: Expected '1.2' or '1.3'",
        ),
        ("cert = 'c'\nkey = 'k'\nmin_version = '1.0'", "$.server.tls.min_version: Expected '1.2' or '1.3'"),
        ("cert = 'c'\nkey = 'k'\nciphers = 'ALL'", "$.server.tls: unknown key 'ciphers'"),
    ],
)
def test_tls_errors(body: str, prefix: str) -> None:
    assert error_of(f"[server.tls]\n{body}\n").startswith(f"{SOURCE}: {prefix}")


# -- unknown keys and wrong types at every level -------------------------------


@pytest.mark.parametrize(
    ("text", "path", "key"),
    [
        ("servr = 1", "$", "servr"),
        ("[server]\n[other]\n", "$", "other"),
        ("[server]\nlisten_on = []", "$.server", "listen_on"),
        ("[server]\nWorkers = 2", "$.server", "Workers"),
        ("[server.tls]\ncert = 'c'\nkey = 'k'\nverify = true", "$.server.tls", "verify"),
        ("[server.limits]\nx = 1", "$.server", "limits"),
    ],
)
def test_unknown_keys(text: str, path: str, key: str) -> None:
    assert error_of(text).startswith(f"{SOURCE}: {path}: unknown key {key!r}")


def test_unknown_key_without_a_close_match_lists_the_known_ones() -> None:
    message = error_of("[server]\nzzz = 1")
    assert message.startswith(f"{SOURCE}: $.server: unknown key 'zzz' (known keys: listen, workers, tls, ")
    for name in Server.__struct_fields__:
        assert name in message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("server = []", "$.server"),
        ("server = 'x'", "$.server"),
        ("[server]\ntls = 'on'", "$.server.tls"),
        ("[server]\nworkers = 2.5", "$.server.workers"),
        ("[server]\nmax_body_bytes = '1G'", "$.server.max_body_bytes"),
        ("[server]\nserver_header = 1", "$.server.server_header"),
        ("[server]\nlisten = {a = 1}", "$.server.listen"),
    ],
)
def test_wrong_types(text: str, path: str) -> None:
    assert error_of(text).startswith(f"{SOURCE}: {path}: Expected ")


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.server.workers = 2  # type: ignore[misc]


@pytest.mark.parametrize("name", ["connect_timeout", "response_timeout", "idle_timeout", "pool_idle_timeout"])
def test_proxy_timeouts(name: str) -> None:
    assert error_of(f"[proxy]\n{name} = 0\n") == f"{SOURCE}: $.proxy.{name}: Expected float >= 0.1, got 0"
    assert getattr(loads(f"[proxy]\n{name} = 0.1\n").proxy, name) == 0.1


def test_proxy_unknown_key() -> None:
    assert error_of("[proxy]\nconnect_timout = 1\n") == (
        f"{SOURCE}: $.proxy: unknown key 'connect_timout' (did you mean 'connect_timeout'?)"
    )


# A trailing newline: `$` matches before one, so a pattern anchored with it
# let "value\n" through wherever a value is checked with re.match (domains
# are stripped of surrounding whitespace on purpose, so they are not here).
@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('[server]\nlisten = ["127.0.0.1:8080\\n"]\n', "$.server.listen[0]"),
        (
            '[[apps]]\nname = "a"\ndomains = ["a.example.com"]\nupstream = "http://127.0.0.1:9"\n'
            '[apps.cors]\nallowed_origins = ["https://web.example.com\\n"]\n'
            '[[apps.policies]]\nname = "p"\naction = "bypass"\ninclude = [{ everyone = true }]\n',
            "$.apps[0].cors.allowed_origins[0]",
        ),
        (
            '[[apps]]\nname = "a\\n"\ndomains = ["a.example.com"]\nupstream = "http://127.0.0.1:9"\n'
            '[[apps.policies]]\nname = "p"\naction = "bypass"\ninclude = [{ everyone = true }]\n',
            "$.apps[0].name",
        ),
    ],
)
def test_a_trailing_newline_is_not_a_valid_value(toml: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(toml, "t.toml")
    assert where in str(info.value)
