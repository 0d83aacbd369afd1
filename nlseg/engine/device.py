"""The one device resolver: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` to a ``torch.device``, checked."""
from __future__ import annotations

import torch

from nlseg.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The device a command runs on.

    Args:
        name: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, or a ``torch.device``.
        local_rank: a ``torchrun`` process's local rank: ``cuda`` (and ``auto`` with CUDA) become
            ``cuda:<local_rank>``. None keeps ``cuda`` as the current CUDA device.

    Raises:
        ConfigError: a name torch does not know, or a CUDA device that is not there.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: no CUDA device is available here; use cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {device}: there are only {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device
