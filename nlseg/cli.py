"""``nlseg train | eval | predict | bench | viz | demo | list`` — the command-line tool.

Each subcommand parses its arguments here and calls one function of the package; user errors (a bad
recipe key, a missing data root, a corrupt image, a checkpoint for another model) are printed as one
line on stderr with exit status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nlseg.config import ConfigError

# Errors that describe a user's input, not a bug: printed without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from nlseg.data.base import DatasetError
    from nlseg.engine.checkpoint import CheckpointError
    from nlseg.engine.trainer import TrainingDiverged

    return USER_ERRORS + (DatasetError, CheckpointError, TrainingDiverged)


def _add_recipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name (see `nlseg list recipes`) or a YAML file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.iters=1000 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe")
    _add_recipe(p)
    p.add_argument("--work-dir", required=True, help="folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt exactly")

    p = sub.add_parser("eval", help="evaluate a checkpoint on the recipe's validation split")
    _add_recipe(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--export-dir", help="write one prediction per image in the data set's submission format")
    p.add_argument("--split", help="split to evaluate (default: the recipe's data.val_split)")

    p = sub.add_parser("predict", help="segment images with a checkpoint")
    _add_recipe(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="an image or a folder of images")
    p.add_argument("--output", required=True, help="folder for index PNGs, colour PNGs and overlays")

    p = sub.add_parser("bench", help="efficiency reports (FLOPs, memory, time)")
    p.add_argument("target", choices=["ops", "blocks", "models", "table5"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of that report (--help for them)")

    p = sub.add_parser("viz", help="pictures: attention maps, predictions, confusion matrix, curves")
    p.add_argument("target", choices=["attention", "predictions", "confusion", "curves"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of that picture (--help for them)")

    p = sub.add_parser("demo", help="train Baseline and Denoised NL on the embedded data set and compare")
    p.add_argument("--out-dir", default="demo_out", help="folder for the pictures and the work dirs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, help="training iterations per model (default: the demo recipe's)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a field of both demo recipes, e.g. --set train.lr=0.001 (repeatable)",
    )

    p = sub.add_parser("list", help="list models, blocks, recipes or data sets")
    p.add_argument("what", choices=["models", "blocks", "recipes", "datasets"])
    return parser


def _list(what: str) -> None:
    if what == "recipes":
        from nlseg.config import list_recipes

        names = list_recipes()
    elif what == "datasets":
        from nlseg.data import list_datasets

        names = ["synthetic", *list_datasets()]
    else:
        import nlseg

        names = nlseg.list_models() if what == "models" else nlseg.list_blocks()
    print("\n".join(names))


def run(args: argparse.Namespace) -> None:
    if args.command == "train":
        from nlseg.engine.trainer import main_train

        main_train(args)
    elif args.command == "eval":
        from nlseg.engine.evaluate import main_eval

        main_eval(args)
    elif args.command == "predict":
        from nlseg.engine.inference import main_predict

        main_predict(args)
    elif args.command == "bench":
        from nlseg.analysis.bench import main_bench

        main_bench(args.target, args.rest)
    elif args.command == "viz":
        from nlseg.analysis.viz import main_viz

        main_viz(args.target, args.rest)
    elif args.command == "demo":
        from nlseg.engine.demo import main_demo

        main_demo(args)
    elif args.command == "list":
        _list(args.what)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except _user_errors() as err:
        print(f"nlseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
