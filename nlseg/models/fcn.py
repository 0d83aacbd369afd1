"""The FCN baseline of both papers: dilated ResNet + conv3x3 head, with deep supervision.

ANN Table 6 "Baseline" (§4.4: "a FCN-like ResNet-101 network with a deep supervision branch") is the
default: classic stem, auxiliary head on layer3. The Denoised NL tables' reading of a baseline in this
form is ``stem="deep", multi_grid=(1, 2, 4), dilate_first_block=True, aux_layers=("layer2", "layer3")``
(see docs/models.md for why the Denoised NL Baseline is rather ``dnl_baseline_r*``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn

from nlseg.models.base import SegHead, Segmentor

__all__ = ["FCN"]


class FCN(Segmentor):
    """FCN: backbone -> conv3x3 (C4 -> 512) + norm + ReLU + Dropout2d(0.1) + conv1x1 -> K on layer4.

    Args:
        num_classes: number of classes K.
        backbone: backbone name, e.g. ``"resnet101"``.
        pretrained_backbone: local weights file for the backbone, or None.
        norm_layer: normalisation class used everywhere.
        backbone_width: base width of the backbone (64 = standard).
        output_stride: 8, 16 or 32.
        stem: ``"classic"`` or ``"deep"``.
        multi_grid: layer4 multi-grid factors, or None.
        dilate_first_block: see :class:`nlseg.models.base.Segmentor`.
        head_channels: hidden width of the head (512).
        dropout: Dropout2d rate of the head.
        aux_layers: stages with an auxiliary head: ANN ("layer3",); Denoised NL ("layer2", "layer3").
        align_corners: of the bilinear resizes.
        grad_checkpointing: recompute backbone activations in the backward pass.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet101",
        pretrained_backbone: str | os.PathLike[str] | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        backbone_width: int = 64,
        output_stride: int = 8,
        stem: str = "classic",
        multi_grid: tuple[int, ...] | None = None,
        dilate_first_block: bool = False,
        head_channels: int = 512,
        dropout: float = 0.1,
        aux_layers: Sequence[str] = ("layer3",),
        align_corners: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            backbone=backbone,
            pretrained_backbone=pretrained_backbone,
            norm_layer=norm_layer,
            backbone_width=backbone_width,
            output_stride=output_stride,
            stem=stem,
            multi_grid=multi_grid,
            dilate_first_block=dilate_first_block,
            head_channels=head_channels,
            aux_layers=aux_layers,
            align_corners=align_corners,
            grad_checkpointing=grad_checkpointing,
        )
        self.head = SegHead(
            self.backbone.out_channels, head_channels, num_classes, dropout=dropout, norm_layer=norm_layer
        )

    def decode(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        return self.head(features["layer4"])
