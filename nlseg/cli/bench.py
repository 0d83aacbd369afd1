"""``nlseg bench {ops,blocks,breakdown,models,table5,train} ...``: efficiency reports (FLOPs, memory, time).

Each subcommand turns its arguments into one call of a table module of :mod:`nlseg.analysis.tables`,
prints the run's header (:func:`nlseg.analysis.runinfo.run_header`) and the report's Markdown and, with
``--json``, writes its records. Sizes are written ``HxW`` (rows x
columns): the papers' ``2048x1024`` is ``1024x2048`` here.
"""
from __future__ import annotations

import argparse
import sys

from nlseg.cli.common import add_compile, add_recipe, path_arg
from nlseg.errors import ConfigError

TARGETS = ("ops", "blocks", "breakdown", "models", "table5", "train")


def parse_size(text: str) -> tuple[int, int]:
    """``"96x96"`` -> (96, 96): (H, W)."""
    try:
        h, w = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 96x96") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def _sizes(text: str) -> list[tuple[int, int]]:
    """``"96x96,128x256"`` -> [(96, 96), (128, 256)]."""
    return [parse_size(part) for part in text.split(",") if part]


def _names(text: str) -> list[str]:
    """``"nl, apnb"`` -> ["nl", "apnb"]."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _common(
    parser: argparse.ArgumentParser, *, repeats: int | None = 3, repeats_help: str = "timed repeats (default 3)"
) -> None:
    """``--device``, ``--threads``, ``--repeats`` and ``--json``, which every report takes."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    parser.add_argument(
        "--json", metavar="OUT", type=path_arg,
        help="also write the records to this JSON file (a list)",
    )


