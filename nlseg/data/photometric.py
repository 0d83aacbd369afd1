"""Photometric transforms and input normalisation: colour jitter, and the ``imagenet`` / ``caffe`` normalisations
of ``data.normalize``. Randomness as :mod:`nlseg.data.transforms` says."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nlseg.data.base import Sample

__all__ = [
    "CAFFE_MEAN_BGR", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "ColorJitter", "Normalize", "normalization",
    "uniform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)
"""The caffe means (B, G, R) on 0..255 that the released ANN weights expect (std 1)."""

# ITU-R BT.601 luma weights, for contrast and saturation.
_LUMA = (0.299, 0.587, 0.114)


def uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    """A draw from U(low, high) with ``generator`` (torch's global RNG when None; see :mod:`nlseg.data.transforms`)."""
    return low + (high - low) * torch.rand((), generator=generator).item()


class ColorJitter:
    """Random brightness, contrast and saturation, applied in that order to a 0..1 image.

    Each factor is drawn uniformly from [max(0, 1 - x), 1 + x] for its strength x (0 disables it):
    brightness multiplies the image, contrast blends it with its mean grey level, saturation with
    its per-pixel grey image; the result is clamped to 0..1. Use before ``Normalize``.

    Args:
        brightness: strength of the brightness change (ANN's "random brightness").
        contrast: strength of the contrast change.
        saturation: strength of the saturation change.
        generator: source of randomness; None uses torch's global RNG (see module docstring).
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        for what, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if value < 0:
                raise ValueError(f"ColorJitter {what} must be >= 0, got {value}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.generator = generator

    def _factor(self, strength: float) -> float:
        return uniform(max(0.0, 1.0 - strength), 1.0 + strength, self.generator)

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        luma = torch.tensor(_LUMA, dtype=image.dtype).reshape(3, 1, 1)
        if self.brightness > 0:
            image = (image * self._factor(self.brightness)).clamp(0, 1)
        if self.contrast > 0:
            mean = (image * luma).sum(0).mean()
            image = torch.lerp(mean, image, self._factor(self.contrast)).clamp(0, 1)
        if self.saturation > 0:
            grey = (image * luma).sum(0, keepdim=True)  # (1, H, W)
            image = torch.lerp(grey, image, self._factor(self.saturation)).clamp(0, 1)
        return {**sample, "image": image}

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class Normalize:
    """Scale a 0..1 RGB image, optionally reverse its channels to BGR, subtract the per-channel mean and divide by
    the standard deviation.

    Args:
        mean: per-channel mean, in the output's channel order and scale (ImageNet's by default).
        std: per-channel standard deviation.
        scale: the image is multiplied by it first (255 for a 0..255 input).
        bgr: reverse the channels (RGB -> BGR) before the mean is subtracted.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        scale: float = 1.0,
        bgr: bool = False,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"Normalize needs 3 means and 3 positive stds, got mean={mean!r}, std={std!r}")
        self.mean, self.std, self.scale, self.bgr = tuple(mean), tuple(std), scale, bgr

    def image(self, image: Tensor) -> Tensor:
        """The normalised copy of a (3, H, W) or (B, 3, H, W) 0..1 RGB image, on its device."""
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).reshape(3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).reshape(3, 1, 1)
        image = image * self.scale
        if self.bgr:
            image = image.flip(-3)  # (.., 3, H, W) RGB -> BGR
        return (image - mean) / std

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "image": self.image(sample["image"])}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std}, scale={self.scale:g}, bgr={self.bgr})"


NORMALIZATIONS: dict[str, Normalize] = {
    "imagenet": Normalize(IMAGENET_MEAN, IMAGENET_STD),
    "caffe": Normalize(CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), scale=255.0, bgr=True),
}
"""The input normalisations of ``data.normalize``: ``imagenet`` (RGB, 0..1, ImageNet mean and std: torchvision's
weights) and ``caffe`` (BGR, 0..255, the caffe means, std 1: the released ANN weights)."""


def normalization(name: str) -> Normalize:
    """The :data:`NORMALIZATIONS` entry ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {name!r}; expected one of {list(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]
