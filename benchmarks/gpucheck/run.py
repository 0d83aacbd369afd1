"""The check's loop: every step in order, each within its budget and the global deadline, the report rewritten
after each; a step that fails, hangs or raises is reported and the next one still runs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from gpucheck.check import Check, Result, Step
from gpucheck.report import write_report


def run_steps(args: argparse.Namespace, steps: Sequence[Step]) -> int:
    """Run the steps ``args.steps`` selects (env always) and write the report to ``args.out``; the exit status:
    0 when no step failed, 1 otherwise, 2 for an unknown step name."""
    started, start = datetime.now(timezone.utc), time.monotonic()
    wanted = args.steps.split(",") if args.steps else [s.name for s in steps]
    unknown = sorted(set(wanted) - {s.name for s in steps})
    if unknown:
        print(f"gpu_check: --steps: unknown {unknown}; the steps are {[s.name for s in steps]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="nlseg-gpu-check-") as scratch:
        check = Check(args, Path(scratch), start + args.deadline)
        results: dict[str, Result] = {}
        for step in steps:
            tick = time.monotonic()
            if step.name != "env" and step.name not in wanted:
                result = Result("skipped", "not selected (--steps)")
            elif step.name != "env" and not check.probe:
                result = Result("skipped", "the environment probe failed")
            elif check.deadline - tick < 5:
                result = Result("skipped", f"global deadline of {args.deadline:.0f} s reached")
            else:
                check.step_end = tick + step.budget
                print(f"gpu_check: {step.name} ...", flush=True)
                try:
                    result = step.run(check)
                except Exception as error:  # a bug in this script's step: report it, go on with the next
                    result = Result("failed", f"gpu_check itself raised {type(error).__name__}: {error}")
            result.seconds = time.monotonic() - tick
            results[step.name] = result
            print(f"gpu_check: {step.name}: {result.status} ({result.seconds:.1f} s) {result.reason}", flush=True)
            write_report(out, check, steps, results, started, time.monotonic() - start)
    failed = [name for name, r in results.items() if r.status == "failed"]
    print(f"gpu_check: report in {out}; " + (f"failed: {', '.join(failed)}" if failed else "no step failed"))
    return 1 if failed else 0