LARGE_GFLOPS_TEXT = "1000"
"""nlseg.analysis.tables.ann_table2.LARGE_GFLOPS in the help of --repeats (not imported: it would load torch)."""


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="efficiency reports (FLOPs, memory, time)",
                       description="Efficiency reports: ops, blocks (ANN Table 1), models (ANN Table 2), "
                       "table5 (Denoised NL Table V). FLOPs are counted on the meta device, 2 per multiply-add.")
    targets = p.add_subparsers(dest="target", required=True, metavar="REPORT")

    t = targets.add_parser(
        "ops", help="the attention ops, released (materialised) form against nlseg's",
        description="Attention ops, the released (materialised) form against nlseg's, side by side: Denoised NL "
        "(Ck = 64, Cv = 512, K = 19) and plain non-local attention (Ck = Cv = 256), forward and forward+backward "
        "time, peak extra memory and GFLOP/s next to a plain 4096² matmul's.",
    )
    t.add_argument("--denoised-sizes", nargs="+", type=parse_size, default=[(48, 48), (48, 96), (64, 128)],
                   help="HxW maps of the Denoised NL op (default 48x48 48x96 64x128)")
    t.add_argument("--nonlocal-sizes", nargs="+", type=parse_size, default=[(96, 96), (128, 256)],
                   help="HxW maps of the non-local op (default 96x96 128x256)")
    t.add_argument("--max-released-gib", type=float, default=12.0,
                   help="skip a released-form run whose N x N maps alone would exceed this (default 12 GiB)")
    _common(t)

    t = targets.add_parser(
        "blocks", help="ANN Table 1 (NB against APNB) and any block of `nlseg list blocks`",
        description="Blocks at one input: GFLOPs, parameters, peak memory, time. By default ANN Table 1: NB "
        "and APNB at C = 2048, Ĉ = 256, measured as the paper measures them — key (= query) and value "
        "1x1 convs, the attention and Wo, without the concatenation and the fusion conv — in eval mode without "
        "autograd; the paper's GFLOPs are multiply-adds (GMACs here).",
    )
    t.add_argument("--blocks", type=_names, default=["nb", "apnb"],
                   help="comma-separated block names (`nlseg list blocks`), or 'all' (default nb,apnb: ANN Table 1)")
    t.add_argument("--sizes", type=_sizes, default=[(96, 96)], help="feature map sizes HxW, comma-separated "
                   "(default 96x96)")
    t.add_argument("--channels", type=int, default=2048, help="input channels C (default 2048)")
    t.add_argument("--key-channels", type=int, default=256, help="key/value channels Ĉ (default 256)")
    t.add_argument("--low-channels", type=int, default=1024, help="low-level channels of fusion blocks (default 1024)")
    t.add_argument("--backward", action="store_true", help="time forward + backward (eval-mode norms)")
    t.add_argument("--whole", action="store_true",
                   help="measure nb and apnb as whole blocks, as create_block builds them (with the concatenation and "
                   "the fusion conv; nb with separate θ and φ) instead of ANN Table 1's unit")
    t.add_argument("--lean-only", action="store_true",
                   help="measure nb's Table 1 unit with nlseg's flash attention only (skip the materialised form "
                   "the paper measured; it needs 2 N x N maps: 8 GiB at 128x256)")
    _common(t)

    t = targets.add_parser(
        "breakdown", help="ANN Fig. 2: the time of each operation of NB and APNB, their sum against the whole block",
        description="ANN Fig. 2: NB and APNB (C = 2048, Ĉ = 256, key and query shared, as ANN Table 1) split into "
        "their own operations, called in order on the real tensors (1x1 convs, BN, ReLU, pyramid sampling, Q·Kᵀ, "
        "softmax, the product with V, Wo, the concatenation, the fusion conv), each timed alone (warm-up, repeats, "
        "median), then the whole forward; the table prints the sum of the steps against the whole. The attention "
        "is the materialised form the paper timed (NB at 128x256 holds two 4 GiB maps).",
    )
    t.add_argument("--sizes", type=_sizes, default=[(128, 256)], help="feature map sizes HxW, comma-separated "
                   "(default 128x256: the paper's 256x128, W x H)")
    t.add_argument("--channels", type=int, default=2048, help="input channels C (default 2048)")
    t.add_argument("--key-channels", type=int, default=256, help="key/value channels Ĉ (default 256)")
    t.add_argument("--plot", metavar="PNG", type=path_arg,
                   help="also draw the steps as stacked bars per block (needs matplotlib: nlseg[viz])")
    _common(t)

    t = targets.add_parser(
        "models", help="whole networks, inference or a training step (ANN Table 2)",
        description="Whole networks: parameters, forward GFLOPs (counted on the meta device), time per batch, "
        "images/s, peak memory; inference (eval, no autograd) or --train (forward + backward + SGD step). ANN "
        "Table 2 measures ann_r101 at 1024x2048 on a Titan Xp: about a minute per image on a 2-core CPU.",
    )
    t.add_argument("--models", type=_names, default=["ann_r101"], help="comma-separated model names "
                   "(`nlseg list models`; default ann_r101)")
    t.add_argument("--size", type=parse_size, default=(512, 1024), help="input HxW (default 512x1024)")
    t.add_argument("--batch-size", type=int, default=1, help="images per step (default 1)")
    t.add_argument("--num-classes", type=int, default=19, help="classes of the models (default 19, Cityscapes)")
    t.add_argument("--train", action="store_true", help="time a training step instead of inference")
    add_compile(t, default="off", recipe=False)
    _common(t, repeats=None, repeats_help=f"timed repeats (default 3, or 1 without warm-up when a forward "
            f"exceeds {LARGE_GFLOPS_TEXT} GFLOPs)")

    t = targets.add_parser(
        "table5", help="the blocks of Denoised NL Table V at their 1/16 input",
        description="Denoised NL Table V: what each block adds over the Baseline, measured on the block alone at "
        "its 1/16 input (512 channels; Denoised NL gets 19-class probabilities at the same size): GFLOPs, peak "
        "memory and time of its forward pass (eval, no autograd). Denoised NL twice: released (fused=False: "
        "materialised N x N maps, A'' through a (B, N, k², N) unfold) and nlseg's lean exact op.",
    )
    t.add_argument("--sizes", "--size", type=_sizes, default=[(768, 768)],
                   help="image sizes HxW, comma-separated (default 768x768; Cityscapes full resolution is 1024x2048)")
    t.add_argument("--backward", action="store_true", help="time forward + backward (eval-mode norms)")
    t.add_argument("--max-released-gib", type=float, default=12.0,
                   help="skip the released Denoised NL when its maps would exceed this (default 12 GiB)")
    _common(t)

    t = targets.add_parser(
        "train", help="a recipe's training speed: data loader alone, step alone, full loop, per speed switch",
        description="A recipe's training speed in images/s: its data loader alone (transforms, data.num_workers), "
        "the training step alone on a fixed batch (forward, backward, optimizer), and the full loop, for the recipe "
        "as built and with each speed switch on (train.channels_last, train.compile, train.amp=bf16, all), the "
        "levers alternating, median of the repeats.",
    )
    add_recipe(t)
    t.add_argument("--levers", type=_names, default=["as_built", "channels_last", "compile", "bf16", "all"],
                   help="comma-separated levers (default as_built,channels_last,compile,bf16,all)")
    t.add_argument("--steps", type=int, default=2, help="optimiser steps per timed window (default 2)")
    _common(t)


