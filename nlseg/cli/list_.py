"""``nlseg list {models,blocks,recipes,datasets}``."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list models, blocks, recipes or data sets")
    p.add_argument("what", choices=["models", "blocks", "recipes", "datasets"], help="what to list")


def run(args: argparse.Namespace) -> None:
    if args.what == "recipes":
        from nlseg.config import list_recipes

        names = list_recipes()
    elif args.what == "datasets":
        from nlseg.data import list_datasets

        names = sorted({"synthetic", *list_datasets()})
    else:
        import nlseg

        names = nlseg.list_models() if args.what == "models" else nlseg.list_blocks()
    print("\n".join(names))
