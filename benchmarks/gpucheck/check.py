"""What every step reads and runs with: the check's state, its command runner, the sizes of the work, and the
step and result types; the helpers that turn a command's output into the report's Markdown.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.process import Proc, run_group

ROOT = Path(__file__).resolve().parents[2]


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
        child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                     "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = run_group(argv, limit, cwd=ROOT, env=child_env, merge_stderr=True)
        proc.cut = proc.rc is None and limit < timeout
        return proc

    def nlseg(self, *argv: str, timeout: float, env: dict[str, str] | None = None) -> Proc:
        return self.run([sys.executable, "-m", "nlseg", *argv], timeout, env=env)


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a command's output, as a Markdown code block."""
    kept = text.rstrip().splitlines()[-lines:]
    return "```\n" + "\n".join(kept) + "\n```"


def failure(proc: Proc, what: str) -> str:
    """Why ``what`` failed, in words: killed at its limit, or its exit status."""
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


@dataclass(frozen=True)
class Step:
    """One line of the report: its name (for ``--steps``), what it checks, the function that runs it."""

    name: str
    title: str
    run: Callable[[Check], Result]
    budget: float  # seconds the step may take in all (its commands are cut there), within the global deadline
