"""Dual attention heads: DANet (Fu et al., CVPR 2019, §3.2-3.4) and DRANet* (Fu et al., TNNLS 2020).

Both are taken from the authors' released code (junfu1115/DANet: ``encoding/nn/da_att.py``,
``encoding/models/sseg/danet.py``, ``encoding/nn/dran_att.py``, ``encoding/models/sseg/dran.py``).
DRANet* is the Denoised NL paper's name (Table IV) for DRANet's two attention modules, CPAM and
CCAM, without DRANet's cross-level gating decoder.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nlseg.blocks.layers import ConvNormAct, ParallelSum, check_channels, to_map, to_tokens
from nlseg.ops import (
    channel_attention,
    channel_attention_reference,
    nonlocal_attention,
    nonlocal_attention_reference,
    nonlocal_row,
    pyramid_sample,
)

__all__ = [
    "ChannelAttention",
    "CompactChannelAttention",
    "CompactDualAttention",
    "CompactPositionAttention",
    "DualAttention",
    "PositionAttention",
    "compact_position_channel_attention",
    "position_channel_attention",
]


class PositionAttention(nn.Module):
    """DANet's position attention module (PAM, §3.2): ``γ · softmax(q kᵀ) v + x``, no scale, γ = 0 at init.

    ``fused`` (attribute, default True) picks the op's fast path; False runs its plain reference path, which
    materialises the attention map as the released code does (see :func:`nlseg.blocks.set_fused`).

    Args:
        in_channels: channels C of x and of the output.
        reduction: q and k have C/``reduction`` channels (DANet: 8); v has C.
    """

    num_inputs = 1

    def __init__(self, in_channels: int, *, reduction: int = 8) -> None:
        super().__init__()
        check_channels("PositionAttention", key_channels=in_channels // reduction)
        self.out_channels = in_channels
        self.fused = True
        self.query = nn.Conv2d(in_channels, in_channels // reduction, 1)
        self.key = nn.Conv2d(in_channels, in_channels // reduction, 1)
        self.value = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        attention = nonlocal_attention if self.fused else nonlocal_attention_reference
        out = attention(to_tokens(self.query(x)), to_tokens(self.key(x)), to_tokens(self.value(x)), scale=1.0)  # (B, N, C)
        return self.gamma * to_map(out, *x.shape[-2:]) + x

    def attention_rows(self, x: Tensor, *, index: tuple[int, int]) -> dict[str, Tensor]:
        """Query ``index`` = (y, x)'s row of the map over x's grid (:func:`nlseg.ops.nonlocal_row`): {title: (B, H, W)}."""
        return {"attention": nonlocal_row(self.query(x), self.key(x), index, scale=1.0)}


class ChannelAttention(nn.Module):
    """DANet's channel attention module (CAM, §3.3): ``γ · channel_attention(x) + x``, γ = 0 at init.

    ``fused`` (attribute, default True): False runs :func:`nlseg.ops.channel_attention_reference`.

    Args:
        in_channels: channels C of x and of the output (CAM has no weights besides γ).
    """

    num_inputs = 1

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_channels = in_channels
        self.fused = True
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        attention = channel_attention if self.fused else channel_attention_reference
        return self.gamma * attention(x) + x


class DualAttention(nn.Module):
    """DANet head without its classifiers (§3.4): two branches, each conv3x3 + BN + ReLU -> PAM or CAM ->
    conv3x3 + BN + ReLU, summed. The released head then applies Dropout2d(0.1) + 1x1 classifier (the
    model's job here).

    Args:
        in_channels: channels C of x.
        inter_channels: channels of both branches and of the output, default C/4.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
    """

    num_inputs = 1

    def __init__(
        self, in_channels: int, *, inter_channels: int | None = None, norm_layer: type[nn.Module] = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        inter_channels = in_channels // 4 if inter_channels is None else inter_channels
        check_channels("DualAttention", inter_channels=inter_channels)
        self.out_channels = inter_channels
        self.position = nn.Sequential(
            ConvNormAct(in_channels, inter_channels, 3, norm_layer=norm_layer),
            PositionAttention(inter_channels),
            ConvNormAct(inter_channels, inter_channels, 3, norm_layer=norm_layer),
        )
        self.channel = nn.Sequential(
            ConvNormAct(in_channels, inter_channels, 3, norm_layer=norm_layer),
            ChannelAttention(inter_channels),
            ConvNormAct(inter_channels, inter_channels, 3, norm_layer=norm_layer),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, inter_channels, H, W)."""
        return self.position(x) + self.channel(x)


class CompactPositionAttention(nn.Module):
    """DRANet's compact position attention (CPAM): queries at every position, keys and values at S pooled
    "gathering centres"; ``γ · softmax(q kᵀ) v + x`` with no scale and γ = 0 at init.

    As released: the centres are the pyramid average pools of x at ``pool_sizes`` (1, 2, 3, 6; S = 50),
    each level through its own 1x1 conv (C -> C) + BN + ReLU; q is a 1x1 conv of x to C/4, k and v are
    linear maps of the centres to C/4 and C.

    ``fused`` (attribute, default True) picks the op's fast path; False runs its plain reference path, which
    materialises the attention map as the released code does (see :func:`nlseg.blocks.set_fused`).

    Args:
        in_channels: channels C of x and of the output.
        pool_sizes: pyramid levels of the centres.
        reduction: q and k have C/``reduction`` channels (released: 4).
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
    """

    num_inputs = 1

    def __init__(
        self,
        in_channels: int,
        pool_sizes: Sequence[int] = (1, 2, 3, 6),
        *,
        reduction: int = 4,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        check_channels("CompactPositionAttention", key_channels=in_channels // reduction)
        self.pool_sizes = tuple(pool_sizes)
        self.out_channels = in_channels
        self.fused = True
        self.encoders = nn.ModuleList(
            ConvNormAct(in_channels, in_channels, 1, norm_layer=norm_layer) for _ in self.pool_sizes
        )
        self.query = nn.Conv2d(in_channels, in_channels // reduction, 1)
        self.key = nn.Linear(in_channels, in_channels // reduction)
        self.value = nn.Linear(in_channels, in_channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        levels = pyramid_sample(x, self.pool_sizes).split([n * n for n in self.pool_sizes], dim=2)  # (B, C, n²) each
        centres = torch.cat(
            [encode(level.unsqueeze(-1)) for encode, level in zip(self.encoders, levels, strict=True)], dim=2
        )  # (B, C, S, 1): a 1 x n² "map" per level, so the norm sees each level's own statistics
        centres = centres.squeeze(-1).transpose(1, 2)  # (B, S, C)
        attention = nonlocal_attention if self.fused else nonlocal_attention_reference
        out = attention(to_tokens(self.query(x)), self.key(centres), self.value(centres), scale=1.0)  # (B, N, C)
        return self.gamma * to_map(out, *x.shape[-2:]) + x


class CompactChannelAttention(nn.Module):
    """DRANet's compact channel attention (CCAM): ``γ · channel_attention(x, Y) + x``, γ = 0 at init, where
    the compact channels Y = ReLU(BN(conv1x1(x))) has ``compact_channels`` (released: C/16).

    ``fused`` (attribute, default True): False runs :func:`nlseg.ops.channel_attention_reference`.

    Args:
        in_channels: channels C of x and of the output.
        compact_channels: channels K of Y.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
    """

    num_inputs = 1

    def __init__(
        self, in_channels: int, compact_channels: int, *, norm_layer: type[nn.Module] = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        check_channels("CompactChannelAttention", compact_channels=compact_channels)
        self.out_channels = in_channels
        self.fused = True
        self.encoder = ConvNormAct(in_channels, compact_channels, 1, norm_layer=norm_layer)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        attention = channel_attention if self.fused else channel_attention_reference
        return self.gamma * attention(x, self.encoder(x)) + x


class CompactDualAttention(nn.Module):
    """DRANet* head: CPAM and CCAM branches (each conv3x3 + BN + ReLU -> module -> conv3x3 + BN + ReLU),
    concatenated (CPAM first) and fused by conv3x3 -> ``out_channels`` + BN + ReLU, as released.

    Args:
        in_channels: channels C of x.
        inter_channels: channels of both branches, default C/4.
        out_channels: output channels, default inter_channels/2 (released).
        compact_channels: channels of CCAM's compact map, default inter_channels/16 (released).
        pool_sizes: CPAM's pyramid levels.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
    """

    num_inputs = 1

    def __init__(
        self,
        in_channels: int,
        *,
        inter_channels: int | None = None,
        out_channels: int | None = None,
        compact_channels: int | None = None,
        pool_sizes: Sequence[int] = (1, 2, 3, 6),
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        inter_channels = in_channels // 4 if inter_channels is None else inter_channels
        out_channels = inter_channels // 2 if out_channels is None else out_channels
        compact_channels = inter_channels // 16 if compact_channels is None else compact_channels
        check_channels(
            "CompactDualAttention",
            inter_channels=inter_channels,
            out_channels=out_channels,
            compact_channels=compact_channels,
        )
        self.out_channels = out_channels
        self.position = nn.Sequential(
            ConvNormAct(in_channels, inter_channels, 3, norm_layer=norm_layer),
            CompactPositionAttention(inter_channels, pool_sizes, norm_layer=norm_layer),
            ConvNormAct(inter_channels, inter_channels, 3, norm_layer=norm_layer),
        )
        self.channel = nn.Sequential(
            ConvNormAct(in_channels, inter_channels, 3, norm_layer=norm_layer),
            CompactChannelAttention(inter_channels, compact_channels, norm_layer=norm_layer),
            ConvNormAct(inter_channels, inter_channels, 3, norm_layer=norm_layer),
        )
        self.fuse = ConvNormAct(2 * inter_channels, out_channels, 3, norm_layer=norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W)."""
        return self.fuse(torch.cat([self.position(x), self.channel(x)], dim=1))


def position_channel_attention(in_channels: int, *, reduction: int = 8) -> ParallelSum:
    """DANet's attention modules on the map itself: PAM(x) + CAM(x), C channels in and out.

    The Denoised NL paper's "+DANet" (Table IV; its Table V delta of 10.04 GFLOPs is exactly these two
    modules on 512 x 48 x 48). DANet's own head, with its 3x3 convolutions, is :class:`DualAttention`.

    Args:
        in_channels: channels C of x and of the output.
        reduction: PAM's q and k have C/``reduction`` channels.
    """
    return ParallelSum(PositionAttention(in_channels, reduction=reduction), ChannelAttention(in_channels))


def compact_position_channel_attention(
    in_channels: int,
    *,
    compact_channels: int | None = None,
    pool_sizes: Sequence[int] = (1, 2, 3, 6),
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
) -> ParallelSum:
    """DRANet's attention modules on the map itself: CPAM(x) + CCAM(x), C channels in and out.

    The Denoised NL paper's "+DRANet*" (Table IV: "we only use CPAM and CCAM module"). DRANet's head,
    with its 3x3 convolutions, is :class:`CompactDualAttention`.

    Args:
        in_channels: channels C of x and of the output.
        compact_channels: channels of CCAM's compact map, default C/16 (released).
        pool_sizes: CPAM's pyramid levels.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
    """
    compact_channels = in_channels // 16 if compact_channels is None else compact_channels
    return ParallelSum(
        CompactPositionAttention(in_channels, pool_sizes, norm_layer=norm_layer),
        CompactChannelAttention(in_channels, compact_channels, norm_layer=norm_layer),
    )
