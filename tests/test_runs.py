"""A work dir is one run: refusing to start over a run, --overwrite, --resume from the run's own
config.yaml and what it may change, the poly schedule of an extended run, metrics.jsonl without
repeats, train.log, best.pt that never goes backwards, model.init_from, intervals of 0."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from test_trainer import write_recipe

from nlseg.cli import main as cli_main
from nlseg.config import load_config
from nlseg.engine import trainer
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.trainer import paper_weights_warning, setup, train


def records(work: Path, kind: str = "train") -> list[dict]:
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == kind]


def test_new_run_into_a_run_is_refused_and_overwrite_moves_it_aside(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=2, log_interval=1)
    work = tmp_path / "w"
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
    before = {name: (work / name).read_bytes() for name in ("config.yaml", "last.pt", "metrics.jsonl")}
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "--work-dir", str(work), "--set", "train.iters=3"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "holds a run" in err
    assert "--resume" in err and "another --work-dir" in err and "--overwrite" in err
    assert {name: (work / name).read_bytes() for name in before} == before  # nothing touched

    assert cli_main(["train", str(recipe), "--work-dir", str(work), "--overwrite", "--set", "train.iters=3"]) == 0
    (aside,) = work.glob("previous-*")
    assert {name: (aside / name).read_bytes() for name in before} == before  # the old run, intact
    assert (aside / "train.log").is_file()
    assert [r["iter"] for r in records(work)] == [1, 2, 3]  # only the new run
    assert load_checkpoint(work / "last.pt")["iteration"] == 3
    assert "for 3 iterations" in (work / "train.log").read_text()


def test_resume_needs_only_the_work_dir_and_keeps_the_runs_values(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=30, log_interval=1)
    work = tmp_path / "w"
    assert cli_main(["train", str(recipe), "--work-dir", str(work), "--set", "train.iters=4", "train.batch_size=2"]) == 0
    recipe.unlink()  # the run does not need its recipe file any more
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=6"]) == 0
    state = load_checkpoint(work / "last.pt")
    assert state["iteration"] == 6 and state["config"]["train"]["batch_size"] == 2
    saved = yaml.safe_load((work / "config.yaml").read_text())
    assert saved["train"]["iters"] == 6 and saved["train"]["batch_size"] == 2
    # the extended run follows lr(t) = lr · (1 - t/6)^0.9 from its resume point: no step at lr 0
    lrs = {r["iter"]: r["lr"] for r in records(work)}
    assert list(lrs) == [1, 2, 3, 4, 5, 6]  # each iteration once
    assert lrs[4] == pytest.approx(0.01 * (1 - 3 / 4) ** 0.9)  # the first session's curve, for 4 iterations
    assert lrs[5] == pytest.approx(0.01 * (1 - 4 / 6) ** 0.9) and lrs[5] > 0.002
    assert lrs[6] == pytest.approx(0.01 * (1 - 5 / 6) ** 0.9)
    log = (work / "train.log").read_text()
    assert "for 4 iterations" in log and "resumed from" in log and "iter 6/6" in log


def test_resume_refuses_changes_that_make_another_experiment(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=2, checkpoint_interval=1)
    work = tmp_path / "w"
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 0
    last, saved = (work / "last.pt").read_bytes(), (work / "config.yaml").read_text()
    capsys.readouterr()
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.lr=1e30", "train.iters=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "train.lr (0.01 -> 1.0e+30)" in err and "train.iters" not in err.split("may change only")[0]
    assert f"--set model.init_from={work / 'last.pt'} train.lr=1.0e+30" in err
    assert (work / "last.pt").read_bytes() == last
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "model.options.head_channels=8"]) == 2
    assert "model.options.head_channels (16 -> 8)" in capsys.readouterr().err
    # another recipe with --resume
    other = write_recipe(tmp_path / "other.yaml", iters=4)
    assert cli_main(["train", str(other), "--work-dir", str(work), "--resume"]) == 2
    assert "'r'" in capsys.readouterr().err
    # a finished run is continued only by raising train.iters
    assert cli_main(["train", "--work-dir", str(work), "--resume"]) == 2
    assert "--set train.iters=N with N > 2" in capsys.readouterr().err
    assert (work / "config.yaml").read_text() == saved and (work / "last.pt").read_bytes() == last
    # what may change, does
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=3", "data.num_workers=1",
                     "train.log_interval=1", "train.checkpoint_interval=7", "train.device=cpu"]) == 0
    assert load_checkpoint(work / "last.pt")["iteration"] == 3
    # nothing to resume
    assert cli_main(["train", "--work-dir", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert cli_main(["train", "--work-dir", str(tmp_path / "empty")]) == 2
    assert "a recipe is needed" in capsys.readouterr().err


def test_metrics_list_each_iteration_once_after_a_crash_and_resume(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", iters=10, checkpoint_interval=4, log_interval=1)
    work = tmp_path / "w"
    step = trainer.train_step

    def crash_at_7(run, it):
        if it == 6:
            raise RuntimeError("power cut")
        return step(run, it)

    monkeypatch.setattr(trainer, "train_step", crash_at_7)
    with pytest.raises(RuntimeError, match="power cut"):
        cli_main(["train", str(recipe), "--work-dir", str(work)])
    assert [r["iter"] for r in records(work)] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(work / "last.pt")["iteration"] == 4
    monkeypatch.setattr(trainer, "train_step", step)
    assert cli_main(["train", "--work-dir", str(work), "--resume"]) == 0
    assert [r["iter"] for r in records(work)] == list(range(1, 11))


class ScriptedScores:
    """Stands in for ``evaluate``: the mIoU of each call, in order; None stands for a crash."""

    def __init__(self, scores: list[float | None]) -> None:
        self.scores = list(scores)

    def __call__(self, model, dataset, eval_cfg, **kwargs) -> dict[str, float]:
        score = self.scores.pop(0)
        if score is None:
            raise RuntimeError("crash during evaluation")
        return {"mIoU": score, "mAcc": score, "aAcc": score}


def test_best_checkpoint_never_goes_backwards(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", iters=8, evaluate=True, eval_interval=1, checkpoint_interval=4)
    work = tmp_path / "w"
    # evaluations at 1..5 score 10 50 40 45 90; the one at 6 crashes. last.pt is written before each validation, so
    # it holds iteration 6 with the best score so far (90 at 5), and best.pt the model of iteration 5
    monkeypatch.setattr(trainer, "evaluate", ScriptedScores([10, 50, 40, 45, 90, None]))
    with pytest.raises(RuntimeError, match="crash"):
        cli_main(["train", str(recipe), "--work-dir", str(work)])
    last, best = load_checkpoint(work / "last.pt"), load_checkpoint(work / "best.pt")
    assert (last["iteration"], last["best_miou"], last["best_iteration"]) == (6, 90, 5)
    assert (best["iteration"], best["best_miou"], best["metrics"]["mIoU"]) == (5, 90, 90)
    assert {"optimizer", "scaler", "rng", "scheduler"}.isdisjoint(best)
    assert {"model", "model_name", "num_classes", "class_names", "config", "iteration", "metrics"} <= set(best)
    assert {"optimizer", "scaler", "rng", "best_miou", "best_iteration"} <= set(last)
    weights = best["model"]

    def unchanged() -> None:
        now = load_checkpoint(work / "best.pt")
        assert (now["iteration"], now["metrics"]["mIoU"]) == (5, 90)
        assert all(torch.equal(now["model"][k], weights[k]) for k in weights)

    # resumed at 6: the evaluations at 7 and 8 score below 90
    monkeypatch.setattr(trainer, "evaluate", ScriptedScores([60, 70, 80, 85]))
    assert cli_main(["train", "--work-dir", str(work), "--resume"]) == 0
    unchanged()
    last = load_checkpoint(work / "last.pt")
    assert (last["iteration"], last["best_miou"], last["best_iteration"]) == (8, 90, 5)
    # extended: worse again, and one equal score: still the model of iteration 5
    monkeypatch.setattr(trainer, "evaluate", ScriptedScores([20, 90]))
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=10"]) == 0
    unchanged()
    # a strictly better score does replace it
    monkeypatch.setattr(trainer, "evaluate", ScriptedScores([95]))
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=11"]) == 0
    best = load_checkpoint(work / "best.pt")
    assert (best["iteration"], best["metrics"]["mIoU"], best["best_miou"]) == (11, 95, 95)


def test_intervals_of_zero_do_not_divide(tmp_path, monkeypatch):
    """eval_interval 0 evaluates only at the end; a 0 log or checkpoint interval (refused at load) would
    only log and save at the end."""
    cfg = load_config(write_recipe(tmp_path / "r.yaml", iters=3, evaluate=True, eval_interval=0))
    cfg.train.log_interval = cfg.train.checkpoint_interval = 0
    monkeypatch.setattr(trainer, "evaluate", ScriptedScores([30]))
    assert train(cfg, tmp_path / "w")["mIoU"] == 30
    assert [r["iter"] for r in records(tmp_path / "w")] == [3]
    assert [r["iter"] for r in records(tmp_path / "w", "val")] == [3]
    assert load_checkpoint(tmp_path / "w" / "last.pt")["iteration"] == 3


def test_init_from_starts_a_new_run_from_a_runs_weights(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=3)
    first = tmp_path / "first"
    assert cli_main(["train", str(recipe), "--work-dir", str(first)]) == 0
    trained = load_checkpoint(first / "last.pt")["model"]
    cfg = load_config(recipe, [f"model.init_from={first / 'last.pt'}", "train.lr=0.001"])
    run = setup(cfg, tmp_path / "second")
    assert run.start_iter == 0 and not run.optimizer.state  # a new run: fresh optimizer, iteration 0
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, trained[name]), name
    run.log.close()
    # not a checkpoint, or one of another model: one line each
    capsys.readouterr()
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "a"), "--set", f"model.init_from={jpeg}"]) == 2
    assert "is a JPEG image" in capsys.readouterr().err
    other = write_recipe(tmp_path / "o.yaml", "denoised_nl_r18", iters=1)
    assert cli_main(["train", str(other), "--work-dir", str(tmp_path / "b"),
                     "--set", f"model.init_from={first / 'last.pt'}"]) == 2
    assert "'fcn_r18' model, but the recipe builds 'denoised_nl_r18'" in capsys.readouterr().err
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "c"),
                     "--set", f"model.init_from={first / 'last.pt'}", "model.options.head_channels=8"]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_paper_recipe_without_imagenet_weights_warns():
    cfg = load_config("denoised_nl_r101_cityscapes")
    assert not cfg.model.pretrained_backbone
    warning = paper_weights_warning(cfg)
    assert "ImageNet" in warning and "model.pretrained_backbone=FILE" in warning and "\n" not in warning
    assert paper_weights_warning(load_config("denoised_nl_r101_cityscapes", ["model.pretrained_backbone=w.pth"])) is None
    assert paper_weights_warning(load_config("denoised_nl_r101_cityscapes", ["model.init_from=w/last.pt"])) is None
    assert paper_weights_warning(load_config("demo")) is None  # trained from scratch on the embedded set by design
    # a recipe for your own data on a model that is no paper row (ResNet-18) is no paper recipe
    assert paper_weights_warning(load_config("custom_folder", ["data.root=/data"])) is None


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", iters=10, checkpoint_interval=2)
    work = tmp_path / "w"
    step = trainer.train_step

    def press_twice(run, it):
        if it == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return step(run, it)

    monkeypatch.setattr(trainer, "train_step", press_twice)
    assert cli_main(["train", str(recipe), "--work-dir", str(work)]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"nlseg train: interrupted again by SIGINT; stopped without saving; {work / 'last.pt'} holds iteration 4"
    ]
    assert load_checkpoint(work / "last.pt")["iteration"] == 4


def test_signal_handlers_are_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train(load_config(write_recipe(tmp_path / "r.yaml", iters=1)), tmp_path / "w")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
