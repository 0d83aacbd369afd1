"""Checkpoints: written atomically, loaded safely, checked against the model they are loaded into.

A checkpoint is a dict of tensors and plain Python values (so ``torch.load(weights_only=True)`` reads it).
Both files of a work dir carry what inference needs:

    model           the model's state dict
    model_name      registered name, e.g. "denoised_nl_r101"
    num_classes     int
    class_names     list[str]
    config          the resolved recipe (Config.to_dict())
    iteration       optimiser steps done
    best_miou       the best validation mIoU of the run so far (-inf before the first evaluation)
    best_iteration  the iteration it was reached at (0 before the first evaluation)

``best.pt`` adds ``metrics`` (its evaluation: mIoU, mAcc, aAcc, per-class scores); ``last.pt`` adds
the state that resumes the run exactly: ``optimizer``, ``scaler`` (fp16 loss scaling) and ``rng``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nlseg.engine.atomic import write_atomic
from nlseg.errors import CheckpointError
from nlseg.safeload import RefusedContent, load_weights_only

__all__ = ["CheckpointError", "check_compatible", "load_checkpoint", "model_record", "save_checkpoint"]


def model_record(
    weights: dict[str, torch.Tensor],
    cfg: Any,
    class_names: list[str],
    *,
    iteration: int = 0,
    best_miou: float = float("-inf"),
    best_iteration: int = 0,
) -> dict[str, Any]:
    """The layout every nlseg checkpoint shares (``best.pt``, the core of ``last.pt``, a converted file): what
    inference needs — the weights, the model's name, its classes and the recipe it was built from (``cfg``, a
    :class:`nlseg.config.Config`; its ``model.options`` rebuild the model) — and the run's best score so far.
    :func:`check_compatible` and ``build_model_from_checkpoint`` read it back."""
    return {
        "model": weights,
        "model_name": cfg.model.name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "config": cfg.to_dict(),
        "iteration": iteration,
        "best_miou": best_miou,
        "best_iteration": best_iteration,
    }


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A crash mid-write leaves the previous file at ``path`` intact. The file's mode honours the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(state, f))


_MAGIC = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x93NUMPY": "a NumPy array",
}
_HINT = "expected an nlseg checkpoint such as WORK_DIR/best.pt or WORK_DIR/last.pt"


def _not_torch(head: bytes) -> str | None:
    """What a file is when its first bytes show it is no ``torch.save`` file (zip, or a legacy pickle)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if not head:
        return "an empty file"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a PyTorch file"


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by nlseg (``weights_only=True``: no code is executed).

    Raises:
        CheckpointError: one line for anything that is not an nlseg checkpoint: a missing file, a folder,
            an image or text file, a truncated file, a plain state dict (with how to use one instead).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; {_HINT}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {_HINT}")
    with path.open("rb") as f:
        kind = _not_torch(f.read(8))
    if kind is not None:
        raise CheckpointError(f"checkpoint {path} is {kind}, not a PyTorch checkpoint; {_HINT}")
    try:
        state = load_weights_only(path, map_location=map_location)
    except RefusedContent as refused:
        raise CheckpointError(
            f"checkpoint {path} holds Python objects other than tensors and plain values{refused.named()}, which "
            f"nlseg refuses to load (no code is executed); {_HINT}"
        ) from None
    except Exception as err:  # torch raises several types for a truncated or damaged file
        first = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or damaged ({first}); {_HINT}") from None
    if isinstance(state, dict) and "model" in state:
        return state
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} is a plain state dict ({len(state)} tensors), not an nlseg checkpoint: ImageNet backbone "
            f"weights go in --set model.pretrained_backbone={path}; to start a run from a trained nlseg run, "
            "use --set model.init_from=WORK_DIR/last.pt"
        )
    what = f"a dict with keys {', '.join(map(str, list(state)[:6]))}" if isinstance(state, dict) else type(state).__name__
    raise CheckpointError(f"{path} is not an nlseg checkpoint (it holds {what}, no 'model' entry); {_HINT}")


def check_compatible(state: dict[str, Any], *, model_name: str, num_classes: int, path: str | os.PathLike) -> None:
    """Raise if a checkpoint was saved for another model or another number of classes, naming both."""
    saved_name, saved_classes = state.get("model_name"), state.get("num_classes")
    if saved_name is not None and saved_name != model_name:
        raise CheckpointError(
            f"checkpoint {path} holds a {saved_name!r} model, but the recipe builds {model_name!r}"
        )
    if saved_classes is not None and saved_classes != num_classes:
        raise CheckpointError(
            f"checkpoint {path} was trained for {saved_classes} classes, but the data set has {num_classes}"
        )
