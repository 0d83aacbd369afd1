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

from nlseg.models.base import BackboneOptions, SegHead, Segmentor, build_aux_heads

__all__ = ["FCNDecoder", "fcn"]


def fcn(
    *,
    num_classes: int,
    pretrained_backbone: str | os.PathLike[str] | None = None,
    backbone_options: BackboneOptions = BackboneOptions(),
    head_channels: int = 512,
    dropout: float = 0.1,
    aux_layers: Sequence[str] = ("layer3",),
    align_corners: bool = True,
) -> Segmentor:
    """FCN: backbone -> conv3x3 (C4 -> 512) + norm + ReLU + Dropout2d(0.1) + conv1x1 -> K on layer4.

    Args:
        num_classes: number of classes K.
        pretrained_backbone: weights file or name (`nlseg list weights`) for the backbone, or None.
        backbone_options: the backbone and the norm of every part (classic stem, no multi-grid by default).
        head_channels: hidden width of the head (512).
        dropout: Dropout2d rate of the head.
        aux_layers: stages with an auxiliary head: ANN ("layer3",); Denoised NL ("layer2", "layer3").
        align_corners: of the bilinear resizes.
    """
    norm_layer = backbone_options.norm_layer
    backbone = backbone_options.build(pretrained_backbone)
    aux_heads = build_aux_heads(
        backbone.stage_channels,
        aux_layers,
        head_channels=head_channels,
        num_classes=num_classes,
        norm_layer=norm_layer,
    )
    head = SegHead(backbone.out_channels, head_channels, num_classes, dropout=dropout, norm_layer=norm_layer)
    return Segmentor(backbone, FCNDecoder(head), aux_heads, num_classes=num_classes, align_corners=align_corners)


class FCNDecoder(nn.Module):
    """The FCN decoder: ``head`` on the last stage's map.

    Args:
        head: (B, C4, h, w) -> (B, K, h, w), a :class:`~nlseg.models.base.SegHead`.
    """

    aux_inputs: tuple[str, ...] = ()
    """The auxiliary logits the decoder reads: none."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        """Logits (B, K, H/8, W/8) from layer4 (B, C4, H/8, W/8); ``aux`` is not read."""
        return self.head(features["layer4"])
