"""Cityscapes in its official folder layout, with the official label id -> train id table.

Layout (as downloaded from cityscapes-dataset.com)::

    root/leftImg8bit/{train,val,test}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{train,val}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
    root/gtFine/{train,val}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png   (optional)

A ``*_labelTrainIds.png`` (written by cityscapesScripts' ``createTrainIdLabelImgs``) is used when it
exists; otherwise the ``*_labelIds.png`` is mapped to the 19 train ids by ``CITYSCAPES_LABELS``.
The ``test`` split has no public labels and yields samples without ``label``. Predictions for the
official evaluator must be label ids: ``Cityscapes.label_ids_from_train_ids``.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

from nlseg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset, label_table

__all__ = ["CITYSCAPES_LABELS", "Cityscapes", "CityscapesLabel"]


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table (cityscapesScripts ``helpers/labels.py``)."""

    name: str
    id: int
    train_id: int  # 255: not trained on and ignored in evaluation; -1: never stored in label images
    category: str
    color: tuple[int, int, int]


# The official table: 34 label ids stored in *_labelIds.png plus 'license plate' (id -1, not stored).
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", (0, 0, 142)),
)

_TRAINED = sorted(
    (label for label in CITYSCAPES_LABELS if 0 <= label.train_id < IGNORE_INDEX), key=lambda label: label.train_id
)
_STORED = [label for label in CITYSCAPES_LABELS if label.id >= 0]


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations, 19 train classes (Cordts et al., CVPR 2016).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val``, ``trainval`` (both, for a test-server submission) or ``test`` (no labels).
        transform: callable applied to every sample dict.
    """

    name = "Cityscapes"
    splits = ("train", "val", "trainval", "test")
    classes = tuple(label.name for label in _TRAINED)
    palette = [label.color for label in _TRAINED]
    num_classes = len(classes)
    # train id -> label id, for exporting predictions to the official evaluator.
    train_id_to_label_id: ClassVar[tuple[int, ...]] = tuple(label.id for label in _TRAINED)
    # *_labelIds.png: every stored id, mapped to its train id (ignored ids and 255 -> 255).
    label_map = label_table(
        {**{label.id: label.train_id for label in _STORED}, IGNORE_INDEX: IGNORE_INDEX}
    )
    # *_labelTrainIds.png: train ids 0..18 and 255.
    train_id_map = label_table({**{i: i for i in range(len(_TRAINED))}, IGNORE_INDEX: IGNORE_INDEX})

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        suffix = "_leftImg8bit.png"
        folders = ("train", "val") if self.split == "trainval" else (self.split,)
        images = [image for folder in folders for image in self._glob(self.root / "leftImg8bit" / folder, f"*/*{suffix}")]
        if self.split == "test":
            return [(image, None) for image in images]
        samples: list[tuple[Path, Path | None]] = []
        for image in images:
            city, stem = image.parent.name, image.name[: -len(suffix)]
            gt = self.root / "gtFine" / image.parent.parent.name / city
            train_ids, label_ids = gt / f"{stem}_gtFine_labelTrainIds.png", gt / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                samples.append((image, train_ids))
            elif label_ids.is_file():
                samples.append((image, label_ids))
            else:
                raise DatasetError(f"{self.name}: no label for image {image}; expected {label_ids} or {train_ids}")
        return samples

    def _label_table(self, label_path: Path) -> np.ndarray:
        return self.train_id_map if label_path.name.endswith("_labelTrainIds.png") else self.label_map

    @classmethod
    def label_ids_from_train_ids(cls, train_ids: Tensor) -> Tensor:
        """Map predicted train ids (0..18; 255 allowed) to official label ids for export (255 -> 0).

        Args:
            train_ids: integer tensor of any shape.

        Returns:
            int64 tensor of label ids, same shape and device.
        """
        lut = torch.zeros(IGNORE_INDEX + 1, dtype=torch.int64, device=train_ids.device)
        lut[: cls.num_classes] = torch.tensor(cls.train_id_to_label_id, device=train_ids.device)
        bad = (train_ids < 0) | ((train_ids >= cls.num_classes) & (train_ids != IGNORE_INDEX))
        if bool(bad.any()):
            raise ValueError(
                f"Cityscapes train ids must be 0..{cls.num_classes - 1} or {IGNORE_INDEX}; "
                f"found {sorted(set(train_ids[bad].tolist()))[:10]}"
            )
        return lut[train_ids.long()]
