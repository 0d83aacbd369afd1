"""``nlseg reproduce``: planning, what each row changes, the summary's arithmetic and ordering report, resuming,
refusing other options in a used folder. The fast tests train nothing (the trainer is replaced by a stub); the
slow one runs both tables at ``--size tiny`` through the command line, twice."""
from __future__ import annotations

import json
import math

import pytest

from nlseg.apps import reproduce
from nlseg.apps.reproduce import plan, run_reproduce
from nlseg.apps.reproduce_report import RowSummary, mean_std, ordering, summarize
from nlseg.apps.reproduce_tables import TABLES, differing_keys, row_config
from nlseg.cli import main
from nlseg.config import load_config
from nlseg.errors import ConfigError, NlsegError

SAME_IN_EVERY_ROW_BUT = {"name", "description", "paper"}  # a row's own name and words


def fake_train(calls: list):
    """A stand-in for ``_train_one``: mIoU 50 + 10 x row index + seed, 60 s per run."""
    def train_one(run):
        calls.append((run.row.key, run.seed))
        index = [r.key for r in TABLES["dnl-table2"].rows].index(run.row.key)
        record = {"row": run.row.key, "label": run.row.label, "seed": run.seed, "model": run.cfg.model.name,
                  "iters": run.cfg.train.iters, "mIoU": 50.0 + 10 * index + run.seed, "mAcc": 0.0, "aAcc": 0.0,
                  "seconds": 60.0, "resumed": False}
        run.work_dir.mkdir(parents=True, exist_ok=True)
        run.result_path.write_text(json.dumps(record))
        return record
    return train_one


def test_plan_lists_each_row_and_seed_with_its_own_work_dir(tmp_path):
    runs = plan("dnl-table2", tmp_path, seeds=(0, 1, 2))
    assert [(r.row.key, r.seed) for r in runs] == [(k, s) for k in ("baseline", "gr", "lr", "gr_lr") for s in (0, 1, 2)]
    assert runs[4].work_dir == tmp_path / "runs" / "gr" / "seed1"
    assert [r.cfg.train.seed for r in runs[:3]] == [0, 1, 2] and {r.cfg.train.iters for r in runs} == {700}
    assert len(plan("ann-table6", tmp_path)) == 21
    # --rows: the Baseline always comes along, in the table's order
    assert [r.row.key for r in plan("ann-table6", tmp_path, seeds=(5,), rows=["full", "nb"])] == ["baseline", "nb", "full"]
    tiny = plan("ann-table6", tmp_path, seeds=(0,), size="tiny", iters=3)[0].cfg
    assert (tiny.train.iters, tiny.data.crop_size, tiny.data.options["length"]) == (3, [48, 128], 4)


@pytest.mark.parametrize("bad, words", [
    (dict(rows=["gr", "nope"]), "--rows: dnl-table2 has no row 'nope'; its rows: baseline, gr, lr, gr_lr"),
    (dict(seeds=(0, 0)), "--seeds 0,0: expected distinct seeds >= 0"),
    (dict(seeds=()), "--seeds: expected at least one seed"),
    (dict(size="huge"), "--size 'huge': expected one of default, tiny"),
    (dict(iters=0), "--iters 0: expected a positive number of training iterations"),
    (dict(overrides=["train.lr=abc"]), "train.lr"),
])
def test_plan_refuses_bad_input_naming_it(tmp_path, bad, words):
    with pytest.raises(ConfigError) as err:
        plan("dnl-table2", tmp_path, **bad)
    assert words in str(err.value)


