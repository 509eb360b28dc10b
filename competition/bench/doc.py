"""docs/benchmarks.md is shared by several benchmarks: each owns one marked section of it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from competition.atomic import write_text


def replace_section(path: Path, start: str, end: str, section: str) -> None:
    """Put `section` (which starts with `start` and ends with `end`) in place of the old one, or append it."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text(path, text)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub markdown table, one string per line: header, separator, then one line per row of cells."""
    return ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |", *("| " + " | ".join(row) + " |" for row in rows)]
