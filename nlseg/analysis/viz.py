"""``nlseg viz {attention,predictions,confusion,curves}``: pictures of what a model attends to and how it did.

* ``attention`` — one pixel's attention map in the model's context block, over the image (Denoised NL
  Fig. 1 / 11: the image with the pixel crossed, then A, A' after Global Rectifying, A'' after Local
  Retention; NL, APNB, CCNet and DANet models: their map). Only that row of the map is computed.
* ``predictions`` — input / prediction / overlay, one row per image.
* ``confusion`` — the row-normalised confusion matrix of an ``nlseg eval --out`` JSON.
* ``curves`` — training loss, learning rate and validation mIoU from a work dir's ``metrics.jsonl``.

Grids of images are composed with PIL, one image pixel per picture pixel; matplotlib (the ``viz``
extra) gives the colour map and the plots. Each picture is one function taking paths and plain values
(``nlseg.cli.viz`` is its command line); each writes one PNG and returns its path.
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from nlseg.analysis.attention import pixel_attention
from nlseg.config import Config, load_config
from nlseg.errors import CheckpointError, ConfigError, NlsegError
from nlseg.data.base import read_image
from nlseg.data.transforms import normalization
from nlseg.engine.inference import IMAGE_SUFFIXES, Segmenter, build_model_from_checkpoint, saved_normalize
from nlseg.engine.workdir import read_metrics

__all__ = [
    "CURVES_FIGSIZE",
    "DPI",
    "GAP_PX",
    "TITLE_PX",
    "confusion_figsize",
    "viz_attention",
    "viz_confusion",
    "viz_curves",
    "viz_predictions",
]

TITLE_PX = 16
"""Height of the title strip above a grid of panels."""
GAP_PX = 4
"""White space between panels."""
DPI = 100
CURVES_FIGSIZE = (15.0, 4.5)
"""Inches of the curves figure (1500 x 450 pixels at :data:`DPI`)."""
CROSS_RGB = (0, 255, 0)  # the paper's green cross
INSTALL_HINT = "pip install 'nlseg[viz]'"


def _matplotlib() -> ModuleType:
    """matplotlib on its file-only backend.

    Raises:
        NlsegError: matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib
    except ImportError:
        raise NlsegError(f"this picture needs matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg")
    return matplotlib


def _save_figure(fig, out: Path) -> Path:
    """Lay out, write and close ``fig`` (a matplotlib Figure) as ``out``; the folder is created."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _load(
    recipe: str, checkpoint: str | os.PathLike, overrides: Sequence[str], device: torch.device | str
) -> tuple[Config, nn.Module, dict]:
    """The recipe, the checkpoint's model (eval mode, on ``device``) and the checkpoint dict."""
    cfg = load_config(recipe, overrides)
    model, state = build_model_from_checkpoint(checkpoint, cfg, device)
    return cfg, model, state


