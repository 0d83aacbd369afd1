"""``nlseg reproduce TABLE [--seeds 0,1,2] [--size default|tiny] [--iters N] [--rows R,...] [--out-dir DIR]
[--set KEY=VALUE ...]``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_overrides, path_arg


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, e.g. 0,1,2; got {text!r}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_parser(sub) -> None:
    from nlseg.apps.reproduce_tables import SIZES, TABLES

    rows = "; ".join(f"{t.name}: {', '.join(r.key for r in t.rows)}" for t in TABLES.values())
    p = sub.add_parser(
        "reproduce", help="re-run a paper's ablation table at demo size on the embedded data set, over seeds",
        description="Train every row of a paper's ablation table at demo size on the embedded data set, "
        "seed by seed, and print mean ± std per row next to the paper's numbers. Running the same command "
        "again skips finished runs and continues an interrupted one.",
    )
    p.add_argument("table", choices=list(TABLES), help="the table: " + ", ".join(
        f"{t.name} ({t.title})" for t in TABLES.values()))
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="train.seed of each run of a row (default: 0,1,2)")
    p.add_argument("--size", choices=list(SIZES), default="default",
                   help="default: the demo's recipe, minutes per run; tiny: seconds per run, for tests")
    p.add_argument("--iters", type=int, help="training iterations of every run (default: the table's)")
    p.add_argument("--rows", type=_names, help=f"rows to run, by name, comma-separated (the Baseline always runs): {rows}")
    p.add_argument("--out-dir", type=path_arg,
                   help="folder of the runs and the summary (default: reproduce_out/TABLE)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not write reproduce.png")
    add_overrides(p, "a field of every run's recipe")


def run(args: argparse.Namespace) -> None:
    from nlseg.apps.reproduce import run_reproduce

    run_reproduce(args.table, out_dir=args.out_dir, seeds=args.seeds, size=args.size, iters=args.iters,
                  rows=args.rows, overrides=args.overrides, plot=args.plot)
