"""Converters from official annotation formats to the label PNGs the data sets read.

- COCO-Stuff-10K: ``annotations/*.mat`` (key ``S``, official ids 0..182) -> ``annotations/*.png``
  with the 171 train ids and 255 for unlabeled. Reading .mat files needs scipy (``pip install scipy``).

NYUD-V2 has no converter here; ``nlseg.data.nyudv2`` says what to provide.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nlseg.data.base import DatasetError, map_labels
from nlseg.data.coco_stuff import COCOSTUFF_UNUSED_IDS, COCOStuff10K

__all__ = ["cocostuff_ids_to_train_ids", "convert_cocostuff10k"]


def cocostuff_ids_to_train_ids(ids: np.ndarray, source: str | Path = "<array>") -> np.ndarray:
    """Map official COCO-Stuff ids to the 171 contiguous train ids.

    0 (unlabeled) -> 255; the 80 annotated thing ids (1..90 minus 11 unused) -> 0..79 and the stuff
    ids 92..182 -> 80..170, both in id order. An unused thing id raises: it means the file follows
    another convention (v1.0 of COCO-Stuff-10K numbered 1 = unlabeled, 2..81 things, 82..172 stuff).

    Args:
        ids: integer array of official ids.
        source: file the ids came from, named in errors.

    Returns:
        uint8 array of train ids, same shape.
    """
    try:
        return map_labels(np.asarray(ids, dtype=np.int64), COCOStuff10K.id_to_train_id, source).astype(np.uint8)
    except DatasetError as err:
        raise DatasetError(
            f"{err}. COCO-Stuff-10K v1.1 ids are 0 (unlabeled), 1..182 without the unused thing ids "
            f"{', '.join(map(str, COCOSTUFF_UNUSED_IDS))}; v1.0 files must be upgraded first"
        ) from None


def convert_cocostuff10k(root: str | Path, *, overwrite: bool = False) -> int:
    """Write ``annotations/{name}.png`` (train ids) next to every official ``annotations/{name}.mat``.

    Args:
        root: COCO-Stuff-10K folder holding ``annotations/``.
        overwrite: rewrite PNGs that already exist.

    Returns:
        number of PNG files written.
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(
            "convert_cocostuff10k reads the official .mat labels with scipy, which is not installed: "
            "pip install scipy"
        ) from None
    folder = Path(root).expanduser() / "annotations"
    mats = sorted(folder.glob("*.mat"))
    if not mats:
        raise DatasetError(f"COCO-Stuff-10K: no files matching '*.mat' in folder {folder}")
    written = 0
    for mat in mats:
        png = mat.with_suffix(".png")
        if png.exists() and not overwrite:
            continue
        try:
            ids = loadmat(mat)["S"]  # (H, W)
        except (OSError, ValueError, KeyError) as err:
            raise DatasetError(f"cannot read the label map 'S' from {mat}: {err!r}") from err
        Image.fromarray(cocostuff_ids_to_train_ids(ids, mat), mode="L").save(png)
        written += 1
    return written
