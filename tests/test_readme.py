"""The README stays true: its quick start names real targets, its first example runs."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_quick_start_is_two_make_targets_that_exist():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^(make \w+)", quick, re.M)
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for command in commands:
        assert re.search(rf"^{command.split()[1]}:", makefile, re.M), command
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_first_python_example_runs():
    example = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert tuple(scope["y"].shape) == (2, 512, 48, 96)
    assert tuple(scope["out"].shape) == (1, 512, 48, 96)
