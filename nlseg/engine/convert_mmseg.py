"""mmsegmentation checkpoints of the compared blocks' original networks -> nlseg checkpoints (``nlseg convert mmseg``).

nlseg's ``nl_head_*``, ``danet_head_*``, ``ppm_head_*``, ``aspp_head_*``, ``ann_head_*``, ``ccnet_head_*`` and
``fcn_head_*`` models are mmsegmentation's ``nonlocal_r50-d8``, ``danet_r50-d8``, ``pspnet_r50-d8``,
``deeplabv3_r50-d8``, ``ann_r50-d8``, ``ccnet_r50-d8`` and ``fcn_r50-d8`` networks (and their R-101 versions; see
:mod:`nlseg.models.heads`). A checkpoint of one of them (``{"meta", "state_dict", ...}``, keys
``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``) maps onto the nlseg model key by key, with the strict
rules of :func:`nlseg.engine.convert.map_state_dict`, written from mmsegmentation 1.2.2's and mmcv 2.x's
module names:

- backbone (``ResNetV1c``): the stem ``stem.{0,1,3,4,6}`` -> ``conv1.*``, ``stem.7`` -> ``bn1``; the stages keep
  their names. Every ``ConvModule`` is ``.conv`` + ``.bn``, nlseg's ``ConvNormAct`` ``.0`` + ``.1``.
- ``auxiliary_head`` (FCNHead, one conv) -> ``aux_heads.layer3``.
- NLHead: ``convs.0``, ``nl_block`` (``theta`` = query, ``phi`` = key, ``g`` = value, ``conv_out`` = Wo + BN),
  ``convs.1``, ``conv_cat`` (the input concatenated first, as in nlseg).
- DAHead: ``pam_in_conv``, ``pam`` (``query_project``, ``key_project``, ``value_project``, ``gamma.scale``),
  ``pam_out_conv`` and the same for ``cam``. ``pam_conv_seg`` and ``cam_conv_seg``, the two classifiers only the
  extra training losses read, are left out (nlseg's decoder returns one logit map).
- PSPHead: ``psp_modules.i.1`` -> ``branches.i``, ``bottleneck`` (the input first, then the pooled branches).
- ASPPHead: ``aspp_modules.i`` -> ``branches.i``, ``image_pool.1`` -> ``image_pool``, ``bottleneck`` ->
  ``project.0``. mmsegmentation concatenates the image-pooling branch first, nlseg last: the bottleneck's input
  channels are moved from (pool, b0..b3) to (b0..b3, pool), which gives the same function.
- ANNHead: ``fusion`` (AFNB: ``stages.0.{query,key,value,out}_project``, ``bottleneck`` -> ``fuse.0``) ->
  ``decoder.fusion``; ``bottleneck`` -> ``decoder.reduce``; ``context`` (APNB) -> ``decoder.context``. APNB's key
  and query projection is one module registered under two names, so the file holds it twice: ``query_project``
  must equal ``key_project`` and is dropped (nlseg's APNB keeps it once, as ``key``).
- CCHead: ``convs.0`` -> ``reduce``, ``cca`` (``query_conv``, ``key_conv``, ``value_conv``, ``gamma.scale``) ->
  ``attention``, ``convs.1`` -> ``expand``, ``conv_cat`` -> ``bottleneck.0`` of nlseg's RCCAModule.
- FCNHead (``num_convs=2, concat_input=True``): ``convs.0``, ``convs.1``, ``conv_cat`` (the input first).

mmsegmentation's DNLHead (``decode_head.dnl_block``: the Disentangled Non-Local block, a different block from the
Denoised NL block nlseg is built around) is recognised and refused with the differences named (:data:`REFUSED`).

Two tensors change form, not value: mmcv's ``Scale`` holds a 0-d scalar, nlseg's γ a (1,) tensor; and the ASPP
bottleneck above. The recipe (default: the one named after the file's head and depth) gives the classes.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from nlseg.config import Config, load_config
from nlseg.engine.convert import Layout, convert_with_layout, read_released
from nlseg.errors import CheckpointError, ConfigError

__all__ = ["HEAD_CLASSES", "MMSEG_LAYOUTS", "REFUSED", "convert_mmseg", "mmseg_recipe"]

_BACKBONE = (
    ("backbone.stem.0", "backbone.conv1.0"), ("backbone.stem.1", "backbone.conv1.1"),
    ("backbone.stem.3", "backbone.conv1.3"), ("backbone.stem.4", "backbone.conv1.4"),
    ("backbone.stem.6", "backbone.conv1.6"), ("backbone.stem.7", "backbone.bn1"),
    *((f"backbone.layer{i}", f"backbone.layer{i}") for i in range(1, 5)),
    ("auxiliary_head.convs.0.conv", "aux_heads.layer3.0.0"), ("auxiliary_head.convs.0.bn", "aux_heads.layer3.0.1"),
    ("auxiliary_head.conv_seg", "aux_heads.layer3.2"),
    ("decode_head.conv_seg", "decoder.classifier"),
)


def _module(mmseg: str, nlseg: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """A ConvModule (``.conv``, ``.bn``) -> a ConvNormAct (``.0``, ``.1``)."""
    return (f"{mmseg}.conv", f"{nlseg}.0"), (f"{mmseg}.bn", f"{nlseg}.1")


def _layout(
    head: str,
    renames: tuple[tuple[str, str], ...],
    dropped: tuple[str, ...] = (),
    aliases: tuple[tuple[str, str], ...] = (),
) -> Layout:
    return Layout(
        name="mmseg",
        description=f"mmsegmentation {head} checkpoint",
        renames=(*_BACKBONE, *renames),
        aliases=aliases,
        dropped=dropped,
        models=(f"{head}_head_r50", f"{head}_head_r101"),
        recipe=f"{head}_head_r50_cityscapes",
    )


_NL, _DA, _CC = "decode_head.nl_block", "decode_head", "decode_head.cca"
_AFNB, _APNB = "decode_head.fusion.stages.0", "decode_head.context.stages.0"
MMSEG_LAYOUTS: dict[str, Layout] = {
    "nl": _layout("nl", (
        *_module("decode_head.convs.0", "decoder.head.inner.0"),
        (f"{_NL}.theta.conv", "decoder.head.inner.1.query"), (f"{_NL}.phi.conv", "decoder.head.inner.1.key"),
        (f"{_NL}.g.conv", "decoder.head.inner.1.value"),
        *_module(f"{_NL}.conv_out", "decoder.head.inner.1.out_proj"),
        *_module("decode_head.convs.1", "decoder.head.inner.2"),
        *_module("decode_head.conv_cat", "decoder.head.fuse"),
    )),
    "danet": _layout("danet", (
        *((pair for branch, name in (("pam", "position"), ("cam", "channel")) for pair in (
            *_module(f"{_DA}.{branch}_in_conv", f"decoder.head.{name}.0"),
            (f"{_DA}.{branch}.gamma.scale", f"decoder.head.{name}.1.gamma"),
            *_module(f"{_DA}.{branch}_out_conv", f"decoder.head.{name}.2"),
        ))),
        (f"{_DA}.pam.query_project", "decoder.head.position.1.query"),
        (f"{_DA}.pam.key_project", "decoder.head.position.1.key"),
        (f"{_DA}.pam.value_project", "decoder.head.position.1.value"),
    ), dropped=("decode_head.pam_conv_seg", "decode_head.cam_conv_seg")),
    "ppm": _layout("ppm", (
        *(pair for i in range(4) for pair in _module(f"decode_head.psp_modules.{i}.1", f"decoder.head.branches.{i}")),
        *_module("decode_head.bottleneck", "decoder.head.bottleneck"),
    )),
    "aspp": _layout("aspp", (
        *(pair for i in range(4) for pair in _module(f"decode_head.aspp_modules.{i}", f"decoder.head.branches.{i}")),
        *_module("decode_head.image_pool.1", "decoder.head.image_pool"),
        *_module("decode_head.bottleneck", "decoder.head.project.0"),
    )),
    "ann": _layout("ann", (
        *_module(f"{_AFNB}.query_project", "decoder.fusion.query"),
        *_module(f"{_AFNB}.key_project", "decoder.fusion.key"),
        (f"{_AFNB}.value_project", "decoder.fusion.value"), (f"{_AFNB}.out_project", "decoder.fusion.out_proj"),
        *_module("decode_head.fusion.bottleneck", "decoder.fusion.fuse.0"),
        *_module("decode_head.bottleneck", "decoder.reduce"),
        *_module(f"{_APNB}.key_project", "decoder.context.key"),
        (f"{_APNB}.value_project", "decoder.context.value"), (f"{_APNB}.out_project", "decoder.context.out_proj"),
        *_module("decode_head.context.bottleneck", "decoder.context.fuse.0"),
    ), aliases=((f"{_APNB}.query_project", f"{_APNB}.key_project"),)),
    "ccnet": _layout("ccnet", (
        *_module("decode_head.convs.0", "decoder.head.reduce"),
        (f"{_CC}.query_conv", "decoder.head.attention.query"), (f"{_CC}.key_conv", "decoder.head.attention.key"),
        (f"{_CC}.value_conv", "decoder.head.attention.value"), (f"{_CC}.gamma.scale", "decoder.head.attention.gamma"),
        *_module("decode_head.convs.1", "decoder.head.expand"),
        *_module("decode_head.conv_cat", "decoder.head.bottleneck.0"),
    )),
    "fcn": _layout("fcn", (
        *_module("decode_head.convs.0", "decoder.head.inner.0"),
        *_module("decode_head.convs.1", "decoder.head.inner.1"),
        *_module("decode_head.conv_cat", "decoder.head.fuse"),
    )),
}
"""One key map per head; the file's ``decode_head`` modules say which (:func:`_head_of`)."""

