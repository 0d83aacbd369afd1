"""One prepared check of nlseg on a CUDA machine, written as one Markdown report.

    python benchmarks/gpu_check.py [--out gpu_check_report.md] [--deadline 540]

Run from the repository root with the Python that holds torch; nothing is downloaded. Steps, in order:

* ``env``: torch, CUDA, cuDNN and NCCL versions, the GPUs and their memory, nlseg's version and features.
* ``tests``: ``pytest -m cuda`` (``tests/test_cuda.py`` and every other test marked ``cuda``).
* ``train-amp``: ``nlseg train`` for a few iterations, one small model per family, with ``train.amp=bf16`` and
  ``train.amp=fp16`` (the trainer's GradScaler) on the GPU; every logged loss must be finite.
* ``train-levers``: the training switches this nlseg has (``train.channels_last``, ``train.compile``), if any.
* ``eval``: ``nlseg eval --device cuda`` of a checkpoint from ``train-amp``, eager on the CPU and the GPU and
  with each inference switch this nlseg has (``eval.aux``, ``eval.fold_bn``, ...), mIoU side by side.
* ``ddp``: ``torchrun --standalone --nproc_per_node=<GPUs>`` of ``nlseg train`` (NCCL), and an NCCL probe
  (process group, all-reduce, a DistributedDataParallel step) on the same GPUs.
* ``bench-blocks``, ``bench-models``, ``bench-models-train``, ``bench-table5``: ``nlseg bench ... --device cuda``.
* ``vs-mmseg``: ``benchmarks/vs_mmseg.py`` on the GPU, when that script and a CUDA-capable mmseg venv exist.

Each step runs in its own subprocesses, each command with a timeout, the step within its budget, all under
one global deadline, so a hang or a crash in one step is reported and the next step still runs; the report
is rewritten after every step.
A step whose prerequisite is missing (no CUDA, an older nlseg without a switch, no mmseg venv) is
"skipped" with the reason. On a machine without CUDA the script runs what it can at tiny sizes on the
CPU (labelled "cpu") and names what it skipped. Exit status: 0 when no step failed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LEVERS = ("channels_last", "compile")
"""Recipe fields of ``train`` that the training-levers step switches on when this nlseg has them."""
EVAL_LEVERS = ("aux", "fold_bn", "channels_last", "amp", "compile")
"""Recipe fields of ``eval`` that the eval step tries one at a time when this nlseg has them."""
CUT = "cut: step budget spent"
"""A training run not started, or killed, because its step's budget ran out: not a failure of nlseg."""
EVAL_FAMILY = "denoised_nl"
"""The family whose ``train-amp`` checkpoint the eval step reads (its GR head is the one inference keeps)."""

# The probe runs in a subprocess: the parent never imports torch or nlseg, so neither can break the report.
PROBE = r'''
import dataclasses, json, os, platform, re, typing
import torch
import nlseg
from nlseg.cli import COMMANDS
from nlseg.config import EvalConfig, TrainConfig
from nlseg.models import create_model, list_models, model_options

def fields(cls):
    out = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        choices = [a for a in typing.get_args(hint) if isinstance(a, str)] if typing.get_origin(hint) is typing.Literal else None
        out[f.name] = {"type": "bool" if hint is bool else "choice" if choices else "other",
                       "choices": choices, "default": f.default if f.default is not dataclasses.MISSING else None}
    return out

tiny = {"backbone_width": 8, "head_channels": 16, "key_channels": 8, "value_channels": 8}
families = {}
for name in list_models():
    family = re.sub(r"_r\d+$", "", name)
    depth = int(name.rsplit("_r", 1)[1])
    if family in families and families[family]["depth"] <= depth:
        continue
    accepted = sorted(key for key in tiny if key in model_options(name))
    with torch.device("meta"):  # no memory, no weights: only the number of auxiliary heads is read
        model = create_model(name, num_classes=3, **{key: tiny[key] for key in accepted})
    families[family] = {"model": name, "depth": depth, "accepted": accepted, "aux": len(model.aux_heads)}

cuda = torch.cuda.is_available()
gpus = []
for i in range(torch.cuda.device_count() if cuda else 0):
    p = torch.cuda.get_device_properties(i)
    gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                 "multiprocessors": p.multi_processor_count})
nccl = None
if cuda and torch.distributed.is_nccl_available():
    version = torch.cuda.nccl.version()
    nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if cuda else None, "nccl": nccl, "cuda_available": cuda,
    "bf16_on_gpu": cuda and torch.cuda.is_bf16_supported(), "gpus": gpus, "cpu_threads": torch.get_num_threads(),
    "nlseg": nlseg.__version__, "nlseg_path": os.path.dirname(nlseg.__file__), "commands": list(COMMANDS),
    "train_fields": fields(TrainConfig), "eval_fields": fields(EvalConfig), "families": families,
}))
'''