@pytest.mark.parametrize("size", ["default", "tiny"])
@pytest.mark.parametrize("name", list(TABLES))
def test_every_row_differs_from_its_baseline_only_in_what_the_paper_row_varies(name, size):
    table = TABLES[name]
    base = row_config(table, table.baseline, seed=1, size=size)
    for row in table.rows[1:]:
        differ = differing_keys(row_config(table, row, seed=1, size=size), base)
        assert differ - SAME_IN_EVERY_ROW_BUT <= table.studied, (row.key, sorted(differ))
        assert "model.name" in differ or differ & {"model.options.rectify", "model.options.retain"}
    models = [row_config(table, row, seed=0).model for row in table.rows]
    assert len({(m.name, json.dumps(m.options, sort_keys=True)) for m in models}) == len(table.rows)  # no two alike


def test_the_denoised_nl_table_is_the_demo_at_its_ends():
    table = TABLES["dnl-table2"]
    assert differing_keys(row_config(table, table.rows[0], seed=0), load_config("demo_baseline")) == SAME_IN_EVERY_ROW_BUT
    full = row_config(table, table.rows[3], seed=0)
    assert differing_keys(full, load_config("demo")) == SAME_IN_EVERY_ROW_BUT | {
        "model.options.rectify", "model.options.retain"}  # set explicitly to their defaults
    assert (full.model.options["rectify"], full.model.options["retain"]) == (True, True)
    gr, lr = (row_config(table, r, seed=0).model.options for r in table.rows[1:3])
    assert (gr["rectify"], gr["retain"], lr["rectify"], lr["retain"]) == (True, False, False, True)


def test_the_ann_rows_are_the_paper_recipes_models_on_the_small_backbone():
    table = TABLES["ann-table6"]
    for row in table.rows:
        cfg = row_config(table, row, seed=0)
        assert cfg.model.name == load_config(row.recipe).model.name
        assert cfg.model.options["backbone"] == "resnet18" and cfg.model.options["backbone_width"] == 16
        assert cfg.loss.aux_weights == [0.4] and cfg.data.dataset == "synthetic" and cfg.train.batch_size == 6
        assert f"{row.paper_miou} mIoU" in load_config(row.recipe).paper  # the paper's figure, as its recipe quotes it


def test_mean_and_sample_std_by_hand():
    mean, std = mean_std([70.0, 72.0, 77.0])
    assert mean == pytest.approx(73.0) and std == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # 3.6056
    assert mean_std([61.5]) == (61.5, 0.0)


def test_summary_means_deltas_and_paper_deltas():
    table = TABLES["dnl-table2"]
    records = [{"row": k, "label": k, "seed": s, "mIoU": v, "seconds": 30.0 * (s + 1)}
               for k, values in (("gr", (81.0, 83.0)), ("baseline", (70.0, 74.0))) for s, v in enumerate(values)]
    summary = summarize(table, records)
    base, gr = summary.rows  # the table's order, whatever the records' order
    assert (base.key, base.mean, base.std, base.delta) == ("baseline", 72.0, pytest.approx(math.sqrt(8)), 0.0)
    assert (gr.mean, gr.delta, gr.paper, gr.paper_delta) == (82.0, 10.0, 82.3, pytest.approx(4.4))
    assert gr.values == (81.0, 83.0) and summary.total_seconds == 180.0 and summary.matches


def _row(label, mean, std, paper):
    return RowSummary(label, label, (0,), (mean,), (1.0,), mean, std, 0.0, paper, 0.0)


def test_ordering_report_lists_the_inverted_pairs_and_whether_each_is_within_one_std():
    rows = [_row("A", 70.0, 1.0, 80.0), _row("B", 72.0, 0.5, 78.0), _row("C", 60.0, 0.2, 76.0),
            _row("D", 60.1, 0.3, 75.0)]
    (ab, cd) = ordering(rows)
    assert (ab.above, ab.below, ab.paper_gap, ab.gap, ab.within_std) == ("A", "B", 2.0, -2.0, False)
    assert (cd.above, cd.below, cd.gap, cd.within_std) == ("C", "D", pytest.approx(-0.1), True)
    assert ordering([_row("A", 70.0, 1.0, 80.0), _row("B", 69.0, 0.5, 78.0)]) == ()
    level = ordering([_row("A", 70.0, 0.0, 80.0), _row("B", 70.0, 0.0, 78.0)])  # level: not the paper's order
    assert len(level) == 1 and level[0].within_std