_MARKERS = (("nl", "decode_head.nl_block."), ("danet", "decode_head.pam."), ("ppm", "decode_head.psp_modules."),
            ("aspp", "decode_head.aspp_modules."), ("ann", "decode_head.fusion."), ("ccnet", "decode_head.cca."))
_FCN_MARKER = "decode_head.convs."
"""FCNHead's convolutions, which NLHead and CCHead extend: an FCN file is one with them and no other head's."""
HEAD_CLASSES = {"nl": "NLHead", "danet": "DAHead", "ppm": "PSPHead", "aspp": "ASPPHead", "ann": "ANNHead",
                "ccnet": "CCHead", "fcn": "FCNHead"}
"""mmsegmentation's class of each head nlseg loads."""
_CLASS_NAMES = tuple(HEAD_CLASSES.values())
REFUSED = {
    "decode_head.dnl_block.": (
        "DNLHead (dnlnet), the Disentangled Non-Local block (Yin et al., ECCV 2020), which no nlseg model computes: "
        "it is not nlseg's denoised_nl_* (the Denoised NL block of Song et al., TNNLS 2023, with Global Rectifying "
        "and Local Retention), and it differs from nl_head_*'s non-local block in its whitened query and key (their "
        "means over positions subtracted), a softmax temperature of 0.05 and a unary branch (conv_mask: a softmax "
        "over positions that pools g, added before Wo)"
    ),
}
"""mmsegmentation heads recognised by a ``decode_head`` key and refused: what differs from nlseg's nearest model."""
_DEPTHS = {6: 50, 23: 101}
"""Blocks in layer3 -> ResNet depth."""


