"""``nlseg eval RECIPE --checkpoint CKPT [--out FILE] [--export-dir DIR] [--split NAME]``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_recipe


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on the recipe's validation split")
    add_recipe(p)
    p.add_argument("--checkpoint", required=True, help="an nlseg checkpoint (best.pt or last.pt of a work dir)")
    p.add_argument("--out", help="write the metrics as JSON to this file")
    p.add_argument("--export-dir", help="write one prediction per image in the data set's submission format")
    p.add_argument("--split", help="split to evaluate (default: the recipe's data.val_split)")


def run(args: argparse.Namespace) -> None:
    from nlseg.engine.evaluate import main_eval  # TODO(outer ring): typed call

    main_eval(args)
