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
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # benchmarks/ holds the packages below; run from any cwd, or loaded by a test
    sys.path.insert(0, str(HERE))

# The parts; the names tests/test_gpu_check.py reads from this script are in __all__.
from gpucheck.check import Result, Step, failure, tail  # noqa: E402
from gpucheck.run import run_steps  # noqa: E402
from gpucheck.steps import (  # noqa: E402
    VS_MMSEG_ARGS, bench_step, step_ddp, step_env, step_eval, step_tests, step_vs_mmseg,
)
from gpucheck.training import lever_settings, step_train_amp, step_train_levers  # noqa: E402

__all__ = ["STEPS", "Result", "Step", "failure", "lever_settings", "parse_args", "run_check", "tail"]

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
"""The steps, in the order they run and the report lists them; each with its budget in seconds."""


def run_check(args: argparse.Namespace) -> int:
    """Every step of :data:`STEPS`, read when called (a test may replace them), and the report after each."""
    return run_steps(args, STEPS)


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
