"""What every segmentor shares: the dilated backbone, the auxiliary heads, logits resized to the input.

A model returns ``{"out": logits, "aux": [logits, ...]}``, all (B, K, H, W) at the input's H x W,
and computes no loss (the recipe weights the auxiliary outputs, in the order of ``aux_layers``).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.backbones import create_backbone
from nlseg.blocks.layers import ConvNormAct

__all__ = ["AUX_LAYERS", "SegHead", "Segmentor"]

AUX_DROPOUT = 0.05
"""Dropout2d rate of the auxiliary heads (ANN's stage-4 head; the released Denoised NL heads)."""

AUX_LAYERS: dict[str, int] = {"layer2": 8, "layer3": 1}
"""Stages that can carry an auxiliary head, and by how much its hidden width divides ``head_channels``:
layer3 (ANN's "Stage4"): conv3x3 -> 512; layer2 (Denoised NL's res2 head): conv3x3 -> 64."""


class SegHead(nn.Sequential):
    """conv3x3 -> ``mid_channels`` + norm + ReLU + Dropout2d + conv1x1 -> K: the FCN head, and the auxiliary
    heads of both papers (ANN's Stage4 head; Denoised NL's ``DenoisedNLOutput``).

    Args:
        in_channels: channels of the feature map.
        mid_channels: channels of the 3x3 convolution.
        num_classes: number of classes K.
        dropout: Dropout2d rate before the classifier.
        norm_layer: normalisation class.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        num_classes: int,
        *,
        dropout: float,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, mid_channels, 3, norm_layer=norm_layer),
            nn.Dropout2d(dropout),
            nn.Conv2d(mid_channels, num_classes, 1),
        )


class Segmentor(nn.Module, ABC):
    """Base of every model: builds the backbone and the auxiliary heads and resizes all logits to the input.

    Subclasses build their main branch and implement :meth:`decode`.

    Args:
        num_classes: number of classes K.
        backbone: backbone name (``nlseg.backbones.list_backbones()``), e.g. ``"resnet101"``.
        pretrained_backbone: local weights file for the backbone, or None.
        norm_layer: normalisation class used everywhere (BatchNorm2d, SyncBatchNorm, ...).
        backbone_width: base width of the backbone (64 is the standard network).
        output_stride: 8, 16 or 32.
        stem: ``"classic"`` or ``"deep"``.
        multi_grid: layer4 multi-grid factors, or None.
        dilate_first_block: the first block of a dilated stage takes the stage's dilation (released
            Denoised NL backbone) instead of the previous one (torchvision).
        head_channels: hidden width of the heads (512 in both papers).
        aux_layers: stages with an auxiliary head, a subset of :data:`AUX_LAYERS`, in output order.
        align_corners: ``align_corners`` of every bilinear resize of the model (both papers' code: True).
        grad_checkpointing: recompute backbone activations in the backward pass to save memory.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str,
        pretrained_backbone: str | os.PathLike[str] | None,
        norm_layer: type[nn.Module],
        backbone_width: int,
        output_stride: int,
        stem: str,
        multi_grid: tuple[int, ...] | None,
        dilate_first_block: bool,
        head_channels: int,
        aux_layers: Sequence[str],
        align_corners: bool,
        grad_checkpointing: bool,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{name}: num_classes must be a positive int, got {num_classes!r}")
        if head_channels < 8:
            raise ValueError(
                f"{name}: head_channels must be at least 8 (layer2's head uses 1/8 of it), got {head_channels}"
            )
        unknown = [stage for stage in aux_layers if stage not in AUX_LAYERS]
        if unknown or len(set(aux_layers)) != len(aux_layers):
            raise ValueError(
                f"{name}: aux_layers must be distinct stages of {tuple(AUX_LAYERS)}, got {tuple(aux_layers)}"
            )
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.backbone = create_backbone(
            backbone,
            pretrained=pretrained_backbone,
            output_stride=output_stride,
            stem=stem,
            multi_grid=multi_grid,
            dilate_first_block=dilate_first_block,
            norm_layer=norm_layer,
            width=backbone_width,
            checkpointing=grad_checkpointing,
        )
        channels = self.backbone.stage_channels
        self.aux_heads = nn.ModuleDict(
            {
                stage: SegHead(
                    channels[stage],
                    head_channels // AUX_LAYERS[stage],
                    num_classes,
                    dropout=AUX_DROPOUT,
                    norm_layer=norm_layer,
                )
                for stage in aux_layers
            }
        )

    @abstractmethod
    def decode(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        """Main-branch logits (B, K, h, w) from the backbone's stage maps and the auxiliary logits by stage."""

    def resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """Bilinear resize to ``size`` with the model's ``align_corners``."""
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """x (B, 3, H, W) -> {"out": (B, K, H, W), "aux": [(B, K, H, W) per aux layer]}."""
        features = self.backbone(x)
        aux = {stage: head(features[stage]) for stage, head in self.aux_heads.items()}
        out = self.decode(features, aux)
        size = x.shape[-2:]
        return {"out": self.resize(out, size), "aux": [self.resize(logits, size) for logits in aux.values()]}
