"""Recipes as data: typed config objects loaded from YAML, validated, overridable with ``key=value``.

A recipe file sets only what differs from the defaults below. Every value is checked when the recipe
loads, before any data or model is touched:

* each field's type and allowed values are written in its annotation: ``Literal[...]`` for a choice,
  ``Annotated[..., Range(...), Length(...), Square(), Ascending(), Pattern(...)]`` for numbers, lists and
  strings (:func:`field_rules` lists them);
* the rules that relate fields, or a field to nlseg's registries or to this machine, are the table
  :data:`CHECKS` (one small function each); which of them apply depends on what the recipe is loaded
  for (:data:`Purpose`: ``load_config(..., purpose="train")`` checks everything a training run needs).

An error is one :class:`ConfigError` line naming the file (or ``--set``), the key, the value and what is
allowed; an unknown key also names the closest known key. The recipes ship inside the package
(``nlseg/configs/``, one file per paper table row) and are loaded by name or by path:

    cfg = load_config("denoised_nl_r101_cityscapes", ["train.iters=100", "data.root=/data/cityscapes"])
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import inspect
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from nlseg.errors import ConfigError
from nlseg.paths import absolute_recipe_paths
from nlseg.registry import Registry, UnknownName, did_you_mean

__all__ = [
    "CHECKS",
    "Ascending",
    "Check",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "Length",
    "LossConfig",
    "ModelConfig",
    "Pattern",
    "Purpose",
    "Range",
    "Square",
    "TrainConfig",
    "config_dirs",
    "field_rules",
    "list_recipes",
    "load_config",
]


# --- what a field allows, written in its annotation ---------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A number between ``low`` and ``high`` (None: unbounded on that side); ``*_open`` excludes the bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


@dataclass(frozen=True)
class Length:
    """A list of ``least`` to ``most`` items (None: any number)."""

    least: int
    most: int | None = None

    def allows(self, value: list) -> bool:
        return len(value) >= self.least and (self.most is None or len(value) <= self.most)

    def __str__(self) -> str:
        if self.most == self.least:
            return f"a list of {self.least}"
        return f"a list of at least {self.least}" if self.most is None else f"a list of {self.least} to {self.most}"


@dataclass(frozen=True)
class Square:
    """An (H, W) pair; a single number means a square."""

    def allows(self, value: list) -> bool:
        return len(value) == 2

    def __str__(self) -> str:
        return "[H, W] or one number for a square"


@dataclass(frozen=True)
class Ascending:
    """A ``[low, high]`` range with ``low <= high``."""

    def allows(self, value: list) -> bool:
        return all(a <= b for a, b in zip(value, value[1:]))

    def __str__(self) -> str:
        return "[low, high] with low <= high"


@dataclass(frozen=True)
class Pattern:
    """A string matching ``regex`` in full; ``text`` says it in words."""

    regex: str
    text: str

    def allows(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.text


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Size = Annotated[list[PositiveInt], Square()]
"""(H, W) in pixels; a single number means a square."""
Device = Annotated[str, Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")]


# --- the recipe ------------------------------------------------------------------------------------------


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
    amp: Literal["off", "bf16", "fp16"] = "off"
    """Autocast inside the forward: off, bf16 or fp16 (logits within ~1e-2 of float32); YAML's ``off`` is off."""
    compile: bool = False
    """``torch.compile`` the model (the first image of each size compiles; pays off over many images)."""

    def __post_init__(self) -> None:
        if self.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"amp must be one of off, bf16, fp16; got {self.amp!r}")


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
        return _validated(data, _Origin(source), "any")


# --- the rules that relate fields, or a field to the registries or this machine -------------------------

Purpose = Literal["any", "eval", "train"]
"""What a loaded recipe is for, which decides the :data:`CHECKS` that apply (every field's own rule always does):

* ``any``: reading a recipe, or a config saved in a checkpoint on another machine; predict and viz, whose
  model comes from the checkpoint. The data set's name, options and splits; the eval settings.
* ``eval``: also the data set's folder on this machine.
* ``train``: also the model (name, options, one loss weight per auxiliary head), the batch, and this
  machine: the device, TensorBoard, the weight files the run starts from.
"""


