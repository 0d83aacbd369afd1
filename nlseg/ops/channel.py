"""Channel attention (DANet CAM, Fu et al., CVPR 2019, §3.3) and its compact form (DRANet CCAM).

DANet's channel attention module relates every channel of ``x`` to every other one:

    E = X Xᵀ (B, C, C),   A = softmax_over_last(max_row(E) - E),   out = A X

``max_row(E) - E`` is the released code's trick (the paper writes ``softmax(E)``). Softmax is
invariant to a per-row shift, so this equals ``softmax(-E)``: channels that are *less* similar get
more weight, as released.

DRANet's compact channel attention (CCAM; Fu et al., "Scene Segmentation With Dual Relation-Aware
Attention Network", TNNLS 2020; taken from the authors' released code, junfu1115/DANet,
``encoding/nn/dran_att.py``) relates the C channels of ``x`` to K << C compact channels ``Y`` (there a
1x1 conv + BN + ReLU of ``x`` to C/16 channels) with the same formula and trick:
``E = X Yᵀ`` (B, C, K), ``out = softmax(max_row(E) - E) Y``. CAM is the case Y = X.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channel_attention", "channel_attention_reference"]


def _flatten(x: Tensor, keys: Tensor | None) -> tuple[Tensor, Tensor]:
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if keys is None:
        keys = x
    elif keys.dim() != 4 or keys.shape[0] != x.shape[0] or keys.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"keys must be (B, K, H, W) matching x {tuple(x.shape)}, got {tuple(keys.shape)}")
    return x.flatten(2), keys.flatten(2)  # (B, C, N), (B, K, N)


def channel_attention(x: Tensor, keys: Tensor | None = None) -> Tensor:
    """DANet channel attention (``keys=None``) or DRANet compact channel attention (``keys`` given).

    Args:
        x: feature map (B, C, H, W); its channels are the queries.
        keys: compact channels (B, K, H, W), both keys and values; None means ``x`` itself (CAM).

    Returns:
        (B, C, H, W): each channel of ``x`` replaced by its attention-weighted sum of key channels.
    """
    x_flat, keys_flat = _flatten(x, keys)
    energy = torch.bmm(x_flat, keys_flat.transpose(1, 2))  # (B, C, K)
    # softmax(max_row(E) - E) == softmax(-E): softmax already subtracts the row maximum of -E.
    attention = torch.softmax(energy.neg(), dim=-1)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # Out in x's channels-last layout: (B, N, C) tokens = Yᵀ Aᵀ, whose (B, C, H, W) view is channels-last,
        # so the residual sum and the next convolution see one layout (a mixed-layout sum is a slow strided loop).
        tokens = torch.bmm(keys_flat.transpose(1, 2), attention.transpose(1, 2))  # (B, N, C)
        return tokens.transpose(1, 2).unflatten(2, x.shape[-2:])  # (B, C, H, W), channels-last
    return torch.bmm(attention, keys_flat).view_as(x)  # (B, C, H, W)


def channel_attention_reference(x: Tensor, keys: Tensor | None = None) -> Tensor:
    """Plain path of :func:`channel_attention`: the released formula ``softmax(max_row(E) - E)`` as written."""
    x_flat, keys_flat = _flatten(x, keys)
    energy = torch.bmm(x_flat, keys_flat.transpose(1, 2))  # (B, C, K)
    energy_new = energy.amax(dim=-1, keepdim=True) - energy  # (B, C, K), >= 0
    attention = torch.softmax(energy_new, dim=-1)
    return torch.bmm(attention, keys_flat).view_as(x)  # (B, C, H, W)
