"""DeepLabV3's atrous spatial pyramid pooling (Chen et al., 2017, §3.3, Fig. 5)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.blocks.layers import ConvNormAct, check_channels

__all__ = ["ASPP", "aspp_at_stride_16"]


class ASPP(nn.Module):
    """ASPP: a 1x1 conv, one 3x3 conv per dilation and an image-pooling branch (global average pool ->
    1x1 conv), each + BN + ReLU, all ``out_channels`` wide; concatenated (the image-pooling branch last), then a
    projection (1x1 by default, as DeepLabV3; mmsegmentation's ASPPHead: 3x3) + BN + ReLU + Dropout2d.

    Dilations (12, 24, 36) suit output stride 8 and (6, 12, 18) output stride 16 (DeepLabV3 §3.3);
    the model passes the ones for its backbone. The image-pooling branch normalises a 1 x 1 map, so
    training needs more than one image per norm group.

    Args:
        in_channels: channels C of x.
        out_channels: channels of every branch and of the output.
        dilations: dilation rates of the 3x3 branches.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
        dropout: Dropout2d rate after the projection.
        project_kernel_size: odd kernel size of the projection (1; mmsegmentation's ASPPHead: 3).
    """

    num_inputs = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        dilations: Sequence[int] = (12, 24, 36),
        *,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dropout: float = 0.1,
        project_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        if project_kernel_size < 1 or project_kernel_size % 2 == 0:
            raise ValueError(f"ASPP: project_kernel_size must be a positive odd int, got {project_kernel_size!r}")
        if any(not isinstance(d, int) or d < 1 for d in dilations):
            raise ValueError(f"ASPP: dilations must be positive ints, got {dilations!r}")
        check_channels("ASPP", out_channels=out_channels)
        self.out_channels = out_channels
        self.branches = nn.ModuleList(
            [ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer)]
            + [ConvNormAct(in_channels, out_channels, 3, dilation=d, norm_layer=norm_layer) for d in dilations]
        )
        self.image_pool = ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer)
        self.project = nn.Sequential(
            ConvNormAct(out_channels * (len(dilations) + 2), out_channels, project_kernel_size, norm_layer=norm_layer),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W)."""
        # Bilinear upsampling of the 1 x 1 pooled branch is a broadcast.
        image = self.image_pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])  # (B, out, H, W)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [image], dim=1))


def aspp_at_stride_16(
    in_channels: int,
    out_channels: int | None = None,
    dilations: Sequence[int] = (6, 12, 18),
    *,
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
    dropout: float = 0.1,
) -> ASPP:
    """ASPP with DeepLabV3's rates for a map at 1/16, C channels out by default: the Denoised NL paper's
    "+ASPP" (Table III), on the pipeline's reduced map.

    Args: as :class:`ASPP`; ``out_channels`` defaults to ``in_channels``.
    """
    out_channels = in_channels if out_channels is None else out_channels
    return ASPP(in_channels, out_channels, dilations, norm_layer=norm_layer, dropout=dropout)
