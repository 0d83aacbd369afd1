"""NYU Depth V2 (Silberman et al., ECCV 2012), 40-class labels of Gupta et al. (CVPR 2013).

Supported layout (795 train / 654 test images of the standard split)::

    root/images/{train,test}/{name}.png    (or .jpg) RGB frames
    root/labels40/{train,test}/{name}.png  single-channel, 0 = unlabelled, 1..40 the classes below

Label values: 0 -> 255 (ignored), k -> k - 1. nlseg has no converter from the official
``nyu_depth_v2_labeled.mat`` (an HDF5 file; it needs h5py): to build this layout, take the images
and the 40-class maps (Gupta et al.'s mapping of the 894 raw classes, e.g. ``labels40.mat``), split
them by ``splits.mat`` (``trainNdxs`` / ``testNdxs``) and save each as a PNG with the same name in
``images/`` and ``labels40/``.
"""
from __future__ import annotations

from pathlib import Path

from nlseg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset, index_palette, label_table

__all__ = ["NYUDV2_CLASSES", "NYUDv2"]

NYUDV2_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)


class NYUDv2(SegmentationDataset):
    """NYUD-V2 semantic segmentation with 40 classes, label 0 ignored.

    Args:
        root: folder holding ``images/`` and ``labels40/``.
        split: ``train`` or ``test``.
        transform: callable applied to every sample dict.
    """

    name = "NYUD-V2"
    splits = ("train", "test")
    classes = NYUDV2_CLASSES
    palette = index_palette(len(NYUDV2_CLASSES) + 1)[1:]
    num_classes = len(NYUDV2_CLASSES)
    label_map = label_table({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, 41)}, IGNORE_INDEX: IGNORE_INDEX})

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        folder = self._require_dir(self.root / "images" / self.split, "*.png or *.jpg")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not images:
            raise DatasetError(f"{self.name}: no files matching '*.png' or '*.jpg' in folder {folder}")
        labels = self.root / "labels40" / self.split
        return [self._pair(image, labels / f"{image.stem}.png", f"the label of {image}") for image in images]
