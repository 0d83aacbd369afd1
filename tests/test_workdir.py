"""A work dir survives what happens to real runs: moved folders, umasks, kills mid-save, torn metrics,
damaged checkpoints, a full disk, a failed start, a second run on the same dir."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_trainer import write_recipe

from nlseg.cli import main as cli_main
from nlseg.engine.checkpoint import load_checkpoint


def folder_data(root: Path, n: int = 4, size: int = 16) -> Path:
    """A tiny data set in the folder layout (train split only), two classes."""
    for i in range(n):
        rng = np.random.default_rng(i)
        for kind, array in (("images", rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                            ("labels", rng.integers(0, 2, (size, size), dtype=np.uint8))):
            (root / kind / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / kind / "train" / f"x{i}.png")
    return root


def folder_recipe(path: Path, root: str | Path, **train_opts) -> Path:
    """:func:`test_trainer.write_recipe` (tiny fcn_r18, CPU, no evaluation) on a folder data set at ``root``."""
    recipe = yaml.safe_load(write_recipe(path, **train_opts).read_text())
    recipe["data"] = {"dataset": "folder", "root": str(root), "crop_size": 16, "scale_range": [1.0, 1.0],
                      "num_workers": 0, "options": {"classes": ["a", "b"]}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_relative_data_root_is_stored_absolute_and_resume_reads_it_from_anywhere(tmp_path, monkeypatch):
    first, other, work = tmp_path / "first", tmp_path / "other", tmp_path / "work"
    folder_data(first / "data")
    (other / "data").mkdir(parents=True)  # another folder of that name, not the run's data
    recipe = folder_recipe(tmp_path / "r.yaml", "data", iters=2, batch_size=2, checkpoint_interval=1)
    monkeypatch.chdir(first)
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
    assert yaml.safe_load((work / "config.yaml").read_text())["data"]["root"] == str(first / "data")
    monkeypatch.chdir(other)
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=3"]) == 0
    assert load_checkpoint(work / "last.pt")["iteration"] == 3
    assert yaml.safe_load((work / "config.yaml").read_text())["data"]["root"] == str(first / "data")


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_run_files_honour_the_umask(tmp_path, umask):
    recipe = write_recipe(tmp_path / "r.yaml", iters=2, checkpoint_interval=1, evaluate=True)
    work = tmp_path / "w"
    previous = os.umask(umask)
    try:
        assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
        assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=3"]) == 0  # rewrites
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in work.iterdir() if p.is_file()}
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "train.log"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_unfinished_saves_of_a_killed_run_are_removed_at_the_next_start(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=2, checkpoint_interval=1)
    work = tmp_path / "w"
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
    # what a run killed inside save_checkpoint / write_text_atomic leaves
    orphans = [work / ".last.pt.3f9a01c2.tmp", work / ".best.pt.0b1c2d3e.tmp", work / ".config.yaml.77aa88bb.tmp"]
    for path in orphans:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    mine = [work / ".notes.tmp", work / "last.pt.tmp"]  # not nlseg's names: left alone
    for path in mine:
        path.write_text("the user's")
    capsys.readouterr()
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=3"]) == 0
    assert not any(path.exists() for path in orphans) and all(path.exists() for path in mine)
    assert set(work.glob(".*.tmp")) == {work / ".notes.tmp"}
    out = capsys.readouterr().out
    assert "removed 3 unfinished file(s) of a save cut off by a kill" in out
    assert load_checkpoint(work / "last.pt")["iteration"] == 3


def test_a_metrics_line_cut_off_by_a_kill_is_dropped_with_one_warning(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=4, checkpoint_interval=2, log_interval=1)
    work = tmp_path / "w"
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
    metrics = work / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"kind": "train", "iter": 5, "lr": 0.00')  # killed mid-append
    capsys.readouterr()
    # reports read it
    assert cli_main(["viz", "curves", str(work), "--out", str(tmp_path / "c.png")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dropped its last line" in err[0] and str(metrics) in err[0]
    # resume reads it, and the file is whole again
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=6"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert [line for line in captured.out.splitlines() if "dropped its last line" in line] != []
    assert [json.loads(line)["iter"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    # a damaged line before the last is not a cut-off append: one error line naming the file and line
    metrics.write_text('{"kind": "train", "iter": 1}\n{"kind": "tr\n{"kind": "train", "iter": 2}\n')
    assert cli_main(["viz", "curves", str(work), "--out", str(tmp_path / "c.png")]) == 2
    assert f"{metrics}, line 2: not a metrics record" in capsys.readouterr().err


def test_a_damaged_best_checkpoint_is_reported_and_replaced_at_the_next_better_validation(tmp_path, monkeypatch,
                                                                                             capsys):
    from test_runs import ScriptedScores

    from nlseg.engine import trainer

    recipe = write_recipe(tmp_path / "r.yaml", iters=2, evaluate=True, eval_interval=1, checkpoint_interval=1)
    work = tmp_path / "w"
    monkeypatch.setattr(trainer, "evaluate", ScriptedScores([10, 50]))
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
    best = work / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])  # damaged (a disk error, a bad copy)
    capsys.readouterr()
    monkeypatch.setattr(trainer, "evaluate", ScriptedScores([40, 60]))
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=4"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err == ""
    (warning,) = [line for line in captured.out.splitlines() if line.startswith("warning:")]
    assert str(best) in warning and "damaged" in warning and "better than mIoU 50.00" in warning
    state = load_checkpoint(best)  # replaced by the validation at 4 (60 > 50), not at 3 (40)
    assert (state["iteration"], state["metrics"]["mIoU"]) == (4, 60)


def _assert_full_disk_stopped_cleanly(work: Path, err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "unexpected pos" not in err, err
    assert lines[0].startswith(f"nlseg train: error: no space left writing {work / 'last.pt'}")
    assert lines[0].endswith("the previous last.pt is intact")
    assert load_checkpoint(work / "last.pt")["iteration"] == 1  # the previous checkpoint, whole
    assert not list(work.glob(".*.tmp"))


def test_a_full_disk_while_saving_stops_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import torch

    recipe = write_recipe(tmp_path / "r.yaml", iters=3, checkpoint_interval=1)
    work = tmp_path / "w"
    real_save, saves = torch.save, []

    class FullAfter:
        """A file that takes ``room`` bytes, then fails as a full disk does."""

        def __init__(self, f, room: int) -> None:
            self.f, self.room = f, room

        def write(self, data) -> int:
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.f.write(data)

        def flush(self) -> None:
            self.f.flush()

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        return real_save(obj, f if len(saves) == 1 else FullAfter(f, 4096), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 2
    _assert_full_disk_stopped_cleanly(work, capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_real_full_disk_while_saving(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    # a tiny run's last.pt is about 1.6 MB: room for one, not for its replacement beside it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2560k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        recipe = write_recipe(tmp_path / "r.yaml", iters=3, checkpoint_interval=1)
        work = disk / "w"
        assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 2
        _assert_full_disk_stopped_cleanly(work, capsys.readouterr().err)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_start_that_failed_before_its_first_checkpoint_is_started_again_in_the_same_folder(tmp_path, capsys):
    root, work = folder_data(tmp_path / "data"), tmp_path / "w"
    labels = sorted((root / "labels" / "train").iterdir())
    good = {path: path.read_bytes() for path in labels}
    for path in labels:  # value 7 with classes a, b: the first batch stops the run
        Image.fromarray(np.full((16, 16), 7, np.uint8)).save(path)
    recipe = folder_recipe(tmp_path / "r.yaml", root, iters=2, batch_size=2, checkpoint_interval=1, log_interval=1)
    argv = ["train", str(recipe), "--work-dir", str(work)]
    assert cli_main(argv) == 2
    assert "label" in capsys.readouterr().err
    assert {p.name for p in work.iterdir()} >= {"config.yaml", "train.log"} and not (work / "last.pt").exists()
    for path, data in good.items():  # the user fixes the labels and runs the same command
        path.write_bytes(data)
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    (note,) = [line for line in captured.out.splitlines() if line.startswith("note:")]
    assert str(work) in note and "config.yaml" in note and "before its first checkpoint" in note
    assert load_checkpoint(work / "last.pt")["iteration"] == 2
    assert [json.loads(line)["iter"] for line in (work / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # a folder with a checkpoint is still a run: refused, naming what it holds
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a run (config.yaml, last.pt, metrics.jsonl, train.log)" in err


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
time.sleep(600)
"""


