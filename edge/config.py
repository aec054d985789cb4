"""The configuration schema and loader.

Invariants:
- Every struct is frozen and forbids unknown fields: a typo is an error, never
  a silently ignored setting.
- Loading never touches the network or the event loop; it returns plain data.
- Every error is a `ConfigError` whose text names the file and the key path and
  says what was expected (``conf/edge.toml: $.server.header_timeout: Expected
  float >= 0.1, got -1``). Only the CLI turns it into an exit code.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

SECONDS = 1.0
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Constrained scalar types. A timeout of 0 would disable the protection it
# stands for, so every timeout is strictly positive; 0.1 s is the finest the
# server's timer sweep can honour (see server.SWEEP_INTERVAL).
Timeout = Annotated[float, Meta(ge=0.1, le=86400.0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
HeaderBytes = Annotated[int, Meta(ge=1 * KIB, le=1 * MIB)]
TargetBytes = Annotated[int, Meta(ge=64, le=1 * MIB)]
BodyBytes = Annotated[int, Meta(ge=0, le=1 << 50)]
Connections = Annotated[int, Meta(ge=1, le=1_000_000)]
Workers = Annotated[int, Meta(ge=1, le=256)]
# Printable ASCII words separated by single spaces, or "" for no header: h11
# refuses a value with leading or trailing whitespace (RFC 9110 5.5).
SERVER_HEADER_PATTERN = r"^(?:[\x21-\x7e]+(?: [\x21-\x7e]+)*)?$"
ServerHeader = Annotated[str, Meta(max_length=256, pattern=SERVER_HEADER_PATTERN)]

# A key path prefix that __post_init__ checks put in front of their message so
# the error names the exact field, not just the struct (msgspec reports the
# struct's path for errors raised in __post_init__).
_FIELD_MARK = "@@"


class ConfigError(Exception):
    """A configuration that cannot be used; the message is ready for a user."""


def _field_error(field: str, message: str) -> ValueError:
    return ValueError(f"{_FIELD_MARK}{field}{_FIELD_MARK}{message}")


class ListenAddress(Struct, frozen=True):
    host: str
    port: int

    def display(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# A host is an IPv4 address or a DNS name (resolved when binding); IPv6 needs [].
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})$")


def parse_listen(text: str) -> ListenAddress:
    """Parse ``host:port`` or ``[v6]:port``; raise ValueError with a clear reason."""
    m = _LISTEN_RE.match(text)
    if m is None:
        raise ValueError(f"Expected 'host:port' or '[ipv6]:port', got {text!r}")
    port = int(m["port"])
    if port > 65535:
        raise ValueError(f"Expected a port <= 65535, got {port}")
    host = m["v6"] or m["host"]
    if m["v6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(host))  # one spelling, so duplicates show
        except ValueError:
            raise ValueError(f"Expected an IPv6 address inside [], got {host!r}") from None
    return ListenAddress(host=host, port=port)


class TLS(Struct, frozen=True, forbid_unknown_fields=True):
    """TLS for the listeners; TLS 1.2+ with the ssl module's modern defaults."""

    cert: Annotated[str, Meta(min_length=1)]  # PEM certificate chain
    key: Annotated[str, Meta(min_length=1)]  # PEM private key
    min_version: str = "1.2"

    def __post_init__(self) -> None:
        if self.min_version not in ("1.2", "1.3"):
            raise _field_error("min_version", f"Expected '1.2' or '1.3', got {self.min_version!r}")


class Server(Struct, frozen=True, forbid_unknown_fields=True):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    workers: Workers = 1
    tls: TLS | None = None
    server_header: ServerHeader = "edge"
    # Limits.
    max_header_bytes: HeaderBytes = 16 * KIB
    max_target_bytes: TargetBytes = 8 * KIB
    max_body_bytes: BodyBytes = 1 * GIB
    max_connections: Connections = 10_000
    # Timeouts, in seconds.
    header_timeout: Timeout = 10 * SECONDS
    body_idle_timeout: Timeout = 30 * SECONDS
    keepalive_timeout: Timeout = 75 * SECONDS
    drain_timeout: Timeout = 30 * SECONDS
    # Access log: "off", "stdout", or a file path.
    access_log: Annotated[str, Meta(min_length=1)] = "stdout"

    def __post_init__(self) -> None:
        if not self.listen:
            raise _field_error("listen", "Expected at least one address")
        seen: set[tuple[str, int]] = set()
        for i, item in enumerate(self.listen):
            try:
                addr = parse_listen(item)
            except ValueError as exc:
                raise _field_error(f"listen[{i}]", str(exc)) from None
            if (addr.host, addr.port) in seen and addr.port != 0:
                raise _field_error(f"listen[{i}]", f"{item!r} is listed twice")
            seen.add((addr.host, addr.port))
        if self.max_target_bytes >= self.max_header_bytes:
            raise _field_error(
                "max_target_bytes",
                f"Expected less than max_header_bytes ({self.max_header_bytes}), got {self.max_target_bytes}",
            )

    @property
    def addresses(self) -> list[ListenAddress]:
        return [parse_listen(item) for item in self.listen]


