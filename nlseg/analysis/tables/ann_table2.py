"""ANN Table 2: whole networks — parameters, forward GFLOPs, time per batch, images/s, peak memory.

Inference is eval mode without autograd; ``train=True`` times one SGD step (momentum 0.9) on the
cross-entropy of every output summed, gradients allocated inside the step. GFLOPs are the forward pass's,
counted on the meta device. The paper's figures (one Titan Xp, 2048x1024 images) come from the model
table, :data:`nlseg.models.zoo.ZOO`, and are shown for a model measured at its paper size, at inference.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from nlseg.analysis.measure import META, Step, Workload, count_parameters, describe_run, measure, meta_gflops
from nlseg.analysis.report import Column, Report, fmt, size_text, text_column
from nlseg.engine.inference.compiled import CompileGate
from nlseg.models import create_model
from nlseg.models.zoo import zoo_entry

__all__ = ["LARGE_GFLOPS", "model_workload", "models_table"]

LARGE_GFLOPS = 1000.0
"""A network whose forward exceeds this many GFLOPs per image is timed once, without warm-up, by default: on
a CPU that is many seconds per run, and one-time costs are a negligible part of it."""


def model_workload(
    name: str, size: tuple[int, int], *, batch_size: int = 1, num_classes: int = 19, train: bool = False,
    compile: str = "off", calls: int = 1, paths: list[str] | None = None,
) -> Workload:
    """Inference (eval, no autograd) or one training step of ``create_model(name)`` on random images.

    Args:
        name: a registered model.
        size: (H, W) of the images.
        batch_size: images per step.
        num_classes: classes of the model and of the random targets.
        train: a training step (cross-entropy of every output summed, backward, SGD) instead of inference.
        compile: inference through the compiled path: ``on``, ``off`` or ``auto``
            (:class:`~nlseg.engine.inference.compiled.CompileGate`, deciding after the first of ``calls`` passes).
        calls: the passes the measurement will make (warm-up included), for ``auto``.
        paths: receives the line saying which path ran.
    """

    def make(device: torch.device) -> Step:
        torch.manual_seed(0)
        if device == META:
            with torch.device(META):
                model = create_model(name, num_classes=num_classes)
        else:
            model = create_model(name, num_classes=num_classes).to(device)
        images = torch.randn(batch_size, 3, *size, device=device)
        model.train(train)
        if not train:
            run = model
            if compile != "off" and device != META:
                run = CompileGate(model.requires_grad_(False), compile, log=paths.append if paths is not None else None)
                run.plan(calls, 1)

            def infer() -> None:
                with torch.no_grad(), run.image() if isinstance(run, CompileGate) else nullcontext():
                    run(images, with_aux=True)  # the network as built, auxiliary heads included (Table 2)

            return infer
        target = torch.randint(0, num_classes, (batch_size, *size), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            out = model(images)
            loss = sum(F.cross_entropy(logits, target) for logits in [out["out"], *out["aux"]])
            loss.backward()
            optimizer.step()

        return train_step

    return make


def models_table(
    models: Sequence[str] = ("ann_r101",),
    size: tuple[int, int] = (512, 1024),
    *,
    batch_size: int = 1,
    num_classes: int = 19,
    train: bool = False,
    compile: str = "off",
    repeats: int | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
) -> Report:
    """Measure each network: one record per model.

    Args:
        models: registered model names.
        size: (H, W) of the input images.
        batch_size: images per step.
        num_classes: classes of the models.
        train: time a training step instead of inference.
        compile: inference through the compiled path (``on``, ``off``, ``auto``; see :func:`model_workload`); with
            it the first pass is always an untimed warm-up (it compiles).
        repeats: timed repeats; None: 3, or 1 without warm-up for a network above :data:`LARGE_GFLOPS`.
        device: where to run.
        log: called with one line per finished model (progress), if given.
    """
    device = torch.device(device)
    header, _ = describe_run(device)
    records = []
    for name in models:
        entry = zoo_entry(name)
        gflops = meta_gflops(model_workload(name, size, batch_size=batch_size, num_classes=num_classes))
        large = gflops / batch_size > LARGE_GFLOPS
        runs = repeats if repeats is not None else (1 if large else 3)
        warmup = 0 if large and compile == "off" else 1
        paths: list[str] = []
        workload = model_workload(name, size, batch_size=batch_size, num_classes=num_classes, train=train,
                                  compile=compile, calls=warmup + runs + 1, paths=paths)
        m = measure(workload, device=device, warmup=warmup, repeats=runs, flops=False)
        paper = entry.inference_s is not None and tuple(size) == entry.input_size and not train
        records.append({
            "model": name,
            "size": size_text(size),
            "batch_size": batch_size,
            "mode": "train step" if train else "inference",
            "device": str(device),
            "params_m": count_parameters(lambda: create_model(name, num_classes=num_classes)) / 1e6,
            "gflops": gflops,
            "ms": m.ms,
            "images_per_s": batch_size / (m.ms / 1e3),
            "peak_mem_mib": m.peak_mib,
            "repeats": runs,
            "path": paths[-1].removeprefix("inference path: ") if paths else "eager",
            "paper_s": entry.inference_s if paper else None,
            "paper_mem_mb": entry.memory_mb if paper else None,
            "paper_params_m": entry.params_m if paper else None,
        })
        if log:
            log(f"  {name}: {m.ms:.0f} ms ({records[-1]['path']})")
    columns = (
        text_column("model", "model"),
        text_column("input (HxW)", "size"),
        Column("batch", "batch_size"),
        text_column("mode", "mode"),
        Column("params (M)", "params_m", ".2f"),
        Column("GFLOPs (forward)", "gflops", ".1f"),
        Column("time / batch (s)", lambda r: r["ms"] / 1e3, ".3f"),
        Column("images/s", "images_per_s", ".3f"),
        Column("peak MiB", "peak_mem_mib", ".0f"),
        Column("repeats", "repeats"),
        Column("paper: time (s) / memory (MB) / params (M), Titan Xp", _paper_cell, numeric=False),
    )
    notes = ()
    if any(r["paper_s"] is not None for r in records):
        notes = ("Paper: ANN Table 2, one Titan Xp GPU, 2048x1024 images; the hardware differs from this run's.",)
    return Report(records, columns, header=header, notes=notes)


def _paper_cell(record: dict) -> str | None:
    if record["paper_s"] is None:
        return None
    return f"{record['paper_s']} / {fmt(record['paper_mem_mb'], '.0f')} / {record['paper_params_m']}"
