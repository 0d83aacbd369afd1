"""The header above every benchmark table: when, with which code, on which CPU, under which settings.

Every benchmark script of ``benchmarks/`` and every ``nlseg bench`` report prints :func:`run_header` above its
table, so a figure pasted into the docs (or regenerated there by ``make bench``) says where it comes from. The
environment variables listed are the ones that change a CPU figure without changing the code: glibc's malloc
tunables, oneDNN's ISA and verbosity switches, the OpenMP / MKL thread settings, a preloaded allocator.

Standard library at import time; torch is imported only when the header asks it for the thread count.
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

__all__ = ["ENV_PREFIXES", "ENV_NAMES", "cpu_model", "cpu_name", "run_facts", "run_header", "settings"]

ENV_PREFIXES: tuple[str, ...] = ("MALLOC_", "ONEDNN_", "DNNL_", "OMP_", "MKL_", "KMP_", "GOMP_", "TORCHINDUCTOR_")
"""Environment variables starting with one of these change the figures of a run (allocator, kernels, threads)."""
ENV_NAMES: tuple[str, ...] = ("LD_PRELOAD", "NLSEG_KEEP_HEAP")
"""... and these, by exact name: a preloaded allocator (jemalloc, tcmalloc), nlseg's own heap switch. (Where a
cache lives, ``*_CACHE_DIR``, changes no figure and is left out.)"""

ROOT = Path(__file__).resolve().parents[2]


def settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``env`` (default: this process's) that change a figure, sorted by name."""
    env = os.environ if env is None else env
    return {
        name: env[name] for name in sorted(env)
        if name in ENV_NAMES
        or (any(name.startswith(prefix) for prefix in ENV_PREFIXES) and not name.endswith("_CACHE_DIR"))
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_model() -> str:
    """The CPU's model name and its logical CPUs."""
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


CODE = ("nlseg", "benchmarks", "pyproject.toml")
"""What a figure depends on in the checkout; a changed doc (``make bench`` rewriting a block) is not a change."""


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _nlseg_version() -> str:
    """nlseg's version and, in a git checkout, its commit (``+`` when the code differs from it: uncommitted
    changes under nlseg/ or benchmarks/)."""
    import nlseg

    commit = _git("rev-parse", "--short=7", "HEAD")
    if not commit:
        return nlseg.__version__
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE)
    return f"{nlseg.__version__} ({commit}{'+' if changed else ''})"


def _command(argv: Sequence[str]) -> str:
    """``argv`` as a shell line, its program relative to the repository (or its bare name) so lines compare."""
    if not argv:
        return ""
    program = Path(argv[0])
    if program.name == "__main__.py":  # python -m nlseg
        shown = program.parent.name
    elif program.suffix == ".py":
        try:
            shown = "python " + program.resolve().relative_to(ROOT).as_posix()
        except ValueError:
            shown = "python " + program.name
    else:
        shown = program.name
    return " ".join([shown, *(shlex.quote(arg) for arg in argv[1:])])


def run_facts(
    *,
    threads: int | None = None,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
    now: datetime | None = None,
) -> dict[str, object]:
    """The header's fields: ``date`` (UTC), ``nlseg``, ``torch``, ``threads``, ``cpu``, ``settings``, ``command``.

    Args:
        threads: torch's thread count where the figures are measured (default: this process's, which imports
            torch); a script whose measuring processes set their own passes theirs.
        env: the environment the measurements run in (default: this process's).
        argv: the command line (default ``sys.argv``).
        now: the time to state (default: now).
    """
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    now = now or datetime.now(timezone.utc)
    return {
        "date": now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nlseg": _nlseg_version(),
        "torch": _version("torch"),
        "threads": threads,
        "cpu": cpu_model(),
        "settings": settings(env),
        "command": _command(sys.argv if argv is None else argv),
    }


def run_header(**kwargs) -> str:
    """One Markdown line of :func:`run_facts` (same keyword arguments), printed above a benchmark's table."""
    facts = run_facts(**kwargs)
    env = ", ".join(f"`{k}={v}`" for k, v in facts["settings"].items())
    parts = [
        f"Run {facts['date']}", f"nlseg {facts['nlseg']}", f"torch {facts['torch']}",
        f"torch threads: {facts['threads']}", f"CPU: {facts['cpu']}",
        f"settings: {env}" if env else "settings: none of `MALLOC_*` `ONEDNN_*` `OMP_*` `MKL_*` `LD_PRELOAD` set",
    ]
    if facts["command"]:
        parts.append(f"command: `{facts['command']}`")
    return "; ".join(parts) + "."