def _head_of(state: Mapping[str, Tensor], source: str) -> tuple[str, int]:
    """The head and ResNet depth of an mmsegmentation checkpoint, from its key names."""
    for marker, why in REFUSED.items():
        if any(k.startswith(marker) for k in state):
            raise CheckpointError(f"{source} is mmsegmentation's {why}; not converted")
    heads = [head for head, marker in _MARKERS if any(k.startswith(marker) for k in state)]
    if not heads and any(k.startswith(_FCN_MARKER) for k in state):
        heads = ["fcn"]
    blocks = len({k.split(".")[2] for k in state if k.startswith("backbone.layer3.")})
    if len(heads) != 1 or blocks not in _DEPTHS:
        found = ", ".join(sorted({".".join(k.split(".")[:2]) for k in state})[:8])
        raise CheckpointError(
            f"{source} is not an mmsegmentation {', '.join(_CLASS_NAMES[:-1])} or {_CLASS_NAMES[-1]} checkpoint on a "
            "ResNet-50/101 "
            f"(expected decode_head.nl_block, .pam, .psp_modules, .aspp_modules, .fusion, .cca or .convs and 6 or "
            f"23 blocks in backbone.layer3; found {found} and {blocks} blocks)"
        )
    return heads[0], _DEPTHS[blocks]


def mmseg_recipe(source: str | os.PathLike[str]) -> str:
    """The recipe named after an mmsegmentation checkpoint's head and depth (``nl_head_r101_cityscapes``)."""
    head, depth = _head_of(read_released(source), str(source))
    return f"{head}_head_r{depth}_cityscapes"


def _reshaped(state: dict[str, Tensor], head: str) -> dict[str, Tensor]:
    """The two tensors whose form differs: mmcv's 0-d ``Scale``, and ASPP's bottleneck input order."""
    state = {k: v.reshape(1) if k.endswith("gamma.scale") and v.dim() == 0 else v for k, v in state.items()}
    key = "decode_head.bottleneck.conv.weight"
    if head == "aspp" and key in state:
        weight = state[key]  # (out, 5 * C, 3, 3): image pool first
        if weight.shape[1] % 5 == 0:
            pool, branches = weight.split([weight.shape[1] // 5, weight.shape[1] * 4 // 5], dim=1)
            state[key] = torch.cat([branches, pool], dim=1)  # nlseg: branches first, image pool last
    return state


def convert_mmseg(source: str | os.PathLike[str], cfg: Config | None = None) -> dict[str, Any]:
    """Convert an mmsegmentation checkpoint of NLHead / DAHead / PSPHead / ASPPHead / ANNHead / CCHead / FCNHead on
    ResNet-50/101 (V1c).

    Args:
        source: the mmsegmentation ``.pth`` (``state_dict`` inside, or a plain state dict).
        cfg: the recipe of the nlseg model; None: the recipe named after the file's head and depth.

    Returns:
        a checkpoint as ``nlseg train`` writes its ``best.pt`` (see :func:`nlseg.engine.convert.convert_released`).

    Raises:
        CheckpointError: an unreadable file, a file of another network, keys or shapes that do not fit.
        ConfigError: a recipe whose model is not the file's head and depth.
    """
    state = read_released(source)
    head, depth = _head_of(state, str(source))
    if cfg is None:
        cfg = load_config(f"{head}_head_r{depth}_cityscapes")
    elif cfg.model.name != f"{head}_head_r{depth}":
        raise ConfigError(f"{source} is an mmsegmentation {head} network on ResNet-{depth}; recipe {cfg.name} builds "
                          f"{cfg.model.name!r}, expected {head}_head_r{depth}")
    return convert_with_layout(MMSEG_LAYOUTS[head], _reshaped(state, head), str(source), cfg)
