"""Data sets and their transforms as a recipe describes them."""
from __future__ import annotations

import inspect

from torch.utils.data import Dataset

from nlseg.config import Config, ConfigError
from nlseg.data import create_dataset, dataset_class, list_datasets
from nlseg.data.transforms import build_transforms

__all__ = ["build_dataset", "check_dataset_options"]

_SET_BY_NLSEG = ("self", "root", "split", "transform")
"""Constructor parameters that come from elsewhere in the recipe, not from ``data.options``."""


def check_dataset_options(dataset: str, options: dict[str, object], key: str = "data.options") -> None:
    """Check a recipe's options for a data set against its constructor's keyword parameters.

    Args:
        dataset: a registered data set name.
        options: the options (``data.options``, or those merged with ``data.eval_options``).
        key: the recipe key named in the error.

    Raises:
        ConfigError: an unknown data set, an option the class does not take, or a required one missing.
    """
    try:
        cls = dataset_class(dataset)
    except ValueError as err:
        raise ConfigError(f"data.dataset: {err}") from None
    params = {
        name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name not in _SET_BY_NLSEG
    }
    known = ", ".join(params) or "none"
    unknown = [name for name in options if name not in params]
    if unknown:
        raise ConfigError(f"{key}: the {dataset} data set has no option {unknown[0]!r}; its options: {known}")
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in options]
    if missing:
        raise ConfigError(f"{key}.{missing[0]} is required by the {dataset} data set (its options: {known})")


def build_dataset(cfg: Config, split: str, *, train: bool) -> Dataset:
    """The recipe's data set for ``split``, with the training or the evaluation pipeline.

    Training: random scale, crop, flip, colour jitter, normalisation (``cfg.data``, ``data.normalize``). Evaluation: optional
    resize (``cfg.eval.size``), normalisation; labels stay at their full size. The data set is built with
    ``cfg.data.options``, updated by ``cfg.data.eval_options`` when ``train`` is false. ``cfg.data.root``
    is needed by every data set read from files and not used by a generated one (``synthetic``).

    Raises:
        ConfigError: an unknown data set, a missing ``data.root``, or options the data set does not take.
    """
    data = cfg.data
    if data.dataset not in list_datasets():
        raise ConfigError(f"data.dataset: unknown data set {data.dataset!r}; known: {', '.join(list_datasets())}")
    requires_root = getattr(dataset_class(data.dataset), "requires_root", True)
    if requires_root and data.root is None:
        raise ConfigError(f"data.root is not set for the {data.dataset} data set; pass --set data.root=/path/to/it")
    options = data.options if train else {**data.options, **data.eval_options}
    check_dataset_options(data.dataset, options, "data.options" if train else "data.options/eval_options")
    transform = build_transforms(
        train,
        data.crop_size if train else None,
        tuple(data.scale_range),
        base_size=data.base_size,
        flip=data.flip,
        brightness=data.brightness,
        contrast=data.contrast,
        saturation=data.saturation,
        eval_size=None if train or cfg.eval.size is None else tuple(cfg.eval.size),
        normalize=data.normalize,
    )
    return create_dataset(data.dataset, data.root if requires_root else None, split, transform=transform, **options)
