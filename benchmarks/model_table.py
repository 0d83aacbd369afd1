"""The model table: every registered model -> the paper row it reproduces -> parameters -> GFLOPs.

    python benchmarks/model_table.py [--json OUT]

Each model is built with 19 classes on the META device and fed a meta tensor of the paper's input
(768 x 768 for the Denoised NL family, Table V; 2048 x 1024 for ANN and its FCN baseline, Table 2), so
nothing is computed and nothing is allocated. FLOPs are PyTorch's ``FlopCounterMode`` count of one
forward pass in eval mode, auxiliary heads included: 2 FLOPs per multiply-add (GMACs = GFLOPs / 2),
convolutions and matrix products only (elementwise ops, softmax, pooling and resizing are not counted).

For every model built on the Denoised NL pipeline, "Δ GFLOPs" is its count minus that of the same
pipeline with no block (``dnl_baseline_r*`` with the same options), which is what Table V's deltas
measure. A second table counts, at the block's input of Table V (1 x 512 x 48 x 48), the blocks the models
use next to nlseg's blocks of the published heads (see docs/models.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from nlseg.analysis.measure import count_flops
from nlseg.analysis.runinfo import run_header
from nlseg.blocks import create_block
from nlseg.models import ZOO, DenoisedNLDecoder, Segmentor, create_model, list_models

NUM_CLASSES = 19


@dataclass(frozen=True)
class Row:
    name: str
    paper: str
    miou: float | None
    input_size: tuple[int, int]
    options: dict = field(default_factory=dict)


def registered_rows() -> list[Row]:
    return [Row(e.name, e.description, e.miou, e.input_size) for e in ZOO.values()]


def variant_rows() -> list[Row]:
    """Paper rows (and released models) that are a registered model with options."""
    return [
        Row(e.name, v.row, v.miou, v.input_size or e.input_size, dict(v.options))
        for e in ZOO.values()
        for v in e.variants
    ]


def paper_figure(name: str) -> str | None:
    """The zoo's whole-network figures (ANN Table 2) or Table V deltas of ``name``, in words."""
    entry = ZOO[name]
    if entry.table5_gflops is not None:
        return f"+{entry.table5_gflops:.2f}G / +{entry.table5_memory_mb:.0f} MB"
    if entry.params_m is not None:
        return f"{entry.params_m} M params (Table 2)"
    return None


def meta_model(name: str, options: dict) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes=NUM_CLASSES, **options).eval()


def gflop(model: nn.Module, *shape: int, extra: tuple = ()) -> float:
    with torch.device("meta"):
        inputs = (torch.empty(*shape), *(torch.empty(*s) for s in extra))
    with torch.no_grad():
        kwargs = {"with_aux": True} if isinstance(model, Segmentor) else {}  # the auxiliary heads counted, as before
        return count_flops(lambda: model(*inputs, **kwargs)) / 1e9


def millions(model: nn.Module, skip: str | None = None) -> float:
    return sum(p.numel() for n, p in model.named_parameters() if skip is None or not n.startswith(skip)) / 1e6


def baseline_gflop(row: Row, cache: dict) -> float | None:
    """GFLOPs of the Denoised NL pipeline with no block, with the row's depth and options."""
    depth = row.name.rsplit("_r", 1)[1]
    baseline = f"dnl_baseline_r{depth}"
    if baseline not in list_models():
        return None
    options = {k: v for k, v in row.options.items() if k == "global_context"}
    key = (baseline, tuple(sorted(options.items())))
    if key not in cache:
        cache[key] = gflop(meta_model(baseline, options), 1, 3, *row.input_size)
    return cache[key]


def measure_rows(rows: list[Row]) -> list[dict]:
    cache: dict = {}
    results = []
    for row in rows:
        model = meta_model(row.name, row.options)
        flops = gflop(model, 1, 3, *row.input_size)
        delta = None
        if isinstance(model.decoder, DenoisedNLDecoder):
            base = baseline_gflop(row, cache)
            delta = None if base is None else flops - base
        results.append(
            {
                "model": row.name,
                "options": row.options,
                "paper": row.paper,
                "miou": row.miou,
                "input": f"{row.input_size[1]}x{row.input_size[0]}",
                "params_m": millions(model),
                "params_no_aux_m": millions(model, skip="aux_heads"),
                "gflops": flops,
                "gmacs": flops / 2,
                "delta_gflops": delta,
                "paper_figure": None if row.options else paper_figure(row.name),
            }
        )
        print(f"  {row.name} {row.options or ''}: {flops:.1f} GFLOPs", file=sys.stderr, flush=True)
    return results


