"""The Denoised NL network and its comparison rows (Song et al., TNNLS 2023, §III-B, §III-F, Fig. 3, Tables II-V).

    X = layer4 (2048 ch, 1/8) ─ Reduction: conv3x3 -> 512 + BN + ReLU,
                                 basic block stride 2 (shortcut conv3x3/2 + BN + ReLU)      -> F (512 ch, 1/16)
    F ─ block ─ upsample to X's size ─ conv3x3 512 -> 512 + BN + ReLU ─┐
    X ─────────────────────────────────────────────────────────────────┼─ concat ─ conv3x3 -> 512 + BN + ReLU
    X ─ global average pool ─ conv1x1 -> 512 ─ ReLU ─ broadcast ───────┘           + Dropout2d(0.05) + conv1x1 -> K
    layer2 ─ conv3x3 -> 64 + BN + ReLU + Dropout2d(0.05) + conv1x1 -> K            (auxiliary, λ1 = 1)
    layer3 ─ conv3x3 -> 512 + BN + ReLU + Dropout2d(0.05) + conv1x1 -> K           (auxiliary, λ2 = 1; GR's input)

Backbone as released: deep stem, output stride 8, every layer3 block dilated 2, layer4 dilations (4, 8, 16).
"block" is the Denoised NL block (:class:`DenoisedNLNet`), or another block in the same place for the
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

import torch
from torch import Tensor, nn

from nlseg.backbones import BasicBlock
from nlseg.blocks import block_options, create_block, list_blocks
from nlseg.blocks.layers import ConvNormAct
from nlseg.models.base import SegHead, Segmentor

__all__ = ["DenoisedNLNet", "DenoisedNLPipeline", "comparison_block"]

HEAD_DROPOUT = 0.05


BlockFactory = Callable[[int, type[nn.Module]], nn.Module]
"""Builds a context block from (channels, norm_layer)."""


def comparison_block(name: str, channels: int, norm_layer: type[nn.Module]) -> nn.Module:
    """``create_block(name, channels)`` with the model's norm where the block has one: the block the Denoised NL
    tables put in place of Denoised NL (Tables III and IV), on the reduced map's C channels, returning C
    channels, so the rest of the pipeline is the Baseline's and a row's extra cost is its block's."""
    norm = {"norm_layer": norm_layer} if "norm_layer" in block_options(name) else {}
    return create_block(name, channels, **norm)


