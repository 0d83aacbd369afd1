"""What every segmentor shares: a backbone, auxiliary heads on its stages, a decoder, logits resized to the input.

A model is composed of parts (torchvision's ``backbone + classifier + aux_classifier``): the family builders
(:func:`nlseg.models.fcn.fcn`, :func:`nlseg.models.ann.ann`, :func:`nlseg.models.denoised.denoised_nl`, ...) build
the backbone from :class:`BackboneOptions`, the auxiliary heads with :func:`build_aux_heads` and their own decoder,
and hand them to :class:`Segmentor`. A model returns ``{"out": logits, "aux": [logits, ...]}``, all (B, K, H, W) at
the input's H x W, and computes no loss (the recipe weights the auxiliary outputs, in the order of the heads).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.backbones import ResNet, create_backbone
from nlseg.blocks.layers import ConvNormAct

__all__ = ["AUX_LAYERS", "BackboneOptions", "SegHead", "Segmentor", "build_aux_heads"]

AUX_DROPOUT = 0.05
"""Dropout2d rate of the auxiliary heads (ANN's stage-4 head; the released Denoised NL heads)."""

AUX_LAYERS: dict[str, int] = {"layer2": 8, "layer3": 1}
"""Stages that can carry an auxiliary head, and by how much its hidden width divides ``head_channels``:
layer3 (ANN's "Stage4"): conv3x3 -> 512; layer2 (Denoised NL's res2 head): conv3x3 -> 64."""


@dataclass(frozen=True, kw_only=True)
class BackboneOptions:
    """The options every model passes to its dilated ResNet, and the norm all its parts use.

    The one place for backbone options: ``create_model`` offers each field as an option of every model whose
    builder takes ``backbone_options`` (a family that fixes a field leaves it out with
    :attr:`BackboneOptions.fixed`), and :meth:`build` hands them to ``nlseg.backbones.create_backbone``.

    Args:
        backbone: backbone name (``nlseg.backbones.list_backbones()``), e.g. ``"resnet101"``.
        norm_layer: normalisation class used everywhere in the model (BatchNorm2d, SyncBatchNorm, ...).
        backbone_width: base width of the backbone (64 is the standard network).
        output_stride: 8, 16 or 32 (8 in both papers).
        stem: ``"classic"``, ``"deep"`` (the released codes' three 3x3 convolutions, 64-64-128) or ``"v1c"`` (the
            same at half width, 32-32-64: mmsegmentation's ResNetV1c).
        multi_grid: layer4 multi-grid factors, or None.
        dilate_first_block: the first block of a dilated stage takes the stage's dilation (released
            Denoised NL backbone) instead of the previous one (torchvision).
        stem_ceil_mode: the stem max-pool rounds up (``ceil_mode=True``, the released ANN deep-base ResNet).
        grad_checkpointing: recompute backbone activations in the backward pass to save memory.
    """

    backbone: str = "resnet101"
    norm_layer: type[nn.Module] = nn.BatchNorm2d
    backbone_width: int = 64
    output_stride: int = 8
    stem: str = "classic"
    multi_grid: tuple[int, ...] | None = None
    dilate_first_block: bool = False
    stem_ceil_mode: bool = False
    grad_checkpointing: bool = False

    fixed: frozenset[str] = dataclasses.field(default=frozenset(), repr=False)
    """Fields this family keeps at their value: not ``create_model`` options (ANN: its backbone is not multi-grid)."""

    def options(self) -> dict[str, Any]:
        """The fields a user may set, by name, with their values here."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in {"fixed", *self.fixed}}

    def replace(self, **changes: Any) -> BackboneOptions:
        """A copy with ``changes``. Raises ``TypeError`` naming a change that is no option."""
        unknown = sorted(set(changes) - set(self.options()))
        if unknown:
            raise TypeError(f"unknown backbone option(s) {unknown}; the options are {list(self.options())}")
        return dataclasses.replace(self, **changes)

    def build(self, pretrained: str | os.PathLike[str] | None = None) -> ResNet:
        """The backbone, its weights read from the local file ``pretrained`` if given."""
        return create_backbone(
            self.backbone,
            pretrained=pretrained,
            output_stride=self.output_stride,
            stem=self.stem,
            multi_grid=self.multi_grid,
            dilate_first_block=self.dilate_first_block,
            stem_ceil_mode=self.stem_ceil_mode,
            norm_layer=self.norm_layer,
            width=self.backbone_width,
            checkpointing=self.grad_checkpointing,
        )


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


def check_num_classes(num_classes: int) -> None:
    """Raise ``ValueError`` unless ``num_classes`` is a positive int."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def build_aux_heads(
    stage_channels: Mapping[str, int],
    stages: Sequence[str],
    *,
    head_channels: int,
    num_classes: int,
    norm_layer: type[nn.Module],
) -> nn.ModuleDict:
    """A :class:`SegHead` on each of ``stages`` (deep supervision: ANN Eq. 18; Denoised NL Eq. 5), in output order.

    Args:
        stage_channels: channels of each backbone stage (``backbone.stage_channels``).
        stages: a subset of :data:`AUX_LAYERS`; the head on a stage has ``head_channels // AUX_LAYERS[stage]``.
        head_channels: hidden width of the model's heads (512 in both papers).
        num_classes: number of classes K.
        norm_layer: normalisation class.

    Raises:
        ValueError: an unknown or repeated stage; ``head_channels`` below 8; ``num_classes`` not positive.
    """
    check_num_classes(num_classes)
    if head_channels < 8:
        raise ValueError(f"head_channels must be at least 8 (layer2's head uses 1/8 of it), got {head_channels}")
    unknown = [stage for stage in stages if stage not in AUX_LAYERS]
    if unknown or len(set(stages)) != len(stages):
        raise ValueError(f"aux_layers must be distinct stages of {tuple(AUX_LAYERS)}, got {tuple(stages)}")
    return nn.ModuleDict(
        {
            stage: SegHead(
                stage_channels[stage],
                head_channels // AUX_LAYERS[stage],
                num_classes,
                dropout=AUX_DROPOUT,
                norm_layer=norm_layer,
            )
            for stage in stages
        }
    )


