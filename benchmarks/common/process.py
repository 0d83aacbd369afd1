"""One command in its own process group, killed with every child it started when its time is up."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Proc:
    """A finished command: its exit status, what it printed and how long it ran."""

    rc: int | None  # None: killed at its limit
    out: str  # standard output, with standard error in it when merged
    seconds: float
    cut: bool = False  # killed because a budget or a deadline ran out, not at the command's own timeout
    err: str = ""  # standard error, when not merged


def run_group(
    argv: Sequence[str],
    limit: float,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    merge_stderr: bool = False,
) -> Proc:
    """Run ``argv`` in a new process group; after ``limit`` seconds kill the whole group (the command and its
    children: torchrun's workers, torch.compile's compile workers) and note it at the end of the output.

    An interrupt (Ctrl-C) kills the group too before it is raised again, so nothing outlives the caller.
    """
    start = time.monotonic()
    stderr = subprocess.STDOUT if merge_stderr else subprocess.PIPE
    with subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return Proc(None, out + f"\n[killed after {limit:.0f} s]", time.monotonic() - start, err=err or "")
        except BaseException:
            _kill_group(proc)
            raise
    return Proc(proc.returncode, out, time.monotonic() - start, err=err or "")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the group ``proc`` leads (``start_new_session``), if any of it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
