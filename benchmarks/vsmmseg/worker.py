"""The measuring process: one Job's model built with random weights, warmed up, timed, its peak memory taken.

Runs with nlseg's Python or the mmseg venv's and imports torch and that one library only (when it runs).
"""
from __future__ import annotations

import time
from collections.abc import Callable

from common.rss import reset_peak_rss, status_kib
from vsmmseg import mmseg_side, nlseg_side
from vsmmseg.networks import MMSEG, NUM_CLASSES
from vsmmseg.records import Job, Result


def _synchronized(step: Callable[[], object], device) -> Callable[[], object]:
    """``step`` followed by waiting for the GPU, so that a timed pass includes its kernels."""
    import torch

    def run():
        result = step()
        torch.cuda.synchronize(device)
        return result

    return run


def _count_flops(side: str, step: Callable[[], object]) -> float:
    """FLOPs of one ``step()``: nlseg's counter (PyTorch's, plus the in-place products and CPU flash attention
    that nlseg's ops use) on nlseg's side, PyTorch's ``FlopCounterMode`` on mmseg's, whose heads use neither."""
    if side == MMSEG:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops())
    from nlseg.analysis.measure import count_flops

    return count_flops(step)


def run_job(job: Job) -> Result:
    """Build the job's model with random weights, warm up, time ``repeats`` passes and take the peak memory."""
    import torch

    torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    device = torch.device(job.device)
    x = torch.randn(job.batch, 3, *job.size).to(device)
    side = mmseg_side if job.side == MMSEG else nlseg_side
    if job.task == "infer":
        step, params = side.infer(job, x)
    else:
        y = torch.randint(0, NUM_CLASSES, (job.batch, *job.size)).to(device)
        step, params = side.train(job, x, y)
    cuda = device.type == "cuda"
    if cuda:  # a timed pass ends when the GPU has finished it
        step = _synchronized(step, device)

    gflops, first_s = None, None
    if job.lever not in ("compile", "exact_compile", "bf16"):
        gflops = _count_flops(job.side, step) / 1e9  # the warm-up pass, counted
    else:  # the warm-up pass, timed: a compiled column's compilation happens here
        start = time.perf_counter()
        step()
        first_s = time.perf_counter() - start

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = reset_peak_rss()
    times = []
    for _ in range(job.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    else:
        peak_mib = (status_kib("VmHWM") - baseline) / 1024

    profile = None
    if job.profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        with torch_profile(activities=activities) as prof:
            step()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        profile = prof.key_averages().table(sort_by=sort, row_limit=15)
    return Result(times, peak_mib, params / 1e6, gflops, profile, first_s)

