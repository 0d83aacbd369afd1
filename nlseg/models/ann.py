"""The Asymmetric Non-local Network and every row of its ablation (Zhu et al., ICCV 2019, §3.4, Table 6).

    layer3 ("Stage4", 1024 ch) ─┐
    layer4 ("Stage5", 2048 ch) ─┴─ [fusion] ─ conv3x3 -> 512 + BN + ReLU ─ [context] ─ conv1x1 -> K
    layer3 ─ conv3x3 -> 512 + BN + ReLU + Dropout2d(0.05) + conv1x1 -> K     (auxiliary, loss weight 0.4)

fusion: AFNB(1024, 2048 -> 2048, key 256, value 256), FNB (AFNB without pyramid sampling) or common
fusion (stage5 + ReLU(BN(conv1x1(stage4)))); context: APNB(512, key 256, value 256) or the plain
non-local block in ANN's concatenation form (NB). The full model (AFNB + APNB) is the released one.
"""
from __future__ import annotations

import os

from torch import Tensor, nn

from nlseg.blocks import create_block
from nlseg.blocks.layers import ConvNormAct
from nlseg.models.base import Segmentor

__all__ = ["ANN", "CONTEXTS", "FUSIONS"]

FUSIONS: tuple[str, ...] = ("common_fusion", "fnb", "afnb")
CONTEXTS: tuple[str, ...] = ("nb", "apnb")


class ANN(Segmentor):
    """Asymmetric Non-local Network (ANN §3.4, Fig. 3) with any fusion / context pair of Table 6.

    Dropout: AFNB, FNB, APNB and NB end with Dropout2d(``dropout``), as released; the full model then
    applies the classifier directly. Rows without a context block get Dropout2d(``dropout``) before the
    classifier instead, so every row has exactly one dropout on its main branch.

    Args:
        fusion: one of :data:`FUSIONS`, or None.
        context: one of :data:`CONTEXTS`, or None.
        num_classes: number of classes K.
        backbone: backbone name, e.g. ``"resnet101"``.
        pretrained_backbone: local weights file for the backbone, or None.
        norm_layer: normalisation class used everywhere.
        backbone_width: base width of the backbone (64 = standard).
        output_stride: 8 in the paper.
        stem: ``"classic"`` (default) or ``"deep"`` (the released code's ``deepbase_resnet101``).
        head_channels: channels after the 3x3 reduction and of the auxiliary head (512).
        key_channels: key/query channels of the attention blocks (256; unused by common fusion).
        value_channels: value channels of the attention blocks (256; unused by common fusion).
        dropout: Dropout2d rate of the main branch (0.05).
        align_corners: of the bilinear resizes (released: True).
        grad_checkpointing: recompute backbone activations in the backward pass.
    """

    def __init__(
        self,
        fusion: str | None,
        context: str | None,
        *,
        num_classes: int,
        backbone: str = "resnet101",
        pretrained_backbone: str | os.PathLike[str] | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        backbone_width: int = 64,
        output_stride: int = 8,
        stem: str = "classic",
        head_channels: int = 512,
        key_channels: int = 256,
        value_channels: int = 256,
        dropout: float = 0.05,
        align_corners: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        if fusion is not None and fusion not in FUSIONS:
            raise ValueError(f"ANN: unknown fusion {fusion!r}; expected one of {FUSIONS} or None")
        if context is not None and context not in CONTEXTS:
            raise ValueError(f"ANN: unknown context {context!r}; expected one of {CONTEXTS} or None")
        super().__init__(
            num_classes=num_classes,
            backbone=backbone,
            pretrained_backbone=pretrained_backbone,
            norm_layer=norm_layer,
            backbone_width=backbone_width,
            output_stride=output_stride,
            stem=stem,
            multi_grid=None,
            dilate_first_block=False,
            head_channels=head_channels,
            aux_layers=("layer3",),
            align_corners=align_corners,
            grad_checkpointing=grad_checkpointing,
        )
        low, high = self.backbone.stage_channels["layer3"], self.backbone.stage_channels["layer4"]
        attention = dict(key_channels=key_channels, value_channels=value_channels, dropout=dropout)
        self.fusion: nn.Module | None = None
        if fusion == "common_fusion":
            self.fusion = create_block(fusion, high, low_channels=low, norm_layer=norm_layer)
        elif fusion is not None:  # AFNB / FNB: out_channels = high
            self.fusion = create_block(fusion, high, low_channels=low, norm_layer=norm_layer, **attention)
        self.reduce = ConvNormAct(high, head_channels, 3, norm_layer=norm_layer)
        self.context: nn.Module | None = None
        if context == "apnb":
            self.context = create_block("apnb", head_channels, norm_layer=norm_layer, **attention)
        elif context == "nb":
            self.context = create_block("nb", head_channels, norm_layer=norm_layer, **attention)
        self.dropout = nn.Dropout2d(dropout) if self.context is None else nn.Identity()
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def decode(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        x = features["layer4"]  # (B, 2048, H/8, W/8)
        if self.fusion is not None:
            x = self.fusion(features["layer3"], x)  # (B, 2048, H/8, W/8)
        x = self.reduce(x)  # (B, 512, H/8, W/8)
        if self.context is not None:
            x = self.context(x)
        return self.classifier(self.dropout(x))