def test_finished_runs_are_skipped_and_only_missing_ones_train(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(reproduce, "_train_one", fake_train(calls))
    options = dict(out_dir=tmp_path, seeds=(0, 1), size="tiny", rows=["lr"], plot=False)
    first = run_reproduce("dnl-table2", **options)
    assert calls == [("baseline", 0), ("baseline", 1), ("lr", 0), ("lr", 1)]
    assert [(r.mean, r.std, r.delta) for r in first.rows] == [(50.5, pytest.approx(math.sqrt(0.5)), 0.0),
                                                              (70.5, pytest.approx(math.sqrt(0.5)), 20.0)]
    table = (tmp_path / "results.md").read_text()
    assert "| +LR | 70.50 ± 0.71 | 70.00 / 71.00 | +20.00 | 82.5 | +4.6 | 60 / 60 |" in table
    (tmp_path / "runs" / "lr" / "seed1" / "result.json").unlink()
    calls.clear()
    second = run_reproduce("dnl-table2", **options)
    assert calls == [("lr", 1)] and second == first
    calls.clear()
    run_reproduce("dnl-table2", **options)
    assert calls == [] and (tmp_path / "results.md").read_text() == table
    assert "Trained 0 of 4 runs" in capsys.readouterr().out


def test_a_half_finished_run_continues_with_the_trainers_resume(tmp_path, monkeypatch):
    from nlseg.engine import checkpoint, evaluate, trainer

    seen = []
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path: {"iteration": 1})  # of train.iters 2

    def train(cfg, work_dir, *, resume=False, overwrite=False):
        seen.append((work_dir.parent.name, resume, overwrite))
        work_dir.mkdir(parents=True, exist_ok=True)
        return {"mIoU": 40.0, "mAcc": 0.0, "aAcc": 0.0, "iteration": cfg.train.iters}

    monkeypatch.setattr(trainer, "train", train)
    (tmp_path / "runs" / "gr" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "gr" / "seed0" / "last.pt").write_bytes(b"")
    run_reproduce("dnl-table2", out_dir=tmp_path, seeds=(0,), size="tiny", rows=["gr"], plot=False)
    assert seen == [("baseline", False, True), ("gr", True, False)]
    record = json.loads((tmp_path / "runs" / "gr" / "seed0" / "result.json").read_text())
    assert (record["mIoU"], record["resumed"], record["seed"]) == (40.0, True, 0)
    # at its last iteration (stopped before result.json): nothing to train, its last.pt is scored
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path: {"iteration": 2})
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda cfg, path, progress: {
        "mIoU": 41.0, "mAcc": 0.0, "aAcc": 0.0, "path": path})
    (tmp_path / "runs" / "gr" / "seed0" / "result.json").unlink()
    run_reproduce("dnl-table2", out_dir=tmp_path, seeds=(0,), size="tiny", rows=["gr"], plot=False)
    record = json.loads((tmp_path / "runs" / "gr" / "seed0" / "result.json").read_text())
    assert len(seen) == 2 and (record["mIoU"], record["resumed"]) == (41.0, True)


def test_other_options_in_a_used_out_dir_give_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "_train_one", fake_train([]))
    base = ["reproduce", "dnl-table2", "--size", "tiny", "--rows", "gr", "--out-dir", str(tmp_path), "--no-plot"]
    assert main(base + ["--seeds", "0,1"]) == 0
    capsys.readouterr()
    assert main(base + ["--seeds", "0,1", "--iters", "5"]) == 2
    err = capsys.readouterr().err
    assert err == (f"nlseg reproduce: error: {tmp_path} holds runs made with other options (--iters 2 there, 5 now): "
                   "run the same options again to continue them, or choose another --out-dir\n")
    assert main(base + ["--seeds", "0"]) == 2
    assert "(--seeds 0,1 there, 0 now)" in capsys.readouterr().err
    assert main(["reproduce", "dnl-table2", "--out-dir", str(tmp_path), "--no-plot", "--seeds", "0,1", "--rows", "gr"]) == 2
    assert "(--size tiny there, default now; --iters 2 there, 700 now)" in capsys.readouterr().err


