"""Markdown tables, built one way: the scene report, the regional run report, the
evaluation and promotion tables all call :func:`markdown_table`.

Cells are text with pipes escaped and line breaks flattened (either would break the
row); an empty cell is written ``| |``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["markdown_table"]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _row(cells: Iterable[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a table: the header, its rule, one line per row."""
    lines = [_row(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [_row(_cell(c) for c in row) for row in rows]
    return lines
