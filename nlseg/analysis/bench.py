"""``nlseg bench {ops,blocks,models,table5}``: FLOPs, peak memory and time of ops, blocks and whole networks.

One procedure for all of them (:func:`nlseg.analysis.benchmark.measure`): warm-up, synchronise, the
median of several timed repeats, then peak memory in a separate run (CPU: every tensor storage
allocated inside the run, :mod:`nlseg.analysis.memory`; CUDA: ``max_memory_allocated``), both as the
extra memory of the run — inputs and weights made beforehand do not count. FLOPs are counted on the
META device with the same shapes (nothing is computed), by PyTorch's ``FlopCounterMode``: 2 FLOPs per
multiply-add, convolutions and matrix products only (norms, activations, softmax, pooling and resizing
are not counted). Counting on meta gives the algorithm's work: the CPU non-local kernel pads the narrower
of q/k and v (see :mod:`nlseg.ops.attention`), which would otherwise count as work.

* ``ops`` — the attention ops, released (materialised) form against nlseg's (``benchmarks/ops.py``).
* ``blocks`` — ANN Table 1 (NB against APNB at C = 2048, Ĉ = 256) and any block of ``list_blocks()``.
* ``models`` — whole networks, inference or a training step (ANN Table 2).
* ``table5`` — the blocks of Denoised NL Table V at their 1/16 input, Denoised NL in both formulations.

Sizes are written ``HxW`` (rows x columns), the papers' ``2048x1024`` is ``1024x2048`` here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.analysis.benchmark import count_flops, matmul_gflops, measure
from nlseg.blocks import APNB, DenoisedNL, create_block, list_blocks
from nlseg.blocks.layers import to_map, to_tokens
from nlseg.ops import (
    denoised_attention,
    denoised_attention_reference,
    nonlocal_attention,
    nonlocal_attention_reference,
    pyramid_sample,
)

__all__ = [
    "ANN_TABLE1",
    "ANN_TABLE2",
    "TABLE_V",
    "AnnTable1Unit",
    "ReleasedDenoisedNL",
    "bench_blocks",
    "bench_models",
    "bench_ops",
    "bench_table5",
    "main_bench",
    "main_ops",
]

GIB = 2**30
NUM_CLASSES = 19  # Cityscapes, the data set of both papers' efficiency tables

# ANN Table 1 (Titan Xp, CUDA 9.0, batch 1, C = 2048, Ĉ = 256): GFLOPs, GPU memory (MB), GPU time (ms).
# Keyed by the feature map's (H, W) in either order: the paper writes 256x128 as W x H.
ANN_TABLE1: dict[tuple[str, tuple[int, int]], tuple[float, float, float]] = {
    ("nl", (96, 96)): (58.0, 609, 19.5),
    ("apnb", (96, 96)): (15.5, 150, 12.4),
    ("nl", (128, 256)): (601.4, 7797, 179.4),
    ("apnb", (128, 256)): (43.5, 277, 30.8),
}
ANN_TABLE1_CHANNELS = (2048, 256)

# ANN Table 2 (Titan Xp, batch 1, 2048x1024 images): inference time (s), GPU memory (MB), parameters (M).
ANN_TABLE2: dict[str, dict[str, float]] = {"ann_r101": {"s": 0.611, "mem_mb": 3375, "params_m": 63.17}}
ANN_TABLE2_SIZE = (1024, 2048)
LARGE_GFLOPS = 1000.0
"""A network whose forward exceeds this many GFLOPs per image is timed once, without warm-up, by default: on
a CPU that is many seconds per run, and one-time costs are a negligible part of it."""

# Denoised NL Table V (1 x 3 x 768 x 768): what each block adds to the Baseline, GFLOPs and memory (MB).
TABLE_V: dict[str, tuple[float, float]] = {
    "+NL": (7.63, 407),
    "+CCNet": (1.77, 52),
    "+DANet": (10.04, 570),
    "+DRANet*": (0.76, 30),
    "+Denoised NL": (7.83, 428),
}
TABLE_V_SIZE = (768, 768)


def parse_size(text: str) -> tuple[int, int]:
    """``"96x96"`` -> (96, 96): (H, W)."""
    try:
        h, w = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 96x96") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(part) for part in text.split(",") if part]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _size_str(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def _fmt(value: float | None, spec: str, missing: str = "—") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _header(device: torch.device) -> str:
    yardstick = matmul_gflops(1024, device=device)
    return (
        f"Device {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}; "
        f"plain 1024² float32 matmul in this run: {yardstick:.0f} GFLOP/s."
    )


def _write_json(path: str | None, payload: object) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


# ---------------------------------------------------------------------------------------------------
# One measurement of a module: forward without autograd, or forward + backward; FLOPs on meta.


@dataclass(frozen=True)
class _Case:
    """A module to measure and the shapes of its inputs; ``build`` is called once per device."""

    build: Callable[[], nn.Module]
    shapes: tuple[tuple[int, ...], ...]
    probabilities: tuple[int, ...] = ()  # input positions holding class probabilities (softmax over dim 1)


def _inputs(case: _Case, device: torch.device | str) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for i, shape in enumerate(case.shapes):
        if str(device) == "meta":
            inputs.append(torch.empty(shape, device="meta"))
            continue
        t = torch.randn(shape, generator=gen)
        inputs.append((t.softmax(1) if i in case.probabilities else t).to(device))
    return tuple(inputs)


def _step(module: nn.Module, inputs: tuple[Tensor, ...], backward: bool) -> Callable[[], object]:
    """The unit of work: the forward pass without autograd, or forward + backward of the output's sum.

    Eval mode in both (norms use their running statistics), so that every block runs at batch 1: a norm in
    train mode cannot normalise the 1 x 1 maps of PPM and ASPP for one image.
    """
    module.eval()
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                module(*inputs)

        return forward

    def forward_backward() -> None:
        module.zero_grad(set_to_none=True)  # gradients are allocated inside the run, as in training
        module(*inputs).sum().backward()

    return forward_backward


def _meta_gflops(case: _Case, backward: bool) -> float:
    with torch.device("meta"):
        module = case.build()
    return count_flops(_step(module, _inputs(case, "meta"), backward)) / 1e9


def _measure_case(case: _Case, device: torch.device, backward: bool, repeats: int) -> dict[str, float]:
    module = case.build().to(device)
    m = measure(_step(module, _inputs(case, device), backward), device=device, repeats=repeats, flops=False)
    return {
        "gflops": _meta_gflops(case, backward),
        "params": sum(p.numel() for p in module.parameters()),
        "peak_mem_mib": m.peak_mib,
        "ms": m.ms,
        "ms_min": m.ms_min,
        "ms_max": m.ms_max,
    }


# ---------------------------------------------------------------------------------------------------
# nlseg bench blocks: ANN Table 1 and every registered block.


class AnnTable1Unit(nn.Module):
    """The part of ANN's NB and APNB that ANN Table 1 counts and times: ``Wo(softmax(Ĉ^-1/2 q P(k)ᵀ) P(v))``.

    ANN §4.3.1, Table 1; the released measuring code (``efficiency_statics/`` of MendelXu/ANN) builds the
    blocks' attention branch only — one 1x1 conv + BN + ReLU shared by key and query, a 1x1 value conv,
    the two products and ``Wo`` — and returns ``Wo(O)``: the concatenation with x and the 1x1 fusion conv
    on cat(2C) are not part of it. The paper's GFLOPs are multiply-adds (torchstat's count): for NB,
    3·N·C·Ĉ (key, value, Wo) + 2·N²·Ĉ (the two products) = 57.98 G at 96x96 and 601.30 G at 128x256,
    plus 0.03 G and 0.11 G of conv biases, BN and ReLU that torchstat also counts: Table 1's 58.0 and 601.4.

    Args:
        block: an :class:`~nlseg.blocks.APNB` (``pool_sizes=None`` is ANN's NB as released) whose
            key (and query), value and ``Wo`` convs the unit shares; its fusion conv is left out.
        released: compute the attention with the materialised N x N (NB) or N x S (APNB) map
            (:func:`~nlseg.ops.nonlocal_attention_reference`) as the released code does, instead of
            nlseg's fused kernel.
    """

    def __init__(self, block: APNB, *, released: bool = False) -> None:
        super().__init__()
        self.key, self.query, self.value, self.out_proj = block.key, block.query, block.value, block.out_proj
        self.pool_sizes, self.pool_mode = block.pool_sizes, block.pool_mode
        self.attention = nonlocal_attention_reference if released else nonlocal_attention

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> Wo(O) (B, C, H, W)."""
        key = self.key(x)  # (B, Ĉ, H, W), also the query (shared, as released)
        query = key if self.query is None else self.query(x)
        value = self.value(x)  # (B, Ĉ, H, W)
        if self.pool_sizes is None:
            anchors_k, anchors_v = key.flatten(2), value.flatten(2)  # (B, Ĉ, N)
        else:
            anchors_k = pyramid_sample(key, self.pool_sizes, self.pool_mode)  # (B, Ĉ, S)
            anchors_v = pyramid_sample(value, self.pool_sizes, self.pool_mode)  # (B, Ĉ, S)
        out = self.attention(to_tokens(query), anchors_k.transpose(1, 2), anchors_v.transpose(1, 2))  # (B, N, Ĉ)
        return self.out_proj(to_map(out, *x.shape[-2:]))


# Which of --key-channels' widths each block takes (the others keep their own defaults).
_WIDTHS: dict[str, tuple[str, ...]] = {
    "nl": ("key_channels", "value_channels"),
    "apnb": ("key_channels", "value_channels"),
    "afnb": ("key_channels", "value_channels"),
    "fnb": ("key_channels", "value_channels"),
    "ocnet": ("key_channels", "value_channels"),
    "denoised_nl": ("key_channels",),  # its value width must equal C (residual)
}


def _block_cases(name: str, size: tuple[int, int], args: argparse.Namespace) -> list[tuple[_Case, str]]:
    """The modules measured for ``name`` and what each is, in words.

    In the ANN Table 1 setting (not ``--whole``) ``nl`` is measured twice: with the materialised N x N map,
    as the paper measured its NB (the NB / APNB ratios are taken from this one), and with nlseg's flash
    attention, which never holds that map. ``--lean-only`` skips the materialised one.
    """
    c, ck, h, w = args.channels, args.key_channels, *size
    if name in ("nl", "apnb") and not args.whole:
        pools = None if name == "nl" else (1, 3, 6, 8)
        forms = (False,) if name == "apnb" or args.lean_only else (True, False)

        def build(released: bool) -> Callable[[], nn.Module]:
            return lambda: AnnTable1Unit(APNB(c, key_channels=ck, value_channels=ck, pool_sizes=pools), released=released)

        return [
            (_Case(build(released), ((1, c, h, w),)),
             "ANN Table 1 unit, " + ("materialised (as the paper)" if released else "nlseg flash attention"))
            for released in forms
        ]
    options = {key: ck for key in _WIDTHS.get(name, ())}
    if name == "nl":
        options["fusion"] = "concat"  # ANN's NB form, as in ann_nb_r*
    entry_inputs: tuple[tuple[int, ...], ...] = ((1, c, h, w),)
    probabilities: tuple[int, ...] = ()
    if name in ("afnb", "fnb", "common_fusion"):
        options["low_channels"] = args.low_channels
        entry_inputs = ((1, args.low_channels, h, w), (1, c, h, w))  # forward(low, high)
    elif name == "denoised_nl":
        entry_inputs = ((1, c, h, w), (1, NUM_CLASSES, h, w))  # forward(x, class probabilities)
        probabilities = (1,)
    return [(_Case(lambda: create_block(name, c, **options), entry_inputs, probabilities), "whole block")]


def bench_blocks(args: argparse.Namespace) -> list[dict]:
    """One record per (block, size): see :func:`main_bench` ``blocks``."""
    device = torch.device(args.device)
    records = []
    for size in args.sizes:
        for name, (case, what) in ((n, c) for n in args.blocks for c in _block_cases(n, size, args)):
            result = _measure_case(case, device, args.backward, args.repeats)
            paper = None
            if (args.channels, args.key_channels) == ANN_TABLE1_CHANNELS and not args.whole and not args.backward:
                paper = ANN_TABLE1.get((name, tuple(sorted(size))))
            records.append(
                {
                    "block": name,
                    "measured": what,
                    "size": _size_str(size),
                    "channels": args.channels,
                    "key_channels": args.key_channels,
                    "pass": "fwd+bwd" if args.backward else "fwd",
                    "device": str(device),
                    **result,
                    "gmacs": result["gflops"] / 2,
                    "paper_gflops": paper[0] if paper else None,
                    "paper_mem_mb": paper[1] if paper else None,
                    "paper_ms": paper[2] if paper else None,
                }
            )
            print(f"  {name} {_size_str(size)}: {result['ms']:.0f} ms", file=sys.stderr, flush=True)
    return records


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def blocks_markdown(records: list[dict]) -> str:
    """ANN Table 1 layout with the paper's figures alongside and the NB / APNB ratios."""
    lines = [
        "| block | measured | size (HxW) | pass | GFLOPs | GMACs | paper \"GFLOPs\" (MACs) | params (M) "
        "| peak MiB | paper MB | ms | paper ms |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['block']} | {r['measured']} | {r['size']} | {r['pass']} | {r['gflops']:.1f} | {r['gmacs']:.1f} "
            f"| {_fmt(r['paper_gflops'], '.1f')} | {r['params'] / 1e6:.2f} | {r['peak_mem_mib']:.1f} "
            f"| {_fmt(r['paper_mem_mb'], '.0f')} | {r['ms']:.1f} | {_fmt(r['paper_ms'], '.1f')} |"
        )
    apnbs = {(r["size"], r["pass"]): r for r in records if r["block"] == "apnb"}
    for nb in (r for r in records if r["block"] == "nl"):
        size, pass_ = nb["size"], nb["pass"]
        apnb = apnbs.get((size, pass_))
        if apnb is None:
            continue
        parts = []
        for label, key, paper_key in (("GFLOPs", "gflops", "paper_gflops"), ("memory", "peak_mem_mib", "paper_mem_mb"),
                                      ("time", "ms", "paper_ms")):
            ours = _fmt(_ratio(nb[key], apnb[key]), ".1f")
            paper = _ratio(nb[paper_key], apnb[paper_key])
            parts.append(f"{label} {ours}×" + ("" if paper is None else f" (paper {paper:.1f}×)"))
        lines.append(f"\nNL ({nb['measured']}) / APNB at {size} ({pass_}): " + ", ".join(parts) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# nlseg bench models: whole networks (ANN Table 2).


def _model_gflops(name: str, size: tuple[int, int], batch: int, num_classes: int) -> float:
    from nlseg.models import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes).eval()
        image = torch.empty(batch, 3, *size)
    with torch.no_grad():
        return count_flops(lambda: model(image)) / 1e9


def _model_step(model: nn.Module, images: Tensor, target: Tensor, train: bool) -> Callable[[], object]:
    """Inference (eval, no_grad) or one training step: cross-entropy of every output summed, backward, SGD."""
    model.train(train)
    if not train:

        def infer() -> None:
            with torch.no_grad():
                model(images)

        return infer
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(images)
        loss = sum(F.cross_entropy(logits, target) for logits in [out["out"], *out["aux"]])
        loss.backward()
        optimizer.step()

    return train_step


def bench_models(args: argparse.Namespace) -> list[dict]:
    """One record per model: see :func:`main_bench` ``models``."""
    from nlseg.models import create_model

    device = torch.device(args.device)
    records = []
    for name in args.models:
        gflops = _model_gflops(name, args.size, args.batch_size, args.num_classes)
        large = gflops / args.batch_size > LARGE_GFLOPS
        repeats = args.repeats if args.repeats is not None else (1 if large else 3)
        torch.manual_seed(0)
        model = create_model(name, num_classes=args.num_classes).to(device)
        images = torch.randn(args.batch_size, 3, *args.size, device=device)
        target = torch.randint(0, args.num_classes, (args.batch_size, *args.size), device=device)
        step = _model_step(model, images, target, args.train)
        m = measure(step, device=device, warmup=0 if large else 1, repeats=repeats, flops=False)
        paper = ANN_TABLE2.get(name) if tuple(args.size) == ANN_TABLE2_SIZE and not args.train else None
        records.append(
            {
                "model": name,
                "size": _size_str(args.size),
                "batch_size": args.batch_size,
                "mode": "train step" if args.train else "inference",
                "device": str(device),
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "gflops": gflops,
                "ms": m.ms,
                "images_per_s": args.batch_size / (m.ms / 1e3),
                "peak_mem_mib": m.peak_mib,
                "repeats": repeats,
                "paper_s": paper["s"] if paper else None,
                "paper_mem_mb": paper["mem_mb"] if paper else None,
                "paper_params_m": paper["params_m"] if paper else None,
            }
        )
        print(f"  {name}: {m.ms:.0f} ms", file=sys.stderr, flush=True)
        del model
    return records


def models_markdown(records: list[dict]) -> str:
    """ANN Table 2 layout; the paper's figures are on a Titan Xp GPU, ours on this run's device."""
    lines = [
        "| model | input (HxW) | batch | mode | params (M) | GFLOPs (forward) | time / batch (s) | images/s "
        "| peak MiB | repeats | paper: time (s) / memory (MB) / params (M), Titan Xp |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        paper = (
            f"{r['paper_s']} / {r['paper_mem_mb']:.0f} / {r['paper_params_m']}" if r["paper_s"] is not None else "—"
        )
        lines.append(
            f"| {r['model']} | {r['size']} | {r['batch_size']} | {r['mode']} | {r['params_m']:.2f} "
            f"| {r['gflops']:.1f} | {r['ms'] / 1e3:.3f} | {r['images_per_s']:.3f} | {r['peak_mem_mib']:.0f} "
            f"| {r['repeats']} | {paper} |"
        )
    if any(r["paper_s"] is not None for r in records):
        lines.append("\nPaper: ANN Table 2, one Titan Xp GPU, 2048x1024 images; the hardware differs from this run's.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# nlseg bench table5: Denoised NL Table V.


class ReleasedDenoisedNL(nn.Module):
    """A :class:`~nlseg.blocks.DenoisedNL` block computed the released way: A, A' and A'' materialised, A''
    through a (B, N, k², N) unfold (:func:`~nlseg.ops.denoised_attention_reference`). Same weights, same function.

    Args:
        block: the block whose convs and γ are used; its ``class_input`` must be "probs".
    """

    def __init__(self, block: DenoisedNL) -> None:
        super().__init__()
        if block.class_input != "probs":
            raise ValueError("ReleasedDenoisedNL takes class probabilities: build the block with class_input='probs'")
        self.block = block

    def forward(self, x: Tensor, class_probs: Tensor) -> Tensor:
        """x (B, C, H, W), class_probs (B, K, H, W) -> (B, C, H, W)."""
        b = self.block
        out = denoised_attention_reference(
            b.query(x), b.key(x), b.value(x), class_probs, kernel_size=b.kernel_size, rectify=b.rectify,
            retain=b.retain,
        )
        return b.gamma * out + x


def _table5_cases(block_size: tuple[int, int]) -> list[tuple[str, str, str, _Case]]:
    """(Table V row, form, what is measured, case) at the block input 1 x 512 x h x w."""
    from nlseg.models.denoised import BLOCKS

    c, norm = 512, nn.BatchNorm2d
    x = (1, c, *block_size)
    probs = (1, NUM_CLASSES, *block_size)
    return [
        ("+NL", "nlseg", "the block of nl_r101: q, k at C/8, v at C, γ residual, no scale", _Case(
            lambda: BLOCKS["nl"](c, norm), (x,))),
        ("+CCNet", "nlseg", "the block of ccnet_r101: criss-cross attention, R = 2", _Case(
            lambda: BLOCKS["ccnet"](c, norm), (x,))),
        ("+DANet", "nlseg", "the block of danet_r101: PAM + CAM", _Case(lambda: BLOCKS["danet"](c, norm), (x,))),
        ("+DRANet*", "nlseg", "the block of dranet_r101: CPAM + CCAM", _Case(
            lambda: BLOCKS["dranet"](c, norm), (x,))),
        ("+Denoised NL", "released", "DenoisedNL, A'' via the (B, N, k², N) unfold", _Case(
            lambda: ReleasedDenoisedNL(DenoisedNL(c)), (x, probs), probabilities=(1,))),
        ("+Denoised NL", "nlseg", "DenoisedNL, nlseg's lean exact op", _Case(
            lambda: DenoisedNL(c), (x, probs), probabilities=(1,))),
    ]


def _released_bytes(block_size: tuple[int, int], backward: bool) -> int:
    """Rough peak of the released Denoised NL: the (N, k², N) windows twice and three N x N maps, float32."""
    n = block_size[0] * block_size[1]
    return n * n * 4 * (2 * 9 + 3) * (3 if backward else 1)


def bench_table5(args: argparse.Namespace) -> list[dict]:
    """One record per (Table V row, formulation, image size): see :func:`main_bench` ``table5``."""
    device = torch.device(args.device)
    records = []
    for size in args.sizes:
        block_size = (math.ceil(size[0] / 16), math.ceil(size[1] / 16))
        for row, form, what, case in _table5_cases(block_size):
            if form == "released" and _released_bytes(block_size, args.backward) > args.max_released_gib * GIB:
                print(f"  {row} released at {_size_str(size)}: skipped (--max-released-gib)", file=sys.stderr)
                continue
            result = _measure_case(case, device, args.backward, args.repeats)
            paper = TABLE_V[row] if tuple(size) == TABLE_V_SIZE else None
            records.append(
                {
                    "row": row,
                    "form": form,
                    "measured": what,
                    "image_size": _size_str(size),
                    "block_input": f"512x{block_size[0]}x{block_size[1]}",
                    "pass": "fwd+bwd" if args.backward else "fwd",
                    "device": str(device),
                    **result,
                    "paper_gflops": paper[0] if paper else None,
                    "paper_mem_mb": paper[1] if paper else None,
                }
            )
            print(f"  {row} ({form}) at {_size_str(size)}: {result['ms']:.0f} ms", file=sys.stderr, flush=True)
    return records


def table5_markdown(records: list[dict]) -> str:
    """Denoised NL Table V layout, the paper's deltas alongside, and the memory nlseg saves."""
    lines = [
        "| row | form | what is measured | image (HxW) | block input (CxHxW) | pass | GFLOPs (Δ) | paper GFLOPs (Δ) "
        "| peak MiB of the block | paper memory (Δ MB) | ms |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['row']} | {r['form']} | {r['measured']} | {r['image_size']} | {r['block_input']} | {r['pass']} "
            f"| {r['gflops']:.2f} | {_fmt(r['paper_gflops'], '.2f')} | {r['peak_mem_mib']:.1f} "
            f"| {_fmt(r['paper_mem_mb'], '.0f')} | {r['ms']:.1f} |"
        )
    lines.append(
        "\nEach block alone on its 1/16 input (512 channels), forward pass; memory is that pass's extra memory. "
        "The paper's deltas are over its Baseline network at 768x768, memory on a GPU."
    )
    for image in dict.fromkeys(r["image_size"] for r in records):
        dnl = {r["form"]: r for r in records if r["image_size"] == image and r["row"] == "+Denoised NL"}
        if "released" in dnl and "nlseg" in dnl:
            rel, lean = dnl["released"], dnl["nlseg"]
            lines.append(
                f"\nDenoised NL at {image}: released {rel['peak_mem_mib']:.0f} MiB, "
                f"nlseg {lean['peak_mem_mib']:.0f} MiB "
                f"— nlseg saves {rel['peak_mem_mib'] - lean['peak_mem_mib']:.0f} MiB "
                f"({_fmt(_ratio(rel['peak_mem_mib'], lean['peak_mem_mib']), '.0f')}× less), "
                f"time {_fmt(_ratio(rel['ms'], lean['ms']), '.1f')}× faster."
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# nlseg bench ops (also benchmarks/ops.py): the attention ops, released form against nlseg's.

OPS_DOC = """Attention ops, the released (materialised) form against nlseg's, side by side in one run.

    python benchmarks/ops.py [--device cpu|cuda] [--repeats 3] [--json OUT]

Denoised NL (Ck = 64, Cv = 512, K = 19, batch 1) at 48x48, 48x96, 64x128: forward and forward+backward
time and peak extra memory of ``denoised_attention_reference`` (the released formulation, which unfolds
the N x N map into (B, N, k², N)) against ``denoised_attention``. Plain non-local attention (Ck = Cv = 256)
at 96x96 and 128x256: the materialised softmax(q kᵀ) v against ``nonlocal_attention``.
The achieved GFLOP/s of each run is printed next to a plain 4096² matmul's, measured in the same run.
"""


def _denoised_op_case(h: int, w: int, device: torch.device, fn, backward: bool):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 64, h, w, generator=gen).to(device).requires_grad_(backward)
    k = torch.randn(1, 64, h, w, generator=gen).mul_(0.2).to(device).requires_grad_(backward)
    v = torch.randn(1, 512, h, w, generator=gen).to(device).requires_grad_(backward)
    p = torch.randn(1, 19, h, w, generator=gen).softmax(1).to(device).requires_grad_(backward)
    inputs = (q, k, v, p)
    if not backward:
        return lambda: fn(*inputs)
    grad = torch.randn(1, 512, h, w, generator=gen).to(device)
    return lambda: torch.autograd.grad(fn(*inputs), inputs, grad)


def _nonlocal_op_case(h: int, w: int, device: torch.device, fn, backward: bool):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h * w, 256, generator=gen).to(device).requires_grad_(backward) for _ in range(3))
    if not backward:
        return lambda: fn(q, k, v)
    grad = torch.randn(1, h * w, 256, generator=gen).to(device)
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad)


