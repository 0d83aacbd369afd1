"""``nlseg demo``: train the Baseline and the Denoised NL network on the embedded data set and compare.

Both recipes (``configs/demo_baseline.yaml`` and ``configs/demo.yaml``) share everything but the
context block: the same small dilated ResNet-18, the same Denoised NL pipeline (reduction to 1/16,
head, auxiliary heads), the same data, seed and schedule. ``SyntheticContext`` is built so that
some classes can only be told apart with evidence from far away in the image, which is what a
non-local block supplies; the table shows per-class IoU of both, and a picture shows inputs,
ground truth and both predictions.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nlseg.config import Config, load_config
from nlseg.data.build import build_dataset
from nlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.trainer import build_model, train

__all__ = ["main_demo", "run_demo"]

RUNS = (("Baseline", "demo_baseline"), ("Denoised NL", "demo"))


def _table(names: list[str], results: dict[str, dict[str, Any]]) -> str:
    labels = list(results)
    lines = ["| class | " + " | ".join(labels) + " | Δ |", "|---|" + "---:|" * (len(labels) + 1)]
    for name in names:
        ious = [results[label]["per_class_iou"][name] for label in labels]
        cells = ["—" if iou is None or math.isnan(iou) else f"{iou:.1f}" for iou in ious]
        delta = ious[-1] - ious[0] if None not in ious else float("nan")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta:+.1f} |")
    for key in ("mIoU", "mAcc", "aAcc"):
        values = [results[label][key] for label in labels]
        lines.append(
            f"| **{key}** | " + " | ".join(f"**{v:.1f}**" for v in values) + f" | **{values[-1] - values[0]:+.1f}** |"
        )
    return "\n".join(lines)


def _picture(cfg: Config, models: dict[str, torch.nn.Module], path: Path, count: int = 6) -> None:
    """Rows of: input, ground truth, then each model's prediction, colour-coded with the data set palette."""
    dataset = build_dataset(cfg, cfg.data.val_split, train=False)
    palette = np.asarray(dataset.palette, dtype=np.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rows = []
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        image = ((sample["image"] * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        label = sample["label"].numpy()
        truth = palette[np.where(label == dataset.ignore_index, 0, label)]
        truth[label == dataset.ignore_index] = 0  # ignored pixels drawn black, not as a class
        tiles = [image, truth]
        for model in models.values():
            with torch.no_grad():
                pred = model(sample["image"][None])["out"][0].argmax(0)
            tiles.append(palette[pred.numpy()])
        gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1))
    grid = np.concatenate([r for row in rows for r in (row, np.full((4, row.shape[1], 3), 255, np.uint8))][:-1])
    Image.fromarray(grid).save(path)


def run_demo(out_dir: str | Path = "demo_out", *, seed: int = 0, iters: int | None = None) -> dict[str, Any]:
    """Train both demo recipes into ``out_dir/work/``, print the comparison, write ``out_dir/predictions.png``.

    Returns:
        per model label: the validation metrics; plus ``seconds`` per model.
    """
    out_dir = Path(out_dir)
    overrides = [f"train.seed={seed}"] + ([f"train.iters={iters}"] if iters else [])
    results: dict[str, dict[str, Any]] = {}
    models: dict[str, torch.nn.Module] = {}
    cfg = None
    for label, recipe in RUNS:
        cfg = load_config(recipe, overrides)
        if not results:
            from nlseg.data.synthetic import SyntheticContext

            print(SyntheticContext.describe(), end="\n\n", flush=True)
        print(f"== {label}: {cfg.description}", flush=True)
        start = time.perf_counter()
        metrics = train(cfg, out_dir / "work" / recipe)
        results[label] = {**metrics, "seconds": time.perf_counter() - start}
        state = load_checkpoint(out_dir / "work" / recipe / "last.pt")
        model = build_model(cfg, state["num_classes"])
        model.load_state_dict(state["model"])
        models[label] = model.eval()
    class_names = list(next(iter(results.values()))["per_class_iou"])
    print("\nPer-class IoU (%) on the validation split of SyntheticContext:\n")
    print(_table(class_names, results))
    print("\nTraining time: " + ", ".join(f"{k} {v['seconds'] / 60:.1f} min" for k, v in results.items()))
    picture = out_dir / "predictions.png"
    _picture(cfg, models, picture)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nPictures (input | ground truth | {' | '.join(results)}): {picture}")
    print(f"Work dirs, checkpoints and metrics: {out_dir / 'work'}")
    return results


def main_demo(args: argparse.Namespace) -> None:
    """``nlseg demo [--out-dir DIR] [--seed N] [--iters N]``."""
    run_demo(args.out_dir, seed=args.seed, iters=args.iters)
