"""The training loop: SGD with poly decay, deep supervision, AMP, DDP, exact resume.

Reproducibility is by construction, not by saved generator states alone: the k-th sample the run
consumes (its *serial*) is ``permutation_e[k mod len]`` with the epoch permutation drawn from
``(seed, epoch)``, its augmentation is drawn from a generator seeded by ``(seed, serial)``, and the
model's own randomness (dropout) is reseeded from ``(seed, rank, iteration)`` at every step. So a run
resumed from ``last.pt`` at iteration t sees exactly the batches and dropout masks that the
uninterrupted run saw from t on, whatever the number of data-loading workers.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from nlseg.config import Config, ConfigError, TrainConfig, load_config
from nlseg.data.build import build_dataset
from nlseg.data.transforms import collate
from nlseg.engine.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from nlseg.engine.distributed import DistInfo, init_distributed
from nlseg.engine.losses import SegmentationLoss
from nlseg.errors import NlsegError

__all__ = ["TrainingDiverged", "build_model", "main_train", "poly_lr_lambda", "train"]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio) to mix seeds
_MASK = (1 << 63) - 1


def _mix(*values: int) -> int:
    h = 0
    for v in values:
        h = ((h ^ (v & _MASK)) * _MIX + 0x632BE59BD9B4E019) & _MASK
    return h


class TrainingDiverged(NlsegError, RuntimeError):
    """A loss became NaN or infinite; training stopped before the weights were updated with it."""


class _SeededSamples(Dataset):
    """Gives sample ``(index, serial)`` with its random augmentation drawn from ``(seed, serial)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, serial = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, serial))
            return self.dataset[index]


class IterationSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of ``(index, serial)`` for this process, from ``start_iter`` to ``iters``.

    Each optimiser step consumes ``batch_size`` serials in all; process r takes its contiguous share,
    split into ``grad_accum`` micro-batches. Serial s maps to index ``perm_e[s mod len]`` with e = s // len.
    """

    def __init__(self, length: int, cfg: TrainConfig, *, start_iter: int, dist_info: DistInfo) -> None:
        if length == 0:
            raise ValueError("the training split is empty")
        per_process, rest = divmod(cfg.batch_size, dist_info.world_size * cfg.grad_accum)
        if rest or per_process == 0:
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} must be a positive multiple of processes × grad_accum "
                f"= {dist_info.world_size} × {cfg.grad_accum}"
            )
        self.length, self.seed = length, cfg.seed
        self.batch_size, self.micro, self.accum = cfg.batch_size, per_process, cfg.grad_accum
        self.start_iter, self.iters, self.rank = start_iter, cfg.iters, dist_info.rank
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _index(self, serial: int) -> int:
        epoch, position = divmod(serial, self.length)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch, 1))
            self._epoch, self._perm = epoch, torch.randperm(self.length, generator=gen)
        return int(self._perm[position])

    def __len__(self) -> int:
        return (self.iters - self.start_iter) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start_iter, self.iters):
            first = it * self.batch_size + self.rank * self.micro * self.accum
            for a in range(self.accum):
                start = first + a * self.micro
                yield [(self._index(s), s) for s in range(start, start + self.micro)]


def poly_lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Factor of the base lr at step t: linear warm-up from ``warmup_ratio``, then ``(1 - t/T)^power``."""

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


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"train.optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "off":
        return nullcontext()
    if cfg.amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if cfg.amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise ConfigError(f"train.amp must be off, bf16 or fp16, got {cfg.amp!r}")


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


