"""Preemption: SIGTERM (a cluster scheduler) and Ctrl-C (SIGINT to the whole process group, DataLoader
workers included) save last.pt at the next iteration boundary, print one line, exit 143 / 130, and the
resumed run ends with the weights of an uninterrupted one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_trainer import write_recipe

from nlseg.cli import main as cli_main
from nlseg.config import load_config
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.trainer import train

ITERS = 40


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run's last.pt (every worker count gives the same batches)."""
    folder = tmp_path_factory.mktemp("straight")
    train(load_config(write_recipe(folder / "r.yaml", iters=ITERS, checkpoint_interval=3, log_interval=ITERS)), folder / "w")
    return folder / "w" / "last.pt"


def interrupt(recipe: Path, work: Path, signum: int, *, workers: int) -> tuple[int, str]:
    """Start ``nlseg train`` with ``workers`` data-loading processes and send ``signum`` to its whole process
    group once it has saved a checkpoint (as a terminal's Ctrl-C, or a scheduler stopping a job, does);
    its exit status and stderr."""
    # same intra-op thread count as this process (conftest): CPU reductions are summed in a thread-dependent order
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlseg", "train", str(recipe), "--work-dir", str(work), "--set", f"data.num_workers={workers}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    deadline = time.time() + 120
    while not (work / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize(
    ("signum", "status"), [pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"]
)
def test_signal_saves_exits_with_one_line_and_resumes_exactly(tmp_path, straight, signum, status):
    workers = 2  # they get the signal too, and must leave it to the main process
    recipe = write_recipe(tmp_path / "r.yaml", iters=ITERS, checkpoint_interval=3, log_interval=ITERS)
    work = tmp_path / "w"
    returncode, err = interrupt(recipe, work, signum, workers=workers)
    assert returncode == status, err[-3000:]
    stopped_at = load_checkpoint(work / "last.pt")["iteration"]
    assert 3 <= stopped_at < ITERS
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [
        f"nlseg train: interrupted by {name} at iteration {stopped_at}; saved {work / 'last.pt'}; "
        f"resume with: nlseg train --work-dir {work} --resume"
    ]
    assert "interrupted by" in (work / "train.log").read_text()

    assert load_checkpoint(work / "last.pt")["config"]["data"]["num_workers"] == workers
    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "data.num_workers=0"]) == 0
    resumed, expected = load_checkpoint(work / "last.pt")["model"], load_checkpoint(straight)["model"]
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
