"""Criss-cross attention blocks (CCNet, Huang et al., ICCV 2019, §3.2-3.3; released code speedinghzl/CCNet)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from nlseg.blocks.layers import ConvNormAct, check_channels
from nlseg.ops import criss_cross_attention, criss_cross_attention_reference, criss_cross_row

__all__ = ["CrissCrossAttention", "RCCAModule", "criss_cross_once"]


class CrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention core: ``x <- γ · CCA(q, k, v) + x``, ``recurrence`` times, shared weights.

    q and k are 1x1 convs to C/``reduction``, v a 1x1 conv to C (CCNet §3.2); γ starts at 0, so the
    block starts as the identity. Two loops (CCNet's R = 2) give every position full-image context.

    ``fused`` (attribute, default True) picks the op's fast path; False runs its plain reference path, which
    materialises the attention map as the released code does (see :func:`nlseg.blocks.set_fused`).

    Args:
        in_channels: channels C of x (and of the output).
        recurrence: number of criss-cross passes R.
        reduction: channel reduction of q and k.
    """

    num_inputs = 1

    def __init__(self, in_channels: int, *, recurrence: int = 2, reduction: int = 8) -> None:
        super().__init__()
        if recurrence < 1:
            raise ValueError(f"CrissCrossAttention: recurrence must be >= 1, got {recurrence}")
        check_channels("CrissCrossAttention", key_channels=in_channels // reduction)
        self.recurrence = recurrence
        self.out_channels = in_channels
        self.fused = True
        self.query = nn.Conv2d(in_channels, in_channels // reduction, 1)
        self.key = nn.Conv2d(in_channels, in_channels // reduction, 1)
        self.value = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def step(self, x: Tensor) -> Tensor:
        """One criss-cross pass: (B, C, H, W) -> γ · CCA(q, k, v) + x."""
        attention = criss_cross_attention if self.fused else criss_cross_attention_reference
        return self.gamma * attention(self.query(x), self.key(x), self.value(x)) + x

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        for _ in range(self.recurrence):
            x = self.step(x)
        return x

    def attention_rows(self, x: Tensor, *, index: tuple[int, int]) -> dict[str, Tensor]:
        """Query ``index`` = (y, x)'s weights in each pass (:func:`nlseg.ops.criss_cross_row`), the second pass
        reading the first one's output: {"pass r": (B, H, W)}."""
        rows = {}
        for r in range(self.recurrence):
            rows[f"pass {r + 1}"] = criss_cross_row(self.query(x), self.key(x), index)
            if r + 1 < self.recurrence:
                x = self.step(x)
        return rows


class RCCAModule(nn.Module):
    """CCNet's head without its classifier (CCNet §3.3, Fig. 2): the block CCNet puts on the backbone.

    ``conv3x3(C -> C/4) + BN + ReLU -> CrissCrossAttention x R -> conv3x3 + BN + ReLU``, concatenated
    with x, then ``conv3x3 -> out_channels + BN + ReLU + Dropout2d(0.1)``. (CCNet's released code uses
    in-place activated BN with a leaky ReLU; plain ReLU here, like every other block.) The model adds
    the 1x1 classifier.

    Args:
        in_channels: channels C of x.
        out_channels: output channels (CCNet: 512).
        inter_channels: channels the attention runs on, default C/4.
        recurrence: criss-cross passes R (CCNet: 2).
        reduction: channel reduction of q and k inside the attention.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
        dropout: Dropout2d rate at the end.
    """

    num_inputs = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 512,
        *,
        inter_channels: int | None = None,
        recurrence: int = 2,
        reduction: int = 8,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        inter_channels = in_channels // 4 if inter_channels is None else inter_channels
        check_channels("RCCAModule", inter_channels=inter_channels, out_channels=out_channels)
        self.out_channels = out_channels
        self.reduce = ConvNormAct(in_channels, inter_channels, 3, norm_layer=norm_layer)
        self.attention = CrissCrossAttention(inter_channels, recurrence=recurrence, reduction=reduction)
        self.expand = ConvNormAct(inter_channels, inter_channels, 3, norm_layer=norm_layer)
        self.bottleneck = nn.Sequential(
            ConvNormAct(in_channels + inter_channels, out_channels, 3, norm_layer=norm_layer), nn.Dropout2d(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W)."""
        context = self.expand(self.attention(self.reduce(x)))
        return self.bottleneck(torch.cat([x, context], dim=1))


def criss_cross_once(in_channels: int, *, reduction: int = 8) -> CrissCrossAttention:
    """One criss-cross pass (CCNet's CCA module, §3.2; R = 1): each position sees its row and column only.

    Args: as :class:`CrissCrossAttention`, with ``recurrence=1``.
    """
    return CrissCrossAttention(in_channels, recurrence=1, reduction=reduction)
