"""Data sets and their transforms as a recipe describes them."""
from __future__ import annotations

from torch.utils.data import Dataset

from nlseg.config import Config
from nlseg.data import create_dataset, dataset_class
from nlseg.data.transforms import build_transforms

__all__ = ["build_dataset"]

def build_dataset(cfg: Config, split: str, *, train: bool) -> Dataset:
    """The recipe's data set for ``split``, with the training or the evaluation pipeline.

    Training: random scale, crop, flip, colour jitter, normalisation (``cfg.data``, ``data.normalize``). Evaluation: optional
    resize (``cfg.eval.size``), normalisation; labels stay at their full size. The data set is built with
    ``cfg.data.options``, updated by ``cfg.data.eval_options`` when ``train`` is false. ``cfg.data.root``
    is needed by every data set read from files and not used by a generated one (``synthetic``). The recipe
    was checked when it loaded (the data set's name, options and root: :mod:`nlseg.config.checks`).
    """
    data = cfg.data
    requires_root = getattr(dataset_class(data.dataset), "requires_root", True)
    options = data.options if train else {**data.options, **data.eval_options}
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