# Blocks at Table V's block input, 1 x 512 x 48 x 48 (768 / 16). Class map: 19 classes at the same size.
C, H = 512, 48


def block_rows() -> list[tuple[str, str, Callable[[], tuple[nn.Module, tuple]]]]:
    """(Table V row, what is counted, builder of (block, extra input shapes)) at the block input of Table V."""
    probs = ((1, NUM_CLASSES, H, H),)
    return [
        ("+Denoised NL", "`denoised_nl`, the block of denoised_nl_r101 (Ck 64, Cv 512, GR + LR)",
         lambda: (create_block("denoised_nl", C), probs)),
        ("+NL", "`nl`, the block of nl_r101 (q, k: 64; v: 512; γ; no Wo)", lambda: (create_block("nl", C), ())),
        ("+NL", "`nonlocal2d`: Wang et al.'s block, C/2 embeddings, Wo + BN",
         lambda: (create_block("nonlocal2d", C, scale="none"), ())),
        ("+DANet", "`danet`, the block of danet_r101 (PAM + CAM)", lambda: (create_block("danet", C), ())),
        ("+DANet", "`danet_head`: DANet's head, 3x3 convs to C/4 around PAM and CAM",
         lambda: (create_block("danet_head", C), ())),
        ("+CCNet", "`ccnet`, the block of ccnet_r101 (criss-cross attention, R = 2)",
         lambda: (create_block("ccnet", C), ())),
        ("+CCNet", "`cca`: criss-cross attention, one pass (R = 1)", lambda: (create_block("cca", C), ())),
        ("+CCNet", "`ccnet_head`: CCNet's RCCA head, 3x3 convs, C/4 inside, R = 2",
         lambda: (create_block("ccnet_head", C, out_channels=C), ())),
        ("+DRANet*", "`dranet`, the block of dranet_r101 (CPAM + CCAM)", lambda: (create_block("dranet", C), ())),
        ("+DRANet*", "`dranet_head`: DRANet's head, 3x3 convs to C/4 around CPAM and CCAM",
         lambda: (create_block("dranet_head", C), ())),
    ]


TABLE_V_MODELS = {"+NL": "nl_r101", "+CCNet": "ccnet_r101", "+DANet": "danet_r101", "+DRANet*": "dranet_r101",
                  "+Denoised NL": "denoised_nl_r101"}
"""The model of each Table V row, whose zoo entry holds the paper's delta."""


def measure_blocks() -> list[dict]:
    results = []
    for row, what, make in block_rows():
        with torch.device("meta"):
            block, extra = make()
        block.eval()
        flops = gflop(block, 1, C, H, H, extra=extra)
        results.append({"row": row, "block": what, "gflops": flops, "paper": ZOO[TABLE_V_MODELS[row]].table5_gflops})
    return results


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def markdown(models: list[dict], blocks: list[dict]) -> str:
    lines = [
        "| model | options | paper row | paper mIoU | input (WxH) | params (M) | params w/o aux (M) | GFLOPs | GMACs "
        "| Δ GFLOPs over the DNL pipeline without block | paper figure |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in models:
        lines.append(
            f"| `{r['model']}` | {_options(r['options'])} | {r['paper']} | {_num(r['miou'], 1)} | {r['input']} "
            f"| {r['params_m']:.2f} | {r['params_no_aux_m']:.2f} | {r['gflops']:.1f} | {r['gmacs']:.1f} "
            f"| {_num(r['delta_gflops'])} | {r['paper_figure'] or ''} |"
        )
    lines += [
        "",
        "Blocks alone at Table V's block input (1 x 512 x 48 x 48):",
        "",
        "| Table V row | what is counted | GFLOPs | paper Δ GFLOPs |",
        "|---|---|---|---|",
    ]
    lines += [f"| {b['row']} | {b['block']} | {b['gflops']:.2f} | {b['paper']:.2f} |" for b in blocks]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    print("counting (meta device, FlopCounterMode: 2 FLOPs per multiply-add) ...", file=sys.stderr, flush=True)
    models = measure_rows(registered_rows() + variant_rows())
    blocks = measure_blocks()
    print(run_header())
    print()
    print(markdown(models, blocks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"models": models, "blocks": blocks}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
