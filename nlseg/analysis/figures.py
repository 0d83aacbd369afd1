"""``nlseg viz {stages,compare}``: the backbone's five stages (ANN Fig. 7) and a qualitative side-by-side.

* ``stages`` — for one image and one or two models, a row per model: the image, then the feature map of each of
  the backbone's five stages (ANN Fig. 7: stage1 = the stem's conv + BN + ReLU, before its max pool; stage2-5 =
  layer1-4). Each map is the **channel mean of |activation|** at every position, scaled to 0..1 by its own minimum
  and maximum (so maps of different stages and models share a colour scale of their own contrast, not of their
  magnitudes), upsampled (bilinear) to the image's size and coloured (viridis). A model is a recipe with a
  checkpoint, or a recipe alone: then its initial weights, as ``nlseg train`` makes them (``train.seed``, and
  ``model.pretrained_backbone`` when the recipe names one).
* ``compare`` — for the first N images of a recipe's split: input, ground truth, prediction and an error map (wrong
  pixels red, ignored pixels grey, right pixels the image dimmed to a third), one row per image. Images and labels
  are the evaluator's (``build_dataset(..., train=False)``: labels mapped to train ids, the ignore index), and so are
  the predictions (the recipe's ``eval`` settings, resized to the label's size); colours are the data set's palette.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.analysis.viz import _grid, _matplotlib, _photo
from nlseg.config import Config, load_config
from nlseg.data.base import read_image
from nlseg.data.transforms import normalization
from nlseg.engine.inference import Segmenter, build_model_from_checkpoint, predict_with_config, saved_normalize
from nlseg.errors import CheckpointError, ConfigError, DatasetError

__all__ = ["ERROR_RGB", "IGNORED_RGB", "STAGES", "ModelSpec", "error_map", "stage_maps", "viz_compare", "viz_stages"]

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
"""The backbone's five stages (ANN Fig. 7's stage1 ... stage5)."""
ERROR_RGB = (255, 0, 0)
"""Colour of a wrongly predicted pixel in the error map."""
IGNORED_RGB = (128, 128, 128)
"""Colour of a pixel whose label is the ignore index."""
DIM = 3
"""Right pixels show the image divided by this."""


@dataclass(frozen=True)
class ModelSpec:
    """One row of ``viz stages``: a recipe, and the checkpoint whose weights to load (None: initial weights).

    Attributes:
        recipe: recipe name or YAML file.
        checkpoint: an nlseg checkpoint of the recipe's model, or None.
        label: the row's title; None: made from the recipe and the checkpoint.
    """

    recipe: str
    checkpoint: str | os.PathLike | None = None
    label: str | None = None


def _num_classes(cfg: Config) -> int:
    from nlseg.data import dataset_class

    options = {**cfg.data.options, **cfg.data.eval_options}
    return int(options.get("num_classes") or dataset_class(cfg.data.dataset).num_classes)


def _build(spec: ModelSpec, overrides: Sequence[str], device: torch.device | str) -> tuple[nn.Module, str, str]:
    """The model of a row (eval mode, on ``device``), the normalisation its input takes, and the row's title."""
    from nlseg.engine.build import build_model

    cfg = load_config(spec.recipe, overrides)
    if spec.checkpoint is not None:
        model, state = build_model_from_checkpoint(spec.checkpoint, cfg, device)
        title = spec.label or f"{cfg.name}: {Path(spec.checkpoint).name}"
        return model, saved_normalize(state, cfg.data.normalize), title
    torch.manual_seed(cfg.train.seed)  # the weights `nlseg train` starts from
    model = build_model(cfg, _num_classes(cfg)).to(device).eval()
    weights = f"backbone {Path(str(cfg.model.pretrained_backbone)).name}" if cfg.model.pretrained_backbone else (
        f"initial weights, seed {cfg.train.seed}")
    return model, cfg.data.normalize, spec.label or f"{cfg.name}: {weights}"


