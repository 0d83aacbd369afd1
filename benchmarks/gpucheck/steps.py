"""The steps besides training: the environment, ``pytest -m cuda``, ``nlseg eval`` with each inference switch,
DDP over NCCL, ``nlseg bench`` and ``benchmarks/vs_mmseg.py`` on the GPU.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from common.markdown import table
from gpucheck.check import ROOT, Check, Result, Sizes, failure, markdown_tables, tail
from gpucheck.probes import NCCL_PROBE, PROBE
from gpucheck.training import EVAL_FAMILY, TRAIN_LEVERS, lever_settings, losses, recipe

EVAL_LEVERS = ("aux", "fold_bn", "channels_last", "amp", "compile")
"""Recipe fields of ``eval`` that the eval step tries one at a time when this nlseg has them."""


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
