"""benchmarks/vs_mmseg.py without mmsegmentation: the table from given numbers, the column plan, the config
rewrite, and one real nlseg measurement in its own process (mmseg is never imported here)."""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from nlseg.analysis.measure import count_flops
from nlseg.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("vs_mmseg", ROOT / "benchmarks" / "vs_mmseg.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_mmseg"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


vs = _load_benchmark()


def test_columns_alternate_libraries_nlseg_first_then_mmseg_then_levers():
    levers = ["as_built", "with_aux", "exact", "channels_last"]
    assert vs.plan_columns("infer", levers, True) == ["with_aux", "mmseg", "as_built", "channels_last", "exact"]
    assert vs.plan_columns("infer", levers, False) == ["with_aux", "as_built", "channels_last", "exact"]
    # train knows only its own levers: with_aux and exact are inference columns
    assert vs.plan_columns("train", levers, True) == ["as_built", "mmseg", "channels_last"]

def test_table_ratio_compares_mmseg_with_exact_column_and_marks_architectural_rows():
    def result(seconds: float, peak: float, params: float, gflops: float | None = None):
        return vs.Result([seconds + 1.0, seconds, seconds - 0.5], peak, params, gflops)  # median = seconds

    rows = [
        vs.Row("ann", 50, "infer", {"as_built": result(4.0, 1000, 43.8, 700), "exact": result(2.0, 800, 43.8, 650),
                                    "mmseg": result(3.0, 1200, 43.9, 690)}),
        vs.Row("nl-dnl", 50, "infer", {"as_built": result(5.0, 900, 40.0), "mmseg": result(4.0, 1000, 48.0)}),
        vs.Row("ann", 50, "train", {"as_built": result(6.0, 2000, 43.8), "mmseg": None}, {"mmseg": "boom"}),
    ]
    table = vs.format_table(rows)
    lines = table.splitlines()
    ann = next(line for line in lines if line.startswith("| ANN R-50 | 4.00 s"))
    assert ann == ("| ANN R-50 | 4.00 s | 2.00 s | 3.00 s | **1.50×** (exact) | 800 / 1200 | 43.8 / 43.9 | "
                   "650 / 690 |")
    nl = next(line for line in lines if line.startswith("| NL in the DNL pipeline R-50 †"))
    assert "| **0.80×** (as_built) | 900 / 1000 | 40.0 / 48.0 | — |" in nl  # no exact column: as built; no FLOPs
    train = next(line for line in lines if line.startswith("| ANN R-50 | 6.00 s"))
    assert train == "| ANN R-50 | 6.00 s | — | — | — | — | — |"  # mmseg failed: no ratio, memory, params, FLOPs
    assert "- failed: ann R-50 train mmseg: boom" in lines
    assert "### Inference" in lines and "### Train step" in lines
    assert "**NL in the DNL pipeline** †: architectural" in table
    assert "**ANN**: like-for-like" in table


def test_table_adds_the_compiled_ratio_when_measured():
    def result(seconds: float, first_s: float | None = None):
        return vs.Result([seconds], 100, 10.0, None, first_s=first_s)

    # compiled: 2 s a steady pass, 52 s the first (50 s compiling): over 100 images (50 + 100 x 2) / 100 = 2.5 s
    columns = {"exact": result(3.0), "exact_compile": result(2.0, 52.0), "mmseg": result(4.5)}
    rows = [vs.Row("nl", 50, "infer", columns)]
    lines = vs.format_table(rows).splitlines()
    assert "| mmseg / nlseg | exact_compile: compile time | exact_compile: per image over 100 images | " in lines[2]
    assert lines[4] == ("| NL R-50 | 3.00 s | 2.00 s | 4.50 s | **1.50×** (exact) | 50 s | 2.50 s | 1.80× | 100 / 100 | "
                        "10.0 / 10.0 | — |")
    # the train step's compiled column: its compile time and the steady step's ratio
    rows = [vs.Row("nl", 50, "train", {"as_built": result(8.0), "compile": result(6.0, 96.0), "mmseg": result(9.0)})]
    line = vs.format_table(rows).splitlines()[4]
    assert line.startswith("| NL R-50 | 8.00 s | 6.00 s | 9.00 s | **1.12×** (as_built) | 90 s | 1.50× | ")


def test_record_measures_the_issue_columns_and_states_one_allocator_for_both_sides(monkeypatch, tmp_path):
    args = vs.parse_args(["--record"])
    assert (args.networks, args.depths, args.tasks) == (["ann", "nl", "danet"], [50], ["infer", "train"])
    assert vs.plan_columns("infer", args.levers, True) == ["exact_unfused", "mmseg", "exact", "exact_compile"]
    assert vs.plan_columns("train", args.train_levers, True) == ["as_built", "mmseg", "compile"]
    assert (args.infer_size, args.train_size, args.train_batch) == ((512, 1024), (512, 512), 1)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    envs = [vs.worker_command(vs.Job(side, "ann", 50, "infer", "exact", (32, 32), 1, 1, 2), tmp_path / "python")[1]
            for side in ("nlseg", vs.MMSEG)]
    for env in envs:
        env.pop("PYTHONPATH", None)
    assert envs[0] == envs[1] and envs[0]["MALLOC_ARENA_MAX"] == "2"  # one environment: the same allocator
    assert "`MALLOC_ARENA_MAX=2`" in vs._allocator_line(False)
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert "glibc malloc with its defaults" in vs._allocator_line(False)
    assert "`MALLOC_MMAP_MAX_=0`" in vs._allocator_line(True)


def test_default_networks_are_the_like_for_like_rows_and_all_are_registered():
    from nlseg.models import list_models

    assert vs.DEFAULT_NETWORKS == ("ann", "nl", "danet", "aspp", "psp")
    assert all(vs.NETWORKS[name].like_for_like for name in vs.DEFAULT_NETWORKS)
    assert not any(net.like_for_like for name, net in vs.NETWORKS.items() if name.endswith("-dnl"))
    for net in vs.NETWORKS.values():
        for depth in (50, 101):
            assert net.nlseg.format(depth=depth) in list_models()


def test_sync_bn_becomes_bn_everywhere_and_nothing_else_changes():
    cfg = {"type": "EncoderDecoder", "backbone": {"norm_cfg": {"type": "SyncBN", "requires_grad": True}},
           "heads": [{"norm_cfg": {"type": "SyncBN"}, "type": "ANNHead"}], "kept": ("SyncBN", 1)}
    assert vs._no_sync_bn(cfg) == {
        "type": "EncoderDecoder", "backbone": {"norm_cfg": {"type": "BN", "requires_grad": True}},
        "heads": [{"norm_cfg": {"type": "BN"}, "type": "ANNHead"}], "kept": ("SyncBN", 1)}


def test_missing_mmseg_venv_is_one_error_line(tmp_path, capsys):
    assert vs.main(["--mmseg-python", str(tmp_path / "none" / "python")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mmseg_env.sh" in err[0] and str(tmp_path / "none") in err[0]


@pytest.mark.slow
def test_nlseg_only_run_measures_in_a_subprocess_and_writes_json(tmp_path, capsys):
    out = tmp_path / "vs.json"
    argv = ["--nlseg-only", "--networks", "ann", "--depths", "50", "--tasks", "infer", "--levers", "as_built",
            "--repeats", "2", "--infer-size", "32", "48", "--json", str(out)]
    assert vs.main(argv) == 0
    assert "mmseg" not in sys.modules and "mmengine" not in sys.modules
    [row] = json.loads(out.read_text())
    assert (row["network"], row["depth"], row["task"], row["errors"]) == ("ann", 50, "infer", {})
    result = row["results"]["as_built"]
    assert len(result["times_s"]) == 2 and all(t > 0 for t in result["times_s"])
    assert result["peak_mib"] >= 0
    # the worker's parameter and FLOP counts are those of the registry model, counted here on the meta device
    with torch.device("meta"):
        model = create_model("ann_r50", num_classes=19).eval()
        x = torch.empty(1, 3, 32, 48)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_heads.")) / 1e6
    assert abs(result["params_m"] - params) < 1e-9
    assert abs(result["gflops"] - count_flops(lambda: model(x)) / 1e9) < 1e-9
    assert "| ANN R-50 | " in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA runs the GPU table")
def test_device_cuda_without_a_gpu_is_one_error_line(capsys):
    assert vs.main(["--nlseg-only", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "no CUDA device" in err[0]


def test_table_says_what_peak_memory_is_on_each_device():
    row = vs.Row("ann", 50, "infer", {"exact": vs.Result([1.0], 10.0, 1.0, 2.0), "mmseg": vs.Result([2.0], 20.0, 1.0, 2.0)})
    assert "resident memory" in vs.format_table([row]) and "CUDA" not in vs.format_table([row])
    assert "CUDA memory allocated" in vs.format_table([row], "cuda")
    assert "| ANN R-50 | 1.00 s | 2.00 s | **2.00×** (exact) | 10 / 20 |" in vs.format_table([row], "cuda")


def test_keep_heap_sets_glibcs_tunables_for_both_sides(monkeypatch, tmp_path):
    for name in vs.KEEP_HEAP:
        monkeypatch.delenv(name, raising=False)
    for side in ("nlseg", vs.MMSEG):
        job = vs.Job(side, "ann", 50, "infer", "exact", (32, 32), 1, 1, 2)
        _, plain = vs.worker_command(job, tmp_path / "python")
        _, kept = vs.worker_command(job, tmp_path / "python", keep_heap=True)
        assert not set(vs.KEEP_HEAP) & set(plain)
        assert {name: kept[name] for name in vs.KEEP_HEAP} == {"MALLOC_MMAP_MAX_": "0",
                                                               "MALLOC_TRIM_THRESHOLD_": "2147483647"}
        assert kept["OMP_NUM_THREADS"] == plain["OMP_NUM_THREADS"] == "2"


def _ends(pid: int, within: float = 30.0) -> bool:
    """Whether the process ``pid`` ends (is reaped, or a zombie waiting for its parent) within ``within`` seconds:
    a killed process closes its files before the kernel marks it ended, so it may look alive for a moment."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_measuring_process_past_its_timeout_is_killed_with_the_processes_it_started(tmp_path):
    """--timeout ends the measuring process and its children (torch.compile's workers, say), not the process
    alone: an orphaned child would go on using the cores while the next column is timed."""
    pidfile = tmp_path / "child.pid"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pidfile}\nsleep 60\n")
    python.chmod(0o755)
    job = vs.Job(vs.MMSEG, "ann", 50, "infer", vs.MMSEG, (32, 32), 1, 1, 1)
    with pytest.raises(RuntimeError, match="timed out after 3 s"):
        vs.measure(job, python, timeout=3)
    assert _ends(int(pidfile.read_text()))  # without the group kill it sleeps on for a minute
