"""Eager against compiled (inductor, frozen weights) inference of one network: per-image time after warm-up, cold
compile time (an empty cache) and warm-cache compile time (a second process on the same cache).

    python benchmarks/compile_inference.py [--model ann_r50] [--size 512 1024] [--threads 2] [--repeats 3]

Three processes, one after the other, each with a randomly initialised model (19 classes) prepared as ``nlseg
eval`` prepares it (folded batch norm, channels-last backbone): ``eager``; ``compiled`` on a fresh cache folder
(its first call is the cold compile plus one pass); ``compiled`` again on that folder (the warm-cache compile).
A compile time is the first call's time minus the median compiled pass. The compiled process also runs the eager
model once on the same image and reports the largest relative error of the logits and the share of pixels whose
argmax differs. Prints the run's header (:func:`nlseg.analysis.runinfo.run_header`) and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from nlseg.analysis.runinfo import run_header
from nlseg.config import InferenceOptions
from nlseg.engine.inference import prepare_for_inference
from nlseg.models import create_model


def child(model_name: str, size: tuple[int, int], threads: int, repeats: int, compiled: bool) -> dict:
    """One process's measurement: the first call's time, then ``repeats`` timed passes after it."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=19).eval()
    run = prepare_for_inference(model, InferenceOptions(compile="on" if compiled else "off"), inplace=False)
    run.gate.log = lambda line: None
    x = torch.randn(1, 3, *size)
    record: dict = {}
    with torch.inference_mode():
        start = time.perf_counter()
        out = run(x)["out"]
        record["first_s"] = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        record["median_s"] = statistics.median(times)
        if compiled:
            want = prepare_for_inference(model, InferenceOptions(compile="off"))(x)["out"]
            record["max_rel_err"] = float((out - want).abs().max() / want.abs().max())
            record["argmax_differs"] = float((out.argmax(1) != want.argmax(1)).float().mean())
    return record


def spawn(args: argparse.Namespace, compiled: bool, cache: str) -> dict:
    command = [sys.executable, __file__, "--child", "--model", args.model, "--size", *map(str, args.size),
               "--threads", str(args.threads), "--repeats", str(args.repeats)] + (["--compiled"] if compiled else [])
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ann_r50")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = (args.size[0], args.size[1])
    if args.child:
        print(json.dumps(child(args.model, size, args.threads, args.repeats, args.compiled)))
        return
    with tempfile.TemporaryDirectory(prefix="nlseg-compile-bench-") as cache:
        eager = spawn(args, False, cache)
        cold = spawn(args, True, cache)
        warm = spawn(args, True, cache)
    print(run_header(threads=args.threads))
    print(f"\n{args.model}, 1x3x{size[0]}x{size[1]}, random weights; median of {args.repeats} passes after the first\n")
    print("| path | per image | first call | compile time | max rel. error | argmax differs |")
    print("|---|---|---|---|---|---|")
    print(f"| eager | {eager['median_s']:.2f} s | {eager['first_s']:.2f} s | - | - | - |")
    for name, record in (("compiled, cold cache", cold), ("compiled, warm cache", warm)):
        print(f"| {name} | {record['median_s']:.2f} s | {record['first_s']:.2f} s | "
              f"{record['first_s'] - record['median_s']:.1f} s | {record['max_rel_err']:.1e} | "
              f"{record['argmax_differs']:.2%} |")
    print(f"\ncompiled / eager per image: {cold['median_s'] / eager['median_s']:.3f} (cold process), "
          f"{warm['median_s'] / eager['median_s']:.3f} (warm process)")


if __name__ == "__main__":
    main()
