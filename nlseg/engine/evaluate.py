"""Evaluation over a whole split: one confusion matrix, mIoU / mAcc / aAcc, submission-format export.

Exported predictions, one single-channel uint8 PNG per image named ``<image stem>.png``:

- ``cityscapes`` (default for Cityscapes): official label ids (road = 7, ..., bicycle = 33), as the
  official evaluator (cityscapesScripts ``evalPixelLevelSemanticLabeling.py``) and the test server
  read them. The evaluator pairs a prediction with the ground truth
  ``<city>_<seq>_<frame>_gtFine_labelIds.png`` by the pattern ``<city>_<seq>_<frame>*.png`` searched
  recursively under ``$CITYSCAPES_RESULTS``, and fails when no file or more than one file matches; the
  image stem ``<city>_<seq>_<frame>_leftImg8bit`` matches it exactly once.
- ``ade20k`` (default for ADE20K): train id + 1, i.e. 1..150, the SceneParsing submission format
  (0, "other", is never predicted).
- ``train_id`` (default for every other data set): the train ids 0..K-1 the model predicts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from nlseg.config import Config, EvalConfig
from nlseg.data.ade20k import ADE20K
from nlseg.data.base import DatasetError, image_size
from nlseg.data.cityscapes import Cityscapes
from nlseg.engine.checkpoint import check_compatible
from nlseg.engine.device import resolve_device
from nlseg.engine.inference import (
    InferenceModel,
    build_model_from_checkpoint,
    predict_with_config,
    prepare_for_inference,
    saved_normalize,
)
from nlseg.engine.inference.merge import input_shapes
from nlseg.engine.metrics import ConfusionMatrix

__all__ = [
    "EXPORT_FORMATS",
    "default_export_format",
    "evaluate",
    "evaluate_checkpoint",
    "export_values",
    "format_table",
    "metrics_to_json",
]

EXPORT_FORMATS = ("cityscapes", "ade20k", "train_id")


def default_export_format(dataset: Dataset) -> str:
    """The submission format of a data set: ``cityscapes``, ``ade20k`` or ``train_id``."""
    if isinstance(dataset, Cityscapes):
        return "cityscapes"
    if isinstance(dataset, ADE20K):
        return "ade20k"
    return "train_id"


def export_values(pred: Tensor, export_format: str) -> np.ndarray:
    """Predicted train ids as the pixel values of an exported PNG.

    Args:
        pred: (H, W) integer train ids.
        export_format: one of ``EXPORT_FORMATS`` (see the module docstring).

    Returns:
        (H, W) uint8 array.
    """
    if export_format == "cityscapes":
        values = Cityscapes.label_ids_from_train_ids(pred)
    elif export_format == "ade20k":
        values = pred + 1
    elif export_format == "train_id":
        values = pred
    else:
        raise ValueError(f"unknown export format {export_format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if int(values.max()) > 255:
        raise ValueError(f"{export_format} export needs values up to {int(values.max())}; a uint8 PNG holds 0..255")
    return values.cpu().numpy().astype(np.uint8)


def _shard(length: int) -> range:
    """The indices this process evaluates: every world_size-th one from its rank (all without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return range(dist.get_rank(), length, dist.get_world_size())
    return range(length)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    eval_cfg: EvalConfig,
    *,
    device: str | torch.device,
    num_classes: int,
    export_dir: str | Path | None = None,
    export_format: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of ``dataset`` with the recipe's inference settings and score the whole split.

    Scores come from one confusion matrix over all images (``ConfusionMatrix``: the official Cityscapes
    evaluator's conventions). With torch.distributed initialised every process takes images
    rank, rank + world_size, ... and the matrices are summed, so every process must call this; each
    exports its own images. The model is put in eval mode and given back in the mode it came in.

    Args:
        model: returns ``{"out": logits}`` at its input's size, run as given (prepare it with
            :func:`~nlseg.engine.inference.prepare_for_inference` for the recipe's inference levers).
        dataset: an nlseg data set (``classes``, ``ignore_index``) yielding normalised ``image``
            (3, H, W), ``label`` (H', W') and ``name``; the probabilities are resized to the label's
            size when the image was resized (``eval.size``). Images without a label (a test split)
            are only exported.
        eval_cfg: inference settings (see ``predict_with_config``).
        device: where the model runs.
        num_classes: K.
        export_dir: write one prediction PNG per image here (created).
        export_format: ``cityscapes``, ``ade20k`` or ``train_id``; None: the data set's own.
        progress: show a progress bar.

    Returns:
        ``mIoU``, ``mAcc``, ``aAcc`` (percent), ``per_class_iou`` and ``per_class_acc`` (class name ->
        percent; NaN for a class absent from the ground truth and the predictions, resp. from the
        ground truth), ``num_images`` (images scored, over all processes), ``confusion_matrix``
        (pixel counts as K lists of K ints: row = ground-truth class, column = predicted class).
    """
    device = torch.device(device)
    if export_dir is not None:
        export_format = export_format or default_export_format(dataset)
        if export_format not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {export_format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
        export_dir = Path(export_dir)
        export_dir.mkdir(parents=True, exist_ok=True)
    align_corners = bool(getattr(model, "align_corners", False))
    matrix = ConfusionMatrix(num_classes, ignore_index=dataset.ignore_index)
    matrix.matrix = matrix.matrix.to(device)  # every process reduces on its device, even with no images
    scored = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    indices = _shard(len(dataset))
    if isinstance(model, InferenceModel) and model.options.compile == "auto":  # the job ahead, for auto to weigh
        files = getattr(dataset, "samples", None)
        sizes = None if files is None else (image_size(image) or (0, 0) for image, _ in files)
        model.plan(len(indices), input_shapes(eval_cfg, sizes))
    try:
        for index in tqdm(indices, desc="eval", unit="img", disable=not progress):
            sample = dataset[index]
            probs = predict_with_config(
                model, sample["image"][None].to(device), eval_cfg, num_classes=num_classes, align_corners=align_corners
            )  # (1, K, h, w)
            label = sample.get("label")
            if label is not None and probs.shape[-2:] != label.shape:
                probs = F.interpolate(probs, size=tuple(label.shape), mode="bilinear", align_corners=align_corners)
            pred = probs[0].argmax(0)  # (H, W)
            if label is not None:
                matrix.update(pred, label.to(device))
                scored += 1
            if export_dir is not None:
                Image.fromarray(export_values(pred, export_format), mode="L").save(export_dir / f"{sample['name']}.png")
    finally:
        model.train(was_training)
    matrix.reduce()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(scored)
    scores = matrix.compute()
    names = list(dataset.classes)
    return {
        "mIoU": scores["mIoU"],
        "mAcc": scores["mAcc"],
        "aAcc": scores["aAcc"],
        "per_class_iou": dict(zip(names, scores["per_class_iou"])),
        "per_class_acc": dict(zip(names, scores["per_class_acc"])),
        "num_images": int(scored.item()),
        "confusion_matrix": matrix.matrix.cpu().tolist(),
    }


def _percent(value: float) -> str:
    return "    -" if math.isnan(value) else f"{value:5.2f}"


def format_table(metrics: dict[str, Any]) -> str:
    """Per-class IoU and accuracy, then mIoU / mAcc / aAcc, as aligned text ("-": class absent)."""
    width = max(12, *(len(name) for name in metrics["per_class_iou"]))
    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 14)]
    for name, iou in metrics["per_class_iou"].items():
        lines.append(f"{name:<{width}}  {_percent(iou)}  {_percent(metrics['per_class_acc'][name])}")
    lines.append("-" * (width + 14))
    lines.append(
        f"mIoU {_percent(metrics['mIoU'])}   mAcc {_percent(metrics['mAcc'])}   aAcc {_percent(metrics['aAcc'])}"
        f"   ({metrics['num_images']} images)"
    )
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN (a class absent from the split) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def metrics_to_json(record: dict[str, Any]) -> str:
    """The metrics of :func:`evaluate_checkpoint` as indented JSON text, NaN (a class absent from the split) as null."""
    return json.dumps(_json_safe(record), indent=2) + "\n"


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | os.PathLike,
    *,
    split: str | None = None,
    device: str | torch.device = "auto",
    export_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a checkpoint on a split of the recipe's data set (``nlseg eval``) with the recipe's inference settings,
    the model prepared by ``eval.aux``, ``eval.fold_bn``, ``eval.channels_last``, ``eval.amp``, ``eval.compile``.

    The checkpoint is read and checked against the recipe's model first, then the data set is built and
    the class counts compared, so a wrong file is reported before the data set is scanned. Both
    ``last.pt`` and the lean ``best.pt`` work: only the weights, model name, classes and config are read.

    Args:
        cfg: the recipe.
        checkpoint: an nlseg checkpoint file.
        split: split to score; None: ``cfg.data.val_split``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        export_dir: write one prediction PNG per image there, in the data set's submission format.
        progress: show a progress bar.

    Returns:
        :func:`evaluate`'s metrics plus ``recipe``, ``checkpoint``, ``dataset``, ``split``, ``eval`` (the
        inference settings) and, with ``export_dir``, ``export_format``.

    Raises:
        ConfigError: an unavailable device. CheckpointError: not an nlseg checkpoint, or one for another
        model or class count. DatasetError: an empty split or a bad file in it.
    """
    from nlseg.data.build import build_dataset
    from nlseg.engine.datacheck import check_files

    split = split or cfg.data.val_split
    device = resolve_device(device)
    model, state = build_model_from_checkpoint(checkpoint, cfg, device)
    # The checkpoint's normalisation, which its model was trained with, wins over the recipe's.
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, normalize=saved_normalize(state, cfg.data.normalize)))
    dataset = build_dataset(cfg, split, train=False)
    if len(dataset) == 0:
        raise DatasetError(f"split {split!r} of {cfg.data.dataset} has no images")
    check_files(dataset, _cache_beside(checkpoint), progress=progress)  # every file read before the work
    check_compatible(state, model_name=cfg.model.name, num_classes=dataset.num_classes, path=checkpoint)
    model = prepare_for_inference(model, cfg.eval, inplace=True)  # this call owns it
    metrics = evaluate(
        model, dataset, cfg.eval, device=device, num_classes=dataset.num_classes, export_dir=export_dir,
        progress=progress,
    )
    record = {
        **metrics,
        "recipe": cfg.name,
        "checkpoint": str(checkpoint),
        "dataset": cfg.data.dataset,
        "split": split,
        "eval": dataclasses.asdict(cfg.eval),
    }
    if export_dir is not None:
        record["export_format"] = default_export_format(dataset)
    return record


def _cache_beside(checkpoint: str | os.PathLike) -> Path | None:
    """The data check's cache in the checkpoint's folder (its work dir) when that folder is writable."""
    from nlseg.engine.datacheck import CACHE_NAME

    folder = Path(checkpoint).parent
    return folder / CACHE_NAME if os.access(folder, os.W_OK) else None
