"""``nlseg viz {attention,predictions,compare,stages,confusion,curves} ...``: one PNG each, its path printed.

Each subcommand turns its arguments into one call of :mod:`nlseg.analysis.viz` (``compare`` and ``stages``: of
:mod:`nlseg.analysis.figures`).
"""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_device, add_overrides, path_arg

TARGETS = ("attention", "predictions", "compare", "stages", "confusion", "curves")


def _pixel(text: str) -> tuple[int, int]:
    """``"120,300"`` -> (120, 300): Y,X (row, column)."""
    try:
        y, x = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"pixel {text!r} is not Y,X (row, column), e.g. 120,300") from None
    return y, x


def _add_model(parser: argparse.ArgumentParser) -> None:
    """The recipe, the checkpoint, ``--set`` and ``--device`` of the pictures that run a trained model."""
    parser.add_argument("recipe", type=path_arg, help="recipe name or YAML file the checkpoint was trained with")
    parser.add_argument(
        "--checkpoint", required=True, type=path_arg,
        help="an nlseg checkpoint (best.pt or last.pt of a work dir)",
    )
    add_overrides(parser)
    add_device(parser)


def add_parser(sub) -> None:
    p = sub.add_parser("viz", help="pictures: attention maps, predictions, comparisons, stage features, confusion "
                       "matrix, curves")
    targets = p.add_subparsers(dest="target", required=True, metavar="PICTURE")

    t = targets.add_parser(
        "attention", help="one pixel's attention map in the model's context block, over the image",
        description="One pixel's attention map in the model's context block, over the image (Denoised NL: A, A' "
        "after GR, A'' after LR, as Fig. 11; NL / APNB / CCNet / DANet: their map).",
    )
    _add_model(t)
    t.add_argument("--image", required=True, type=path_arg, help="the image file")
    t.add_argument("--pixel", type=_pixel, required=True, help="Y,X in image coordinates (row, column)")
    t.add_argument("--out", type=path_arg, help="PNG file (default attention_Y_X.png)")

    t = targets.add_parser("predictions", help="input / prediction / overlay, one row per image",
                           description="Input / prediction / overlay, one row per image.")
    _add_model(t)
    t.add_argument("--images", nargs="+", required=True, type=path_arg, help="image files and/or folders of images")
    t.add_argument("--out", required=True, type=path_arg, help="PNG file")

    t = targets.add_parser(
        "compare", help="input / ground truth / prediction / error map, one row per image of a split",
        description="Input, ground truth, prediction and error map (wrong pixels red, ignored pixels grey, right "
        "pixels the image dimmed), one row for each of the first --num images of a split of the recipe's data set; "
        "labels and predictions as `nlseg eval` sees them.",
    )
    _add_model(t)
    t.add_argument("--split", help="the split (default: the recipe's data.val_split)")
    t.add_argument("--num", type=int, default=4, help="images, the split's first ones (default 4)")
    t.add_argument("--out", required=True, type=path_arg, help="PNG file")

    t = targets.add_parser(
        "stages", help="the five backbone stages' features of one or two models on an image (ANN Fig. 7)",
        description="ANN Fig. 7: the image, then the feature map of each backbone stage (stem, layer1-4) as the "
        "channel mean of |activation|, min-max scaled per map, a row per model. A model is --model RECIPE "
        "[CHECKPOINT]; without a checkpoint, the recipe's initial weights (train.seed, and model.pretrained_backbone "
        "when set).",
    )
    t.add_argument("--image", required=True, type=path_arg, help="the image file")
    t.add_argument("--model", dest="models", nargs="+", action="append", required=True,
                   metavar="RECIPE [CHECKPOINT]", help="a row: a recipe and optionally a checkpoint (1 or 2 rows)")
    t.add_argument("--labels", nargs="+", metavar="TITLE",
                   help="row titles, one per --model (default: from the recipe and checkpoint)")
    t.add_argument("--out", required=True, type=path_arg, help="PNG file")
    add_overrides(t)
    add_device(t)

    t = targets.add_parser("confusion", help="the row-normalised confusion matrix of an `nlseg eval --out` JSON",
                           description="The row-normalised confusion matrix of an `nlseg eval --out` JSON.")
    t.add_argument("--eval-json", required=True, type=path_arg, help="the JSON written by `nlseg eval ... --out FILE`")
    t.add_argument("--out", required=True, type=path_arg, help="PNG file")

    t = targets.add_parser(
        "curves", help="training loss, learning rate and validation mIoU of a work dir",
        description="Training loss, learning rate and validation mIoU of a work dir's metrics.jsonl.",
    )
    t.add_argument("work_dir", type=path_arg, help="the work dir of an `nlseg train` run (holds metrics.jsonl)")
    t.add_argument("--out", required=True, type=path_arg, help="PNG file")


def _device(name: str):
    from nlseg.engine.device import resolve_device

    return resolve_device(name)


def _model_specs(models: list[list[str]], labels: list[str] | None) -> list:
    """``--model RECIPE [CHECKPOINT]`` rows (and ``--labels``) -> ModelSpecs; ConfigError for a bad count."""
    from nlseg.analysis.figures import ModelSpec
    from nlseg.errors import ConfigError

    if len(models) > 2 or any(len(m) > 2 for m in models):
        raise ConfigError(f"--model takes RECIPE [CHECKPOINT], at most twice; got {' | '.join(map(' '.join, models))}")
    titles = labels or [None] * len(models)
    if len(titles) != len(models):
        raise ConfigError(f"--labels names {len(titles)} rows, but there are {len(models)} --model rows")
    return [ModelSpec(m[0], m[1] if len(m) == 2 else None, t) for m, t in zip(models, titles)]


def run(args: argparse.Namespace) -> None:
    from nlseg.analysis import viz

    if args.target == "attention":
        out, index, grid = viz.viz_attention(
            args.recipe, args.checkpoint, args.image, args.pixel, overrides=args.overrides,
            device=_device(args.device), out=args.out,
        )
        y, x = args.pixel
        print(f"pixel ({y}, {x}) is cell {index} of the block's {grid[0]} x {grid[1]} grid")
    elif args.target == "predictions":
        out = viz.viz_predictions(
            args.recipe, args.checkpoint, args.images, args.out, overrides=args.overrides, device=_device(args.device)
        )
    elif args.target == "compare":
        from nlseg.analysis.figures import viz_compare

        out, scores = viz_compare(args.recipe, args.checkpoint, args.out, split=args.split, num=args.num,
                                  overrides=args.overrides, device=_device(args.device))
        for score in scores:
            print(f"{score['name']}: pixel accuracy {score['pixel_accuracy']:.1f}%")
    elif args.target == "stages":
        from nlseg.analysis.figures import viz_stages

        out, _ = viz_stages(args.image, _model_specs(args.models, args.labels), args.out, overrides=args.overrides,
                            device=_device(args.device))
    elif args.target == "confusion":
        out = viz.viz_confusion(args.eval_json, args.out)
    else:
        out = viz.viz_curves(args.work_dir, args.out)
    print(f"wrote {out}")
