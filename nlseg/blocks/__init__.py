"""Context blocks (nn.Modules built on ``nlseg.ops``) and the one factory that builds them by name.

Every block has an ``out_channels`` attribute and a class attribute ``num_inputs``: 1 for
``forward(x)``; 2 for the fusion blocks' ``forward(low, high)`` (low = stage 4 / layer3, high =
stage 5 / layer4) and for ``DenoisedNL.forward(x, class_map)``.

``create_block(name, in_channels, **options)`` passes ``options`` to the block's builder and refuses any
it does not accept. For the fusion blocks ("afnb", "fnb", "common_fusion") ``in_channels`` is the
high-level channels, ``low_channels`` is a required option and ``out_channels`` (where the block has it)
defaults to ``in_channels``. One name means one module everywhere: in the models, in ``nlseg bench`` and
in the pictures. A Denoised NL comparison model ``<name>_r50/_r101`` uses ``create_block("<name>", 512)``.

Blocks own their math. Every attention block has a ``fused`` attribute (default True): False runs its op's
plain reference path, which materialises the map as the released code does; :func:`set_fused` sets it on
every block inside a model. ``APNB.attend(x)`` / ``NonLocal2d.attend(x)`` are the attention branch alone,
``Wo(O)`` (ANN Table 1's unit). ``block.attention_rows(*inputs, index=(y, x))`` returns the attention row(s)
of one query position as ``{title: (B, H, W)}`` (DenoisedNL, APNB / ObjectContext, NonLocal2d,
PositionAttention, CrissCrossAttention).

=================  ===============================================================================
name               module
=================  ===============================================================================
``denoised_nl``    :class:`DenoisedNL` (Denoised NL §III)
``apnb``           :class:`APNB` (ANN §3.2)
``afnb``           :class:`AFNB` (ANN §3.3), fusion
``fnb``            :class:`FNB`: AFNB with all keys (ANN Table 6), fusion
``common_fusion``  :class:`CommonFusion` (ANN Table 6), fusion
``nb``             ANN's NB: :class:`NonLocal2d` in its concatenation form (ANN Table 6)
``nonlocal2d``     :class:`NonLocal2d` as Wang et al.: ``x + BN(Wo(O))``
``nl``             the Denoised NL tables' "+NL": :class:`PositionAttention` (q, k at C/8, v at C, γ, no scale)
``ocnet``          :class:`ObjectContext`, OCNet's base object-context block
``ccnet``          recurrent criss-cross attention, R = 2 (:class:`CrissCrossAttention`)
``cca``            one criss-cross pass, R = 1 (:class:`CrissCrossAttention`)
``ccnet_head``     CCNet's RCCA head with its 3x3 convolutions (:class:`RCCAModule`)
``danet``          PAM + CAM on the map, summed (:class:`ParallelSum`), the Denoised NL tables' "+DANet"
``danet_head``     DANet's head with its 3x3 convolutions (:class:`DualAttention`)
``dranet``         CPAM + CCAM on the map, summed (:class:`ParallelSum`), the Denoised NL tables' "+DRANet*"
``dranet_head``    DRANet's head with its 3x3 convolutions (:class:`CompactDualAttention`)
``ppm``            PSPNet's pyramid pooling, C channels out (:class:`PPM`)
``aspp``           DeepLabV3's ASPP at 1/16 (rates 6, 12, 18), C channels out (:class:`ASPP`)
=================  ===============================================================================
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from nlseg.blocks.aspp import ASPP, aspp_at_stride_16
from nlseg.blocks.asymmetric import AFNB, APNB, FNB, CommonFusion
from nlseg.blocks.criss_cross import CrissCrossAttention, RCCAModule, criss_cross_once
from nlseg.blocks.denoised import DenoisedNL
from nlseg.blocks.dual_attention import (
    ChannelAttention,
    CompactChannelAttention,
    CompactDualAttention,
    CompactPositionAttention,
    DualAttention,
    PositionAttention,
    compact_position_channel_attention,
    position_channel_attention,
)
from nlseg.blocks.layers import ParallelSum
from nlseg.blocks.nonlocal_block import NonLocal2d, nonlocal_concat
from nlseg.blocks.object_context import ObjectContext
from nlseg.blocks.pyramid_pooling import PPM, ppm_keep_width
from nlseg import registry
from nlseg.registry import Registry, keyword_options

__all__ = [
    "BLOCKS",
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
    "ParallelSum",
    "PositionAttention",
    "RCCAModule",
    "ROW_BLOCKS",
    "block_options",
    "create_block",
    "list_blocks",
    "register_block",
    "set_fused",
]

ROW_BLOCKS: tuple[type[nn.Module], ...] = (
    DenoisedNL,
    APNB,  # ANN's APNB, and OCNet's block (ObjectContext, an APNB without pooling)
    NonLocal2d,  # ANN's NB rows, Wang et al.'s block
    PositionAttention,  # the NL rows of the Denoised NL tables, DANet's position branch
    CrissCrossAttention,  # CCNet, also inside RCCAModule
)
"""Blocks with ``attention_rows(*inputs, index=(y, x))``: one query position's attention over the grid."""


