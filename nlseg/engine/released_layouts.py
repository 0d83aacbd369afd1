"""The key maps of the authors' released files (``nlseg convert``): one :class:`Layout` per format, each written
from the released code's module names (no key is guessed). :mod:`nlseg.engine.convert` applies them.

- ``ann-backbone``: MendelXu/ANN's ImageNet deep-base ResNet (``3x3resnet101-imagenet.pth``).
- ``ann``: a checkpoint of MendelXu/ANN's ``annn.py`` network (``fs_annn_cityscapes_segohem_latest.pth``).
- ``dnl``: a state dict of maggiesong7/DenoisedNL's ``model.py`` network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ANN", "ANN_BACKBONE", "DNL", "FORMATS", "LAYOUTS", "STAGES", "Layout"]


@dataclass(frozen=True)
class Layout:
    """How one released network's state dict maps onto an nlseg module.

    Prefixes are module paths (``"dsn.1.0"``); a rule applies to a key equal to the prefix or below it.

    Attributes:
        name: the ``nlseg convert`` format.
        description: what the file is, for messages.
        renames: (released prefix, nlseg prefix) pairs; the longest matching prefix wins.
        aliases: (alias prefix, prefix) pairs of released modules registered twice; the alias's tensors
            must equal the others and are dropped.
        folded_biases: (conv prefix, norm prefix) pairs, released names: the conv's bias is subtracted from
            the norm's running mean (exact; see the module docstring).
        dropped: released prefixes deliberately left out (the ImageNet classifier).
        models: the nlseg models the layout converts into (checkpoint formats), or () for a backbone file.
        options: model options the released network has, written into the converted checkpoint's recipe.
        normalize: the input normalisation the released weights expect, or None to keep the recipe's.
        recipe: the default recipe.
    """

    name: str
    description: str
    renames: tuple[tuple[str, str], ...]
    aliases: tuple[tuple[str, str], ...] = ()
    folded_biases: tuple[tuple[str, str], ...] = ()
    dropped: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    normalize: str | None = None
    recipe: str | None = None


STAGES = tuple((f"layer{i}", f"layer{i}") for i in range(1, 5))
"""The four ResNet stages, named alike in the released files and in nlseg."""
_DEEP_BASE_STEM = (("conv1", "conv1.0"), ("bn1", "conv1.1"), ("conv2", "conv1.3"), ("bn2", "conv1.4"),
                   ("conv3", "conv1.6"), ("bn3", "bn1"))
"""ANN's deep-base stem (torchcv names, as a ``prefix`` Sequential) -> nlseg's deep stem."""

_APNB, _AFNB = "context.2.stages.0", "fusion.stages.0"

ANN_BACKBONE = Layout(
    name="ann-backbone",
    description="ANN ImageNet deep-base ResNet (3x3resnet101-imagenet.pth)",
    renames=(*_DEEP_BASE_STEM, *((f"prefix.{a}", b) for a, b in _DEEP_BASE_STEM), *STAGES),
    dropped=("fc",),
)

ANN = Layout(
    name="ann",
    description="ANN released network (MendelXu/ANN annn.py)",
    renames=(
        *((f"backbone.prefix.{a}", f"backbone.{b}") for a, b in _DEEP_BASE_STEM),
        *((f"backbone.{a}", f"backbone.{b}") for a, b in STAGES),
        ("dsn.0", "aux_heads.layer3.0.0"), ("dsn.1.0", "aux_heads.layer3.0.1"), ("dsn.3", "aux_heads.layer3.2"),
        (f"{_AFNB}.f_query.0", "decoder.fusion.query.0"), (f"{_AFNB}.f_query.1.0", "decoder.fusion.query.1"),
        (f"{_AFNB}.f_key.0", "decoder.fusion.key.0"), (f"{_AFNB}.f_key.1.0", "decoder.fusion.key.1"),
        (f"{_AFNB}.f_value", "decoder.fusion.value"), (f"{_AFNB}.W", "decoder.fusion.out_proj"),
        ("fusion.conv_bn_dropout.0", "decoder.fusion.fuse.0.0"), ("fusion.conv_bn_dropout.1", "decoder.fusion.fuse.0.1"),
        ("context.0", "decoder.reduce.0"), ("context.1.0", "decoder.reduce.1"),
        (f"{_APNB}.f_key.0", "decoder.context.key.0"), (f"{_APNB}.f_key.1.0", "decoder.context.key.1"),
        (f"{_APNB}.f_value", "decoder.context.value"), (f"{_APNB}.W", "decoder.context.out_proj"),
        ("context.2.conv_bn_dropout.0", "decoder.context.fuse.0.0"),
        ("context.2.conv_bn_dropout.1.0", "decoder.context.fuse.0.1"),
        ("cls", "decoder.classifier"),
    ),
    aliases=((f"{_APNB}.f_query", f"{_APNB}.f_key"),),
    folded_biases=(
        ("dsn.0", "dsn.1.0"),
        (f"{_AFNB}.f_query.0", f"{_AFNB}.f_query.1.0"),
        (f"{_AFNB}.f_key.0", f"{_AFNB}.f_key.1.0"),
        ("fusion.conv_bn_dropout.0", "fusion.conv_bn_dropout.1"),
        ("context.0", "context.1.0"),
        (f"{_APNB}.f_key.0", f"{_APNB}.f_key.1.0"),
        ("context.2.conv_bn_dropout.0", "context.2.conv_bn_dropout.1.0"),
    ),
    models=("ann_r50", "ann_r101"),
    options=(("stem", "deep"), ("stem_ceil_mode", True)),
    normalize="caffe",
    recipe="ann_r101_cityscapes",
)

DNL = Layout(
    name="dnl",
    description="Denoised NL released network (maggiesong7/DenoisedNL model.py)",
    renames=(
        ("backbone", "backbone"),
        ("conv.0", "decoder.reduction.0.0"), ("conv.1", "decoder.reduction.0.1"),
        ("down_sample", "decoder.reduction.1"),
        ("dnl.conv1", "decoder.block.query"), ("dnl.conv2", "decoder.block.key"),
        ("dnl.conv3", "decoder.block.value"), ("dnl.gamma", "decoder.block.gamma"),
        ("dnl.conv.0", "decoder.fuse.0"), ("dnl.conv.1", "decoder.fuse.1"),
        ("dnl.conv_out3.conv.0", "aux_heads.layer3.0.0"), ("dnl.conv_out3.conv.1", "aux_heads.layer3.0.1"),
        ("dnl.conv_out3.conv.4", "aux_heads.layer3.2"),
        ("conv_out1.conv.0", "decoder.head.0.0"), ("conv_out1.conv.1", "decoder.head.0.1"),
        ("conv_out1.conv.4", "decoder.head.2"),
        ("conv_out2.conv.0", "aux_heads.layer2.0.0"), ("conv_out2.conv.1", "aux_heads.layer2.0.1"),
        ("conv_out2.conv.4", "aux_heads.layer2.2"),
    ),
    aliases=(("interp", "down_sample.downsample"),),
    models=("denoised_nl_r18", "denoised_nl_r50", "denoised_nl_r101"),
    options=(("global_context", False),),
    recipe="denoised_nl_r101_cityscapes",
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (ANN_BACKBONE, ANN, DNL)}
FORMATS: tuple[str, ...] = tuple(LAYOUTS)
