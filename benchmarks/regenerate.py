"""Regenerate every measured figure of README.md and docs/*.md (``make bench``).

    python benchmarks/regenerate.py [--only NAME ...] [--list] [--dry-run] [--mmseg-python PATH]

Runs the command(s) of each figure of the manifest (:data:`figures.FIGURES`), one at a time from the
repository root, and replaces the figure's block (between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``)
with their standard output: the run's header, then the table. Each file is rewritten atomically (a temporary
file renamed over it) right after its figure is measured. A command that fails or runs past its limit leaves
the old block in place; so does a figure that needs mmsegmentation's venv when there is none
(``bash benchmarks/mmseg_env.sh``). A summary at the end says which blocks were rewritten and which were kept;
the exit status is 1 when a command failed.

``--list`` prints each figure's file, estimated minutes and command(s), with the total; ``--dry-run`` prints
what would run, and checks the markers, without measuring anything.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # benchmarks/ holds the parts below; run from any cwd, or loaded by a test
    sys.path.insert(0, str(HERE))

from common.blocks import find_blocks, rewrite_block  # noqa: E402
from common.process import run_group  # noqa: E402
from figures import FIGURES, Figure, total_minutes  # noqa: E402

ROOT = HERE.parent
DEFAULT_MMSEG_PYTHON = ROOT / ".venv-mmseg" / "bin" / "python"
DOCS = ("README.md", "docs")
"""Where markers may sit: README.md and every Markdown file under docs/."""


def marked_files(root: Path = ROOT) -> list[Path]:
    """README.md and docs/*.md (recursively) under ``root``."""
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted((root / "docs").rglob("*.md"))


def check_markers(root: Path = ROOT, figures: Sequence[Figure] = FIGURES) -> list[str]:
    """What is wrong between the docs' markers and the manifest: unpaired markers, a block no figure names, a
    figure whose file has no block of its name. Empty when they agree."""
    problems, found = [], {}
    for path in marked_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            blocks = find_blocks(path.read_text(), rel)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        for name in blocks:
            found.setdefault(name, []).append(rel)
    names = {figure.name: figure for figure in figures}
    for name, files in sorted(found.items()):
        if name not in names:
            problems.append(f"{', '.join(files)}: block {name!r} has no entry in benchmarks/figures.py")
        elif len(files) > 1:
            problems.append(f"block {name!r} is in {' and '.join(files)}; a figure has one block")
    for figure in figures:
        if figure.doc not in found.get(figure.name, []):
            problems.append(f"benchmarks/figures.py: figure {figure.name!r} has no block in {figure.doc}")
    return problems


def argv_of(command: str, mmseg_python: Path) -> list[str]:
    """A manifest command line as the argument list to run: ``python`` is this Python, ``nlseg`` is
    ``python -m nlseg``, ``{mmseg_python}`` the mmseg venv's Python."""
    words = shlex.split(command.replace("{mmseg_python}", shlex.quote(str(mmseg_python))))
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] == "nlseg":
        return [sys.executable, "-m", "nlseg", *words[1:]]
    return words


def limit_seconds(figure: Figure) -> float:
    """How long a figure's command may run: three times its estimate, at least 10 minutes."""
    return max(600.0, 3 * 60 * figure.minutes)


def measure(figure: Figure, mmseg_python: Path) -> tuple[str | None, str]:
    """Run the figure's commands; (the new block, "") or (None, why it failed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    outputs = []
    for command in figure.commands:
        done = run_group(argv_of(command, mmseg_python), limit_seconds(figure), cwd=ROOT, env=env)
        if done.rc != 0:
            tail = [line for line in (done.err + "\n" + done.out).strip().splitlines() if line.strip()][-3:]
            status = "killed at its limit" if done.rc is None else f"exit status {done.rc}"
            return None, f"`{command}`: {status}: " + " | ".join(tail)
        outputs.append(done.out.strip("\n"))
    return "\n\n".join(outputs), ""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [figure.name for figure in FIGURES]
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"these figures only, of {names}")
    parser.add_argument("--list", action="store_true", help="list the figures, their commands and estimated times")
    parser.add_argument("--dry-run", action="store_true", help="say what would run; measure and write nothing")
    parser.add_argument("--mmseg-python", type=Path, default=DEFAULT_MMSEG_PYTHON,
                        help="Python of mmsegmentation's venv (default .venv-mmseg/bin/python, from mmseg_env.sh)")
    return parser.parse_args(argv)


def _listing(figures: Sequence[Figure]) -> str:
    lines = []
    for figure in figures:
        needs = ", needs the mmseg venv" if figure.needs_mmseg else ""
        lines.append(f"{figure.name} ({figure.doc}, ~{figure.minutes:g} min{needs})")
        lines += [f"    {command}" for command in figure.commands]
    lines.append(f"total: ~{total_minutes(tuple(figures)):g} min on 2 idle CPU cores")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    figures = [figure for figure in FIGURES if not args.only or figure.name in args.only]
    if args.list:
        print(_listing(figures))
        return 0
    problems = check_markers()
    if problems:
        print("regenerate: the docs' markers and benchmarks/figures.py disagree:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 2
    if args.dry_run:
        print(_listing(figures))
        for figure in figures:
            if figure.needs_mmseg and not args.mmseg_python.exists():
                print(f"{figure.name}: would be kept: no mmseg venv at {args.mmseg_python}")
        return 0
    rewritten, kept, failed = [], [], []
    for index, figure in enumerate(figures, 1):
        if figure.needs_mmseg and not args.mmseg_python.exists():
            kept.append(f"{figure.name}: kept, no mmseg venv at {args.mmseg_python} (`bash benchmarks/mmseg_env.sh`, "
                        "or --mmseg-python)")
            print(kept[-1], flush=True)
            continue
        print(f"[{index}/{len(figures)}] {figure.name} (~{figure.minutes:g} min) ...", flush=True)
        body, why = measure(figure, args.mmseg_python)
        if body is None:
            failed.append(f"{figure.name}: kept the old block, {why}")
            print(f"    FAILED: {why}", flush=True)
            continue
        rewrite_block(ROOT / figure.doc, figure.name, body)
        rewritten.append(figure.name)
        print(f"    rewrote {figure.doc}", flush=True)
    print(f"\nrewritten: {', '.join(rewritten) or 'none'}")
    for line in kept + failed:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
