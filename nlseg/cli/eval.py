"""``nlseg eval RECIPE --checkpoint CKPT [--out FILE] [--export-dir DIR] [--split NAME] [--device DEV]
[--compile auto|on|off]``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import (
    add_compile,
    add_device,
    add_recipe,
    check_output_dir,
    check_output_file,
    compile_override,
    path_arg,
)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on the recipe's validation split")
    add_recipe(p)
    p.add_argument(
        "--checkpoint", required=True, type=path_arg,
        help="an nlseg checkpoint (best.pt or last.pt of a work dir)",
    )
    p.add_argument(
        "--out", type=path_arg,
        help="write the metrics as JSON to this file (checked writable before evaluating)",
    )
    p.add_argument(
        "--export-dir", type=path_arg,
        help="write one prediction per image in the data set's submission format into this folder",
    )
    p.add_argument("--split", help="split to evaluate (default: the recipe's data.val_split)")
    add_compile(p)
    add_device(p)


def run(args: argparse.Namespace) -> None:
    from nlseg.config import load_config
    from nlseg.engine.evaluate import evaluate_checkpoint, format_table, metrics_to_json

    cfg = load_config(args.recipe, compile_override(args))
    out = check_output_file(args.out, "--out") if args.out else None
    export_dir = check_output_dir(args.export_dir, "--export-dir") if args.export_dir else None
    record = evaluate_checkpoint(cfg, args.checkpoint, split=args.split, device=args.device, export_dir=export_dir)
    print(f"{cfg.name}: {cfg.data.dataset} {record['split']}, checkpoint {args.checkpoint}")
    print(format_table(record))
    if export_dir is not None:
        print(f"predictions ({record['export_format']} format) written to {export_dir}")
    if out is not None:
        out.write_text(metrics_to_json(record))
        print(f"metrics written to {out}")
