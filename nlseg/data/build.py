"""Data sets and their transforms as a recipe describes them."""
from __future__ import annotations

from nlseg.config import Config, ConfigError
from nlseg.data import create_dataset, list_datasets
from nlseg.data.base import SegmentationDataset
from nlseg.data.transforms import build_transforms

__all__ = ["build_dataset"]


def build_dataset(cfg: Config, split: str, *, train: bool) -> SegmentationDataset:
    """The recipe's data set for ``split``, with the training or the evaluation pipeline.

    Training: random scale, crop, flip, colour jitter, normalisation (``cfg.data``). Evaluation: optional
    resize (``cfg.eval.size``), normalisation; labels stay at their full size. The data set is built with
    ``cfg.data.options``, updated by ``cfg.data.eval_options`` when ``train`` is false.
    """
    data = cfg.data
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
    )
    options = data.options if train else {**data.options, **data.eval_options}
    if data.dataset == "synthetic":
        from nlseg.data.synthetic import SyntheticContext

        return SyntheticContext(split, transform=transform, **options)
    if data.dataset not in list_datasets():
        raise ConfigError(f"data.dataset: unknown data set {data.dataset!r}; known: synthetic, {', '.join(list_datasets())}")
    if data.root is None:
        raise ConfigError(f"data.root is not set for the {data.dataset} data set; pass --set data.root=/path/to/it")
    return create_dataset(data.dataset, data.root, split, transform=transform, **options)
