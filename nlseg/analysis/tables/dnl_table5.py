"""Denoised NL Table V: what each context block adds over the Baseline, measured on the block alone.

Table V's deltas are what each block adds to the Baseline at a 768x768 input, where the block runs on the
reduced map at 1/16: 512 x 48 x 48. Each row is the block of a model of the model table
(:data:`nlseg.models.zoo.ZOO`, the entries with a Table V figure), built by ``create_block`` with the
entry's block name — the module that model holds — and measured alone on its 1/16 input (Denoised NL
receives 19-class probabilities at the same size). Denoised NL is measured twice, same weights and same
function: **released** (the block with ``fused=False``: A, A' and A'' materialised, A'' through the
(B, N, k², N) unfold of the released code) and **nlseg** (its exact lean op, no N x N map).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nlseg.analysis.measure import ModuleWorkload, count_parameters, describe_run, measure
from nlseg.analysis.report import Column, Report, fmt, ratio, size_text, text_column
from nlseg.blocks import create_block, set_fused
from nlseg.models.zoo import DNL_INPUT, ZOO, ZooEntry

__all__ = ["BLOCK_CHANNELS", "table5", "table5_workloads"]

BLOCK_CHANNELS = 512
"""Channels of the reduced map the Denoised NL pipeline's block runs on."""
NUM_CLASSES = 19  # Cityscapes
GIB = 2**30


def _rows() -> list[ZooEntry]:
    """The model table's Table V rows, in the table's order (the Denoised NL row last)."""
    rows = [entry for entry in ZOO.values() if entry.table5_gflops is not None]
    return sorted(rows, key=lambda entry: entry.block == "denoised_nl")


def _label(entry: ZooEntry) -> str:
    """The row's name in Table V: "+NL (R-101), in ..." -> "+NL"; "+Denoised NL, GR + LR (R-101)" -> "+Denoised NL"."""
    return re.split(r"[,(]", entry.row)[0].strip()


def table5_workloads(block_size: tuple[int, int], *, backward: bool = False) -> list[tuple[dict, ModuleWorkload, int]]:
    """(what the record says, workload, parameters) per Table V row and form, at block input 1 x 512 x h x w."""
    x = (1, BLOCK_CHANNELS, *block_size)
    cases = []
    for entry in _rows():
        two_inputs = entry.block == "denoised_nl"
        shapes = (x, (1, NUM_CLASSES, *block_size)) if two_inputs else (x,)
        for fused in (False, True) if two_inputs else (True,):

            def build(name: str = entry.block, fused: bool = fused) -> nn.Module:
                block = create_block(name, BLOCK_CHANNELS)
                set_fused(block, fused)
                return block

            form = "nlseg" if fused else "released"
            what = f"create_block({entry.block!r}), the block of {entry.name}" + (
                "" if not two_inputs else ", nlseg's lean exact op" if fused else ", A'' via the (B, N, k², N) unfold"
            )
            described = {"row": _label(entry), "form": form, "model": entry.name, "measured": what,
                         "paper_gflops": entry.table5_gflops, "paper_mem_mb": entry.table5_memory_mb}
            workload = ModuleWorkload(build, shapes, (1,) if two_inputs else (), backward)
            cases.append((described, workload, count_parameters(build)))
    return cases


def _released_bytes(block_size: tuple[int, int], backward: bool) -> int:
    """Rough peak of the released Denoised NL: the (N, k², N) windows twice and three N x N maps, float32."""
    n = block_size[0] * block_size[1]
    return n * n * 4 * (2 * 9 + 3) * (3 if backward else 1)


def table5(
    sizes: Sequence[tuple[int, int]] = (DNL_INPUT,),
    *,
    backward: bool = False,
    max_released_gib: float = 12.0,
    device: torch.device | str = "cpu",
    repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Measure every Table V block at the 1/16 input of each image size.

    Args:
        sizes: (H, W) image sizes; the blocks run at ceil(H/16) x ceil(W/16).
        backward: forward + backward instead of the forward pass.
        max_released_gib: skip the released Denoised NL when its maps would exceed this.
        device: where to run.
        repeats: timed repeats.
        log: called with one line per finished (or skipped) measurement, if given.

    Returns:
        The report: one record per (image size, row, form), and what nlseg saves as notes.
    """
    device = torch.device(device)
    header, _ = describe_run(device)
    records = []
    for size in sizes:
        block_size = (math.ceil(size[0] / 16), math.ceil(size[1] / 16))
        for described, workload, params in table5_workloads(block_size, backward=backward):
            where = f"{described['row']} {described['form']} at {size_text(size)}"
            if described["form"] == "released" and _released_bytes(block_size, backward) > max_released_gib * GIB:
                if log:
                    log(f"  {where}: skipped (max_released_gib)")
                continue
            m = measure(workload, device=device, repeats=repeats)
            at_paper_size = tuple(size) == DNL_INPUT
            records.append(described | {
                "image_size": size_text(size),
                "block_input": f"{BLOCK_CHANNELS}x{block_size[0]}x{block_size[1]}",
                "pass": "fwd+bwd" if backward else "fwd",
                "device": str(device),
                "gflops": m.gflop,
                "params": params,
                "peak_mem_mib": m.peak_mib,
                "ms": m.ms,
                "ms_min": m.ms_min,
                "ms_max": m.ms_max,
                "paper_gflops": described["paper_gflops"] if at_paper_size else None,
                "paper_mem_mb": described["paper_mem_mb"] if at_paper_size else None,
            })
            if log:
                log(f"  {where}: {m.ms:.0f} ms")
    columns = (
        text_column("row", "row"),
        text_column("form", "form"),
        text_column("what is measured", "measured"),
        text_column("image (HxW)", "image_size"),
        text_column("block input (CxHxW)", "block_input"),
        text_column("pass", "pass"),
        Column("GFLOPs (Δ)", "gflops", ".2f"),
        Column("paper GFLOPs (Δ)", "paper_gflops", ".2f"),
        Column("peak MiB of the block", "peak_mem_mib", ".1f"),
        Column("paper memory (Δ MB)", "paper_mem_mb", ".0f"),
        Column("ms", "ms", ".1f"),
    )
    notes = ["Each block alone on its 1/16 input (512 channels); memory is that pass's extra memory. "
             "The paper's deltas are over its Baseline network at 768x768, memory on a GPU."]
    for image in dict.fromkeys(r["image_size"] for r in records):
        dnl = {r["form"]: r for r in records if r["image_size"] == image and r["row"] == "+Denoised NL"}
        if "released" in dnl and "nlseg" in dnl:
            rel, lean = dnl["released"]["peak_mem_mib"], dnl["nlseg"]["peak_mem_mib"]
            notes.append(
                f"Denoised NL at {image}: released {rel:.0f} MiB, nlseg {lean:.0f} MiB — nlseg saves "
                f"{rel - lean:.0f} MiB ({fmt(ratio(rel, lean), '.0f')}× less), "
                f"time {fmt(ratio(dnl['released']['ms'], dnl['nlseg']['ms']), '.1f')}× faster."
            )
    return Report(records, columns, header=header, notes=tuple(notes))
