"""The manifest of measured figures in the docs: each block's name, the file that holds it, the command whose
standard output (the run's header, then the table and its notes) replaces it, and how long that takes.

In README.md and docs/*.md a measured block sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``;
``make bench`` (``python benchmarks/regenerate.py``) runs each command here and rewrites its block. A figure
with several commands gets their outputs one after the other, separated by a blank line.

Commands are written as a user types them: ``python`` is the Python running regenerate.py, ``nlseg`` is
``python -m nlseg``, and ``{mmseg_python}`` the mmseg venv's Python (``--mmseg-python``). Minutes are estimates
of wall time on this project's 2-core CPU with the machine to itself (2 torch threads); the sizes and repeats
below are chosen so that a full regeneration stays within about 50 minutes. Standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIGURES", "Figure", "total_minutes"]


@dataclass(frozen=True)
class Figure:
    """One measured block of the docs and the commands that regenerate it.

    Args:
        name: the marker's name (``<!-- bench:NAME -->``).
        doc: the file holding the block, relative to the repository root.
        commands: shell-like command lines, run one at a time from the repository root.
        minutes: estimated wall time of all of them on 2 idle cores.
        needs_mmseg: whether a command runs mmsegmentation (its block is kept when the venv is absent).
    """

    name: str
    doc: str
    commands: tuple[str, ...]
    minutes: float
    needs_mmseg: bool = False


FIGURES: tuple[Figure, ...] = (
    Figure(
        "ops", "README.md",
        ("python benchmarks/ops.py --denoised-sizes 48x96 64x128 --nonlocal-sizes 96x96 128x256 "
         "--max-released-gib 9",),
        5.0,
    ),
    Figure(
        "denoised-resident", "README.md",
        ("python benchmarks/denoised_resident.py --form lean --size 48x96 --passes 6",
         "python benchmarks/denoised_resident.py --form released --size 48x96 --passes 6"),
        1.0,
    ),
    Figure(
        "attention-paths", "README.md",
        ("python benchmarks/attention_paths.py --shapes 64:512:48x96 64:512:64x128 64:512:64x128:8 --rows 128 "
         "--repeats 3",),
        3.0,
    ),
    Figure("ann-table1", "docs/efficiency.md", ("nlseg bench blocks --sizes 96x96,128x256 --repeats 2",), 4.0),
    Figure("ann-table2", "docs/efficiency.md", ("nlseg bench models --models ann_r101 --size 1024x2048",), 2.0),
    Figure(
        "ann-fig2", "docs/figures.md",
        ("nlseg bench breakdown --repeats 3 --plot docs/images/ann_fig2_breakdown.png",),
        2.0,
    ),
    Figure("dnl-table5", "docs/efficiency.md", ("nlseg bench table5 --sizes 768x768,1024x2048",), 2.0),
    Figure(
        "inference-levers", "docs/efficiency.md",
        ("python benchmarks/inference_levers.py --models ann_r50 --rounds 1 --threads 2",),
        5.0,
    ),
    Figure(
        "compile-inference", "docs/efficiency.md",
        ("python benchmarks/compile_inference.py --model ann_r50 --size 512 1024 --threads 2 --repeats 3",),
        2.5,
    ),
    Figure("conv-layouts", "docs/efficiency.md", ("python benchmarks/conv_layouts.py --threads 2",), 1.5),
    Figure(
        "vs-mmseg", "docs/efficiency.md",
        ("python benchmarks/vs_mmseg.py --record --rounds 3 --mmseg-python {mmseg_python}",),
        40.0, needs_mmseg=True,  # one round took 14 min on 2026-12-07 (with exact_unfused)
    ),
    Figure(
        "vs-mmseg-keep-heap", "docs/efficiency.md",
        ("python benchmarks/vs_mmseg.py --networks ann nl danet --depths 50 --tasks infer --levers exact "
         "--rounds 2 --keep-heap --mmseg-python {mmseg_python}",),
        9.0, needs_mmseg=True,
    ),
)
"""Every measured block of README.md and docs/*.md, in the order ``make bench`` runs them."""


def total_minutes(figures: tuple[Figure, ...] = FIGURES) -> float:
    """The estimated wall time of regenerating ``figures``."""
    return sum(figure.minutes for figure in figures)
