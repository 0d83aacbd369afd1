"""The attention ops, the released (materialised) form against nlseg's, side by side in one run.

Denoised NL (Ck = 64, Cv = 512, K = 19, batch 1), by default at 48x48, 48x96, 64x128: forward and
forward + backward of :func:`~nlseg.ops.denoised_attention_reference` (the released formulation, which
unfolds the N x N map into (B, N, k², N)) against :func:`~nlseg.ops.denoised_attention`. Plain non-local
attention (Ck = Cv = 256), by default at 96x96 and 128x256: the materialised softmax(q kᵀ) v
(:func:`~nlseg.ops.nonlocal_attention_reference`) against :func:`~nlseg.ops.nonlocal_attention`. Each
row gives the achieved GFLOP/s of nlseg's op next to a plain 4096² matmul's, measured in the same run.
``nlseg bench ops`` and ``benchmarks/ops.py`` print it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from nlseg.analysis.measure import Measurement, Step, Workload, describe_run, measure
from nlseg.analysis.report import Column, Report, size_text, text_column
from nlseg.ops import (
    denoised_attention,
    denoised_attention_reference,
    nonlocal_attention,
    nonlocal_attention_reference,
)

__all__ = ["DENOISED_SIZES", "NONLOCAL_SIZES", "ops_table"]

DENOISED_SIZES: tuple[tuple[int, int], ...] = ((48, 48), (48, 96), (64, 128))
NONLOCAL_SIZES: tuple[tuple[int, int], ...] = ((96, 96), (128, 256))
GIB = 2**30
HEAVY_GIB = 2.0
"""A released run whose maps exceed this is timed once without warm-up: tens of seconds on a CPU."""

AttentionOp = Callable[..., Tensor]


def _workload(
    shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...], op: AttentionOp, backward: bool,
    probabilities: int | None = None,
) -> Workload:
    """``op(*inputs)`` (forward) or its gradient for all inputs against a fixed output gradient.

    Args:
        shapes: the inputs' shapes; standard normal at a fixed seed.
        out_shape: the output's shape (of the gradient fed back).
        op: the attention op.
        backward: forward + backward instead of the forward pass.
        probabilities: position of an input holding class probabilities (a softmax over dim 1).
    """

    def make(device: torch.device) -> Step:
        gen = torch.Generator().manual_seed(0)
        inputs = []
        for i, shape in enumerate(shapes):
            t = torch.randn(shape, generator=gen)
            t = t.softmax(1) if i == probabilities else t
            inputs.append(t.to(device).requires_grad_(backward))
        if not backward:
            return lambda: op(*inputs)
        grad = torch.randn(out_shape, generator=gen).to(device)
        return lambda: torch.autograd.grad(op(*inputs), inputs, grad)

    return make


def _denoised(size: tuple[int, int], op: AttentionOp, backward: bool) -> Workload:
    h, w = size
    q, v, p = (1, 64, h, w), (1, 512, h, w), (1, 19, h, w)
    return _workload([q, q, v, p], v, op, backward, probabilities=3)


def _nonlocal(size: tuple[int, int], op: AttentionOp, backward: bool) -> Workload:
    n = size[0] * size[1]
    tokens = (1, n, 256)  # (B, N, C)
    return _workload([tokens] * 3, tokens, op, backward)


def _record(op: str, size: tuple[int, int], backward: bool, ref: Measurement | None, lean: Measurement) -> dict:
    return {
        "op": op,
        "size": size_text(size),
        "mode": "fwd+bwd" if backward else "fwd",
        "released_ms": ref.ms if ref else None,
        "nlseg_ms": lean.ms,
        "speedup": ref.ms / lean.ms if ref else None,
        "released_peak_mib": ref.peak_mib if ref else None,
        "nlseg_peak_mib": lean.peak_mib,
        "memory_ratio": ref.peak_mib / lean.peak_mib if ref else None,
        "gflop": lean.gflop,
        "released_gflops_per_s": ref.gflops_per_s if ref else None,
        "nlseg_gflops_per_s": lean.gflops_per_s,
    }


def ops_table(
    *,
    device: torch.device | str = "cpu",
    repeats: int = 3,
    denoised_sizes: Sequence[tuple[int, int]] = DENOISED_SIZES,
    nonlocal_sizes: Sequence[tuple[int, int]] = NONLOCAL_SIZES,
    max_released_gib: float = 12.0,
    matmul_size: int = 4096,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Measure both forms of both ops at each size, forward and forward + backward.

    Args:
        device: where to run.
        repeats: timed repeats per run.
        denoised_sizes: (H, W) of the Denoised NL op's maps.
        nonlocal_sizes: (H, W) of the plain non-local op's maps (N = H·W tokens).
        max_released_gib: skip a released-form run whose N x N maps alone would exceed this.
        matmul_size: side of the yardstick matmul.
        log: called with one line per finished row (progress), if given.

    Returns:
        The report; one record per (op, size, pass) with both forms' time, peak memory and GFLOP/s.
    """
    device = torch.device(device)
    header, matmul = describe_run(device, matmul_size)
    cases = [("denoised_attention", s, _denoised, denoised_attention_reference, denoised_attention)
             for s in denoised_sizes]
    cases += [("nonlocal_attention", s, _nonlocal, nonlocal_attention_reference, nonlocal_attention)
              for s in nonlocal_sizes]
    records = []
    for name, size, workload, released_op, lean_op in cases:
        n = size[0] * size[1]
        for backward in (False, True):
            # The materialised forms hold a few N x N float32 maps (x 9 with Local Retention).
            released_bytes = n * n * 4 * (9 if name == "denoised_attention" else 2) * (3 if backward else 1)
            timing = {"warmup": 0, "repeats": 1} if released_bytes > HEAVY_GIB * GIB else {"repeats": repeats}
            ref = None
            if released_bytes <= max_released_gib * GIB:
                ref = measure(workload(size, released_op, backward), device=device, **timing)
            lean = measure(workload(size, lean_op, backward), device=device, **timing)
            records.append(_record(name, size, backward, ref, lean) | {"device": str(device),
                                                                        "matmul_gflops_per_s": matmul})
            if log:
                log(f"  {name} {size_text(size)} {records[-1]['mode']}: done")
    columns = (
        text_column("op", "op"),
        text_column("size", "size"),
        text_column("pass", "mode"),
        Column("released ms", "released_ms", ".0f", missing="skipped"),
        Column("nlseg ms", "nlseg_ms", ".0f"),
        Column("speed-up", "speedup", ".2f", "×", missing="skipped"),
        Column("released peak MiB", "released_peak_mib", ".0f", missing="skipped"),
        Column("nlseg peak MiB", "nlseg_peak_mib", ".1f"),
        Column("memory ratio", "memory_ratio", ".0f", "×", missing="skipped"),
        Column("GFLOP", "gflop", ".1f"),
        Column("nlseg GFLOP/s (% of matmul)",
               lambda r: f"{r['nlseg_gflops_per_s']:.0f} ({100 * r['nlseg_gflops_per_s'] / matmul:.0f}%)"),
    )
    return Report(records, columns, header=header)
