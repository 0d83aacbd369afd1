"""Every file of a split read once before a run spends any work: a broken file is found at the start, not hours in.

:func:`check_files` reads each (image, label) pair with the data set's own reader (:meth:`SegmentationDataset.load`:
a full decode, so a truncated JPEG or PNG fails; image and label sizes compared; label values mapped through the
data set's table, so a value that is neither a class nor ignore is found). Pairs that passed are remembered in a
small JSON cache (by path, size and modification time of both files, and the data set's label table), so a rerun
reads only new or changed files. A generated data set (``synthetic``) has no files and is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tqdm import tqdm

from torch.utils.data import Dataset

from nlseg.config import Config
from nlseg.data.build import build_dataset
from nlseg.engine.atomic import write_atomic
from nlseg.errors import DatasetError

__all__ = ["CACHE_NAME", "check_files", "run_data"]

CACHE_NAME = ".data_check.json"
"""The cache's file name in a work dir."""

_VERSION = 1


def _stamp(path: Path | None) -> list[int]:
    if path is None:
        return []
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_cache(cache_path: Path | None) -> dict[str, list]:
    if cache_path is None:
        return {}
    try:
        data = json.loads(Path(cache_path).read_text())
    except (OSError, ValueError):
        return {}  # absent or unreadable: every file is checked again
    if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_cache(cache_path: Path, files: dict[str, list]) -> None:
    text = json.dumps({"version": _VERSION, "files": files}, separators=(",", ":")).encode()
    write_atomic(cache_path, lambda f: f.write(text), sync=False)


def check_files(dataset, cache_path: str | os.PathLike | None = None, *, progress: bool = True) -> int:
    """Read every (image, label) pair of ``dataset`` that the cache does not hold unchanged; return how many were read.

    Args:
        dataset: a :class:`~nlseg.data.base.SegmentationDataset` (anything without ``samples`` is skipped).
        cache_path: the JSON cache (``WORK_DIR/.data_check.json``), read and rewritten atomically; None: no cache.
        progress: show a progress bar (on a terminal; it is cleared when done, so a log keeps no bar).

    Raises:
        DatasetError: the first broken file, in one line naming it and what is wrong (the pairs checked before it
            are cached, so the rerun after fixing it reads only from there on).
    """
    samples = getattr(dataset, "samples", None)
    if not samples or not hasattr(dataset, "load"):
        return 0
    cache_path = None if cache_path is None else Path(cache_path)
    cached = _read_cache(cache_path)
    table = getattr(dataset, "label_map", None)
    table_id = hashlib.sha1(table.tobytes()).hexdigest()[:12] if table is not None else ""
    prefix = f"{type(dataset).__name__}:{table_id}"
    todo: list[tuple[int, str, list]] = []
    for index, (image, label) in enumerate(samples):
        key = f"{prefix}:{image}|{label}"
        try:
            stamp = _stamp(image) + _stamp(label)
        except FileNotFoundError as err:
            raise DatasetError(f"{err.filename} does not exist ({dataset.name} split {dataset.split!r})") from None
        if cached.get(key) != stamp:
            todo.append((index, key, stamp))
    if not todo:
        return 0
    try:
        for index, key, stamp in tqdm(todo, desc=f"checking {dataset.split} files", unit="file", leave=False,
                                      disable=None if progress else True):  # None: on a terminal only
            dataset.load(index)
            cached[key] = stamp
    finally:
        if cache_path is not None and cache_path.parent.is_dir():
            _write_cache(cache_path, cached)
    return len(todo)


def run_data(cfg: Config, work_dir: Path, *, check: bool) -> tuple[Dataset, Dataset | None]:
    """A training run's training set and validation set (None without ``train.evaluate``); with ``check`` (the main
    process), every file of both is read once now (:func:`check_files`, cached in ``work_dir``)."""
    train_set = build_dataset(cfg, cfg.data.train_split, train=True)
    val_set = build_dataset(cfg, cfg.data.val_split, train=False) if cfg.train.evaluate else None
    for dataset in (train_set, val_set) if check else ():
        if dataset is not None:
            check_files(dataset, Path(work_dir) / CACHE_NAME)
    return train_set, val_set
