"""What each inference lever of ``prepare_for_inference`` buys on a whole network: time and peak memory.

    python benchmarks/inference_levers.py [--models ann_r50 nl_r50 danet_r50] [--size 512 1024]
                                          [--rounds 3] [--threads 2] [--json OUT]

Every configuration runs in its own process (so its memory is its own), one forward pass of a batch of one
random normalised image through a randomly initialised model with 19 classes, after one untimed warm-up pass.
The configurations alternate within each round, so a load change on the machine hits all of them alike; the
time reported is the median over the rounds. ``compile`` pays its compilation once per process, so it runs in
the first round only and reports the median of three passes after the warm-up.

Configurations: ``as built`` (``model(x, with_aux=True)`` in eval mode, what nlseg ran before the inference
path), each lever of :class:`~nlseg.engine.inference.InferenceOptions` alone (``no aux``, ``fold bn``,
``fold bn + fuse`` (fusing needs folded norms), ``channels last``, ``bf16``, ``compile``), all exact levers
together (``exact levers``: no aux + fold bn + channels last + fuse, the defaults), the same without fusing
(``exact, not fused``) and the exact levers with bf16. Memory: the peak of tensor memory allocated during one
pass, in the first round
(:class:`~nlseg.engine.memory.PeakMemory`; not measurable for compiled code, whose buffers bypass the
dispatcher), and the process's peak resident set over the rounds (weights, Python and allocator included).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from nlseg.analysis.runinfo import run_header
from nlseg.engine.memory import PeakMemory
from nlseg.engine.inference import InferenceOptions, prepare_for_inference
from nlseg.models import create_model

ALONE = dict(aux=True, fold_bn=False, channels_last=False, fuse=False, compile="off")
EXACT = dict(aux=False, fold_bn=True, channels_last=True, compile="off")
CONFIGS: dict[str, InferenceOptions | None] = {
    "as built": None,
    "no aux": InferenceOptions(**{**ALONE, "aux": False}),
    "fold bn": InferenceOptions(**{**ALONE, "fold_bn": True}),
    "fold bn + fuse": InferenceOptions(**{**ALONE, "fold_bn": True, "fuse": True}),
    "channels last": InferenceOptions(**{**ALONE, "channels_last": True}),
    "bf16": InferenceOptions(**ALONE, amp="bf16"),
    "compile": InferenceOptions(**{**ALONE, "compile": "on"}),
    "exact, not fused": InferenceOptions(**EXACT, fuse=False),
    "exact levers": InferenceOptions(**EXACT),
    "exact + bf16": InferenceOptions(**EXACT, amp="bf16"),
}


def child(model_name: str, config: str, size: tuple[int, int], threads: int, passes: int, memory: bool) -> dict:
    """One configuration in this process: warm-up, ``passes`` timed passes, with ``memory`` one pass under
    PeakMemory."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=19).eval()
    options = CONFIGS[config]
    if options is None:
        def run(x: torch.Tensor) -> object:
            return model(x, with_aux=True)
    else:
        run = prepare_for_inference(model, options, inplace=True)
    x = torch.randn(1, 3, *size)
    times = []
    with torch.no_grad():
        run(x)
        for _ in range(passes):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        peak = float("nan")
        if memory and not (options and options.compile == "on"):
            with PeakMemory("cpu") as mem:
                run(x)
            peak = mem.peak_mib
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return {"model": model_name, "config": config, "s": statistics.median(times), "peak_mib": peak, "rss_mib": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ann_r50", "nl_r50", "danet_r50"], help="registered models")
    parser.add_argument("--size", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"), help="input size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternating runs (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configurations")
    parser.add_argument("--json", help="also write every run as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = tuple(args.size)
    if args.child:
        passes = 3 if args.child[1] == "compile" else 1
        print(json.dumps(child(*args.child, size, args.threads, passes, args.memory)))
        return 0
    runs = []
    for round_index in range(args.rounds):
        for model_name in args.models:
            for config in args.configs:
                if config == "compile" and round_index > 0:
                    continue
                command = [sys.executable, __file__, "--child", model_name, config, "--size", *map(str, size),
                           "--threads", str(args.threads), *(["--memory"] if round_index == 0 else [])]
                result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                runs.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    print(run_header(threads=args.threads))
    print()
    print("| model | configuration | time (s) | vs as built | peak tensor MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for model_name in args.models:
        built = statistics.median(r["s"] for r in runs if r["model"] == model_name and r["config"] == "as built")
        for config in args.configs:
            mine = [r for r in runs if r["model"] == model_name and r["config"] == config]
            seconds = statistics.median(r["s"] for r in mine)
            peak, rss = mine[0]["peak_mib"], max(r["rss_mib"] for r in mine)  # peak: the first round's
            peak_text = "—" if peak != peak else f"{peak:.0f}"
            print(f"| {model_name} | {config} | {seconds:.2f} | {built / seconds:.2f}x | {peak_text} | {rss:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