def _photo(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) float 0..1 -> (H, W, 3) uint8."""
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _grid(rows: list[list[np.ndarray]], titles: Sequence[str]) -> Image.Image:
    """Rows of (H, W, 3) uint8 panels, GAP_PX apart, under one strip of column titles."""
    widths = [sum(p.shape[1] for p in row) + GAP_PX * (len(row) - 1) for row in rows]
    heights = [max(p.shape[0] for p in row) for row in rows]
    canvas = Image.new("RGB", (max(widths), TITLE_PX + sum(heights) + GAP_PX * (len(rows) - 1)), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for title, panel in zip(titles, rows[0]):
        draw.text((left + 2, 2), title, fill="black")
        left += panel.shape[1] + GAP_PX
    top = TITLE_PX
    for row, height in zip(rows, heights):
        left = 0
        for panel in row:
            canvas.paste(Image.fromarray(panel), (left, top))
            left += panel.shape[1] + GAP_PX
        top += height + GAP_PX
    return canvas


def _cross(panel: np.ndarray, y: int, x: int) -> np.ndarray:
    """A copy of ``panel`` with a green cross centred on (y, x)."""
    out = panel.copy()
    h, w = out.shape[:2]
    arm = max(2, min(h, w) // 25)
    out[max(0, y - arm) : y + arm + 1, x] = CROSS_RGB
    out[y, max(0, x - arm) : x + arm + 1] = CROSS_RGB
    return out


def _heat(photo: np.ndarray, attention: torch.Tensor, colormap: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The map upsampled (bilinear) to the photo, scaled to its own maximum, coloured and blended over it."""
    h, w = photo.shape[:2]
    up = F.interpolate(attention[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    up = (up / up.max().clamp_min(torch.finfo(up.dtype).tiny)).clamp(0, 1)
    colour = colormap(up.numpy())[..., :3]  # (H, W, 3) in 0..1
    blend = 0.45 * photo / 255 + 0.55 * colour
    return (blend * 255).round().astype(np.uint8)


def viz_attention(
    recipe: str,
    checkpoint: str | os.PathLike,
    image: str | os.PathLike,
    pixel: tuple[int, int],
    *,
    overrides: Sequence[str] = (),
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
) -> tuple[Path, tuple[int, int], tuple[int, int]]:
    """The image with the pixel crossed, then each attention map of that pixel over the image.

    Denoised NL Fig. 1 / 11: A, A' after Global Rectifying, A'' after Local Retention; NL, APNB, CCNet and
    DANet models: their map. Only that row of the map is computed (:func:`nlseg.analysis.attention.pixel_attention`).

    Args:
        recipe: recipe name or YAML file the checkpoint was trained with.
        checkpoint: the nlseg checkpoint.
        image: the image file.
        pixel: (y, x), row and column in image coordinates.
        overrides: ``KEY=VALUE`` recipe overrides.
        device: where the model runs.
        out: the PNG file (default ``attention_Y_X.png``).

    Returns:
        The PNG's path, the pixel's cell in the block's grid and that grid's (rows, columns).

    Raises:
        ConfigError: the pixel is outside the image.
        CheckpointError: the model has no attention block to draw.
    """
    matplotlib = _matplotlib()
    cfg, model, state = _load(recipe, checkpoint, overrides, device)
    rgb = read_image(image)  # (3, H, W)
    height, width = rgb.shape[-2:]
    y, x = pixel
    if not (0 <= y < height and 0 <= x < width):
        raise ConfigError(f"--pixel {y},{x} is outside the {height} x {width} image {image} (Y,X: row, column)")
    batch = normalization(saved_normalize(state, cfg.data.normalize)).image(rgb)[None].to(device)  # (1, 3, H, W)
    try:
        maps, index, grid = pixel_attention(model, batch, (y, x))
    except ValueError as err:
        raise CheckpointError(f"{checkpoint}: {err}") from None
    photo = _photo(rgb)
    colormap = matplotlib.colormaps["jet"]
    panels = [_cross(photo, y, x)] + [_cross(_heat(photo, m.cpu(), colormap), y, x) for m in maps.values()]
    path = Path(out or f"attention_{y}_{x}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    _grid([panels], [f"pixel ({y}, {x})", *maps]).save(path)
    return path, index, grid


def _image_files(sources: Sequence[str]) -> list[Path]:
    files = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
            files += found
        elif source.is_file():
            files.append(source)
        else:
            raise FileNotFoundError(f"image {source} does not exist")
    return files


def viz_predictions(
    recipe: str,
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    device: torch.device | str = "cpu",
) -> Path:
    """One row per image: the input, the predicted classes in the data set's colours, their overlay.

    Args:
        recipe: recipe name or YAML file the checkpoint was trained with.
        checkpoint: the nlseg checkpoint.
        images: image files and/or folders of images.
        out: the PNG file.
        overrides: ``KEY=VALUE`` recipe overrides.
        device: where the model runs.
    """
    cfg, model, state = _load(recipe, checkpoint, overrides, device)
    segmenter = Segmenter.from_state(model, state, dataset=cfg.data.dataset, eval_cfg=cfg.eval, device=device)
    rows = []
    for path in _image_files([str(i) for i in images]):
        rgb = read_image(path)  # (3, H, W)
        photo = _photo(rgb)
        colour = segmenter.colorize(segmenter.predict(rgb))  # (H, W, 3)
        overlay = ((photo.astype(np.uint16) + colour) // 2).astype(np.uint8)
        rows.append([photo, colour, overlay])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _grid(rows, ["input", "prediction", "overlay"]).save(out)
    return out


def confusion_figsize(num_classes: int) -> tuple[float, float]:
    """Inches of the confusion figure for K classes (square; pixels = inches x :data:`DPI`)."""
    side = max(6.0, 0.35 * num_classes + 3.0)
    return side, side


def viz_confusion(eval_json: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The row-normalised confusion matrix of an ``nlseg eval --out`` JSON.

    Rows: ground-truth class; columns: predicted class; each row divided by its pixel count (recall).

    Raises:
        FileNotFoundError: ``eval_json`` does not exist.
        NlsegError: it has no confusion matrix (the message says how to write one).
    """
    _matplotlib()
    import matplotlib.pyplot as plt

    path = Path(eval_json)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation JSON {path} does not exist")
    record = json.loads(path.read_text())
    if "confusion_matrix" not in record:
        raise NlsegError(
            f"{path} has no 'confusion_matrix'; write it with `nlseg eval RECIPE --checkpoint CKPT --out {path}`"
        )
    counts = np.asarray(record["confusion_matrix"], dtype=np.float64)  # (K, K) rows ground truth, columns prediction
    k = counts.shape[0]
    names = list(record.get("per_class_iou", {})) or [str(i) for i in range(k)]
    with np.errstate(invalid="ignore"):
        recall = counts / counts.sum(1, keepdims=True)  # NaN rows: class absent from the ground truth
    fig, ax = plt.subplots(figsize=confusion_figsize(k))
    image = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=90)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if not math.isnan(recall[i, j]):
                    ax.text(j, i, f"{100 * recall[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if recall[i, j] > 0.5 else "black")
    miou = record.get("mIoU")
    ax.set_title(f"{record.get('recipe', '')} {record.get('split', '')}".strip()
                 + (f"  mIoU {miou:.2f}" if isinstance(miou, (int, float)) else ""))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row's pixels")
    return _save_figure(fig, Path(out))


def _read_metrics(work_dir: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """Train and val records by iteration; a resumed run logs some iterations again and the last one wins."""
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (nlseg train --work-dir {work_dir} writes it)")
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    for record in read_metrics(path, warn=lambda line: print(line, file=sys.stderr)):
        if record["kind"] == "train":
            train[record["iter"]] = record
        elif record["kind"] == "val":
            val[record["iter"]] = record
    return dict(sorted(train.items())), dict(sorted(val.items()))


def viz_curves(work_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Three panels from a work dir's ``metrics.jsonl``: training loss (total and its parts), learning rate,
    validation mIoU.

    Raises:
        FileNotFoundError: the work dir has no ``metrics.jsonl``.
        NlsegError: a line of it is not a metrics record.
    """
    _matplotlib()
    import matplotlib.pyplot as plt

    train, val = _read_metrics(Path(work_dir))
    fig, (loss_ax, lr_ax, miou_ax) = plt.subplots(1, 3, figsize=CURVES_FIGSIZE)
    iters = list(train)
    parts = sorted({key for r in train.values() for key in r if key.startswith("loss_") and key != "loss_total"})
    loss_ax.plot(iters, [r.get("loss_total", math.nan) for r in train.values()], label="total", linewidth=1.5)
    for key in parts:
        loss_ax.plot(iters, [r.get(key, math.nan) for r in train.values()], label=key[5:], linewidth=0.8)
    loss_ax.set(title="training loss", xlabel="iteration")
    loss_ax.legend(fontsize=8)
    lr_ax.plot(iters, [r.get("lr", math.nan) for r in train.values()])
    lr_ax.set(title="learning rate", xlabel="iteration")
    if val:
        miou_ax.plot(list(val), [r.get("mIoU", math.nan) for r in val.values()], marker="o")
    else:
        miou_ax.text(0.5, 0.5, "no validation records", ha="center", va="center", transform=miou_ax.transAxes)
    miou_ax.set(title="validation mIoU (%)", xlabel="iteration")
    return _save_figure(fig, Path(out))
