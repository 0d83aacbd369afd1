"""``nlseg train RECIPE --work-dir DIR [--set KEY=VALUE ...] [--overwrite]`` and ``nlseg train --work-dir DIR --resume``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_recipe, check_output_dir, path_arg
from nlseg.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a recipe into a work dir, or resume the run in one",
        description="A work dir holds one run. Start it with a recipe; continue it with --resume (the recipe "
        "and its overrides come from WORK_DIR/config.yaml). SIGTERM or Ctrl-C save WORK_DIR/last.pt at the "
        "next iteration and exit 143 / 130; --resume then continues exactly.",
    )
    add_recipe(p, optional=True)
    p.add_argument(
        "--work-dir", required=True, type=path_arg,
        help="folder of the run: config.yaml, last.pt, best.pt, metrics.jsonl, train.log",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true",
        help="continue the run in WORK_DIR from last.pt, under its config.yaml; --set may change only data.root, "
        "data.num_workers, train.device, train.evaluate, train.*_interval and train.iters (to extend the run)",
    )
    mode.add_argument(
        "--overwrite", action="store_true",
        help="start a new run even if WORK_DIR holds one: its config.yaml, last.pt, best.pt, metrics.jsonl, "
        "train.log and tb/ are moved into WORK_DIR/previous-<date>-<time>/ (nothing is deleted)",
    )


def run(args: argparse.Namespace) -> None:
    from nlseg.config import load_config
    from nlseg.engine.distributed import close_distributed
    from nlseg.engine.trainer import train
    from nlseg.engine.workdir import resume_config

    work_dir = check_output_dir(args.work_dir, "--work-dir")
    if args.resume:
        cfg = resume_config(work_dir, args.overrides, recipe=args.recipe)
    elif args.recipe is None:
        raise ConfigError(
            f"a recipe is needed to start a run (see `nlseg list recipes`); to continue the run in {work_dir}: "
            f"nlseg train --work-dir {work_dir} --resume"
        )
    else:
        cfg = load_config(args.recipe, args.overrides, purpose="train")
    train(cfg, work_dir, resume=args.resume, overwrite=args.overwrite)
    close_distributed()
