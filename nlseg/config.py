"""Recipes as data: typed config objects loaded from YAML, validated, overridable with ``key=value``.

A recipe file sets only what differs from the defaults below; every key is checked on load, and an
unknown key is an error naming it, the file and the closest known key. Recipes live in ``configs/``
(one file per paper table row) and are loaded by name (``denoised_nl_r101_cityscapes``) or by path.

    cfg = load_config("denoised_nl_r101_cityscapes", ["train.iters=100", "data.root=/data/cityscapes"])
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlseg.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "config_dirs",
    "list_recipes",
    "load_config",
]




@dataclass
class ModelConfig:
    name: str = "fcn_r50"
    """Registered model name (``nlseg.list_models()``)."""
    pretrained_backbone: str | None = None
    """Local file of ImageNet backbone weights (.pth / .pt / .safetensors)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the model builder (validated by ``create_model``)."""
    init_from: str | None = None
    """An nlseg checkpoint whose model weights start a new run; the optimizer and iteration start fresh."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """Data set name: cityscapes, ade20k, pascal_context, coco_stuff10k, nyudv2 or synthetic."""
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [512, 512])
    """Training crop (H, W); a single number means a square."""
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    base_size: int | None = None
    """If set, random scaling is relative to this long side instead of the image's own size."""
    flip: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    num_workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the data set class (e.g. ``num_classes: 59`` for PASCAL Context)."""
    eval_options: dict[str, Any] = field(default_factory=dict)
    """Options that replace those of ``options`` when the data set is built for evaluation (the demo
    evaluates on wider synthetic strips than it trains on, as the paper recipes test on full images
    after training on crops)."""


@dataclass
class LossConfig:
    main: str = "ce"
    """Loss on the main output: ``ce`` (cross-entropy) or ``ohem`` (online hard example mining)."""
    ohem_threshold: float = 0.7
    """OHEM keeps pixels whose probability of the true class is below this ..."""
    ohem_min_kept: int = 100_000
    """... and at least this many of the hardest pixels per batch."""
    aux_weights: list[float] = field(default_factory=lambda: [0.4])
    """Weights of the auxiliary outputs, in the order the model returns them."""


@dataclass
class TrainConfig:
    iters: int = 40_000
    batch_size: int = 8
    """Images per optimiser step over all processes (split evenly across them)."""
    optimizer: str = "sgd"
    """sgd (with momentum; both papers) or adamw."""
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    """Micro-batches per optimiser step; each holds batch_size / (grad_accum · processes) images."""
    amp: str = "off"
    """Mixed precision: off, bf16 or fp16 (fp16 only on CUDA, with loss scaling)."""
    grad_checkpointing: bool = False
    seed: int = 0
    checkpoint_interval: int = 1_000
    eval_interval: int = 0
    """Evaluate on the validation split every this many iterations (0: only at the end)."""
    evaluate: bool = True
    log_interval: int = 20
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    tensorboard: bool = False
    """Write TensorBoard events to <run dir>/tb; needs ``pip install "nlseg[tb]"``."""


@dataclass
class EvalConfig:
    mode: str = "whole"
    """whole (the full image at once) or slide (overlapping crops, logits averaged)."""
    crop_size: list[int] | None = None
    stride: list[int] | None = None
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    size: list[int] | None = None
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
        return _build(cls, data, prefix="", source=source)


def config_dirs() -> list[Path]:
    """Folders searched for recipes by name: ``$NLSEG_CONFIG_DIR`` (os.pathsep-separated), then ``configs/``."""
    dirs = [Path(p) for p in os.environ.get("NLSEG_CONFIG_DIR", "").split(os.pathsep) if p]
    return dirs + [Path(__file__).resolve().parent.parent / "configs"]


def list_recipes() -> list[str]:
    """Names of the recipes found in :func:`config_dirs`."""
    return sorted({p.stem for d in config_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def _resolve(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    for folder in config_dirs():
        candidate = folder / f"{source}.yaml"
        if candidate.is_file():
            return candidate
    names = list_recipes()
    close = difflib.get_close_matches(str(source), names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"no recipe named {str(source)!r} in {', '.join(map(str, config_dirs()))}{hint} "
        f"(known recipes: {', '.join(names) or 'none'})"
    )


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


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check ``value`` against a field's type; ints are accepted for floats, a scalar for a list[int] pair."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(annotation)
        if item is int and isinstance(value, int) and not isinstance(value, bool) and key.endswith("size"):
            value = [value, value]  # a square crop
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-2" as a string
        except ValueError:
            pass
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{source}: {key} must be {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, *, prefix: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise _unknown_key(f"{prefix}{key}", source)
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value, prefix=f"{prefix}{name}.", source=source)
        else:
            values[name] = _coerce(value, annotation, f"{prefix}{name}", source)
    return cls(**values)


def _set(tree: dict[str, Any], override: str) -> None:
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
    if cls is not None and parts[-1] not in {f.name for f in dataclasses.fields(cls)}:
        raise _unknown_key(key, "--set")
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""


def load_config(source: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a recipe by name or path, apply ``key=value`` overrides, validate everything.

    Args:
        source: a recipe name (``configs/<name>.yaml``) or a YAML file path.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML (``0.01``, ``[769, 769]``, ``null``).

    Raises:
        ConfigError: unknown recipe, unknown key (with the closest known key), or a value of the wrong type.
    """
    path = _resolve(source)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    config = Config.from_dict(data, source=str(path))
    if not overrides:
        return config
    for override in overrides:
        _set(data, override)
    return Config.from_dict(data, source=f"{path} with --set")
