"""``nlseg predict RECIPE --checkpoint CKPT --input PATH --output DIR``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_recipe


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="segment images with a checkpoint")
    add_recipe(p)
    p.add_argument("--checkpoint", required=True, help="an nlseg checkpoint (best.pt or last.pt of a work dir)")
    p.add_argument("--input", required=True, help="an image or a folder of images")
    p.add_argument("--output", required=True, help="folder for index PNGs, colour PNGs and overlays")


def run(args: argparse.Namespace) -> None:
    from nlseg.engine.inference import main_predict  # TODO(outer ring): typed call

    main_predict(args)
