"""One query pixel's attention over every key position, without the N x N map: the pictures of Fig. 1 / 11.

Each function returns the row ``i`` of a block's attention map as a (B, H, W) picture over the key grid,
at O(N·C) cost: a single query against all keys. ``index`` is the query's (y, x) on the grid of q and k.

* :func:`nonlocal_row` — ``softmax_j(s · q_i·k_j)`` (ANN Eq. 2-3; DANet PAM with s = 1).
* :func:`denoised_attention_rows` — A, A' and A'' of the Denoised NL block (Song et al. §III, Fig. 4, 11).
* :func:`criss_cross_row` — CCNet's weights on the row and column through i, zero elsewhere.
* :func:`apnb_row` — APNB's weights on its S anchors spread back onto the pixels they average.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nlseg.ops.local import _gather, local_relation
from nlseg.ops.pyramid import _bin, pyramid_sample

__all__ = ["apnb_row", "criss_cross_row", "denoised_attention_rows", "nonlocal_row"]


def _query(q: Tensor, k: Tensor, index: tuple[int, int]) -> Tensor:
    """The query vector q_i (B, Ck) at ``index`` = (y, x), after checking the maps and the index."""
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must be (B, Ck, H, W) of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    y, x = index
    height, width = q.shape[-2:]
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"index (y, x) = {tuple(index)} is outside the {height} x {width} grid of q and k")
    return q[:, :, y, x]  # (B, Ck)


def _scale(scale: float | None, key_channels: int) -> float:
    return key_channels**-0.5 if scale is None else float(scale)


def nonlocal_row(q: Tensor, k: Tensor, index: tuple[int, int], *, scale: float | None = None) -> Tensor:
    """Row i of the non-local map ``softmax_j(scale · q_i·k_j)`` (ANN Eq. 2-3) as a picture over the keys.

    Args:
        q: queries (B, Ck, H, W).
        k: keys (B, Ck, H, W).
        index: (y, x) of the query pixel i.
        scale: factor on q·k; None means Ck^-1/2 (ANN), 1.0 none (Wang et al., DANet, Denoised NL's NL).

    Returns:
        (B, H, W) weights summing to 1 over the grid.
    """
    query = _query(q, k, index)
    energy = torch.einsum("bc,bcn->bn", query, k.flatten(2)) * _scale(scale, q.shape[1])  # (B, N)
    return energy.softmax(-1).view(q.shape[0], *q.shape[-2:])


def denoised_attention_rows(
    q: Tensor,
    k: Tensor,
    class_probs: Tensor | None,
    index: tuple[int, int],
    *,
    kernel_size: int = 3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Row i of the three Denoised NL maps (Song et al. §III-C to §III-E; Fig. 11 "attention map #1-#3").

        A[j]   = softmax_j(q_i·k_j)                       no scale
        A'[j]  = A[j] · sigmoid(p_i·p_j)                  Global Rectifying (A' = A when class_probs is None)
        A''[j] = Σ_n A'[j+n] · sigmoid(q_j·k_{j+n})       Local Retention over the k x k window of the key j

    A neighbour j+n outside the grid contributes 0, as in :func:`nlseg.ops.denoised_attention`.

    Args:
        q: queries (B, Ck, H, W).
        k: keys (B, Ck, H, W).
        class_probs: class probabilities (B, K, H, W) at the size of q, or None (no Global Rectifying).
        index: (y, x) of the query pixel i.
        kernel_size: odd Local Retention window.

    Returns:
        A, A', A'', each (B, H, W).
    """
    attn = nonlocal_row(q, k, index, scale=1.0)  # A, (B, H, W)
    rectified = attn
    if class_probs is not None:
        if class_probs.dim() != 4 or class_probs.shape[0] != q.shape[0] or class_probs.shape[-2:] != q.shape[-2:]:
            raise ValueError(
                f"class_probs must be (B, K, H, W) at the size of q {tuple(q.shape)}, got {tuple(class_probs.shape)}"
            )
        y, x = index
        gate = torch.einsum("bk,bkhw->bhw", class_probs[:, :, y, x], class_probs).sigmoid()  # sigmoid(p_i·p_j)
        rectified = attn * gate  # A'
    local = local_relation(q, k, kernel_size).sigmoid()  # S[j, n] = sigmoid(q_j·k_{j+n}), (B, k², H, W)
    retained = _gather(rectified.unsqueeze(1), local, kernel_size).squeeze(1)  # Σ_n S[j, n] A'[j+n], (B, H, W)
    return attn, rectified, retained


def criss_cross_row(q: Tensor, k: Tensor, index: tuple[int, int]) -> Tensor:
    """Row i of criss-cross attention (CCNet Eq. 1-2): one softmax over the H + W - 1 positions of i's cross.

    Args:
        q: queries (B, Ck, H, W).
        k: keys (B, Ck, H, W).
        index: (y, x) of the query pixel i.

    Returns:
        (B, H, W): the weights on row y and column x (i itself once), zero elsewhere.
    """
    query = _query(q, k, index)
    y, x = index
    energy = torch.einsum("bc,bchw->bhw", query, k)  # q_i·k_j for every j, (B, H, W)
    cross = torch.zeros_like(energy, dtype=torch.bool)
    cross[:, y, :] = True
    cross[:, :, x] = True
    weights = energy.masked_fill(~cross, float("-inf")).flatten(1).softmax(-1)  # (B, N)
    return weights.view_as(energy)


def apnb_row(
    q: Tensor,
    k: Tensor,
    index: tuple[int, int],
    *,
    pool_sizes: Sequence[int] = (1, 3, 6, 8),
    scale: float | None = None,
) -> Tensor:
    """Row i of APNB's attention (ANN Eq. 8-10) as effective weights on the pixels.

    APNB attends to S anchors, each the average of a pyramid bin of the value map, so its output is
    ``Σ_s w_s P(v)_s = Σ_j (Σ_s w_s [j ∈ bin s] / |bin s|) v_j``: the pixel weight below is exact, and the
    weights still sum to 1. (Average pooling only; with max pooling the anchor's pixel depends on the channel.)

    Args:
        q: queries (B, Ck, H, W).
        k: keys (B, Ck, H, W), pooled here to the anchors with the adaptive average bins of
            :func:`nlseg.ops.pyramid_sample`.
        index: (y, x) of the query pixel i.
        pool_sizes: pyramid levels n (S = Σ n²).
        scale: factor on q·k; None means Ck^-1/2 (ANN).

    Returns:
        (B, H, W) pixel weights.
    """
    query = _query(q, k, index)
    height, width = q.shape[-2:]
    anchors = pyramid_sample(k, pool_sizes)  # (B, Ck, S)
    weights = (torch.einsum("bc,bcs->bs", query, anchors) * _scale(scale, q.shape[1])).softmax(-1)  # (B, S)
    out = q.new_zeros(q.shape[0], height, width)
    s = 0
    for n in pool_sizes:
        for a in range(n):
            for b in range(n):
                rows, cols = _bin(a, n, height), _bin(b, n, width)
                area = (rows.stop - rows.start) * (cols.stop - cols.start)
                out[:, rows, cols] += (weights[:, s] / area)[:, None, None]
                s += 1
    return out
