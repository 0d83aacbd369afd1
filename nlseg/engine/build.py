"""One place that builds: a checked recipe (:func:`nlseg.config.load_config`) into the objects a run works with —
the model (with its starting weights), the loss, the optimizer and its poly schedule, the training loader — and a
checkpoint into its model (:func:`build_model_from_checkpoint`, for eval, predict, export and viz). The data sets
are :func:`nlseg.data.build.build_dataset`'s; the inference options are the recipe's ``eval`` section itself. The
trainer, evaluator, predictor and exporter receive these objects.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nlseg.config import Config, TrainConfig
from nlseg.data.transforms import collate
from nlseg.engine.checkpoint import check_compatible, load_checkpoint
from nlseg.engine.device import resolve_device
from nlseg.engine.distributed import DistInfo
from nlseg.engine.interrupt import ignore_stop_signals
from nlseg.engine.losses import SegmentationLoss
from nlseg.engine.sampling import IterationSampler, SeededSamples
from nlseg.errors import CheckpointError, ConfigError

__all__ = [
    "build_model_from_checkpoint",
    "autocast_for",
    "build_criterion",
    "build_model",
    "build_optimizer",
    "build_train_loader",
    "load_init_from",
    "memory_format",
    "paper_weights_warning",
    "poly_lr_lambda",
    "saved_normalize",
]


def poly_lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Factor of the base lr at step t (0-based): ``(1 - t/T)^power`` with T = ``cfg.iters``, times a linear
    warm-up from ``warmup_ratio`` during the first ``warmup_iters`` steps.

    The lr is a function of the step and the current total only, so a run extended on resume (``train.iters``
    raised from T to T') trains its next steps at ``lr · (1 - t/T')^power``: the curve of the new total from
    the resume point on, above zero until the new end (never a step at lr 0).
    """

    def factor(step: int) -> float:
        poly = max(0.0, 1.0 - step / cfg.iters) ** cfg.poly_power
        if step < cfg.warmup_iters:
            return poly * (cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_iters)
        return poly

    return factor


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The recipe's model; a bad model name or option becomes a ConfigError naming ``model.*``."""
    from nlseg.models import create_model

    options = dict(cfg.model.options)
    if cfg.train.grad_checkpointing:
        options["grad_checkpointing"] = True
    try:
        return create_model(
            cfg.model.name, num_classes=num_classes, pretrained_backbone=cfg.model.pretrained_backbone, **options
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model {cfg.model.name!r}: {err}") from None


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` (sgd with momentum, or adamw) over every parameter, at the base lr."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The memory layout of the weights and batches (``train.channels_last``)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def autocast_for(cfg: TrainConfig, device: torch.device):
    """The autocast context of ``train.amp`` on ``device`` (a no-op for ``off``; fp16 is checked at load to be
    on a CUDA device)."""
    if cfg.amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def build_criterion(cfg: Config, ignore_index: int) -> SegmentationLoss:
    """The recipe's loss (main and auxiliary terms, ``loss.*``)."""
    return SegmentationLoss(cfg.loss, ignore_index=ignore_index)


def build_train_loader(
    train_set: Dataset, cfg: Config, *, start_iter: int, dist_info: DistInfo, device: torch.device
) -> DataLoader:
    """Micro-batches of this process from iteration ``start_iter`` on (:class:`IterationSampler`), each sample's
    augmentation seeded by its serial (:class:`SeededSamples`)."""
    tcfg = cfg.train
    return DataLoader(
        SeededSamples(train_set, tcfg.seed),
        batch_sampler=IterationSampler(len(train_set), tcfg, start_iter=start_iter, dist_info=dist_info),
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
    )


def load_init_from(model: nn.Module, cfg: Config, num_classes: int) -> None:
    """Load ``model.init_from``'s weights into the new model (strict: every tensor, every shape)."""
    path = cfg.model.init_from
    state = load_checkpoint(path)
    check_compatible(state, model_name=cfg.model.name, num_classes=num_classes, path=path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
        raise CheckpointError(
            f"model.init_from={path}: its weights do not fit this recipe's {cfg.model.name!r} model "
            f"(check model.options): {first}"
        ) from None


def paper_weights_warning(cfg: Config) -> str | None:
    """A warning line for a paper recipe about to train from random weights, else None.

    The papers' numbers start from ImageNet backbones. A recipe counts as a paper recipe when its model is a
    paper row (the zoo holds a paper mIoU for it); the demo and ``custom_folder`` (ResNet-18, no paper row)
    and runs on the embedded synthetic set get no warning.
    """
    from nlseg.models import zoo_entry

    if cfg.model.pretrained_backbone or cfg.model.init_from or cfg.data.dataset == "synthetic":
        return None
    try:
        paper_row = zoo_entry(cfg.model.name).miou is not None
    except ValueError:  # a model registered outside the zoo
        paper_row = False
    if not paper_row:
        return None
    return (f"warning: {cfg.name} reproduces {cfg.paper!r}, whose numbers need ImageNet backbone weights; this run "
            "starts from random weights (--set model.pretrained_backbone=FILE, or a name from nlseg list weights)")


def _check_checkpoint_path(path: Path) -> None:
    """A CheckpointError for a path that cannot be a checkpoint file, before torch tries to read it."""
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; expected a checkpoint file such as "
            f"{path / 'best.pt'} or {path / 'last.pt'}"
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")


def build_model_from_checkpoint(
    path: str | os.PathLike,
    cfg: Config | None = None,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from and load its weights, in eval mode.

    The model's name and builder options come from the checkpoint (``model_name``,
    ``config.model.options``); a checkpoint without them needs ``cfg``. With ``cfg`` the checkpoint
    must be for the recipe's model (and for ``num_classes`` classes when given).

    Args:
        path: an nlseg checkpoint.
        cfg: the recipe it is used with, or None.
        device: where to put the model: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch.device.
        num_classes: the data set's number of classes, checked when given.

    Returns:
        the model and the checkpoint dict.

    Raises:
        CheckpointError: unreadable file, another model or class count, weights that do not fit.
    """
    from nlseg.models import create_model

    _check_checkpoint_path(Path(path))
    state = load_checkpoint(path)
    if cfg is not None or num_classes is not None:
        check_compatible(
            state,
            model_name=cfg.model.name if cfg is not None else state.get("model_name"),
            num_classes=num_classes if num_classes is not None else state.get("num_classes"),
            path=path,
        )
    saved_cfg = state.get("config") or {}
    name = state.get("model_name") or (cfg.model.name if cfg is not None else None)
    options = saved_cfg.get("model", {}).get("options", cfg.model.options if cfg is not None else {})
    classes = state.get("num_classes") or len(state.get("class_names", [])) or num_classes
    if name is None or classes is None:
        raise CheckpointError(
            f"checkpoint {path} does not say which model it holds (no 'model_name' / 'num_classes'); "
            "pass the recipe it was trained with"
        )
    try:
        model = create_model(name, num_classes=classes, **options)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot build its model {name!r}: {err}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit a {name!r} model with {classes} classes "
            f"({' '.join(line.strip() for line in first[:3])})"
        ) from None
    return model.to(resolve_device(device)).eval(), state


def saved_normalize(state: dict[str, Any], default: str = "imagenet") -> str:
    """The ``data.normalize`` a checkpoint's model was trained with; ``default`` for a checkpoint without it."""
    return ((state.get("config") or {}).get("data") or {}).get("normalize", default)