def test_a_live_run_holds_its_work_dir_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    import signal
    import sys

    recipe = write_recipe(tmp_path / "r.yaml", iters=1, checkpoint_interval=1)
    work = tmp_path / "w"
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
    last = (work / "last.pt").read_bytes()
    # another run (here a stand-in process that holds the lock as nlseg train does) is live in the work dir
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work / "train.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        for argv in (["train", "--work-dir", str(work), "--resume", "--set", "train.iters=2"],
                     ["train", str(recipe), "--work-dir", str(work), "--overwrite"]):
            assert cli_main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err
            assert f"is in use by another training run (pid {holder.pid}" in err and f"kill {holder.pid}" in err
        assert (work / "last.pt").read_bytes() == last and not list(work.glob("previous-*"))  # nothing touched
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without a word: its pid stays in the file, its flock goes
        holder.wait()
    assert (work / "train.lock").read_text().strip() == str(holder.pid)
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=2"]) == 0
    assert load_checkpoint(work / "last.pt")["iteration"] == 2
    assert not (work / "train.lock").exists()  # removed by the run that ended


@pytest.mark.slow
def test_a_second_train_on_the_work_dir_of_a_live_run_is_refused_with_its_pid(tmp_path, capsys):
    import signal
    import sys
    import time

    recipe = write_recipe(tmp_path / "r.yaml", iters=100_000, checkpoint_interval=1, log_interval=1000)
    work = tmp_path / "w"
    first = subprocess.Popen([sys.executable, "-m", "nlseg", "train", str(recipe), "--work-dir", str(work)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (work / "last.pt").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (work / "train.lock").read_text().strip() == str(first.pid)
        assert cli_main(["train", "--work-dir", str(work), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by another training run (pid {first.pid}" in err
    finally:
        first.send_signal(signal.SIGKILL)  # killed mid-run: the kernel drops its lock
        first.wait()
    done = load_checkpoint(work / "last.pt")["iteration"]
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", f"train.iters={done + 1}"]) == 0
    assert load_checkpoint(work / "last.pt")["iteration"] == done + 1


def test_a_full_disk_while_logging_stops_in_one_line_too(tmp_path, monkeypatch, capsys):
    from nlseg.engine.runlog import RunLog

    recipe = write_recipe(tmp_path / "r.yaml", iters=3, checkpoint_interval=1, log_interval=1)
    work = tmp_path / "w"
    record = RunLog.record

    def full_at_2(self, kind, iteration, values):
        if iteration == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return record(self, kind, iteration, values)

    monkeypatch.setattr(RunLog, "record", full_at_2)
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("nlseg train: error: no space left on the device")
    assert load_checkpoint(work / "last.pt")["iteration"] == 1
