"""``make bench``'s parts without measuring anything: the docs' markers against the manifest, the block rewrite on
a temporary file (only its block changes; a failed command keeps the old one), and the run header's fields."""
from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from nlseg.analysis import runinfo

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


regenerate = _load("regenerate")
from common.blocks import find_blocks, replace_block, rewrite_block  # noqa: E402  (benchmarks/ is on the path now)
from figures import FIGURES, Figure  # noqa: E402

DOC = """# Title

<!-- bench:one -->

old one

<!-- /bench:one -->

prose 4.73x that stays

<!-- bench:two -->
old two
<!-- /bench:two -->
"""


def test_every_marker_has_a_manifest_entry_and_every_entry_a_marker():
    assert regenerate.check_markers() == []
    names = [figure.name for figure in FIGURES]
    assert len(names) == len(set(names))
    found = {}
    for path in regenerate.marked_files():
        for name in find_blocks(path.read_text(), str(path)):
            found[name] = path.relative_to(ROOT).as_posix()
    assert found == {figure.name: figure.doc for figure in FIGURES}


def test_check_markers_names_each_disagreement(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(DOC)
    (tmp_path / "docs" / "a.md").write_text("<!-- bench:three -->\n")
    figures = (Figure("one", "README.md", ("true",), 1), Figure("lost", "README.md", ("true",), 1))
    problems = regenerate.check_markers(tmp_path, figures)
    assert any("'two' has no entry" in p for p in problems)
    assert any("'lost' has no block in README.md" in p for p in problems)
    assert any("docs/a.md:1" in p and "has no <!-- /bench:three -->" in p for p in problems)


@pytest.mark.parametrize("text, message", [
    ("<!-- /bench:a -->\n", "without <!-- bench:a -->"),
    ("<!-- bench:a -->\n<!-- bench:b -->\n<!-- /bench:b -->\n<!-- /bench:a -->\n", "inside block 'a'"),
    ("<!-- bench:a -->\n<!-- /bench:b -->\n", "without <!-- bench:b -->"),
    ("<!-- bench:a -->\n<!-- /bench:a -->\n<!-- bench:a -->\n<!-- /bench:a -->\n", "appears twice"),
])
def test_unpaired_or_nested_markers_are_errors(text, message):
    with pytest.raises(ValueError, match=message):
        find_blocks(text, "x.md")


def test_replace_block_changes_that_block_only():
    new = replace_block(DOC, "two", "Run today\n\n| a |\n|---|\n| 1 |\n")
    assert "old two" not in new and "| 1 |" in new
    assert new.split("<!-- bench:two -->")[0] == DOC.split("<!-- bench:two -->")[0]  # block one and prose kept
    assert new.endswith("<!-- /bench:two -->\n")
    assert replace_block(new, "two", "Run today\n\n| a |\n|---|\n| 1 |") == new  # idempotent
    with pytest.raises(KeyError):
        replace_block(DOC, "three", "x")


def test_rewrite_is_atomic_and_a_failed_command_keeps_the_old_block(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(DOC)
    rewrite_block(readme, "one", "new one")
    assert "new one" in readme.read_text() and "old two" in readme.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "docs"]  # no temporary file left behind

    figures = (
        Figure("one", "README.md", ("python -c \"print('fresh one')\"",), 0.1),
        Figure("two", "README.md", ("python -c \"import sys; print('half'); sys.exit(3)\"",), 0.1),
    )
    monkeypatch.setattr(regenerate, "ROOT", tmp_path)
    monkeypatch.setattr(regenerate, "FIGURES", figures)
    monkeypatch.setattr(regenerate, "check_markers", lambda: CHECK_MARKERS(tmp_path, figures))
    assert regenerate.main(["--mmseg-python", str(tmp_path / "none")]) == 1
    text = readme.read_text()
    assert "fresh one" in text and "new one" not in text
    assert "old two" in text and "half" not in text  # the failed command left its block as it was


CHECK_MARKERS = regenerate.check_markers
"""The real check, for tests that point the script at a temporary repository."""


def test_a_figure_that_needs_mmseg_is_kept_without_its_venv(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(DOC)
    (tmp_path / "docs").mkdir()
    figures = (Figure("one", "README.md", ("{mmseg_python} -c pass",), 1, needs_mmseg=True),
               Figure("two", "README.md", ("python -c \"print('two ok')\"",), 0.1))
    monkeypatch.setattr(regenerate, "ROOT", tmp_path)
    monkeypatch.setattr(regenerate, "FIGURES", figures)
    monkeypatch.setattr(regenerate, "check_markers", lambda: CHECK_MARKERS(tmp_path, figures))
    assert regenerate.main(["--mmseg-python", str(tmp_path / "no-venv" / "python")]) == 0
    out = capsys.readouterr().out
    assert "one: kept, no mmseg venv at" in out and "rewritten: two" in out
    assert "old one" in readme.read_text() and "two ok" in readme.read_text()


def test_list_and_dry_run_measure_nothing(capsys):
    assert regenerate.main(["--list"]) == 0
    out = capsys.readouterr().out
    for figure in FIGURES:
        assert figure.name in out and figure.commands[0] in out
    assert "total: ~" in out
    assert regenerate.main(["--dry-run", "--only", "ops"]) == 0
    assert "vs-mmseg" not in capsys.readouterr().out


def test_commands_run_this_python_and_nlseg_as_a_module(tmp_path):
    assert regenerate.argv_of("python benchmarks/ops.py --x 1", tmp_path)[:2] == [sys.executable, "benchmarks/ops.py"]
    assert regenerate.argv_of("nlseg bench ops", tmp_path)[:3] == [sys.executable, "-m", "nlseg"]
    argv = regenerate.argv_of("python b.py --mmseg-python {mmseg_python}", tmp_path / "a b" / "python")
    assert argv[-1] == str(tmp_path / "a b" / "python")


def test_header_states_date_versions_threads_cpu_settings_and_command():
    env = {"MALLOC_MMAP_MAX_": "0", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2", "LD_PRELOAD": "/j.so",
           "HOME": "/root", "PATH": "/bin", "TORCHINDUCTOR_CACHE_DIR": "/tmp/x"}
    when = datetime(2026, 12, 7, 17, 5, tzinfo=timezone.utc)
    facts = runinfo.run_facts(threads=2, env=env, argv=[str(ROOT / "benchmarks" / "ops.py"), "--repeats", "2"],
                              now=when)
    assert facts["date"] == "2026-12-07 17:05 UTC"
    assert facts["nlseg"].startswith(__import__("nlseg").__version__)
    assert facts["torch"] == __import__("torch").__version__
    assert facts["threads"] == 2 and facts["cpu"]
    assert facts["settings"] == {"LD_PRELOAD": "/j.so", "MALLOC_MMAP_MAX_": "0", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                 "OMP_NUM_THREADS": "2"}
    assert facts["command"] == "python benchmarks/ops.py --repeats 2"
    line = runinfo.run_header(threads=2, env=env, argv=["nlseg", "bench", "ops"], now=when)
    assert line.startswith("Run 2026-12-07 17:05 UTC; nlseg ")
    assert "torch threads: 2" in line and "`MALLOC_MMAP_MAX_=0`" in line and "command: `nlseg bench ops`" in line
    assert "none of `MALLOC_*`" in runinfo.run_header(threads=1, env={}, argv=[])
    assert "\n" not in line
