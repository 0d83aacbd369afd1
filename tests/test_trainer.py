"""The training engine: loss falls, exact resume after SIGKILL, atomic checkpoints, divergence, DDP on CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from nlseg.cli import main as cli_main
from nlseg.config import load_config
from nlseg.engine import checkpoint as ckpt_module
from nlseg.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nlseg.engine.trainer import TrainingDiverged, train

SMALL = {
    "fcn_r18": {"backbone_width": 8, "head_channels": 16},
    "ann_r50": {"backbone_width": 8, "head_channels": 16, "key_channels": 8, "value_channels": 8},
    "denoised_nl_r18": {"backbone_width": 8, "head_channels": 16, "key_channels": 8},
}
AUX = {"fcn_r18": [0.4], "ann_r50": [0.4], "denoised_nl_r18": [1.0, 1.0]}


def write_recipe(path: Path, model: str = "fcn_r18", **train_opts) -> Path:
    recipe = {
        "model": {"name": model, "options": SMALL[model]},
        "data": {
            "dataset": "synthetic",
            "crop_size": 48,
            "scale_range": [1.0, 1.0],
            "num_workers": 0,
            "options": {"length": 8, "size": 48},
        },
        "loss": {"main": "ce", "aux_weights": AUX[model]},
        "train": {
            "iters": 30, "batch_size": 4, "lr": 0.01, "checkpoint_interval": 10, "log_interval": 5,
            "device": "cpu", "evaluate": False, **train_opts,
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def train_losses(work_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss_total"] for r in lines if r["kind"] == "train"]


@pytest.mark.parametrize("model", sorted(SMALL))
def test_short_run_loss_falls(tmp_path, model):
    cfg = load_config(write_recipe(tmp_path / "r.yaml", model, iters=30, lr=0.02, log_interval=1))
    train(cfg, tmp_path / "work")
    losses = train_losses(tmp_path / "work")
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    state = load_checkpoint(tmp_path / "work" / "last.pt")
    assert state["iteration"] == 30 and state["model_name"] == model
    assert state["class_names"][0] == "background"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", iters=40, checkpoint_interval=3, log_interval=40)
    cfg = load_config(recipe)
    train(cfg, tmp_path / "straight")

    work = tmp_path / "killed"
    cmd = [sys.executable, "-m", "nlseg", "train", str(recipe), "--work-dir", str(work)]
    # same intra-op thread count as this process (conftest): CPU reductions are summed in a thread-dependent order
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (work / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(work / "last.pt")["iteration"]
    assert 3 <= killed_at < 40

    assert cli_main(["train", str(recipe), "--work-dir", str(work), "--resume"]) == 0
    resumed, straight = _weights(work / "last.pt"), _weights(tmp_path / "straight" / "last.pt")
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-5, msg=name)


def test_resume_into_another_model_is_refused(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", iters=2, checkpoint_interval=1)
    train(load_config(recipe), tmp_path / "w")
    saved = (tmp_path / "w" / "config.yaml").read_text()
    other = load_config(write_recipe(tmp_path / "o.yaml", "denoised_nl_r18", iters=4))
    with pytest.raises(CheckpointError, match="'fcn_r18'.*'denoised_nl_r18'"):
        train(other, tmp_path / "w", resume=True)
    assert (tmp_path / "w" / "config.yaml").read_text() == saved  # a refused resume leaves the run as it was


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "iteration": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "iteration": 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)


def test_diverging_run_stops_with_message_and_keeps_finite_checkpoint(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=50, lr=1e8, checkpoint_interval=1)
    with pytest.raises(TrainingDiverged, match=r"iteration \d+: loss .* is (nan|inf)"):
        train(load_config(recipe), tmp_path / "w")
    state = load_checkpoint(tmp_path / "w" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "w2")]) != 0
    err = capsys.readouterr().err
    assert "iteration" in err and "Traceback" not in err


def test_gradient_accumulation_consumes_the_same_samples(tmp_path):
    """batch 4 in 2 micro-batches of 2 reads the same serials as one batch of 4."""
    from nlseg.engine.distributed import DistInfo
    from nlseg.engine.sampling import IterationSampler

    cfg = load_config(write_recipe(tmp_path / "r.yaml", iters=3)).train
    one = list(IterationSampler(8, cfg, start_iter=0, dist_info=DistInfo()))
    cfg.grad_accum = 2
    two = list(IterationSampler(8, cfg, start_iter=0, dist_info=DistInfo()))
    assert [s for batch in one for s in batch] == [s for batch in two for s in batch]
    assert len(two) == 2 * len(one)
    # two processes split each step's serials between them, without overlap
    cfg.grad_accum = 1
    ranks = [list(IterationSampler(8, cfg, start_iter=0, dist_info=DistInfo(r, 2, r))) for r in (0, 1)]
    for step in range(3):
        serials = sorted(s for r in ranks for (_, s) in r[step])
        assert serials == list(range(step * 4, step * 4 + 4))
    # every index of an epoch is visited once
    assert sorted(i for batch in one[:2] for (i, _) in batch) == list(range(8))


def test_config_errors_reach_the_user_as_one_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml")
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "w"), "--set", "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "train.lrr" in err and "train.lr" in err and "Traceback" not in err
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "w"), "--set", "model.options.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_torchrun_trains_and_evaluates(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", iters=4, evaluate=True, checkpoint_interval=2)
    recipe_dict = yaml.safe_load(recipe.read_text())
    recipe_dict["data"]["options"]["length"] = 4
    recipe.write_text(yaml.safe_dump(recipe_dict))
    work = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "nlseg", "train", str(recipe), "--work-dir", str(work),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 1 and 0 <= val[0]["mIoU"] <= 100
    state = load_checkpoint(work / "last.pt")
    assert state["iteration"] == 4
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped
