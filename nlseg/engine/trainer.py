"""The training loop: SGD with poly decay, deep supervision, AMP, DDP, exact and preemption-safe resume.

Read it in three parts: :func:`setup` builds a :class:`Run` (work dir, data, model, optimizer, logs),
:func:`train_step` does one optimiser step, and :func:`train` is the loop around it (log, evaluate,
checkpoint, stop on SIGTERM / Ctrl-C).

The objects a run works with come from :mod:`nlseg.engine.build`. Reproducibility is by construction:
the samples and their augmentation follow from the seed and the sample's serial (:mod:`nlseg.engine.sampling`),
dropout is reseeded from ``(seed, rank, iteration)`` at every step, and the learning rate is a function of the
iteration, so a run resumed from ``last.pt`` at iteration t sees exactly what the uninterrupted run saw from t on.

Speed switches that leave the function alone: ``train.channels_last`` keeps weights and batches in NHWC
layout, ``train.compile`` runs the training forward through ``torch.compile`` (of the DDP wrapper under
DDP, as PyTorch recommends, so that its graphs split at the gradient buckets), ``train.amp`` autocasts to
bf16 or fp16. Checkpoints and validation always use the plain model, so a checkpoint's keys never depend
on them and a run may be resumed with them changed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from nlseg.config import Config
from nlseg.engine.build import (
    autocast_for,
    build_criterion,
    build_model,
    build_optimizer,
    build_train_loader,
    load_init_from,
    memory_format,
    paper_weights_warning,
    poly_lr_lambda,
)
from nlseg.engine.checkpoint import check_compatible, load_checkpoint, model_record, save_checkpoint
from nlseg.engine.datacheck import run_data
from nlseg.engine.distributed import DistInfo, init_distributed
from nlseg.engine.rankerrors import on_every_rank
from nlseg.engine.evaluate import evaluate
from nlseg.engine.inference import prepare_for_inference
from nlseg.engine.interrupt import StopSignals, TrainingInterrupted, stop_workers
from nlseg.engine.losses import SegmentationLoss
from nlseg.engine.runlog import RunLog, eta
from nlseg.engine.sampling import mix_seeds
from nlseg.engine.worklock import hold_work_dir
from nlseg.engine.workdir import (
    check_resume_changes, keep_metrics_until, remove_orphan_temps, start_run, write_text_atomic,
)
from nlseg.errors import CheckpointError, ConfigError, NlsegError

__all__ = [
    "COMPILE_BACKEND",
    "Run",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model",
    "paper_weights_warning",
    "poly_lr_lambda",
    "save_last", "setup",
    "train",
    "train_step",
    "validate",
]

COMPILE_BACKEND: str | Callable = os.environ.get("NLSEG_COMPILE_BACKEND", "inductor")
"""The ``torch.compile`` backend of ``train.compile`` (environment variable ``NLSEG_COMPILE_BACKEND``, default
inductor). Tests use ``"eager"`` or ``"aot_eager"``: the same graph capture without inductor's code generation,
which takes minutes on a small CPU."""

class TrainingDiverged(NlsegError, RuntimeError):
    """A loss became NaN or infinite; training stopped before the weights were updated with it."""


def _all_finite(values: dict[str, torch.Tensor], dist_info: DistInfo) -> dict[str, float]:
    """Loss values as floats, checked finite on every process (all processes stop together)."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if dist_info.enabled:
        flags = torch.isfinite(stacked).all().float()
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        if flags.item() < 1:
            stacked = torch.full_like(stacked, float("nan"))
    return dict(zip(values, stacked.tolist()))


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _due(iteration: int, interval: int) -> bool:
    """Whether a periodic action falls on ``iteration``; an interval of 0 means never (only at the end)."""
    return interval > 0 and iteration % interval == 0