def stage_maps(model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
    """The five stage maps of ``model.backbone`` on a normalised (1, 3, H, W) batch: {stage: (h, w) in 0..1}.

    Each is the channel mean of |activation|, min-max scaled to 0..1 (a constant map is 0).

    Raises:
        ValueError: the model has no ResNet backbone (``model.backbone`` with a stem max pool).
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not isinstance(getattr(backbone, "maxpool", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no ResNet backbone (model.backbone with a stem) to draw")
    captured: dict[str, Tensor] = {}
    hook = backbone.maxpool.register_forward_pre_hook(lambda _, inputs: captured.__setitem__("stem", inputs[0]))
    try:
        with torch.no_grad():
            features = backbone(batch)
    finally:
        hook.remove()
    maps = {}
    for stage in STAGES:
        energy = (captured if stage == "stem" else features)[stage][0].abs().mean(0).float().cpu()  # (h, w)
        low, high = energy.min(), energy.max()
        maps[stage] = (energy - low) / (high - low) if high > low else torch.zeros_like(energy)
    return maps


def _colour_map(values: Tensor, size: tuple[int, int], colormap) -> np.ndarray:
    """A (h, w) map in 0..1, upsampled (bilinear) to ``size`` and coloured: (H, W, 3) uint8."""
    up = F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    return (colormap(up.numpy())[..., :3] * 255).round().astype(np.uint8)


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """A copy of ``panel`` with ``title`` in white on a black strip at its top left (a row's name)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(panel)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((2, 1), title)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill="black")
    draw.text((2, 1), title, fill="white")
    return np.asarray(image)


def viz_stages(
    image: str | os.PathLike,
    models: Sequence[ModelSpec],
    out: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    device: torch.device | str = "cpu",
) -> tuple[Path, dict[str, dict[str, Tensor]]]:
    """The image (the row's title written on it) and the five stage maps of each model (see the module docstring),
    a row per model.

    Args:
        image: the image file.
        models: one or two rows.
        out: the PNG file.
        overrides: ``KEY=VALUE`` overrides of every row's recipe.
        device: where the models run.

    Returns:
        The PNG's path and each row's maps ({title: {stage: (h, w) in 0..1}}).
    """
    if not 1 <= len(models) <= 2:
        raise ConfigError(f"viz stages draws 1 or 2 models, got {len(models)}")
    colormap = _matplotlib().colormaps["viridis"]
    rgb = read_image(image)  # (3, H, W)
    size = tuple(rgb.shape[-2:])
    photo = _photo(rgb)
    rows, drawn = [], {}
    for spec in models:
        model, normalize, title = _build(spec, overrides, device)
        batch = normalization(normalize).image(rgb)[None].to(device)  # (1, 3, H, W)
        try:
            maps = stage_maps(model, batch)
        except ValueError as err:
            raise ConfigError(f"recipe {spec.recipe}: {err}") from None
        if title in drawn:
            title = f"{title} ({len(drawn) + 1})"
        drawn[title] = maps
        rows.append([_titled(photo, title)] + [_colour_map(m, size, colormap) for m in maps.values()])
    titles = ["image"] + [f"stage{i + 1} ({s})" for i, s in enumerate(STAGES)]
    canvas = _grid(rows, titles)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out, drawn


def error_map(photo: np.ndarray, pred: Tensor, label: Tensor, ignore_index: int) -> np.ndarray:
    """Wrong pixels :data:`ERROR_RGB`, ignored pixels :data:`IGNORED_RGB`, right pixels the photo divided by DIM.

    Args:
        photo: (H, W, 3) uint8.
        pred: (H, W) predicted classes.
        label: (H, W) ground truth, ``ignore_index`` where unlabelled.
        ignore_index: the unlabelled value.

    Returns:
        (H, W, 3) uint8.
    """
    pred, label = pred.cpu().numpy(), label.cpu().numpy()
    out = (photo // DIM).astype(np.uint8)
    ignored = label == ignore_index
    out[(pred != label) & ~ignored] = ERROR_RGB
    out[ignored] = IGNORED_RGB
    return out


def _unnormalize(image: Tensor, name: str) -> Tensor:
    """The 0..1 RGB image of a normalised (3, H, W) one (the inverse of ``normalization(name).image``)."""
    norm = normalization(name)
    mean = torch.tensor(norm.mean, dtype=image.dtype).reshape(3, 1, 1)
    std = torch.tensor(norm.std, dtype=image.dtype).reshape(3, 1, 1)
    rgb = image.cpu() * std + mean
    return ((rgb.flip(0) if norm.bgr else rgb) / norm.scale).clamp(0, 1)


def viz_compare(
    recipe: str,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str | None = None,
    num: int = 4,
    overrides: Sequence[str] = (),
    device: torch.device | str = "cpu",
) -> tuple[Path, list[dict[str, float]]]:
    """Input, ground truth, prediction and error map of the first ``num`` images of ``split``, a row each.

    Args:
        recipe: recipe name or YAML file the checkpoint was trained with.
        checkpoint: the nlseg checkpoint.
        out: the PNG file.
        split: the data set's split; None: the recipe's ``data.val_split``.
        num: images (rows), the split's first ones.
        overrides: ``KEY=VALUE`` recipe overrides.
        device: where the model runs.

    Returns:
        The PNG's path, and per row the image's name and its pixel accuracy over labelled pixels (percent).

    Raises:
        ConfigError: ``num`` below 1. DatasetError: an empty split, or images without labels.
    """
    from nlseg.data.build import build_dataset

    if num < 1:
        raise ConfigError(f"--num must be at least 1, got {num}")
    cfg = load_config(recipe, overrides)
    model, state = build_model_from_checkpoint(checkpoint, cfg, device)
    normalize = saved_normalize(state, cfg.data.normalize)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, normalize=normalize))
    split = split or cfg.data.val_split
    dataset = build_dataset(cfg, split, train=False)
    if len(dataset) == 0:
        raise DatasetError(f"split {split!r} of {cfg.data.dataset} has no images")
    segmenter = Segmenter.from_state(model, state, dataset=cfg.data.dataset, eval_cfg=cfg.eval, device=device)
    if segmenter.num_classes != dataset.num_classes:
        raise CheckpointError(f"checkpoint {checkpoint} predicts {segmenter.num_classes} classes, "
                              f"split {split!r} of {cfg.data.dataset} has {dataset.num_classes}")
    align_corners = bool(getattr(model, "align_corners", False))
    model = segmenter.model  # prepared for inference as the evaluator prepares it
    rows, scores = [], []
    for index in range(min(num, len(dataset))):
        sample = dataset[index]
        label = sample.get("label")
        if label is None:
            raise DatasetError(f"split {split!r} of {cfg.data.dataset} has no labels to compare with")
        with torch.no_grad():
            probs = predict_with_config(model, sample["image"][None].to(device), cfg.eval,
                                        num_classes=dataset.num_classes, align_corners=align_corners)  # (1, K, h, w)
        if probs.shape[-2:] != label.shape:
            probs = F.interpolate(probs, size=tuple(label.shape), mode="bilinear", align_corners=align_corners)
        pred = probs[0].argmax(0).cpu()  # (H, W)
        rgb = _unnormalize(sample["image"], normalize)
        if rgb.shape[-2:] != label.shape:  # eval.size resized the image; the label keeps its size
            rgb = F.interpolate(rgb[None], size=tuple(label.shape), mode="bilinear", align_corners=False)[0]
        photo = _photo(rgb)
        truth = segmenter.colorize(label.clamp(0, dataset.num_classes - 1))
        truth[(label == dataset.ignore_index).numpy()] = IGNORED_RGB
        rows.append([photo, truth, segmenter.colorize(pred), error_map(photo, pred, label, dataset.ignore_index)])
        labelled = label != dataset.ignore_index
        right = int(((pred == label) & labelled).sum())
        scores.append({"name": str(sample.get("name", index)),
                       "pixel_accuracy": 100.0 * right / max(1, int(labelled.sum()))})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _grid(rows, ["input", "ground truth", "prediction", "errors (red; grey: ignored)"]).save(out)
    return out, scores
