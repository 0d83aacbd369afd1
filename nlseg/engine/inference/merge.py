"""How predictions are merged (ANN §4.2 "Inference Settings": multi-scale whole-image testing with
left-right flips for ADE20K and PASCAL Context, multi-scale sliding crops with flips for Cityscapes):

- Sliding window: the LOGITS of overlapping windows are averaged, each pixel divided by the number
  of windows covering it — what mmsegmentation's ``slide_inference``, the ANN release
  (``FCNSegmentorTest._crop_predict``) and the CCNet toolbox (``predict_sliding``) all do.
- Scales and flips: every view's logits are resized back to the input size, turned into softmax
  probabilities and the probabilities averaged, as mmsegmentation's test-time augmentation does
  (``aug_test`` / ``SegTTAModel`` sum softmax outputs). The ANN release sums the raw logits of the
  views instead (``ms_test``); the argmax rarely differs, and probabilities keep views with
  different logit scales on an equal footing.

So :func:`predict_probs` returns averaged class probabilities (they sum to 1 at every pixel);
their argmax is the prediction.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.config import EvalConfig
from nlseg.engine.inference.model import InferenceModel


_MODES = ("whole", "slide")


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """(height, width) from an int or a pair of positive ints."""
    h, w = (value, value) if isinstance(value, int) else tuple(value)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return int(h), int(w)


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Bilinear resize of a (B, C, H, W) tensor; a no-op at the same size."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _forward(model: nn.Module, image: Tensor, num_classes: int) -> Tensor:
    """The model's main logits for ``image`` (B, 3, H, W), checked against the ``{"out": ...}`` contract."""
    logits = model(image)["out"]
    expected = (image.shape[0], num_classes, *image.shape[-2:])
    if tuple(logits.shape) != expected:
        raise ValueError(f"the model's 'out' has shape {tuple(logits.shape)}; expected {expected} (B, K, H, W)")
    return logits.float()


