"""``torch.load`` that runs no code and speaks for itself: the one place nlseg reads a PyTorch file.

``torch.load(weights_only=True)`` refuses a file that holds Python objects other than tensors and plain
values, with a message that advises loading it again with ``weights_only=False`` "if you trust the source" —
advice that executes whatever the file holds. nlseg never gives it: every load path (checkpoints, backbone
weights, the released files ``nlseg convert`` reads) turns the refusal into its own line, and PyTorch's
warnings about the file's pickle protocol are not shown either.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["RefusedContent", "load_weights_only"]


class RefusedContent(Exception):
    """Safe loading refused the file: it holds Python objects other than tensors and plain values, or pickle
    instructions that are not theirs (another pickle protocol, or bytes that are no pickle at all).

    Attributes:
        found: the first refused object's name as the file spells it (``pathlib.PosixPath``), or "".
        detail: what the unpickler stopped at, in its words without its advice (``Unsupported operand 149``).
    """

    def __init__(self, found: str, detail: str) -> None:
        super().__init__(detail)
        self.found, self.detail = found, detail

    def named(self) -> str:
        """`` (pathlib.PosixPath)`` when the refused object is known, else "", for a message."""
        return f" ({self.found})" if self.found else ""


def load_weights_only(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", allowed: Sequence[Any] = ()
) -> Any:
    """``torch.load(path, weights_only=True)``, with ``allowed`` added to the safe globals, quietly.

    Raises:
        RefusedContent: the file holds objects other than tensors, plain values and ``allowed``; no code ran.
        Exception: as ``torch.load`` raises it for a damaged or foreign file.
    """
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        detail = re.search(r"WeightsUnpickler error:\s*([^\n.]+)", text)
        raise RefusedContent(found.group(1) if found else "", detail.group(1).strip() if detail else "") from None