class DenoisedNLPipeline(Segmentor):
    """The Denoised NL paper's pipeline (Fig. 3) with any block of ``nlseg.blocks.list_blocks()``, or none, at 1/16.

    Args:
        block: a ``create_block`` name (built by :func:`comparison_block`), a function building the block
            from (channels, norm_layer), or None for the Baseline of Tables II-V.
        num_classes: number of classes K.
        backbone: backbone name, e.g. ``"resnet101"``.
        pretrained_backbone: local weights file for the backbone (deep-stem layout by default), or None.
        norm_layer: normalisation class used everywhere.
        backbone_width: base width of the backbone (64 = standard).
        output_stride: 8 in the paper; the block then sees 1/16.
        stem: ``"deep"`` (released) or ``"classic"``.
        multi_grid: layer4 multi-grid factors; (1, 2, 4) gives the released dilations (4, 8, 16).
        dilate_first_block: True as released (all layer3 blocks at dilation 2).
        head_channels: channels of the reduced map F, of the head, and of the layer3 auxiliary head (512);
            the layer2 auxiliary head has ``head_channels // 8``.
        dropout: Dropout2d rate of the head (0.05).
        global_context: add the paper's global-context branch to the concatenation (the released model
            has none).
        align_corners: of the bilinear resizes, the x2 upsampling included (released: True).
        grad_checkpointing: recompute backbone activations in the backward pass.
    """

    def __init__(
        self,
        block: str | BlockFactory | None,
        *,
        num_classes: int,
        backbone: str = "resnet101",
        pretrained_backbone: str | os.PathLike[str] | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        backbone_width: int = 64,
        output_stride: int = 8,
        stem: str = "deep",
        multi_grid: tuple[int, ...] | None = (1, 2, 4),
        dilate_first_block: bool = True,
        head_channels: int = 512,
        dropout: float = HEAD_DROPOUT,
        global_context: bool = True,
        align_corners: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        if isinstance(block, str):
            if block not in list_blocks():
                raise ValueError(
                    f"{type(self).__name__}: unknown block {block!r}; expected one of {list_blocks()} or None"
                )
            block = functools.partial(comparison_block, block)
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
            aux_layers=("layer2", "layer3"),
            align_corners=align_corners,
            grad_checkpointing=grad_checkpointing,
        )
        channels = self.backbone.out_channels
        shortcut = nn.Sequential(
            nn.Conv2d(head_channels, head_channels, 3, stride=2, padding=1, bias=False),
            norm_layer(head_channels),
            nn.ReLU(inplace=True),
        )
        self.reduction = nn.Sequential(
            ConvNormAct(channels, head_channels, 3, norm_layer=norm_layer),
            BasicBlock(head_channels, head_channels, stride=2, downsample=shortcut, norm_layer=norm_layer),
        )
        self.block = None if block is None else block(head_channels, norm_layer)
        block_channels = head_channels if self.block is None else self.block.out_channels
        self.fuse = ConvNormAct(block_channels, head_channels, 3, norm_layer=norm_layer)
        self.global_context = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, head_channels, 1), nn.ReLU(inplace=True))
            if global_context
            else None
        )
        concat = channels + head_channels * (2 if global_context else 1)
        self.head = SegHead(concat, head_channels, num_classes, dropout=dropout, norm_layer=norm_layer)

    def apply_block(self, x: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """The block on the reduced map x (B, C, h, w); ``aux`` holds the auxiliary logits by stage."""
        return x if self.block is None else self.block(x)

    def decode(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        x = features["layer4"]  # X: (B, 2048, H/8, W/8)
        context = self.apply_block(self.reduction(x), aux)  # (B, C_block, H/16, W/16)
        # Released: upsample to (2h, 2w). X's own size is the same for even sizes and also fits odd ones.
        parts = [x, self.fuse(self.resize(context, x.shape[-2:]))]  # + (B, 512, H/8, W/8)
        if self.global_context is not None:
            parts.append(self.global_context(x).expand(-1, -1, *x.shape[-2:]))  # (B, 512, H/8, W/8)
        return self.head(torch.cat(parts, dim=1))


class DenoisedNLNet(DenoisedNLPipeline):
    """The Denoised NL network (§III-B, §III-F): the pipeline with the Denoised NL block at 1/16.

    Global Rectifying reads the layer3 auxiliary head's logits; the block resizes them to its H x W
    (bilinear, align_corners=True) and takes the softmax over classes, as released. The same logits are
    the second auxiliary output. ``rectify=False`` / ``retain=False`` give the rows of Table II.

    Args:
        num_classes: number of classes K.
        backbone: backbone name, e.g. ``"resnet101"``.
        pretrained_backbone: local weights file for the backbone (deep-stem layout by default), or None.
        norm_layer: normalisation class used everywhere.
        backbone_width: base width of the backbone (64 = standard).
        output_stride: 8 in the paper; the block then sees 1/16.
        stem: ``"deep"`` (released) or ``"classic"``.
        multi_grid: layer4 multi-grid factors; (1, 2, 4) gives the released dilations (4, 8, 16).
        dilate_first_block: True as released (all layer3 blocks at dilation 2).
        head_channels: channels of F (and so the block's Cv), of the head and of the layer3 auxiliary head.
        dropout: Dropout2d rate of the head (0.05).
        global_context: add the paper's global-context branch (the released model has none).
        align_corners: of the model's own bilinear resizes (the block's class-map resize is always True).
        grad_checkpointing: recompute backbone activations in the backward pass.
        key_channels: Ck of the block's queries and keys (64).
        kernel_size: Local Retention window (3).
        rectify: Global Rectifying on.
        retain: Local Retention on.
        detach_class_probs: stop GR's gradient from reaching the layer3 head (released: it does reach it).
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
        stem: str = "deep",
        multi_grid: tuple[int, ...] | None = (1, 2, 4),
        dilate_first_block: bool = True,
        head_channels: int = 512,
        dropout: float = HEAD_DROPOUT,
        global_context: bool = True,
        align_corners: bool = True,
        grad_checkpointing: bool = False,
        key_channels: int = 64,
        kernel_size: int = 3,
        rectify: bool = True,
        retain: bool = True,
        detach_class_probs: bool = False,
    ) -> None:
        denoised_nl = functools.partial(
            create_block,
            "denoised_nl",
            key_channels=key_channels,
            kernel_size=kernel_size,
            rectify=rectify,
            retain=retain,
            class_input="logits",
        )  # DenoisedNL has no norm: it takes no norm_layer
        super().__init__(
            lambda channels, norm_layer: denoised_nl(channels),
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
            dropout=dropout,
            global_context=global_context,
            align_corners=align_corners,
            grad_checkpointing=grad_checkpointing,
        )
        self.detach_class_probs = detach_class_probs

    def apply_block(self, x: Tensor, aux: dict[str, Tensor]) -> Tensor:
        if not self.block.rectify:
            return self.block(x)
        logits = aux["layer3"]  # (B, K, H/8, W/8), resized and softmaxed inside the block
        return self.block(x, logits.detach() if self.detach_class_probs else logits)
