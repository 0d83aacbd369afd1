"""Extra resident memory of the Denoised NL op's forward + backward: what the pass adds to the process's RSS.

    python benchmarks/denoised_resident.py [--form lean|released] [--size 48x96] [--passes 6]

Ck = 64, Cv = 512, K = 19, batch 1 (the block of the Denoised NL network), inputs and the output gradient made
first. Before each pass freed heap is returned to the system (``malloc_trim``) and the resident set's
high-water mark is reset (``/proc/self/clear_refs``); the figure is the high-water mark over the pass minus the
resident set just before it, in MiB: tensors, allocator slack and the kernels' own buffers (what
:class:`~nlseg.engine.memory.PeakMemory` counts is the tensors alone). The first pass of a process also pays
one-time costs (thread pools, kernel buffers): read the median of the later ones. Run each form in its own
process (Linux only).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the shared parts
from common.rss import reset_peak_rss, status_kib  # noqa: E402

from nlseg.analysis.runinfo import run_header
from nlseg.ops import denoised_attention, denoised_attention_reference


def extra_resident_mib(form: str, size: tuple[int, int], passes: int) -> list[float]:
    """One figure per pass of ``torch.autograd.grad(op(q, k, v, p), (q, k, v, p), grad)``."""
    op = denoised_attention if form == "lean" else denoised_attention_reference
    h, w = size
    gen = torch.Generator().manual_seed(0)
    q, k, v, logits = (torch.randn(shape, generator=gen) for shape in
                       [(1, 64, h, w), (1, 64, h, w), (1, 512, h, w), (1, 19, h, w)])
    inputs = [t.requires_grad_() for t in (q, k, v, logits.softmax(1))]
    grad = torch.randn(1, 512, h, w, generator=gen)
    figures = []
    for _ in range(passes):
        before = reset_peak_rss() / 1024
        grads = torch.autograd.grad(op(*inputs), inputs, grad)
        figures.append(status_kib("VmHWM") / 1024 - before)
        del grads
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--form", choices=("lean", "released"), default="lean")
    parser.add_argument("--size", default="48x96", help="HxW (default 48x96)")
    parser.add_argument("--passes", type=int, default=6)
    args = parser.parse_args(argv)
    size = tuple(int(x) for x in args.size.lower().split("x"))
    print(run_header())
    print()
    figures = extra_resident_mib(args.form, size, args.passes)
    later = figures[1:] or figures
    print(f"{args.form} {args.size} fwd+bwd extra resident MiB per pass: {' '.join(f'{f:.0f}' for f in figures)}; "
          f"median after the first: {statistics.median(later):.0f}, max after the first: {max(later):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
