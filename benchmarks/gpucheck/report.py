"""The report: a line about the run, one table line per step (pending until it has run), each step's output."""
from __future__ import annotations

import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from common.markdown import table
from gpucheck.check import Check, Result, Step


def write_report(path: Path, check: Check, steps: Sequence[Step], results: dict[str, Result], started: datetime,
                 total: float) -> None:
    """Write the report of ``steps`` to ``path``, with the ``results`` of those that have run."""
    probe = check.probe
    gpus = ", ".join(g["name"] for g in probe.get("gpus", [])) or "none"
    head = [
        "# nlseg GPU check",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC on {platform.node()}; device **{check.device}** (GPUs: {gpus}); "
        f"torch {probe.get('torch', '?')}, nlseg {probe.get('nlseg', '?')}; {total:.0f} s in all, "
        f"deadline {check.args.deadline:.0f} s.",
        "",
        "Command: `python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]]) + "`",
        "",
    ]
    rows = []
    for step in steps:
        result = results.get(step.name)
        if result is None:
            rows.append([f"`{step.name}`", step.title, "pending", "—", ""])
        else:
            rows.append([f"`{step.name}`", step.title, result.status, f"{result.seconds:.1f} s",
                         result.reason.replace("|", "/")])
    body = [table(["step", "what", "status", "time", "why / key output"], rows), ""]
    for step in steps:
        result = results.get(step.name)
        if result is not None and result.output:
            body += [f"## {step.name}: {result.status}", "", result.output, ""]
    path.write_text("\n".join(head + body))
