"""SyntheticContext: an embedded data set, generated on the fly, on which long-range context is necessary.

It stages the two kinds of attention noise of the Denoised NL paper (Song et al., TNNLS 2023, §I and
§III-D/E) so that a network with non-local context can be told apart from a local one in minutes on a CPU:

- Inter-class noise (§III-D). Every image holds a few discs of one shared striped texture. They are
  all ``disc_a`` or all ``disc_b``; both classes come from the same texture generator, so a disc alone
  does not say which. The answer is a square beacon next to one of the discs: a red ``beacon_a`` or a
  blue ``beacon_b``. Every other disc lies at least ``cue_distance`` (half the longer image side by
  default) from the beacon. A convolutional network can only carry the beacon's colour as far as its
  receptive field and training take it: the demo's dilated ResNet-18 (receptive field 727 px wide) learns
  to reach the far discs of 96x256 strips (>= 128 px) but not those of 96x512 strips (>= 256 px). A
  non-local block gathers evidence from the whole image in one step, at any distance.
  (Two beacon classes rather than one make the networks encode the beacon's colour, which they then
  only have to move.)
- Intra-class noise (§III-E). A large ``building`` (brick texture) has "hollows": patches inside it
  painted with this image's background texture but labelled ``building``; the surrounding object, not
  the local texture, says what they are.

``sky``, ``grass`` and the beacons are decidable from local appearance, so the per-class table
separates what context buys from what any network gets.

Image ``i`` of split ``s`` is a pure function of ``(seed, s, i)`` and the options: it is drawn from its
own ``numpy.random.Generator`` and never touches global random state.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from nlseg.data.base import IGNORE_INDEX, Sample, Transform

__all__ = ["SyntheticContext"]

BACKGROUND, SKY, GRASS, BUILDING, BEACON_A, BEACON_B, DISC_A, DISC_B = range(8)

# Colours in 0..1 RGB. The two beacon colours are the only difference between the disc_a and disc_b
# images; nothing else in an image may correlate with the disc class.
_BACKGROUND_RGB = np.array([0.55, 0.52, 0.47], dtype=np.float32)
_SKY_TOP_RGB = np.array([0.33, 0.52, 0.88], dtype=np.float32)
_SKY_BOTTOM_RGB = np.array([0.68, 0.80, 0.95], dtype=np.float32)
_GRASS_RGB = np.array([0.26, 0.52, 0.16], dtype=np.float32)
_BRICK_RGB = np.array([0.47, 0.33, 0.52], dtype=np.float32)
_MORTAR_RGB = np.array([0.72, 0.68, 0.74], dtype=np.float32)
_DISC_LIGHT_RGB = np.array([0.95, 0.66, 0.20], dtype=np.float32)
_DISC_DARK_RGB = np.array([0.62, 0.32, 0.10], dtype=np.float32)
_BEACON_RGB = {
    DISC_A: np.array([0.90, 0.10, 0.12], dtype=np.float32),  # red
    DISC_B: np.array([0.12, 0.18, 0.90], dtype=np.float32),  # blue
}

# Geometry, as fractions of the image's shorter side.
_DISC_RADIUS = (0.1, 0.14)
_DISC_GAP = 0.05  # least free space between two discs
_STRIPE_PERIOD = 0.05
_BEACON_SIDE = 0.2
_BEACON_GAP = (0.01, 0.03)  # free space between the cued disc and its beacon
_BUILDING_SIDE = (0.5, 0.75)
_HOLLOW_RADIUS = (0.12, 0.2)
_HOLLOW_MARGIN = 0.04  # least building texture between a hollow and the building's edge
_BRICK_HEIGHT, _BRICK_WIDTH = 0.06, 0.12
_PLACEMENT_TRIES = 40  # draws per extra disc
_LAYOUT_TRIES = 1000  # draws of the cued disc and its beacon

_SPLITS = {"train": 0, "val": 1, "test": 2}


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small (gh, gw) grid to (h, w), corners aligned: smooth noise."""
    gh, gw = grid.shape
    y = np.linspace(0, gh - 1, h, dtype=np.float32)
    x = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0 = np.minimum(y.astype(np.int64), gh - 2)
    x0 = np.minimum(x.astype(np.int64), gw - 2)
    fy, fx = (y - y0)[:, None], x - x0
    rows = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # (gh, w): along x first, it is separable
    return rows[y0] * (1 - fy) + rows[y0 + 1] * fy  # (h, w)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 noise of unit scale that varies smoothly over about ``cell`` pixels."""
    grid = rng.standard_normal((math.ceil(h / cell) + 1, math.ceil(w / cell) + 1), dtype=np.float32)
    return _upsample(grid, h, w)