def _slide(model: nn.Module, image: Tensor, crop: tuple[int, int], stride: tuple[int, int], num_classes: int) -> Tensor:
    """Logits of overlapping ``crop`` windows placed every ``stride`` pixels, averaged where they overlap.

    The image is zero-padded at the bottom and right up to the crop size when it is smaller (zero is the
    mean colour of a normalised image); the windows' last row and column are shifted to end at the
    border, so every pixel is covered, and the result is cropped back to the image's size.
    """
    b, _, h, w = image.shape
    (ch, cw), (sh, sw) = crop, stride
    padded = F.pad(image, (0, max(cw - w, 0), 0, max(ch - h, 0)))  # (B, 3, H', W')
    ph, pw = padded.shape[-2:]
    total = image.new_zeros(b, num_classes, ph, pw, dtype=torch.float32)  # (B, K, H', W')
    count = image.new_zeros(1, 1, ph, pw, dtype=torch.float32)
    for row in range(math.ceil(max(ph - ch, 0) / sh) + 1):
        for col in range(math.ceil(max(pw - cw, 0) / sw) + 1):
            y1, x1 = min(row * sh, ph - ch), min(col * sw, pw - cw)
            window = padded[:, :, y1 : y1 + ch, x1 : x1 + cw]  # (B, 3, ch, cw)
            total[:, :, y1 : y1 + ch, x1 : x1 + cw] += _forward(model, window, num_classes)
            count[:, :, y1 : y1 + ch, x1 : x1 + cw] += 1
    return (total / count)[:, :, :h, :w]  # (B, K, H, W)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: Tensor,
    *,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    size: int | Sequence[int] | None = None,
    num_classes: int,
    align_corners: bool | None = None,
) -> Tensor:
    """Class probabilities of one normalised batch, by whole-image or sliding-window inference (ANN §4.2).

    For every scale s (and, with ``flip``, for the mirrored image too): resize the image by s, predict
    it whole or by sliding windows, mirror back, resize the logits to the input size, softmax; the
    probabilities of all views are averaged (see the module docstring for why probabilities). The
    model's mode is left as it is: call ``model.eval()`` first.

    Args:
        model: returns ``{"out": logits (B, K, h, w)}`` at its input's size.
        image: (B, 3, H, W) normalised images.
        mode: ``whole`` (each view at once) or ``slide`` (crops of ``crop_size`` every ``stride``).
        crop_size: sliding window (H, W) or side; required for ``slide``. An image smaller than the
            window is padded with zeros and the prediction cropped back.
        stride: window step (H, W) or side, at most the window; None: two thirds of the window
            (windows overlap by a third, as the CCNet toolbox).
        scales: resize factors of the views (multi-scale testing).
        flip: also predict each view mirrored left-right.
        size: resize the input to this (H, W) (or a square side) before everything else; the result is
            still returned at the input's size.
        num_classes: K, checked against the model's output.
        align_corners: of every bilinear resize; None: the model's ``align_corners`` attribute if it has
            one, else False.

    Returns:
        (B, K, H, W) float32 probabilities averaged over the views.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a (B, 3, H, W) batch, got shape {tuple(image.shape)}")
    if mode not in _MODES:
        raise ValueError(f"unknown inference mode {mode!r}; expected one of {', '.join(_MODES)}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive factors, got {list(scales)!r}")
    if mode == "slide":
        if crop_size is None:
            raise ValueError("mode 'slide' needs crop_size (eval.crop_size in a recipe)")
        crop = _pair(crop_size, "crop_size")
        steps = (math.ceil(crop[0] * 2 / 3), math.ceil(crop[1] * 2 / 3)) if stride is None else _pair(stride, "stride")
        if steps[0] > crop[0] or steps[1] > crop[1]:
            raise ValueError(f"stride {steps} must not exceed crop_size {crop}: windows would leave gaps")
    if align_corners is None:
        align_corners = bool(getattr(model, "align_corners", False))
    h, w = image.shape[-2:]
    base = image if size is None else _resize(image, _pair(size, "size"), align_corners)
    bh, bw = base.shape[-2:]
    total = image.new_zeros(image.shape[0], num_classes, h, w, dtype=torch.float32)  # (B, K, H, W)
    views = 0
    for scale in scales:
        scaled = _resize(base, _scaled_size(bh, bw, scale), align_corners)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            if mode == "whole":
                logits = _forward(model, view, num_classes)
            else:
                logits = _slide(model, view, crop, steps, num_classes)
            if mirrored:
                logits = logits.flip(-1)
            total += _resize(logits, (h, w), align_corners).softmax(1)
            views += 1
    return total / views


def predict_with_config(
    model: nn.Module, image: Tensor, eval_cfg: EvalConfig, *, num_classes: int, align_corners: bool | None = None
) -> Tensor:
    """:func:`predict_probs` with the settings of a recipe's ``eval`` section (mode, crop, stride,
    scales, flip, size): (B, K, H, W) probabilities of a (B, 3, H, W) normalised batch. For an
    :class:`InferenceModel` the batch's forward calls are one image of its job (``compile: auto`` times the first)."""
    with model.image() if isinstance(model, InferenceModel) else nullcontext():
        return _predict_with_config(model, image, eval_cfg, num_classes=num_classes, align_corners=align_corners)


def _predict_with_config(
    model: nn.Module, image: Tensor, eval_cfg: EvalConfig, *, num_classes: int, align_corners: bool | None
) -> Tensor:
    return predict_probs(
        model,
        image,
        mode=eval_cfg.mode,
        crop_size=eval_cfg.crop_size,
        stride=eval_cfg.stride,
        scales=eval_cfg.scales,
        flip=eval_cfg.flip,
        size=eval_cfg.size,
        num_classes=num_classes,
        align_corners=align_corners,
    )


def input_shapes(eval_cfg: EvalConfig, sizes: Iterable[tuple[int, int]] | None) -> int | None:
    """How many distinct input shapes the model sees over a job whose images have ``sizes`` (H, W) with these
    settings (what ``compile: auto`` weighs: each shape compiles once). A sliding window has one; whole images one
    per size and scale, so ``sizes`` (may be a lazy generator) is read only then; None when it is needed and None.
    """
    if eval_cfg.mode == "slide":
        return 1  # every window is crop_size (an image smaller than it is padded)
    if eval_cfg.size is not None:
        sizes = [_pair(eval_cfg.size, "size")]
    elif sizes is None:
        return None
    return len({_scaled_size(h, w, s) for h, w in set(sizes) for s in eval_cfg.scales})


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size of an (H, W) view resized by ``scale`` for multi-scale testing (rounded, at least 1 pixel)."""
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
