"""The README renders as written: every fenced block is closed before the
next section starts (an unclosed Mermaid block once swallowed ## Install)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def fenced_blocks(lines: list[str]) -> tuple[list[tuple[int, int]], int | None]:
    """(first line, last line) of each fenced block, 1-based, and the line
    of a fence left open at the end, if any."""
    blocks: list[tuple[int, int]] = []
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start = number
            elif line.strip() == "```":
                blocks.append((start, number))
                start = None
            else:  # an opening fence where a closing one was due
                return blocks, start
    return blocks, start


def test_every_fence_is_closed_before_the_next_heading() -> None:
    lines = README.read_text().splitlines()
    blocks, left_open = fenced_blocks(lines)
    assert left_open is None, f"README.md:{left_open}: a fenced block is never closed"
    for first, last in blocks:
        inside = [n for n in range(first, last) if lines[n - 1].startswith("## ")]
        assert not inside, f"README.md:{first}: a section heading (line {inside[0]}) inside a fenced block"


def test_the_check_finds_an_unclosed_block() -> None:
    text = ["```mermaid", "flowchart LR", "", "## Install", "", "```sh", "pip install .", "```"]
    assert fenced_blocks(text)[1] == 1