class SyntheticContext(Dataset):
    """Embedded segmentation data set whose ambiguous classes are decided by context far away.

    Denoised NL §III-D (inter-class noise: ``disc_a`` and ``disc_b`` look alike, a distant beacon
    decides) and §III-E (intra-class noise: background-textured hollows inside ``building``).
    See the module docstring and :meth:`describe`.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split is its own random stream.
        length: number of images in the split.
        size: image (height, width), or one int for a square. A wide strip leaves room to put discs far
            from the beacon.
        seed: base seed; image ``i`` depends only on (seed, split, i) and the options below.
        transform: callable applied to every sample dict (see ``nlseg.data.transforms``).
        discs: least and most number of discs per image, the cued one included; fewer are drawn when
            the far ones do not fit, but never fewer than 2.
        hollows: least and most number of hollows inside the building; ``(0, 0)`` turns them off.
        cue_distance: least distance from the beacon's centre to every disc but the cued one, as a
            fraction of the longer image side. Larger is harder for a local network.
        noise: standard deviation of the per-pixel noise added to every texture.
        cache: keep every generated image in memory (about 0.3 MB per 96x256 image) and serve it from
            there the next time; the result is the same, generation (a few ms per image) is skipped.
            Each data loader worker process keeps its own cache.

    Each sample is a dict with ``image`` ((3, H, W) float32 in 0..1), ``label`` ((H, W) int64),
    ``image_path`` (a synthetic id such as ``"synthetic/train/000012"``), ``label_path`` (None) and
    ``name`` (``"train_000012"``).
    """

    name: ClassVar[str] = "synthetic"
    classes: ClassVar[tuple[str, ...]] = ("background", "sky", "grass", "building", "beacon_a", "beacon_b", "disc_a", "disc_b")
    palette: ClassVar[list[tuple[int, int, int]]] = [
        (0, 0, 0),
        (70, 130, 180),
        (107, 142, 35),
        (128, 64, 128),
        (255, 140, 140),
        (140, 170, 255),
        (220, 20, 60),
        (0, 0, 142),
    ]
    num_classes: ClassVar[int] = 8
    ignore_index: ClassVar[int] = IGNORE_INDEX
    splits: ClassVar[tuple[str, ...]] = tuple(_SPLITS)
    requires_root: ClassVar[bool] = False  # generated: built as SyntheticContext(split, **options)

    def __init__(
        self,
        split: str = "train",
        *,
        length: int = 512,
        size: int | tuple[int, int] = (96, 256),
        seed: int = 0,
        transform: Transform | None = None,
        discs: tuple[int, int] = (4, 7),
        hollows: tuple[int, int] = (1, 3),
        cue_distance: float = 0.5,
        noise: float = 0.03,
        cache: bool = False,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or min(hw) < 32:
            raise ValueError(f"{self.name}: size must be an int or (height, width), each at least 32, got {size!r}")
        h, w = hw
        if length < 0 or seed < 0:
            raise ValueError(f"{self.name}: length and seed must be >= 0, got length={length}, seed={seed}")
        if not 2 <= discs[0] <= discs[1]:
            raise ValueError(f"{self.name}: discs must be (least, most) with 2 <= least <= most, got {discs!r}")
        if not 0 <= hollows[0] <= hollows[1]:
            raise ValueError(f"{self.name}: hollows must be (least, most) with 0 <= least <= most, got {hollows!r}")
        if not 0 <= cue_distance <= 0.7:
            raise ValueError(f"{self.name}: cue_distance must be in [0, 0.7] (fraction of the longer image side), "
                             f"got {cue_distance}")
        if noise < 0:
            raise ValueError(f"{self.name}: noise must be >= 0, got {noise}")
        self.split, self.length, self.seed, self.transform = split, length, seed, transform
        self.size = (int(h), int(w))
        self.discs, self.hollows, self.cue_distance, self.noise = tuple(discs), tuple(hollows), cue_distance, noise
        self._yy, self._xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres, (H, W) each
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(
                f"{self.name}: index {index} out of range for split {self.split!r} of length {self.length}"
            )
        cached = self._cache.get(index) if self._cache is not None else None
        if cached is None:
            image_hwc, label_hw = self._generate(np.random.default_rng([self.seed, _SPLITS[self.split], index]))
            image = torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1)))  # (3, H, W)
            label = torch.from_numpy(label_hw)  # (H, W) uint8: 8 classes
            if self._cache is not None:
                self._cache[index] = image, label
                image = image.clone()  # transforms may work in place: the cached tensors stay untouched
        else:
            image, label = cached[0].clone(), cached[1]
        sample: Sample = {
            "image": image,
            "label": label.long(),  # a new tensor
            "image_path": f"synthetic/{self.split}/{index:06d}",
            "label_path": None,
            "name": f"{self.split}_{index:06d}",
        }
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        h, w = self.size
        return (f"SyntheticContext(split={self.split!r}, length={self.length}, size=({h}, {w}), seed={self.seed}, "
                f"discs={self.discs}, hollows={self.hollows}, cue_distance={self.cue_distance}, noise={self.noise})")

    @classmethod
    def describe(cls) -> str:
        """A paragraph for the demo: what the classes are and why context decides some of them."""
        return (
            "SyntheticContext: 8 classes (background, sky, grass, building, beacon_a, beacon_b, disc_a, disc_b) "
            "on street-like strips. Every image holds a few orange striped discs that are all disc_a or all "
            "disc_b; the two classes share one texture, so a disc alone cannot be told. A square beacon next to "
            "one of the discs decides: a red beacon_a means disc_a, a blue beacon_b means disc_b. All other discs "
            "lie at least half the strip's width from the beacon, so the evidence has to travel that far: a "
            "convolution carries it as far as its receptive field and training take it, a non-local block "
            "gathers it from the whole image in one step (the inter-class noise of Denoised NL §III-D). The "
            "brick building has hollows painted with the background's texture but labelled building: the "
            "surrounding object, not the local texture, tells (the intra-class noise of §III-E). Sky, grass and "
            "the beacons are decidable locally."
        )

    # Generation ---------------------------------------------------------------------------------

    def _generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (image (H, W, 3) float32 in 0..1, label (H, W) uint8) pair, painted back to front."""
        h, w = self.size
        s = float(min(h, w))
        yy, xx = self._yy, self._xx
        image = np.empty((h, w, 3), dtype=np.float32)
        label = np.full((h, w), BACKGROUND, dtype=np.uint8)

        # Background: a per-image tint, large soft blotches and finer mottling.
        tint = _BACKGROUND_RGB + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
        shade = 0.09 * _smooth_noise(rng, h, w, s / 4) + 0.04 * _smooth_noise(rng, h, w, s / 16)  # (H, W)
        background = tint + shade[..., None]  # (H, W, 3)
        image[:] = background

        # Sky: a top band with a wavy horizon and a vertical gradient.
        if rng.random() < 0.7:
            horizon = rng.uniform(0.12, 0.3) * h + 0.03 * h * np.sin(
                2 * np.pi * xx[0] / (w * rng.uniform(0.6, 1.5)) + rng.uniform(0, 2 * np.pi))  # (W,)
            rows = math.ceil(horizon.max())
            mask = yy[:rows] < horizon  # (rows, W)
            t = np.clip(yy[:rows] / horizon, 0, 1)[..., None]  # (rows, W, 1)
            sky = (1 - t) * _SKY_TOP_RGB + t * _SKY_BOTTOM_RGB + 0.03 * _smooth_noise(rng, rows, w, s / 6)[..., None]
            image[:rows][mask] = sky[mask]
            label[:rows][mask] = SKY

        # Grass: a bottom band of vertical streaks.
        if rng.random() < 0.7:
            edge = rng.uniform(0.75, 0.9) * h + 0.03 * h * np.sin(
                2 * np.pi * xx[0] / (w * rng.uniform(0.3, 0.8)) + rng.uniform(0, 2 * np.pi))  # (W,)
            top = int(edge.min())
            mask = yy[top:] > edge  # (H - top, W)
            streaks = 0.08 * rng.standard_normal(w, dtype=np.float32)  # (W,) one value per column
            grass = _GRASS_RGB + (streaks + 0.04 * _smooth_noise(rng, h - top, w, s / 8))[..., None]
            image[top:][mask] = grass[mask]
            label[top:][mask] = GRASS

        self._paint_building(rng, image, label, background, s)
        self._paint_discs(rng, image, label, s)

        image += (rng.random((h, w, 3), dtype=np.float32) - 0.5) * (self.noise * math.sqrt(12))  # std = noise
        np.clip(image, 0.0, 1.0, out=image)
        return image, label

    def _paint_building(self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
                        background: np.ndarray, s: float) -> None:
        """A brick rectangle with hollows that show ``background`` but are labelled building (§III-E)."""
        h, w = self.size
        bh = min(rng.uniform(*_BUILDING_SIDE) * s, h)
        bw = min(rng.uniform(*_BUILDING_SIDE) * s, w)
        top, left = rng.uniform(0, h - bh), rng.uniform(0, w - bw)
        y0, y1 = int(top), math.ceil(top + bh)
        x0, x1 = int(left), math.ceil(left + bw)
        yy, xx = self._yy[y0:y1, x0:x1], self._xx[y0:y1, x0:x1]  # (h', w') each

        brick_h, brick_w = _BRICK_HEIGHT * s, _BRICK_WIDTH * s
        row = np.floor((yy - top) / brick_h)
        offset = (row % 2) * brick_w / 2
        mortar = (((yy - top) % brick_h) < 0.18 * brick_h) | (((xx - left + offset) % brick_w) < 0.1 * brick_w)
        bricks = np.where(mortar[..., None], _MORTAR_RGB, _BRICK_RGB)  # (h', w', 3)
        bricks = bricks + 0.03 * rng.standard_normal(bricks.shape[:2], dtype=np.float32)[..., None]
        image[y0:y1, x0:x1] = bricks
        label[y0:y1, x0:x1] = BUILDING

        for _ in range(rng.integers(self.hollows[0], self.hollows[1] + 1)):
            ry, rx = rng.uniform(*_HOLLOW_RADIUS, size=2) * s
            margin = _HOLLOW_MARGIN * s
            if 2 * (ry + margin) > bh or 2 * (rx + margin) > bw:
                continue  # this building is too small for a hollow of that size
            cy = rng.uniform(top + ry + margin, top + bh - ry - margin)
            cx = rng.uniform(left + rx + margin, left + bw - rx - margin)
            hollow = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            image[y0:y1, x0:x1][hollow] = background[y0:y1, x0:x1][hollow]

    def _paint_discs(self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray, s: float) -> None:
        """Same-texture discs of one class, a beacon next to one of them, the rest far away (§III-D)."""
        h, w = self.size
        disc_class = DISC_A if rng.random() < 0.5 else DISC_B
        count = int(rng.integers(self.discs[0], self.discs[1] + 1))
        side = _BEACON_SIDE * s
        for _ in range(_LAYOUT_TRIES):  # redraw the cued disc until at least one disc fits far from its beacon
            radius = rng.uniform(*_DISC_RADIUS) * s
            cy, cx = rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)
            angle = rng.uniform(0, 2 * np.pi)
            reach = radius + rng.uniform(*_BEACON_GAP) * s + side / 2 * math.sqrt(2)
            by, bx = cy + reach * math.sin(angle), cx + reach * math.cos(angle)
            if not (side / 2 <= by <= h - side / 2 and side / 2 <= bx <= w - side / 2):
                continue
            discs = [(cy, cx, radius)]
            for _ in range(_PLACEMENT_TRIES):
                if len(discs) == count:
                    break
                r = rng.uniform(*_DISC_RADIUS) * s
                y, x = rng.uniform(r, h - r), rng.uniform(r, w - r)
                far = math.hypot(y - by, x - bx) >= self.cue_distance * max(h, w)
                apart = all(math.hypot(y - oy, x - ox) >= r + orr + _DISC_GAP * s for oy, ox, orr in discs)
                if far and apart:
                    discs.append((y, x, r))
            if len(discs) >= 2:
                break
        else:
            raise RuntimeError(f"{self.name}: no layout puts a disc {self.cue_distance} x {max(h, w)} pixels from "
                               f"the beacon in a {h}x{w} image; lower cue_distance")

        for y, x, r in discs:
            y0, y1 = max(int(y - r), 0), min(math.ceil(y + r), h)
            x0, x1 = max(int(x - r), 0), min(math.ceil(x + r), w)
            yy, xx = self._yy[y0:y1, x0:x1], self._xx[y0:y1, x0:x1]  # (h', w') each
            inside = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
            theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * math.cos(theta) + yy * math.sin(theta))
                                         / (_STRIPE_PERIOD * s) + phase)  # (h', w') in 0..1
            texture = stripes[..., None] * _DISC_LIGHT_RGB + (1 - stripes[..., None]) * _DISC_DARK_RGB
            image[y0:y1, x0:x1][inside] = texture[inside]
            label[y0:y1, x0:x1][inside] = disc_class

        half = side / 2
        y0, y1 = round(by - half), round(by + half)
        x0, x1 = round(bx - half), round(bx + half)
        image[y0:y1, x0:x1] = _BEACON_RGB[disc_class] + 0.04 * rng.standard_normal((y1 - y0, x1 - x0, 1),
                                                                                   dtype=np.float32)
        label[y0:y1, x0:x1] = BEACON_A if disc_class == DISC_A else BEACON_B
