"""Dilated ResNet backbones and weight loading from local files.

``create_backbone(name, **options)`` builds a backbone by name; ``list_backbones()`` lists the names.
Every backbone returns ``{"layer1": ..., "layer4": ...}`` and exposes ``stage_channels``,
``stage_strides`` and ``out_channels``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nlseg.backbones.resnet import (
    OUTPUT_STRIDES,
    STAGES,
    STEMS,
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from nlseg.backbones.weights import WeightsMismatchError, load_backbone_weights, read_state_dict

__all__ = [
    "OUTPUT_STRIDES",
    "STAGES",
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "WeightsMismatchError",
    "create_backbone",
    "list_backbones",
    "load_backbone_weights",
    "read_state_dict",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]

_BACKBONES: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, shallowest first."""
    return list(_BACKBONES)


def create_backbone(name: str, **options: Any) -> ResNet:
    """Build the backbone called ``name`` (see :func:`list_backbones`).

    Args:
        name: backbone name, e.g. ``"resnet101"``.
        options: keyword options of the builder (``pretrained`` and those of :class:`ResNet`).

    Raises:
        ValueError: unknown name. TypeError: unknown option.
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {list_backbones()}")
    return _BACKBONES[name](**options)
