"""Attention ops, the released (materialised) form against nlseg's, side by side in one run.

    python benchmarks/ops.py [--device cpu|cuda] [--repeats 3] [--json OUT]

Denoised NL (Ck = 64, Cv = 512, K = 19, batch 1) at 48x48, 48x96, 64x128: forward and forward+backward
time and peak extra memory of ``denoised_attention_reference`` (the released formulation, which unfolds
the N x N map into (B, N, k², N)) against ``denoised_attention``. Plain non-local attention (Ck = Cv = 256)
at 96x96 and 128x256: the materialised softmax(q kᵀ) v against ``nonlocal_attention``.
The achieved GFLOP/s of each run is printed next to a plain 4096² matmul's, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from nlseg.analysis.benchmark import matmul_gflops, measure
from nlseg.ops import denoised_attention, denoised_attention_reference, nonlocal_attention, nonlocal_attention_reference

GIB = 2**30


def _parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _denoised_case(h: int, w: int, device: torch.device, fn, backward: bool):
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


def _nonlocal_case(h: int, w: int, device: torch.device, fn, backward: bool):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h * w, 256, generator=gen).to(device).requires_grad_(backward) for _ in range(3))
    if not backward:
        return lambda: fn(q, k, v)
    grad = torch.randn(1, h * w, 256, generator=gen).to(device)
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad)


def _row(op: str, size: str, mode: str, ref, lean) -> dict:
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


def _fmt(value, spec: str) -> str:
    return "skipped" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    cases = [
        ("denoised_attention", s, _denoised_case, denoised_attention_reference, denoised_attention)
        for s in args.denoised_sizes
    ] + [
        ("nonlocal_attention", s, _nonlocal_case, nonlocal_attention_reference, nonlocal_attention)
        for s in args.nonlocal_sizes
    ]
    for op, size, make, ref_fn, lean_fn in cases:
        h, w = _parse_size(size)
        n = h * w
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            # The materialised forms hold a few N x N float32 maps (x 9 with Local Retention).
            ref_bytes = n * n * 4 * (9 if op == "denoised_attention" else 2) * (3 if backward else 1)
            ref = None
            if ref_bytes <= args.max_released_gib * GIB:
                ref = measure(make(h, w, device, ref_fn, backward), device=device, repeats=args.repeats)
            lean = measure(make(h, w, device, lean_fn, backward), device=device, repeats=args.repeats)
            rows.append(_row(op, size, mode, ref, lean))
            print(f"  {op} {size} {mode}: done", file=sys.stderr)
    return rows


def markdown(rows: list[dict], matmul: float) -> str:
    lines = [
        f"Plain 4096² float32 matmul in this run: {matmul:.0f} GFLOP/s.",
        "",
        "| op | size | pass | released ms | nlseg ms | speed-up | released peak MiB | nlseg peak MiB "
        "| memory ratio | GFLOP | nlseg GFLOP/s (% of matmul) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['size']} | {r['mode']} | {_fmt(r['released_ms'], '.0f')} | {r['nlseg_ms']:.0f} "
            f"| {_fmt(r['speedup'], '.2f')}× | {_fmt(r['released_peak_mib'], '.0f')} | {r['nlseg_peak_mib']:.1f} "
            f"| {_fmt(r['memory_ratio'], '.0f')}× | {r['gflop']:.1f} "
            f"| {r['nlseg_gflops_per_s']:.0f} ({100 * r['nlseg_gflops_per_s'] / matmul:.0f}%) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--denoised-sizes", nargs="+", default=["48x48", "48x96", "64x128"])
    parser.add_argument("--nonlocal-sizes", nargs="+", default=["96x96", "128x256"])
    parser.add_argument(
        "--max-released-gib", type=float, default=12.0,
        help="skip a released-form run whose N x N maps alone would exceed this (default 12 GiB)",
    )
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    matmul = matmul_gflops(device=args.device)
    rows = run(args)
    print(markdown(rows, matmul))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "matmul_gflops_per_s": matmul, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
