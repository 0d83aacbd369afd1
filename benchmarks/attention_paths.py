"""Which path ``nonlocal_attention`` should take on the CPU: SDPA's flash kernel or blocks of query rows.

    python benchmarks/attention_paths.py [--shapes 64:512:48x96 64:512:64x128 64:512:64x128:8 256:256:48x96]
                                         [--rows 64 128 256] [--repeats 5] [--threads N] [--json OUT]

Each shape is ``Ck:Cv:HxW`` or ``Ck:Cv:HxW:SPREAD`` (batch 1, Nq = Nk = H·W; DANet's position attention is
64:512, a plain non-local block 256:256); q, k and v are standard normal, q times SPREAD (default 1). At spread 1
the scores q·k have a standard deviation of √Ck; at 64:512 spread 8, most of each row's shifted scores lie below
-87, as in DANet's PAM at random init, where the CPU's ``exp`` is slow unless the op floors the exponents
(:data:`~nlseg.ops.attention.EXP_FLOOR`): the path "query blocks, default, exp not floored" is the op's default
block with a plain ``exp``, what nlseg ran before the floor. Forward + backward (``torch.autograd.grad`` of the
output against a fixed gradient, for q, k, v)
of :func:`nlseg.ops.attention.sdpa_attention` (the flash kernel, Ck != Cv zero-padded to one head width) and of
:func:`nlseg.ops.attention.query_block_attention` at each ``--rows`` and at the op's default block
(:data:`~nlseg.ops.attention.BLOCK_ELEMENTS` map values). All paths of one shape run in one process, alternating
within each round after one warm-up call each, so a load change on the shared machine hits all of them alike;
the time is the median over the rounds, the memory the peak of tensor memory allocated during one more call
(:class:`~nlseg.engine.memory.PeakMemory`). Prints a Markdown table; ``--json`` writes the records.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable

import torch

import nlseg.ops.attention as attention_module
from nlseg.analysis.runinfo import run_header
from nlseg.engine.memory import PeakMemory
from nlseg.ops.attention import BLOCK_ELEMENTS, query_block_attention, sdpa_attention


def _paths(rows: list[int], n_keys: int) -> dict[str, Callable]:
    paths = {"sdpa (flash, padded when Ck != Cv)": sdpa_attention}
    for r in rows:
        paths[f"query blocks, {r} rows"] = lambda q, k, v, s, r=r: query_block_attention(q, k, v, s, r)
    default = max(1, BLOCK_ELEMENTS // n_keys)
    paths[f"query blocks, default ({default} rows)"] = query_block_attention
    paths[UNFLOORED] = query_block_attention  # run by ``step`` with a plain exp
    return paths


UNFLOORED = "query blocks, default, exp not floored"


@contextlib.contextmanager
def _plain_exp(on: bool):
    """Within: the chunked softmaxes take a plain ``exp`` (no floor), forward and backward."""
    floored = attention_module.softmax_numerator_
    if on:
        attention_module.softmax_numerator_ = lambda shifted: shifted.exp_()
    try:
        yield
    finally:
        attention_module.softmax_numerator_ = floored


def measure_shape(ck: int, cv: int, size: tuple[int, int], rows: list[int], repeats: int,
                  spread: float = 1.0) -> list[dict]:
    """Forward + backward of every path at one shape, alternating; one record per path."""
    n = size[0] * size[1]
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, ck, n, generator=gen).transpose(1, 2) for _ in range(2))  # (1, N, Ck)
    q, k = (q * spread).requires_grad_(), k.requires_grad_()
    v = torch.randn(1, cv, n, generator=gen).transpose(1, 2).requires_grad_()  # (1, N, Cv), token views of a map
    grad = torch.randn(1, n, cv, generator=gen)
    paths = _paths(rows, n)

    def step(name: str) -> float:
        with _plain_exp(name == UNFLOORED):
            start = time.perf_counter()
            torch.autograd.grad(paths[name](q, k, v, 1.0), (q, k, v), grad)
            return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in paths}
    for name in paths:
        step(name)  # warm-up
    for _ in range(repeats):
        for name in paths:
            times[name].append(step(name))
    records = []
    base = statistics.median(times[next(iter(paths))])
    for name in paths:
        with PeakMemory() as mem:
            step(name)
        ms = statistics.median(times[name]) * 1e3
        records.append({"ck": ck, "cv": cv, "size": f"{size[0]}x{size[1]}", "spread": spread, "path": name, "ms": ms,
                        "speedup_vs_sdpa": base * 1e3 / ms, "peak_mib": mem.peak_bytes / 2**20,
                        "repeats": repeats, "threads": torch.get_num_threads()})
    return records


def _shape(text: str) -> tuple[int, int, tuple[int, int], float]:
    ck, cv, size, *spread = text.split(":")
    h, w = size.lower().split("x")
    return int(ck), int(cv), (int(h), int(w)), float(spread[0]) if spread else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ("64:512:48x96", "64:512:64x128", "256:256:48x96")
    parser.add_argument("--shapes", nargs="+", type=_shape, default=[_shape(s) for s in defaults])
    parser.add_argument("--rows", nargs="*", type=int, default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(run_header())
    print(f"\nforward + backward, batch 1, "
          f"median of {args.repeats} alternating rounds")
    print("\n| Ck | Cv | size | q spread | path | ms | speed-up vs SDPA | peak MiB |\n"
          "|---:|---:|---|---:|---|---:|---:|---:|")
    records = []
    for ck, cv, size, spread in args.shapes:
        for r in measure_shape(ck, cv, size, args.rows, args.repeats, spread):
            records.append(r)
            print(f"| {ck} | {cv} | {r['size']} | {spread:g} | {r['path']} | {r['ms']:.0f} "
                  f"| {r['speedup_vs_sdpa']:.2f}× "
                  f"| {r['peak_mib']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