NCCL_PROBE = r'''
import os, torch, torch.distributed as dist
from torch import nn
rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local)
dist.init_process_group("nccl")
device = torch.device("cuda", local)
total = torch.tensor([float(rank + 1)], device=device)
dist.all_reduce(total)
assert total.item() == world * (world + 1) / 2, total.item()
torch.manual_seed(0)
net = nn.parallel.DistributedDataParallel(nn.Conv2d(3, 4, 3).to(device), device_ids=[local])
torch.manual_seed(rank)
net(torch.randn(2, 3, 8, 8, device=device)).square().mean().backward()
grad = net.module.weight.grad.clone()
gathered = [torch.empty_like(grad) for _ in range(world)]
dist.all_gather(gathered, grad)
assert all(torch.equal(g, grad) for g in gathered), "DDP left the ranks with different gradients"
if rank == 0:
    print(f"NCCL probe: backend {dist.get_backend()}, world size {world}, all_reduce sum {total.item():.0f}, "
          f"DDP gradients equal on every rank")
dist.barrier()
dist.destroy_process_group()
'''


@dataclass(frozen=True)
class Sizes:
    """How big each step's work is: tiny on the CPU (the report only shows the steps run), real on a GPU."""

    small: dict[str, int]
    crop: int
    batch: int
    iters: int
    blocks: list[str]
    models: list[str]
    models_train: list[str]
    table5: list[str]


GPU_SIZES = Sizes(
    small={"backbone_width": 32, "head_channels": 64, "key_channels": 32, "value_channels": 32},
    crop=128, batch=4, iters=6,
    blocks=["--blocks", "all", "--sizes", "96x96,128x256", "--repeats", "3"],
    models=["--models", "fcn_r101,ann_r101,nl_r101,danet_r101,aspp_r101,denoised_nl_r101", "--size", "512x1024",
            "--repeats", "3"],
    models_train=["--models", "ann_r50,denoised_nl_r50", "--size", "512x512", "--batch-size", "2", "--train",
                  "--repeats", "3"],
    table5=["--sizes", "768x768,1024x2048", "--repeats", "3"],
)
CPU_SIZES = Sizes(
    small={"backbone_width": 8, "head_channels": 16, "key_channels": 8, "value_channels": 8},
    crop=48, batch=2, iters=3,
    blocks=["--blocks", "nb,apnb,denoised_nl", "--sizes", "12x12", "--channels", "64", "--key-channels", "16",
            "--repeats", "1"],
    models=["--models", "fcn_r18", "--size", "64x64", "--num-classes", "3", "--repeats", "1"],
    models_train=["--models", "fcn_r18", "--size", "64x64", "--num-classes", "3", "--train", "--repeats", "1"],
    table5=["--sizes", "64x64", "--repeats", "1"],
)


@dataclass
class Result:
    """One step's outcome: status, why (for skipped / failed), the Markdown it contributes, its wall time."""

    status: str  # "passed" | "failed" | "skipped"
    reason: str = ""
    output: str = ""
    seconds: float = 0.0


@dataclass
class Proc:
    rc: int | None  # None: killed at its timeout
    out: str
    seconds: float
    cut: bool = False  # killed because the step's budget or the deadline ran out, not at its own timeout


