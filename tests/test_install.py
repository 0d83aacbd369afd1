"""nlseg installs like a library: the recipes are package data, found without a source tree."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import nlseg
from nlseg.config import config_dirs, list_recipes, load_config

PACKAGE = Path(nlseg.__file__).resolve().parent
ROOT = PACKAGE.parent


def test_recipes_are_found_inside_the_package_after_the_config_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NLSEG_CONFIG_DIR", str(tmp_path))
    assert config_dirs() == [tmp_path, PACKAGE / "configs"]
    (tmp_path / "demo.yaml").write_text("description: mine\nmodel: {name: fcn_r18}\n")
    (tmp_path / "extra.yaml").write_text("model: {name: fcn_r18}\n")
    assert load_config("demo").description == "mine"  # $NLSEG_CONFIG_DIR first
    assert {"extra", "demo", "denoised_nl_r101_cityscapes"} <= set(list_recipes())


def test_the_wheel_holds_every_recipe_and_the_demo(tmp_path) -> None:
    pytest.importorskip("setuptools")
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source tree")
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "nlseg", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("nlseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"nlseg/configs/{p.name}" for p in (PACKAGE / "configs").glob("*.yaml")}
    assert len(shipped) > 30 and shipped <= names
    assert {"nlseg/apps/demo.py", "nlseg/cli/__init__.py"} <= names
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "Provides-Extra: tb" in metadata and 'Requires-Dist: tensorboard>=2.10; extra == "tb"' in metadata
    assert "tensorboard" not in "".join(line for line in metadata.splitlines() if 'extra == "test"' in line)