@dataclass(frozen=True)
class Check:
    """One rule of :data:`CHECKS`: ``test(cfg)`` returns None, or the error (without the file) naming the key."""

    keys: tuple[str, ...]
    rule: str
    purposes: frozenset[str]
    test: Callable[[Config], str | None]


CHECKS: list[Check] = []
"""The cross-field, registry and machine rules, checked in this order after every field's own rule."""

_ALL, _DATA, _TRAIN = frozenset({"any", "eval", "train"}), frozenset({"eval", "train"}), frozenset({"train"})


def _check(*keys: str, rule: str, purposes: frozenset[str] = _ALL):
    def register(test: Callable[[Config], str | None]) -> Callable[[Config], str | None]:
        CHECKS.append(Check(keys, rule, purposes, test))
        return test

    return register


@_check("model.name", rule="a registered model (nlseg list models)", purposes=_TRAIN)
def _model_name(cfg: Config) -> str | None:
    from nlseg.models import list_models

    known = list_models()
    if cfg.model.name not in known:
        hint = did_you_mean(cfg.model.name, known)
        return f"model.name must be a registered model (nlseg list models), got {cfg.model.name!r}{hint}"
    return None


@_check("model.options", rule="options of that model's builder (nlseg.models.model_options), of its types",
        purposes=_TRAIN)
def _model_option_names(cfg: Config) -> str | None:
    from nlseg.models import model_options
    from nlseg.models.option_types import option_error

    known = list(model_options(cfg.model.name))
    for key, value in cfg.model.options.items():
        if key not in known:
            return (f"model.options.{key} is not an option of {cfg.model.name}{did_you_mean(key, known)}; "
                    f"its options: {', '.join(known)}")
        error = option_error(cfg.model.name, key, value)
        if error:
            return error
    return None


@functools.lru_cache(maxsize=64)
def _aux_heads(name: str, options_json: str) -> int:
    """Auxiliary heads of the model built on the meta device (no memory, no weights); raises what the builder raises."""
    import torch

    from nlseg.models import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=2, **json.loads(options_json))
    return len(model.aux_heads)


def _aux_heads_of(cfg: Config) -> int:
    return _aux_heads(cfg.model.name, json.dumps(cfg.model.options, sort_keys=True))


@_check("model.options", rule="values the model's builder accepts (built on the meta device)", purposes=_TRAIN)
def _model_option_values(cfg: Config) -> str | None:
    try:
        _aux_heads_of(cfg)
    except (TypeError, ValueError) as err:
        return f"model.options {cfg.model.options} are not valid for {cfg.model.name}: {' '.join(str(err).split())}"
    return None


@_check("loss.aux_weights", "model.name", "model.options", rule="one weight per auxiliary head", purposes=_TRAIN)
def _aux_weights(cfg: Config) -> str | None:
    heads = _aux_heads_of(cfg)
    if len(cfg.loss.aux_weights) != heads:
        return (f"loss.aux_weights must hold {heads} weight(s), one per auxiliary head of {cfg.model.name}, "
                f"got {cfg.loss.aux_weights}")
    return None


def _dataset_class(cfg: Config) -> type:
    from nlseg.data import dataset_class

    return dataset_class(cfg.data.dataset)


@_check("data.dataset", rule="a registered data set (nlseg list datasets)")
def _dataset_name(cfg: Config) -> str | None:
    try:
        _dataset_class(cfg)
    except ValueError as err:
        return f"data.dataset: {err}"
    return None


_NOT_OPTIONS = ("self", "root", "split", "transform")


