"""Segment image files into a folder (``nlseg predict``): never over an input, every input under its own
names, unreadable files reported and skipped, a warning with the expected memory before a huge image.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nlseg.data.base import image_size, read_image
from nlseg.engine.atomic import temp_name_pattern, write_atomic
from nlseg.engine.inference import IMAGE_SUFFIXES, InferenceModel, Segmenter
from nlseg.engine.inference.merge import input_shapes
from nlseg.errors import DatasetError, OutputError

__all__ = [
    "LARGE_IMAGE_PIXELS",
    "PredictSummary",
    "PredictionFiles",
    "collect_images",
    "estimate_peak_memory",
    "plan_outputs",
    "predict_paths",
]

LARGE_IMAGE_PIXELS = 4_000_000
"""An image above this many pixels, predicted without ``max_size``, gets a warning with its expected memory."""

PROBE_LONG_SIDE = 128
"""Long side of the smaller of the two images :func:`estimate_peak_memory` measures (the other: twice it)."""


@torch.no_grad()
def estimate_peak_memory(segmenter: Segmenter, height: int, width: int) -> int:
    """Bytes of tensor memory that predicting one ``height`` x ``width`` image is expected to need at its peak.

    Measured, then extrapolated: :class:`~nlseg.engine.memory.PeakMemory` records the peak of two
    predictions of random images with the same aspect ratio, one with a long side of
    :data:`PROBE_LONG_SIDE` and one twice as large (with sliding windows, both at least a window in
    each direction), and the peak is extended linearly in the number of pixels. Convolutions, sliding
    windows and the probability maps grow linearly; attention over all pixels of a whole image grows
    faster, so for such models the estimate is a lower bound.

    Args:
        segmenter: the model and inference settings that will predict the image.
        height, width: the image's size.

    Returns:
        the expected peak in bytes (tensors only, the model's weights excluded).
    """
    from nlseg.engine.memory import PeakMemory

    cfg = segmenter.eval_cfg
    long_side = max(height, width)
    factor = PROBE_LONG_SIDE / long_side
    if cfg.mode == "slide" and cfg.crop_size is not None:
        crop_h, crop_w = cfg.crop_size  # (H, W): a recipe's square side is a pair once loaded
        factor = max(factor, crop_h / height, crop_w / width)
    probes = []
    for f in (factor, 2 * factor):
        size = (max(1, round(height * min(f, 1.0))), max(1, round(width * min(f, 1.0))))
        image = torch.rand(3, *size, device=segmenter.device)  # (3, h, w)
        with PeakMemory(segmenter.device) as memory, _eager(segmenter):
            segmenter.predict(image)
        probes.append((size[0] * size[1], memory.peak_bytes))
        if f >= 1.0:
            return memory.peak_bytes  # the image itself is no larger than the probe
    (p1, m1), (p2, m2) = probes
    per_pixel = max(m2 - m1, 0) / (p2 - p1)
    return int(m2 + per_pixel * (height * width - p2))


@dataclass(frozen=True)
class PredictionFiles:
    """The three files :func:`predict_paths` writes for one input image."""

    input: Path
    index: Path
    """Palette PNG whose pixel values are the train ids."""
    color: Path
    """RGB PNG of the class colours."""
    overlay: Path
    """RGB PNG: the photo and the colours averaged."""

    @property
    def outputs(self) -> tuple[Path, Path, Path]:
        return self.index, self.color, self.overlay


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did."""

    output_dir: Path
    predicted: list[Path] = field(default_factory=list)
    """Inputs segmented."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """Inputs skipped, each with the reason."""
    written: list[Path] = field(default_factory=list)
    """Output files that this run wrote."""
    skipped: list[Path] = field(default_factory=list)
    """Inputs passed over because their outputs existed (``skip_existing``)."""

    def describe(self) -> str:
        """One line: images predicted, skipped and failed, files written."""
        total = len(self.predicted) + len(self.failed) + len(self.skipped)
        done = f", skipped {len(self.skipped)} whose outputs exist" if self.skipped else ""
        line = (f"predicted {len(self.predicted)} of {total} image(s){done}: {len(self.written)} files in "
                f"{self.output_dir}")
        if self.failed:
            line += f"; {len(self.failed)} failed: {', '.join(str(path) for path, _ in self.failed)}"
        return line


def _hidden(path: Path) -> bool:
    """A dotfile: one leading dot (``.DS_Store``, ``._a.jpg``, ``.a.png``). ``...png`` is a PNG like any other."""
    return path.name.startswith(".") and not path.name.startswith("..")


def collect_images(sources: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """The image files named by ``sources``: files as given, folders by the images directly inside them.

    In a folder, the files with an image extension (:data:`IMAGE_SUFFIXES`, any case) that are not
    dotfiles are images, in sorted order; the other files (``notes.txt``, ``.DS_Store``, ``._a.jpg``) are
    not. A file named directly is always an input. A file named twice is taken once.

    Returns:
        the input images, and the files of the folders that were passed over.

    Raises:
        DatasetError: a source does not exist, or a folder holds no image.
    """
    images: list[Path] = []
    ignored: list[Path] = []
    for source in map(Path, sources):
        if source.is_file():
            images.append(source)
        elif source.is_dir():
            files = sorted(p for p in source.iterdir() if p.is_file())
            found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p)]
            if not found:
                raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
            images += found
            ignored += [p for p in files if p not in found]
        else:
            raise DatasetError(f"input {source} does not exist")
    unique: dict[Path, Path] = {}  # resolved path -> the path as given, first time seen
    for path in images:
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), ignored


_KINDS = ("", "_color", "_overlay")  # the three outputs of an input: <name><kind>.png


def _output_names(inputs: Sequence[Path]) -> list[str]:
    """One base name per input, distinct ignoring case, so no output overwrites another (see :func:`plan_outputs`)."""
    shared = Counter(p.stem.casefold() for p in inputs)
    taken: set[str] = set()
    names = []
    for path in inputs:
        base = path.stem if shared[path.stem.casefold()] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
        name, n = base, 2
        while any(f"{name}{kind}.png".casefold() in taken for kind in _KINDS):
            name, n = f"{base}_{n}", n + 1
        taken.update(f"{name}{kind}.png".casefold() for kind in _KINDS)
        names.append(name)
    return names


def plan_outputs(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike) -> list[PredictionFiles]:
    """The files :func:`predict_paths` will write, checked against the inputs before anything is predicted.

    Naming: ``<name>.png`` (index), ``<name>_color.png``, ``<name>_overlay.png``, where ``<name>`` is
    the input's stem (``street.jpg`` -> ``street``); when several inputs share a stem (ignoring case),
    each gets its extension appended (``a.jpg`` -> ``a_jpg``, ``a.png`` -> ``a_png``); if a name is still
    taken by an earlier input's outputs, ``_2``, ``_3``, ... is added (inputs in the order given).

    Raises:
        OutputError: a planned output is one of the input files (the same file, also through a link or a
            case-insensitive file system), or a symbolic link (never written through).
    """
    inputs = [Path(p) for p in inputs]
    output_dir = Path(output_dir)
    identities: dict[tuple[int, int], Path] = {}
    for path in inputs:
        try:
            stat = path.stat()
        except OSError:
            continue  # reported when it is read
        identities[(stat.st_dev, stat.st_ino)] = path
    plan = []
    for path, name in zip(inputs, _output_names(inputs)):
        files = PredictionFiles(path, *(output_dir / f"{name}{kind}.png" for kind in _KINDS))
        for out in files.outputs:
            if out.is_symlink():
                raise OutputError(
                    f"output {out} is a symbolic link (to {os.readlink(out)}); nlseg never writes through a link: "
                    "remove it or choose another --output"
                )
            try:
                stat = out.stat()
            except OSError:
                continue  # not there yet: nothing to overwrite
            victim = identities.get((stat.st_dev, stat.st_ino))
            if victim is not None:
                raise OutputError(
                    f"output {out} would write over the input image {victim}; choose an output folder "
                    "that is not the input folder"
                )
        plan.append(files)
    return plan


def _stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def predict_paths(
    segmenter: Segmenter,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    max_size: int | None = None,
    strict: bool = False,
    skip_existing: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Segment image files into ``output_dir``: an index, a colour and an overlay PNG per input.

    Every output name is planned and checked first (:func:`plan_outputs`): nothing is predicted when an
    output would replace an input. An input that cannot be read is reported (one line) and skipped,
    and the others are still predicted; with ``strict`` the first such file stops the run. The first
    image above :data:`LARGE_IMAGE_PIXELS` without ``max_size`` gets one warning line with its expected
    peak memory (:func:`estimate_peak_memory`).

    Each output is written whole or not at all (a temporary file renamed into place), so an interrupted
    job leaves no half-written PNG, and ``skip_existing`` resumes it: an input whose three outputs all
    exist is passed over (the progress bar counts it). Temporary files of a killed job are removed first.

    Args:
        segmenter: model, class colours and inference settings.
        inputs: image files (see :func:`collect_images` for folders).
        output_dir: created when missing.
        max_size: predict images whose long side is longer at this long side (see :meth:`Segmenter.predict`).
        strict: raise at the first input that cannot be read instead of skipping it.
        skip_existing: pass over the inputs whose three outputs exist (resume an interrupted job).
        progress: show a progress bar.
        log: receives the report lines (renamed outputs, skipped inputs, the memory warning); None: stderr.

    Returns:
        the inputs predicted and failed and the files written.

    Raises:
        OutputError: an output would replace an input, or a file cannot be written.
        DatasetError: with ``strict``, the first input that cannot be read.
    """
    say = log or _stderr
    plan = plan_outputs(inputs, output_dir)
    output_dir = Path(output_dir)
    renamed = [f"{files.input.name} -> {files.index.name}" for files in plan if files.index.stem != files.input.stem]
    if renamed:
        say(f"inputs sharing a name are written as: {', '.join(renamed)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    for files in plan:  # what a job killed while writing left
        for out in files.outputs:
            for orphan in output_dir.glob(temp_name_pattern(out.name)):
                orphan.unlink(missing_ok=True)
    summary = PredictSummary(output_dir)
    warned = False
    if isinstance(segmenter.model, InferenceModel) and segmenter.model.options.compile == "auto":  # for auto to weigh
        todo = [f.input for f in plan if not (skip_existing and all(out.is_file() for out in f.outputs))]
        sizes = (_predicted_size(image_size(path) or (0, 0), max_size) for path in todo)
        segmenter.model.plan(len(todo), input_shapes(segmenter.eval_cfg, sizes))
    bar = tqdm(plan, desc="predict", unit="img", disable=not progress)
    for files in bar:
        if skip_existing and all(out.is_file() for out in files.outputs):
            summary.skipped.append(files.input)
            bar.set_postfix(skipped=len(summary.skipped), refresh=False)
            continue
        try:
            rgb = read_image(files.input)  # (3, H, W)
        except DatasetError as err:
            if strict:
                raise
            summary.failed.append((files.input, str(err)))
            say(f"skipped {files.input}: {err}")
            continue
        h, w = rgb.shape[-2:]
        if max_size is None and h * w > LARGE_IMAGE_PIXELS and not warned:
            warned = True
            peak = estimate_peak_memory(segmenter, h, w)
            say(
                f"warning: {files.input} is {w}x{h} ({h * w / 1e6:.1f} megapixels); predicting it at full size "
                f"needs about {peak / 2**30:.1f} GiB on {segmenter.device}; --max-size N (e.g. 2048) predicts "
                "images at a long side of at most N pixels"
            )
        try:
            pred = segmenter.predict(rgb, max_size=max_size)  # (H, W)
        except torch.OutOfMemoryError:
            if strict:
                raise
            summary.failed.append((files.input, f"out of memory at {w}x{h}"))
            say(f"skipped {files.input}: out of memory at {w}x{h} on {segmenter.device}; try --max-size")
            continue
        color = segmenter.colorize(pred)  # (H, W, 3)
        photo = (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        overlay = ((photo.astype(np.uint16) + color) // 2).astype(np.uint8)
        for image, path in zip((segmenter.index_image(pred), Image.fromarray(color), Image.fromarray(overlay)),
                               files.outputs):
            # the format not from the name (PIL finds no extension in "...png"); no fsync per file: whole after a
            # kill, which is what --skip-existing resumes from
            try:
                write_atomic(path, lambda f, image=image: image.save(f, format="PNG"), sync=False)
            except OutputError:
                raise
            except OSError as err:
                raise OutputError(f"cannot write {path} ({err.strerror or err})") from None
        summary.predicted.append(files.input)
        summary.written += list(files.outputs)
    return summary


def _eager(segmenter: Segmenter) -> AbstractContextManager[None]:
    """The segmenter's model run eagerly, deciding nothing about compiling (a memory probe)."""
    return segmenter.model.eager() if isinstance(segmenter.model, InferenceModel) else nullcontext()


def _predicted_size(size: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """The (H, W) at which :meth:`Segmenter.predict` runs the model on an image of ``size``."""
    h, w = size
    if max_size is None or max(h, w) <= max_size:
        return h, w
    scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))
