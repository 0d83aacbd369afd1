"""Geometric transforms: resize, random scale, random crop and horizontal flip, moving image and label together
(images bilinear, labels ``nearest-exact``). Randomness as :mod:`nlseg.data.transforms` says."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nlseg.data.base import IGNORE_INDEX, Sample
from nlseg.data.photometric import uniform

__all__ = ["RandomCrop", "RandomHorizontalFlip", "RandomScale", "Resize"]


def _hw(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """(height, width) from an int or a pair; both must be positive."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return int(h), int(w)


def _resized(sample: Sample, size: tuple[int, int], resize_label: bool = True) -> Sample:
    """``sample`` with image (bilinear) and label (nearest-exact) resampled to ``size`` = (H, W)."""
    out = dict(sample)
    out["image"] = F.interpolate(sample["image"][None], size=size, mode="bilinear", align_corners=False)[0]
    if resize_label and "label" in sample:
        label = sample["label"][None, None].float()  # (1, 1, H, W); ids <= 255 are exact in float32
        out["label"] = F.interpolate(label, size=size, mode="nearest-exact")[0, 0].long()  # (H', W')
    return out


class Resize:
    """Resize to a fixed size, or the shorter side to a length keeping the aspect ratio.

    Args:
        size: (height, width), or an int: the shorter side's new length.
        resize_label: also resize the label (set False for evaluation against the original label).
    """

    def __init__(self, size: int | tuple[int, int], *, resize_label: bool = True) -> None:
        if isinstance(size, int) and size < 1:
            raise ValueError(f"Resize size must be positive, got {size}")
        self.size = size if isinstance(size, int) else _hw(size, "Resize size")
        self.resize_label = resize_label

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        if isinstance(self.size, int):
            scale = self.size / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
        else:
            size = self.size
        return _resized(sample, size, self.resize_label)

    def __repr__(self) -> str:
        return f"Resize({self.size!r}, resize_label={self.resize_label})"


class RandomScale:
    """Rescale by a factor drawn uniformly from ``scale_range`` (ANN §4.1: [0.5, 2.0]).

    Args:
        scale_range: (low, high) of the factor.
        base_size: when set, the factor applies to an image whose shorter side is first brought to
            ``base_size`` (the factor becomes ``ratio * base_size / min(H, W)``); when None, to the
            image as it is.
        generator: source of randomness; None uses torch's global RNG (see module docstring).
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        *,
        base_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
        if base_size is not None and base_size < 1:
            raise ValueError(f"base_size must be positive, got {base_size}")
        self.scale_range = (float(low), float(high))
        self.base_size = base_size
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        factor = uniform(*self.scale_range, self.generator)
        if self.base_size is not None:
            factor *= self.base_size / min(h, w)
        return _resized(sample, (max(1, round(h * factor)), max(1, round(w * factor))))

    def __repr__(self) -> str:
        return f"RandomScale({self.scale_range!r}, base_size={self.base_size})"


class RandomCrop:
    """Crop a random window; pad bottom/right first when the image is smaller than the window.

    Args:
        size: (height, width) of the crop, or an int for a square.
        cat_max_ratio: when set, redraw the window (up to 10 draws, keeping the last) until the
            most frequent class covers less than this fraction of the window's labelled pixels
            and at least two classes are present.
        image_fill: padding value of the image, one value or one per channel (e.g. the mean of an
            unnormalised image); the label is padded with ``ignore_index``.
        ignore_index: label value of padding, not counted by ``cat_max_ratio``.
        generator: source of randomness; None uses torch's global RNG (see module docstring).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        cat_max_ratio: float | None = None,
        image_fill: float | Sequence[float] = 0.0,
        ignore_index: int = IGNORE_INDEX,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _hw(size, "RandomCrop size")
        if cat_max_ratio is not None and not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = cat_max_ratio
        self.image_fill = image_fill
        self.ignore_index = ignore_index
        self.generator = generator

    def _pad(self, sample: Sample) -> Sample:
        image = sample["image"]
        h, w = image.shape[-2:]
        pad_h, pad_w = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if pad_h == 0 and pad_w == 0:
            return sample
        out = dict(sample)
        fill = torch.as_tensor(self.image_fill, dtype=image.dtype).reshape(-1, 1, 1)  # (C or 1, 1, 1)
        out["image"] = fill.expand(image.shape[0], h + pad_h, w + pad_w).clone()  # (3, H', W')
        out["image"][:, :h, :w] = image
        if "label" in sample:
            out["label"] = F.pad(sample["label"], (0, pad_w, 0, pad_h), value=self.ignore_index)  # (H', W')
        return out

    def _offset(self, h: int, w: int) -> tuple[int, int]:
        top = int(torch.randint(h - self.size[0] + 1, (), generator=self.generator))
        left = int(torch.randint(w - self.size[1] + 1, (), generator=self.generator))
        return top, left

    def _balanced(self, label: Tensor) -> bool:
        counts = torch.bincount(label[label != self.ignore_index].flatten())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, sample: Sample) -> Sample:
        sample = self._pad(sample)
        (h, w), (ch, cw) = sample["image"].shape[-2:], self.size
        top, left = self._offset(h, w)
        if self.cat_max_ratio is not None and "label" in sample:
            for _ in range(9):
                if self._balanced(sample["label"][top : top + ch, left : left + cw]):
                    break
                top, left = self._offset(h, w)
        out = dict(sample)
        out["image"] = sample["image"][:, top : top + ch, left : left + cw]  # (3, ch, cw)
        if "label" in sample:
            out["label"] = sample["label"][top : top + ch, left : left + cw]  # (ch, cw)
        return out

    def __repr__(self) -> str:
        return f"RandomCrop({self.size!r}, cat_max_ratio={self.cat_max_ratio}, image_fill={self.image_fill!r})"


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability ``p``.

    Args:
        p: probability of flipping.
        generator: source of randomness; None uses torch's global RNG (see module docstring).
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand((), generator=self.generator).item() >= self.p:
            return sample
        out = dict(sample)
        out["image"] = sample["image"].flip(-1)
        if "label" in sample:
            out["label"] = sample["label"].flip(-1)
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
