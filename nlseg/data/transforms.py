"""Paired image/label transforms: a sample dict in, a sample dict out.

Every transform reads ``sample["image"]`` ((3, H, W) float tensor) and, when present,
``sample["label"]`` ((H, W) int64 tensor, 255 = ignore), and returns a new dict with the other
keys passed through. Geometric transforms move image and label together: images are resampled
bilinearly, labels with ``nearest-exact`` (the same half-pixel convention as bilinear with
``align_corners=False``, so the two stay aligned).

Randomness. A random transform draws from the ``torch.Generator`` it was given, or, when none was
given, from torch's global RNG. ``torch.utils.data.DataLoader`` seeds the global torch RNG of each
worker with ``base_seed + worker_id``, ``base_seed`` being drawn in the main process from the
loader's ``generator`` (or the global RNG): with ``torch.manual_seed(s)`` or
``DataLoader(generator=torch.Generator().manual_seed(s))``, every worker's crops, scales and flips
are the same from run to run. Leave ``generator`` unset for transforms used in a DataLoader with
workers: a generator object is copied into every worker in the same state, so the workers would
repeat each other's draws. Pass a generator for reproducible draws outside a DataLoader.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nlseg.data.base import IGNORE_INDEX, Sample, Transform

__all__ = [
    "CAFFE_MEAN_BGR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "Resize",
    "build_transforms",
    "collate",
    "normalization",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)
"""The caffe means (B, G, R) on 0..255 that the released ANN weights expect (std 1)."""

# ITU-R BT.601 luma weights, for contrast and saturation.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


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


class Compose:
    """Apply transforms in order.

    Args:
        transforms: callables taking and returning a sample dict.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


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
        factor = _uniform(*self.scale_range, self.generator)
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
        return _uniform(max(0.0, 1.0 - strength), 1.0 + strength, self.generator)

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


def build_transforms(
    train: bool,
    crop_size: int | tuple[int, int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    *,
    base_size: int | None = None,
    cat_max_ratio: float | None = None,
    flip: bool = True,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    eval_size: int | tuple[int, int] | None = None,
    normalize: str = "imagenet",
    generator: torch.Generator | None = None,
) -> Compose:
    """The usual pipelines of a recipe (ANN §4.1: random scale 0.5-2.0, crop, flip, brightness).

    Training: RandomScale -> RandomCrop (image padded with 0, i.e. black) -> RandomHorizontalFlip
    -> ColorJitter (when any strength > 0) -> Normalize. Evaluation: [Resize(eval_size), label
    kept at full size] -> Normalize.

    Args:
        train: training or evaluation pipeline.
        crop_size: training crop (height, width) or square side; required when ``train``.
        scale_range: training scale factor range.
        base_size: see ``RandomScale``.
        cat_max_ratio: see ``RandomCrop``.
        flip: random horizontal flips in training.
        brightness: ``ColorJitter`` strength in training.
        contrast: ``ColorJitter`` strength in training.
        saturation: ``ColorJitter`` strength in training.
        eval_size: evaluation resize (``Resize`` size); None keeps the image size.
        normalize: the last step, a :data:`NORMALIZATIONS` name.
        generator: passed to every random transform (see module docstring).

    Returns:
        the composed pipeline.
    """
    if not train:
        steps: list[Transform] = [] if eval_size is None else [Resize(eval_size, resize_label=False)]
        return Compose([*steps, normalization(normalize)])
    if crop_size is None:
        raise ValueError("build_transforms(train=True) needs crop_size")
    steps = [
        RandomScale(scale_range, base_size=base_size, generator=generator),
        RandomCrop(crop_size, cat_max_ratio=cat_max_ratio, generator=generator),
    ]
    if flip:
        steps.append(RandomHorizontalFlip(generator=generator))
    if brightness > 0 or contrast > 0 or saturation > 0:
        steps.append(ColorJitter(brightness, contrast, saturation, generator=generator))
    return Compose([*steps, normalization(normalize)])


def collate(batch: Sequence[Sample]) -> Sample:
    """Collate sample dicts into a batch: tensors stacked, other values gathered in lists.

    Args:
        batch: samples with the same keys; tensors of one key must have the same shape (use
            crops, or batch size 1 for full images of different sizes).

    Returns:
        dict with ``image`` (B, 3, H, W), ``label`` (B, H, W) when present, and lists of the rest.
    """
    keys = batch[0].keys()
    for sample in batch[1:]:
        if sample.keys() != keys:
            raise ValueError(f"cannot collate samples with different keys: {sorted(keys)} vs {sorted(sample.keys())}")
    out: Sample = {}
    for key in keys:
        values = [sample[key] for sample in batch]
        if isinstance(values[0], Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                names = [sample.get("name", "?") for sample in batch]
                raise ValueError(
                    f"cannot stack {key!r} of shapes {sorted(shapes)} (samples {names}); crop or resize to "
                    "one size, or use batch size 1"
                )
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