def _ops_row(op: str, size: str, mode: str, ref, lean) -> dict:
    return {
        "op": op,
        "size": size,
        "mode": mode,
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


def bench_ops(args: argparse.Namespace) -> list[dict]:
    """The rows of the op benchmark (see :data:`OPS_DOC`)."""
    device = torch.device(args.device)
    rows = []
    cases = [
        ("denoised_attention", s, _denoised_op_case, denoised_attention_reference, denoised_attention)
        for s in args.denoised_sizes
    ] + [
        ("nonlocal_attention", s, _nonlocal_op_case, nonlocal_attention_reference, nonlocal_attention)
        for s in args.nonlocal_sizes
    ]
    for op, size, make, ref_fn, lean_fn in cases:
        h, w = parse_size(size)
        n = h * w
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            # The materialised forms hold a few N x N float32 maps (x 9 with Local Retention).
            ref_bytes = n * n * 4 * (9 if op == "denoised_attention" else 2) * (3 if backward else 1)
            # Runs that hold over 2 GiB of maps take tens of seconds on a CPU: time them once, no warm-up.
            heavy = ref_bytes > 2 * GIB
            timing = {"warmup": 0, "repeats": 1} if heavy else {"repeats": args.repeats}
            ref = None
            if ref_bytes <= args.max_released_gib * GIB:
                ref = measure(make(h, w, device, ref_fn, backward), device=device, **timing)
            lean = measure(make(h, w, device, lean_fn, backward), device=device, **timing)
            rows.append(_ops_row(op, size, mode, ref, lean))
            print(f"  {op} {size} {mode}: done", file=sys.stderr)
    return rows


def ops_markdown(rows: list[dict], matmul: float) -> str:
    lines = [
        f"Plain 4096² float32 matmul in this run: {matmul:.0f} GFLOP/s.",
        "",
        "| op | size | pass | released ms | nlseg ms | speed-up | released peak MiB | nlseg peak MiB "
        "| memory ratio | GFLOP | nlseg GFLOP/s (% of matmul) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['size']} | {r['mode']} | {_fmt(r['released_ms'], '.0f', 'skipped')} "
            f"| {r['nlseg_ms']:.0f} | {_fmt(r['speedup'], '.2f', 'skipped')}× "
            f"| {_fmt(r['released_peak_mib'], '.0f', 'skipped')} | {r['nlseg_peak_mib']:.1f} "
            f"| {_fmt(r['memory_ratio'], '.0f', 'skipped')}× | {r['gflop']:.1f} "
            f"| {r['nlseg_gflops_per_s']:.0f} ({100 * r['nlseg_gflops_per_s'] / matmul:.0f}%) |"
        )
    return "\n".join(lines)


def _ops_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=OPS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--denoised-sizes", nargs="+", default=["48x48", "48x96", "64x128"])
    parser.add_argument("--nonlocal-sizes", nargs="+", default=["96x96", "128x256"])
    parser.add_argument(
        "--max-released-gib", type=float, default=12.0,
        help="skip a released-form run whose N x N maps alone would exceed this (default 12 GiB)",
    )
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    return parser


def main_ops(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """The op benchmark's command line (``benchmarks/ops.py`` and ``nlseg bench ops``)."""
    args = _ops_parser(prog).parse_args(argv)
    matmul = matmul_gflops(device=args.device)
    rows = bench_ops(args)
    print(ops_markdown(rows, matmul))
    _write_json(args.json, {"device": args.device, "matmul_gflops_per_s": matmul, "rows": rows})


# ---------------------------------------------------------------------------------------------------
# Command line.


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--json", metavar="OUT", help="also write the records to this JSON file (a list)")


def _blocks_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlseg bench blocks",
        description="Blocks at one input: GFLOPs, parameters, peak memory, time. By default ANN Table 1: "
        "NL (ANN's NB) and APNB at C = 2048, Ĉ = 256, measured as the paper measures them — key (= query) "
        "and value 1x1 convs, the attention and Wo, without the concatenation and the fusion conv — in eval "
        "mode without autograd; the paper's GFLOPs are multiply-adds (GMACs here).",
    )
    parser.add_argument(
        "--blocks", type=_names, default=["nl", "apnb"],
        help=f"comma-separated block names, or 'all' (default nl,apnb); names: {', '.join(list_blocks())}",
    )
    parser.add_argument("--sizes", type=_sizes, default=[(96, 96)], help="feature map sizes HxW (default 96x96)")
    parser.add_argument("--channels", type=int, default=2048, help="input channels C (default 2048)")
    parser.add_argument("--key-channels", type=int, default=256, help="key/value channels Ĉ (default 256)")
    parser.add_argument("--low-channels", type=int, default=1024, help="low-level channels of fusion blocks")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (eval-mode norms)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--whole", action="store_true",
        help="measure nl and apnb as whole nlseg blocks (with the concatenation and the fusion conv; nl as "
        "NonLocal2d(fusion='concat') with separate θ and φ) instead of ANN Table 1's unit",
    )
    parser.add_argument(
        "--lean-only", action="store_true",
        help="measure nl's Table 1 unit with nlseg's flash attention only (skip the materialised form the paper "
        "measured; it needs 2 N x N maps: 8 GiB at 128x256)",
    )
    _common(parser)
    return parser


