"""A work dir is one run: its files, starting a new run in it, and what a resume may change.

    W/config.yaml    the run's resolved recipe (rewritten on resume with the values changed then)
    W/last.pt        everything needed to continue exactly (``nlseg.engine.checkpoint``)
    W/best.pt        the best-scoring weights so far, for inference
    W/metrics.jsonl  one JSON record per logged iteration and per evaluation, each iteration once
    W/train.log      the console lines of every session of the run
    W/tb/            TensorBoard events (``train.tensorboard``)
    W/train.lock     while a run is live: its pid, locked (``nlseg.engine.worklock``): one run at a time

Training into a work dir that holds a run needs ``resume`` (continue it under its own
``config.yaml``) or ``overwrite`` (its files are moved aside into ``W/previous-<date>-<time>/``;
nothing is deleted).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from nlseg.config import Config, load_config
from nlseg.engine.atomic import temp_name_pattern, write_atomic
from nlseg.errors import ConfigError, NlsegError, OutputError

__all__ = [
    "RESUMABLE_KEYS",
    "RUN_FILES",
    "check_resume_changes",
    "holds_run",
    "keep_metrics_until",
    "read_metrics",
    "remove_orphan_temps",
    "resume_config",
    "start_run",
    "write_text_atomic",
]

RUN_FILES: tuple[str, ...] = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "train.log", "tb")
"""What a run writes in its work dir (``--overwrite`` moves these aside)."""

RESUMABLE_KEYS: tuple[str, ...] = (
    "data.root",
    "data.num_workers",
    "train.device",
    "train.evaluate",
    "train.eval_interval",
    "train.log_interval",
    "train.checkpoint_interval",
    "train.iters",
    "train.channels_last",
    "train.compile",
)
"""The recipe fields a resume may change: where the data lies, how it is read, the cadence of
evaluation, logging and checkpoints, ``train.iters`` to extend the run, and the speed switches that
leave the function alone (memory layout, compilation; the sums' order may change the last bits). Anything
else would make the continued run a different experiment."""


def holds_run(work_dir: str | os.PathLike) -> bool:
    """Whether ``work_dir`` holds a run: a checkpoint (``last.pt`` or ``best.pt``). A start that stopped
    before its first checkpoint (a broken label in the first batch) leaves only its ``config.yaml`` and
    logs: there is nothing to continue, and a new start reuses the folder (:func:`start_run`)."""
    return any((Path(work_dir) / name).exists() for name in ("last.pt", "best.pt"))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` through a temporary file and a rename (never half written)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def remove_orphan_temps(work_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of saves that a killed run left unfinished (``.last.pt.<random>.tmp``, ...).

    Call it only while no other run writes in ``work_dir``. Returns the files removed.
    """
    work_dir = Path(work_dir)
    orphans = sorted(p for name in RUN_FILES for p in work_dir.glob(temp_name_pattern(name)) if p.is_file())
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def start_run(
    work_dir: str | os.PathLike, *, overwrite: bool = False, note: Callable[[str], None] = print
) -> Path | None:
    """Make ``work_dir`` ready for a new run.

    A folder left by a start without any checkpoint is reused, with one line to ``note``: its ``train.log``
    goes on (it holds that start's lines), its ``metrics.jsonl`` starts afresh (iterations never saved).

    Args:
        work_dir: the run's folder (created if needed).
        overwrite: move a run found there into ``work_dir/previous-<date>-<time>/`` instead of refusing.
        note: receives the line about a reused folder.

    Returns:
        the folder the previous run was moved to, or None when there was none.

    Raises:
        OutputError: ``work_dir`` holds a run and ``overwrite`` is false.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    present = [name for name in RUN_FILES if (work_dir / name).exists()]
    if not holds_run(work_dir):
        if present:
            note(f"note: {work_dir} holds {', '.join(present)} of a start that stopped before its first checkpoint; "
                 "the new run reuses the folder")
            if (work_dir / "metrics.jsonl").exists():
                write_text_atomic(work_dir / "metrics.jsonl", "")
        return None
    if not overwrite:
        raise OutputError(
            f"--work-dir {work_dir} holds a run ({', '.join(present)}); continue it with "
            f"`nlseg train --work-dir {work_dir} --resume`, choose another --work-dir, or pass --overwrite "
            f"to move it aside into {work_dir}/previous-<date>-<time>/"
        )
    stamp = time.strftime("previous-%Y%m%d-%H%M%S")
    aside, count = work_dir / stamp, 1
    while aside.exists():  # two overwrites within a second
        count += 1
        aside = work_dir / f"{stamp}-{count}"
    aside.mkdir()
    for name in RUN_FILES:
        if (work_dir / name).exists():
            os.replace(work_dir / name, aside / name)
    return aside


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; option mappings are flattened too."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _yaml(value: Any) -> str:
    """A value as it would be written after ``--set key=``."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()


def check_resume_changes(saved: Config, new: Config, *, work_dir: str | os.PathLike) -> None:
    """Refuse a resume that changes anything but :data:`RESUMABLE_KEYS`.

    Raises:
        ConfigError: naming each changed key with its old and new value, and the command that starts a
            new run from the run's weights with these values instead (``model.init_from``).
    """
    old, now = _flatten(saved.to_dict()), _flatten(new.to_dict())
    changed = [k for k in sorted(old.keys() | now.keys()) if old.get(k) != now.get(k) and k not in RESUMABLE_KEYS]
    if not changed:
        return
    what = ", ".join(f"{k} ({_yaml(old.get(k))} -> {_yaml(now.get(k))})" for k in changed)
    sets = " ".join(f"{k}={_yaml(now.get(k))}" for k in changed if k in now)
    raise ConfigError(
        f"resuming {work_dir} cannot change {what}: a resume may change only {', '.join(RESUMABLE_KEYS)}. "
        f"To start a new run from these weights: nlseg train RECIPE --work-dir NEW_DIR "
        f"--set model.init_from={Path(work_dir) / 'last.pt'} {sets}"
    )


def resume_config(
    work_dir: str | os.PathLike, overrides: Sequence[str] = (), *, recipe: str | None = None
) -> Config:
    """The configuration to resume ``work_dir`` with: its ``config.yaml`` plus ``overrides``.

    Args:
        work_dir: a work dir that holds a run.
        overrides: ``key=value`` changes, limited to :data:`RESUMABLE_KEYS`.
        recipe: the recipe named on the command line, if any; it must be the run's own.

    Raises:
        ConfigError: no run in ``work_dir``, another recipe, or a change a resume may not make.
    """
    path = Path(work_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--resume: {work_dir} holds no run (no config.yaml); start one with "
            f"`nlseg train RECIPE --work-dir {work_dir}`"
        )
    saved = load_config(path)  # as written; its data.root may have moved since
    if recipe is not None and load_config(recipe).name != saved.name:
        raise ConfigError(
            f"--resume: {work_dir} is a run of recipe {saved.name!r}, not {recipe!r}; leave the recipe out "
            "(it is read from the run's config.yaml) or choose another --work-dir"
        )
    new = load_config(path, overrides, purpose="train")
    check_resume_changes(saved, new, work_dir=work_dir)
    return new


def read_metrics(path: Path, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in file order.

    A run killed while appending a record leaves a last line cut off: it is dropped, and ``warn`` gets one
    line saying so. Any other line that is not a record is damage nlseg did not make.

    Raises:
        NlsegError: a line before the last is not a metrics record (naming the file, the line and its text).
    """
    lines = path.read_text(errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                warn(f"warning: {path}: dropped its last line, cut off by a run stopped while writing it "
                     f"({line[:60]!r})")
                break
            record = None
        if not (isinstance(record, dict) and "kind" in record and type(record.get("iter")) is int):
            raise NlsegError(f"{path}, line {number}: not a metrics record ({line[:80]!r})")
        records.append(record)
    return records


def keep_metrics_until(path: Path, iteration: int, warn: Callable[[str], None] = print) -> None:
    """Drop the records of ``metrics.jsonl`` after ``iteration`` (a resume redoes them) and a last line cut off
    by a kill (:func:`read_metrics`), atomically."""
    if not path.is_file():
        return
    kept = [record for record in read_metrics(path, warn) if record["iter"] <= iteration]
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))
