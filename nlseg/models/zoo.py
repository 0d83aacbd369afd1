"""The model table ("zoo"): every registered model, the paper row it reproduces and that row's figures.

This is the one place that holds the papers' numbers for models: mIoU on Cityscapes val (ANN Table 6;
Denoised NL Tables II-IV), ANN Table 2's parameters / memory / time of the full network, and Denoised NL
Table V's deltas over its Baseline. The registry (``nlseg.models.create_model``, ``model_info``),
``benchmarks/model_table.py``, the benchmarks of ``nlseg.analysis`` and ``docs/models.md`` read it.
Block-level tables (ANN Table 1) are not models and live with the benchmarks.

A :class:`ZooVariant` is a paper row reached by a registered model with options (Table II's GR-only
and LR-only rows, the released variants), so it needs no name of its own.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from nlseg.models.ann import ANN_BACKBONE, ann
from nlseg.models.base import BackboneOptions
from nlseg.models.denoised import DENOISED_NL_BACKBONE, denoised_nl, denoised_nl_pipeline
from nlseg.models.fcn import fcn
from nlseg.models.heads import HEADS_BACKBONE, context_head
from nlseg.registry import MODELS, Registry

__all__ = ["ANN_INPUT", "ANN_TABLE7", "ANN_TABLE9", "ANN_RELEASED_BACKBONE", "DNL_INPUT", "ZOO", "ZooEntry", "ZooVariant", "zoo_entry"]

ANN_INPUT: tuple[int, int] = (1024, 2048)
"""(H, W) at which ANN measures its networks (Table 2: whole 2048 x 1024 Cityscapes images)."""
DNL_INPUT: tuple[int, int] = (768, 768)
"""(H, W) at which the Denoised NL paper measures its networks (Table V: 1 x 3 x 768 x 768)."""

ANN_RELEASED_BACKBONE: Mapping[str, Any] = MappingProxyType(dict(stem="deep", stem_ceil_mode=True))
"""Options that give the backbone ANN's released code trains (``deepbase_resnet101_dilated8``): the paper's rows
were measured on it, so every ANN recipe sets them."""

DNL_BASELINE_AS_FCN: Mapping[str, Any] = MappingProxyType(
    dict(aux_layers=("layer2", "layer3"), stem="deep", multi_grid=(1, 2, 4), dilate_first_block=True)
)
"""FCN options that give the Denoised NL tables' backbone and auxiliary heads (see docs/models.md)."""

ANN_TABLE7: tuple[tuple[str, str, tuple[int, ...], float], ...] = (
    ("random", "random", (15,), 78.2),
    ("max", "max", (15,), 78.1),
    ("average", "avg", (15,), 78.4),
    ("pyramid random", "random", (1, 2, 3, 6), 78.8),
    ("pyramid max", "max", (1, 2, 3, 6), 79.1),
    ("pyramid average", "avg", (1, 2, 3, 6), 79.3),
    ("pyramid average", "avg", (1, 3, 6, 8), 79.9),
    ("pyramid average", "avg", (1, 4, 8, 12), 80.1),
)
"""ANN Table 7 (Cityscapes val, the Full model): sampling method, ``pool_mode``, n, mIoU; S = Σ n²."""
ANN_TABLE9: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("4 & 5", ("layer3",), 77.1),
    ("3 & 5, 4 & 5", ("layer2", "layer3"), 76.7),
    ("2 & 5, 3 & 5, 4 & 5", ("layer1", "layer2", "layer3"), 76.2),
)
"""ANN Table 9 (Cityscapes val, + AFNB): the stages fused into Stage5, ``fusion_stages``, mIoU."""