@dataclass
class Run:
    """Everything one training session works with; built by :func:`setup`, advanced by :func:`train_step`."""

    cfg: Config
    work_dir: Path
    dist_info: DistInfo
    device: torch.device
    model: nn.Module
    """The model itself (saved in checkpoints, evaluated), never compiled."""
    net: nn.Module
    """What the step calls: the model, or its DistributedDataParallel wrapper; compiled with ``train.compile``."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: SegmentationLoss
    batches: Iterator[dict[str, Any]]
    val_set: Dataset | None
    class_names: list[str]
    log: RunLog
    start_iter: int = 0
    best_miou: float = float("-inf")
    best_iteration: int = 0

    @property
    def last_path(self) -> Path:
        return self.work_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.work_dir / "best.pt"


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        dist.barrier()


def _save_config(cfg: Config, work_dir: Path) -> None:
    write_text_atomic(work_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _resume(run: Run) -> None:
    """Continue from ``last.pt``: weights, optimizer, loss scaling, iteration and best score."""
    if not run.last_path.is_file():
        raise CheckpointError(
            f"--resume: {run.last_path} does not exist (the run stopped before its first checkpoint); "
            f"start it again (the folder is reused): nlseg train {run.work_dir / 'config.yaml'} "
            f"--work-dir {run.work_dir}"
        )
    state = load_checkpoint(run.last_path, map_location=run.device)
    check_compatible(state, model_name=run.cfg.model.name, num_classes=len(run.class_names), path=run.last_path)
    check_resume_changes(Config.from_dict(state["config"], source=str(run.last_path)), run.cfg, work_dir=run.work_dir)
    run.start_iter = state["iteration"]
    if run.cfg.train.iters <= run.start_iter:
        raise ConfigError(
            f"{run.last_path} has done {run.start_iter} iterations and train.iters is {run.cfg.train.iters}: "
            f"to continue the run, --set train.iters=N with N > {run.start_iter}"
        )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.best_miou, run.best_iteration = state["best_miou"], state["best_iteration"]
    if run.best_path.is_file():  # an evaluation after the last checkpoint may have saved a better model
        try:
            best = load_checkpoint(run.best_path, map_location="cpu")
        except CheckpointError as err:  # a resume needs only last.pt
            run.log.print(f"warning: {str(err).split('; expected')[0]}; the run goes on from {run.last_path}, and "
                          f"the next validation better than mIoU {run.best_miou:.2f} replaces it")
        else:
            if best.get("best_miou", float("-inf")) > run.best_miou:
                run.best_miou, run.best_iteration = best["best_miou"], best["best_iteration"]
    torch.set_rng_state(state["rng"]["torch"].cpu())


def setup(cfg: Config, work_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> Run:
    """Prepare the work dir, data, model, optimizer and logs of a training session.

    A new run needs a work dir without a run (or ``overwrite``: the old one is moved aside, see
    :func:`nlseg.engine.workdir.start_run`); a resumed one continues from ``last.pt`` under ``cfg``,
    which may differ from the run's own values only in :data:`RESUMABLE_KEYS`.
    """
    tcfg = cfg.train
    dist_info, device = init_distributed(tcfg.device)
    work_dir = Path(work_dir)
    notes: list[str] = []
    if not resume:
        if dist_info.is_main:
            start_run(work_dir, overwrite=overwrite, note=notes.append)  # refuses, or moves an old run aside
        _barrier(dist_info)
        if dist_info.is_main:
            _save_config(cfg, work_dir)
    log = RunLog(work_dir, dist_info.is_main, tcfg.tensorboard)
    for line in notes:
        log.print(line)
    if dist_info.is_main and (orphans := remove_orphan_temps(work_dir)):
        log.print(f"note: removed {len(orphans)} unfinished file(s) of a save cut off by a kill: "
                  + ", ".join(p.name for p in orphans))

    train_set, val_set = on_every_rank(dist_info, lambda: run_data(cfg, work_dir, check=dist_info.is_main))
    num_classes = train_set.num_classes
    torch.manual_seed(tcfg.seed)  # identical initial weights on every process
    model = build_model(cfg, num_classes)
    if cfg.model.init_from and not resume:
        load_init_from(model, cfg, num_classes)
        log.print(f"model weights from {cfg.model.init_from}")
    elif not resume and (warning := paper_weights_warning(cfg)):
        log.print(warning)
    if dist_info.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # PyTorch's SyncBatchNorm is CUDA-only
    elif dist_info.enabled:
        log.print("note: SyncBatchNorm needs CUDA; on CPU each process keeps its own batch-norm statistics")
    model.to(device, memory_format=memory_format(tcfg))
    run = Run(
        cfg=cfg, work_dir=work_dir, dist_info=dist_info, device=device, model=model, net=model,
        optimizer=build_optimizer(model, tcfg),
        scaler=torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16"),
        criterion=build_criterion(cfg, train_set.ignore_index).to(device),
        batches=iter(()), val_set=None, class_names=list(train_set.classes), log=log,
    )
    if resume:
        _resume(run)
        if dist_info.is_main:  # the resume is accepted: the run's values from now on
            _save_config(cfg, work_dir)
            keep_metrics_until(log.metrics_path, run.start_iter, warn=log.print)  # the iterations after it are redone
        log.print(f"resumed from {run.last_path} at iteration {run.start_iter}")
    if dist_info.enabled:
        run.net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if tcfg.compile:
        run.net = torch.compile(run.net, backend=COMPILE_BACKEND)
    loader = build_train_loader(train_set, cfg, start_iter=run.start_iter, dist_info=dist_info, device=device)
    run.val_set = val_set
    run.batches = iter(loader)
    return run


def train_step(run: Run, it: int) -> tuple[dict[str, float], float]:
    """Optimiser step ``it`` (0-based): ``grad_accum`` micro-batches at the poly learning rate of ``it``.

    Returns:
        the loss and its parts (``total``, ``main``, ``aux0``, ...) of the last micro-batch, and the lr.

    Raises:
        TrainingDiverged: a loss is not finite; the weights were not updated with it.
    """
    tcfg = run.cfg.train
    torch.manual_seed(mix_seeds(tcfg.seed, run.dist_info.rank, it, 2))  # dropout masks depend only on (seed, rank, it)
    lr = tcfg.lr * poly_lr_lambda(tcfg)(it)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    for a in range(tcfg.grad_accum):
        batch = next(run.batches)
        images = batch["image"].to(run.device, non_blocking=True, memory_format=memory_format(tcfg))
        labels = batch["label"].to(run.device, non_blocking=True)
        sync = run.net.no_sync() if run.dist_info.enabled and a < tcfg.grad_accum - 1 else nullcontext()
        with sync:
            with autocast_for(tcfg, run.device):
                loss, parts = run.criterion(run.net(images), labels)
            values = _all_finite({"total": loss, **parts}, run.dist_info)
            bad = [name for name, v in values.items() if not math.isfinite(v)]
            if bad:
                raise TrainingDiverged(
                    f"iteration {it + 1}: loss {', '.join(bad)} is {values[bad[-1]]} (all parts: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                    + f"); stopped before updating the weights. {run.last_path} keeps the last finite checkpoint. "
                    "Lower train.lr or check the data."
                )
            run.scaler.scale(loss / tcfg.grad_accum).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return values, lr


def _checkpoint(run: Run, iteration: int) -> dict[str, Any]:
    """What inference needs, and the run's best score so far (:func:`model_record`)."""
    return model_record(run.model.state_dict(), run.cfg, run.class_names, iteration=iteration,
                        best_miou=run.best_miou, best_iteration=run.best_iteration)


