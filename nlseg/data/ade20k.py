"""ADE20K in the SceneParsing challenge layout (MIT Scene Parsing Benchmark, 150 classes).

Layout (``ADEChallengeData2016.zip`` unpacked)::

    ADEChallengeData2016/images/{training,validation}/ADE_*_XXXXXXXX.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*_XXXXXXXX.png

``root`` may be ``ADEChallengeData2016`` itself or the folder containing it. Annotations hold 0
(other / unlabelled) and 1..150; ``reduce_zero_label``: 0 -> 255 (ignored), k -> k - 1.
"""
from __future__ import annotations

from pathlib import Path

from nlseg.data.base import IGNORE_INDEX, SegmentationDataset, index_palette, label_table

__all__ = ["ADE20K", "ADE20K_CLASSES"]

# The 150 class names of the SceneParsing benchmark (objectInfo150), in train id order.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building, edifice", "sky", "floor, flooring", "tree", "ceiling", "road, route", "bed",
    "windowpane, window", "grass", "cabinet", "sidewalk, pavement",
    "person, individual, someone, somebody, mortal, soul", "earth, ground", "door, double door", "table",
    "mountain, mount", "plant, flora, plant life", "curtain, drape, drapery, mantle, pall", "chair",
    "car, auto, automobile, machine, motorcar", "water", "painting, picture", "sofa, couch, lounge", "shelf",
    "house", "sea", "mirror", "rug, carpet, carpeting", "field", "armchair", "seat", "fence, fencing", "desk",
    "rock, stone", "wardrobe, closet, press", "lamp", "bathtub, bathing tub, bath, tub", "railing, rail",
    "cushion", "base, pedestal, stand", "box", "column, pillar", "signboard, sign",
    "chest of drawers, chest, bureau, dresser", "counter", "sand", "sink", "skyscraper",
    "fireplace, hearth, open fireplace", "refrigerator, icebox", "grandstand, covered stand", "path",
    "stairs, steps", "runway", "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table", "pillow", "screen door, screen", "stairway, staircase",
    "river", "bridge, span", "bookcase", "blind, screen", "coffee table, cocktail table",
    "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "hill", "bench",
    "countertop", "stove, kitchen stove, range, kitchen range, cooking stove", "palm, palm tree",
    "kitchen island",
    "computer, computing machine, computing device, data processor, electronic computer, "
    "information processing system",
    "swivel chair", "boat", "bar", "arcade machine", "hovel, hut, hutch, shack, shanty",
    "bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, passenger vehicle",
    "towel", "light, light source", "truck, motortruck", "tower", "chandelier, pendant, pendent",
    "awning, sunshade, sunblind", "streetlight, street lamp", "booth, cubicle, stall, kiosk",
    "television, television receiver, television set, tv, tv set, idiot box, boob tube, telly, goggle box",
    "airplane, aeroplane, plane", "dirt track", "apparel, wearing apparel, dress, clothes", "pole",
    "land, ground, soil", "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock", "bottle",
    "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card", "stage", "van", "ship",
    "fountain", "conveyer belt, conveyor belt, conveyer, conveyor, transporter", "canopy",
    "washer, automatic washer, washing machine", "plaything, toy", "swimming pool, swimming bath, natatorium",
    "stool", "barrel, cask", "basket, handbasket", "waterfall, falls", "tent, collapsible shelter", "bag",
    "minibike, motorbike", "cradle", "oven", "ball", "food, solid food", "step, stair", "tank, storage tank",
    "trade name, brand name, brand, marque", "microwave, microwave oven", "pot, flowerpot",
    "animal, animate being, beast, brute, creature, fauna", "bicycle, bike, wheel, cycle", "lake",
    "dishwasher, dish washer, dishwashing machine", "screen, silver screen, projection screen",
    "blanket, cover", "sculpture", "hood, exhaust hood", "sconce", "vase",
    "traffic light, traffic signal, stoplight", "tray",
    "ashcan, trash can, garbage can, wastebin, ash bin, ash-bin, ashbin, dustbin, trash barrel, trash bin",
    "fan", "pier, wharf, wharfage, dock", "crt screen", "plate", "monitor, monitoring device",
    "bulletin board, notice board", "shower", "radiator", "glass, drinking glass", "clock", "flag",
)

_FOLDER = "ADEChallengeData2016"


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing, 150 classes, label 0 ignored (Zhou et al., CVPR 2017).

    Args:
        root: ``ADEChallengeData2016`` or the folder containing it.
        split: ``train`` (``training``, 20210 images) or ``val`` (``validation``, 2000 images).
        transform: callable applied to every sample dict.
    """

    name = "ADE20K"
    splits = ("train", "val")
    classes = ADE20K_CLASSES
    palette = index_palette(len(ADE20K_CLASSES) + 1)[1:]
    num_classes = len(ADE20K_CLASSES)
    label_map = label_table({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, 151)}, IGNORE_INDEX: IGNORE_INDEX})

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        base = self.root if (self.root / "images").is_dir() else self.root / _FOLDER
        folder = {"train": "training", "val": "validation"}[self.split]
        images = self._glob(base / "images" / folder, "*.jpg")
        annotations = base / "annotations" / folder
        return [
            self._pair(image, annotations / f"{image.stem}.png", f"the label of {image}") for image in images
        ]
