"""Paired image/label transforms: a sample dict in, a sample dict out; the recipe pipelines and the batch collation.
Geometric transforms are in :mod:`nlseg.data.geometric`, photometric ones and normalisation in
:mod:`nlseg.data.photometric`; all are re-exported here.

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
from torch import Tensor

from nlseg.data.base import Sample, Transform
from nlseg.data.geometric import RandomCrop, RandomHorizontalFlip, RandomScale, Resize
from nlseg.data.photometric import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    ColorJitter,
    Normalize,
    normalization,
)

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
