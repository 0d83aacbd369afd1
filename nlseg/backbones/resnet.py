"""Dilated ResNet backbones for dense prediction (He et al. 2016; DeepLab/PSPNet dilation).

ResNet-18/34 use :class:`BasicBlock`, ResNet-50/101/152 use :class:`Bottleneck` with the stride on
the 3×3 convolution (the torchvision "v1.5" layout). Parameter and buffer names follow torchvision
(classic stem) or the released Denoised NL code (deep stem), so their weight files load directly
(see :mod:`nlseg.backbones.weights`).

Dilation is decided while the network is built. A stage whose stride would take the network past
``output_stride`` keeps stride 1 and multiplies the running dilation by 2 instead:

    output_stride   layer3 blocks     layer4 blocks (no multi-grid)
    32              1, 1, ...         1, 1, 1      (layer3 stride 2, layer4 stride 2)
    16              1, 1, ...         1, 2, 2
     8              1, 2, 2, ...      2, 4, 4

As torchvision's ``replace_stride_with_dilation`` does, the first block of a dilated stage keeps the
previous stage's dilation (``previous_dilation``); the later blocks use the stage's own dilation.
``dilate_first_block=True`` gives the first block the stage's dilation too, as the released Denoised
NL backbone does (its layer3 blocks all use dilation 2 at output stride 8).

Multi-grid (DeepLabV3 §3.2) applies to layer4 only and overrides that rule: block ``i`` of layer4
gets dilation ``base * multi_grid[i]``, where ``base`` is layer4's dilation (1, 2 or 4 at output
stride 32, 16 or 8). The released Denoised NL model, whose layer4 dilations are (4, 8, 16), is
``output_stride=8, multi_grid=(1, 2, 4)``; DeepLabV3's (2, 4, 8) is ``output_stride=16,
multi_grid=(1, 2, 4)``.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nlseg.backbones.weights import load_backbone_weights

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "OUTPUT_STRIDES",
    "ResNet",
    "STAGES",
    "STEMS",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]

STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)
STEMS: tuple[str, ...] = ("classic", "deep", "v1c")


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3×3 convolution whose padding equals its dilation, so stride 1 keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions and a shortcut (He et al. 2016, Fig. 5 left); ResNet-18/34.

    Both 3×3 convolutions use ``dilation``; the first one carries ``stride``.

    Args:
        in_channels: channels of the input.
        planes: channels of both convolutions (``expansion`` = 1).
        stride: stride of the first convolution.
        dilation: dilation (and padding) of both convolutions.
        downsample: shortcut projection, or None for the identity.
        norm_layer: normalisation class, called with a channel count.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: neither the norm's nor the convolution's backward reads its output
        return self.relu(out)

    def zero_init_last(self) -> None:
        """Zero the last norm's scale so the block starts as the identity (Goyal et al. 2017)."""
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand and a shortcut (He et al. 2016, Fig. 5 right); ResNet-50+.

    The stride and the dilation sit on the 3×3 convolution (torchvision's "v1.5" layout).

    Args:
        in_channels: channels of the input.
        planes: channels of the 3×3 convolution; the output has ``planes * expansion`` (4×).
        stride: stride of the 3×3 convolution.
        dilation: dilation (and padding) of the 3×3 convolution.
        downsample: shortcut projection, or None for the identity.
        norm_layer: normalisation class, called with a channel count.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place: neither the norm's nor the convolution's backward reads its output
        return self.relu(out)

    def zero_init_last(self) -> None:
        """Zero the last norm's scale so the block starts as the identity (Goyal et al. 2017)."""
        nn.init.zeros_(self.bn3.weight)


class ResNet(nn.Module):
    """Dilated ResNet trunk returning the four stage maps; no pooling head, no classifier.

    Dilation and multi-grid follow the module docstring: at output stride 8 layer3's blocks use
    dilations (1, 2, 2, ...) and layer4's (2, 4, 4); with ``multi_grid`` layer4's block ``i`` uses
    ``base * multi_grid[i]`` (base 4 at output stride 8, 2 at 16, 1 at 32). With
    ``dilate_first_block`` the first block of every dilated stage uses the stage's dilation as well
    (layer3 (2, 2, ...) and layer4 (4, 4, 4) at output stride 8).

    Stems: ``"classic"`` is conv7×7/2 (``width`` ch) + norm + ReLU + maxpool3×3/2 (torchvision names
    ``conv1``, ``bn1``). ``"deep"`` is three 3×3 convolutions, 3→w stride 2, w→w, w→2w, with norm and
    ReLU between them, then norm + ReLU + maxpool (PSPNet's deep stem, "ResNet-C" in He et al. 2019;
    the released Denoised NL backbone). Its convolutions form ``conv1 = Sequential(conv, norm, ReLU, conv, norm, ReLU,
    conv)`` (keys ``conv1.0``, ``conv1.1``, ``conv1.3``, ``conv1.4``, ``conv1.6``) and the last norm
    is ``bn1``, as in that code; layer1 then takes 2w channels. ``"v1c"`` is the same three convolutions
    at half the width, 3→w/2 stride 2, w/2→w/2, w/2→w (the 32-32-64 stem of ResNet-C in He et al. 2019 and of
    mmsegmentation's ``ResNetV1c``), same keys; layer1 then takes w channels, as with the classic stem.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four stages.
        output_stride: ratio of input to layer4 size: 8, 16 or 32.
        stem: ``"classic"``, ``"deep"`` or ``"v1c"``.
        multi_grid: one factor per layer4 block, or None.
        dilate_first_block: give the first block of a dilated stage the stage's dilation instead of the
            previous one (released Denoised NL backbone); False follows torchvision.
        stem_ceil_mode: the stem's max-pool rounds its output size up (``ceil_mode=True``, the released ANN
            deep-base ResNet): an even stem map of side h gives h/2 + 1 instead of h/2, so an input side
            ≡ 0 or 3 (mod 4) gives one more row or column at every later stage (1024 -> 129 at layer4,
            not 128). False (torchvision, the released Denoised NL backbone) rounds down.
        norm_layer: normalisation class used everywhere (``nn.BatchNorm2d``, ``nn.SyncBatchNorm``, ...).
        in_channels: channels of the input image.
        width: base channel count; stage ``s`` has ``width * 2**s * block.expansion`` output channels
            (64 is the standard network, smaller values give tiny networks for tests).
        zero_init_residual: zero the last norm scale of every block so each starts as the identity.
        checkpointing: in training, recompute each block's activations in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) instead of storing them.

    Attributes:
        stage_channels: output channels of each stage, keyed by stage name.
        stage_strides: output stride of each stage given the dilation.
        out_channels: channels of layer4.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        *,
        output_stride: int = 8,
        stem: str = "classic",
        multi_grid: tuple[int, ...] | None = None,
        dilate_first_block: bool = False,
        stem_ceil_mode: bool = False,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        in_channels: int = 3,
        width: int = 64,
        zero_init_residual: bool = False,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(STAGES) or any(n < 1 for n in layers):
            raise ValueError(f"layers must give a positive block count for each of {STAGES}, got {tuple(layers)}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if multi_grid is not None and (len(multi_grid) != layers[3] or any(g < 1 for g in multi_grid)):
            raise ValueError(
                f"multi_grid must give one positive factor per layer4 block ({layers[3]} blocks), got {multi_grid!r}"
            )
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be positive, got {in_channels} and {width}")
        if stem == "v1c" and width < 2:
            raise ValueError(f"stem='v1c' halves the width in its first convolutions, so width must be >= 2, got {width}")
        self.checkpointing = checkpointing

        stem_channels = 2 * width if stem == "deep" else width
        if stem == "classic":
            self.conv1: nn.Module = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            inner = width if stem == "deep" else width // 2  # v1c: 32-32-64 at width 64
            self.conv1 = nn.Sequential(
                _conv3x3(in_channels, inner, stride=2),
                norm_layer(inner),
                nn.ReLU(inplace=True),
                _conv3x3(inner, inner),
                norm_layer(inner),
                nn.ReLU(inplace=True),
                _conv3x3(inner, stem_channels),
            )
        self.bn1 = norm_layer(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=stem_ceil_mode)

        self.stage_channels: dict[str, int] = {}
        self.stage_strides: dict[str, int] = {}
        channels, reached_stride, dilation = stem_channels, 4, 1
        for index, (name, n_blocks) in enumerate(zip(STAGES, layers)):
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if reached_stride * stride > output_stride:  # dilate instead of striding
                dilation, stride = dilation * stride, 1
            reached_stride *= stride
            first_dilation = dilation if dilate_first_block else previous_dilation
            dilations = [first_dilation] + [dilation] * (n_blocks - 1)
            if name == "layer4" and multi_grid is not None:
                dilations = [dilation * g for g in multi_grid]
            planes = width * 2**index
            self.add_module(name, self._make_stage(block, channels, planes, stride, dilations, norm_layer))
            channels = planes * block.expansion
            self.stage_channels[name] = channels
            self.stage_strides[name] = reached_stride
        self.out_channels = channels

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    module.zero_init_last()

    @staticmethod
    def _make_stage(
        block: type[BasicBlock | Bottleneck],
        in_channels: int,
        planes: int,
        stride: int,
        dilations: Sequence[int],
        norm_layer: type[nn.Module],
    ) -> nn.Sequential:
        """One stage: the first block strides (and projects the shortcut when needed)."""
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), norm_layer(out_channels))
        blocks = [block(in_channels, planes, stride, dilations[0], downsample, norm_layer)]
        blocks += [block(out_channels, planes, 1, d, None, norm_layer) for d in dilations[1:]]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args: x (B, in_channels, H, W). Returns {stage name: (B, stage_channels, ⌈H/s⌉, ⌈W/s⌉)}, each side one
        larger with ``stem_ceil_mode`` where the stem map's side ⌈H/2⌉ is even."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features: dict[str, Tensor] = {}
        for name in STAGES:
            x = self._run_stage(getattr(self, name), x)
            features[name] = x
        return features

    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        if not (self.checkpointing and self.training and torch.is_grad_enabled()):
            return stage(x)
        for block in stage:
            context = functools.partial(_recompute_keeps_buffers, block)
            x = checkpoint(block, x, use_reentrant=False, context_fn=context)
        return x


def _recompute_keeps_buffers(
    block: nn.Module,
) -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
    """Checkpoint contexts (forward, recompute): the recomputation must not update the running
    statistics of the block's norms a second time, so its buffers are restored afterwards."""
    return contextlib.nullcontext(), _restored_buffers(block)


@contextlib.contextmanager
def _restored_buffers(module: nn.Module) -> Iterator[None]:
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


_OPTIONS = tuple(name for name, p in inspect.signature(ResNet.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY)


def _build(
    block: type[BasicBlock | Bottleneck],
    layers: tuple[int, ...],
    pretrained: str | os.PathLike[str] | None,
    options: dict[str, Any],
) -> ResNet:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unknown ResNet option(s) {unknown}; the options are {list(_OPTIONS)} and 'pretrained'")
    model = ResNet(block, layers, **options)
    if pretrained is not None:
        load_backbone_weights(model, pretrained)
    return model


def resnet18(*, pretrained: str | os.PathLike[str] | None = None, **options: Any) -> ResNet:
    """ResNet-18: BasicBlock × (2, 2, 2, 2).

    Args:
        pretrained: a local weights file (.pth, .pt, .safetensors) or a weights name (``nlseg list weights``),
            loaded strictly, or None.
        options: keyword options of :class:`ResNet` (output_stride, stem, multi_grid, dilate_first_block,
            stem_ceil_mode, norm_layer, in_channels, width, zero_init_residual, checkpointing).
    """
    return _build(BasicBlock, (2, 2, 2, 2), pretrained, options)


def resnet34(*, pretrained: str | os.PathLike[str] | None = None, **options: Any) -> ResNet:
    """ResNet-34: BasicBlock × (3, 4, 6, 3). Arguments as :func:`resnet18`."""
    return _build(BasicBlock, (3, 4, 6, 3), pretrained, options)


def resnet50(*, pretrained: str | os.PathLike[str] | None = None, **options: Any) -> ResNet:
    """ResNet-50: Bottleneck × (3, 4, 6, 3). Arguments as :func:`resnet18`."""
    return _build(Bottleneck, (3, 4, 6, 3), pretrained, options)


def resnet101(*, pretrained: str | os.PathLike[str] | None = None, **options: Any) -> ResNet:
    """ResNet-101: Bottleneck × (3, 4, 23, 3). Arguments as :func:`resnet18`."""
    return _build(Bottleneck, (3, 4, 23, 3), pretrained, options)


def resnet152(*, pretrained: str | os.PathLike[str] | None = None, **options: Any) -> ResNet:
    """ResNet-152: Bottleneck × (3, 8, 36, 3). Arguments as :func:`resnet18`."""
    return _build(Bottleneck, (3, 8, 36, 3), pretrained, options)