@dataclass
class Check:
    """What every step reads: options, the device, the probe's answers, the clock, the scratch folder."""

    args: argparse.Namespace
    scratch: Path
    deadline: float  # time.monotonic() at which no further work starts
    step_end: float = math.inf  # time.monotonic() at which the running step's budget is spent
    probe: dict = field(default_factory=dict)
    trained: dict[str, Path] = field(default_factory=dict)  # "<family>/<amp>" -> work dir of train-amp

    @property
    def gpus(self) -> int:
        return len(self.probe.get("gpus", []))

    @property
    def device(self) -> str:
        return "cuda" if self.gpus and self.args.device != "cpu" else "cpu"

    @property
    def sizes(self) -> Sizes:
        return GPU_SIZES if self.device == "cuda" else CPU_SIZES

    @property
    def no_cuda(self) -> str:
        """Why this check runs on the CPU."""
        return "--device cpu" if self.gpus else "no CUDA device"

    def left(self) -> float:
        """Seconds the running step has left: its budget, within the global deadline."""
        return min(self.deadline, self.step_end) - time.monotonic()

    def run(self, argv: list[str], timeout: float, *, env: dict[str, str] | None = None) -> Proc:
        """Run ``argv`` in the repository root in its own process group, killed at ``timeout`` or the deadline."""
        limit = max(1.0, min(timeout, self.left()))
        start = time.monotonic()
        child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                     "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(argv, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=limit)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started: the command and its children
            out, _ = proc.communicate()
            rc, out = None, out + f"\n[killed after {limit:.0f} s]"
            return Proc(rc, out, time.monotonic() - start, cut=limit < timeout)
        return Proc(rc, out, time.monotonic() - start)

    def nlseg(self, *argv: str, timeout: float, env: dict[str, str] | None = None) -> Proc:
        return self.run([sys.executable, "-m", "nlseg", *argv], timeout, env=env)


def tail(text: str, lines: int = 25) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "```\n" + "\n".join(kept) + "\n```"


def failure(proc: Proc, what: str) -> str:
    return f"{what} timed out after {proc.seconds:.0f} s" if proc.rc is None else f"{what} exited {proc.rc}"


def markdown_tables(text: str) -> str:
    """The Markdown table lines (and the lines right after a table) of a command's output."""
    keep, after_table = [], False
    for line in text.splitlines():
        if line.startswith("|") or line.startswith("Device "):
            keep.append(line)
            after_table = True
        elif after_table and not line.strip():
            keep.append("")
            after_table = False
    return "\n".join(keep).strip()


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the steps --------------------------------------------------------------------------------------------


def step_env(check: Check) -> Result:
    proc = check.run([sys.executable, "-c", PROBE], 120)
    if proc.rc != 0:
        return Result("failed", failure(proc, "the probe (import torch, nlseg)"), tail(proc.out))
    probe = json.loads(proc.out.strip().splitlines()[-1])
    if probe["cuda_available"] and check.args.device == "cpu":
        probe["note"] = "--device cpu: the GPUs are not used"
    check.probe = probe
    rows = [
        ["Python", f"{probe['python']} ({platform.platform()})"],
        ["torch", f"{probe['torch']}, CUDA build {probe['cuda_build']}, cuDNN {probe['cudnn']}, NCCL {probe['nccl']}"],
        ["CUDA available", f"{probe['cuda_available']} (bf16 on the GPU: {probe['bf16_on_gpu']})"],
        ["GPUs", "; ".join(f"{i}: {g['name']}, {g['memory_gib']} GiB, sm {g['capability']}, {g['multiprocessors']} SMs"
                           for i, g in enumerate(probe["gpus"])) or "none"],
        ["CPU threads (torch)", f"{probe['cpu_threads']} of {os.cpu_count()} cores"],
        ["nlseg", f"{probe['nlseg']} at {probe['nlseg_path']}; commands: {', '.join(probe['commands'])}"],
        ["train levers present", ", ".join(f for f in TRAIN_LEVERS if f in probe["train_fields"]) or "none"],
        ["eval levers present", ", ".join(f for f in EVAL_LEVERS if f in probe["eval_fields"]) or "none"],
        ["device of this check", check.device + (f" ({probe['note']})" if "note" in probe else "")],
    ]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in probe["gpus"]) or "no GPU"
    summary = f"torch {probe['torch']}, CUDA {probe['cuda_build']}, {gpus}, nlseg {probe['nlseg']}"
    return Result("passed", summary, table(["what", "value"], rows))


def step_tests(check: Check) -> Result:
    if check.device != "cuda":
        return Result("skipped", f"{check.no_cuda}: the cuda-marked tests skip without one")
    proc = check.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"], 180)
    summary = proc.out.strip().splitlines()[-1] if proc.out.strip() else ""
    if proc.rc == 5:
        return Result("failed", "no test is marked cuda", tail(proc.out))
    if proc.rc != 0:
        return Result("failed", failure(proc, "pytest -m cuda") + f": {summary}", tail(proc.out, 60))
    return Result("passed", summary, tail(proc.out, 8))


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


