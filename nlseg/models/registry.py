"""The one registry of segmentation models: ``register_model``, ``create_model``, ``list_models``, ``model_info``.

A registered builder is any callable returning an ``nn.Module`` whose options are explicit keyword-only
parameters (``functools.partial`` of a model class with its structure bound positionally is the usual
form). ``create_model`` accepts exactly those options and names any other it is given.
"""
from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

__all__ = ["create_model", "list_models", "model_info", "model_options", "register_model"]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

REQUIRED = ("num_classes", "pretrained_backbone")
"""Keyword arguments every builder takes; they are arguments of ``create_model`` rather than options."""


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    paper: str
    miou: float | None
    input_size: tuple[int, int]


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, *, paper: str, miou: float | None = None, input_size: tuple[int, int] = (1024, 2048)
) -> Callable[[Builder], Builder]:
    """Decorator registering a model builder under ``name``.

    Args:
        name: the model's name, e.g. ``"denoised_nl_r101"``.
        paper: the paper table row the model reproduces, in words.
        miou: that row's mIoU (%), or None when the paper has no such row.
        input_size: (H, W) of the image the paper measures the network at (FLOPs, parameters, memory).

    Raises:
        ValueError: ``name`` is already registered.
        TypeError: the builder lacks ``num_classes`` / ``pretrained_backbone`` or takes ``**kwargs``.
    """

    def register(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered; registered models: {list_models()}")
        params = inspect.signature(builder).parameters
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
            raise TypeError(f"builder of {name!r} takes *args/**kwargs; models need explicit options so typos fail")
        missing = [arg for arg in REQUIRED if arg not in params]
        if missing:
            raise TypeError(f"builder of {name!r} lacks the keyword argument(s) {missing}")
        _REGISTRY[name] = _Entry(builder, paper, miou, input_size)
        return builder

    return register


def list_models() -> list[str]:
    """Registered model names, in registration order (family by family, in the papers' table order)."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; registered models: {list_models()}")
    return _REGISTRY[name]


def model_options(name: str) -> dict[str, Any]:
    """The options ``create_model(name, ...)`` accepts, with their defaults.

    Raises:
        ValueError: unknown name.
    """
    params = inspect.signature(_entry(name).builder).parameters
    return {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in REQUIRED}


def model_info(name: str) -> dict[str, Any]:
    """What the registry knows about ``name``: the paper row, its mIoU, the paper's input size, the options.

    Raises:
        ValueError: unknown name.
    """
    entry = _entry(name)
    return {
        "name": name,
        "paper": entry.paper,
        "miou": entry.miou,
        "input_size": entry.input_size,
        "options": model_options(name),
    }


def create_model(
    name: str, *, num_classes: int, pretrained_backbone: str | os.PathLike[str] | None = None, **options: Any
) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of output classes K.
        pretrained_backbone: a local backbone weights file (see ``nlseg.backbones.load_backbone_weights``).
        options: the model's options by keyword (see :func:`model_options`).

    Returns:
        The model; ``model(x)`` returns ``{"out": (B, K, H, W), "aux": [(B, K, H, W), ...]}``.

    Raises:
        ValueError: unknown name (the message lists the registered ones and the closest match).
        TypeError: an option the model does not accept (the message lists the accepted ones).
    """
    entry = _entry(name)
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} got unknown option(s) {unknown}; it accepts {list(accepted)}")
    return entry.builder(num_classes=num_classes, pretrained_backbone=pretrained_backbone, **options)
