"""Pyramid sampling of anchor points (ANN §3.2, Eq. 8 and 12; Fig. 4).

``P(t)`` pools ``t`` adaptively to n x n for each n in ``sizes``, flattens each grid row-major and
concatenates them in the given order: S = Σ n² anchors (110 for the default (1, 3, 6, 8)). Bin
``i`` of ``n`` along an axis of length L covers [floor(i·L/n), ceil((i+1)·L/n)), the bin edges of
``adaptive_avg_pool2d``; bins may overlap when L is not a multiple of n.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["POOL_MODES", "pyramid_sample", "pyramid_sample_reference"]

POOL_MODES = ("avg", "max")


def _check(x: Tensor, sizes: Sequence[int], mode: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pyramid pooling mode {mode!r}; expected one of {POOL_MODES}")
    if len(sizes) == 0 or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"sizes must be a non-empty sequence of positive ints, got {tuple(sizes)}")


def pyramid_sample(x: Tensor, sizes: Sequence[int] = (1, 3, 6, 8), mode: str = "avg") -> Tensor:
    """Pool ``x`` to every n x n grid in ``sizes`` and concatenate the flattened grids (ANN Eq. 8).

    Args:
        x: feature map (B, C, H, W).
        sizes: output grid side n of each pyramid level, in concatenation order.
        mode: "avg" (released ANN model) or "max" (ANN Fig. 4, Table 7).

    Returns:
        (B, C, S) anchors, S = Σ n².
    """
    _check(x, sizes, mode)
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    return torch.cat([pool(x, n).flatten(2) for n in sizes], dim=2)  # (B, C, S)


def _bin(index: int, bins: int, length: int) -> slice:
    """Index range [floor(i·L/n), ceil((i+1)·L/n)) of bin ``index`` of ``bins`` along an axis of ``length``."""
    return slice(index * length // bins, -(-(index + 1) * length // bins))


def pyramid_sample_reference(x: Tensor, sizes: Sequence[int] = (1, 3, 6, 8), mode: str = "avg") -> Tensor:
    """Plain path of :func:`pyramid_sample`: every bin reduced over its index range, one at a time."""
    _check(x, sizes, mode)
    height, width = x.shape[-2:]
    anchors = []
    for n in sizes:
        for i in range(n):
            for j in range(n):
                region = x[:, :, _bin(i, n, height), _bin(j, n, width)].flatten(2)  # (B, C, bin area)
                anchors.append(region.mean(-1) if mode == "avg" else region.amax(-1))
    return torch.stack(anchors, dim=2)  # (B, C, S)