def step_eval(check: Check) -> Result:
    work = check.trained.get(f"{EVAL_FAMILY}/amp=bf16")
    if work is None:
        return Result("skipped", f"no {EVAL_FAMILY} checkpoint from train-amp (amp=bf16) to evaluate")
    settings = lever_settings(check.probe["eval_fields"], EVAL_LEVERS)
    devices = ["cpu", "cuda"] if check.device == "cuda" else ["cpu"]
    runs = [(d, "eager", []) for d in devices] + [(check.device, s, [f"eval.{s}"]) for s in settings]
    rows, problems, refused = [], [], 0
    for device, label, overrides in runs:
        out = check.scratch / "eval" / f"{device}-{label.replace('=', '-')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = ["eval", str(work / "config.yaml"), "--checkpoint", str(work / "last.pt"), "--device", device,
                "--out", str(out)] + (["--set", *overrides] if overrides else [])
        proc = check.nlseg(*argv, timeout=check.args.step_timeout)
        error = next((line for line in proc.out.splitlines() if line.startswith("nlseg eval: error:")), None)
        if proc.rc == 2 and error:  # a switch this device does not allow, said as a user error
            refused += 1
            rows.append([device, label, "refused: " + error.removeprefix("nlseg eval: error: "), "—", "—",
                         f"{proc.seconds:.1f}"])
            continue
        if proc.rc != 0 or not out.exists():
            problems.append(f"{device} {label}: {failure(proc, 'nlseg eval')}\n{tail(proc.out, 15)}")
            rows.append([device, label, "FAILED", "—", "—", f"{proc.seconds:.1f}"])
            continue
        metrics = json.loads(out.read_text())
        rows.append([device, label, "ok", f"{metrics.get('mIoU', float('nan')):.2f}",
                     f"{metrics.get('aAcc', float('nan')):.2f}", f"{proc.seconds:.1f}"])
    note = (f"`nlseg eval` of {work.name}/last.pt on the synthetic val split; eval switches found: "
            f"{', '.join(settings) or 'none (this nlseg has none of eval.' + '/'.join(EVAL_LEVERS) + ')'}.")
    output = note + "\n\n" + table(["device", "setting", "status", "mIoU", "aAcc", "s"], rows)
    if problems:
        return Result("failed", f"{len(problems)} of {len(runs)} evaluations failed",
                      output + "\n\n" + "\n\n".join(problems))
    return Result("passed", f"{len(runs) - refused} evaluations" + (f", {refused} refused by the recipe checks"
                                                                   if refused else ""), output)


def step_ddp(check: Check) -> Result:
    if check.device != "cuda":
        return Result("skipped", f"{check.no_cuda}: NCCL needs GPUs (DDP on the CPU with gloo is tests/test_trainer.py)")
    n = check.gpus
    family = "fcn" if "fcn" in check.probe["families"] else next(iter(check.probe["families"]))
    work = check.scratch / "ddp" / "run"
    path = recipe(check, family, work, iters=4, batch=2 * n)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    proc = check.run([*torchrun, "-m", "nlseg", "train", str(path), "--work-dir", str(work), "--overwrite",
                      "--set", "train.device=cuda", "train.amp=bf16"], check.args.step_timeout)
    probe_path = check.scratch / "ddp" / "nccl_probe.py"
    probe_path.write_text(NCCL_PROBE)
    nccl = check.run([*torchrun, str(probe_path)], 120)
    found = losses(work)
    lines = [f"GPUs: {n}. " + ("World size 1: `nlseg train` under torchrun makes no process group for one process, "
                               "so NCCL is exercised by the probe below (a world-size-1 NCCL group)."
                               if n == 1 else f"World size {n}, NCCL."),
             f"`torchrun --standalone --nproc_per_node={n} -m nlseg train` ({family}, 4 iterations, bf16): "
             f"exit {proc.rc}, losses {', '.join(f'{x:.3f}' for x in found) or '—'}, {proc.seconds:.1f} s",
             f"NCCL probe: exit {nccl.rc}, {nccl.seconds:.1f} s"]
    said = [line for line in nccl.out.splitlines() if line.startswith("NCCL probe:")]
    lines += said
    problems = []
    if proc.rc != 0 or not found or not all(math.isfinite(x) for x in found):
        problems.append(failure(proc, "torchrun nlseg train") if proc.rc != 0 else f"losses {found} not finite")
        lines.append(tail(proc.out, 30))
    elif n > 1 and f"× {n} processes" not in (work / "train.log").read_text():
        problems.append(f"train.log does not say '× {n} processes'")
    if nccl.rc != 0 or not said:
        problems.append(failure(nccl, "the NCCL probe"))
        lines.append(tail(nccl.out, 30))
    return Result("failed" if problems else "passed", "; ".join(problems) or f"world size {n} over NCCL",
                  "\n\n".join(lines))


