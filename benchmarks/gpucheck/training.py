"""The training steps: ``nlseg train`` on small recipes, one run per model family with each AMP mode
(``train-amp``) and with each training switch this nlseg has (``train-levers``); every logged loss must be
finite.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.markdown import table
from gpucheck.check import Check, Result, failure, tail

TRAIN_LEVERS = ("channels_last", "compile")
"""Recipe fields of ``train`` that the training-levers step switches on when this nlseg has them."""
CUT = "cut: step budget spent"
"""A training run not started, or killed, because its step's budget ran out: not a failure of nlseg."""
EVAL_FAMILY = "denoised_nl"
"""The family whose ``train-amp`` checkpoint the eval step reads (its GR head is the one inference keeps)."""


def recipe(check: Check, family: str, work: Path, *, iters: int | None = None, batch: int | None = None) -> Path:
    """A small recipe for the family's smallest model on the synthetic data set (written as YAML)."""
    info, sizes = check.probe["families"][family], check.sizes
    lines = {
        "model": {"name": info["model"], "options": {key: sizes.small[key] for key in info["accepted"]}},
        "data": {"dataset": "synthetic", "crop_size": sizes.crop, "scale_range": [1.0, 1.0], "num_workers": 0,
                 "options": {"length": 8, "size": sizes.crop}},
        "loss": {"main": "ce", "aux_weights": [0.4] * info["aux"]},
        "train": {"iters": iters or sizes.iters, "batch_size": batch or sizes.batch, "lr": 0.01, "log_interval": 1,
                  "checkpoint_interval": 1000, "evaluate": False, "device": check.device},
    }
    work.mkdir(parents=True, exist_ok=True)
    path = work.parent / f"{work.name}.yaml"
    path.write_text(json.dumps(lines, indent=1))  # JSON is YAML
    return path


def losses(work: Path) -> list[float]:
    """The total losses that ``nlseg train`` logged to ``metrics.jsonl`` (empty when it logged none)."""
    path = work / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["loss_total"] for r in records if r.get("kind") == "train"]


def train_rows(check: Check, runs: list[tuple[str, str, list[str]]], timeout: float) -> tuple[list[list[object]], list[str]]:
    """Run ``nlseg train`` for each (family, label, --set overrides) concurrently; a row and failures per run."""
    jobs = check.args.jobs or (min(6, max(1, (os.cpu_count() or 2) // 2)) if check.device == "cuda" else 1)
    threads = str(max(1, (os.cpu_count() or 2) // jobs))

    def one(run: tuple[str, str, list[str]]) -> tuple[list[object], str | None]:
        family, label, overrides = run
        if check.left() < 5:
            return [family, check.probe["families"][family]["model"], label, CUT, "—", "0"], None
        work = check.scratch / "train" / f"{family}-{label.replace(' ', '_').replace('=', '-')}"
        path = recipe(check, family, work)
        proc = check.nlseg("train", str(path), "--work-dir", str(work), "--overwrite", "--set", *overrides,
                           timeout=timeout, env={"OMP_NUM_THREADS": threads})
        found = losses(work)
        finite = bool(found) and all(math.isfinite(x) for x in found)
        problem = None
        if proc.cut:
            return [family, check.probe["families"][family]["model"], label, CUT, "—", f"{proc.seconds:.1f}"], None
        if proc.rc != 0:
            problem = f"{family} {label}: {failure(proc, 'nlseg train')}\n{tail(proc.out, 15)}"
        elif not finite:
            problem = f"{family} {label}: losses {found} are not all finite"
        else:
            check.trained[f"{family}/{label}"] = work
        shown = ", ".join(f"{x:.3f}" for x in found) or "—"
        return [family, check.probe["families"][family]["model"], label, "ok" if problem is None else "FAILED",
                shown, f"{proc.seconds:.1f}"], problem

    with ThreadPoolExecutor(jobs) as pool:
        done = list(pool.map(one, runs))
    return [row for row, _ in done], [problem for _, problem in done if problem]


def selected_families(check: Check) -> list[str]:
    families = list(check.probe["families"])
    wanted = check.args.families.split(",") if check.args.families else families
    unknown = sorted(set(wanted) - set(families))
    if unknown:
        raise SystemExit(f"gpu_check: --families: unknown {unknown}; this nlseg has {families}")
    return [f for f in families if f in wanted]


def step_train_amp(check: Check) -> Result:
    amps = ["bf16", "fp16"] if check.device == "cuda" else ["bf16"]
    runs = [(family, f"amp={amp}", [f"train.amp={amp}", f"train.device={check.device}"])
            for amp in amps for family in selected_families(check)]
    rows, problems = train_rows(check, runs, timeout=check.args.step_timeout)
    note = (f"`nlseg train` on the synthetic set, {check.sizes.iters} iterations at batch {check.sizes.batch}, "
            f"crop {check.sizes.crop}, small widths {check.sizes.small}, on {check.device}; loss of every iteration.")
    if check.device != "cuda":
        note += " fp16 not run: it needs CUDA (the recipe check refuses it on the CPU)."
    output = note + "\n\n" + table(["family", "model", "run", "status", "losses", "s"], rows)
    return train_result(rows, problems, output)


def train_result(rows: list[list[object]], problems: list[str], output: str) -> Result:
    ran = sum(row[3] != CUT for row in rows)
    late = f"; {len(rows) - ran} not run to the end ({CUT})" if ran < len(rows) else ""
    if problems:
        return Result("failed", f"{len(problems)} of {ran} runs failed{late}", output + "\n\n" + "\n\n".join(problems))
    return Result("passed", f"{ran} runs, every loss finite{late}", output)


def lever_settings(fields: dict, names: tuple[str, ...]) -> list[str]:
    """``key=value`` for each switch present: a bool flipped from its default, each non-default choice."""
    settings = []
    for name in names:
        spec = fields.get(name)
        if spec is None:
            continue
        if spec["type"] == "bool":
            settings.append(f"{name}={'false' if spec['default'] else 'true'}")
        elif spec["type"] == "choice":
            settings += [f"{name}={choice}" for choice in spec["choices"] if choice != spec["default"]]
    return settings


def step_train_levers(check: Check) -> Result:
    settings = lever_settings(check.probe["train_fields"], TRAIN_LEVERS)
    if not settings:
        return Result("skipped", f"this nlseg's recipes have none of train.{{{','.join(TRAIN_LEVERS)}}}")
    family = EVAL_FAMILY if EVAL_FAMILY in check.probe["families"] else next(iter(check.probe["families"]))
    amp = "bf16"
    base = [f"train.amp={amp}", f"train.device={check.device}"]
    runs = [(family, f"amp={amp} {s}", [*base, f"train.{s}"]) for s in settings]
    runs.append((family, f"amp={amp} all", [*base, *(f"train.{s}" for s in settings)]))
    rows, problems = train_rows(check, runs, timeout=check.args.step_timeout)
    return train_result(rows, problems, table(["family", "model", "run", "status", "losses", "s"], rows))
