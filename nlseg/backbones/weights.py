"""Backbone weights from a local file or a name: read a state dict, check it fits, load it all or nothing.

A name of the table in :mod:`nlseg.backbones.hub` (``nlseg list weights``) is fetched into PyTorch's cache
once and read from there; an existing local file is read as it is.

Formats: ``.pth`` / ``.pt`` (``torch.load`` with ``weights_only=True``) and ``.safetensors`` (needs
the optional ``safetensors`` package). Training checkpoints that wrap the weights in
``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped, and a ``module.`` prefix left by
``DataParallel`` / ``DistributedDataParallel`` is stripped.

Loading tolerates two differences on purpose: an ImageNet classifier in the file (``fc.*``, as in
torchvision's ResNet files) is ignored, and BatchNorm's ``num_batches_tracked`` counters may be
present or absent on either side. Anything else that does not fit is reported key by key.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from nlseg.safeload import RefusedContent, load_weights_only

__all__ = ["WeightsMismatchError", "load_backbone_weights", "read_state_dict"]

TORCH_SUFFIXES: tuple[str, ...] = (".pth", ".pt")
SAFETENSORS_SUFFIX = ".safetensors"
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model")
CLASSIFIER_PREFIX = "fc."
COUNTER_NAME = "num_batches_tracked"
LISTED_KEYS = 10
"""How many keys of each kind a mismatch report names before it only counts the rest."""


class WeightsMismatchError(ValueError):
    """A weights file whose tensors do not fit the model (missing, unexpected or mis-shaped keys)."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` mapping from a ``.pth``, ``.pt`` or ``.safetensors`` file.

    Args:
        path: the weights file.

    Returns:
        The tensors by name, unwrapped from ``state_dict`` / ``model`` containers, ``module.`` stripped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown suffix, unreadable file, or content that is not a mapping of tensors.
        ImportError: a ``.safetensors`` file without the ``safetensors`` package.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        content: Any = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        try:
            content = load_weights_only(path)
        except RefusedContent as refused:
            if not refused.found:  # bytes that are no pickle of tensors, or another pickle protocol
                raise ValueError(
                    f"{path}: cannot read as a PyTorch weights file ({refused.detail or 'not a torch.save file'}; "
                    "nlseg loads only tensors and plain values, no code is executed)"
                ) from None
            raise ValueError(
                f"weights file {path} holds Python objects other than tensors and plain values{refused.named()}, "
                "which nlseg refuses to load (no code is executed); save the state dict alone with "
                "torch.save(state_dict, FILE)"
            ) from None
        except Exception as error:  # torch.load fails in many ways on a bad file; name the file
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"{path}: cannot read as a PyTorch weights file ({type(error).__name__}: {first})"
            ) from None
    else:
        known = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)
        raise ValueError(f"{path}: unknown weights format {suffix!r}; expected one of {known}")

    while isinstance(content, Mapping):
        container = next((key for key in CONTAINER_KEYS if isinstance(content.get(key), Mapping)), None)
        if container is None:
            break
        content = content[container]
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors, found a {type(content).__name__}")
    for key, value in content.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ValueError(
                f"{path}: expected a mapping of parameter names to tensors, found entry {key!r} of type "
                f"{type(value).__name__} (top-level keys: {_listed(list(map(str, content)))})"
            )
    return {key.removeprefix("module."): value for key, value in content.items()}


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ImportError(
            f"reading {path} needs the 'safetensors' package: pip install safetensors (or nlseg[safetensors])"
        ) from error
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # SafetensorError and OSError variants; name the file
        raise ValueError(f"{path}: cannot read as a safetensors file ({type(error).__name__}: {error})") from error


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Copy every tensor of a weights file into ``model``, or nothing if the file does not fit.

    ``path`` is a local file or a weights name (:mod:`nlseg.backbones.hub`); a named file whose publisher
    uses other key names (mmcv's ``stem.*``) is renamed by the table's fixed prefix map before the check.

    ``fc.*`` keys the model lacks and ``num_batches_tracked`` on either side are ignored. With
    ``strict=True`` any missing key, unexpected key or shape mismatch raises; with ``strict=False``
    missing and unexpected keys are allowed (and named in a warning), shape mismatches still raise.

    Args:
        model: the module to fill; its parameters and buffers keep their dtype and device.
        path: the weights file (see :func:`read_state_dict`) or a weights name.
        strict: whether the file must cover the model exactly.

    Raises:
        WeightsMismatchError: the file does not fit; the message names the file and lists the keys.
        FileNotFoundError: neither a file nor a weights name. nlseg.errors.DownloadError: a name that
            cannot be fetched.
    """
    from nlseg.backbones.hub import resolve_weights

    path, renames = resolve_weights(path)
    state = _renamed(read_state_dict(path), renames)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(CLASSIFIER_PREFIX)}
    missing = [k for k in expected if k not in state and not k.endswith(COUNTER_NAME)]
    unexpected = [k for k in state if k not in expected and not k.endswith(COUNTER_NAME)]
    mismatched = [
        f"{k}: model {tuple(expected[k].shape)} vs file {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    fitting = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}

    if mismatched or (strict and (missing or unexpected)):
        raise WeightsMismatchError(_mismatch_report(path, model, expected, state, missing, unexpected, mismatched))
    if not fitting:
        raise WeightsMismatchError(f"{path}: no tensor in the file fits {type(model).__name__}")
    if missing or unexpected:
        report = _mismatch_report(path, model, expected, state, missing, unexpected, mismatched)
        warnings.warn(f"{report}\n  loaded the {len(fitting)} tensors that fit (strict=False)", stacklevel=2)
    model.load_state_dict(fitting, strict=False)


def _renamed(state: dict[str, Tensor], renames: tuple[tuple[str, str], ...]) -> dict[str, Tensor]:
    """``state`` with each key's first matching ``old`` prefix replaced by ``new``."""
    if not renames:
        return state
    out = {}
    for key, value in state.items():
        old, new = next(((o, n) for o, n in renames if key.startswith(o)), ("", ""))
        out[new + key.removeprefix(old)] = value
    return out


def _mismatch_report(
    path: str | os.PathLike[str],
    model: nn.Module,
    expected: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
) -> str:
    lines = [f"{path} does not fit {type(model).__name__}:"]
    for title, keys in (
        ("missing from the file", missing),
        ("unexpected in the file", unexpected),
        ("shape mismatches", mismatched),
    ):
        if keys:
            lines.append(f"  {title} ({len(keys)}): {_listed(keys)}")
    if "conv1.weight" in state and "conv1.0.weight" in expected:
        lines.append("  hint: the file has a classic 7x7 stem; build the backbone with stem='classic'")
    elif "conv1.0.weight" in state and "conv1.weight" in expected:
        lines.append("  hint: the file has a deep 3x3 stem; build the backbone with stem='deep'")
    return "\n".join(lines)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    return shown if len(keys) <= LISTED_KEYS else f"{shown}, ... and {len(keys) - LISTED_KEYS} more"
