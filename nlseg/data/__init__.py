"""Data sets in their real on-disk layouts, the embedded synthetic set, paired transforms, and the registry.

``create_dataset(name, root, split, **options)`` builds a data set by name; ``list_datasets()`` lists
the names; ``dataset_class(name)`` gives the class (its classes, palette, ``requires_root`` and the
keyword options its constructor takes). Samples are dicts (see ``nlseg.data.base``); labels use 255
for ignored pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from nlseg.data.ade20k import ADE20K
from nlseg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset
from nlseg.data.cityscapes import Cityscapes
from nlseg.data.coco_stuff import COCOStuff10K
from nlseg.data.folder import FolderDataset
from nlseg.data.nyudv2 import NYUDv2
from nlseg.data.pascal_context import PascalContext
from nlseg.data.synthetic import SyntheticContext
from nlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, collate
from nlseg import registry
from nlseg.registry import Registry

__all__ = [
    "DATASETS",
    "ADE20K",
    "COCOStuff10K",
    "Cityscapes",
    "DatasetError",
    "FolderDataset",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NYUDv2",
    "PascalContext",
    "SegmentationDataset",
    "SyntheticContext",
    "build_transforms",
    "collate",
    "create_dataset",
    "dataset_class",
    "list_datasets",
]

DATASETS: Registry[type[Dataset]] = registry.DATASETS
for _name, _cls in (
    ("ade20k", ADE20K), ("cityscapes", Cityscapes), ("coco_stuff10k", COCOStuff10K), ("folder", FolderDataset),
    ("nyudv2", NYUDv2), ("pascal_context", PascalContext), ("synthetic", SyntheticContext),
):
    DATASETS.register(_name, _cls)


def list_datasets() -> list[str]:
    """Names accepted by ``create_dataset``, sorted."""
    return DATASETS.names(sort=True)


def dataset_class(name: str) -> type[Dataset]:
    """The class registered as ``name``.

    Its class attributes say what it is: ``classes``, ``palette``, ``num_classes``, ``ignore_index``,
    ``requires_root`` (False for a generated data set, which reads no files). Its constructor takes
    ``(root, split, transform=None, *, options...)``, or ``(split, *, transform=None, options...)`` when
    ``requires_root`` is False; the options are explicit keyword parameters.

    Raises:
        ValueError: an unknown name; the message lists the registered ones.
    """
    return DATASETS.lookup(name)


def create_dataset(name: str, root: str | Path | None, split: str, **options: Any) -> Dataset:
    """Build a registered data set.

    Args:
        name: one of ``list_datasets()``.
        root: the data set's root folder; None for a data set that reads no files (``synthetic``).
        split: a split of that data set (e.g. ``train``, ``val``).
        **options: keyword options of the data set class (``transform``; ``num_classes`` for PASCAL
            Context; ``classes`` for ``folder``; ``length``, ``size``, ... for ``synthetic``).

    Returns:
        the data set.

    Raises:
        ValueError: an unknown name, a missing root, or a root given to a generated data set.
    """
    cls = dataset_class(name)
    if not getattr(cls, "requires_root", True):
        if root is not None:
            raise ValueError(f"the {name} data set is generated and reads no files; got root {str(root)!r}")
        return cls(split, **options)
    if root is None:
        raise ValueError(f"the {name} data set needs its root folder; got None")
    return cls(root, split, **options)