def _dataset_parameters(cfg: Config) -> dict[str, inspect.Parameter]:
    params = inspect.signature(_dataset_class(cfg)).parameters
    return {
        name: p for name, p in params.items()
        if name not in _NOT_OPTIONS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


@_check("data.options", "data.eval_options", rule="keyword options of the data set class; its required ones set")
def _dataset_options(cfg: Config) -> str | None:
    params = _dataset_parameters(cfg)
    for section in ("options", "eval_options"):
        for key in getattr(cfg.data, section):
            if key not in params:
                return (f"data.{section}.{key} is not an option of the {cfg.data.dataset} data set"
                        f"{did_you_mean(key, list(params))}; its options: {', '.join(params) or 'none'}")
    for name, p in params.items():
        if p.default is p.empty and name not in cfg.data.options:
            return f"data.options.{name} is required by the {cfg.data.dataset} data set and is not set"
    return None


def dataset_num_classes(cfg: Config) -> int | None:
    """The number of classes of the recipe's data set with its options, or None where it is known only once read."""
    options = cfg.data.options
    if "num_classes" in options:
        return options["num_classes"]
    if "classes" in options:
        return len(options["classes"])
    return getattr(_dataset_class(cfg), "num_classes", 0) or None


@_check("loss.class_weights", "data.dataset", rule="one weight per class of the data set")
def _class_weights(cfg: Config) -> str | None:
    weights, classes = cfg.loss.class_weights, dataset_num_classes(cfg)
    if weights is not None and classes is not None and len(weights) != classes:
        return (f"loss.class_weights must hold {classes} weight(s), one per class of the {cfg.data.dataset} data set, "
                f"got {len(weights)}")
    return None


def _split_check(key: str) -> None:
    @_check(f"data.{key}", rule="a split of the data set class (its `splits`)")
    def _split(cfg: Config) -> str | None:
        splits, value = getattr(_dataset_class(cfg), "splits", ()), getattr(cfg.data, key)
        if splits and value not in splits:
            return f"data.{key} must be a split of {cfg.data.dataset} ({', '.join(splits)}), got {value!r}"
        return None


_split_check("train_split")
_split_check("val_split")


@_check("train.batch_size", "train.grad_accum", rule="batch_size a multiple of grad_accum", purposes=_TRAIN)
def _batch_divides(cfg: Config) -> str | None:
    if cfg.train.batch_size % cfg.train.grad_accum:
        return (f"train.batch_size must be a multiple of train.grad_accum={cfg.train.grad_accum} "
                f"(each micro-batch holds batch_size / grad_accum images), got {cfg.train.batch_size}")
    return None


@_check("eval.mode", "eval.crop_size", rule="slide needs eval.crop_size")
def _slide_crop(cfg: Config) -> str | None:
    if cfg.eval.mode == "slide" and cfg.eval.crop_size is None:
        return "eval.crop_size must be set for eval.mode=slide (the sliding window, [H, W]), got null"
    return None


@_check("eval.stride", "eval.crop_size", rule="eval.stride <= eval.crop_size in each dimension")
def _stride_within_crop(cfg: Config) -> str | None:
    stride, crop = cfg.eval.stride, cfg.eval.crop_size
    if stride is not None and crop is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
        return (f"eval.stride must be at most eval.crop_size={crop} in each dimension (windows would leave gaps), "
                f"got {stride}")
    return None


@_check("data.root", "data.dataset", rule="set, and a folder, unless the data set is generated", purposes=_DATA)
def _data_root(cfg: Config) -> str | None:
    if not getattr(_dataset_class(cfg), "requires_root", True):
        return None
    if cfg.data.root is None:
        return f"data.root must be set to the folder of the {cfg.data.dataset} data set (--set data.root=/path/to/it), got null"
    if not Path(cfg.data.root).expanduser().is_dir():
        return f"data.root must be an existing folder of the {cfg.data.dataset} data set, got {cfg.data.root!r}"
    return None


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@_check("train.device", rule="a device this machine has", purposes=_TRAIN)
def _device_present(cfg: Config) -> str | None:
    device, count = cfg.train.device, _cuda_count()
    if device.startswith("cuda") and count == 0:
        return f"train.device must be cpu or auto: this machine has no CUDA device, got {device!r}"
    if device.startswith("cuda:") and int(device[5:]) >= count:
        return f"train.device must be cuda:0 to cuda:{count - 1} on this machine, got {device!r}"
    return None


@_check("train.amp", "train.device", rule="fp16 only on a CUDA device", purposes=_TRAIN)
def _fp16_on_cuda(cfg: Config) -> str | None:
    on_cuda = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and _cuda_count() > 0)
    if cfg.train.amp == "fp16" and not on_cuda:
        return (f"train.amp must be off or bf16 on the CPU (fp16 needs CUDA), got 'fp16' with "
                f"train.device={cfg.train.device!r}")
    return None


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@_check("train.tensorboard", rule="the tensorboard package installed", purposes=_TRAIN)
def _tensorboard_installed(cfg: Config) -> str | None:
    if cfg.train.tensorboard and not _installed("tensorboard"):
        return "train.tensorboard is true but tensorboard is not installed; install it with pip install 'nlseg[tb]'"
    return None


