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
from nlseg.config.checks import CHECKS, Check, Purpose, dataset_num_classes
from nlseg.config.loading import config_dirs, list_recipes, load_config, recipes
from nlseg.config.rules import Ascending, Length, Pattern, Range, Square
from nlseg.config.schema import (
    Config,
    DataConfig,
    EvalConfig,
    InferenceOptions,
    LossConfig,
    ModelConfig,
    TrainConfig,
    field_rules,
)
from nlseg.errors import ConfigError

__all__ = [
    "CHECKS",
    "Ascending",
    "Check",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "InferenceOptions",
    "Length",
    "LossConfig",
    "ModelConfig",
    "Pattern",
    "Purpose",
    "Range",
    "Square",
    "TrainConfig",
    "config_dirs",
    "dataset_num_classes",
    "field_rules",
    "list_recipes",
    "load_config",
    "recipes",
]
