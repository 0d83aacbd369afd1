"""``nlseg demo [--out-dir DIR] [--seed N] [--iters N] [--set KEY=VALUE ...]``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_overrides, path_arg


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train Baseline and Denoised NL on the embedded data set and compare")
    p.add_argument(
        "--out-dir", default="demo_out", type=path_arg,
        help="folder for the pictures and the work dirs (default: demo_out)",
    )
    p.add_argument("--seed", type=int, default=0, help="train.seed of both runs (default: 0)")
    p.add_argument("--iters", type=int, help="training iterations per model (default: the demo recipe's)")
    add_overrides(p, "a field of both demo recipes")


def run(args: argparse.Namespace) -> None:
    from nlseg.apps.demo import run_demo

    run_demo(args.out_dir, seed=args.seed, iters=args.iters, overrides=args.overrides)
