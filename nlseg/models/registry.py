"""The one registry of segmentation models: ``create_model``, ``list_models``, ``model_info``, ``register_model``.

The registry is the model table :data:`nlseg.models.zoo.ZOO`: a model is registered by its
:class:`~nlseg.models.zoo.ZooEntry`, whose builder is any callable returning an ``nn.Module`` with its
options as explicit keyword-only parameters. A builder's ``backbone_options``
(:class:`~nlseg.models.base.BackboneOptions`) is offered field by field (``backbone``, ``stem``, ...), so a
backbone option added there is an option of every model. ``create_model`` accepts exactly these options and
names any other it is given.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from torch import nn

from nlseg.models.base import BackboneOptions
from nlseg.models.zoo import ZOO, ZooEntry, zoo_entry
from nlseg.registry import keyword_options

__all__ = ["create_model", "list_models", "model_info", "model_options", "register_model"]

REQUIRED = ("num_classes", "pretrained_backbone")
"""Keyword arguments every builder takes; they are arguments of ``create_model`` rather than options."""
BACKBONE = "backbone_options"
"""The builder parameter (a :class:`~nlseg.models.base.BackboneOptions`) whose fields are options."""


def check_builder(entry: ZooEntry) -> None:
    """Raise ``TypeError`` if ``entry``'s builder swallows ``*args``/``**kwargs`` or lacks :data:`REQUIRED`."""
    params = keyword_options(entry.builder)
    missing = [arg for arg in REQUIRED if arg not in params]
    if missing:
        raise TypeError(f"builder of {entry.name!r} lacks the keyword argument(s) {missing}")


def register_model(entry: ZooEntry) -> ZooEntry:
    """Add ``entry`` to the model table.

    Raises:
        ValueError: its name is already registered.
        TypeError: its builder lacks ``num_classes`` / ``pretrained_backbone`` or takes ``**kwargs``.
    """
    check_builder(entry)
    return ZOO.register(entry.name, entry)


def list_models() -> list[str]:
    """Registered model names, in registration order (family by family, in the papers' table order)."""
    return list(ZOO)


def model_options(name: str) -> dict[str, Any]:
    """The options ``create_model(name, ...)`` accepts, with their defaults.

    Raises:
        ValueError: unknown name.
    """
    options: dict[str, Any] = {}
    for n, p in inspect.signature(zoo_entry(name).builder).parameters.items():
        if n == BACKBONE and isinstance(p.default, BackboneOptions):
            options |= p.default.options()
        elif p.kind is p.KEYWORD_ONLY and n not in REQUIRED:
            options[n] = p.default
    return options


def model_info(name: str) -> dict[str, Any]:
    """What the registry knows about ``name``: the paper row, its mIoU, the paper's input size, the options.

    Raises:
        ValueError: unknown name.
    """
    entry = zoo_entry(name)
    return {
        "name": name,
        "paper": entry.description,
        "miou": entry.miou,
        "input_size": entry.input_size,
        "block": entry.block,
        "options": model_options(name),
    }


def create_model(
    name: str, *, num_classes: int, pretrained_backbone: str | os.PathLike[str] | None = None, **options: Any
) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of output classes K.
        pretrained_backbone: a backbone weights file or a weights name of ``nlseg.backbones.hub`` (see
            ``nlseg.backbones.load_backbone_weights``).
        options: the model's options by keyword (see :func:`model_options`).

    Returns:
        The model; ``model(x)`` returns ``{"out": (B, K, H, W), "aux": [(B, K, H, W), ...]}`` (in eval mode
        "aux" is ``[]`` unless ``model(x, with_aux=True)``).

    Raises:
        ValueError: unknown name (the message lists the registered ones and the closest match).
        TypeError: an option the model does not accept (the message lists the accepted ones).
    """
    entry = zoo_entry(name)
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} got unknown option(s) {unknown}; it accepts {list(accepted)}")
    backbone = inspect.signature(entry.builder).parameters.get(BACKBONE)
    if backbone is not None and isinstance(backbone.default, BackboneOptions):
        fields = backbone.default.options()
        changes = {key: options.pop(key) for key in list(options) if key in fields}
        options[BACKBONE] = backbone.default.replace(**changes)
    return entry.builder(num_classes=num_classes, pretrained_backbone=pretrained_backbone, **options)


for _entry in ZOO.values():
    check_builder(_entry)
