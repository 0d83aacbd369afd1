"""The kill test: a training run SIGKILLed 30 times at random moments (in start-up, in steps, inside checkpoint
writes: it saves every iteration) and resumed each time ends with the weights of a run never interrupted, no
temporary file left and a metrics.jsonl that lists every iteration once."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_trainer import write_recipe

from nlseg.config import load_config
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.trainer import train

ITERS, KILLS = 600, 30


def _run(recipe, work, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nlseg", "train", str(recipe), "--work-dir", str(work)] + (["--resume"] if resume else [])
    # the intra-op thread count of this process (conftest): CPU sums depend on it, and the runs must match
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _wait_for_new_checkpoint(proc: subprocess.Popen, last: Path, timeout: float = 300.0) -> None:
    """Return once ``last`` is replaced (an atomic rename gives it a new inode) or first written."""
    def stamp():
        try:
            st = last.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    before, deadline = stamp(), time.monotonic() + timeout
    while stamp() in (before, None) and proc.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"no new checkpoint within {timeout:.0f} s")
        time.sleep(0.01)


@pytest.mark.slow
def test_thirty_kills_at_random_moments_end_where_the_uninterrupted_run_ends(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", iters=ITERS, checkpoint_interval=1, log_interval=1)
    train(load_config(recipe), tmp_path / "straight")

    work, rng, kills, reached = tmp_path / "killed", random.Random(0), 0, []
    while kills < KILLS:
        proc = _run(recipe, work, resume=(work / "last.pt").exists())
        if kills % 6 == 0:  # in start-up (about 1.5 s here, longer on a loaded machine) or just after it
            time.sleep(rng.uniform(0.2, 1.5))
        else:  # timed from the run's first new checkpoint, so a slow start-up cannot bunch the kills before it
            _wait_for_new_checkpoint(proc, work / "last.pt")
            time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            pytest.fail(f"the run ended before kill {kills + 1} (status {proc.returncode}): {proc.stderr.read()!r}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if (work / "last.pt").exists():  # never torn: the previous whole checkpoint or the new one
            reached.append(load_checkpoint(work / "last.pt")["iteration"])
    assert reached and reached[-1] < ITERS and len(set(reached)) > KILLS // 3  # the kills spread over the run

    finish = _run(recipe, work, resume=True)
    _, err = finish.communicate(timeout=600)
    assert finish.returncode == 0, err
    resumed, straight = (load_checkpoint(w / "last.pt")["model"] for w in (work, tmp_path / "straight"))
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-5, msg=name)
    assert not [p.name for p in work.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["iter"] for r in records if r["kind"] == "train") == list(range(1, ITERS + 1))
