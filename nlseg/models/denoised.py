"""The Denoised NL network and its comparison rows (Song et al., TNNLS 2023, §III-B, §III-F, Fig. 3, Tables II-V).

    X = layer4 (2048 ch, 1/8) ─ Reduction: conv3x3 -> 512 + BN + ReLU,
                                 basic block stride 2 (shortcut conv3x3/2 + BN + ReLU)      -> F (512 ch, 1/16)
    F ─ block ─ upsample to X's size ─ conv3x3 512 -> 512 + BN + ReLU ─┐
    X ─────────────────────────────────────────────────────────────────┼─ concat ─ conv3x3 -> 512 + BN + ReLU
    X ─ global average pool ─ conv1x1 -> 512 ─ ReLU ─ broadcast ───────┘           + Dropout2d(0.05) + conv1x1 -> K
    layer2 ─ conv3x3 -> 64 + BN + ReLU + Dropout2d(0.05) + conv1x1 -> K            (auxiliary, λ1 = 1)
    layer3 ─ conv3x3 -> 512 + BN + ReLU + Dropout2d(0.05) + conv1x1 -> K           (auxiliary, λ2 = 1; GR's input)

Backbone as released: deep stem, output stride 8, every layer3 block dilated 2, layer4 dilations (4, 8, 16).
Initialisation as released (``init="released"``, :func:`released_init`): every convolution, the backbone's
included, ``kaiming_normal_(a=1)`` on its fan-in, every norm weight 1 and bias 0; then the ImageNet weights, if
given, replace the backbone's. ``init="pytorch"`` keeps each module's own initialisation (the backbone's Kaiming
fan-out, PyTorch's defaults elsewhere).
"block" is the Denoised NL block (:func:`denoised_nl`), or another block in the same place for the
comparison rows of Tables III and IV, or nothing (the tables' Baseline, ``dnl_baseline_r*``).

The global-context branch follows the paper's Fig. 3 ("global average pooling followed with a 1×1
convolution on X"); the released model has none (``global_context=False``). It has a ReLU and no norm:
a norm over a 1 x 1 map sees one value per image and channel, which is noisy for small batches and fails
outright for one image per norm group.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.backbones import BasicBlock, load_backbone_weights
from nlseg.blocks import block_options, create_block, list_blocks
from nlseg.blocks.layers import ConvNormAct
from nlseg.models.base import BackboneOptions, SegHead, Segmentor, build_aux_heads

__all__ = [
    "DENOISED_NL_BACKBONE",
    "INITS",
    "DenoisedNLDecoder",
    "comparison_block",
    "denoised_nl",
    "denoised_nl_pipeline",
    "released_init",
]

HEAD_DROPOUT = 0.05
INITS: tuple[str, ...] = ("released", "pytorch")
"""Initialisations of the Denoised NL networks: the released code's (:func:`released_init`), or PyTorch's."""
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

DENOISED_NL_BACKBONE = BackboneOptions(stem="deep", multi_grid=(1, 2, 4), dilate_first_block=True)
"""The released Denoised NL backbone: deep stem, every layer3 block at dilation 2, layer4 at (4, 8, 16)."""

BlockFactory = Callable[[int, type[nn.Module]], nn.Module]
"""Builds a context block from (channels, norm_layer)."""


def denoised_nl(
    *,
    num_classes: int,
    pretrained_backbone: str | os.PathLike[str] | None = None,
    backbone_options: BackboneOptions = DENOISED_NL_BACKBONE,
    head_channels: int = 512,
    dropout: float = HEAD_DROPOUT,
    global_context: bool = True,
    align_corners: bool = True,
    key_channels: int = 64,
    kernel_size: int = 3,
    rectify: bool = True,
    retain: bool = True,
    detach_class_probs: bool = False,
    qkv_bias: bool = False,
    init: str = "released",
    class_map_source: Literal["layer3_head", "features"] = "layer3_head",
) -> Segmentor:
    """The Denoised NL network (§III-B, §III-F): the pipeline with the Denoised NL block at 1/16.

    Global Rectifying reads the layer3 auxiliary head's logits; the block resizes them to its H x W
    (bilinear, align_corners=True) and takes the softmax over classes, as released. The same logits are
    the second auxiliary output. ``rectify=False`` / ``retain=False`` give the rows of Table II.

    Args:
        num_classes: number of classes K.
        pretrained_backbone: weights file or name (`nlseg list weights`) for the backbone (deep-stem layout by
            default), or None.
        backbone_options: the backbone and the norm of every part (default :data:`DENOISED_NL_BACKBONE`).
        head_channels: channels of F (and so the block's Cv), of the head and of the layer3 auxiliary head.
        dropout: Dropout2d rate of the head (0.05).
        global_context: add the paper's global-context branch (the released model has none).
        align_corners: of the model's own bilinear resizes (the block's class-map resize is always True).
        key_channels: Ck of the block's queries and keys (64).
        kernel_size: Local Retention window (3).
        rectify: Global Rectifying on.
        retain: Local Retention on.
        detach_class_probs: stop GR's gradient from reaching the layer3 head (released: it does reach it).
        qkv_bias: give the block's q, k and v convolutions a bias (released: none).
        init: ``"released"`` (:func:`released_init`) or ``"pytorch"`` (each module's own initialisation).
        class_map_source: where Global Rectifying's class map comes from: ``"layer3_head"`` the layer3 auxiliary
            head's logits (released ``DNL.conv_out3(x2)``), or ``"features"`` a 1x1 convolution F -> K on the
            block's input (§III-D: "predict the coarse segmentation result P_coarse ... via a 1 × 1
            convolutional layer"), not supervised, softmax over classes as released.
    """
    sources = ("layer3_head", "features")
    if class_map_source not in sources:
        raise ValueError(f"denoised_nl: unknown class_map_source {class_map_source!r}; expected one of {sources}")
    if class_map_source == "features" and (not rectify or detach_class_probs):
        raise ValueError("denoised_nl: class_map_source='features' needs rectify=True and detach_class_probs=False")
    block = functools.partial(
        create_block,
        "denoised_nl",
        key_channels=key_channels,
        kernel_size=kernel_size,
        rectify=rectify,
        retain=retain,
        class_input="logits",
        qkv_bias=qkv_bias,
    )  # DenoisedNL has no norm: it takes no norm_layer
    return _pipeline(
        lambda channels, norm_layer: block(channels),
        class_stage="layer3" if rectify and class_map_source == "layer3_head" else None,
        class_conv=class_map_source == "features",
        detach_class_probs=detach_class_probs,
        num_classes=num_classes,
        pretrained_backbone=pretrained_backbone,
        backbone_options=backbone_options,
        head_channels=head_channels,
        dropout=dropout,
        global_context=global_context,
        align_corners=align_corners,
        init=init,
    )


def denoised_nl_pipeline(
    block: str | BlockFactory | None,
    *,
    num_classes: int,
    pretrained_backbone: str | os.PathLike[str] | None = None,
    backbone_options: BackboneOptions = DENOISED_NL_BACKBONE,
    head_channels: int = 512,
    dropout: float = HEAD_DROPOUT,
    global_context: bool = True,
    align_corners: bool = True,
    init: str = "released",
) -> Segmentor:
    """The Denoised NL paper's pipeline (Fig. 3) with any block of ``nlseg.blocks.list_blocks()``, or none, at 1/16.

    Args:
        block: a ``create_block`` name (built by :func:`comparison_block`), a function building the block
            from (channels, norm_layer), or None for the Baseline of Tables II-V.
        num_classes: number of classes K.
        pretrained_backbone: weights file or name (`nlseg list weights`) for the backbone (deep-stem layout by
            default), or None.
        backbone_options: the backbone and the norm of every part (default :data:`DENOISED_NL_BACKBONE`).
        head_channels: channels of the reduced map F, of the head, and of the layer3 auxiliary head (512);
            the layer2 auxiliary head has ``head_channels // 8``.
        dropout: Dropout2d rate of the head (0.05).
        global_context: add the paper's global-context branch to the concatenation (the released model
            has none).
        align_corners: of the bilinear resizes, the x2 upsampling included (released: True).
        init: ``"released"`` (:func:`released_init`) or ``"pytorch"`` (each module's own initialisation).
    """
    if isinstance(block, str):
        if block not in list_blocks():
            raise ValueError(f"denoised_nl_pipeline: unknown block {block!r}; expected one of {list_blocks()} or None")
        block = functools.partial(comparison_block, block)
    return _pipeline(
        block,
        class_stage=None,
        class_conv=False,
        detach_class_probs=False,
        num_classes=num_classes,
        pretrained_backbone=pretrained_backbone,
        backbone_options=backbone_options,
        head_channels=head_channels,
        dropout=dropout,
        global_context=global_context,
        align_corners=align_corners,
        init=init,
    )


def comparison_block(name: str, channels: int, norm_layer: type[nn.Module]) -> nn.Module:
    """``create_block(name, channels)`` with the model's norm where the block has one: the block the Denoised NL
    tables put in place of Denoised NL (Tables III and IV), on the reduced map's C channels, returning C
    channels, so the rest of the pipeline is the Baseline's and a row's extra cost is its block's."""
    norm = {"norm_layer": norm_layer} if "norm_layer" in block_options(name) else {}
    return create_block(name, channels, **norm)


def _pipeline(
    block: BlockFactory | None,
    *,
    class_stage: str | None,
    class_conv: bool,
    detach_class_probs: bool,
    num_classes: int,
    pretrained_backbone: str | os.PathLike[str] | None,
    backbone_options: BackboneOptions,
    head_channels: int,
    dropout: float,
    global_context: bool,
    align_corners: bool,
    init: str,
) -> Segmentor:
    """Backbone, the layer2 and layer3 auxiliary heads, and the pipeline's decoder around ``block``; initialised
    by ``init``, then the backbone's pretrained weights loaded."""
    if init not in INITS:
        raise ValueError(f"Denoised NL pipeline: unknown init {init!r}; expected one of {INITS}")
    norm_layer = backbone_options.norm_layer
    backbone = backbone_options.build()
    aux_heads = build_aux_heads(
        backbone.stage_channels,
        ("layer2", "layer3"),
        head_channels=head_channels,
        num_classes=num_classes,
        norm_layer=norm_layer,
    )
    channels = backbone.out_channels
    shortcut = nn.Sequential(
        nn.Conv2d(head_channels, head_channels, 3, stride=2, padding=1, bias=False),
        norm_layer(head_channels),
        nn.ReLU(inplace=True),
    )
    reduction = nn.Sequential(
        ConvNormAct(channels, head_channels, 3, norm_layer=norm_layer),
        BasicBlock(head_channels, head_channels, stride=2, downsample=shortcut, norm_layer=norm_layer),
    )
    context = None if block is None else block(head_channels, norm_layer)
    block_channels = head_channels if context is None else context.out_channels
    fuse = ConvNormAct(block_channels, head_channels, 3, norm_layer=norm_layer)
    pooled = (
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, head_channels, 1), nn.ReLU(inplace=True))
        if global_context
        else None
    )
    concat = channels + head_channels * (2 if global_context else 1)
    head = SegHead(concat, head_channels, num_classes, dropout=dropout, norm_layer=norm_layer)
    decoder = DenoisedNLDecoder(
        reduction,
        context,
        fuse,
        pooled,
        head,
        class_stage=class_stage,
        class_conv=nn.Conv2d(head_channels, num_classes, 1) if class_conv else None,
        detach_class_probs=detach_class_probs,
        align_corners=align_corners,
    )
    model = Segmentor(backbone, decoder, aux_heads, num_classes=num_classes, align_corners=align_corners)
    if init == "released":
        released_init(model)
    if pretrained_backbone is not None:
        load_backbone_weights(backbone, pretrained_backbone)
    return model


