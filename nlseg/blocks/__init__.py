"""Context blocks (nn.Modules built on ``nlseg.ops``) and the one factory that builds them by name.

Every block has an ``out_channels`` attribute and a class attribute ``num_inputs``: 1 for
``forward(x)``; 2 for the fusion blocks' ``forward(low, high)`` (low = stage 4 / layer3, high =
stage 5 / layer4) and for ``DenoisedNL.forward(x, class_map)``.

``create_block(name, in_channels, **options)`` passes ``options`` to the block's constructor and
refuses any it does not accept. For the fusion blocks ("afnb", "fnb", "common_fusion")
``in_channels`` is the high-level channels, ``low_channels`` is a required option and
``out_channels`` (where the block has it) defaults to ``in_channels``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from nlseg.blocks.aspp import ASPP
from nlseg.blocks.asymmetric import AFNB, APNB, FNB, CommonFusion
from nlseg.blocks.criss_cross import CrissCrossAttention, RCCAModule
from nlseg.blocks.denoised import DenoisedNL
from nlseg.blocks.dual_attention import (
    ChannelAttention,
    CompactChannelAttention,
    CompactDualAttention,
    CompactPositionAttention,
    DualAttention,
    PositionAttention,
)
from nlseg.blocks.nonlocal_block import NonLocal2d
from nlseg.blocks.object_context import ObjectContext
from nlseg.blocks.pyramid_pooling import PPM

__all__ = [
    "AFNB",
    "APNB",
    "ASPP",
    "FNB",
    "PPM",
    "ChannelAttention",
    "CommonFusion",
    "CompactChannelAttention",
    "CompactDualAttention",
    "CompactPositionAttention",
    "CrissCrossAttention",
    "DenoisedNL",
    "DualAttention",
    "NonLocal2d",
    "ObjectContext",
    "PositionAttention",
    "RCCAModule",
    "create_block",
    "list_blocks",
    "register_block",
]


@dataclass(frozen=True)
class _Entry:
    cls: type[nn.Module]
    channels_arg: str  # the constructor parameter that receives create_block's in_channels

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """Constructor parameters a caller may pass as options, by name."""
        params = inspect.signature(self.cls).parameters
        return {name: p for name, p in params.items() if name != self.channels_arg}


_REGISTRY: dict[str, _Entry] = {}


def register_block(name: str, cls: type[nn.Module], *, channels_arg: str = "in_channels") -> None:
    """Register ``cls`` under ``name``; ``channels_arg`` is the parameter ``create_block`` fills with in_channels.

    Raises:
        ValueError: ``name`` is already registered.
        TypeError: ``cls`` takes no ``channels_arg`` parameter, or swallows ``**kwargs``.
    """
    if name in _REGISTRY:
        raise ValueError(
            f"block {name!r} is already registered (as {_REGISTRY[name].cls.__name__}); "
            f"registered blocks: {list_blocks()}"
        )
    params = inspect.signature(cls).parameters
    if channels_arg not in params:
        raise TypeError(f"{cls.__name__} has no parameter {channels_arg!r}; it takes {list(params)}")
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
        raise TypeError(f"{cls.__name__} takes *args/**kwargs; blocks need explicit options so typos fail loudly")
    _REGISTRY[name] = _Entry(cls, channels_arg)


def list_blocks() -> list[str]:
    """Names accepted by :func:`create_block`, sorted."""
    return sorted(_REGISTRY)


def create_block(name: str, in_channels: int, **options) -> nn.Module:
    """Build the block registered as ``name`` on ``in_channels`` input channels.

    Args:
        name: one of :func:`list_blocks`.
        in_channels: input channels (the high-level map's for fusion blocks).
        options: the block's other constructor arguments, by keyword.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
        TypeError: an option the block does not accept, or a required one missing (the message lists
            the accepted options).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown block {name!r}; registered blocks: {list_blocks()}")
    entry = _REGISTRY[name]
    accepted = entry.options
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"block {name!r} ({entry.cls.__name__}) got unknown option(s) {unknown}; it accepts {list(accepted)}"
        )
    if entry.channels_arg == "high_channels" and "out_channels" in accepted:
        options.setdefault("out_channels", in_channels)
    missing = [n for n, p in accepted.items() if p.default is p.empty and n not in options]
    if missing:
        raise TypeError(f"block {name!r} ({entry.cls.__name__}) needs option(s) {missing}; it accepts {list(accepted)}")
    return entry.cls(**{entry.channels_arg: in_channels}, **options)


register_block("nl", NonLocal2d)
register_block("apnb", APNB)
register_block("afnb", AFNB, channels_arg="high_channels")
register_block("fnb", FNB, channels_arg="high_channels")
register_block("common_fusion", CommonFusion, channels_arg="high_channels")
register_block("denoised_nl", DenoisedNL)
register_block("ocnet", ObjectContext)
register_block("ccnet", RCCAModule)
register_block("danet", DualAttention)
register_block("dranet", CompactDualAttention)
register_block("ppm", PPM)
register_block("aspp", ASPP)
