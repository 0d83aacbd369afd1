"""The recipe: typed sections (model, data, loss, train, eval) with their defaults. A recipe file sets only what
differs from them; :mod:`nlseg.config.loading` checks every value when it loads."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from nlseg.config.rules import (
    Ascending,
    Device,
    Length,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Size,
)


@dataclass
class ModelConfig:
    name: str = "fcn_r50"
    """Registered model name (``nlseg.list_models()``)."""
    pretrained_backbone: str | None = None
    """Local file of ImageNet backbone weights (.pth / .pt / .safetensors)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the model builder (``nlseg.models.model_options(name)``)."""
    init_from: str | None = None
    """An nlseg checkpoint whose model weights start a new run; the optimizer and iteration start fresh."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """Data set name (``nlseg list datasets``)."""
    root: str | None = None
    """The data set's folder; required unless the data set is generated (``requires_root = False``)."""
    train_split: str = "train"
    val_split: str = "val"
    crop_size: Size = field(default_factory=lambda: [512, 512])
    """Training crop (H, W); a single number means a square."""
    scale_range: Annotated[list[PositiveFloat], Length(2, 2), Ascending()] = field(default_factory=lambda: [0.5, 2.0])
    base_size: PositiveInt | None = None
    """If set, random scaling is relative to this long side instead of the image's own size."""
    flip: bool = True
    brightness: NonNegativeFloat = 0.0
    contrast: NonNegativeFloat = 0.0
    saturation: NonNegativeFloat = 0.0
    num_workers: NonNegativeInt = 2
    normalize: Literal["imagenet", "caffe"] = "imagenet"
    """Input normalisation (``nlseg.data.transforms.NORMALIZATIONS``): ``imagenet`` (RGB, 0..1, ImageNet mean/std;
    torchvision's weights) or ``caffe`` (BGR, 0..255, the caffe means, std 1; the released ANN weights). Saved
    in the checkpoint, so evaluation and prediction normalise as training did."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the data set class (e.g. ``num_classes: 59`` for PASCAL Context)."""
    eval_options: dict[str, Any] = field(default_factory=dict)
    """Options that replace those of ``options`` when the data set is built for evaluation (the demo
    evaluates on wider synthetic strips than it trains on, as the paper recipes test on full images
    after training on crops)."""


@dataclass
class LossConfig:
    main: Literal["ce", "ohem"] = "ce"
    """Loss on the main output: ``ce`` (cross-entropy) or ``ohem`` (online hard example mining)."""
    ohem_threshold: Annotated[float, Range(0, 1, low_open=True)] = 0.7
    """OHEM keeps pixels whose probability of the true class is below this ..."""
    ohem_min_kept: NonNegativeInt = 100_000
    """... and at least this many of the hardest pixels per batch."""
    aux_weights: list[NonNegativeFloat] = field(default_factory=lambda: [0.4])
    """Weights of the auxiliary outputs, in the order the model returns them: one per auxiliary head."""
    class_weights: list[PositiveFloat] | None = None
    """One cross-entropy weight per class of the data set (the main loss, OHEM included, and the auxiliary
    losses), or null for none; the released ANN Cityscapes run weighs its 19 classes."""


@dataclass
class TrainConfig:
    iters: PositiveInt = 40_000
    batch_size: PositiveInt = 8
    """Images per optimiser step over all processes (split evenly across them)."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """sgd (with momentum; both papers) or adamw."""
    lr: PositiveFloat = 0.01
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    poly_power: NonNegativeFloat = 0.9
    warmup_iters: NonNegativeInt = 0
    warmup_ratio: Annotated[float, Range(0, 1)] = 0.1
    grad_accum: PositiveInt = 1
    """Micro-batches per optimiser step; each holds batch_size / (grad_accum · processes) images."""
    amp: Literal["off", "bf16", "fp16"] = "off"
    """Mixed precision: off, bf16 or fp16 (fp16 only on CUDA, with loss scaling). YAML's ``off`` is read as off."""
    grad_checkpointing: bool = False
    channels_last: bool = False
    """Keep the model's weights and the input batches in channels-last (NHWC) memory layout; same function."""
    compile: bool = False
    """Run the training forward through ``torch.compile`` (inductor, or the backend named by the environment
    variable ``NLSEG_COMPILE_BACKEND``); the first steps pay the compilation.
    Checkpoints and validation use the plain model."""
    seed: NonNegativeInt = 0
    checkpoint_interval: PositiveInt = 1_000
    eval_interval: NonNegativeInt = 0
    """Evaluate on the validation split every this many iterations (0: only at the end)."""
    evaluate: bool = True
    log_interval: PositiveInt = 20
    device: Device = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    tensorboard: bool = False
    """Write TensorBoard events to <work dir>/tb; needs ``pip install "nlseg[tb]"``."""