def bench_step(report: str, sizes_of: Callable[[Sizes], list[str]]) -> Callable[[Check], Result]:
    def step(check: Check) -> Result:
        records = check.scratch / f"bench-{report}.json"
        argv = ["bench", report.removesuffix("-train"), *sizes_of(check.sizes), "--device", check.device,
                "--json", str(records)]
        if check.device == "cpu":
            argv += ["--threads", str(min(2, os.cpu_count() or 1))]
        proc = check.nlseg(*argv, timeout=check.args.step_timeout)
        command = "`nlseg " + " ".join(argv[:-2]) + "`"
        if proc.rc != 0:
            return Result("failed", failure(proc, "nlseg bench"), command + "\n\n" + tail(proc.out, 30))
        return Result("passed", f"{len(json.loads(records.read_text()))} records on {check.device}",
                      command + "\n\n" + (markdown_tables(proc.out) or tail(proc.out)))

    return step


def mmseg_python(check: Check) -> Path:
    venv = Path(check.args.mmseg_venv)
    return (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"


VS_MMSEG_ARGS = "--networks ann nl --depths 50 --levers as_built exact bf16 --repeats 10 --timeout 150"
"""What the vs-mmseg step measures by default: 12 processes, each a model build and a few GPU passes."""


def step_vs_mmseg(check: Check) -> Result:
    script = ROOT / "benchmarks" / "vs_mmseg.py"
    if not script.exists():
        return Result("skipped", "benchmarks/vs_mmseg.py is not in this checkout")
    if check.device != "cuda":
        return Result("skipped", f"{check.no_cuda} (on the CPU, run benchmarks/vs_mmseg.py itself)")
    python = mmseg_python(check)
    if not python.exists():
        return Result("skipped", f"no mmseg venv at {python.parent.parent} (create it with benchmarks/mmseg_env.sh, "
                                 "or name one with --mmseg-venv)")
    probe = check.run([str(python), "-c", "import torch, mmseg; print(torch.__version__, torch.cuda.is_available())"],
                      60)
    if probe.rc != 0:
        return Result("skipped", f"the mmseg venv {python} cannot import torch and mmseg", tail(probe.out, 10))
    torch_version, cuda = probe.out.split()[-2:]
    if cuda != "True":
        return Result("skipped", f"the mmseg venv's torch {torch_version} has no CUDA here")
    helped = check.run([sys.executable, str(script), "--help"], 60)
    if "--device" not in helped.out:
        return Result("skipped", "benchmarks/vs_mmseg.py has no --device option: it would measure the CPU")
    argv = [sys.executable, str(script), "--device", "cuda"]
    for option in ("--mmseg-python", "--mmseg-venv"):
        if option in helped.out:
            argv += [option, str(python if option == "--mmseg-python" else python.parent.parent)]
    argv += shlex.split(check.args.vs_mmseg_args)
    proc = check.run(argv, max(check.args.step_timeout, 240))
    command = "`" + " ".join(shlex.quote(a) for a in argv[1:]) + "`"
    if proc.rc != 0:
        return Result("failed", failure(proc, "vs_mmseg.py"), command + "\n\n" + tail(proc.out, 40))
    return Result("passed", "table below", command + "\n\n" + (markdown_tables(proc.out) or tail(proc.out, 60)))


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Check], Result]
    budget: float  # seconds the step may take in all (its commands are cut there), within the global deadline


STEPS = (
    Step("env", "environment", step_env, 60),
    Step("tests", "pytest -m cuda", step_tests, 150),
    Step("train-amp", "one AMP training run per model family", step_train_amp, 150),
    Step("train-levers", "training switches (channels_last, compile)", step_train_levers, 150),
    Step("eval", "nlseg eval on the device, with each inference switch", step_eval, 120),
    Step("ddp", "DDP over NCCL (torchrun)", step_ddp, 90),
    Step("bench-blocks", "nlseg bench blocks", bench_step("blocks", lambda s: s.blocks), 75),
    Step("bench-models", "nlseg bench models (inference)", bench_step("models", lambda s: s.models), 75),
    Step("bench-models-train", "nlseg bench models --train", bench_step("models-train", lambda s: s.models_train),
         75),
    Step("bench-table5", "nlseg bench table5", bench_step("table5", lambda s: s.table5), 75),
    Step("vs-mmseg", "benchmarks/vs_mmseg.py", step_vs_mmseg, 180),
)


