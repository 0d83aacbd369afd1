"""Criss-cross attention (CCNet, Huang et al., ICCV 2019, §3.2, Eq. 1-2).

Each position (h, w) attends to the H + W - 1 positions of its row and its column; the position
itself is counted once (CCNet's released code puts -inf on the diagonal of the column energies so the
self term comes from the row branch only). One softmax runs jointly over those H + W - 1 energies,
with no scale, and the output is the weighted sum of the values at the same positions.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["criss_cross_attention", "criss_cross_attention_reference"]


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must be (B, Ck, H, W) of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[0] != q.shape[0] or v.shape[-2:] != q.shape[-2:]:
        raise ValueError(f"v must be (B, Cv, H, W) matching q {tuple(q.shape)}, got {tuple(v.shape)}")


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Criss-cross attention from column and row energies only, never an N x N map (CCNet Eq. 1-2).

    Memory is O(B·H·W·(H + W)): column energies (B, W, H, H) and row energies (B, H, W, W).

    Args:
        q: queries (B, Ck, H, W).
        k: keys (B, Ck, H, W).
        v: values (B, Cv, H, W).

    Returns:
        (B, Cv, H, W).
    """
    _check(q, k, v)
    b, ck, h, w = q.shape
    cv = v.shape[1]
    # Column branch: position (h, w) against (h', w) for every h'.
    q_col = q.permute(0, 3, 2, 1).reshape(b * w, h, ck)  # (B·W, H, Ck)
    k_col = k.permute(0, 3, 1, 2).reshape(b * w, ck, h)  # (B·W, Ck, H)
    energy_col = torch.bmm(q_col, k_col).view(b, w, h, h).permute(0, 2, 1, 3)  # (B, H, W, H')
    self_mask = torch.eye(h, dtype=torch.bool, device=q.device).view(h, 1, h)  # (H, 1, H'): h' == h
    energy_col = energy_col.masked_fill(self_mask, float("-inf"))  # self is counted by the row branch
    # Row branch: position (h, w) against (h, w') for every w'.
    q_row = q.permute(0, 2, 3, 1).reshape(b * h, w, ck)  # (B·H, W, Ck)
    k_row = k.permute(0, 2, 1, 3).reshape(b * h, ck, w)  # (B·H, Ck, W)
    energy_row = torch.bmm(q_row, k_row).view(b, h, w, w)  # (B, H, W, W')

    attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)  # (B, H, W, H + W)
    att_col, att_row = attention.split([h, w], dim=-1)

    att_col = att_col.permute(0, 2, 1, 3).reshape(b * w, h, h)  # (B·W, H, H')
    v_col = v.permute(0, 3, 2, 1).reshape(b * w, h, cv)  # (B·W, H', Cv)
    out_col = torch.bmm(att_col, v_col).view(b, w, h, cv).permute(0, 3, 2, 1)  # (B, Cv, H, W)
    att_row = att_row.reshape(b * h, w, w)  # (B·H, W, W')
    v_row = v.permute(0, 2, 3, 1).reshape(b * h, w, cv)  # (B·H, W', Cv)
    out_row = torch.bmm(att_row, v_row).view(b, h, w, cv).permute(0, 3, 1, 2)  # (B, Cv, H, W)
    return out_col + out_row


def criss_cross_attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain path of :func:`criss_cross_attention`: full N x N energies, -inf off the cross, softmax."""
    _check(q, k, v)
    b, _, h, w = q.shape
    rows = torch.arange(h, device=q.device).repeat_interleave(w)  # (N,) row of each flattened position
    cols = torch.arange(w, device=q.device).repeat(h)  # (N,) column of each flattened position
    cross = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])  # (N, N), self once
    energy = torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2))  # (B, N, N)
    attention = torch.softmax(energy.masked_fill(~cross, float("-inf")), dim=-1)
    out = torch.bmm(v.flatten(2), attention.transpose(1, 2))  # (B, Cv, N)
    return out.view(b, -1, h, w)
