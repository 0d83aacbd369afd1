"""The rows as Markdown (a table per task, the notes on each network, the failures) and as JSON."""
from __future__ import annotations

from collections.abc import Sequence

from common.markdown import table
from vsmmseg.networks import EXACT, INFER_LEVERS, MMSEG, NETWORKS, TRAIN_LEVERS
from vsmmseg.records import Result, Row


def best_nlseg(row: Row) -> tuple[str, Result] | None:
    """The exact-levers column if measured, else nlseg as built: what the ratio compares mmseg with."""
    for column in (EXACT, "as_built"):
        if row.results.get(column) is not None:
            return column, row.results[column]
    return None


def format_table(rows: Sequence[Row], device: str = "cpu") -> str:
    """The Markdown tables (one per task), the like-for-like notes and any failures."""
    out = []
    for task, title in (("infer", "Inference"), ("train", "Train step")):
        task_rows = [row for row in rows if row.task == task]
        if not task_rows:
            continue
        columns = [c for c in (*INFER_LEVERS, *TRAIN_LEVERS, MMSEG) if any(c in row.results for row in task_rows)]
        columns = list(dict.fromkeys(columns))
        fast = COMPILED[task]
        compiled = any(row.results.get(fast) is not None for row in task_rows)
        head = ["network", *columns, "mmseg / nlseg", *(_compiled_head(task) if compiled else []),
                "peak MiB nlseg / mmseg", "params M nlseg / mmseg", "GFLOPs nlseg / mmseg"]
        body = []
        for row in task_rows:
            net = NETWORKS[row.network]
            cells = [f"{net.title} R-{row.depth}" + ("" if net.like_for_like else " †")]
            for column in columns:
                result = row.results.get(column)
                cells.append("—" if result is None else f"{result.median:.2f} s")
            best = best_nlseg(row)
            ref = row.results.get(MMSEG)
            extra = len(_compiled_head(task)) if compiled else 0
            if best is None or ref is None:
                cells += ["—"] * (4 + extra)
            else:
                column, ours = best
                cells.append(f"**{ref.median / ours.median:.2f}×** ({column})")
                if compiled:
                    cells += _compiled_cells(task, row.results.get(fast), ref)
                cells.append(f"{ours.peak_mib:.0f} / {ref.peak_mib:.0f}")
                cells.append(f"{ours.params_m:.1f} / {ref.params_m:.1f}")
                flops = (ours.gflops, ref.gflops)
                cells.append("—" if None in flops else f"{flops[0]:.0f} / {flops[1]:.0f}")
            body.append(cells)
        out += [f"### {title}", "", table(head, body), ""]
    names = list(dict.fromkeys(row.network for row in rows))
    out.append("Rows: " + "; ".join(
        f"**{NETWORKS[n].title}**{'' if NETWORKS[n].like_for_like else ' †'}: {NETWORKS[n].note}" for n in names))
    out.append("")
    out.append(
        "mmseg / nlseg: mmseg's median time over nlseg's (the `exact` column where measured, else as built); "
        "> 1 means nlseg is faster. A compiled column's time is a steady pass after compiling; its compile time is "
        "its first pass less a steady one; inference's per-image time over a run of "
        f"{IMAGES} images counts the compilation once: (compile + {IMAGES} x t) / {IMAGES}. Peak MiB: "
        + ("CUDA memory allocated during the pass above what the model and its state hold" if device == "cuda"
           else "resident memory the pass adds above the process with its model loaded")
        + "; params without auxiliary heads; GFLOPs of the counted pass (2 per multiply-add): inference's "
        "forward; the train step's forward and backward, auxiliary heads included."
    )
    for row in rows:
        for column, error in row.errors.items():
            out.append(f"- failed: {row.network} R-{row.depth} {row.task} {column}: {error}")
    return "\n".join(out) + "\n"


COMPILED = {"infer": "exact_compile", "train": "compile"}
"""The compiled column of each task: nlseg's defaults + torch.compile (inference), the model compiled (train)."""
IMAGES = 100
"""A compiled inference column's compilation is counted once per run of this many images."""


def _compiled_head(task: str) -> list[str]:
    if task == "infer":
        return [f"{COMPILED[task]}: compile time", f"{COMPILED[task]}: per image over {IMAGES} images",
                f"mmseg / {COMPILED[task]} ({IMAGES} images)"]
    return [f"{COMPILED[task]}: compile time", f"mmseg / {COMPILED[task]} (steady step)"]


def _compiled_cells(task: str, fast: Result | None, ref: Result) -> list[str]:
    """The compiled column's compile time and ratio; inference's over a run of IMAGES images, the compilation
    counted once: (compile + IMAGES x t) / IMAGES."""
    if fast is None:
        return ["—"] * len(_compiled_head(task))
    compile_s = "—" if fast.compile_s is None else f"{fast.compile_s:.0f} s"
    if task == "infer":
        per_image = fast.per_image(IMAGES)
        return [compile_s, f"{per_image:.2f} s", f"{ref.median / per_image:.2f}×"]
    return [compile_s, f"{ref.median / fast.median:.2f}×"]


def rows_to_json(rows: Sequence[Row]) -> list[dict]:
    """What ``--json`` writes: per row, each column's timed passes, median, peak, parameters, GFLOPs; errors."""
    return [
        {
            "network": row.network,
            "depth": row.depth,
            "task": row.task,
            "results": {
                column: None if r is None else {
                    "times_s": r.times, "median_s": r.median, "peak_mib": r.peak_mib,
                    "params_m": r.params_m, "gflops": r.gflops, "first_s": r.first_s,
                }
                for column, r in row.results.items()
            },
            "errors": row.errors,
        }
        for row in rows
    ]