def test_a_changed_recipe_inside_a_run_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "_train_one", fake_train([]))
    run_reproduce("dnl-table2", out_dir=tmp_path, seeds=(0,), size="tiny", rows=["gr"], plot=False)
    run = plan("dnl-table2", tmp_path, seeds=(0,), size="tiny", rows=["gr"])[1]
    (run.work_dir / "config.yaml").write_text(json.dumps({**run.cfg.to_dict(), "train": {
        **run.cfg.to_dict()["train"], "lr": 0.5}}))
    with pytest.raises(NlsegError, match=r"seed0 holds a run whose recipe differs from this command's in train\.lr"):
        run_reproduce("dnl-table2", out_dir=tmp_path, seeds=(0,), size="tiny", rows=["gr"], plot=False)


def test_bad_command_line_values_give_one_line_and_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "dnl-table2", "--out-dir", str(tmp_path), "--seeds", "0,x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --seeds: expected whole numbers separated by commas" in err
    assert main(["reproduce", "dnl-table2", "--out-dir", str(tmp_path), "--rows", "bogus"]) == 2
    assert capsys.readouterr().err == ("nlseg reproduce: error: --rows: dnl-table2 has no row 'bogus'; its rows: "
                                       "baseline, gr, lr, gr_lr\n")
    (tmp_path / "file").write_text("")
    assert main(["reproduce", "dnl-table2", "--out-dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"nlseg reproduce: error: --out-dir {tmp_path / 'file'} is a file; expected a folder\n"


def test_the_plot_is_written_and_a_missing_matplotlib_gives_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(reproduce, "_train_one", fake_train([]))
    run_reproduce("dnl-table2", out_dir=tmp_path, seeds=(0,), size="tiny", rows=["gr"])
    assert (tmp_path / "reproduce.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    run_reproduce("dnl-table2", out_dir=tmp_path, seeds=(0,), size="tiny", rows=["gr"])
    assert "Plot skipped: matplotlib is not installed (pip install 'nlseg[viz]')" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("table, rows", [("dnl-table2", "gr_lr"), ("ann-table6", "afnb")])
def test_tiny_tables_through_the_command_line_run_once(tmp_path, capsys, table, rows):
    argv = ["reproduce", table, "--size", "tiny", "--seeds", "0,1", "--rows", rows, "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    records = sorted((tmp_path / "runs").glob("*/seed*/result.json"))
    assert len(records) == 4 and all(0 <= json.loads(p.read_text())["mIoU"] <= 100 for p in records)
    assert "Trained 4 of 4 runs" in first and (tmp_path / "reproduce.png").is_file()
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "Trained 0 of 4 runs" in second and second.count(": done before, mIoU") == 4

    def table_of(out):
        return out[out.index("### "):out.index("Plot: ")]

    assert table_of(second) == table_of(first) and table_of(first).strip() == (tmp_path / "results.md").read_text().strip()
    # Stopped after its last checkpoint but before result.json: the resume has nothing to train and scores last.pt
    result = tmp_path / "runs" / "baseline" / "seed1" / "result.json"
    before = json.loads(result.read_text())
    result.unlink()
    assert main(argv) == 0
    third = capsys.readouterr().out
    after = json.loads(result.read_text())
    assert "Trained 1 of 4 runs" in third and after["resumed"] and after["mIoU"] == pytest.approx(before["mIoU"], abs=1e-9)
