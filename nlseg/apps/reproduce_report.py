"""The summary of ``nlseg reproduce``: mean ± std per row, the ordering against the paper's, a Markdown table, a plot.

The spread is the sample standard deviation over seeds (n - 1 in the denominator; 0 for one seed). Rows are
ordered by mean mIoU and compared with the paper's order pair by pair: a pair inverts when the paper puts one
row above the other and the runs put it below (or level). An inversion counts as within one std when the two
means lie no further apart than the larger of the two rows' std.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nlseg.apps.reproduce_tables import ReproTable

__all__ = ["Inversion", "RowSummary", "Summary", "mean_std", "ordering", "plot_summary", "render", "summarize"]


@dataclass(frozen=True)
class RowSummary:
    """One row over its seeds."""

    key: str
    label: str
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    seconds: tuple[float, ...]
    mean: float
    std: float
    delta: float
    paper: float
    paper_delta: float


@dataclass(frozen=True)
class Inversion:
    """Two rows the runs order against the paper: ``above`` is the paper's higher row."""

    above: str
    below: str
    paper_gap: float
    gap: float
    within_std: bool


@dataclass(frozen=True)
class Summary:
    """A table's summary: its rows in the table's order and the inversions of the paper's order."""

    table: str
    rows: tuple[RowSummary, ...]
    inversions: tuple[Inversion, ...]
    total_seconds: float

    @property
    def matches(self) -> bool:
        return not self.inversions

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches": self.matches}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of one value is 0."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def ordering(rows: Sequence[RowSummary]) -> tuple[Inversion, ...]:
    """Every pair the paper orders one way and the runs' means the other (or level), the paper's higher first."""
    out = []
    for a, b in itertools.combinations(rows, 2):
        if a.paper == b.paper:
            continue
        hi, lo = (a, b) if a.paper > b.paper else (b, a)
        if hi.mean <= lo.mean:
            gap = hi.mean - lo.mean
            out.append(Inversion(hi.label, lo.label, hi.paper - lo.paper, gap, abs(gap) <= max(hi.std, lo.std)))
    return tuple(out)


def summarize(table: ReproTable, records: Sequence[dict[str, Any]]) -> Summary:
    """Group the runs' records (``result.json``) by row, in the table's order; Δ against the Baseline's mean."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_row.setdefault(record["row"], []).append(record)
    stats = {}
    for key, group in by_row.items():
        group.sort(key=lambda r: r["seed"])
        stats[key] = (group, *mean_std([r["mIoU"] for r in group]))
    base_mean = stats[table.baseline.key][1]
    rows = []
    for row in table.rows:
        if row.key not in stats:
            continue
        group, mean, std = stats[row.key]
        rows.append(RowSummary(
            key=row.key, label=row.label, seeds=tuple(r["seed"] for r in group),
            values=tuple(r["mIoU"] for r in group), seconds=tuple(r["seconds"] for r in group),
            mean=mean, std=std, delta=mean - base_mean, paper=row.paper_miou,
            paper_delta=round(row.paper_miou - table.baseline.paper_miou, 2),
        ))
    total = sum(s for r in rows for s in r.seconds)
    return Summary(table.name, tuple(rows), ordering(rows), total)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def render(table: ReproTable, summary: Summary, *, size: str, iters: int) -> str:
    """The Markdown report: the table, the ordering report and the wall times of the runs."""
    seeds = summary.rows[0].seeds
    lines = [
        f"### {table.title}, at demo size ({size}: {iters} iterations per run, seeds {', '.join(map(str, seeds))})",
        "",
        "| row | mIoU (mean ± std) | per seed | Δ vs Baseline | paper mIoU | paper Δ | seconds per run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.rows:
        lines.append(
            f"| {r.label} | {r.mean:.2f} ± {r.std:.2f} | {' / '.join(f'{v:.2f}' for v in r.values)} "
            f"| {r.delta:+.2f} | {r.paper:.1f} | {r.paper_delta:+.1f} | {' / '.join(f'{s:.0f}' for s in r.seconds)} |"
        )
    by_mean = " > ".join(r.label for r in sorted(summary.rows, key=lambda r: -r.mean))
    by_paper = " > ".join(r.label for r in sorted(summary.rows, key=lambda r: -r.paper))
    lines += ["", f"Ordering by mean mIoU: {by_mean}", f"Ordering in the paper: {by_paper}"]
    if summary.matches:
        lines.append("The ordering matches the paper's.")
    else:
        lines.append(f"The ordering does not match the paper's: {len(summary.inversions)} of "
                     f"{math.comb(len(summary.rows), 2)} pairs invert.")
        for inv in summary.inversions:
            within = "within one std" if inv.within_std else "beyond one std"
            lines.append(f"- {inv.above} vs {inv.below}: the paper has {inv.above} ahead by {inv.paper_gap:.1f}, "
                         f"the runs {inv.gap:+.2f} ({within})")
    lines += ["", f"Wall time of the runs: {_minutes(summary.total_seconds)} min in all "
              f"({len(summary.rows) * len(seeds)} runs; a resumed run counts its last session only)."]
    return "\n".join(lines)


def plot_summary(table: ReproTable, summary: Summary, path: Path) -> Path | None:
    """Bars of each row's mean mIoU with ± std error bars, and of its Δ vs Baseline beside the paper's Δ.

    Returns:
        ``path``, or None when matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in summary.rows]
    x = list(range(len(labels)))
    fig, (left, right) = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * len(labels)), 8.0))  # one above the other
    left.bar(x, [r.mean for r in summary.rows], yerr=[r.std for r in summary.rows], capsize=4, color="#4c72b0")
    low = min(r.mean - r.std for r in summary.rows)
    left.set_ylim(max(0.0, low - 5), min(100.0, max(r.mean + r.std for r in summary.rows) + 3))
    left.set_title("mIoU at demo size (mean ± std over seeds)")
    width = 0.38
    right.bar([i - width / 2 for i in x], [r.delta for r in summary.rows], width,
              yerr=[r.std for r in summary.rows], capsize=4, color="#4c72b0", label="these runs")
    right.bar([i + width / 2 for i in x], [r.paper_delta for r in summary.rows], width, color="#dd8452",
              label="paper (Cityscapes val)")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title("Δ mIoU vs Baseline")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_ylabel("mIoU (%)")
    fig.suptitle(table.title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