def _file_check(key: str) -> None:
    @_check(f"model.{key}", rule="an existing file", purposes=_TRAIN)
    def _weight_file(cfg: Config) -> str | None:
        path = getattr(cfg.model, key)
        if path is not None and not Path(path).expanduser().is_file():
            return f"model.{key} must be an existing file, got {path!r} (no such file)"
        return None


_file_check("init_from")


@_check("model.pretrained_backbone", rule="an existing file or a weights name (nlseg list weights)", purposes=_TRAIN)
def _backbone_weights(cfg: Config) -> str | None:
    from nlseg.backbones.hub import WEIGHTS, close_names, missing_offline

    value = cfg.model.pretrained_backbone
    if value is None or Path(value).expanduser().is_file():
        return None
    if value in WEIGHTS:
        return missing_offline(value)  # offline and not cached: refused now, not after the data is set up
    close = close_names(value)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return (f"model.pretrained_backbone must be an existing file or a weights name (nlseg list weights), got "
            f"{value!r} (no such file or name{hint})")


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


# --- loading ---------------------------------------------------------------------------------------------


def config_dirs() -> list[Path]:
    """Folders searched for recipes by name: ``$NLSEG_CONFIG_DIR`` (os.pathsep-separated), then the
    recipes shipped in the package (``nlseg/configs``)."""
    dirs = [Path(p) for p in os.environ.get("NLSEG_CONFIG_DIR", "").split(os.pathsep) if p]
    return dirs + [Path(__file__).resolve().parent / "configs"]


def recipes() -> Registry[Path]:
    """Every recipe file of :func:`config_dirs` by name; where two folders have a name, the first one's."""
    found: Registry[Path] = Registry("recipe")
    for folder in config_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            if path.stem not in found:
                found.register(path.stem, path)
    return found


def list_recipes() -> list[str]:
    """Names of the recipes found in :func:`config_dirs`."""
    return recipes().names(sort=True)


def _resolve(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a recipe does not shadow it
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    try:
        return recipes().lookup(str(source))
    except UnknownName as err:
        raise ConfigError(f"{err} (searched {', '.join(map(str, config_dirs()))})") from None


@dataclass
class _Origin:
    """Where the values of some keys came from: ``--set`` when an override set each of them (or a section
    holding it), the file when none was touched, ``<file> with --set`` when both had a part."""

    source: str
    overridden: set[str] = field(default_factory=set)

    def __call__(self, *keys: str) -> str:
        if not self.overridden:
            return self.source
        whole = [any(k == o or k.startswith(o + ".") for o in self.overridden) for k in keys]
        part = [any(o.startswith(k + ".") for o in self.overridden) for k in keys]
        if all(whole):
            return "--set"
        return f"{self.source} with --set" if any(whole) or any(part) else self.source


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key(key: str, source: str) -> ConfigError:
    keys = _all_keys(Config)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]  # the right key in another section
    known = keys + sorted({k.split(".")[0] + "." for k in keys if "." in k})
    close = same_leaf[:1] or difflib.get_close_matches(key if "." in key else key + ".", known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _choice(value: Any, choices: tuple[str, ...], key: str, where: str) -> str:
    """A ``Literal`` choice; YAML reads ``off``/``no`` as False, which means ``off`` where that is a choice."""
    if value is False and "off" in choices:
        return "off"
    if isinstance(value, bool):
        others = [c for c in choices if c != "off"]
        raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)}, got {str(value).lower()} "
                          f"(YAML reads on/yes/true as a boolean; use {' or '.join(others)})")
    if value not in choices:
        hint = did_you_mean(str(value), choices)
        raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)}, got {value!r}{hint}")
    return value


