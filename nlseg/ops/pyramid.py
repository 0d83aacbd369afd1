"""Pyramid sampling of anchor points (ANN §3.2, Eq. 8 and 12; Fig. 4).

``P(t)`` pools ``t`` adaptively to n x n for each n in ``sizes``, flattens each grid row-major and
concatenates them in the given order: S = Σ n² anchors (110 for the default (1, 3, 6, 8)). Bin
``i`` of ``n`` along an axis of length L covers [floor(i·L/n), ceil((i+1)·L/n)), the bin edges of
``adaptive_avg_pool2d``; bins may overlap when L is not a multiple of n.

While ``torch.export`` or the ONNX exporter traces (:func:`nlseg.ops.local.exporting`), average pooling is
:func:`adaptive_avg_pool` in its matrix form, whose bins follow the traced map's size (ONNX has no adaptive
pooling: ``F.adaptive_avg_pool2d`` would be written with the example's bins as constants), and max pooling
takes the reference path's one slice per bin (a graph for the example's size only).

Random sampling (ANN Table 7, "random" and "pyramid random"): level n draws n² positions of the whole map with
replacement (``numpy.random.choice(H·W, n²)``'s default, as the paper's note on Table 7 names it; its released code
has no random sampling), uniformly and independently, one draw per call shared by the batch and the channels. The
positions come from the ``generator`` passed in (the global generator when None), level by level in ``sizes`` order,
so two calls with equally seeded generators pick the same anchors. Sample key and value in one call (concatenated
along channels) so that they share their anchors.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nlseg.ops.local import exporting

__all__ = ["POOL_MODES", "adaptive_avg_pool", "pyramid_sample", "pyramid_sample_reference", "random_anchor_positions"]

POOL_MODES = ("avg", "max", "random")
"""Pyramid sampling methods: adaptive average or max pooling per bin (ANN Fig. 4), or random positions (Table 7)."""


def _check(x: Tensor, sizes: Sequence[int], mode: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pyramid pooling mode {mode!r}; expected one of {POOL_MODES}")
    if len(sizes) == 0 or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"sizes must be a non-empty sequence of positive ints, got {tuple(sizes)}")


def _averaging_matrix(length: int, bins: int, like: Tensor) -> Tensor:
    """(bins, length) matrix whose row i averages bin i: ``[s_i <= l < e_i] / (e_i - s_i)``.

    ``length`` may be a symbolic size (torch.export): the edges are tensor ops on it, not Python constants.
    """
    i = torch.arange(bins, device=like.device)
    start = i * length // bins  # floor(i·L/n)
    end = ((i + 1) * length + bins - 1) // bins  # ceil((i+1)·L/n); all terms >= 0, so no negative division
    position = torch.arange(length, device=like.device)
    member = ((position >= start[:, None]) & (position < end[:, None])).to(like.dtype)  # (n, L)
    return member / member.sum(1, keepdim=True)


def adaptive_avg_pool(x: Tensor, bins: int, *, traceable: bool | None = None) -> Tensor:
    """Adaptive average pooling of ``x`` to ``bins`` x ``bins``, as ``F.adaptive_avg_pool2d(x, bins)``.

    Traceable form: two matrix products with bin-membership (averaging) matrices built from x's height
    and width by tensor ops, so an exported graph is right at any size::

        out = A_H · x · A_Wᵀ        A_L[i, l] = [s_i <= l < e_i] / (e_i - s_i)
        s_i = floor(i·L/n),  e_i = ceil((i+1)·L/n),  i = 0..n-1, l = 0..L-1

    i.e. ``out[i, j]`` is the mean of ``x`` over rows [s_i, e_i) and columns [s_j, e_j), the bins of
    ``adaptive_avg_pool2d`` (overlapping when L is not a multiple of n; never empty, also for L < n).
    n = 1 is the plain mean over H and W.

    Eagerly it calls ``F.adaptive_avg_pool2d``: the matrix form agrees to float rounding (measured up to
    2e-6 x max|out| in float32 at 64x128, and nearer the float64 value) but is not faster on the CPU at every
    level and width, so eager results stay ATen's, bit for bit.

    Args:
        x: feature map (B, C, H, W).
        bins: output side n >= 1.
        traceable: True: the matrix form; False: ``F.adaptive_avg_pool2d``; None: the matrix form while
            exporting (:func:`nlseg.ops.local.exporting`), else ``F.adaptive_avg_pool2d``.

    Returns:
        (B, C, n, n).
    """
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not (exporting() if traceable is None else traceable):
        return F.adaptive_avg_pool2d(x, bins)
    if bins == 1:
        return x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
    rows = _averaging_matrix(x.shape[-2], bins, x)  # (n, H)
    cols = _averaging_matrix(x.shape[-1], bins, x)  # (n, W)
    return rows @ x @ cols.T  # (n, H) @ (B, C, H, W) -> (B, C, n, W); @ (W, n) -> (B, C, n, n)


def random_anchor_positions(
    height: int, width: int, sizes: Sequence[int], generator: torch.Generator | None = None
) -> list[Tensor]:
    """Random sampling's anchor positions: for each n in ``sizes``, n² flat indices into the H·W positions.

    Each level is one ``torch.randint(H·W, (n²,))`` from ``generator`` (drawn on its device; the global CPU
    generator when None): uniform, with replacement, as ``numpy.random.choice(H·W, n²)``.

    Returns:
        One (n²,) int64 tensor per level, on the generator's device.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    return [torch.randint(height * width, (n * n,), generator=generator, device=device) for n in sizes]


def pyramid_sample(
    x: Tensor, sizes: Sequence[int] = (1, 3, 6, 8), mode: str = "avg", *, generator: torch.Generator | None = None
) -> Tensor:
    """Pool ``x`` to every n x n grid in ``sizes`` and concatenate the flattened grids (ANN Eq. 8).

    Args:
        x: feature map (B, C, H, W).
        sizes: output grid side n of each pyramid level, in concatenation order.
        mode: "avg" (released ANN model), "max" (ANN Fig. 4, Table 7) or "random" (Table 7: n² random positions
            per level, :func:`random_anchor_positions`).
        generator: where "random" draws its positions (None: the global generator); unused by "avg" and "max".

    Returns:
        (B, C, S) anchors, S = Σ n².
    """
    _check(x, sizes, mode)
    if mode == "random":
        index = torch.cat(random_anchor_positions(*x.shape[-2:], sizes, generator)).to(x.device)  # (S,)
        return x.flatten(2).index_select(2, index)  # (B, C, H·W) -> (B, C, S)
    if mode == "max" and exporting():
        return pyramid_sample_reference(x, sizes, mode)  # one slice per bin: a graph for this size only
    pool = adaptive_avg_pool if mode == "avg" else F.adaptive_max_pool2d
    return torch.cat([pool(x, n).flatten(2) for n in sizes], dim=2)  # (B, C, S)


def _bin(index: int, bins: int, length: int) -> slice:
    """Index range [floor(i·L/n), ceil((i+1)·L/n)) of bin ``index`` of ``bins`` along an axis of ``length``."""
    return slice(index * length // bins, -(-(index + 1) * length // bins))


def pyramid_sample_reference(
    x: Tensor, sizes: Sequence[int] = (1, 3, 6, 8), mode: str = "avg", *, generator: torch.Generator | None = None
) -> Tensor:
    """Plain path of :func:`pyramid_sample`: every bin reduced over its index range, one at a time; "random" reads
    its positions one at a time as (row, column) = divmod(index, W), drawing level by level as the fast path."""
    _check(x, sizes, mode)
    height, width = x.shape[-2:]
    anchors = []
    if mode == "random":
        for n in sizes:
            for index in torch.randint(height * width, (n * n,), generator=generator,
                                       device=generator.device if generator is not None else "cpu").tolist():
                row, column = divmod(index, width)
                anchors.append(x[:, :, row, column])  # (B, C)
        return torch.stack(anchors, dim=2)  # (B, C, S)
    for n in sizes:
        for i in range(n):
            for j in range(n):
                region = x[:, :, _bin(i, n, height), _bin(j, n, width)].flatten(2)  # (B, C, bin area)
                anchors.append(region.mean(-1) if mode == "avg" else region.amax(-1))
    return torch.stack(anchors, dim=2)  # (B, C, S)