def _models_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlseg bench models",
        description="Whole networks: parameters, forward GFLOPs (counted on the meta device), time per batch, "
        "images/s, peak memory; inference (eval, no autograd) or --train (forward + backward + SGD step). "
        "ANN Table 2 measures ann_r101 at 1024x2048 on a Titan Xp: about a minute per image on a 2-core CPU.",
    )
    parser.add_argument("--models", type=_names, default=["ann_r101"], help="comma-separated model names")
    parser.add_argument("--size", type=parse_size, default=(512, 1024), help="input HxW (default 512x1024)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES)
    parser.add_argument("--train", action="store_true", help="time a training step instead of inference")
    parser.add_argument(
        "--repeats", type=int,
        help=f"timed repeats (default 3, or 1 without warm-up when a forward exceeds {LARGE_GFLOPS:.0f} GFLOPs)",
    )
    _common(parser)
    return parser


def _table5_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlseg bench table5",
        description="Denoised NL Table V: what each block adds over the Baseline, measured on the block alone at "
        "its 1/16 input (512 channels; Denoised NL gets 19-class probabilities at the same size): GFLOPs, peak "
        "memory and time of its forward pass (eval, no autograd). Denoised NL twice: released (materialised "
        "N x N maps, A'' through a (B, N, k², N) unfold) and nlseg's lean exact op.",
    )
    parser.add_argument(
        "--sizes", "--size", type=_sizes, default=[TABLE_V_SIZE],
        help="image sizes HxW, comma-separated (default 768x768; Cityscapes full resolution is 1024x2048)",
    )
    parser.add_argument("--backward", action="store_true", help="time forward + backward (eval-mode norms)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--max-released-gib", type=float, default=12.0,
        help="skip the released Denoised NL when its maps would exceed this (default 12 GiB)",
    )
    _common(parser)
    return parser


