"""``nlseg demo``: train the Baseline and the Denoised NL network on the embedded data set and compare.

Both recipes (``nlseg/configs/demo_baseline.yaml`` and ``nlseg/configs/demo.yaml``) share everything but the
context block: the same small dilated ResNet-18, the same Denoised NL pipeline (reduction to 1/16,
head, auxiliary heads), the same data, seed and schedule. ``SyntheticContext`` is built so that
some classes can only be told apart with evidence from far away in the image, which is what a
non-local block supplies.

As the paper recipes train on crops and test on whole images, both networks train on 96x256 strips
and are scored on 96x512 strips of the same generator. In training every far disc lies at least
128 px from its beacon, which the Baseline's convolutions learn to reach; in the test strips they lie
at least 256 px away. The demo prints the per-class IoU of both networks on the test strips, a second
table that splits the disc pixels by their distance from the beacon (on both strip sizes), and writes
a picture of inputs, ground truth and both predictions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from nlseg.config import Config, load_config
from nlseg.data.build import build_dataset
from nlseg.data.synthetic import BEACON_A, BEACON_B, DISC_A, DISC_B, SyntheticContext
from nlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.inference import predict_with_config, prepare_for_inference
from nlseg.engine.metrics import ConfusionMatrix
from nlseg.engine.trainer import build_model, train
from nlseg.engine.workdir import RUN_FILES, holds_run
from nlseg.errors import OutputError

__all__ = ["run_demo"]

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


def _predict(model: torch.nn.Module, image: torch.Tensor, cfg: Config) -> torch.Tensor:
    """(H, W) classes of one normalised (3, H, W) image, with the recipe's inference settings."""
    with torch.no_grad():
        probs = predict_with_config(model, image[None], cfg.eval, num_classes=SyntheticContext.num_classes)
    return probs[0].argmax(0)


def _context_scores(model: torch.nn.Module, dataset: SyntheticContext, cfg: Config, count: int) -> dict[str, float]:
    """mIoU over the first ``count`` images, and the share of disc pixels given the right disc class,
    split into those next to the beacon and those far from it (percent).

    A disc pixel counts as far when it lies at least half the data set's cue distance from the centre
    of the beacon: the cued disc touches its beacon, every other disc is centred a full cue distance away.
    """
    matrix = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    right, total = {"near": 0, "far": 0}, {"near": 0, "far": 0}
    threshold = dataset.cue_distance * max(dataset.size) / 2
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        label = sample["label"]  # (H, W)
        pred = _predict(model, sample["image"], cfg)  # (H, W)
        matrix.update(pred, label)
        beacon = ((label == BEACON_A) | (label == BEACON_B)).nonzero().double().mean(0)  # (2,) centre y, x
        disc = (label == DISC_A) | (label == DISC_B)  # (H, W)
        where = disc.nonzero().double()  # (P, 2)
        far = (where - beacon).norm(dim=1) >= threshold  # (P,)
        ok = pred[disc] == label[disc]  # (P,)
        for key, mask in (("near", ~far), ("far", far)):
            right[key] += int(ok[mask].sum())
            total[key] += int(mask.sum())
    scores = {key: 100 * right[key] / total[key] if total[key] else math.nan for key in right}
    return {"mIoU": matrix.compute()["mIoU"], **scores}


def _context_table(scores: dict[str, dict[str, dict[str, float]]], strips: dict[str, SyntheticContext]) -> str:
    """Rows: discs next to the beacon, far discs on each strip size, mIoU on the training-size strips when
    the networks are scored on others (the scored strips' mIoU is the per-class table's); columns: the models."""
    labels = list(scores)
    lines = ["| | " + " | ".join(labels) + " | Δ |", "|---|" + "---:|" * (len(labels) + 1)]

    def row(name: str, values: list[float]) -> None:
        cells = ["—" if math.isnan(v) else f"{v:.1f}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {values[-1] - values[0]:+.1f} |")

    first = next(iter(strips))
    row(f"discs next to the beacon ({first} strips)", [scores[label][first]["near"] for label in labels])
    for kind, dataset in strips.items():
        distance = round(dataset.cue_distance * max(dataset.size))
        far = [scores[label][kind]["far"] for label in labels]
        row(f"discs ≥ {distance} px from the beacon ({kind} strips)", far)
    if len(strips) > 1:
        row(f"mIoU ({first} strips)", [scores[label][first]["mIoU"] for label in labels])
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
            tiles.append(palette[_predict(model, sample["image"], cfg).numpy()])
        gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1))
    grid = np.concatenate([r for row in rows for r in (row, np.full((4, row.shape[1], 3), 255, np.uint8))][:-1])
    Image.fromarray(grid).save(path)


