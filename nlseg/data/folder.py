"""Your own data: images and index-label PNGs in two parallel folders, matched by file name.

Layout under ``root`` (one folder per split; the names are yours, ``train`` and ``val`` by default in
a recipe's ``data.train_split`` / ``data.val_split``)::

    root/images/train/NAME.jpg    any of .jpg .jpeg .png .bmp .tif .tiff .webp (any case)
    root/labels/train/NAME.png    single-channel PNG: value k = class k (0..K-1), ``ignore_index`` = unlabelled
    root/images/val/...
    root/labels/val/...

An image and its label have the same name without suffix; sub-folders are allowed when both trees
have them (``images/train/site1/a.jpg`` pairs with ``labels/train/site1/a.png``). Hidden files and
folders (``.DS_Store``, ``.ipynb_checkpoints``) and files of other types (``Thumbs.db``, ``notes.txt``)
are skipped. Pairing is checked when the data set is built, before any training: an image without a
label, a label without an image, two images (or labels) with the same name, or a label that is not a
PNG is a ``DatasetError`` naming the files. Label values are checked as every sample is read (as in
every nlseg data set): a value that is neither a class nor ``ignore_index`` is an error naming the
file, the values and the allowed ones.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

from nlseg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset, Transform, index_palette, label_table

__all__ = ["IMAGE_SUFFIXES", "LABEL_SUFFIX", "FolderDataset"]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIX = ".png"
SHOWN = 5
"""How many files an error message names before it only counts the rest."""


def _files_by_name(folder: Path, suffixes: Iterable[str]) -> dict[str, list[Path]]:
    """Files under ``folder`` with one of ``suffixes`` (any case), keyed by their path relative to
    ``folder`` without suffix; hidden files and folders are skipped."""
    wanted = set(suffixes)
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in wanted:
            continue
        if path.is_file():
            found.setdefault(relative.with_suffix("").as_posix(), []).append(path)
    return found


def _listed(paths: Sequence[Path], folder: Path) -> str:
    """``a.jpg, b.jpg`` (paths relative to ``folder``), the first ``SHOWN`` and a count of the rest."""
    shown = ", ".join(path.relative_to(folder).as_posix() for path in paths[:SHOWN])
    return shown if len(paths) <= SHOWN else f"{shown} and {len(paths) - SHOWN} more"


class FolderDataset(SegmentationDataset):
    """A segmentation data set of your own: ``images/SPLIT/*`` and ``labels/SPLIT/*.png`` under ``root``.

    See the module docstring for the layout rules. Raw label value ``k`` (0..K-1) is class ``classes[k]``;
    ``ignore_index`` marks unlabelled pixels and becomes 255 in the samples (the ``ignore_index`` of every
    nlseg data set). Any other value is an error.

    Args:
        root: folder holding ``images/`` and ``labels/``.
        split: a sub-folder of ``root/images`` (``train``, ``val``, ...).
        transform: callable applied to every sample dict.
        classes: the K class names, in label-value order (K <= 255).
        palette: K RGB colours (three ints 0..255 each) for pictures and colour predictions, or None for
            the PASCAL VOC index colours without black.
        ignore_index: the raw label value of unlabelled pixels, 0..255 and not a class value (0..K-1).
    """

    name: ClassVar[str] = "folder"

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        *,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.classes = _check_classes(classes)
        self.num_classes = len(self.classes)
        if palette is None:
            self.palette = index_palette(self.num_classes + 1)[1:]
        else:
            self.palette = _check_palette(palette, self.num_classes)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255:
            raise DatasetError(
                f"folder data set: ignore_index must be an integer label value 0..255, got {ignore_index!r}"
            )
        if ignore_index < self.num_classes:
            raise DatasetError(
                f"folder data set: ignore_index {ignore_index} is the label value of class "
                f"{self.classes[ignore_index]!r} (classes are 0..{self.num_classes - 1}); use a value of "
                f"{self.num_classes}..255 for unlabelled pixels"
            )
        self.unlabelled_value = ignore_index
        self.label_map = label_table({**{k: k for k in range(self.num_classes)}, ignore_index: IGNORE_INDEX})
        images = Path(root).expanduser() / "images"
        if not images.is_dir():
            raise DatasetError(
                f"folder data set: no folder {images}; expected images/SPLIT/ and labels/SPLIT/ under the root "
                f"{Path(root).expanduser()} (e.g. images/train/a.jpg with labels/train/a.png)"
            )
        self.splits = tuple(sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if split not in self.splits:
            raise DatasetError(
                f"folder data set: no folder {images / split} for split {split!r}; the split folders in {images}: "
                f"{', '.join(self.splits) or 'none'}"
            )
        super().__init__(root, split, transform)

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        image_dir = self.root / "images" / self.split
        label_dir = self.root / "labels" / self.split
        if not label_dir.is_dir():
            raise DatasetError(
                f"folder data set: no folder {label_dir}; the labels of {image_dir} go there as NAME.png"
            )
        images = _files_by_name(image_dir, IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"folder data set: no images ({' '.join(IMAGE_SUFFIXES)}) in {image_dir}")
        not_png = [p for paths in _files_by_name(label_dir, IMAGE_SUFFIXES).values() for p in paths
                   if p.suffix.lower() != LABEL_SUFFIX]
        if not_png:
            raise DatasetError(
                f"folder data set: label files must be PNG (JPEG compression would change label values); found "
                f"{len(not_png)} other image file(s) in {label_dir}: {_listed(not_png, label_dir)}"
            )
        labels = _files_by_name(label_dir, (LABEL_SUFFIX,))
        for kind, found, folder in (("images", images, image_dir), ("labels", labels, label_dir)):
            clashes = [paths for paths in found.values() if len(paths) > 1]
            if clashes:
                shown = "; ".join(
                    " and ".join(p.relative_to(folder).as_posix() for p in paths) for paths in clashes[:SHOWN]
                )
                more = f" and {len(clashes) - SHOWN} more" if len(clashes) > SHOWN else ""
                raise DatasetError(
                    f"folder data set: {kind} with the same name in {folder}: {shown}{more}; images and labels "
                    f"are matched by name without suffix, keep one file per name"
                )
        unlabelled = [paths[0] for name, paths in images.items() if name not in labels]
        orphans = [paths[0] for name, paths in labels.items() if name not in images]
        problems = []
        if unlabelled:
            problems.append(
                f"{len(unlabelled)} of {len(images)} images in {image_dir} have no label NAME.png in {label_dir}: "
                f"{_listed(unlabelled, image_dir)}"
            )
        if orphans:
            problems.append(
                f"{len(orphans)} label(s) in {label_dir} have no image in {image_dir}: {_listed(orphans, label_dir)}"
            )
        if problems:
            raise DatasetError("folder data set: " + "; ".join(problems))
        return [(paths[0], labels[name][0]) for name, paths in sorted(images.items())]

    def __repr__(self) -> str:
        return (f"FolderDataset(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={list(self.classes)})")


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The class names as a tuple; an error unless they are 1..255 distinct non-empty strings."""
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
        raise DatasetError(f"folder data set: classes must be a non-empty list of class names, got {classes!r}")
    bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if bad:
        raise DatasetError(
            f"folder data set: every class name must be a non-empty string, got {bad[0]!r} in {list(classes)}"
        )
    repeated = sorted({c for c in classes if list(classes).count(c) > 1})
    if repeated:
        raise DatasetError(f"folder data set: class name(s) {', '.join(map(repr, repeated))} given more than once")
    if len(classes) > 255:
        raise DatasetError(
            f"folder data set: at most 255 classes fit in a PNG label with an ignore value, got {len(classes)}"
        )
    return tuple(classes)


def _check_palette(palette: Sequence[Sequence[int]], num_classes: int) -> list[tuple[int, int, int]]:
    """The palette as RGB tuples; an error unless it gives ``num_classes`` triples of ints 0..255."""
    if isinstance(palette, str) or not isinstance(palette, Sequence):
        raise DatasetError(f"folder data set: palette must be a list of {num_classes} RGB colours, got {palette!r}")
    if len(palette) != num_classes:
        raise DatasetError(
            f"folder data set: palette must give one RGB colour per class: {num_classes} classes, "
            f"{len(palette)} colours"
        )
    colours = []
    for index, colour in enumerate(palette):
        valid = (isinstance(colour, Sequence) and not isinstance(colour, str) and len(colour) == 3
                 and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour))
        if not valid:
            raise DatasetError(
                f"folder data set: palette entry {index} must be three integers 0..255 (R, G, B), got {colour!r}"
            )
        colours.append((colour[0], colour[1], colour[2]))
    return colours