class Proxy(Struct, frozen=True, forbid_unknown_fields=True):
    """How the edge talks to upstreams (defaults for every upstream)."""

    # Seconds to establish a connection (TCP and TLS); then 502.
    connect_timeout: Timeout = 5 * SECONDS
    # Seconds the upstream has to send a response head once the request is sent; then 504.
    response_timeout: Timeout = 60 * SECONDS
    # Seconds a response body may stall; then both connections are aborted.
    idle_timeout: Timeout = 60 * SECONDS
    # Idle keep-alive connections kept per upstream, and for how long.
    max_idle: Annotated[int, Meta(ge=0, le=10_000)] = 32
    pool_idle_timeout: Timeout = 30 * SECONDS
    # Verify upstream TLS certificates (https:// upstreams); extra CA bundle, if any.
    verify_tls: bool = True
    ca_file: str = ""
    # Until applications are configured: forward every request here ("" = off).
    default_upstream: str = ""


class Config(Struct, frozen=True, forbid_unknown_fields=True):
    server: Server = Server()
    proxy: Proxy = Proxy()


# -- loading ----------------------------------------------------------------

_PATH_RE = re.compile(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`$", re.S)
_PATH_PART_RE = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")


def _lookup(raw: Any, path: str) -> tuple[bool, Any]:
    """Find the value at a msgspec key path like ``$.server.listen[0]``."""
    node = raw
    for m in _PATH_PART_RE.finditer(path[1:]):
        key, index = m.group(1), m.group(2)
        if key is not None and isinstance(node, dict) and key in node:
            node = node[key]
        elif index is not None and isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        else:
            return False, None
    return True, node


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "an array"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # nan, inf, -inf: as TOML spells them (JSON would say null)
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


# msgspec speaks JSON ("object", "field"); a config file is TOML ("table", "key").
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING_RE = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")
_REGEX_RE = re.compile(r"^Expected `str` matching regex '(?P<pattern>.*)'$", re.S)
_TYPE_WORDS = {"`object | null`": "a table", "`object`": "a table", "`array`": "an array"}
_PATTERN_WORDS = {SERVER_HEADER_PATTERN: 'printable ASCII words separated by single spaces (or "" for none)'}


def _known_keys(path: str) -> list[str]:
    """The keys of the table at a key path like ``$.server.tls``."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for m in _PATH_PART_RE.finditer(path[1:]):
        info = _struct_of(info) or info
        if not isinstance(info, msgspec.inspect.StructType):
            return []
        fields = {f.encode_name: f.type for f in info.fields}
        if m.group(1) not in fields:
            return []
        info = fields[m.group(1)]
    struct = _struct_of(info)
    return [] if struct is None else [f.encode_name for f in struct.fields]


def _struct_of(info: msgspec.inspect.Type) -> msgspec.inspect.StructType | None:
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
        return structs[0] if structs else None
    return info if isinstance(info, msgspec.inspect.StructType) else None


def _reword(path: str, message: str) -> str:
    if m := _UNKNOWN_RE.match(message):
        key, known = m["key"], _known_keys(path)
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        return f"unknown key {key!r} (known keys: {', '.join(known)})" if known else f"unknown key {key!r}"
    if m := _MISSING_RE.match(message):
        return f"missing required key {m['key']!r}"
    if m := _REGEX_RE.match(message):
        words = _PATTERN_WORDS.get(m["pattern"].encode().decode("unicode_escape"))
        return f"Expected {words}" if words else message
    for word, toml_word in _TYPE_WORDS.items():
        message = message.replace(word, toml_word)
    return message


def format_validation_error(source: str, raw: Any, exc: msgspec.ValidationError) -> str:
    text = str(exc)
    m = _PATH_RE.match(text)
    path, message = ("$", text) if m is None else (m["path"], m["message"])
    if message.startswith(_FIELD_MARK):
        field, _, message = message[len(_FIELD_MARK) :].partition(_FIELD_MARK)
        path = f"{path}.{field}" if not field.startswith("[") else path + field
        return f"{source}: {path}: {message}"
    message = _reword(path, message).replace("`", "")
    if ", got " not in message and message.startswith("Expected"):
        found, value = _lookup(raw, path)
        if found:
            message = f"{message}, got {_show(value)}"
    return f"{source}: {path}: {message}"


def loads(text: str | bytes, source: str = "<config>") -> Config:
    """Decode and validate TOML text; raise ConfigError naming `source`."""
    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(format_validation_error(source, raw, exc)) from None


def load(path: str | Path) -> Config:
    """Read and validate the config file at `path`."""
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return loads(text, source)
