"""Shared base of the on-disk data sets: image and label reading, label tables, clear errors.

Every data set yields samples as a dict:

- ``image``: (3, H, W) float32 tensor with values in 0..1 (before any normalisation),
- ``label``: (H, W) int64 tensor of train ids, ``ignore_index`` (255) where unlabelled;
  absent for unlabelled splits,
- ``image_path`` (str), ``label_path`` (str or None), ``name``: the image file's stem, used to
  name exported predictions.

Raw label values are mapped to train ids through a lookup table; a raw value the table does not
allow raises ``DatasetError`` naming the file, the bad values and the allowed ones, so a label
file of the wrong convention is caught instead of trained on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from nlseg.errors import DatasetError

__all__ = [
    "IGNORE_INDEX",
    "DatasetError",
    "Sample",
    "SegmentationDataset",
    "Transform",
    "image_size",
    "index_palette",
    "label_table",
    "map_labels",
    "read_image",
    "read_label",
]

IGNORE_INDEX = 255

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

# PIL modes that hold one index per pixel; "P" is read as its raw indices, never its palette colours.
_LABEL_MODES = ("L", "P", "I", "I;16")




# PIL modes of integer grey values wider than 8 bits, read without PIL's clipping at 255.
_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(img: Image.Image) -> Tensor:
    """(3, H, W) float32 in 0..1 of a decoded image of any mode.

    - 16-bit grey (``I;16``, ``I;16B``, ...) is divided by 65535; a 32-bit ``I`` image by 65535 when it
      holds a value above 255 (a 16-bit picture), else by 255. Values are clipped to 0..1.
    - Palette (``P``) images give their palette colours; grey (``L``, ``1``) is repeated on R, G and B;
      ``CMYK`` and ``YCbCr`` are converted by PIL (an Adobe JPEG's inverted CMYK is undone on load).
    - Alpha (``RGBA``, ``LA``, ``PA``) is dropped: the colours are kept as stored, not composited on a
      background the model never saw.
    """
    if img.mode in _WIDE_GREY_MODES:
        grey = torch.from_numpy(np.array(img, dtype=np.float32))  # (H, W)
        sixteen_bit = img.mode.startswith("I;16") or float(grey.max()) > 255
        peak = 65535.0 if sixteen_bit else 255.0
        return grey.div_(peak).clamp_(0.0, 1.0).expand(3, *grey.shape).clone()  # (3, H, W)
    rgb = np.array(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(H, W) of an image file as :func:`read_image` returns it (EXIF rotation applied), from its header only;
    None when it cannot be read (reported when it is read)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            rotated = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # the orientations that swap the sides
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (w, h) if rotated else (h, w)


def read_image(path: str | Path) -> Tensor:
    """Read an image file as RGB in 0..1, upright.

    The EXIF orientation tag is applied (a phone photo stored sideways is returned as it is shown).
    16-bit images are scaled by 65535, not clipped at 255; palette, grey, alpha and CMYK images are
    converted as :func:`_to_rgb` describes.

    Args:
        path: image file (any format PIL reads).

    Returns:
        (3, H, W) float32 tensor with values in 0..1.

    Raises:
        DatasetError: the file is missing, corrupt, not an image, or too large for PIL's safety limit.
    """
    from PIL import ImageOps

    try:
        with Image.open(path) as img:
            return _to_rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise DatasetError(f"image file {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: the file is corrupt or not an image ({err})") from err


def read_label(path: str | Path) -> np.ndarray:
    """Read a label image as its raw per-pixel indices.

    Args:
        path: single-channel image (PIL mode L, P, I or I;16). A palette ("P") image gives its
            indices, not its colours; an RGB image is refused.

    Returns:
        (H, W) int64 array of raw values.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _LABEL_MODES:
                raise DatasetError(
                    f"label image {path} has mode {img.mode!r}; expected a single-channel index image "
                    f"(mode {', '.join(_LABEL_MODES)}), not colours"
                )
            raw = np.array(img)  # (H, W)
    except FileNotFoundError:
        raise DatasetError(f"label file {path} does not exist") from None
    except (OSError, SyntaxError) as err:
        raise DatasetError(f"cannot read label image {path}: the file is corrupt or not an image ({err})") from err
    return raw.astype(np.int64)


def label_table(mapping: Mapping[int, int]) -> np.ndarray:
    """Lookup table raw value -> train id for the raw values 0..255; -1 marks a value not allowed.

    Args:
        mapping: allowed raw values and their train ids (0..K-1 or ``IGNORE_INDEX``).

    Returns:
        (256,) int64 array.
    """
    table = np.full(256, -1, dtype=np.int64)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table


def _ranges(values: Iterable[int]) -> str:
    """Compact text for a set of integers: ``0-33, 255``."""
    runs: list[list[int]] = []
    for v in sorted(set(values)):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def map_labels(raw: np.ndarray, table: np.ndarray, path: str | Path) -> np.ndarray:
    """Map raw label values to train ids through ``table``; raise on a value the table does not allow.

    Args:
        raw: (H, W) int64 raw values as read from ``path``.
        table: lookup table from ``label_table``.
        path: the file ``raw`` came from, named in the error.

    Returns:
        (H, W) int64 train ids.
    """
    in_range = (raw >= 0) & (raw < len(table))
    mapped = np.where(in_range, table[np.clip(raw, 0, len(table) - 1)], -1)
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise DatasetError(
            f"label file {path} contains value(s) {shown} that this data set does not define; "
            f"allowed values: {_ranges(np.flatnonzero(table >= 0).tolist())}"
        )
    return mapped


def index_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours, the PASCAL VOC index colour map (bits of the index spread over R, G, B).

    Args:
        n: number of colours; colour 0 is black.

    Returns:
        list of ``n`` RGB tuples.
    """
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        colours.append((r, g, b))
    return colours


class SegmentationDataset(Dataset):
    """Base of the on-disk data sets: pairs of (image, label) files found at construction.

    A subclass sets ``classes``, ``palette``, ``num_classes``, ``splits`` and ``label_map`` (a
    ``label_table``), and implements ``_find_samples``. Its options are explicit keyword parameters of
    its ``__init__`` (no ``**kwargs``), so a recipe's ``data.options`` can be checked against them.

    Args:
        root: data set root folder.
        split: one of ``splits``.
        transform: callable applied to every sample dict (see ``nlseg.data.transforms``).
    """

    name: ClassVar[str] = ""
    classes: tuple[str, ...] = ()
    palette: list[tuple[int, int, int]] = []
    num_classes: int = 0
    ignore_index: ClassVar[int] = IGNORE_INDEX
    splits: ClassVar[tuple[str, ...]] = ()
    requires_root: ClassVar[bool] = True
    """The data set is read from files under ``root`` (False for a generated one, built without a root)."""
    label_map: np.ndarray

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None) -> None:
        if split not in self.splits:
            raise DatasetError(f"{self.name}: unknown split {split!r}; expected one of {', '.join(self.splits)}")
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self.samples: list[tuple[Path, Path | None]] = self._find_samples()

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        """List the (image file, label file or None) pairs of ``self.split``, in a fixed order."""
        raise NotImplementedError

    def _label_table(self, label_path: Path) -> np.ndarray:
        """The lookup table for one label file (Cityscapes has two kinds of label files)."""
        return self.label_map

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def load(self, index: int) -> Sample:
        """Sample ``index`` as read and checked from its files (fully decoded, labels mapped), before the transform."""
        image_path, label_path = self.samples[index]
        image = read_image(image_path)  # (3, H, W)
        sample: Sample = {
            "image": image,
            "image_path": str(image_path),
            "label_path": None if label_path is None else str(label_path),
            "name": image_path.stem,
        }
        if label_path is not None:
            raw = read_label(label_path)  # (H, W)
            if raw.shape != tuple(image.shape[1:]):
                raise DatasetError(
                    f"label file {label_path} is {raw.shape[1]}x{raw.shape[0]} pixels but its image "
                    f"{image_path} is {image.shape[2]}x{image.shape[1]}"
                )
            sample["label"] = torch.from_numpy(map_labels(raw, self._label_table(label_path), label_path))
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)})"

    # Helpers for subclasses -------------------------------------------------------------------

    def _require_dir(self, folder: Path, pattern: str) -> Path:
        if not folder.is_dir():
            raise DatasetError(
                f"{self.name}: folder {folder} not found; expected files matching {pattern!r} in it "
                f"(root {self.root})"
            )
        return folder

    def _glob(self, folder: Path, pattern: str) -> list[Path]:
        """Files under ``folder`` matching ``pattern``, sorted; an error if there are none."""
        files = sorted(self._require_dir(folder, pattern).glob(pattern))
        if not files:
            raise DatasetError(f"{self.name}: no files matching {pattern!r} in folder {folder} (split {self.split!r})")
        return files

    def _read_list(self, list_file: Path) -> list[str]:
        """Non-empty lines of a split list file."""
        if not list_file.is_file():
            raise DatasetError(f"{self.name}: split list {list_file} not found (root {self.root})")
        names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{self.name}: split list {list_file} is empty")
        return names

    def _pair(self, image: Path, label: Path | None, context: str) -> tuple[Path, Path | None]:
        """Check that both files of one sample exist; ``context`` says where they were expected from."""
        for path in (image, label):
            if path is not None and not path.is_file():
                raise DatasetError(f"{self.name}: {path} not found ({context})")
        return image, label
