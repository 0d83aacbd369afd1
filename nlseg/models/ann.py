"""The Asymmetric Non-local Network and every row of its ablation (Zhu et al., ICCV 2019, §3.4, Table 6).

    layer3 ("Stage4", 1024 ch) ─┐
    layer4 ("Stage5", 2048 ch) ─┴─ [fusion] ─ conv3x3 -> 512 + BN + ReLU ─ [context] ─ conv1x1 -> K
    layer3 ─ conv3x3 -> 512 + BN + ReLU + Dropout2d(0.05) + conv1x1 -> K     (auxiliary, loss weight 0.4)

fusion: AFNB(1024, 2048 -> 2048, key 256, value 256), FNB (AFNB without pyramid sampling) or common
fusion (stage5 + ReLU(BN(conv1x1(stage4)))); context: APNB(512, key 256, value 256) or the plain
non-local block in ANN's concatenation form (NB). The full model (AFNB + APNB) is the released one.

Ablations reached by options (defaults: the released model): the APNB's sampling (``context_pool_sizes``,
``context_pool_mode``: Table 7), the stages fused into Stage5 (``fusion_stages``: Table 9, one fusion block per
low stage, their outputs summed), and the switches where the paper and the release differ (docs/models.md).
"""
from __future__ import annotations

import os
from typing import Literal

from torch import Tensor, nn

from nlseg.blocks import create_block
from nlseg.blocks.layers import ConvNormAct
from nlseg.models.base import BackboneOptions, Segmentor, build_aux_heads
from nlseg.ops import POOL_MODES

__all__ = ["ANNDecoder", "ANN_BACKBONE", "CONTEXTS", "FUSIONS", "LOW_STAGES", "ann"]