def _strips(cfg: Config) -> dict[str, SyntheticContext]:
    """Validation strips of the training size and those the networks are scored on, by "HxW" (one entry
    when both are the same)."""
    train_size = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_options={}))
    strips = {}
    for c in (train_size, cfg):
        dataset = build_dataset(c, c.data.val_split, train=False)
        strips["x".join(map(str, dataset.size))] = dataset
    return strips


def _replace_demo_run(work_dir: Path, recipe: str) -> None:
    """Delete the previous run of the demo recipe ``recipe`` in ``work_dir`` (the demo reproduces it from its
    seed in minutes), saying so; a run of any other recipe there is refused, never deleted."""
    if not holds_run(work_dir):
        return
    saved = work_dir / "config.yaml"
    name = (yaml.safe_load(saved.read_text()) or {}).get("name") if saved.is_file() else None
    if name != recipe:
        raise OutputError(
            f"{work_dir} holds a run of {name or 'an unknown recipe'!r}, not of the demo recipe {recipe!r}; "
            "choose another --out-dir"
        )
    print(f"replacing the previous demo run in {work_dir}", flush=True)
    for file in RUN_FILES:
        path = work_dir / file
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    seed: int = 0,
    iters: int | None = None,
    overrides: list[str] | None = None,
    context_images: int = 128,
) -> dict[str, Any]:
    """Train both demo recipes into ``out_dir/work/``, print the comparison, write ``out_dir/predictions.png``.

    Args:
        out_dir: folder for the work dirs, the picture and ``results.json``.
        seed: ``train.seed`` of both runs.
        iters: ``train.iters`` of both runs (None: the recipes').
        overrides: more ``--set`` style overrides for both recipes.
        context_images: validation images per strip size in the distance table.

    Returns:
        per model label: the validation metrics, ``seconds`` of training and evaluation, and
        ``context`` (per strip size: mIoU and the near and far disc pixel accuracy).
    """
    out_dir = Path(out_dir)
    overrides = [f"train.seed={seed}"] + ([] if iters is None else [f"train.iters={iters}"]) + list(overrides or [])
    results: dict[str, dict[str, Any]] = {}
    models: dict[str, torch.nn.Module] = {}
    cfg = None
    print(SyntheticContext.describe(), end="\n\n", flush=True)
    for label, recipe in RUNS:
        cfg = load_config(recipe, overrides)
        print(f"== {label}: {cfg.description}", flush=True)
        start = time.perf_counter()
        _replace_demo_run(out_dir / "work" / recipe, cfg.name)
        metrics = train(cfg, out_dir / "work" / recipe)
        results[label] = {**metrics, "seconds": time.perf_counter() - start}
        state = load_checkpoint(out_dir / "work" / recipe / "last.pt")
        model = build_model(cfg, state["num_classes"])
        model.load_state_dict(state["model"])
        models[label] = prepare_for_inference(model, cfg.eval, inplace=True)
    strips = _strips(cfg)
    for label, model in models.items():
        results[label]["context"] = {
            kind: _context_scores(model, data, cfg, context_images) for kind, data in strips.items()
        }
    class_names = list(next(iter(results.values()))["per_class_iou"])
    train_kind, val_kind = list(strips)[0], list(strips)[-1]  # one kind when evaluated at the training size
    num_images = next(iter(results.values()))["num_images"]
    print(f"\nPer-class IoU (%) on the {num_images} validation images of SyntheticContext, "
          f"{val_kind} strips (both networks trained on {train_kind} strips):\n")
    print(_table(class_names, results))
    far = {kind: round(data.cue_distance * max(data.size)) for kind, data in strips.items()}
    print(f"\nDisc pixels given the right disc class (%), and mIoU on strips like the training ones, on the first "
          f"{min(context_images, len(strips[val_kind]))} validation images of each strip size. The far discs lie "
          f">= {far[train_kind]} px from the beacon in the training strips and >= {far[val_kind]} px in the "
          f"{val_kind} strips:\n")
    print(_context_table({label: r["context"] for label, r in results.items()}, strips))
    print("\nTraining time: " + ", ".join(f"{k} {v['seconds'] / 60:.1f} min" for k, v in results.items()))
    picture = out_dir / "predictions.png"
    _picture(cfg, models, picture)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nPictures (input | ground truth | {' | '.join(results)}): {picture}")
    print(f"Work dirs, checkpoints and metrics: {out_dir / 'work'}")
    return results


