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
from nlseg.models.base import BackboneOptions, Segmentor, build_aux_heads

__all__ = ["ANNDecoder", "ANN_BACKBONE", "CONTEXTS", "FUSIONS", "ann"]

FUSIONS: tuple[str, ...] = ("common_fusion", "fnb", "afnb")
CONTEXTS: tuple[str, ...] = ("nb", "apnb")

ANN_BACKBONE = BackboneOptions(fixed=frozenset({"multi_grid", "dilate_first_block"}))
"""ANN's backbone: classic stem, output stride 8, no multi-grid (fixed, as released)."""


def ann(
    fusion: str | None,
    context: str | None,
    *,
    num_classes: int,
    pretrained_backbone: str | os.PathLike[str] | None = None,
    backbone_options: BackboneOptions = ANN_BACKBONE,
    head_channels: int = 512,
    key_channels: int = 256,
    value_channels: int = 256,
    dropout: float = 0.05,
    align_corners: bool = True,
) -> Segmentor:
    """Asymmetric Non-local Network (ANN §3.4, Fig. 3) with any fusion / context pair of Table 6.

    Dropout: AFNB, FNB, APNB and NB end with Dropout2d(``dropout``), as released; the full model then
    applies the classifier directly. Rows without a context block get Dropout2d(``dropout``) before the
    classifier instead, so every row has exactly one dropout on its main branch.

    Args:
        fusion: one of :data:`FUSIONS`, or None.
        context: one of :data:`CONTEXTS`, or None.
        num_classes: number of classes K.
        pretrained_backbone: weights file or name (`nlseg list weights`) for the backbone, or None.
        backbone_options: the backbone and the norm of every part (default :data:`ANN_BACKBONE`).
        head_channels: channels after the 3x3 reduction and of the auxiliary head (512).
        key_channels: key/query channels of the attention blocks (256; unused by common fusion).
        value_channels: value channels of the attention blocks (256; unused by common fusion).
        dropout: Dropout2d rate of the main branch (0.05).
        align_corners: of the bilinear resizes (released: True).
    """
    if fusion is not None and fusion not in FUSIONS:
        raise ValueError(f"ANN: unknown fusion {fusion!r}; expected one of {FUSIONS} or None")
    if context is not None and context not in CONTEXTS:
        raise ValueError(f"ANN: unknown context {context!r}; expected one of {CONTEXTS} or None")
    norm_layer = backbone_options.norm_layer
    backbone = backbone_options.build(pretrained_backbone)
    aux_heads = build_aux_heads(  # ANN's Stage4 head
        backbone.stage_channels,
        ("layer3",),
        head_channels=head_channels,
        num_classes=num_classes,
        norm_layer=norm_layer,
    )
    low, high = backbone.stage_channels["layer3"], backbone.stage_channels["layer4"]
    attention = dict(key_channels=key_channels, value_channels=value_channels, dropout=dropout)
    fusion_block = None
    if fusion == "common_fusion":
        fusion_block = create_block(fusion, high, low_channels=low, norm_layer=norm_layer)
    elif fusion is not None:  # AFNB / FNB: out_channels = high
        fusion_block = create_block(fusion, high, low_channels=low, norm_layer=norm_layer, **attention)
    reduce = ConvNormAct(high, head_channels, 3, norm_layer=norm_layer)
    context_block = None
    if context is not None:  # APNB / NB on the reduced map
        context_block = create_block(context, head_channels, norm_layer=norm_layer, **attention)
    decoder = ANNDecoder(
        fusion_block,
        reduce,
        context_block,
        dropout=nn.Dropout2d(dropout) if context_block is None else nn.Identity(),
        classifier=nn.Conv2d(head_channels, num_classes, 1),
    )
    return Segmentor(backbone, decoder, aux_heads, num_classes=num_classes, align_corners=align_corners)


class ANNDecoder(nn.Module):
    """ANN's main branch (§3.4, Fig. 3): [fusion of stages 4 and 5] -> reduce -> [context] -> dropout -> classifier.

    Args:
        fusion: ``fusion(layer3, layer4)`` -> a map of layer4's shape (AFNB, FNB, common fusion), or None.
        reduce: layer4's channels -> the head's (conv3x3 + norm + ReLU).
        context: a block on the reduced map keeping its shape (APNB, NB), or None.
        dropout: before the classifier (an ``nn.Identity`` where the context block ends with its own).
        classifier: the head's channels -> K.
    """

    aux_inputs: tuple[str, ...] = ()
    """The auxiliary logits the decoder reads: none."""

    def __init__(
        self,
        fusion: nn.Module | None,
        reduce: nn.Module,
        context: nn.Module | None,
        *,
        dropout: nn.Module,
        classifier: nn.Module,
    ) -> None:
        super().__init__()
        self.fusion = fusion
        self.reduce = reduce
        self.context = context
        self.dropout = dropout
        self.classifier = classifier

    def forward(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        """Logits (B, K, H/8, W/8) from layer3 and layer4; ``aux`` is not read."""
        x = features["layer4"]  # (B, 2048, H/8, W/8)
        if self.fusion is not None:
            x = self.fusion(features["layer3"], x)  # (B, 2048, H/8, W/8)
        x = self.reduce(x)  # (B, 512, H/8, W/8)
        if self.context is not None:
            x = self.context(x)  # (B, 512, H/8, W/8)
        return self.classifier(self.dropout(x))  # (B, K, H/8, W/8)