@dataclass(frozen=True)
class ZooVariant:
    """A paper row reproduced by a registered model with ``options``.

    Args:
        row: the row, in words, e.g. "Denoised NL Table II: GR only (R-101)".
        options: the ``create_model`` options that give it.
        miou: its mIoU (%) on Cityscapes val, or None when the paper reports none.
        input_size: (H, W) the paper measures it at, when not the entry's.
    """

    row: str
    options: Mapping[str, Any]
    miou: float | None = None
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class ZooEntry:
    """One registered model and the paper row it reproduces.

    Args:
        name: the model's name, e.g. ``"denoised_nl_r101"``.
        builder: builds the model (a family builder such as :func:`~nlseg.models.fcn.fcn` with the row's
            arguments bound); its options are explicit keyword-only parameters, its ``backbone_options``
            default offers the backbone's fields, and it takes ``num_classes`` and ``pretrained_backbone``.
        paper: which paper: "ANN" (Zhu et al., ICCV 2019), "Denoised NL" (Song et al., TNNLS 2023), "original"
            for a compared block's own network (the block as the head on layer4 at 1/8, as mmsegmentation builds it;
            the row names the block's paper), or "demo" for the small networks no paper reports.
        table: the paper's table(s), e.g. "6" or "II-IV"; "" for demo networks and the original networks.
        row: the row within the table, e.g. "+ AFNB + APNB (Full) (R-101)".
        input_size: (H, W) of the image the paper measures the network at.
        miou: the row's mIoU (%) on Cityscapes val, or None when the paper reports none.
        params_m: the paper's parameter count (millions) of the whole network (ANN Table 2).
        gflops: the paper's GFLOPs of the whole network.
        memory_mb: the paper's GPU memory (MB) of the whole network at inference (ANN Table 2).
        inference_s: the paper's inference time (s) per image (ANN Table 2, one Titan Xp).
        block: the ``create_block`` name of the model's context block (ANN: the block after the fusion);
            None for the baselines and the original networks (whose heads wrap their block in convolutions).
        table5_gflops: Denoised NL Table V: GFLOPs the block adds to the Baseline at 768 x 768.
        table5_memory_mb: Denoised NL Table V: GPU memory (MB) the block adds to the Baseline.
        variants: further paper rows reached with options.
    """

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    table: str
    row: str
    input_size: tuple[int, int]
    miou: float | None = None
    params_m: float | None = None
    gflops: float | None = None
    memory_mb: float | None = None
    inference_s: float | None = None
    block: str | None = None
    table5_gflops: float | None = None
    table5_memory_mb: float | None = None
    variants: tuple[ZooVariant, ...] = field(default=())

    def options(self) -> dict[str, Any]:
        """The options ``create_model`` accepts for this model, with their defaults (:func:`model_options`)."""
        from nlseg.models.registry import model_options

        return model_options(self.name)

    def option_error(self, key: str, value: Any) -> str | None:
        """One line when ``value`` does not fit option ``key``'s declared type, else None
        (:func:`nlseg.models.option_types.option_error`)."""
        from nlseg.models.option_types import option_error

        return option_error(self.name, key, value)

    def build(self, num_classes: int, **options: Any) -> nn.Module:
        """The model with ``options`` (:func:`create_model`, no pretrained weights)."""
        from nlseg.models.registry import create_model

        return create_model(self.name, num_classes=num_classes, **options)

    @property
    def description(self) -> str:
        """The paper row in words, e.g. "ANN Table 6: + AFNB + APNB (Full) (R-101)"."""
        if not self.table:
            return f"{self.paper}: {self.row}"
        plural = "Tables" if "-" in self.table else "Table"
        return f"{self.paper} {plural} {self.table}: {self.row}"


def _on(options: BackboneOptions, depth: int, **changes: Any) -> BackboneOptions:
    """A row's backbone: a family's backbone options with ResNet-``depth`` and ``changes``."""
    return options.replace(backbone=f"resnet{depth}", **changes)


