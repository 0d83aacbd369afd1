"""``nlseg train RECIPE --work-dir DIR [--resume] [--set KEY=VALUE ...]``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_recipe


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a recipe into a work dir")
    add_recipe(p, optional=True)
    p.add_argument("--work-dir", required=True, help="folder for checkpoints and logs (one run)")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt exactly")


def run(args: argparse.Namespace) -> None:
    from nlseg.engine.trainer import main_train  # TODO(outer ring): typed call

    main_train(args)
