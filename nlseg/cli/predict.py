"""``nlseg predict RECIPE --checkpoint CKPT --input PATH [PATH ...] --output DIR [--max-size N] [--strict]
[--skip-existing] [--compile auto|on|off]``.

Writes ``<name>.png`` (train ids, palette), ``<name>_color.png`` and ``<name>_overlay.png`` per image;
``<name>`` is the image's stem, or ``<stem>_<extension>`` when several inputs share a stem. Exit status:
0 when every image was predicted, 1 when some could not be read (each reported on one line), 2 for a
user error (an output that would replace an input, a bad checkpoint, with ``--strict`` an unreadable image).
"""
from __future__ import annotations

import argparse
import sys

from nlseg.cli.common import (
    add_compile,
    add_device,
    add_recipe,
    check_output_dir,
    compile_override,
    path_arg,
    pixels,
)


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="segment images with a checkpoint")
    add_recipe(p)
    p.add_argument(
        "--checkpoint", required=True, type=path_arg,
        help="an nlseg checkpoint (best.pt or last.pt of a work dir)",
    )
    p.add_argument(
        "--input", required=True, nargs="+", metavar="PATH", type=path_arg,
        help="images, or folders of images (the image files directly inside; other files are passed over)",
    )
    p.add_argument(
        "--output", required=True, type=path_arg,
        help="folder for index PNGs, colour PNGs and overlays; refused when an output would replace an input",
    )
    p.add_argument(
        "--max-size", type=pixels, metavar="N",
        help="predict images whose long side exceeds N pixels at long side N, then enlarge the class map back "
        "(nearest neighbour) to the image's size; bounds time and memory on large photos (default: full size)",
    )
    p.add_argument(
        "--skip-existing", action="store_true",
        help="pass over the images whose three outputs exist in --output (resume an interrupted job; outputs are "
        "written whole or not at all, so an existing one is complete)",
    )
    p.add_argument(
        "--strict", action="store_true",
        help="stop at the first image that cannot be read (exit 2) instead of reporting it and going on",
    )
    add_compile(p)
    add_device(p)


def run(args: argparse.Namespace) -> int:
    from nlseg.config import load_config
    from nlseg.engine.device import resolve_device
    from nlseg.engine.inference import Segmenter, build_model_from_checkpoint
    from nlseg.engine.predict import collect_images, plan_outputs, predict_paths

    cfg = load_config(args.recipe, compile_override(args))
    inputs, passed_over = collect_images(args.input)
    plan_outputs(inputs, args.output)  # an output that would replace an input stops here, before any work
    output = check_output_dir(args.output, "--output")
    device = resolve_device(args.device)
    model, state = build_model_from_checkpoint(args.checkpoint, cfg, device)
    segmenter = Segmenter.from_state(model, state, dataset=cfg.data.dataset, eval_cfg=cfg.eval, device=device)
    if passed_over:
        names = ", ".join(p.name for p in passed_over[:5]) + (", ..." if len(passed_over) > 5 else "")
        print(f"passed over {len(passed_over)} file(s) that are not images: {names}", file=sys.stderr)
    summary = predict_paths(segmenter, inputs, output, max_size=args.max_size, strict=args.strict,
                            skip_existing=args.skip_existing)
    print(summary.describe())
    return 1 if summary.failed else 0
