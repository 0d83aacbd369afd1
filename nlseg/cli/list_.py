"""``nlseg list {models,blocks,recipes,datasets,weights}``."""
from __future__ import annotations

import argparse

WEIGHTS_COLUMNS: tuple[str, ...] = ("name", "size", "sha256", "fits", "cached")


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list models, blocks, recipes, data sets or backbone weights names")
    p.add_argument("what", choices=["models", "blocks", "recipes", "datasets", "weights"], help="what to list")


def run(args: argparse.Namespace) -> None:
    if args.what == "weights":
        print(_weights_table())
        return
    if args.what == "recipes":
        from nlseg.config import list_recipes

        names = list_recipes()
    elif args.what == "datasets":
        from nlseg.data import list_datasets

        names = list_datasets()
    else:
        import nlseg

        names = nlseg.list_models() if args.what == "models" else nlseg.list_blocks()
    print("\n".join(names))


def _weights_table() -> str:
    """One row per weights name: publisher's size, checksum (prefix), backbone and stem, in the cache or not;
    then the cache folder."""
    from nlseg.backbones.hub import WEIGHTS, cache_dir

    folder = cache_dir()
    rows = [WEIGHTS_COLUMNS] + [
        (
            e.name,
            "?" if e.size_mib is None else f"{e.size_mib:.1f} MiB",
            e.sha256[:8],
            f"{e.backbone} stem={e.stem}",
            "yes" if (folder / e.filename).is_file() else "no",
        )
        for e in WEIGHTS.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(WEIGHTS_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([*lines, f"cache: {folder}"])
