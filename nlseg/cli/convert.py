"""``nlseg convert {ann-backbone,ann,dnl,mmseg} SRC --out DST [--recipe R] [--set KEY=VALUE ...] [--overwrite]``."""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_overrides, check_output_file, path_arg
from nlseg.errors import ConfigError, OutputError

FORMATS: tuple[str, ...] = ("ann-backbone", "ann", "dnl", "mmseg")
"""``nlseg.engine.convert.FORMATS`` and ``mmseg``, named here so that building the parser imports no torch."""
FORMAT_HELP = (
    "ann-backbone: ANN's ImageNet deep-base ResNet (3x3resnet101-imagenet.pth) -> a model.pretrained_backbone "
    "file; ann: ANN's released network checkpoint (fs_annn_cityscapes_segohem_latest.pth) -> an nlseg checkpoint; "
    "dnl: a state dict of the released Denoised NL model.py network -> an nlseg checkpoint; mmseg: an "
    "mmsegmentation 1.x checkpoint on ResNetV1c-50/101 (-d8) -> an nlseg checkpoint: NLHead, DAHead, PSPHead, "
    "ASPPHead, ANNHead, CCHead and FCNHead load into nl_head, danet_head, ppm_head, aspp_head, ann_head, ccnet_head "
    "and fcn_head (the head read from the file's keys); DNLHead (Disentangled Non-Local, not Denoised NL) is "
    "recognised and refused, with what differs"
)


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert the authors' released weight files into files nlseg loads")
    p.add_argument("format", choices=FORMATS, help=FORMAT_HELP)
    p.add_argument("source", type=path_arg, help="the released file (.pth)")
    p.add_argument(
        "--out", required=True, type=path_arg,
        help="the file to write (.pt); checked writable before converting",
    )
    p.add_argument(
        "--recipe", type=path_arg,
        help="recipe (name or YAML file) of the model a checkpoint is for (default: ann_r101_cityscapes for ann, "
        "denoised_nl_r101_cityscapes for dnl, HEAD_head_rDEPTH_cityscapes after the file for mmseg; not used by "
        "ann-backbone)",
    )
    add_overrides(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> None:
    from nlseg.config import load_config
    from nlseg.engine.checkpoint import save_checkpoint
    from nlseg.engine.convert import LAYOUTS, convert_released

    out = check_output_file(args.out, "--out")
    if out.exists() and not args.overwrite:
        raise OutputError(f"--out {out} exists; pass --overwrite to replace it")
    if args.format == "mmseg":
        _run_mmseg(args, out)
        return
    layout = LAYOUTS[args.format]
    if not layout.models and (args.recipe or args.overrides):
        raise ConfigError(f"the {layout.name} format converts a backbone file; it takes no --recipe or --set")
    recipe = args.recipe or layout.recipe
    cfg = load_config(recipe, args.overrides) if layout.models else None
    converted = convert_released(layout.name, args.source, cfg)
    save_checkpoint(converted, out)
    if cfg is None:
        print(f"{args.source} ({layout.description}): {len(converted)} tensors written to {out}")
        print(f"use it with --set model.pretrained_backbone={out} (a recipe with model.options.stem: deep)")
        return
    print(f"{args.source} ({layout.description}): {converted['model_name']} with {converted['num_classes']} classes "
          f"written to {out}")
    print(f"evaluate it with: nlseg eval {recipe} --checkpoint {out} --set data.root=...")


def _run_mmseg(args: argparse.Namespace, out) -> None:
    from nlseg.config import load_config
    from nlseg.engine.checkpoint import save_checkpoint
    from nlseg.engine.convert_mmseg import convert_mmseg, mmseg_recipe

    recipe = args.recipe or mmseg_recipe(args.source)
    converted = convert_mmseg(args.source, load_config(recipe, args.overrides))
    save_checkpoint(converted, out)
    print(f"{args.source} (mmsegmentation): {converted['model_name']} with {converted['num_classes']} classes "
          f"written to {out}")
    print(f"evaluate it with: nlseg eval {recipe} --checkpoint {out} --set data.root=...")
