"""``nlseg viz {attention,predictions,confusion,curves} ...``: pictures."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("viz", help="pictures: attention maps, predictions, confusion matrix, curves")
    p.add_argument("target", choices=["attention", "predictions", "confusion", "curves"], help="which picture")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of that picture (--help for them)")


def run(args: argparse.Namespace) -> None:
    from nlseg.analysis.viz import main_viz  # TODO(outer ring): parsers here, typed calls

    main_viz(args.target, args.rest)