def _entries() -> list[ZooEntry]:
    classic = BackboneOptions()
    entries = [
        ZooEntry("fcn_r18", functools.partial(fcn, backbone_options=_on(classic, 18)), "demo", "",
                 "the FCN baseline on ResNet-18 (no paper row)", ANN_INPUT),
        ZooEntry("fcn_r50", functools.partial(fcn, backbone_options=_on(classic, 50)), "ANN", "6",
                 "Baseline, with ResNet-50 (the paper reports ResNet-101 only)", ANN_INPUT,
                 variants=(ZooVariant("Denoised NL Baseline (R-50) read as an FCN", DNL_BASELINE_AS_FCN, 76.7, DNL_INPUT),)),
        ZooEntry("fcn_r101", functools.partial(fcn, backbone_options=_on(classic, 101)), "ANN", "6", "Baseline (R-101)",
                 ANN_INPUT, miou=75.8,
                 variants=(ZooVariant("Denoised NL Baseline (R-101) read as an FCN", DNL_BASELINE_AS_FCN, 77.9, DNL_INPUT),)),
    ]
    # ANN Table 6: name, fusion, context, row, mIoU (ResNet-101, Cityscapes val)
    table6 = (
        ("ann_baseline", None, None, "Baseline, as the + rows build it (the ANN network without blocks)", 75.8),
        ("ann_nb", None, "nb", "+ NB", 78.4),
        ("ann_apnb", None, "apnb", "+ APNB", 78.6),
        ("ann_common_fusion", "common_fusion", None, "+ Common fusion", 76.5),
        ("ann_fnb", "fnb", None, "+ FNB", 77.3),
        ("ann_afnb", "afnb", None, "+ AFNB", 77.1),
        ("ann_common_fusion_nb", "common_fusion", "nb", "+ Common fusion + NB", 79.0),
        ("ann_fnb_nb", "fnb", "nb", "+ FNB + NB", 79.7),
        ("ann", "afnb", "apnb", "+ AFNB + APNB (Full)", 79.9),
    )
    released = ZooVariant  # the recipes' rows: on the released backbone (ANN_RELEASED_BACKBONE)
    ablations = {  # ANN Table 7 (the Full model's APNB sampling) and Table 9 (the stages AFNB fuses into Stage5)
        "ann": tuple(
            released(f"ANN Table 7: APNB {method}, n = {','.join(map(str, sizes))}, S = {sum(n * n for n in sizes)}",
                     {**ANN_RELEASED_BACKBONE, "context_pool_sizes": sizes, "context_pool_mode": mode}, miou)
            for method, mode, sizes, miou in ANN_TABLE7 if (sizes, mode) != ((1, 3, 6, 8), "avg")),
        "ann_afnb": tuple(
            released(f"ANN Table 9: AFNB fusing {fused}", {**ANN_RELEASED_BACKBONE, "fusion_stages": stages}, miou)
            for fused, stages, miou in ANN_TABLE9 if stages != ("layer3",)),
    }
    for name, fusion, context, row, miou in table6:
        r50, r101 = (functools.partial(ann, fusion, context, backbone_options=_on(ANN_BACKBONE, d)) for d in (50, 101))
        entries.append(ZooEntry(
            f"{name}_r50", r50, "ANN", "6",
            f"{row}, with ResNet-50 (the paper reports ResNet-101 only)", ANN_INPUT, block=context))
        full = name == "ann"
        entries.append(ZooEntry(
            f"{name}_r101", r101, "ANN", "6",
            f"{row} (R-101)", ANN_INPUT, miou=miou, block=context,
            params_m=63.17 if full else None, memory_mb=3375 if full else None, inference_s=0.611 if full else None,
            variants=(ZooVariant("ANN released code: deep-base ResNet-101, ceil-mode stem pool (the recipes)",
                                 ANN_RELEASED_BACKBONE, miou), *ablations.get(name, ()))))
    r18 = _on(DENOISED_NL_BACKBONE, 18, multi_grid=(1, 2))  # ResNet-18's layer4 has two blocks
    entries += [
        ZooEntry("denoised_nl_r18", functools.partial(denoised_nl, backbone_options=r18), "demo", "",
                 "Denoised NL on ResNet-18 (no paper row)", DNL_INPUT, block="denoised_nl"),
        ZooEntry("dnl_baseline_r18", functools.partial(denoised_nl_pipeline, None, backbone_options=r18), "demo", "",
                 "the Denoised NL pipeline without a block, ResNet-18 (no paper row)", DNL_INPUT),
    ]
    # Denoised NL Table II: depth, GR + LR, GR only, LR only (Cityscapes val)
    for depth, full, gr_only, lr_only in ((50, 82.0, 81.2, 81.4), (101, 83.5, 82.3, 82.5)):
        variants = [
            ZooVariant(f"Denoised NL Table II: GR only (R-{depth})", {"retain": False}, gr_only),
            ZooVariant(f"Denoised NL Table II: LR only (R-{depth})", {"rectify": False}, lr_only),
        ]
        if depth == 101:
            variants.append(ZooVariant("Denoised NL released model (no global context)", {"global_context": False}))
        backbone = _on(DENOISED_NL_BACKBONE, depth)
        entries.append(ZooEntry(
            f"denoised_nl_r{depth}", functools.partial(denoised_nl, backbone_options=backbone), "Denoised NL",
            "II-IV", f"+Denoised NL, GR + LR (R-{depth})", DNL_INPUT, miou=full, block="denoised_nl",
            table5_gflops=7.83 if depth == 101 else None, table5_memory_mb=428 if depth == 101 else None,
            variants=tuple(variants)))
    for depth, miou in ((50, 76.7), (101, 77.9)):
        backbone = _on(DENOISED_NL_BACKBONE, depth)
        entries.append(ZooEntry(
            f"dnl_baseline_r{depth}", functools.partial(denoised_nl_pipeline, None, backbone_options=backbone),
            "Denoised NL", "II-V", f"Baseline (R-{depth}), the pipeline without a block", DNL_INPUT, miou=miou))
    # Denoised NL Tables III-V: block, table, row, (R-50, R-101) mIoU, Table V: GFLOPs, memory (MB)
    comparisons = (
        ("nl", "IV", "+NL", (79.5, 80.6), (7.63, 407)),
        ("ocnet", "IV", "+OCNet", (80.3, 81.3), None),
        ("ccnet", "IV", "+CCNet", (79.9, 81.1), (1.77, 52)),
        ("danet", "IV", "+DANet", (80.3, 81.2), (10.04, 570)),
        ("dranet", "IV", "+DRANet*", (80.2, 81.1), (0.76, 30)),
        ("ppm", "III", "+PPM", (77.6, 79.0), None),
        ("aspp", "III", "+ASPP", (77.9, 79.2), None),
    )
    for block, table, row, mious, table5 in comparisons:
        for depth, miou in zip((50, 101), mious, strict=True):
            delta = table5 if depth == 101 and table5 is not None else (None, None)
            backbone = _on(DENOISED_NL_BACKBONE, depth)
            entries.append(ZooEntry(
                f"{block}_r{depth}", functools.partial(denoised_nl_pipeline, block, backbone_options=backbone),
                "Denoised NL", table, f"{row} (R-{depth}), in the Denoised NL pipeline at 1/16", DNL_INPUT,
                miou=miou, block=block, table5_gflops=delta[0], table5_memory_mb=delta[1]))
    # The compared blocks' original networks (nlseg.models.heads): head, source paper, mmsegmentation's head class
    originals = (
        ("nl_head", "nl", "Non-local (Wang et al., CVPR 2018)", "NLHead"),
        ("danet_head", "danet", "DANet (Fu et al., CVPR 2019)", "DAHead"),
        ("ppm_head", "ppm", "PSPNet (Zhao et al., CVPR 2017)", "PSPHead"),
        ("aspp_head", "aspp", "DeepLabV3 (Chen et al., 2017)", "ASPPHead"),
        ("ann_head", "ann", "ANN (Zhu et al., ICCV 2019)", "ANNHead"),
        ("ccnet_head", "ccnet", "CCNet (Huang et al., ICCV 2019)", "CCHead"),
        ("fcn_head", "fcn", "FCN (Long et al., CVPR 2015)", "FCNHead"),
    )
    for name, head, source, head_class in originals:
        where = "layer3 and layer4" if head == "ann" else "layer4"
        for depth in (50, 101):
            entries.append(ZooEntry(
                f"{name}_r{depth}", functools.partial(context_head, head, backbone_options=_on(HEADS_BACKBONE, depth)),
                "original", "", f"{source} head on {where} at 1/8, as mmsegmentation's {head_class} (R-{depth})",
                ANN_INPUT))
    return entries


ZOO: Registry[ZooEntry] = MODELS
for _entry in _entries():
    ZOO.register(_entry.name, _entry)
"""Every model by name, in registration order (family by family, in the papers' table order)."""


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry of ``name``.

    Raises:
        ValueError: unknown name (the message gives the closest match and lists every name).
    """
    return ZOO.lookup(name)
