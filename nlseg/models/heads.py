"""The compared blocks' original networks: the block as the decode head on layer4 at 1/8, as mmsegmentation builds
them (``*_r50-d8`` / ``*_r101-d8`` Cityscapes configs of mmsegmentation 1.2.2), and the FCN head they extend.

    layer4 (2048 ch, 1/8) ─ head ─ Dropout2d(0.1) ─ conv1x1 -> K
    layer3 (1024 ch, 1/8) ─ conv3x3 -> 256 + BN + ReLU + Dropout2d(0.1) + conv1x1 -> K     (auxiliary, loss weight 0.4)

Heads (channels for ``head_channels=512``; C = 2048):

* ``nl`` (Non-local, Wang et al., CVPR 2018; mmsegmentation's NLHead): conv3x3 C->512 + BN + ReLU ->
  NonLocal2d(512: θ, φ, g 1x1 -> 256 with bias, embedded Gaussian with scale 256^-1/2, Wo 1x1 256->512 + BN,
  residual add) -> conv3x3 512->512 + BN + ReLU; concatenated after the layer4 map -> conv3x3 C+512 -> 512 + BN + ReLU.
* ``danet`` (DANet, Fu et al., CVPR 2019; DAHead): two branches on the layer4 map, each conv3x3 C->512 + BN + ReLU
  -> PAM (q, k 1x1 512->64 with bias, v 512->512 with bias, no scale, γ = 0) or CAM -> conv3x3 512->512 + BN +
  ReLU, summed (:class:`~nlseg.blocks.DualAttention`). mmsegmentation's DAHead also has a classifier on each
  branch, trained by two extra losses (weight 1 each) and unused at inference; a :class:`Segmentor`'s decoder
  returns one logit map, so these two classifiers (2 x (512·K + K) parameters) and their losses are left out.
* ``ppm`` (PSPNet, Zhao et al., CVPR 2017; PSPHead): for n in (1, 2, 3, 6) adaptive average pool -> conv1x1
  C->512 + BN + ReLU -> bilinear upsampling (align_corners False); concatenated after the layer4 map -> conv3x3
  C+4·512 -> 512 + BN + ReLU (:class:`~nlseg.blocks.PPM`).
* ``aspp`` (DeepLabV3, Chen et al., 2017; ASPPHead): image pooling (global average -> conv1x1 C->512 + BN + ReLU,
  broadcast), conv1x1 and conv3x3 at dilations 12, 24, 36, all C->512 + BN + ReLU; concatenated -> conv3x3
  5·512 -> 512 + BN + ReLU (:class:`~nlseg.blocks.ASPP` with ``project_kernel_size=3``). nlseg concatenates the
  image-pooling branch last, mmsegmentation first: the same function, the bottleneck's input channels permuted.
* ``ann`` (ANN, Zhu et al., ICCV 2019; ANNHead): AFNB(layer3, layer4 -> C; query conv1x1 C->256 + BN + ReLU, key
  1024->256 + BN + ReLU, value 1024->256 with bias, pyramid pooling 1, 3, 6, 8, scale 256^-1/2, Wo 256->C zeroed,
  conv1x1 2C -> C + BN) -> Dropout2d(0.1) -> conv3x3 C->512 + BN + ReLU -> APNB(512, shared key/query 256, value
  256, Wo 256->512 zeroed, conv1x1 1024 -> 512 + BN + ReLU) (:class:`~nlseg.models.ann.ANNDecoder`). The only head
  that also reads layer3; nlseg's ``ann_r*`` is the same main branch with the released network's backbone and
  auxiliary head (1024 -> 512, Dropout2d 0.05).
* ``ccnet`` (CCNet, Huang et al., ICCV 2019; CCHead): conv3x3 C->512 + BN + ReLU -> criss-cross attention (q, k
  1x1 512->64, v 512->512, all with bias, γ = 0) twice with shared weights -> conv3x3 512->512 + BN + ReLU;
  concatenated after the layer4 map -> conv3x3 C+512 -> 512 + BN + ReLU (:class:`~nlseg.blocks.RCCAModule` with
  ``inter_channels=512``).
* ``fcn`` (FCN, Long et al., CVPR 2015; FCNHead with ``num_convs=2, concat_input=True``): conv3x3 C->512 + BN +
  ReLU -> conv3x3 512->512 + BN + ReLU; concatenated after the layer4 map -> conv3x3 C+512 -> 512 + BN + ReLU.
  (nlseg's ``fcn_r*`` is the papers' baseline: one conv3x3, no concatenation.)

Backbone (:data:`HEADS_BACKBONE`, mmsegmentation's ResNetV1c): the 32-32-64 deep stem (``stem="v1c"``), output
stride 8 with layer3 at dilation 2 and layer4 at 4, the first block of each dilated stage at half of it
("contract_dilation", which is nlseg's ``dilate_first_block=False``), no multi-grid. BN everywhere (mmsegmentation's
SyncBN is the engine's ``nn.SyncBatchNorm`` when distributed). Every bilinear resize uses ``align_corners=False``.
Initialisation: each module's PyTorch default (the backbone's Kaiming fan-out; the non-local block's Wo norm and
the attention γ at zero, as mmcv/mmsegmentation). mmsegmentation initialises its ConvModules with Kaiming and
draws the classifiers and the non-local θ, φ, g from N(0, 0.01²); nlseg does not copy that.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from nlseg.blocks import AFNB, APNB, ASPP, PPM, RCCAModule, create_block
from nlseg.blocks.layers import ConvNormAct
from nlseg.models.ann import ANNDecoder
from nlseg.models.base import BackboneOptions, SegHead, Segmentor, check_num_classes

__all__ = ["ConcatInput", "HEADS", "HEADS_BACKBONE", "HeadDecoder", "context_head"]

HEADS: tuple[str, ...] = ("nl", "danet", "ppm", "aspp", "ann", "ccnet", "fcn")
"""The heads of :func:`context_head`, in the order of the zoo."""

HEADS_BACKBONE = BackboneOptions(stem="v1c")
"""mmsegmentation's ResNetV1c at output stride 8: 32-32-64 deep stem, dilations (1, 1, 2, 4), contracted first
blocks (``dilate_first_block=False``), no multi-grid."""

AUX_DROPOUT = 0.1
"""Dropout2d rate of the layer3 auxiliary head (mmsegmentation's FCNHead)."""


def context_head(
    head: str,
    *,
    num_classes: int,
    pretrained_backbone: str | os.PathLike[str] | None = None,
    backbone_options: BackboneOptions = HEADS_BACKBONE,
    head_channels: int = 512,
    dropout: float = 0.1,
    align_corners: bool = False,
) -> Segmentor:
    """A compared block's original network: ``head`` on layer4 at 1/8 + a layer3 FCN auxiliary head (module docstring).

    Args:
        head: one of :data:`HEADS`.
        num_classes: number of classes K.
        pretrained_backbone: weights file or name (`nlseg list weights`) for the backbone (deep-stem key layout at
            half width), or None.
        backbone_options: the backbone and the norm of every part (default :data:`HEADS_BACKBONE`).
        head_channels: the head's width (512); the non-local block's and ANN's embeddings have half of it, PAM's
            and the criss-cross attention's q and k an eighth; the auxiliary head has half of it (256).
        dropout: Dropout2d rate before the classifier (0.1).
        align_corners: of every bilinear resize (mmsegmentation: False).
    """
    if head not in HEADS:
        raise ValueError(f"context_head: unknown head {head!r}; expected one of {HEADS}")
    check_num_classes(num_classes)
    if head_channels < 8:
        raise ValueError(f"head_channels must be at least 8 (PAM's q and k have 1/8 of it), got {head_channels}")
    norm_layer = backbone_options.norm_layer
    backbone = backbone_options.build(pretrained_backbone)
    low, high = backbone.stage_channels["layer3"], backbone.stage_channels["layer4"]
    aux_heads = nn.ModuleDict(
        {"layer3": SegHead(low, head_channels // 2, num_classes, dropout=AUX_DROPOUT, norm_layer=norm_layer)}
    )
    width = head_channels
    if head == "ann":
        attention = dict(key_channels=width // 2, value_channels=width // 2, norm_layer=norm_layer, dropout=dropout)
        decoder: nn.Module = ANNDecoder(
            AFNB(low, high, high, **attention),  # ends with the head's Dropout2d, as mmsegmentation's after fusion
            ConvNormAct(high, width, 3, norm_layer=norm_layer),
            APNB(width, **attention),  # ends with the Dropout2d of mmsegmentation's classifier
            dropout=nn.Identity(),
            classifier=nn.Conv2d(width, num_classes, 1),
        )
        return Segmentor(backbone, decoder, aux_heads, num_classes=num_classes, align_corners=align_corners)
    body: nn.Module
    if head == "nl":
        body = ConcatInput(
            nn.Sequential(
                ConvNormAct(high, width, 3, norm_layer=norm_layer),
                create_block("nonlocal2d", width, scale="sqrt", fusion="add", norm_layer=norm_layer),  # C/2 embeddings
                ConvNormAct(width, width, 3, norm_layer=norm_layer),
            ),
            ConvNormAct(high + width, width, 3, norm_layer=norm_layer),
        )
    elif head == "danet":
        body = create_block("danet_head", high, inter_channels=width, norm_layer=norm_layer)
    elif head == "ccnet":  # ends with the head's Dropout2d
        body = RCCAModule(high, width, inter_channels=width, recurrence=2, norm_layer=norm_layer, dropout=dropout)
    elif head == "fcn":
        body = ConcatInput(
            nn.Sequential(
                ConvNormAct(high, width, 3, norm_layer=norm_layer), ConvNormAct(width, width, 3, norm_layer=norm_layer)
            ),
            ConvNormAct(high + width, width, 3, norm_layer=norm_layer),
        )
    elif head == "ppm":
        body = PPM(high, width, (1, 2, 3, 6), norm_layer=norm_layer, branch_channels=width, align_corners=align_corners)
    else:  # aspp: its projection ends with the head's Dropout2d (the registered "ppm"/"aspp" are the 1/16 variants)
        body = ASPP(high, width, (12, 24, 36), norm_layer=norm_layer, dropout=dropout, project_kernel_size=3)
    decoder = HeadDecoder(
        body,
        dropout=nn.Identity() if head in ("aspp", "ccnet") else nn.Dropout2d(dropout),
        classifier=nn.Conv2d(width, num_classes, 1),
    )
    return Segmentor(backbone, decoder, aux_heads, num_classes=num_classes, align_corners=align_corners)


class ConcatInput(nn.Module):
    """``fuse(cat(x, inner(x)))``: a head that concatenates its input after its own output (mmsegmentation's
    ``FCNHead(concat_input=True)``, which NLHead and CCHead are).

    Args:
        inner: (B, C, H, W) -> (B, C', H, W).
        fuse: (B, C + C', H, W) -> the output.
    """

    def __init__(self, inner: nn.Module, fuse: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.fuse = fuse

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> fuse's output (B, C_out, H, W)."""
        return self.fuse(torch.cat([x, self.inner(x)], dim=1))


class HeadDecoder(nn.Module):
    """The original networks' main branch: ``head(layer4)`` -> dropout -> classifier.

    Args:
        head: layer4's map (B, C4, h, w) -> (B, head_channels, h, w).
        dropout: before the classifier (an ``nn.Identity`` where the head ends with its own).
        classifier: the head's channels -> K.
    """

    aux_inputs: tuple[str, ...] = ()
    """The auxiliary logits the decoder reads: none."""

    def __init__(self, head: nn.Module, *, dropout: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.dropout = dropout
        self.classifier = classifier

    def forward(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        """Logits (B, K, H/8, W/8) from layer4 (B, C4, H/8, W/8); ``aux`` is not read."""
        x = self.head(features["layer4"])  # (B, 512, H/8, W/8)
        return self.classifier(self.dropout(x))  # (B, K, H/8, W/8)
