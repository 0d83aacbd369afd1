"""``nlseg reproduce TABLE``: a paper's ablation table re-run at demo size on the embedded data set, over seeds.

Each row x seed trains through the library trainer in its own work dir, ``OUT/runs/<row>/seed<N>/``; a finished
run leaves ``result.json`` there (written atomically) and is skipped by the next invocation, a half-finished one
(``last.pt`` without ``result.json``) continues with the trainer's resume. ``OUT/reproduce.json`` records the
options the runs were made with (size, iterations, seeds, overrides): a later invocation that asks for others
is refused, so two settings never mix in one table. The summary goes to ``OUT/results.md``, ``OUT/results.json``
and ``OUT/reproduce.png`` (:mod:`nlseg.apps.reproduce_report`). The tables are :mod:`nlseg.apps.reproduce_tables`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlseg.apps.reproduce_report import Summary, plot_summary, render, summarize
from nlseg.apps.reproduce_tables import ReproRow, ReproTable, differing_keys, row_config, table_named
from nlseg.config import Config, load_config
from nlseg.engine.interrupt import TrainingInterrupted
from nlseg.engine.workdir import write_text_atomic
from nlseg.errors import ConfigError, NlsegError, OutputError

__all__ = ["PlannedRun", "plan", "run_reproduce"]

MANIFEST = "reproduce.json"
RESULT = "result.json"


@dataclass(frozen=True)
class PlannedRun:
    """One row x seed: its resolved recipe and work dir."""

    row: ReproRow
    seed: int
    cfg: Config
    work_dir: Path

    @property
    def result_path(self) -> Path:
        return self.work_dir / RESULT


def _rows(table: ReproTable, rows: Sequence[str] | None) -> list[ReproRow]:
    """The rows asked for, in the table's order, the Baseline always among them (every Δ is against it)."""
    if not rows:
        return list(table.rows)
    keys = {table.row(key).key for key in rows} | {table.baseline.key}
    return [row for row in table.rows if row.key in keys]


def plan(
    table: ReproTable | str,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    size: str = "default",
    iters: int | None = None,
    rows: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
) -> list[PlannedRun]:
    """Every run of the table, row by row, seed by seed, with its resolved recipe (nothing is trained).

    Raises:
        ConfigError: an unknown table, row or size, no seeds, a repeated or negative seed, ``iters`` < 1, a bad
            override.
    """
    table = table_named(table) if isinstance(table, str) else table
    if not seeds:
        raise ConfigError("--seeds: expected at least one seed, e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds {','.join(map(str, seeds))}: expected distinct seeds >= 0")
    if iters is not None and iters < 1:
        raise ConfigError(f"--iters {iters}: expected a positive number of training iterations")
    runs = []
    for row in _rows(table, rows):
        for seed in seeds:
            cfg = row_config(table, row, seed=seed, size=size, iters=iters, overrides=overrides)
            runs.append(PlannedRun(row, seed, cfg, Path(out_dir) / "runs" / row.key / f"seed{seed}"))
    return runs


def _settings(table: ReproTable, runs: list[PlannedRun], size: str, iters: int | None,
              overrides: Sequence[str]) -> dict[str, Any]:
    """What ``OUT/reproduce.json`` records: the options that decide every run's recipe."""
    return {
        "table": table.name,
        "size": size,
        "iters": runs[0].cfg.train.iters,
        "seeds": sorted({run.seed for run in runs}),
        "overrides": list(overrides),
    }


_FLAGS = {"table": "TABLE", "size": "--size", "iters": "--iters", "seeds": "--seeds", "overrides": "--set"}


def _show(key: str, value: Any) -> str:
    if key == "seeds":
        return ",".join(map(str, value))
    if key == "overrides":
        return " ".join(value) or "(none)"
    return str(value)


def check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to add runs of other settings to ``out_dir``; record the settings when it holds none yet.

    Raises:
        NlsegError: one line naming ``out_dir`` and each option that differs, with both values.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out-dir {out_dir} is a file; expected a folder")
    path = out_dir / MANIFEST
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise NlsegError(f"{path}: not readable as the record of a reproduction ({err})") from None
        differ = [k for k in _FLAGS if saved.get(k) != settings[k]]
        if differ:
            what = "; ".join(f"{_FLAGS[k]} {_show(k, saved.get(k))} there, {_show(k, settings[k])} now"
                             for k in differ)
            raise NlsegError(f"{out_dir} holds runs made with other options ({what}): run the same options "
                             "again to continue them, or choose another --out-dir")
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"--out-dir {out_dir}: cannot create the folder ({err.strerror or err})") from None
    write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def _check_run(run: PlannedRun) -> None:
    """Refuse a work dir whose run has another recipe than planned (a changed library or a hand-edited file)."""
    saved = run.work_dir / "config.yaml"
    if not saved.is_file():
        return
    differ = sorted(differing_keys(load_config(saved), run.cfg))
    if differ:
        raise NlsegError(f"{run.work_dir} holds a run whose recipe differs from this command's in "
                         f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}: choose another --out-dir")


