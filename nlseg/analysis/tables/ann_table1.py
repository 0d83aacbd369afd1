"""ANN Table 1: the non-local block (NB) against APNB at C = 2048, Ĉ = 256; and any block of ``list_blocks()``.


ANN §4.3.1, Table 1. The released measuring code (``efficiency_statics/`` of MendelXu/ANN, torchstat on
single blocks) builds each block's attention branch only — one 1x1 conv + BN + ReLU shared by key and
query, a 1x1 value conv, the two products and ``Wo`` — and returns ``Wo(O)``; the concatenation with x and
the fusion conv on cat(2C) are not part of it. That unit is :meth:`APNB.attend
<nlseg.blocks.APNB.attend>`; Table 1's NB is ANN's NB as its measuring code builds it,
``APNB(pool_sizes=None)`` (key and query shared; ``create_block("nb")``, the block of ``ann_nb_r101``, has
separate θ and φ: one more C x Ĉ conv, which Table 1 does not count). The
paper's "GFLOPs" are multiply-adds (GMACs here). For NB, 3·N·C·Ĉ (key, value, Wo) + 2·N²·Ĉ (the two
products) = 57.98 G at 96x96 and 601.30 G at 128x256, plus 0.03 G and 0.11 G of conv biases, BN and ReLU
that torchstat also counts: Table 1's 58.0 and 601.4.

In that setting NB is measured twice: with the materialised N x N map (the block with ``fused=False``,
as the paper measured it; the NB / APNB ratios are taken from this one) and with nlseg's flash attention.
``whole=True`` measures nb and apnb as ``create_block`` builds them for the models (with the concatenation
and the fusion conv); every other block is always measured whole, as ``create_block(name)`` builds it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from nlseg.analysis.measure import ModuleWorkload, count_parameters, describe_run, measure
from nlseg.analysis.report import Column, Report, fmt, ratio, size_text, text_column
from nlseg.blocks import APNB, block_options, create_block, set_fused

__all__ = ["ANN_TABLE1", "ANN_TABLE1_CHANNELS", "blocks_table", "block_workloads"]

NUM_CLASSES = 19  # Cityscapes, the class probabilities Denoised NL reads

ANN_TABLE1: dict[tuple[str, tuple[int, int]], tuple[float, float, float]] = {
    ("nb", (96, 96)): (58.0, 609, 19.5),
    ("apnb", (96, 96)): (15.5, 150, 12.4),
    ("nb", (128, 256)): (601.4, 7797, 179.4),
    ("apnb", (128, 256)): (43.5, 277, 30.8),
}
"""ANN Table 1 (Titan Xp, CUDA 9.0, batch 1, C = 2048, Ĉ = 256): GFLOPs (multiply-adds), GPU memory (MB),
GPU time (ms), keyed by block and the feature map's (H, W) in sorted order: the paper writes 256x128 as W x H."""
ANN_TABLE1_CHANNELS = (2048, 256)
"""(C, Ĉ) of ANN Table 1."""
TABLE1_POOLS = {"nb": None, "apnb": (1, 3, 6, 8)}
"""The APNB of each Table 1 row: NB attends to all N positions, APNB to S = 110 pyramid anchors."""

def _table1_block(channels: int, key_channels: int, pool_sizes: tuple[int, ...] | None, fused: bool) -> APNB:
    block = APNB(channels, key_channels=key_channels, value_channels=key_channels, pool_sizes=pool_sizes)
    set_fused(block, fused)
    return block


def _unit_parameters(build: Callable[[], APNB]) -> int:
    """Parameters of Table 1's unit: the block's without its fusion conv (counted on meta)."""
    with torch.device("meta"):
        block = build()
    return sum(p.numel() for p in block.parameters()) - sum(p.numel() for p in block.fuse.parameters())


def block_workloads(
    name: str,
    size: tuple[int, int],
    *,
    channels: int = 2048,
    key_channels: int = 256,
    low_channels: int = 1024,
    whole: bool = False,
    released: bool = True,
    backward: bool = False,
) -> list[tuple[ModuleWorkload, str, int]]:
    """The workloads measured for block ``name`` at feature map ``size``: (workload, what it is, parameters).

    Args:
        name: a name of ``list_blocks()``.
        size: (H, W) of the feature map.
        channels: input channels C.
        key_channels: key/value channels Ĉ of the blocks that take them.
        low_channels: low-level channels of the fusion blocks.
        whole: measure nb and apnb as whole blocks instead of ANN Table 1's unit.
        released: in the Table 1 setting, also measure NB with the materialised map.
        backward: forward + backward instead of the forward pass.
    """
    h, w = size
    x = (1, channels, h, w)
    if name in TABLE1_POOLS and not whole:
        pools = TABLE1_POOLS[name]
        forms = (False, True) if name == "nb" and released else (True,)
        cases = []
        for fused in forms:

            def unit(fused: bool = fused) -> APNB:
                return _table1_block(channels, key_channels, pools, fused)

            what = "ANN Table 1 unit, " + ("nlseg flash attention" if fused else "materialised (as the paper)")
            workload = ModuleWorkload(unit, (x,), backward=backward, method="attend")
            cases.append((workload, what, _unit_parameters(unit)))
        return cases
    accepted = block_options(name)
    options: dict[str, object] = {key: key_channels for key in ("key_channels", "value_channels") if key in accepted}
    if name == "denoised_nl":
        del options["value_channels"]  # its value width is C, for the residual
    shapes: tuple[tuple[int, ...], ...] = (x,)
    probabilities: tuple[int, ...] = ()
    if "low_channels" in accepted:  # a fusion block: forward(low, high)
        options["low_channels"] = low_channels
        shapes = ((1, low_channels, h, w), x)
    elif name == "denoised_nl":
        shapes = (x, (1, NUM_CLASSES, h, w))  # forward(x, class probabilities)
        probabilities = (1,)

    def build() -> nn.Module:
        return create_block(name, channels, **options)

    return [(ModuleWorkload(build, shapes, probabilities, backward), "whole block", count_parameters(build))]


def blocks_table(
    blocks: Sequence[str] = ("nb", "apnb"),
    sizes: Sequence[tuple[int, int]] = ((96, 96),),
    *,
    channels: int = 2048,
    key_channels: int = 256,
    low_channels: int = 1024,
    whole: bool = False,
    released: bool = True,
    backward: bool = False,
    device: torch.device | str = "cpu",
    repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Measure each block at each size: GFLOPs (meta), parameters, peak memory, time; ANN Table 1 alongside.

    Args:
        blocks: names of ``list_blocks()``.
        sizes: (H, W) feature map sizes.
        channels, key_channels, low_channels, whole, released, backward: see :func:`block_workloads`.
        device: where to run.
        repeats: timed repeats.
        log: called with one line per finished measurement (progress), if given.

    Returns:
        The report: one record per (size, block, form), the NB / APNB ratios as notes.
    """
    device = torch.device(device)
    header, _ = describe_run(device)
    table1 = (channels, key_channels) == ANN_TABLE1_CHANNELS and not whole and not backward
    records = []
    for size in sizes:
        for name in blocks:
            for workload, what, params in block_workloads(
                name, size, channels=channels, key_channels=key_channels, low_channels=low_channels, whole=whole,
                released=released, backward=backward,
            ):
                m = measure(workload, device=device, repeats=repeats)
                paper = ANN_TABLE1.get((name, tuple(sorted(size)))) if table1 else None
                records.append({
                    "block": name,
                    "measured": what,
                    "size": size_text(size),
                    "channels": channels,
                    "key_channels": key_channels,
                    "pass": "fwd+bwd" if backward else "fwd",
                    "device": str(device),
                    "gflops": m.gflop,
                    "params": params,
                    "peak_mem_mib": m.peak_mib,
                    "ms": m.ms,
                    "ms_min": m.ms_min,
                    "ms_max": m.ms_max,
                    "gmacs": m.gflop / 2,
                    "paper_gflops": paper[0] if paper else None,
                    "paper_mem_mb": paper[1] if paper else None,
                    "paper_ms": paper[2] if paper else None,
                })
                if log:
                    log(f"  {name} {size_text(size)}: {m.ms:.0f} ms")
    columns = (
        text_column("block", "block"),
        text_column("measured", "measured"),
        text_column("size (HxW)", "size"),
        text_column("pass", "pass"),
        Column("GFLOPs", "gflops", ".1f"),
        Column("GMACs", "gmacs", ".1f"),
        Column('paper "GFLOPs" (MACs)', "paper_gflops", ".1f"),
        Column("params (M)", lambda r: r["params"] / 1e6, ".2f"),
        Column("peak MiB", "peak_mem_mib", ".1f"),
        Column("paper MB", "paper_mem_mb", ".0f"),
        Column("ms", "ms", ".1f"),
        Column("paper ms", "paper_ms", ".1f"),
    )
    return Report(records, columns, header=header, notes=tuple(_ratios(records)))


def _ratios(records: list[dict]) -> list[str]:
    """One line per NB record: NB / APNB of GFLOPs, memory and time at its size, the paper's alongside."""
    apnbs = {(r["size"], r["pass"]): r for r in records if r["block"] == "apnb"}
    lines = []
    for nb in (r for r in records if r["block"] == "nb"):
        apnb = apnbs.get((nb["size"], nb["pass"]))
        if apnb is None:
            continue
        parts = []
        for label, key, paper_key in (("GFLOPs", "gflops", "paper_gflops"),
                                      ("memory", "peak_mem_mib", "paper_mem_mb"), ("time", "ms", "paper_ms")):
            paper = ratio(nb[paper_key], apnb[paper_key])
            parts.append(f"{label} {fmt(ratio(nb[key], apnb[key]), '.1f')}×"
                         + ("" if paper is None else f" (paper {paper:.1f}×)"))
        lines.append(f"NB ({nb['measured']}) / APNB at {nb['size']} ({nb['pass']}): " + ", ".join(parts) + ".")
    return lines
