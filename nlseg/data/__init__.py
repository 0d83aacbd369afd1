"""Data sets in their real on-disk layouts, paired transforms, and the data set registry.

``create_dataset(name, root, split, **options)`` builds a data set by name; ``list_datasets()`` lists
the names. Samples are dicts (see ``nlseg.data.base``); labels use 255 for ignored pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nlseg.data.ade20k import ADE20K
from nlseg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset
from nlseg.data.cityscapes import Cityscapes
from nlseg.data.coco_stuff import COCOStuff10K
from nlseg.data.nyudv2 import NYUDv2
from nlseg.data.pascal_context import PascalContext
from nlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, collate

__all__ = [
    "ADE20K",
    "COCOStuff10K",
    "Cityscapes",
    "DatasetError",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NYUDv2",
    "PascalContext",
    "SegmentationDataset",
    "build_transforms",
    "collate",
    "create_dataset",
    "dataset_class",
    "list_datasets",
]

_DATASETS: dict[str, type[SegmentationDataset]] = {
    "ade20k": ADE20K,
    "cityscapes": Cityscapes,
    "coco_stuff10k": COCOStuff10K,
    "nyudv2": NYUDv2,
    "pascal_context": PascalContext,
}


def list_datasets() -> list[str]:
    """Names accepted by ``create_dataset``, sorted."""
    return sorted(_DATASETS)


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The class of a data set name (``synthetic`` included), for its classes and palette."""
    if name == "synthetic":
        from nlseg.data.synthetic import SyntheticContext

        return SyntheticContext
    if name not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: synthetic, {', '.join(list_datasets())}")
    return _DATASETS[name]


def create_dataset(name: str, root: str | Path, split: str, **options: Any) -> SegmentationDataset:
    """Build a registered data set.

    Args:
        name: one of ``list_datasets()``.
        root: the data set's root folder.
        split: a split of that data set (e.g. ``train``, ``val``).
        **options: passed to the data set class (``transform``; ``num_classes`` for PASCAL Context).

    Returns:
        the data set.
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(list_datasets())}")
    return _DATASETS[name](root, split, **options)
