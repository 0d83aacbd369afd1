"""A Markdown table from a header and rows of cells, as the benchmark scripts print and report them.

(``nlseg.analysis.report.Report`` is nlseg's table writer; these scripts cannot import nlseg in every
process they run in, and their tables align every column left.)
"""
from __future__ import annotations

from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``| a | b |`` lines: the header, its ``|---|`` rule, one line per row (cells shown with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
