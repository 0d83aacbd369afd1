"""``nlseg export [RECIPE] --checkpoint CKPT --out FILE [--format onnx] [--opset N] [--height H --width W]``.

The file's input ``image`` is float32 (B, 3, H, W) RGB in 0..1 (an image as read, divided by 255; the
model's normalisation is inside the graph); its output ``logits`` is (B, K, H, W), the main head's logits at
the input's size (argmax: the classes). The auxiliary heads are not outputs.
The model comes from the checkpoint, as for ``nlseg eval`` and ``predict``; a RECIPE, when given, is checked
against it. After writing, the file is run in onnxruntime and compared with PyTorch.
"""
from __future__ import annotations

import argparse

from nlseg.cli.common import add_recipe, check_output_file, path_arg, pixels
from nlseg.errors import OutputError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint's model as an ONNX file (input: RGB 0..1, output: logits)",
        description="Export a trained model. The ONNX graph takes `image`, float32 (B, 3, H, W) RGB in 0..1, "
        "normalised inside the graph as in training, and returns `logits`, float32 (B, K, H, W) at the input's "
        "size (argmax over K gives the classes). Batch, height and width are dynamic (also for adaptive average "
        "pooling to bins: APNB/AFNB pyramid sampling, PPM, DRANet), except for ANN's max pyramid pooling "
        "(pool_mode=max), whose height and width are fixed to the example size (--height, --width). The file "
        "is then run in onnxruntime and compared with PyTorch. Needs `pip install nlseg[onnx]`.",
    )
    add_recipe(p, optional=True)
    p.add_argument(
        "--checkpoint", required=True, type=path_arg,
        help="an nlseg checkpoint (best.pt or last.pt of a work dir)",
    )
    p.add_argument(
        "--out", required=True, type=path_arg,
        help="the file to write, e.g. model.onnx (checked writable first)",
    )
    p.add_argument("--format", default="onnx", help="file format; onnx is the one there is (default: onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or newer (default: 18)")
    p.add_argument(
        "--height", type=pixels,
        help="height of the example input, the only height a fixed-size (max-pooling) model accepts "
        "(default: the recipe's eval.crop_size, else data.crop_size; with --width alone: as --width)",
    )
    p.add_argument("--width", type=pixels, help="width of the example input (default: as --height)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> None:
    from nlseg.config import load_config
    from nlseg.engine.export import INPUT_NAME, OUTPUT_NAME, export_checkpoint

    cfg = load_config(args.recipe, args.overrides) if args.recipe else None
    out = check_output_file(args.out, "--out")
    if out.exists() and not args.overwrite:
        raise OutputError(f"--out {out} exists; pass --overwrite to replace it")
    size = None
    if args.height is not None or args.width is not None:
        size = (args.height or args.width, args.width or args.height)
    result = export_checkpoint(args.checkpoint, out, cfg=cfg, format=args.format, opset=args.opset, example_size=size)
    h, w = result.example_size
    shape = "(B, 3, H, W), any H and W" if result.dynamic_size else f"(B, 3, {h}, {w})"
    print(f"wrote {out} ({result.size_bytes / 2**20:.1f} MiB, opset {result.opset}) in {result.seconds:.1f} s")
    print(f"input {INPUT_NAME!r}: float32 {shape}, RGB in 0..1; output {OUTPUT_NAME!r}: float32 (B, K, H, W) logits")
    if not result.dynamic_size:
        print(f"height and width are fixed to {h}x{w}: {result.static_reason}")
    checks = ", ".join(f"{d:.1e} at {hh}x{ww}" for (hh, ww), d in result.max_abs_diff.items())
    print(f"onnxruntime vs PyTorch, max |logit difference|: {checks}")
