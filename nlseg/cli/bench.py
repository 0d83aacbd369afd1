"""``nlseg bench {ops,blocks,models,table5} ...``: efficiency reports."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="efficiency reports (FLOPs, memory, time)")
    p.add_argument("target", choices=["ops", "blocks", "models", "table5"], help="which report")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of that report (--help for them)")


def run(args: argparse.Namespace) -> None:
    from nlseg.analysis.bench import main_bench  # TODO(outer ring): parsers here, typed calls

    main_bench(args.target, args.rest)
