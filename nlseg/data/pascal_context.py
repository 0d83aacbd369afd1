"""PASCAL Context (Mottaghi et al., CVPR 2014): the 59 most frequent classes, with or without background.

Supported layout — the one the detail-api / mmsegmentation conversion writes::

    VOCdevkit/VOC2010/JPEGImages/{id}.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/{id}.png          values 0..59, 0 = background
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt   one {id} per line

``root`` may be the folder containing ``VOCdevkit``, ``VOCdevkit`` itself or ``VOC2010`` itself.
Labels must already be the 60-value maps; the 459-class ``trainval_merged.json`` of the original
release is not read. ``num_classes=60`` keeps 0 as the class ``background``; ``num_classes=59``
ignores it (0 -> 255, k -> k - 1). 255 in a label file is accepted as ignored.
"""
from __future__ import annotations

from pathlib import Path

from nlseg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset, Transform, index_palette, label_table

__all__ = ["PASCAL_CONTEXT_CLASSES", "PascalContext"]

# Label values 1..59 of the converted maps: the 59 classes in the order of their ids in the
# original 459-class list (alphabetical); 0 is background.
PASCAL_CONTEXT_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table",
    "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)

_VARIANTS = {
    59: (
        PASCAL_CONTEXT_CLASSES,
        index_palette(60)[1:],
        label_table({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, 60)}, IGNORE_INDEX: IGNORE_INDEX}),
    ),
    60: (
        ("background", *PASCAL_CONTEXT_CLASSES),
        index_palette(60),
        label_table({**{k: k for k in range(60)}, IGNORE_INDEX: IGNORE_INDEX}),
    ),
}


class PascalContext(SegmentationDataset):
    """PASCAL Context, 59 classes (background ignored) or 60 (background a class).

    Args:
        root: folder containing ``VOCdevkit``, or ``VOCdevkit``, or ``VOC2010``.
        split: ``train`` (4998 images) or ``val`` (5105 images).
        transform: callable applied to every sample dict.
        num_classes: 60 (with background, as ANN evaluates) or 59.
    """

    name = "PASCAL Context"
    splits = ("train", "val")
    classes, palette, label_map = _VARIANTS[60]
    num_classes = 60

    def __init__(
        self, root: str | Path, split: str, transform: Transform | None = None, *, num_classes: int = 60
    ) -> None:
        if num_classes not in _VARIANTS:
            raise ValueError(f"PascalContext: num_classes must be 59 or 60, got {num_classes!r}")
        self.classes, self.palette, self.label_map = _VARIANTS[num_classes]
        self.num_classes = num_classes
        super().__init__(root, split, transform)

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        candidates = [self.root / "VOCdevkit" / "VOC2010", self.root / "VOC2010", self.root]
        base = next((c for c in candidates if (c / "JPEGImages").is_dir()), None)
        if base is None:
            searched = ", ".join(str(c / "JPEGImages") for c in candidates)
            raise DatasetError(f"{self.name}: no JPEGImages folder found; searched {searched}")
        list_file = base / "ImageSets" / "SegmentationContext" / f"{self.split}.txt"
        return [
            self._pair(
                base / "JPEGImages" / f"{name}.jpg",
                base / "SegmentationClassContext" / f"{name}.png",
                f"listed in {list_file}",
            )
            for name in self._read_list(list_file)
        ]
