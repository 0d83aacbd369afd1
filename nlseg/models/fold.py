"""Batch normalisation folded into the convolution before it, for inference.

In eval mode a BatchNorm2d is the per-channel affine map ``y = (x - mean) / sqrt(var + eps) * gamma + beta``
with fixed statistics, so after a convolution ``x = W * z + b`` it can be absorbed into the convolution:
``W' = W * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)`` per output channel.
The folded network computes the same function (up to float rounding) with one pass over each feature map
fewer.

Which norm follows which convolution is read from the module structure, where it is exact by construction:

* in an ``nn.Sequential`` (``ConvNormAct``, the heads, the shortcuts, the blocks' projections), a Conv2d
  child directly followed by a norm child;
* in the backbone's modules, the attribute pairs of :data:`CONV_NORM_PAIRS`, which their ``forward`` applies
  as ``bn(conv(x))`` (the deep stem's ``conv1`` is a Sequential ending in the convolution ``bn1`` follows).

A norm found in neither place is left as it is.
"""
from __future__ import annotations

import torch
from torch import nn

from nlseg.backbones import BasicBlock, Bottleneck, ResNet

__all__ = ["CONV_NORM_PAIRS", "fold_batchnorm"]

CONV_NORM_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    ResNet: (("conv1", "bn1"),),
}
"""(convolution, norm) attribute pairs of modules whose ``forward`` computes ``norm(conv(x))`` and uses the
convolution's output nowhere else."""

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into that convolution, in place.

    The convolution's weight and bias become the composed affine map (computed in float64, stored in the
    weight's dtype; a convolution without a bias gets one) and the norm is replaced by ``nn.Identity``, so the
    model's state dict no longer holds it: load weights before folding. See the module docstring for how the
    pairs are found.

    Args:
        model: a model in eval mode (every norm uses its running statistics).

    Returns:
        ``model`` itself, folded.

    Raises:
        ValueError: the model, or one of its norms, is in training mode (a folded norm cannot learn).
    """
    training = [name or "the model" for name, module in model.named_modules() if module.training]
    if training:
        raise ValueError(
            f"fold_batchnorm: {training[0]} is in training mode; batch norm is folded for inference only "
            "(call model.eval() first, on a copy if the model is still trained)"
        )
    for module in list(model.modules()):
        if type(module).forward is nn.Sequential.forward:
            names = list(module._modules)
            for conv_name, norm_name in zip(names, names[1:]):
                _fold_pair(module, conv_name, norm_name)
        for conv_name, norm_name in CONV_NORM_PAIRS.get(type(module), ()):
            _fold_pair(module, conv_name, norm_name)
    return model


def _last_conv(module: nn.Module | None) -> nn.Conv2d | None:
    """``module`` if it is a plain Conv2d, the last child of a plain Sequential ending in one, else None."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module):
        module = module[-1]
    return module if type(module) is nn.Conv2d else None


def _fold_pair(parent: nn.Module, conv_name: str, norm_name: str) -> None:
    """Fold ``parent.<norm_name>`` into the convolution ``parent.<conv_name>`` ends with, if both qualify."""
    conv, norm = _last_conv(parent._modules.get(conv_name)), parent._modules.get(norm_name)
    if conv is None or not isinstance(norm, _NORMS) or norm.running_mean is None or norm.running_var is None:
        return
    with torch.no_grad():
        scale = norm.running_var.double().add(norm.eps).rsqrt()  # (C,)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        bias = -norm.running_mean.double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.double() * scale
        if norm.bias is not None:
            bias = bias + norm.bias.double()
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))  # (C_out, C_in/g, kh, kw)
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))
    setattr(parent, norm_name, nn.Identity())
