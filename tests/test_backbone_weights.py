"""Backbone weight files: round trips of the layouts torchvision and the released Denoised NL code write, and
one error line naming the keys, shapes or stem of a file that does not fit."""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file
from test_backbones import reference_file_state, snapshot

from nlseg.backbones import (
    WeightsMismatchError,
    create_backbone,
    load_backbone_weights,
    read_state_dict,
    resnet18,
    resnet50,
    resnet101,
)

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

WIDTH = 8  # base width of the tiny networks used wherever the real width does not matter


def write(state: dict, path) -> None:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize(
    "name, stem, suffix, counters, wrap",
    [
        ("resnet18", "classic", ".pth", True, None),
        ("resnet50", "classic", ".safetensors", False, None),
        ("resnet50", "classic", ".pt", True, "model"),
        ("resnet50", "deep", ".pth", True, "state_dict"),
        ("resnet50", "deep", ".safetensors", True, None),
    ],
)
def test_load_round_trip(tmp_path, name: str, stem: str, suffix: str, counters: bool, wrap: str | None) -> None:
    torch.manual_seed(0)
    state = reference_file_state(name, WIDTH, stem, counters=counters)
    content = state if wrap is None else {wrap: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / f"weights{suffix}"
    write(content, path)

    model = create_backbone(name, stem=stem, width=WIDTH)
    load_backbone_weights(model, path)
    for key, value in model.state_dict().items():
        if key in state:
            assert torch.equal(value, state[key]), key
        else:  # only counters may be absent from the file; they keep the model's value
            assert key.endswith("num_batches_tracked") and not counters and value == 0, key


def test_pretrained_option_loads_the_file(tmp_path) -> None:
    torch.manual_seed(0)
    state = reference_file_state("resnet18", WIDTH, "deep")
    write(state, tmp_path / "r18.pth")
    model = create_backbone("resnet18", stem="deep", width=WIDTH, pretrained=tmp_path / "r18.pth")
    assert torch.equal(model.conv1[6].weight, state["conv1.6.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_missing_key_is_named_and_nothing_is_loaded(tmp_path) -> None:
    torch.manual_seed(0)
    state = reference_file_state("resnet50", WIDTH, "classic")
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "incomplete.pth"
    write(state, path)
    model = resnet50(width=WIDTH)
    before = snapshot(model)
    expected = r"incomplete\.pth[\s\S]*missing from the file \(1\): layer2\.0\.conv1\.weight"
    with pytest.raises(WeightsMismatchError, match=expected):
        load_backbone_weights(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unexpected_key_is_named(tmp_path) -> None:
    state = reference_file_state("resnet18", WIDTH, "classic")
    state["layer5.0.conv1.weight"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    write(state, path)
    expected = r"extra\.safetensors[\s\S]*unexpected in the file \(1\): layer5\.0\.conv1\.weight"
    with pytest.raises(WeightsMismatchError, match=expected):
        load_backbone_weights(resnet18(width=WIDTH), path)


def test_shape_mismatch_is_named_even_when_not_strict(tmp_path) -> None:
    state = reference_file_state("resnet50", WIDTH, "classic")
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "reshaped.pth"
    write(state, path)
    model = resnet50(width=WIDTH)
    before = snapshot(model)
    expected = r"shape mismatches \(1\): layer1\.0\.conv1\.weight: model \(8, 8, 1, 1\) vs file \(1, 1, 1, 1\)"
    for strict in (True, False):
        with pytest.raises(WeightsMismatchError, match=expected):
            load_backbone_weights(model, path, strict=strict)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_resnet50_file_into_resnet101_lists_a_truncated_report(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    write(reference_file_state("resnet50", WIDTH, "classic"), path)
    # layer3 blocks 6..22 are missing: 17 blocks × (3 conv weights + 3 norms × 4 tensors) = 255 keys
    with pytest.raises(WeightsMismatchError) as info:
        load_backbone_weights(resnet101(width=WIDTH), path)
    message = str(info.value)
    assert str(path) in message
    assert "missing from the file (255): layer3.6.conv1.weight, layer3.6.bn1.weight," in message
    assert message.endswith("... and 245 more")
    assert "unexpected" not in message and "shape" not in message


def test_stem_mismatch_gives_a_hint(tmp_path) -> None:
    path = tmp_path / "deep.pth"
    write(reference_file_state("resnet50", WIDTH, "deep"), path)
    with pytest.raises(WeightsMismatchError) as info:
        load_backbone_weights(resnet50(width=WIDTH), path)
    message = str(info.value)
    assert "missing from the file (1): conv1.weight" in message
    assert "bn1.weight: model (8,) vs file (16,)" in message
    assert "stem='deep'" in message


def test_not_strict_loads_what_fits_and_warns(tmp_path) -> None:
    torch.manual_seed(0)
    state = reference_file_state("resnet18", WIDTH, "classic")
    del state["layer4.1.bn2.bias"]
    path = tmp_path / "partial.pth"
    write(state, path)
    model = resnet18(width=WIDTH)
    with pytest.warns(UserWarning, match=r"partial\.pth[\s\S]*layer4\.1\.bn2\.bias"):
        load_backbone_weights(model, path, strict=False)
    assert torch.equal(model.layer4[1].bn2.bias, torch.zeros(WIDTH * 8))  # untouched default
    assert torch.equal(model.layer4[1].bn2.weight, state["layer4.1.bn2.weight"])


def test_bad_files_raise_with_the_path(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        read_state_dict(tmp_path / "nowhere.pth")
    generator = torch.Generator().manual_seed(0)
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"corrupt{suffix}"
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=generator, dtype=torch.uint8).tolist()))
        with pytest.raises(ValueError, match=rf"corrupt\{suffix}: cannot read"):
            load_backbone_weights(resnet18(width=WIDTH), path)
    (tmp_path / "weights.npz").write_bytes(b"0")
    with pytest.raises(ValueError, match=r"weights\.npz: unknown weights format '\.npz'"):
        read_state_dict(tmp_path / "weights.npz")
    torch.save({"epoch": 3, "lr": [0.1]}, tmp_path / "not_weights.pth")
    with pytest.raises(ValueError, match=r"not_weights\.pth: .*entry 'epoch' of type int"):
        read_state_dict(tmp_path / "not_weights.pth")
    write({"conv1.weight": torch.zeros(1)}, tmp_path / "ok.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"ok\.safetensors needs the 'safetensors' package"):
        read_state_dict(tmp_path / "ok.safetensors")