@dataclass
class InferenceOptions:
    """What ``prepare_for_inference`` does to a model; the recipe's ``eval`` section is one (:class:`EvalConfig`)."""

    aux: bool = False
    """Also run the auxiliary heads the decoder does not read (their logits are unused by a prediction)."""
    fold_bn: bool = True
    """Fold every batch norm into the convolution before it (exact up to float rounding)."""
    channels_last: bool = True
    """The backbone's weights and maps in channels-last memory layout (exact; faster convolutions on CPU and
    recent GPUs)."""
    fuse: bool = True
    """On the CPU, run each residual block's folded convolutions with ReLU, shortcut sum and ReLU fused into
    oneDNN's convolutions, the block's output written into its shortcut buffer (``nlseg.models.fuse``; exact;
    needs ``fold_bn``)."""
    amp: Literal["off", "bf16", "fp16"] = "off"
    """Autocast inside the forward: off, bf16 or fp16 (logits within ~1e-2 of float32); YAML's ``off`` is off."""
    compile: Literal["auto", "on", "off"] = "auto"
    """The compiled path (inductor with frozen weights; ``nlseg.engine.inference.compiled``): ``on``, ``off``, or
    ``auto``: compile when the rest of the job pays for the compile time, judged after timing the first image.
    ``true``/``false`` mean on/off."""

    def __post_init__(self) -> None:
        if self.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"amp must be one of off, bf16, fp16; got {self.amp!r}")
        if isinstance(self.compile, bool):  # the values before auto existed
            self.compile = "on" if self.compile else "off"
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be one of auto, on, off; got {self.compile!r}")


@dataclass
class EvalConfig(InferenceOptions):
    """How a recipe's model is scored: its inference levers (the fields of :class:`InferenceOptions`), the
    window and the test-time views."""

    mode: Literal["whole", "slide"] = "whole"
    """whole (the full image at once) or slide (overlapping crops of ``crop_size``, logits averaged)."""
    crop_size: Size | None = None
    stride: Size | None = None
    """Step of the sliding window, at most ``crop_size`` (None: two thirds of it)."""
    scales: Annotated[list[PositiveFloat], Length(1)] = field(default_factory=lambda: [1.0])
    flip: bool = False
    size: Size | None = None
    """Resize images to (H, W) before inference; logits are resized back to the label's size."""


@dataclass
class Config:
    name: str = "unnamed"
    description: str = ""
    paper: str = ""
    """The table row this recipe reproduces and the paper's figure, e.g. "Denoised NL Table II, 83.5"."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> Config:
        """Build and validate a config from nested mappings (the recipe rules of :data:`CHECKS`).

        Raises:
            ConfigError: an unknown key, a value of the wrong type or out of range, or a broken rule.
        """
        from nlseg.config.loading import validated

        return validated(data, source)


def field_rules(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Every recipe key and what it allows, from the annotations (``{"train.iters": "int >= 1", ...}``)."""
    rules = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if dataclasses.is_dataclass(hint):
            rules.update(field_rules(hint, f"{prefix}{name}."))
        else:
            rules[f"{prefix}{name}"] = _describe(hint)
    return rules


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return " ".join([_describe(args[0]), *map(str, args[1:])])
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))
