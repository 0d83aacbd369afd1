"""``benchmarks/gpu_check.py``: its CPU mode as a user runs it, and how one failing, hanging or raising step
is reported while the others still run."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nlseg

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve the script's annotations through its module
    spec.loader.exec_module(module)
    return module


def summary_rows(report: str) -> dict[str, list[str]]:
    """The report's step table: step name -> [what, status, time, why]."""
    rows = {}
    for line in report.splitlines():
        match = re.match(r"\| `([a-z0-9-]+)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


@pytest.mark.slow
def test_cpu_mode_reports_every_step_runs_env_and_training_and_names_what_it_skipped(tmp_path):
    out = tmp_path / "report.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "train-amp,tests,ddp,vs-mmseg",
         "--families", "fcn", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = out.read_text()
    rows = summary_rows(report)
    assert list(rows) == [step.name for step in load_script().STEPS]  # every step has its line, in order
    assert "device **cpu**" in report

    what, status, seconds, why = rows["env"]
    assert status == "passed" and f"torch {torch.__version__}" in why and f"nlseg {nlseg.__version__}" in why
    assert re.fullmatch(r"\d+\.\d s", seconds)
    assert f"| torch | {torch.__version__}," in report

    assert rows["train-amp"][1:2] == ["passed"] and rows["train-amp"][3] == "1 runs, every loss finite"
    train_row = next(line for line in report.splitlines() if line.startswith("| fcn | fcn_r18 | amp=bf16 |"))
    losses = [float(x) for x in train_row.split(" | ")[4].split(", ")]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)  # 3 iterations, log_interval 1

    # steps that need CUDA say so; steps not asked for say that
    no_cuda = "--device cpu" if torch.cuda.is_available() else "no CUDA device"
    assert rows["tests"][1:] == ["skipped", "0.0 s", f"{no_cuda}: the cuda-marked tests skip without one"]
    assert rows["ddp"][1] == "skipped" and "NCCL needs GPUs" in rows["ddp"][3]
    assert rows["vs-mmseg"][1] == "skipped" and rows["vs-mmseg"][3]
    for name in ("train-levers", "eval", "bench-blocks", "bench-models", "bench-models-train", "bench-table5"):
        assert rows[name][1:2] == ["skipped"] and rows[name][3] == "not selected (--steps)", rows[name]
    assert "no step failed" in result.stdout


def test_a_failing_hanging_or_raising_step_is_reported_and_the_next_steps_still_run(tmp_path, monkeypatch):
    gpu_check = load_script()

    def probe(check):
        check.probe = {"gpus": [], "torch": torch.__version__, "nlseg": "0.1.0"}
        return gpu_check.Result("passed", "probed")

    def hang(check):  # a command that never ends is killed at the step's budget
        proc = check.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=30)
        assert proc.rc is None and "[killed after 1 s]" in proc.out and proc.cut  # at the step budget (1.5 s), not 30 s
        return gpu_check.Result("failed", gpu_check.failure(proc, "sleep"))

    def crash(check):
        proc = check.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], timeout=30)
        return gpu_check.Result("failed", gpu_check.failure(proc, "crash"), gpu_check.tail(proc.out))

    def bug(check):
        raise KeyError("gpus")

    def fine_then_deadline(check):
        proc = check.run([sys.executable, "-c", "print(6 * 7)"], timeout=30)
        check.deadline = time.monotonic()  # as if this step had used up the global deadline
        return gpu_check.Result("passed", proc.out.strip())

    monkeypatch.setattr(gpu_check, "STEPS", (
        gpu_check.Step("env", "probe", probe, 30), gpu_check.Step("hang", "hangs", hang, 1.5),
        gpu_check.Step("crash", "exits 3", crash, 30), gpu_check.Step("bug", "raises", bug, 30),
        gpu_check.Step("fine", "works", fine_then_deadline, 30), gpu_check.Step("late", "never starts", bug, 30),
    ))
    out = tmp_path / "report.md"
    status = gpu_check.run_check(gpu_check.parse_args(["--out", str(out)]))
    assert status == 1
    rows = summary_rows(out.read_text())
    assert [rows[name][1] for name in ("env", "hang", "crash", "bug", "fine", "late")] == [
        "passed", "failed", "failed", "failed", "passed", "skipped"]
    assert rows["hang"][3].startswith("sleep timed out after")
    assert rows["crash"][3] == "crash exited 3" and "boom" in out.read_text()
    assert rows["bug"][3] == "gpu_check itself raised KeyError: 'gpus'"
    assert rows["fine"][3] == "42"
    assert rows["late"][3] == "global deadline of 540 s reached"


def test_unknown_step_is_refused_with_the_list(capsys):
    gpu_check = load_script()
    assert gpu_check.run_check(gpu_check.parse_args(["--steps", "env,bench"])) == 2
    assert "unknown ['bench']" in capsys.readouterr().err


@pytest.mark.parametrize("fields,expected", [
    ({}, []),
    ({"compile": {"type": "bool", "default": False, "choices": None}}, ["compile=true"]),
    ({"aux": {"type": "bool", "default": True, "choices": None},
      "amp": {"type": "choice", "default": "off", "choices": ["off", "bf16", "fp16"]},
      "size": {"type": "other", "default": None, "choices": None}}, ["aux=false", "amp=bf16", "amp=fp16"]),
])
def test_switches_are_found_by_their_recipe_field(fields, expected):
    """A switch another nlseg version may lack is tried only when its field exists: a bool flipped from its
    default, each other choice of a Literal; other fields are left alone."""
    gpu_check = load_script()
    assert gpu_check.lever_settings(fields, ("aux", "fold_bn", "amp", "compile", "size")) == expected
