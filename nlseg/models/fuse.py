"""The residual blocks' epilogues fused into oneDNN convolutions, for inference on the CPU.

Once batch norm is folded (:mod:`nlseg.models.fold`), a residual block computes

    out = relu(conv1(x));  [out = relu(conv2(out))]    the block's inner convolutions (the second: Bottleneck)
    y = relu(conv_last(out) + shortcut)                 the epilogue (conv_last: conv3 of a Bottleneck, conv2 of a
                                                        BasicBlock)

Eager PyTorch runs the epilogue as three passes over the block's widest map (the convolution's new output, the
sum, the ReLU) and allocates that map anew for every block: at 512 x 1024 that is 32-64 MiB per block, which
glibc maps fresh from the kernel each time (its ``mmap`` threshold stops at 32 MiB), so every pass page-faults
it in again. oneDNN's convolution primitive takes post-ops; PyTorch calls it with them as
``torch.ops.mkldnn._convolution_pointwise`` (``conv + ReLU``) and ``_convolution_pointwise_`` (``conv +
other``, then ReLU, written **into** ``other``), the ops inductor emits after freezing. A fused stage runs each
block with them: ReLU in the convolutions, and the last convolution, the sum and the ReLU as one call that
writes the block's output into its shortcut buffer, so no block of a stage allocates a map of its output's width.

The shortcut buffer is overwritten only where the stage owns it: a projection's fresh output, or the previous
block's output inside the same stage call (nothing else holds it; a block with hooks breaks the chain). The
stage's own input belongs to the caller and is never written.

Exact to float rounding: the sum and the ReLU are applied in float32 to the convolution's float32 result, as
before; oneDNN may pick another kernel for a fused primitive than for ATen's convolution (it does at 1 thread),
so sums can round differently (``tests/test_fuse.py``: within 1e-5 of the largest value; ANN and DANet R-50 at
512 x 1024, 2 threads, gave the same logits bit for bit). A stage falls back to the
blocks' own ``forward`` wherever the fused ops do not apply: another device, a dtype other than float32, autocast,
gradients, ``torch.compile`` (inductor fuses by itself) and export.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from nlseg.backbones import BasicBlock, Bottleneck, ResNet
from nlseg.backbones.resnet import STAGES
from nlseg.ops.local import exporting

__all__ = ["FusedStage", "fuse_epilogues", "fusion_available"]

_CONVS: dict[type[nn.Module], tuple[str, ...]] = {
    Bottleneck: ("conv1", "conv2", "conv3"),
    BasicBlock: ("conv1", "conv2"),
}
"""The convolutions of each residual block, in order; each but the last is followed by its folded norm and a
ReLU, the last by its folded norm, the shortcut sum and a ReLU."""


def fusion_available() -> bool:
    """Whether this PyTorch has oneDNN and its fused convolution ops (CPU builds do)."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_convolution_pointwise", "_convolution_pointwise_"))


def fuse_epilogues(model: nn.Module) -> int:
    """Make every stage of every :class:`~nlseg.backbones.ResNet` in ``model`` a :class:`FusedStage`, in place,
    where its blocks' norms are folded; returns the number of stages fused (0 without oneDNN).

    The stages keep their blocks, parameters and state-dict keys; only how they run changes.
    """
    if not fusion_available():
        return 0
    fused = 0
    for module in list(model.modules()):
        if not isinstance(module, ResNet):
            continue
        for name in STAGES:
            stage = getattr(module, name)
            if type(stage) is nn.Sequential and len(stage) and all(map(_fusable_block, stage)):
                setattr(module, name, FusedStage(*stage))
                fused += 1
    return fused


def _fusable_block(block: nn.Module) -> bool:
    """A residual block whose norms are folded and whose convolutions oneDNN's fused ops can run as they are."""
    names = _CONVS.get(type(block))
    if names is None:
        return False
    norms = [getattr(block, f"bn{i}") for i in range(1, len(names) + 1)]
    convs = [getattr(block, name) for name in names]
    return all(type(norm) is nn.Identity for norm in norms) and all(
        type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
        for conv in convs)


class FusedStage(nn.Sequential):
    """A ResNet stage whose blocks run with fused epilogues (module docstring) where the fused ops apply, and as
    a plain ``nn.Sequential`` of the same blocks elsewhere."""

    def forward(self, x: Tensor) -> Tensor:
        if not _fused_path(x, self[0]):
            return super().forward(x)
        owned = False  # whether x may be overwritten: never the caller's input
        for block in self:
            if block._forward_hooks or block._forward_pre_hooks:  # a hook may keep the output it sees
                x, owned = block(x), False
                continue
            x, owned = _run_fused(block, x, owned), True
        return x


def _fused_path(x: Tensor, block: nn.Module) -> bool:
    weight = block.conv1.weight
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.compiler.is_compiling() and not exporting()
    )


def _run_fused(block: nn.Module, x: Tensor, owned: bool) -> Tensor:
    """One residual block: ReLU fused into its convolutions, the last one fused with the shortcut sum and the
    ReLU, written into the shortcut buffer when the stage owns it (``owned``, or a projection's output)."""
    convs = [getattr(block, name) for name in _CONVS[type(block)]]
    shortcut = x if block.downsample is None else block.downsample(x)
    out = x
    for conv in convs[:-1]:
        out = torch.ops.mkldnn._convolution_pointwise(out, conv.weight, conv.bias, *_geometry(conv), "relu", [], "")
    last = convs[-1]
    if owned or block.downsample is not None:
        return torch.ops.mkldnn._convolution_pointwise_(
            shortcut, out, last.weight, last.bias, *_geometry(last), "add", 1.0, "relu", [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(
        out, shortcut, last.weight, last.bias, *_geometry(last), "add", 1.0, "relu", [], "")


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
