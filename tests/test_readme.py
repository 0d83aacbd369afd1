"""The README stays true: its quick start names real targets, and every Python example runs as written."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_quick_start_is_two_make_targets_that_exist():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^(make \w+)", quick, re.M)
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for command in commands:
        assert re.search(rf"^{command.split()[1]}:", makefile, re.M), command
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_tiers_and_ci():
    """make test leaves out what is marked slow, make test-all runs it, and CI runs both and the numeric
    tests once more under other CPU kernels."""
    makefile, ci = (ROOT / "Makefile").read_text(), (ROOT / ".ci" / "run").read_text()
    assert re.search(r'^test:.*\n\t.*pytest -q -m "not slow"$', makefile, re.M)
    assert re.search(r"^test-all:.*\n\t.*pytest -q$", makefile, re.M)
    assert re.search(r"^time make test$", ci, re.M) and re.search(r"^time make test-all$", ci, re.M)
    assert re.search(r"^time ONEDNN_MAX_CPU_ISA=SSE41 .*pytest -q -m numeric$", ci, re.M)


# --- the files the examples name, created in an empty folder before a block runs ---------------------


def _torchvision_resnet101(path: Path) -> None:
    """ImageNet weights in torchvision's layout: the classic-stem backbone's names plus the classifier."""
    from nlseg.backbones import create_backbone

    state = create_backbone("resnet101").state_dict()
    state.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(state, path)


def _deep_stem_resnet101(path: Path) -> None:
    from nlseg.backbones import create_backbone

    torch.save(create_backbone("resnet101", stem="deep").state_dict(), path)


def _checkpoint(path: Path) -> None:
    """A checkpoint as `nlseg train denoised_nl_r101_cityscapes` writes it, of a narrow network (fast to run)."""
    import nlseg
    from nlseg.config import load_config
    from nlseg.data import Cityscapes

    narrow = ["model.options.backbone_width=8", "model.options.head_channels=32"]
    cfg = load_config("denoised_nl_r101_cityscapes", narrow)
    model = nlseg.create_model(cfg.model.name, num_classes=19, **cfg.model.options)
    torch.save({"model": model.state_dict(), "model_name": cfg.model.name, "num_classes": 19,
                "class_names": list(Cityscapes.classes), "config": cfg.to_dict()}, path)


def _photo(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(path)


FILES: dict[str, Callable[[Path], None]] = {
    "resnet101.pth": _torchvision_resnet101,
    "pretrained/resnet101-deep.pth": _deep_stem_resnet101,
    "work/dnl/best.pt": _checkpoint,
    "frankfurt_000000_000294_leftImg8bit.png": _photo,
}


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_every_python_example_runs(index: int, tmp_path: Path, monkeypatch):
    block = PYTHON_BLOCKS[index]
    monkeypatch.chdir(tmp_path)
    for name, make in FILES.items():
        if f'"{name}"' in block:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            make(tmp_path / name)
    scope: dict = {"__name__": "__readme__"}
    exec(compile(block, f"README.md python block {index + 1}", "exec"), scope)
    if "DenoisedNL(512" in block:
        assert tuple(scope["y"].shape) == (2, 512, 48, 96)
        assert tuple(scope["out"].shape) == (1, 512, 48, 96)
    if '"resnet101.pth"' in block:  # the torchvision-layout file is in the model
        weights = torch.load(tmp_path / "resnet101.pth", weights_only=True)
        assert torch.equal(scope["model"].backbone.layer3[5].conv2.weight, weights["layer3.5.conv2.weight"])
        assert tuple(scope["out"]["out"].shape) == (1, 19, 257, 257) and len(scope["out"]["aux"]) == 1
    if "mydata/labels/train" in block:  # a label the folder data set reads as written
        from nlseg.data.base import read_label

        label = read_label(tmp_path / "mydata" / "labels" / "train" / "street_001.png")
        assert label.shape == (480, 640) and set(np.unique(label).tolist()) == {0, 1, 255}
        assert (label[300, 200], label[0, 0], label[0, 100]) == (1, 255, 0)
    if "load_backbone_weights(" in block:
        weights = torch.load(tmp_path / "pretrained" / "resnet101-deep.pth", weights_only=True)
        assert torch.equal(scope["backbone"].conv1[6].weight, weights["conv1.6.weight"])
    if "Segmenter.from_checkpoint" in block:
        assert tuple(scope["labels"].shape) == (64, 128) and int(scope["labels"].max()) < 19


def test_own_data_section_matches_the_recipe():
    assert len(PYTHON_BLOCKS) >= 5, "the examples the tests above run"
    section = README.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    shown = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["data"]
    recipe = yaml.safe_load((ROOT / "nlseg" / "configs" / "custom_folder.yaml").read_text())["data"]
    assert shown["dataset"] == recipe["dataset"] == "folder" and shown["root"] is recipe["root"] is None
    assert shown["options"] == recipe["options"]
    for command in ("nlseg train custom_folder", "nlseg eval custom_folder", "nlseg predict custom_folder"):
        assert command in section


def test_install_section_lists_every_extra_with_its_packages():
    """The extras table of `## Install` is pyproject's optional dependencies, extra by extra."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    install = README.split("## Install\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", install, re.M))
    assert set(rows) == set(extras)
    for extra, requirements in extras.items():
        packages = {re.split(r"[<>=!~ ]", r, maxsplit=1)[0] for r in requirements}
        assert packages == {p.strip() for p in rows[extra].split(",")}, extra
    assert "--index-url https://download.pytorch.org/whl/cpu" in install and "pip install ." in install
