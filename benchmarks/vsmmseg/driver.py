"""The driver: which columns a row measures, in which order, each in a fresh process; the rows it gathers.

The processes of one network alternate between the libraries, so that load from other work on the machine
hits both sides.
"""
from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common.process import run_group
from vsmmseg.networks import EXACT, INFER_LEVERS, MMSEG, TRAIN_LEVERS
from vsmmseg.records import Job, Result, Row

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "vs_mmseg.py"
"""The script every measuring process runs, with ``--worker JOB``."""


def plan_columns(task: str, levers: Sequence[str], with_mmseg: bool) -> list[str]:
    """The columns measured for ``task``, in the alternating order they run: nlseg as built, mmseg, the rest."""
    known = INFER_LEVERS if task == "infer" else TRAIN_LEVERS
    nlseg = [lever for lever in known if lever in levers]
    head = nlseg[:1] + ([MMSEG] if with_mmseg else [])
    return head + nlseg[1:]


KEEP_HEAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
"""glibc malloc tunables (read at process start) that keep freed memory in the heap for the next allocation:
no ``mmap``/``munmap`` per large tensor, so no page faults re-zeroing it on each pass (``--keep-heap``)."""


def measuring_env(threads: int, keep_heap: bool = False) -> dict[str, str]:
    """The environment of every measuring process, nlseg's and mmseg's alike (only ``PYTHONPATH`` differs): this
    one with the thread count set and, with ``keep_heap``, :data:`KEEP_HEAP`. So the allocator is the same on
    both sides: glibc malloc's defaults unless this environment sets ``MALLOC_*`` or ``LD_PRELOAD``, which then
    reach both (the measuring processes never call nlseg's CLI, which may tune its own process's malloc)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if keep_heap:
        env.update(KEEP_HEAP)
    return env


def worker_command(job: Job, mmseg_python: Path, keep_heap: bool = False) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that measure ``job`` in a fresh process."""
    env = measuring_env(job.threads, keep_heap)
    if job.side == MMSEG:
        python = str(mmseg_python)
        env.pop("PYTHONPATH", None)  # mmseg's process sees its own venv only
    else:
        python = sys.executable
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return [python, str(SCRIPT), "--worker", job.to_json()], env


def measure(job: Job, mmseg_python: Path, timeout: float, keep_heap: bool = False) -> Result:
    """Run ``job`` in its own process; its Result, or RuntimeError with the process's last error line."""
    command, env = worker_command(job, mmseg_python, keep_heap)
    done = run_group(command, timeout, env=env)
    if done.rc is None:
        raise RuntimeError(f"timed out after {timeout:.0f} s")
    if done.rc != 0:
        lines = [line for line in done.err.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit status {done.rc}")
    return Result.from_json(done.out.strip().splitlines()[-1])


def run_table(
    networks: Sequence[str],
    depths: Sequence[int],
    tasks: Sequence[str],
    levers: Sequence[str],
    *,
    train_levers: Sequence[str] | None = None,
    with_mmseg: bool,
    infer_size: tuple[int, int],
    train_size: tuple[int, int],
    train_batch: int,
    repeats: int,
    rounds: int,
    threads: int,
    profile: bool,
    mmseg_python: Path,
    device: str = "cpu",
    keep_heap: bool = False,
    timeout: float,
    log: Callable[[str], None],
) -> list[Row]:
    """Measure every (network, depth, task) row's columns, alternating libraries; the rows in order.

    ``levers`` are nlseg's columns of both tasks (each task takes those it knows), or of inference alone when
    ``train_levers`` names the train step's."""
    rows = []
    for network in networks:
        for depth in depths:
            for task in tasks:
                row = Row(network, depth, task)
                task_levers = train_levers if task == "train" and train_levers is not None else levers
                columns = plan_columns(task, task_levers, with_mmseg)
                runs: dict[str, list[Result]] = {column: [] for column in columns}
                for round_index in range(rounds):
                    for column in columns if round_index % 2 == 0 else columns[::-1]:
                        if column in row.errors:
                            continue
                        job = Job(
                            side=MMSEG if column == MMSEG else "nlseg",
                            network=network,
                            depth=depth,
                            task=task,
                            lever=column,
                            size=infer_size if task == "infer" else train_size,
                            batch=1 if task == "infer" else train_batch,
                            repeats=repeats,
                            threads=threads,
                            profile=profile and column in (MMSEG, EXACT, "as_built"),
                            device=device,
                        )
                        try:
                            result = measure(job, mmseg_python, timeout, keep_heap)
                        except RuntimeError as exc:
                            row.errors[column] = str(exc)
                            log(f"{network} R-{depth} {task} {column}: FAILED {exc}")
                            continue
                        runs[column].append(result)
                        log(f"{network} R-{depth} {task} {column}: {result.median:.2f} s, {result.peak_mib:.0f} MiB")
                        if result.profile:
                            log(f"--- profile: {network} R-{depth} {task} {column}\n{result.profile}")
                row.results = {column: _merge(results) for column, results in runs.items()}
                rows.append(row)
    return rows


def _merge(results: list[Result]) -> Result | None:
    """One column's rounds as one Result: all timed passes, the largest peak."""
    if not results:
        return None
    firsts = [r.first_s for r in results if r.first_s is not None]
    return Result(
        [t for r in results for t in r.times], max(r.peak_mib for r in results), results[0].params_m,
        results[0].gflops, first_s=statistics.median(firsts) if firsts else None,
    )

