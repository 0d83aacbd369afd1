"""One measurement procedure for every op, block and model benchmark.

Warm up, synchronise, time several repeats and report the median with the spread; measure peak memory
in a separate run (see :mod:`nlseg.analysis.memory`); count FLOPs with PyTorch's own
``FlopCounterMode``, which counts a multiply-add as 2 FLOPs (the papers' "FLOPs" are often
multiply-adds, i.e. half of this).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from nlseg.analysis.memory import PeakMemory

__all__ = ["Measurement", "count_flops", "matmul_gflops", "measure"]



def _inplace_product_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """``self += a @ b`` for (..., m, k) @ (..., k, n): 2·m·k·n per batch element, as for the out-of-place op."""
    batch = a_shape[0] if len(a_shape) == 3 else 1
    return 2 * batch * a_shape[-2] * a_shape[-1] * b_shape[-1]


def _cpu_flash_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention forward: q kᵀ and P v, 2 FLOPs per multiply-add, as FlopCounterMode counts SDPA on GPU."""
    b, h, nq, d = q_shape
    return 2 * b * h * nq * k_shape[-2] * (d + v_shape[-1])


def _cpu_flash_backward_flops(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """Its backward: q kᵀ recomputed, dV, dP, dQ, dK (five products), as FlopCounterMode counts SDPA on GPU."""
    b, h, nq, d = q_shape
    nk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * nq * nk * (3 * d + 2 * dv)


# FlopCounterMode knows the out-of-place products and the GPU attention kernels only; the in-place products
# and PyTorch's CPU flash attention do the same work as their counted relatives.
_INPLACE_PRODUCTS = {
    torch.ops.aten.baddbmm_: _inplace_product_flops,
    torch.ops.aten.addmm_: _inplace_product_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
}


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` as PyTorch counts them (2 per multiply-add), in-place products included."""
    with FlopCounterMode(display=False, custom_mapping=_INPLACE_PRODUCTS) as counter:
        fn()
    return float(counter.get_total_flops())


@dataclass(frozen=True)
class Measurement:
    """Result of :func:`measure`. Times in milliseconds, memory in MiB, work in GFLOP (2 per multiply-add)."""

    ms: float
    ms_min: float
    ms_max: float
    peak_mib: float
    gflop: float

    @property
    def gflops_per_s(self) -> float:
        return self.gflop / (self.ms / 1e3) if self.ms > 0 else float("nan")

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"gflops_per_s": self.gflops_per_s}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    flops: bool = True,
) -> Measurement:
    """Time ``fn`` (median of ``repeats`` after ``warmup`` calls), then measure its peak memory and FLOPs.

    ``fn`` does the whole unit of work (e.g. forward, or forward + backward) on inputs made beforehand,
    so that only what it allocates counts as its memory.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = float("nan")
    if memory:
        with PeakMemory(device) as mem:
            fn()
        peak = mem.peak_mib
    gflop = count_flops(fn) / 1e9 if flops else float("nan")
    return Measurement(statistics.median(times), min(times), max(times), peak, gflop)


def matmul_gflops(size: int = 4096, *, device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Achieved GFLOP/s of a plain float32 ``size x size`` matmul: the machine's yardstick for a run."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    m = measure(lambda: a @ b, device=device, repeats=repeats, memory=False, flops=False)
    return 2 * size**3 / (m.ms / 1e3) / 1e9
