"""The one writer of every efficiency table: records -> a Markdown table (and notes) -> JSON.

A record is a flat dict of plain values (str, int, float, None). A :class:`Column` says how one of them
is shown; a :class:`Report` is the records, the columns, a line about the run above the table and notes
below it. ``Report.markdown()`` is what ``nlseg bench`` prints; ``Report.write_json(path)`` writes the
records as a JSON list.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Column", "Report", "fmt", "ratio", "size_text", "text_column"]

MISSING = "—"


def fmt(value: object, spec: str = "", missing: str = MISSING) -> str:
    """``value`` formatted with ``spec``; ``missing`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    return None if a is None or b is None or b == 0 else a / b


def size_text(size: Sequence[int]) -> str:
    """(H, W) -> ``"HxW"`` (rows x columns)."""
    return f"{size[0]}x{size[1]}"


@dataclass(frozen=True)
class Column:
    """One column of a Markdown table.

    Args:
        title: the header cell.
        value: a record key, or a function of the record giving the cell's value.
        spec: format spec of the value (``".1f"``); "" prints it as it is.
        suffix: text after a present value (``"×"``).
        missing: the cell when the value is None or NaN.
        numeric: right-aligned.
    """

    title: str
    value: str | Callable[[dict], object]
    spec: str = ""
    suffix: str = ""
    missing: str = MISSING
    numeric: bool = True

    def cell(self, record: dict) -> str:
        """The formatted cell of ``record``."""
        value = self.value(record) if callable(self.value) else record[self.value]
        text = fmt(value, self.spec, missing="")
        return text + self.suffix if text else self.missing


def text_column(title: str, key: str) -> Column:
    """A left-aligned column printing ``record[key]`` as it is."""
    return Column(title, key, numeric=False)


@dataclass(frozen=True)
class Report:
    """Records of one efficiency table, how to show them, and what to say around them.

    Args:
        records: one flat dict per row.
        columns: the table's columns.
        header: a line above the table (the run's device and yardstick).
        notes: paragraphs below the table.
    """

    records: list[dict]
    columns: tuple[Column, ...]
    header: str = ""
    notes: tuple[str, ...] = field(default=())

    def table(self) -> str:
        """The Markdown table alone."""
        lines = [
            "| " + " | ".join(c.title for c in self.columns) + " |",
            "|" + "|".join("---:" if c.numeric else "---" for c in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(c.cell(r) for c in self.columns) + " |" for r in self.records]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The header line, the table and the notes, separated by blank lines."""
        return "\n\n".join(part for part in (self.header, self.table(), *self.notes) if part)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the records to ``path`` as a JSON list."""
        with open(path, "w") as f:
            json.dump(self.records, f, indent=2)
