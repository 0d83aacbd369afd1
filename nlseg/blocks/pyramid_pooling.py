"""PSPNet's pyramid pooling module (Zhao et al., CVPR 2017, §3.2, Fig. 3)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.blocks.layers import ConvNormAct, check_channels
from nlseg.ops import adaptive_avg_pool

__all__ = ["PPM", "ppm_keep_width"]


class PPM(nn.Module):
    """Pyramid pooling: for each n, adaptive average pool to n x n -> 1x1 conv to ``branch_channels`` -> BN ->
    ReLU -> bilinear upsampling (align_corners=True by default, as PSPNet's released code); concatenated with x,
    then conv3x3 -> ``out_channels`` + BN + ReLU. PSPNet then applies Dropout2d(0.1) and the 1x1
    classifier, which the model adds.

    The n = 1 level normalises a 1 x 1 map, so training needs more than one image per norm group.

    Args:
        in_channels: channels C of x.
        out_channels: output channels (PSPNet: 512).
        pool_sizes: pyramid levels n (PSPNet: 1, 2, 3, 6).
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
        branch_channels: channels of each level's 1x1 conv; default C/len(pool_sizes) (PSPNet; mmsegmentation's
            PSPHead uses ``out_channels``, the same 512 on a 2048-channel map).
        align_corners: of the levels' upsampling (PSPNet's released code: True; mmsegmentation: False).
    """

    num_inputs = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 512,
        pool_sizes: Sequence[int] = (1, 2, 3, 6),
        *,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        branch_channels: int | None = None,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if len(pool_sizes) == 0 or any(not isinstance(n, int) or n < 1 for n in pool_sizes):
            raise ValueError(f"PPM: pool_sizes must be a non-empty sequence of positive ints, got {pool_sizes!r}")
        branch_channels = in_channels // len(pool_sizes) if branch_channels is None else branch_channels
        check_channels("PPM", branch_channels=branch_channels, out_channels=out_channels)
        self.pool_sizes = tuple(pool_sizes)
        self.out_channels = out_channels
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            ConvNormAct(in_channels, branch_channels, 1, norm_layer=norm_layer) for _ in self.pool_sizes
        )
        self.bottleneck = ConvNormAct(
            in_channels + branch_channels * len(self.pool_sizes), out_channels, 3, norm_layer=norm_layer
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W)."""
        size = x.shape[-2:]
        levels = [
            F.interpolate(branch(adaptive_avg_pool(x, n)), size=size, mode="bilinear", align_corners=self.align_corners)
            for n, branch in zip(self.pool_sizes, self.branches, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *levels], dim=1))


def ppm_keep_width(
    in_channels: int,
    out_channels: int | None = None,
    pool_sizes: Sequence[int] = (1, 2, 3, 6),
    *,
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
) -> PPM:
    """PSPNet's pyramid pooling with C channels out by default: the Denoised NL paper's "+PPM" (Table III),
    on the pipeline's reduced map.

    Args: as :class:`PPM`; ``out_channels`` defaults to ``in_channels``.
    """
    out_channels = in_channels if out_channels is None else out_channels
    return PPM(in_channels, out_channels, pool_sizes, norm_layer=norm_layer)