def _read_result(run: PlannedRun) -> dict[str, Any]:
    try:
        return json.loads(run.result_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise NlsegError(f"{run.result_path}: not readable ({err}); delete it to train that run again") from None


def _train_one(run: PlannedRun) -> dict[str, Any]:
    """Train (or continue) one run, write its ``result.json`` atomically, return that record."""
    from nlseg.engine.checkpoint import load_checkpoint
    from nlseg.engine.evaluate import evaluate_checkpoint
    from nlseg.engine.trainer import train

    last = run.work_dir / "last.pt"
    resume = last.is_file()
    start = time.perf_counter()
    if resume and load_checkpoint(last)["iteration"] >= run.cfg.train.iters:
        # Stopped between its last save and result.json: nothing left to train, its last.pt is scored.
        metrics = evaluate_checkpoint(run.cfg, last, progress=False)
    else:
        # Without last.pt there is nothing to continue: a best.pt alone (never written before last.pt) is moved aside.
        metrics = train(run.cfg, run.work_dir, resume=resume, overwrite=not resume)
    record = {
        "row": run.row.key,
        "label": run.row.label,
        "seed": run.seed,
        "model": run.cfg.model.name,
        "iters": run.cfg.train.iters,
        "mIoU": float(metrics["mIoU"]),
        "mAcc": float(metrics["mAcc"]),
        "aAcc": float(metrics["aAcc"]),
        "seconds": time.perf_counter() - start,
        "resumed": resume,
    }
    write_text_atomic(run.result_path, json.dumps(record, indent=2) + "\n")
    return record


def run_reproduce(
    table: str,
    *,
    out_dir: str | Path | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    size: str = "default",
    iters: int | None = None,
    rows: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    plot: bool = True,
) -> Summary:
    """Run (or finish) every row x seed of ``table``, print the summary and write it into ``out_dir``.

    Args:
        table: a name of :data:`~nlseg.apps.reproduce_tables.TABLES`.
        out_dir: folder of the runs and the summary (default ``reproduce_out/<table>``).
        seeds: ``train.seed`` of each run of a row.
        size: ``default`` (minutes per run) or ``tiny`` (seconds, for tests).
        iters: ``train.iters`` of every run (default: the table's at that size).
        rows: the rows to run, by key (the Baseline always runs); None: all.
        overrides: ``--set`` style changes of every run's recipe.
        plot: write ``reproduce.png`` (needs matplotlib; without it one line says so and the rest goes on).

    Returns:
        the summary: per row the mean ± std, per-seed values, the paper's figures, the ordering report.

    Raises:
        NlsegError: a bad table, row, size, seed or override; ``out_dir`` holding runs of other options.
    """
    wall = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else Path("reproduce_out") / table
    spec = table_named(table)
    runs = plan(spec, out_dir, seeds=seeds, size=size, iters=iters, rows=rows, overrides=overrides)
    check_settings(out_dir, _settings(spec, runs, size, iters, overrides))
    records, trained = [], 0
    for i, run in enumerate(runs, 1):
        _check_run(run)
        where = f"[{i}/{len(runs)}] {run.row.label}, seed {run.seed}"
        if run.result_path.is_file():
            record = _read_result(run)
            print(f"{where}: done before, mIoU {record['mIoU']:.2f} ({run.work_dir})", flush=True)
        else:
            print(f"{where}: training {run.cfg.model.name} for {run.cfg.train.iters} iterations in {run.work_dir}",
                  flush=True)
            try:
                record = _train_one(run)
            except TrainingInterrupted as err:
                raise TrainingInterrupted(f"{err}; or run this nlseg reproduce command again: it continues that "
                                          "run and skips the finished ones", err.exit_status) from None
            trained += 1
            print(f"{where}: mIoU {record['mIoU']:.2f} in {record['seconds'] / 60:.1f} min", flush=True)
        records.append(record)
    summary = summarize(spec, records)
    text = render(spec, summary, size=size, iters=runs[0].cfg.train.iters)
    write_text_atomic(out_dir / "results.md", text + "\n")
    write_text_atomic(out_dir / "results.json", json.dumps(summary.to_dict(), indent=2) + "\n")
    print("\n" + text, flush=True)
    if plot:
        picture = plot_summary(spec, summary, out_dir / "reproduce.png")
        print(f"\nPlot: {picture}" if picture else "\nPlot skipped: matplotlib is not installed "
              "(pip install 'nlseg[viz]')", flush=True)
    print(f"Trained {trained} of {len(runs)} runs in this invocation; its wall time "
          f"{(time.perf_counter() - wall) / 60:.1f} min. Summary: {out_dir / 'results.md'}", flush=True)
    return summary