class _Log:
    """Console lines, JSON lines in the work dir and (when installed) TensorBoard events; main process only."""

    def __init__(self, work_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = work_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(work_dir / "tb"))
            except ImportError:  # tensorboard is optional
                pass

    def record(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "iter": iteration, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, iteration)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def train(cfg: Config, work_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``work_dir`` (``last.pt``, ``best.pt``, ``metrics.jsonl``, ``config.yaml``).

    Returns:
        the final validation metrics (empty when ``train.evaluate`` is off) and ``iteration``.

    Raises:
        TrainingDiverged: a loss became non-finite; ``last.pt`` keeps the last finite weights.
    """
    tcfg = cfg.train
    dist_info, device = init_distributed(tcfg.device)
    work_dir = Path(work_dir)
    if dist_info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log = _Log(work_dir, dist_info.is_main)

    train_set = build_dataset(cfg, cfg.data.train_split, train=True)
    num_classes = train_set.num_classes
    torch.manual_seed(tcfg.seed)  # identical initial weights on every process
    model = build_model(cfg, num_classes)
    if dist_info.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # PyTorch's SyncBatchNorm is CUDA-only
    elif dist_info.enabled:
        log.print("note: SyncBatchNorm needs CUDA; on CPU each process keeps its own batch-norm statistics")
    model.to(device)
    optimizer = _optimizer(model, tcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(tcfg))
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
    start_iter, best_miou = 0, float("-inf")
    last_path = work_dir / "last.pt"
    if resume:
        state = load_checkpoint(last_path, map_location=device)
        check_compatible(state, model_name=cfg.model.name, num_classes=num_classes, path=last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_iter, best_miou = state["iteration"], state.get("best_miou", best_miou)
        torch.set_rng_state(state["rng"]["torch"].cpu())
        log.print(f"resumed from {last_path} at iteration {start_iter}")
    net = model
    if dist_info.enabled:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    criterion = SegmentationLoss(cfg.loss, ignore_index=train_set.ignore_index)
    loader = DataLoader(
        _SeededSamples(train_set, tcfg.seed),
        batch_sampler=IterationSampler(len(train_set), tcfg, start_iter=start_iter, dist_info=dist_info),
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    val_set = build_dataset(cfg, cfg.data.val_split, train=False) if tcfg.evaluate else None

    def checkpoint_state(iteration: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "model_name": cfg.model.name,
            "num_classes": num_classes,
            "class_names": list(train_set.classes),
            "config": cfg.to_dict(),
            "iteration": iteration,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "best_miou": best_miou,
        }

    def run_eval(iteration: int) -> dict[str, Any]:
        nonlocal best_miou
        from nlseg.engine.evaluate import evaluate

        model.eval()
        metrics = evaluate(model, val_set, cfg.eval, device=device, num_classes=num_classes, progress=dist_info.is_main)
        model.train()
        log.record("val", iteration, {k: metrics[k] for k in ("mIoU", "mAcc", "aAcc")})
        log.print(f"iter {iteration}: val mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}")
        if dist_info.is_main and metrics["mIoU"] > best_miou:
            best_miou = metrics["mIoU"]
            save_checkpoint(checkpoint_state(iteration), work_dir / "best.pt")
        return metrics

    model.train()
    batches = iter(loader)
    metrics: dict[str, Any] = {}
    tick, tick_iter = time.perf_counter(), start_iter
    log.print(f"training {cfg.model.name} on {cfg.data.dataset} for {tcfg.iters} iterations on {device}"
              + (f" × {dist_info.world_size} processes" if dist_info.enabled else ""))
    for it in range(start_iter, tcfg.iters):
        torch.manual_seed(_mix(tcfg.seed, dist_info.rank, it, 2))  # dropout masks depend only on (seed, rank, it)
        optimizer.zero_grad(set_to_none=True)
        for a in range(tcfg.grad_accum):
            batch = next(batches)
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            sync = net.no_sync() if dist_info.enabled and a < tcfg.grad_accum - 1 else nullcontext()
            with sync:
                with _autocast(tcfg, device):
                    loss, parts = criterion(net(images), labels)
                values = _all_finite({"total": loss, **parts}, dist_info)
                bad = [name for name, v in values.items() if not math.isfinite(v)]
                if bad:
                    raise TrainingDiverged(
                        f"iteration {it + 1}: loss {', '.join(bad)} is {values[bad[-1]]} (all parts: "
                        + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                        + f"); stopped before updating the weights. {last_path} keeps the last finite checkpoint. "
                        "Lower train.lr or check the data."
                    )
                scaler.scale(loss / tcfg.grad_accum).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        iteration = it + 1
        if iteration % tcfg.log_interval == 0 or iteration == tcfg.iters:
            elapsed = time.perf_counter() - tick
            speed = (iteration - tick_iter) / max(elapsed, 1e-9)
            tick, tick_iter = time.perf_counter(), iteration
            log.record("train", iteration, {"lr": lr, "speed": speed, **{f"loss_{k}": v for k, v in values.items()}})
            log.print(
                f"iter {iteration}/{tcfg.iters}  loss {values['total']:.4f} ("
                + " ".join(f"{k} {v:.3f}" for k, v in values.items() if k != "total")
                + f")  lr {lr:.2e}  {speed:.2f} it/s  ETA {_eta((tcfg.iters - iteration) / max(speed, 1e-9))}"
            )
        if dist_info.is_main and (iteration % tcfg.checkpoint_interval == 0 or iteration == tcfg.iters):
            if not _params_finite(model):
                raise TrainingDiverged(f"iteration {iteration}: weights are not finite; {last_path} was not overwritten")
            save_checkpoint(checkpoint_state(iteration), last_path)
        if val_set is not None and tcfg.eval_interval and iteration % tcfg.eval_interval == 0 and iteration < tcfg.iters:
            run_eval(iteration)
    if val_set is not None and tcfg.iters > start_iter:
        metrics = run_eval(tcfg.iters)
    log.close()
    return {"iteration": tcfg.iters, **metrics}


def main_train(args: argparse.Namespace) -> None:
    """``nlseg train RECIPE --work-dir DIR [--resume] [--set key=value ...]``."""
    cfg = load_config(args.recipe, args.overrides)
    train(cfg, args.work_dir, resume=args.resume)