def set_fused(module: nn.Module, fused: bool) -> int:
    """Set ``fused`` on every attention block inside ``module`` (itself included).

    Args:
        module: a block or a model.
        fused: True for the ops' fast paths, False for their reference paths (the materialised maps).

    Returns:
        how many blocks were set.
    """
    blocks = [m for m in module.modules() if isinstance(getattr(m, "fused", None), bool)]
    for block in blocks:
        block.fused = fused
    return len(blocks)


BlockBuilder = Callable[..., nn.Module]
"""A block class, or a function building one, with explicit parameters (no ``**kwargs``)."""


@dataclass(frozen=True)
class _Entry:
    builder: BlockBuilder
    channels_arg: str  # the parameter that receives create_block's in_channels

    @property
    def label(self) -> str:
        """The builder's name, for messages."""
        return self.builder.__name__

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """Builder parameters a caller may pass as options, by name."""
        return keyword_options(self.builder, skip=[self.channels_arg])


BLOCKS: Registry[_Entry] = registry.BLOCKS


def register_block(name: str, builder: BlockBuilder, *, channels_arg: str = "in_channels") -> None:
    """Register ``builder`` (a block class or a function returning a block) under ``name``.

    Args:
        name: the block's name.
        builder: called as ``builder(**{channels_arg: in_channels}, **options)``.
        channels_arg: the parameter ``create_block`` fills with ``in_channels``.

    Raises:
        ValueError: ``name`` is already registered.
        TypeError: ``builder`` takes no ``channels_arg`` parameter, or swallows ``**kwargs``.
    """
    params = keyword_options(builder)
    if channels_arg not in params:
        raise TypeError(f"{builder.__name__} has no parameter {channels_arg!r}; it takes {list(params)}")
    BLOCKS.register(name, _Entry(builder, channels_arg))


def list_blocks() -> list[str]:
    """Names accepted by :func:`create_block`, sorted."""
    return BLOCKS.names(sort=True)


def block_options(name: str) -> dict[str, Any]:
    """The options ``create_block(name, in_channels, ...)`` accepts, with their defaults (``inspect.Parameter.empty``
    for a required one).

    Raises:
        ValueError: unknown name.
    """
    return {option: p.default for option, p in BLOCKS.lookup(name).options.items()}


def create_block(name: str, in_channels: int, **options: Any) -> nn.Module:
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
    entry = BLOCKS.lookup(name)
    accepted = entry.options
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"block {name!r} ({entry.label}) got unknown option(s) {unknown}; it accepts {list(accepted)}")
    if entry.channels_arg == "high_channels" and "out_channels" in accepted:
        options.setdefault("out_channels", in_channels)
    missing = [n for n, p in accepted.items() if p.default is p.empty and n not in options]
    if missing:
        raise TypeError(f"block {name!r} ({entry.label}) needs option(s) {missing}; it accepts {list(accepted)}")
    return entry.builder(**{entry.channels_arg: in_channels}, **options)


register_block("denoised_nl", DenoisedNL)
register_block("apnb", APNB)
register_block("afnb", AFNB, channels_arg="high_channels")
register_block("fnb", FNB, channels_arg="high_channels")
register_block("common_fusion", CommonFusion, channels_arg="high_channels")
register_block("nb", nonlocal_concat)
register_block("nonlocal2d", NonLocal2d)
register_block("nl", PositionAttention)
register_block("ocnet", ObjectContext)
register_block("ccnet", CrissCrossAttention)
register_block("cca", criss_cross_once)
register_block("ccnet_head", RCCAModule)
register_block("danet", position_channel_attention)
register_block("danet_head", DualAttention)
register_block("dranet", compact_position_channel_attention)
register_block("dranet_head", CompactDualAttention)
register_block("ppm", ppm_keep_width)
register_block("aspp", aspp_at_stride_16)