# --- the report -------------------------------------------------------------------------------------------


def write_report(path: Path, check: Check, results: dict[str, Result], started: datetime, total: float) -> None:
    probe = check.probe
    gpus = ", ".join(g["name"] for g in probe.get("gpus", [])) or "none"
    head = [
        "# nlseg GPU check",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC on {platform.node()}; device **{check.device}** (GPUs: {gpus}); "
        f"torch {probe.get('torch', '?')}, nlseg {probe.get('nlseg', '?')}; {total:.0f} s in all, "
        f"deadline {check.args.deadline:.0f} s.",
        "",
        "Command: `python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]]) + "`",
        "",
    ]
    rows = []
    for step in STEPS:
        result = results.get(step.name)
        if result is None:
            rows.append([f"`{step.name}`", step.title, "pending", "—", ""])
        else:
            rows.append([f"`{step.name}`", step.title, result.status, f"{result.seconds:.1f} s",
                         result.reason.replace("|", "/")])
    body = [table(["step", "what", "status", "time", "why / key output"], rows), ""]
    for step in STEPS:
        result = results.get(step.name)
        if result is not None and result.output:
            body += [f"## {step.name}: {result.status}", "", result.output, ""]
    path.write_text("\n".join(head + body))


def run_check(args: argparse.Namespace) -> int:
    started, start = datetime.now(timezone.utc), time.monotonic()
    wanted = args.steps.split(",") if args.steps else [s.name for s in STEPS]
    unknown = sorted(set(wanted) - {s.name for s in STEPS})
    if unknown:
        print(f"gpu_check: --steps: unknown {unknown}; the steps are {[s.name for s in STEPS]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="nlseg-gpu-check-") as scratch:
        check = Check(args, Path(scratch), start + args.deadline)
        results: dict[str, Result] = {}
        for step in STEPS:
            tick = time.monotonic()
            if step.name != "env" and step.name not in wanted:
                result = Result("skipped", "not selected (--steps)")
            elif step.name != "env" and not check.probe:
                result = Result("skipped", "the environment probe failed")
            elif check.deadline - tick < 5:
                result = Result("skipped", f"global deadline of {args.deadline:.0f} s reached")
            else:
                check.step_end = tick + step.budget
                print(f"gpu_check: {step.name} ...", flush=True)
                try:
                    result = step.run(check)
                except Exception as error:  # a bug in this script's step: report it, go on with the next
                    result = Result("failed", f"gpu_check itself raised {type(error).__name__}: {error}")
            result.seconds = time.monotonic() - tick
            results[step.name] = result
            print(f"gpu_check: {step.name}: {result.status} ({result.seconds:.1f} s) {result.reason}", flush=True)
            write_report(out, check, results, started, time.monotonic() - start)
    failed = [name for name, r in results.items() if r.status == "failed"]
    print(f"gpu_check: report in {out}; " + (f"failed: {', '.join(failed)}" if failed else "no step failed"))
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=textwrap.dedent(__doc__.split("\n\n", 2)[2]))
    parser.add_argument("--out", default="gpu_check_report.md", help="the Markdown report (default %(default)s)")
    parser.add_argument("--steps", default="", help="comma-separated steps to run (default: all); env always runs")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto",
                        help="auto: the GPUs when CUDA is present; cpu: the CPU path even on a GPU machine")
    parser.add_argument("--deadline", type=float, default=540.0,
                        help="seconds after which no step starts and running ones are cut (default %(default)s)")
    parser.add_argument("--step-timeout", type=float, default=150.0,
                        help="timeout of one command of a step, in seconds (default %(default)s); each step also "
                             "has a budget for all its commands")
    parser.add_argument("--families", default="",
                        help="comma-separated model families for train-amp (default: every family of nlseg list models)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="training runs at once (default: up to 6 on a GPU machine, 1 on the CPU)")
    parser.add_argument("--mmseg-venv", default=".venv-mmseg",
                        help="the mmsegmentation venv of benchmarks/vs_mmseg.py (default %(default)s)")
    parser.add_argument("--vs-mmseg-args", default=VS_MMSEG_ARGS,
                        help="arguments for benchmarks/vs_mmseg.py after --device cuda, one string (default: "
                             "%(default)r, a table that fits the step's budget)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_check(parse_args()))
