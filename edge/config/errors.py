"""Config errors and their wording: ``FILE: $.key.path: what was expected``.

Two sources feed one format: msgspec's decoding errors (types, bounds,
unknown or missing keys), reworded from JSON's vocabulary to TOML's, and the
`problem.Problem`s of the cross-field rules, whose path and message arrive as
values and are printed as they are.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

import msgspec

from edge.config.problem import KeyPath, Problem
from edge.config.schema import SERVER_HEADER_PATTERN, Config


class ConfigError(Exception):
    """A configuration that cannot be used; the message is ready for a user.
    Only the CLI turns it into an exit code. `problem` is the key path and
    message when the error is about one setting (`at`), so a caller that
    knows the file names it (`named`) without parsing the text."""

    def __init__(self, message: str, problem: Problem | None = None) -> None:
        super().__init__(message)
        self.problem = problem

    @classmethod
    def at(cls, path: KeyPath, message: str, source: str | None = None) -> ConfigError:
        """The error about the setting at `path`, in the one wording."""
        problem = Problem(path, message)
        return cls(format_problem(source, problem), problem)

    def named(self, source: str) -> ConfigError:
        """The same error naming the file it came from."""
        if self.problem is not None:
            return ConfigError.at(self.problem.path, self.problem.message, source)
        return ConfigError(f"{source}: {self}")


def key_path(path: KeyPath) -> str:
    """``("apps", 0, "name")`` -> ``$.apps[0].name``, as msgspec writes paths."""
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def format_problem(source: str | None, problem: Problem) -> str:
    """``FILE: $.key.path: message`` (without ``FILE: `` when the file is not
    known where the problem is found; `ConfigError.named` adds it)."""
    where = key_path(problem.path)
    return f"{where}: {problem.message}" if source is None else f"{source}: {where}: {problem.message}"


_PATH_RE = re.compile(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`\Z", re.S)
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
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`\Z")
_MISSING_RE = re.compile(r"^Object missing required field `(?P<key>[^`]*)`\Z")
_REGEX_RE = re.compile(r"^Expected `str` matching regex '(?P<pattern>.*)'\Z", re.S)
_TYPE_WORDS = {"`object | null`": "a table", "`object`": "a table", "`array`": "an array"}
_PATTERN_WORDS = {SERVER_HEADER_PATTERN: 'printable ASCII words separated by single spaces (or "" for none)'}


def _known_keys(path: str) -> list[str]:
    """The keys of the table at a key path like ``$.server.tls``."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for m in _PATH_PART_RE.finditer(path[1:]):
        if m.group(2) is not None:  # [n]: a table inside an array of tables
            if not isinstance(info, msgspec.inspect.ListType):
                return []
            info = info.item_type
            continue
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
    if path.endswith(".type") and message.startswith("Invalid value"):
        return f"Expected one of dev, oidc, got {message.removeprefix('Invalid value ')}"
    if m := _REGEX_RE.match(message):
        words = _PATTERN_WORDS.get(m["pattern"].encode().decode("unicode_escape"))
        return f"Expected {words}" if words else message
    for word, toml_word in _TYPE_WORDS.items():
        message = message.replace(word, toml_word)
    return message


def format_validation_error(source: str, raw: Any, exc: msgspec.ValidationError) -> str:
    """A decoding error in the file's words, with the offending value when
    msgspec's message does not show it."""
    text = str(exc)
    m = _PATH_RE.match(text)
    path, message = ("$", text) if m is None else (m["path"], m["message"])
    message = _reword(path, message).replace("`", "")
    if ", got " not in message and message.startswith("Expected"):
        found, value = _lookup(raw, path)
        if found:
            message = f"{message}, got {_show(value)}"
    return f"{source}: {path}: {message}"
