"""One place that builds: a checked recipe (:func:`nlseg.config.load_config`) into the objects a run works with —
the model (with its starting weights), the loss, the optimizer and its poly schedule, the training loader.
The data sets are :func:`nlseg.data.build.build_dataset`'s; the inference options are the recipe's ``eval``
section itself. The trainer, evaluator, predictor and exporter receive these objects.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nlseg.config import Config, TrainConfig
from nlseg.data.transforms import collate
from nlseg.engine.checkpoint import check_compatible, load_checkpoint
from nlseg.engine.distributed import DistInfo
from nlseg.engine.interrupt import ignore_stop_signals
from nlseg.engine.losses import SegmentationLoss
from nlseg.engine.sampling import IterationSampler, SeededSamples
from nlseg.errors import CheckpointError, ConfigError

__all__ = [
    "autocast_for",
    "build_criterion",
    "build_model",
    "build_optimizer",
    "build_train_loader",
    "load_init_from",
    "memory_format",
    "paper_weights_warning",
    "poly_lr_lambda",
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