def released_init(model: nn.Module) -> None:
    """The released Denoised NL network's initialisation: every Conv2d weight ``kaiming_normal_(a=1)`` (fan-in,
    gain 1: std 1/sqrt(fan-in)), every norm weight 1 and bias 0; conv biases keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, a=1)
        elif isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class DenoisedNLDecoder(nn.Module):
    """The Denoised NL pipeline's decoder (§III-B, Fig. 3): reduction to 1/16, block, x2 upsampling, fusion with X.

    Args:
        reduction: X (B, 2048, h, w) -> F (B, C, h/2, w/2).
        block: the context block on F, or None (the Baseline). With ``class_stage`` it takes F and the
            auxiliary logits of that stage (the Denoised NL block's Global Rectifying).
        fuse: the block's output -> C channels (conv3x3 + norm + ReLU), after upsampling to X's size.
        global_context: X -> (B, C, 1, 1) (the paper's global-context branch), or None.
        head: cat(X, fused[, global context]) -> K logits.
        class_stage: the stage whose auxiliary logits the block reads, or None.
        class_conv: F -> K logits for the block (the paper's Global Rectifying input, §III-D), or None.
        detach_class_probs: stop the block's gradient from reaching those logits.
        align_corners: of the x2 upsampling.
    """

    def __init__(
        self,
        reduction: nn.Module,
        block: nn.Module | None,
        fuse: nn.Module,
        global_context: nn.Module | None,
        head: nn.Module,
        *,
        class_stage: str | None,
        class_conv: nn.Module | None = None,
        detach_class_probs: bool,
        align_corners: bool,
    ) -> None:
        super().__init__()
        if class_stage is not None and class_conv is not None:
            raise ValueError("DenoisedNLDecoder: the class map comes from class_stage or class_conv, not both")
        self.reduction = reduction
        self.block = block
        self.fuse = fuse
        self.global_context = global_context
        self.head = head
        self.class_stage = class_stage
        if class_conv is not None:  # only then: a model without it keeps its state-dict keys
            self.class_conv = class_conv
        self.detach_class_probs = detach_class_probs
        self.align_corners = align_corners

    @property
    def aux_inputs(self) -> tuple[str, ...]:
        """The auxiliary logits the decoder reads: ``class_stage``'s (Global Rectifying's class map), if any."""
        return () if self.class_stage is None else (self.class_stage,)

    def apply_block(self, x: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """The block on the reduced map x (B, C, h, w); ``aux`` holds the auxiliary logits by stage."""
        if self.block is None:
            return x
        if hasattr(self, "class_conv"):
            return self.block(x, self.class_conv(x))  # the paper's P_coarse: (B, K, h, w), softmaxed in the block
        if self.class_stage is None:
            return self.block(x)
        logits = aux[self.class_stage]  # (B, K, H/8, W/8), resized and softmaxed inside the block
        return self.block(x, logits.detach() if self.detach_class_probs else logits)

    def forward(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        """Logits (B, K, H/8, W/8) from layer4 and, for Global Rectifying, the auxiliary logits."""
        x = features["layer4"]  # X: (B, 2048, H/8, W/8)
        context = self.apply_block(self.reduction(x), aux)  # (B, C_block, H/16, W/16)
        # Released: upsample to (2h, 2w). X's own size is the same for even sizes and also fits odd ones.
        up = F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        parts = [x, self.fuse(up)]  # + (B, 512, H/8, W/8)
        if self.global_context is not None:
            parts.append(self.global_context(x).expand(-1, -1, *x.shape[-2:]))  # (B, 512, H/8, W/8)
        return self.head(torch.cat(parts, dim=1))  # (B, K, H/8, W/8)