def save_last(run: Run, iteration: int) -> None:
    """Write ``last.pt``: the weights and everything a resume needs (main process only)."""
    if not run.dist_info.is_main:
        return
    if not _params_finite(run.model):
        raise TrainingDiverged(f"iteration {iteration}: weights are not finite; {run.last_path} was not overwritten")
    state = {
        **_checkpoint(run, iteration),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    save_checkpoint(state, run.last_path)


def validate(run: Run, iteration: int) -> dict[str, Any]:
    """Score the validation split; a strictly better mIoU than any before in the run replaces ``best.pt``."""
    # On a copy (run.model trains on), not compiled: each validation's new copy would compile again.
    model = prepare_for_inference(run.model, dataclasses.replace(run.cfg.eval, compile="off"))
    metrics = evaluate(
        model, run.val_set, run.cfg.eval, device=run.device, num_classes=len(run.class_names),
        progress=run.dist_info.is_main,
    )
    run.log.record("val", iteration, {k: metrics[k] for k in ("mIoU", "mAcc", "aAcc")})
    run.log.print(f"iter {iteration}: val mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}")
    if metrics["mIoU"] > run.best_miou:
        run.best_miou, run.best_iteration = metrics["mIoU"], iteration
        if run.dist_info.is_main:
            save_checkpoint({**_checkpoint(run, iteration), "metrics": metrics}, run.best_path)
    return metrics


def train(cfg: Config, work_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``work_dir`` (``config.yaml``, ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``train.log``).

    At each iteration boundary: log (every ``log_interval``), save ``last.pt`` and evaluate (every ``eval_interval``,
    at the end; ``best.pt`` when the score is the best yet), then save ``last.pt`` (every
    ``checkpoint_interval``, at the end, and when SIGTERM or Ctrl-C arrived, after which training stops).
    The learning rate of step t is ``lr · (1 - t / train.iters)^poly_power`` (after warm-up): a run
    resumed with a larger ``train.iters`` follows the curve of the new total from its resume point on.

    Args:
        cfg: the recipe; with ``resume``, the run's own (``workdir.resume_config``), where only
            :data:`~nlseg.engine.workdir.RESUMABLE_KEYS` may differ from ``last.pt``'s.
        work_dir: the run's folder.
        resume: continue the run in ``work_dir`` from its ``last.pt``.
        overwrite: start a new run even if ``work_dir`` holds one (moved into ``work_dir/previous-*``).

    Returns:
        the final validation metrics (empty when ``train.evaluate`` is off) and ``iteration``.

    Raises:
        TrainingDiverged: a loss became non-finite; ``last.pt`` keeps the last finite weights.
        TrainingInterrupted: SIGTERM or SIGINT; ``last.pt`` holds the iteration reached.
        OutputError: ``work_dir`` holds a run and neither ``resume`` nor ``overwrite`` is given, or another
            live run holds it (:func:`nlseg.engine.worklock.hold_work_dir`).
    """
    main_process = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank; setup() has not joined the group yet
    with hold_work_dir(work_dir, enabled=main_process):  # refuses while a live run holds the work dir
        return _train(cfg, work_dir, resume=resume, overwrite=overwrite)


def _train(cfg: Config, work_dir: str | Path, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    run = setup(cfg, work_dir, resume=resume, overwrite=overwrite)
    tcfg, log = cfg.train, run.log
    metrics: dict[str, Any] = {}
    tick, tick_iter = time.perf_counter(), run.start_iter
    log.print(f"training {cfg.model.name} on {cfg.data.dataset} for {tcfg.iters} iterations on {run.device}"
              + (f" × {run.dist_info.world_size} processes" if run.dist_info.enabled else ""))
    run.model.train()
    try:
        with StopSignals(run.last_path) as stop:
            stop.saved_iteration = run.start_iter
            for it in range(run.start_iter, tcfg.iters):
                values, lr = train_step(run, it)
                iteration = it + 1
                final = iteration == tcfg.iters
                if _due(iteration, tcfg.log_interval) or final:
                    elapsed = time.perf_counter() - tick
                    speed = (iteration - tick_iter) / max(elapsed, 1e-9)
                    tick, tick_iter = time.perf_counter(), iteration
                    log.record("train", iteration, {"lr": lr, "speed": speed, **{f"loss_{k}": v for k, v in values.items()}})
                    log.print(
                        f"iter {iteration}/{tcfg.iters}  loss {values['total']:.4f} ("
                        + " ".join(f"{k} {v:.3f}" for k, v in values.items() if k != "total")
                        + f")  lr {lr:.2e}  {speed:.2f} it/s  ETA {eta((tcfg.iters - iteration) / max(speed, 1e-9))}"
                    )
                if run.val_set is not None and (_due(iteration, tcfg.eval_interval) or final):
                    save_last(run, iteration)  # first: a crash inside validation loses no iterations
                    stop.saved_iteration = iteration
                    metrics = validate(run, iteration)
                signum = stop.requested(run.dist_info, run.device)
                if (_due(iteration, tcfg.checkpoint_interval) or final or signum):
                    save_last(run, iteration)
                    stop.saved_iteration = iteration
                if signum and not final:
                    message = (f"interrupted by {signal.Signals(signum).name} at iteration {iteration}; saved "
                               f"{run.last_path}; resume with: nlseg train --work-dir {run.work_dir} --resume")
                    log.print(message, console=False)  # the command line prints it, once
                    raise TrainingInterrupted(message, 128 + signum)
    finally:
        stop_workers(run)
        log.close()
    return {"iteration": tcfg.iters, **metrics}