def main_bench(target: str, argv: Sequence[str]) -> None:
    """``nlseg bench TARGET ...``: print a Markdown table (and write JSON with ``--json``).

    Args:
        target: ``ops``, ``blocks``, ``models`` or ``table5``.
        argv: the target's arguments (``--help`` lists them).
    """
    if target == "ops":
        main_ops(argv, prog="nlseg bench ops")
        return
    if target == "blocks":
        parser = _blocks_parser()
        args = parser.parse_args(argv)
        if "all" in args.blocks:
            args.blocks = list_blocks()
        _check_names(parser, "block", args.blocks, list_blocks())
        if args.lean_only and args.whole:
            parser.error("--lean-only applies to the ANN Table 1 unit of nl; drop --whole")
        run, table = bench_blocks, blocks_markdown
    elif target == "models":
        from nlseg.models import list_models

        parser = _models_parser()
        args = parser.parse_args(argv)
        _check_names(parser, "model", args.models, list_models())
        run, table = bench_models, models_markdown
    elif target == "table5":
        args = _table5_parser().parse_args(argv)
        run, table = bench_table5, table5_markdown
    else:
        raise ValueError(f"unknown bench target {target!r}; expected one of ops, blocks, models, table5")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    header = _header(torch.device(args.device))
    records = run(args)
    print(header)
    print()
    print(table(records))
    _write_json(args.json, records)


def _check_names(parser: argparse.ArgumentParser, what: str, names: list[str], known: list[str]) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")
