"""COCO-Stuff-10K v1.1 (Caesar et al., CVPR 2018): 171 classes, 9000 train / 1000 test images.

Layout (``cocostuff-10k-v1.1.zip`` unpacked, then ``nlseg.data.convert.convert_cocostuff10k(root)``)::

    root/images/COCO_train2014_XXXXXXXXXXXX.jpg
    root/annotations/COCO_train2014_XXXXXXXXXXXX.mat   official labels (key S, 0..182)
    root/annotations/COCO_train2014_XXXXXXXXXXXX.png   written by the converter: train ids 0..170, 255
    root/imageLists/{train,test}.txt                   one image name (no extension) per line

The official ids are COCO's: 0 unlabeled, 1..91 things (11 of them never annotated), 92..182
stuff. Train ids number the 80 annotated things and the 91 stuff classes contiguously in id order.
"""
from __future__ import annotations

from pathlib import Path

from nlseg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset, index_palette, label_table

__all__ = ["COCOSTUFF_LABEL_NAMES", "COCOSTUFF_UNUSED_IDS", "COCOStuff10K"]

# The official label list of COCO-Stuff (labels.txt): index = label id in the .mat files.
COCOSTUFF_LABEL_NAMES: tuple[str, ...] = (
    "unlabeled", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella",
    "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "plate", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "mirror", "dining table", "window", "desk", "toilet", "door", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "blender", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "hair brush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other",
    "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

# COCO thing ids without segmentation annotations (COCO 2015 kept them in its id list only).
COCOSTUFF_UNUSED_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

_USED_IDS = [i for i in range(1, len(COCOSTUFF_LABEL_NAMES)) if i not in COCOSTUFF_UNUSED_IDS]


class COCOStuff10K(SegmentationDataset):
    """COCO-Stuff-10K with 171 classes (80 things + 91 stuff), label files converted to train ids.

    Args:
        root: folder holding ``images/``, ``annotations/`` and ``imageLists/``.
        split: ``train`` (9000 images) or ``test`` (1000 images, the evaluation split).
        transform: callable applied to every sample dict.
    """

    name = "COCO-Stuff-10K"
    splits = ("train", "test")
    classes = tuple(COCOSTUFF_LABEL_NAMES[i] for i in _USED_IDS)
    palette = index_palette(len(_USED_IDS) + 1)[1:]
    num_classes = len(_USED_IDS)
    label_map = label_table({**{k: k for k in range(len(_USED_IDS))}, IGNORE_INDEX: IGNORE_INDEX})
    # official id -> train id; unused thing ids are absent (not allowed).
    id_to_train_id = label_table({0: IGNORE_INDEX, **{i: t for t, i in enumerate(_USED_IDS)}})

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        list_file = self.root / "imageLists" / f"{self.split}.txt"
        samples = []
        for name in self._read_list(list_file):
            label = self.root / "annotations" / f"{name}.png"
            if not label.is_file() and label.with_suffix(".mat").is_file():
                raise DatasetError(
                    f"{self.name}: {label} not found but {label.with_suffix('.mat')} is: convert the official "
                    f".mat labels first with nlseg.data.convert.convert_cocostuff10k({str(self.root)!r})"
                )
            samples.append(self._pair(self.root / "images" / f"{name}.jpg", label, f"listed in {list_file}"))
        return samples
