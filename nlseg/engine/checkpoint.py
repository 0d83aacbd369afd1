"""Checkpoints: written atomically, loaded safely, checked against the model they are loaded into.

A checkpoint is a dict of tensors and plain Python values (so ``torch.load(weights_only=True)`` reads it):

    model          the model's state dict
    model_name     registered name, e.g. "denoised_nl_r101"
    num_classes    int
    class_names    list[str]
    config         the resolved recipe (Config.to_dict())
    iteration      optimiser steps done
    optimizer, scheduler, rng, best_miou   training state (absent from exported weights)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nlseg.errors import CheckpointError

__all__ = ["CheckpointError", "check_compatible", "load_checkpoint", "save_checkpoint"]




def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A crash mid-write leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by nlseg (``weights_only=True``: no code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an nlseg checkpoint (no 'model' entry)")
    return state


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
