"""The rules that relate fields, or a field to nlseg's registries or to this machine: the table :data:`CHECKS`,
one small function each, applied by purpose (:data:`Purpose`) after every field's own rule."""
from __future__ import annotations

import functools
import importlib.util
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nlseg.config.schema import Config
from nlseg.registry import DATASETS, MODELS, WEIGHTS, did_you_mean


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
    if cfg.model.name not in MODELS:
        hint = did_you_mean(cfg.model.name, MODELS)
        return f"model.name must be a registered model (nlseg list models), got {cfg.model.name!r}{hint}"
    return None


@_check("model.options", rule="options of that model's builder (nlseg.models.model_options), of its types",
        purposes=_TRAIN)
def _model_option_names(cfg: Config) -> str | None:
    model = MODELS[cfg.model.name]
    known = list(model.options())
    for key, value in cfg.model.options.items():
        if key not in known:
            return (f"model.options.{key} is not an option of {cfg.model.name}{did_you_mean(key, known)}; "
                    f"its options: {', '.join(known)}")
        error = model.option_error(key, value)
        if error:
            return error
    return None


@functools.lru_cache(maxsize=64)
def _aux_heads(name: str, options_json: str) -> int:
    """Auxiliary heads of the model built on the meta device (no memory, no weights); raises what the builder raises."""
    import torch

    with torch.device("meta"):
        model = MODELS[name].build(num_classes=2, **json.loads(options_json))
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
    return DATASETS.lookup(cfg.data.dataset)


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
    value = cfg.model.pretrained_backbone
    if value is None or Path(value).expanduser().is_file():
        return None
    if value in WEIGHTS:
        return WEIGHTS[value].offline_error()  # offline and not cached: refused now, not after the data is set up
    close = WEIGHTS.close(value)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return (f"model.pretrained_backbone must be an existing file or a weights name (nlseg list weights), got "
            f"{value!r} (no such file or name{hint})")