def _coerce(value: Any, annotation: Any, key: str, where: str, rules: Sequence[Any] = ()) -> Any:
    """Check ``value`` against a field's annotation; ints are accepted for floats, a scalar for a ``Square`` pair.
    A float must be finite (``inf``, ``1e999`` and ``nan`` are refused, naming ``rules``, the allowed range)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *rules = typing.get_args(annotation)
        if any(isinstance(r, Square) for r in rules) and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]  # a square
        value = _coerce(value, base, key, where, rules)
        for rule in rules:
            if not rule.allows(value):
                raise ConfigError(f"{where}: {key} must be {rule}, got {value!r}")
        return value
    if origin is Literal:
        return _choice(value, typing.get_args(annotation), key, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-2" as a string
        except ValueError:
            pass
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        allowed = " ".join(["a finite number", *map(str, rules)])
        raise ConfigError(f"{where}: {key} must be {allowed}, got {value!r}")
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: {key} must be {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, *, prefix: str, origin: _Origin):
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        raise ConfigError(f"{origin(section)}: {section or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise _unknown_key(f"{prefix}{key}", origin(f"{prefix}{key}"))
    values = {}
    for name, value in data.items():
        annotation, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value, prefix=f"{key}.", origin=origin)
        else:
            values[name] = _coerce(value, annotation, key, origin(key))
    return cls(**values)


def _validated(data: dict[str, Any], origin: _Origin, purpose: Purpose) -> Config:
    """Every field's own rule, then the :data:`CHECKS` that apply to ``purpose``, in order."""
    config = _build(Config, data, prefix="", origin=origin)
    absolute_recipe_paths(config)  # ~ and $VAR expanded, and a run's config.yaml names its files from anywhere
    for check in CHECKS:
        if purpose in check.purposes:
            message = check.test(config)
            if message is not None:
                raise ConfigError(f"{origin(*check.keys)}: {message}")
    return config


def _set(tree: dict[str, Any], override: str) -> str:
    """Apply one ``key=value`` override to the recipe's nested mappings; returns the dotted key."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must read key=value, e.g. train.iters=1000")
    parts = key.strip().split(".")
    node: Any = tree
    cls: Any = Config
    for depth, part in enumerate(parts[:-1]):
        free = cls is None  # inside a free-form options mapping
        if not free:
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if part not in fields:
                raise _unknown_key(".".join(parts[: depth + 1]), "--set")
            hint = typing.get_type_hints(cls)[part]
            cls = hint if dataclasses.is_dataclass(hint) else None
            if cls is None and typing.get_origin(hint) is not dict and hint is not dict:
                raise ConfigError(f"--set: {'.'.join(parts[: depth + 1])} is not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set: {'.'.join(parts[: depth + 1])} must be a mapping, got {node!r}")
    if cls is not None and parts[-1] not in {f.name for f in dataclasses.fields(cls)}:
        raise _unknown_key(key, "--set")
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    return ".".join(parts)


def load_config(
    source: str | os.PathLike, overrides: Sequence[str] = (), *, purpose: Purpose = "any"
) -> Config:
    """Load a recipe by name or path, apply ``key=value`` overrides, validate everything.

    Args:
        source: a recipe name (``nlseg list recipes``) or a YAML file path.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML (``0.01``, ``[769, 769]``, ``null``).
        purpose: ``any`` checks the recipe itself; ``eval`` also that the data set is on this machine;
            ``train`` also the device, TensorBoard and the weight files (see :data:`Purpose`).

    Raises:
        ConfigError: unknown recipe, unknown key (with the closest known key), a value of the wrong type or
            out of range, or a broken rule of :data:`CHECKS`; the message names the file or ``--set``.
    """
    path = _resolve(source)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    origin = _Origin(str(path))
    for override in overrides:
        origin.overridden.add(_set(data, override))
    return _validated(data, origin, purpose)