class Segmentor(nn.Module):
    """A segmentation model composed of a backbone, auxiliary heads and a decoder.

    ``forward``: backbone stage maps -> the auxiliary logits of each head's stage -> ``decoder(features, aux)``
    (the Denoised NL network's Global Rectifying reads ``aux["layer3"]``) -> every logit map bilinearly resized to
    the input. Outside training the auxiliary heads the decoder does not read are skipped (``with_aux``): a
    decoder names the stages it reads in its ``aux_inputs`` attribute. State-dict keys: ``backbone.*``,
    ``aux_heads.<stage>.*``, ``decoder.*``; checkpoints from before the decoder was a module (its keys at the top
    level) load unchanged.

    Args:
        backbone: returns the stage maps ``{"layer1": ..., "layer4": ...}`` of an image batch.
        decoder: ``decoder(features, aux) -> (B, K, h, w)`` main-branch logits; its ``aux_inputs`` (a tuple of
            stages) names the auxiliary logits it reads (a decoder without it gets every head's).
        aux_heads: a head per backbone stage, logits (B, K, h, w) from that stage's map; output order.
        num_classes: number of classes K.
        align_corners: of the bilinear resizes to the input (both papers' code: True).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: nn.Module,
        aux_heads: Mapping[str, nn.Module],
        *,
        num_classes: int,
        align_corners: bool,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.backbone = backbone
        self.aux_heads = aux_heads if isinstance(aux_heads, nn.ModuleDict) else nn.ModuleDict(aux_heads)
        self.decoder = decoder

    def forward(self, x: Tensor, *, with_aux: bool | None = None) -> dict[str, Tensor | list[Tensor]]:
        """x (B, 3, H, W) -> {"out": (B, K, H, W), "aux": [(B, K, H, W) per auxiliary head]}.

        Args:
            x: a normalised image batch.
            with_aux: return every auxiliary head's logits (deep supervision needs them); None: in training mode.
                Without them only the heads the decoder reads (``decoder.aux_inputs``; every head for a decoder
                without that attribute) are run, "aux" is ``[]``, and "out" is the same, bit for bit.
        """
        with_aux = self.training if with_aux is None else with_aux
        features = self.backbone(x)  # {"layer1": (B, C1, H/4, W/4), ..., "layer4": (B, C4, H/8, W/8)}
        read = tuple(self.aux_heads) if with_aux else getattr(self.decoder, "aux_inputs", tuple(self.aux_heads))
        aux = {stage: head(features[stage]) for stage, head in self.aux_heads.items() if stage in read}  # (B, K, h, w)
        out = self.decoder(features, aux)  # (B, K, H/8, W/8)
        size = tuple(x.shape[-2:])
        outputs = [self.resize(logits, size) for logits in aux.values()] if with_aux else []
        return {"out": self.resize(out, size), "aux": outputs}

    def resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Bilinear resize to ``size`` with the model's ``align_corners``."""
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

