"""Every file of the splits a run uses is read at its start (issue 22, rows 2, 3 and 16): a broken validation label
or a truncated training image stops ``nlseg train`` / ``nlseg eval`` in one line before any work, a rerun reads
only changed files, ``last.pt`` is written before each validation, and a failing rank of a torchrun job says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nlseg.data.base
from nlseg.cli import main
from nlseg.data import create_dataset
from nlseg.engine import trainer
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.datacheck import CACHE_NAME, check_files
from nlseg.errors import DatasetError

H, W = 16, 24
CLASSES = ["a", "b", "c"]
QUICK = ["train.iters=2", "train.batch_size=2", "data.crop_size=[16,16]", "train.log_interval=1",
         "train.checkpoint_interval=2", "train.device=cpu", "data.num_workers=0", "model.options.backbone_width=8",
         "model.options.head_channels=16", f"data.options.classes={json.dumps(CLASSES)}"]


def make_data(root: Path, n_train: int = 3, n_val: int = 2, suffix: str = ".png") -> Path:
    """A tiny folder data set: ``t<i>`` training and ``v<i>`` validation images (``suffix``) with PNG labels."""
    for split, prefix, count in (("train", "t", n_train), ("val", "v", n_val)):
        for i in range(count):
            rng = np.random.default_rng(i + (100 if split == "val" else 0))
            image = root / "images" / split / f"{prefix}{i}{suffix}"
            label = root / "labels" / split / f"{prefix}{i}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(image)
            Image.fromarray(rng.integers(0, 3, (H, W), dtype=np.uint8), mode="L").save(label)
    return root


def write_label(path: Path, value: int) -> None:
    Image.fromarray(np.full((H, W), value, dtype=np.uint8), mode="L").save(path)


def train_args(root: Path, work: Path, *more: str) -> list[str]:
    return ["train", "custom_folder", "--work-dir", str(work), "--set", f"data.root={root}", *QUICK, *more]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_broken_validation_label_stops_train_at_start_and_the_fixed_rerun_trains(tmp_path, capsys, monkeypatch):
    root, work = make_data(tmp_path / "data"), tmp_path / "work"
    bad = root / "labels" / "val" / "v1.png"
    write_label(bad, 7)
    steps = []
    monkeypatch.setattr(trainer, "train_step", lambda *a, **k: steps.append(1) or pytest.fail("trained"))
    assert main(train_args(root, work)) == 2
    line = one_line(capsys)
    assert line.startswith(f"nlseg train: error: label file {bad} contains value(s) 7"), line
    assert not steps and not (work / "last.pt").exists()
    monkeypatch.undo()

    write_label(bad, 1)  # fixed: the same command in the same work dir trains
    assert main(train_args(root, work)) == 0
    assert load_checkpoint(work / "last.pt")["iteration"] == 2
    assert (work / CACHE_NAME).is_file()

    # nlseg eval reads every file of its split before evaluating
    write_label(root / "labels" / "val" / "v0.png", 9)
    capsys.readouterr()
    monkeypatch.setattr("nlseg.engine.evaluate.evaluate", lambda *a, **k: pytest.fail("evaluated"))
    status = main(["eval", "custom_folder", "--checkpoint", str(work / "best.pt"), "--set", f"data.root={root}",
                   *QUICK])
    assert status == 2
    assert f"label file {root / 'labels' / 'val' / 'v0.png'} contains value(s) 9" in one_line(capsys)


def test_a_truncated_training_jpeg_stops_train_at_start_in_one_line(tmp_path, capsys, monkeypatch):
    root, work = make_data(tmp_path / "data", suffix=".jpg"), tmp_path / "work"
    bad = root / "images" / "train" / "t2.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    monkeypatch.setattr(trainer, "build_model", lambda *a, **k: pytest.fail("the model was built first"))
    assert main(train_args(root, work)) == 2
    line = one_line(capsys)
    assert line.startswith(f"nlseg train: error: cannot read image {bad}: the file is corrupt"), line
    assert not (work / "last.pt").exists()


def test_image_and_label_sizes_must_agree(tmp_path):
    root = make_data(tmp_path / "data")
    label = root / "labels" / "train" / "t1.png"
    Image.fromarray(np.zeros((H, W + 1), dtype=np.uint8), mode="L").save(label)
    with pytest.raises(DatasetError, match=f"label file {label} is {W + 1}x{H} pixels but its image"):
        check_files(create_dataset("folder", root, "train", classes=CLASSES), tmp_path / CACHE_NAME)


def test_the_cache_skips_unchanged_files(tmp_path, monkeypatch):
    root = make_data(tmp_path / "data", n_train=4)
    reads: list[str] = []
    real = nlseg.data.base.read_image
    monkeypatch.setattr(nlseg.data.base, "read_image", lambda path: reads.append(Path(path).name) or real(path))
    data = create_dataset("folder", root, "train", classes=CLASSES)
    cache = tmp_path / "w" / CACHE_NAME
    cache.parent.mkdir()
    assert check_files(data, cache, progress=False) == 4 and len(reads) == 4
    assert check_files(data, cache, progress=False) == 0 and len(reads) == 4  # nothing read again
    label = root / "labels" / "train" / "t2.png"
    write_label(label, 2)
    os.utime(label, ns=(time.time_ns(), time.time_ns() + 10**9))  # a changed file is read again
    assert check_files(data, cache, progress=False) == 1 and reads[-1] == "t2.png"
    write_label(label, 5)
    os.utime(label, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with pytest.raises(DatasetError, match="t2.png contains value"):
        check_files(data, cache, progress=False)
    assert not list(cache.parent.glob(".*.tmp"))  # written atomically


def test_last_checkpoint_is_written_before_validation(tmp_path, capsys, monkeypatch):
    root, work = make_data(tmp_path / "data"), tmp_path / "work"

    def crash(run, iteration):
        assert load_checkpoint(run.last_path)["iteration"] == iteration
        raise DatasetError(f"validation crashed at {iteration}")

    monkeypatch.setattr(trainer, "validate", crash)
    assert main(train_args(root, work, "train.iters=3", "train.eval_interval=2", "train.checkpoint_interval=10")) == 2
    assert "validation crashed at 2" in capsys.readouterr().err
    assert load_checkpoint(work / "last.pt")["iteration"] == 2


@pytest.mark.slow
def test_a_failing_rank_of_torchrun_says_which_and_why(tmp_path):
    """A real two-process torchrun (gloo, CPU); each rank reads its own data folder (``data.root`` holds ``$RANK``),
    rank 1's has a label without its image."""
    for rank in (0, 1):
        make_data(tmp_path / f"data{rank}")
    stray = tmp_path / "data1" / "labels" / "train" / "orphan.png"
    write_label(stray, 0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nlseg",
           "train", "custom_folder", "--work-dir", str(tmp_path / "work"), "--set",
           f"data.root={tmp_path}/data$RANK", *QUICK]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("nlseg train: error: rank")]
    assert len(lines) == 2, output[-3000:]
    assert any(line.startswith("nlseg train: error: rank 1 of 2: ") and "orphan.png" in line for line in lines), lines
    assert any(line.startswith("nlseg train: error: rank 1 of 2 failed: ") and "orphan.png" in line
               for line in lines), lines
    # no worker's traceback; torchrun itself ends with its ChildFailedError report (its own code, not nlseg's)
    assert "nlseg/" not in "".join(line for line in output.splitlines() if line.lstrip().startswith("File ")), output
    assert output.count("Traceback (most recent call last)") <= 1 and "ChildFailedError" in output, output[-3000:]
