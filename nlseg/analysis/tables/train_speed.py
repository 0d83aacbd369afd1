"""Training speed of a recipe: the data loader alone, the training step alone, the whole loop, per speed switch.

Each *lever* is the recipe with one training speed switch turned on (``as_built`` is the recipe as it is,
``all`` turns every switch on); each gets its own run built by :func:`nlseg.engine.trainer.setup` in a
temporary work dir, so the step measured is the trainer's own :func:`~nlseg.engine.trainer.train_step`
(seeding, poly lr, finite check, optimizer) on the recipe's model, loss and data pipeline. Per run:

* **first step**: the first step's time, compilation included (``compile``, ``all``); untimed afterwards;
* **loader alone**: micro-batches drawn from the recipe's DataLoader (transforms, ``data.num_workers``), after
  the batches its workers had ready were taken away, so the figure is what the workers produce;
* **step alone**: the training step on one fixed batch (forward, backward, optimizer), no data loading;
* **full loop**: the training step on the loader's batches, as ``nlseg train`` runs it (ready batches
  taken away first, as above).

Figures are images/s, the median over ``repeats`` windows of ``steps`` steps. The levers' windows alternate
within each repeat (as built, channels_last, ..., then again), so that a load change on the machine
affects them alike. The loader does not depend on the levers: it is measured on the ``as_built`` run.
"""
from __future__ import annotations

import dataclasses
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from nlseg.analysis.measure import describe_run
from nlseg.analysis.report import Column, Report, text_column
from nlseg.config import Config
from nlseg.engine.trainer import Run, setup, train_step

__all__ = ["LEVERS", "train_speed_table"]

LEVERS: dict[str, dict[str, Any]] = {
    "as_built": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16": {"amp": "bf16"},
    "all": {"channels_last": True, "compile": True, "amp": "bf16"},
}
"""Each lever's ``train.*`` values over the recipe's."""


def _lever_config(cfg: Config, lever: str, device: str) -> Config:
    """The recipe with the lever's switches, on ``device``, long enough never to end, without evaluation."""
    train = dataclasses.replace(cfg.train, **LEVERS[lever], device=device, iters=10**9, evaluate=False,
                                log_interval=10**9, checkpoint_interval=10**9)
    return dataclasses.replace(cfg, train=train)


class _Lever:
    """One lever's run: its loader's iterator and one fixed micro-batch set aside for the step alone."""

    def __init__(self, name: str, run: Run) -> None:
        self.name, self.run, self.it = name, run, 0
        self.loader: Iterator[dict[str, Any]] = run.batches
        self.accum = run.cfg.train.grad_accum
        self.batch_images = run.cfg.train.batch_size // run.dist_info.world_size
        self.ready = 2 * run.cfg.data.num_workers  # what the workers hold ready: DataLoader's prefetch_factor 2
        start = time.perf_counter()
        self.step()
        self.first_s = time.perf_counter() - start
        self.fixed = next(self.loader)
        self.step_alone(1)  # untimed: the fixed batch's first pass warms the allocator

    def step(self) -> None:
        train_step(self.run, self.it)
        self.it += 1

    def drain(self) -> None:
        """Take the batches the workers made while nobody asked, so that a window times what they produce."""
        for _ in range(self.ready):
            next(self.loader)

    def loader_alone(self, steps: int) -> float:
        self.drain()
        start = time.perf_counter()
        for _ in range(steps * self.accum):
            next(self.loader)
        return steps * self.batch_images / (time.perf_counter() - start)

    def step_alone(self, steps: int) -> float:
        self.run.batches = itertools.repeat(self.fixed)
        return self._timed(steps)

    def full_loop(self, steps: int) -> float:
        self.drain()
        self.run.batches = self.loader
        return self._timed(steps)

    def _timed(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.batch_images / (time.perf_counter() - start)


def train_speed_table(
    cfg: Config,
    *,
    levers: Sequence[str] = tuple(LEVERS),
    steps: int = 2,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
) -> Report:
    """Measure a recipe's training speed per lever: one record per measure (loader, step, loop, first step).

    Args:
        cfg: the recipe (its model, loss, data pipeline, batch and switches are what ``as_built`` runs).
        levers: names of :data:`LEVERS` to measure, ``as_built`` always first.
        steps: optimiser steps per timed window.
        repeats: timed windows per measure and lever; the median is reported.
        device: where the runs train.
        log: called with progress lines, if given.
    """
    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    levers = ["as_built", *(name for name in levers if name != "as_built")]
    device = torch.device(device)
    header, _ = describe_run(device)
    say = log or (lambda line: None)
    times: dict[tuple[str, str], list[float]] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nlseg-train-speed-") as tmp:
        runs = []
        for name in levers:
            try:
                runs.append(_Lever(name, setup(_lever_config(cfg, name, str(device)), Path(tmp) / name)))
            except Exception as err:  # a lever this machine or model cannot run (a compiler error): say so, go on
                if name == "as_built":
                    raise
                failed.append(f"{name} failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
                say(f"  {failed[-1]}")
                continue
            say(f"  {name}: first step {runs[-1].first_s:.1f} s")
        try:
            for r in range(repeats):
                for lever in runs:
                    figures = {"step alone": lever.step_alone, "full loop": lever.full_loop}
                    if lever.name == "as_built":
                        figures = {"loader alone": lever.loader_alone, **figures}
                    for measure, window in figures.items():
                        times.setdefault((measure, lever.name), []).append(window(steps))
                        # each window's figure as it comes: a run stopped early still tells what it measured
                        say(f"  repeat {r + 1}/{repeats} {lever.name} {measure}: "
                            f"{times[(measure, lever.name)][-1]:.3f} images/s")
        finally:
            for lever in runs:
                lever.run.batches = iter(())
                lever.run.log.close()
    records = []
    for measure in ("loader alone", "step alone", "full loop"):
        record = {"model": cfg.model.name, "measure": measure + " (images/s)"}
        for name in levers:
            record[name] = statistics.median(times[(measure, name)]) if (measure, name) in times else None
        records.append(record)
    first = {lever.name: lever.first_s for lever in runs}
    records.append({"model": cfg.model.name, "measure": "first step (s)", **first})
    for record in records:
        record.update(crop=list(cfg.data.crop_size), batch_size=cfg.train.batch_size,
                      num_workers=cfg.data.num_workers, device=str(device), steps=steps, repeats=repeats)
    columns = (
        text_column("model", "model"),
        text_column("measure", "measure"),
        *(Column(name, lambda rec, name=name: _cell(rec, name), numeric=True) for name in levers),
    )
    notes = (
        f"Crop {cfg.data.crop_size[0]}x{cfg.data.crop_size[1]}, batch {cfg.train.batch_size}, "
        f"{cfg.data.num_workers} loader worker(s); median of {repeats} windows of {steps} steps, the levers "
        "alternating; (×) is the gain over as_built. The loader does not depend on the levers.",
        *failed,
    )
    return Report(records, columns, header=header, notes=notes)


def _cell(record: dict, name: str) -> str | None:
    value, base = record.get(name), record.get("as_built")
    if value is None:
        return None
    if record["measure"].startswith("first step"):
        return f"{value:.1f}"
    gain = f" ({value / base:.2f}×)" if base and name != "as_built" else ""
    return f"{value:.2f}{gain}"
