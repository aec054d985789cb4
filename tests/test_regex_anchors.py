"""No pattern in edge/ ends with `$`: it also matches before a trailing
newline, so a value checked with re.match(r"^...$") let "value\\n" through
(a listen address, a domain, an origin, an app's name). `\\Z` ends at the end."""

from __future__ import annotations

import ast
from pathlib import Path

EDGE = Path(__file__).resolve().parent.parent / "edge"


def dollar_anchored(source: str, where: str) -> list[str]:
    """Pattern literals passed to re.compile that end in an unescaped `$`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "compile" or not node.args:
            continue
        pattern = node.args[0]
        parts = [pattern] if isinstance(pattern, ast.Constant) else []
        if isinstance(pattern, ast.JoinedStr):
            parts = [v for v in pattern.values if isinstance(v, ast.Constant)][-1:]
        for part in parts:
            text = part.value
            if isinstance(text, str | bytes):
                tail = text[-2:] if isinstance(text, str) else text[-2:].decode("latin-1")
                if tail.endswith("$") and not tail.endswith("\\$"):
                    found.append(f"{where}:{node.lineno}")
    return found


def test_no_pattern_ends_with_a_dollar() -> None:
    found = [
        hit for path in sorted(EDGE.rglob("*.py")) for hit in dollar_anchored(path.read_text(), path.name)
    ]
    assert not found, "end patterns with \\Z, not $:\n" + "\n".join(found)


def test_the_scan_finds_one() -> None:
    source = (
        'import re\nA = re.compile(r"^a$")\nB = re.compile(rb"^b\\Z")\n'
        'C = re.compile(rf"^{x}c$")\nD = re.compile(r"\\$")\n'
    )
    assert dollar_anchored(source, "s.py") == ["s.py:2", "s.py:4"]