def _check_names(what: str, flag: str, names: list[str], known: list[str]) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"{flag}: unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> None:
    import torch

    from nlseg.cli.common import check_output_file

    if args.json:
        check_output_file(args.json, "--json")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    common = {"device": args.device, "repeats": args.repeats, "log": _log}
    if args.target == "ops":
        from nlseg.analysis.tables.ops import ops_table

        report = ops_table(denoised_sizes=args.denoised_sizes, nonlocal_sizes=args.nonlocal_sizes,
                           max_released_gib=args.max_released_gib, **common)
    elif args.target == "blocks":
        from nlseg.analysis.tables.ann_table1 import blocks_table
        from nlseg.blocks import list_blocks

        blocks = list_blocks() if "all" in args.blocks else args.blocks
        _check_names("block", "--blocks", blocks, list_blocks())
        if args.lean_only and args.whole:
            raise ConfigError("--lean-only applies to the ANN Table 1 unit of nb; drop --whole")
        report = blocks_table(blocks, args.sizes, channels=args.channels, key_channels=args.key_channels,
                              low_channels=args.low_channels, whole=args.whole, released=not args.lean_only,
                              backward=args.backward, **common)
    elif args.target == "breakdown":
        from nlseg.analysis.tables.ann_fig2 import breakdown_table

        for flag, value in (("--channels", args.channels), ("--key-channels", args.key_channels),
                            ("--repeats", args.repeats)):
            if value < 1:
                raise ConfigError(f"{flag} must be a positive integer, got {value}")
        if args.plot:
            from nlseg.analysis.viz import _matplotlib

            check_output_file(args.plot, "--plot")
            _matplotlib()  # before minutes of timing: the picture needs it
        report = breakdown_table(args.sizes, channels=args.channels, key_channels=args.key_channels, **common)
    elif args.target == "models":
        from nlseg.analysis.tables.ann_table2 import models_table
        from nlseg.models import list_models

        _check_names("model", "--models", args.models, list_models())
        if args.train and args.compile != "off":
            raise ConfigError("--compile applies to inference; a training step compiles with `nlseg bench train`")
        report = models_table(args.models, args.size, batch_size=args.batch_size, num_classes=args.num_classes,
                              train=args.train, compile=args.compile, **common)
    elif args.target == "train":
        from nlseg.analysis.tables.train_speed import LEVERS, train_speed_table
        from nlseg.config import load_config

        _check_names("lever", "--levers", args.levers, list(LEVERS))
        cfg = load_config(args.recipe, args.overrides, purpose="train")
        report = train_speed_table(cfg, levers=args.levers, steps=args.steps, **common)
    else:
        from nlseg.analysis.tables.dnl_table5 import table5

        report = table5(args.sizes, backward=args.backward, max_released_gib=args.max_released_gib, **common)
    from nlseg.analysis.runinfo import run_header

    print(run_header())
    print()
    print(report.markdown())
    if args.json:
        report.write_json(args.json)
    if getattr(args, "plot", None):
        from nlseg.analysis.tables.ann_fig2 import plot_breakdown

        print(f"wrote {plot_breakdown(report.records, args.plot)}")