FUSIONS: tuple[str, ...] = ("common_fusion", "fnb", "afnb")
CONTEXTS: tuple[str, ...] = ("nb", "apnb")
LOW_STAGES: dict[str, str] = {"layer1": "Stage2", "layer2": "Stage3", "layer3": "Stage4"}
"""Stages a fusion block can fuse into Stage5 (layer4), with ANN's names for them (Table 9)."""

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
    context_pool_sizes: tuple[int, ...] = (1, 3, 6, 8),
    context_pool_mode: Literal["avg", "max", "random"] = "avg",
    fusion_stages: tuple[Literal["layer1", "layer2", "layer3"], ...] = ("layer3",),
    share_key_query: bool = True,
    share_key_value: bool = False,
    norm_after_wo: bool = False,
    scaled_attention: bool = True,
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
        context_pool_sizes: APNB's pyramid levels n (S = Σ n² anchors; Table 7), released (1, 3, 6, 8).
        context_pool_mode: APNB's sampling, "avg" (released), "max" or "random" (Table 7).
        fusion_stages: the stages fused into Stage5, one fusion block each, their outputs summed (Table 9):
            ("layer3",) is "4 & 5" (released), ("layer2", "layer3") "3 & 5, 4 & 5", with "layer1" "2 & 5".
        share_key_query: APNB's key and query share one conv + BN + ReLU (released).
        share_key_value: APNB's key and value share it instead (the paper's Fig. 3 caption and §3.4); needs
            ``share_key_query=False``.
        norm_after_wo: AFNB / FNB with a BN after ``Wo`` (the supplement's advice for AFNB alone; released: none).
        scaled_attention: Ck^-1/2 on q · k in APNB, AFNB, FNB and NB (released); False: the paper's Eq. 2, 9, 15.
    """
    if fusion is not None and fusion not in FUSIONS:
        raise ValueError(f"ANN: unknown fusion {fusion!r}; expected one of {FUSIONS} or None")
    if context is not None and context not in CONTEXTS:
        raise ValueError(f"ANN: unknown context {context!r}; expected one of {CONTEXTS} or None")
    if context_pool_mode not in POOL_MODES:
        raise ValueError(f"ANN: unknown context_pool_mode {context_pool_mode!r}; expected one of {POOL_MODES}")
    stages = tuple(fusion_stages)
    if not stages or len(set(stages)) != len(stages) or any(s not in LOW_STAGES for s in stages):
        raise ValueError(f"ANN: fusion_stages must be distinct stages of {tuple(LOW_STAGES)}, got {fusion_stages!r}")
    apnb_options = dict(pool_sizes=tuple(context_pool_sizes), pool_mode=context_pool_mode,
                        share_key_query=share_key_query, share_key_value=share_key_value, scaled=scaled_attention)
    released_apnb = dict(pool_sizes=(1, 3, 6, 8), pool_mode="avg", share_key_query=True, share_key_value=False)
    if context != "apnb" and any(apnb_options[key] != value for key, value in released_apnb.items()):
        raise ValueError(f"ANN: context_pool_sizes, context_pool_mode and the key sharing are APNB's options; "
                         f"context is {context!r}")
    if fusion not in ("afnb", "fnb") and norm_after_wo:
        raise ValueError(f"ANN: norm_after_wo is an option of AFNB and FNB; fusion is {fusion!r}")
    if fusion is None and stages != ("layer3",):
        raise ValueError(f"ANN: fusion_stages {fusion_stages!r} without a fusion block")
    norm_layer = backbone_options.norm_layer
    backbone = backbone_options.build(pretrained_backbone)
    aux_heads = build_aux_heads(  # ANN's Stage4 head
        backbone.stage_channels,
        ("layer3",),
        head_channels=head_channels,
        num_classes=num_classes,
        norm_layer=norm_layer,
    )
    high = backbone.stage_channels["layer4"]
    attention = dict(key_channels=key_channels, value_channels=value_channels, dropout=dropout)

    def fusion_block(low: int) -> nn.Module:
        if fusion == "common_fusion":
            return create_block(fusion, high, low_channels=low, norm_layer=norm_layer)
        return create_block(  # AFNB / FNB: out_channels = high
            fusion, high, low_channels=low, norm_layer=norm_layer, norm_after_wo=norm_after_wo,
            scaled=scaled_attention, **attention,
        )

    fusion_blocks: nn.Module | None = None
    if fusion is not None and stages == ("layer3",):
        fusion_blocks = fusion_block(backbone.stage_channels["layer3"])  # released: one block, its own keys
    elif fusion is not None:
        fusion_blocks = nn.ModuleDict({stage: fusion_block(backbone.stage_channels[stage]) for stage in stages})
    reduce = ConvNormAct(high, head_channels, 3, norm_layer=norm_layer)
    context_block = None
    if context == "apnb":
        context_block = create_block(context, head_channels, norm_layer=norm_layer, **attention, **apnb_options)
    elif context == "nb":
        context_block = create_block(
            context, head_channels, norm_layer=norm_layer, scale="sqrt" if scaled_attention else "none", **attention
        )
    decoder = ANNDecoder(
        fusion_blocks,
        reduce,
        context_block,
        dropout=nn.Dropout2d(dropout) if context_block is None else nn.Identity(),
        classifier=nn.Conv2d(head_channels, num_classes, 1),
    )
    return Segmentor(backbone, decoder, aux_heads, num_classes=num_classes, align_corners=align_corners)


class ANNDecoder(nn.Module):
    """ANN's main branch (§3.4, Fig. 3): [fusion of stages 4 and 5] -> reduce -> [context] -> dropout -> classifier.

    Args:
        fusion: ``fusion(layer3, layer4)`` -> a map of layer4's shape (AFNB, FNB, common fusion); or an
            ``nn.ModuleDict`` {low stage: such a block}, whose outputs ``block(features[stage], layer4)`` are summed
            (ANN Table 9); or None.
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
        if isinstance(self.fusion, nn.ModuleDict):  # Table 9: one block per low stage, responses summed
            x = sum(block(features[stage], x) for stage, block in self.fusion.items())  # (B, 2048, H/8, W/8)
        elif self.fusion is not None:
            x = self.fusion(features["layer3"], x)  # (B, 2048, H/8, W/8)
        x = self.reduce(x)  # (B, 512, H/8, W/8)
        if self.context is not None:
            x = self.context(x)  # (B, 512, H/8, W/8)
        return self.classifier(self.dropout(x))  # (B, K, H/8, W/8)
