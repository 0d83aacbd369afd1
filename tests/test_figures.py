"""The papers' pictures: ANN Fig. 2's per-operation breakdown (``nlseg bench breakdown``), ANN Fig. 7's stage maps
(``nlseg viz stages``), the qualitative side-by-side (``nlseg viz compare``); and ``nlseg export`` refusing models that
sample anchors at random."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import nlseg
from nlseg.analysis.figures import ERROR_RGB, IGNORED_RGB, ModelSpec, error_map, viz_stages
from nlseg.analysis.tables.ann_fig2 import BLOCKS, _build, block_operations, run_operations
from nlseg.cli import main


def _randomised(block: nn.Module) -> nn.Module:
    """Every weight random (Wo too, so the attention reaches the output), norms with non-trivial statistics."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return block.eval()


@pytest.mark.parametrize("name", list(BLOCKS))
def test_breakdown_steps_compose_to_the_blocks_forward(name):
    block = _randomised(_build(BLOCKS[name], 24, 8))
    x = torch.randn(2, 24, 9, 13, generator=torch.Generator().manual_seed(2))
    steps = block_operations(block)
    state = run_operations(steps, x)
    with torch.no_grad():
        whole = block(x)  # fused=False: the materialised path the steps spell out
        block.fused = True
        fast = block(x)
    assert whole.abs().mean() > 0.1  # the attention branch reaches the output
    assert (state["out"] - whole).abs().max().item() <= 1e-5
    assert (state["out"] - fast).abs().max().item() <= 1e-4 * whole.abs().max().item()
    kinds = [s.kind for s in steps]
    assert kinds.count("Q·Kᵀ") == kinds.count("softmax") == kinds.count("attention · V") == 1
    assert kinds.count("pyramid sampling") == (0 if name == "nb" else 2)
    assert state["energy"].shape == (2, 9 * 13, 9 * 13 if name == "nb" else 110)


def test_bench_breakdown_prints_steps_their_sum_and_the_check(tmp_path, capsys):
    out_json = tmp_path / "b.json"
    assert main(["bench", "breakdown", "--sizes", "6x10", "--channels", "16", "--key-channels", "8",
                 "--repeats", "1", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Run 20") and "torch threads:" in printed and "\nDevice cpu (" in printed
    records = json.loads(out_json.read_text())
    steps = [r for r in records if r["kind"] not in ("total", "check")]
    total = {r["step"]: r for r in records if r["kind"] in ("total", "check")}
    for name in BLOCKS:
        summed = sum(r[f"{name}_ms"] for r in steps if r[f"{name}_ms"] is not None)
        assert total["**sum of the steps**"][f"{name}_ms"] == pytest.approx(summed)
        whole = total["**whole forward (one call)**"][f"{name}_ms"]
        assert whole > 0 and total["**sum / whole**"][f"{name}_ms"] == pytest.approx(summed / whole)
    # Q·Kᵀ: 2·N·N·Ĉ FLOPs for NB, 2·N·S·Ĉ for APNB (S = 110)
    qk = next(r for r in steps if r["kind"] == "Q·Kᵀ")
    assert qk["nb_gflops"] * 1e9 == pytest.approx(2 * 60 * 60 * 8)
    assert qk["apnb_gflops"] * 1e9 == pytest.approx(2 * 60 * 110 * 8)
    assert "Sum of the steps / whole forward: NB" in printed


def test_bench_breakdown_refuses_a_bad_value_in_one_line(capsys):
    assert main(["bench", "breakdown", "--key-channels", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "nlseg bench: error: --key-channels must be a positive integer, got 0"]


def _image(path, size=(40, 56)):
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    rgb = np.stack([xx * 4, yy * 5, (xx * yy) % 256], axis=-1) % 256
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def _recipe(tmp_path, seed: int):
    path = tmp_path / f"r{seed}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "fcn_r18", "options": {"backbone_width": 8, "head_channels": 8}},
        "data": {"dataset": "synthetic"}, "train": {"seed": seed},
    }))
    return path


def test_viz_stages_draws_a_row_per_model_whose_maps_differ_with_the_weights(tmp_path):
    image = _image(tmp_path / "img.png")
    out, maps = viz_stages(image, [ModelSpec(str(_recipe(tmp_path, 0))), ModelSpec(str(_recipe(tmp_path, 1)))],
                           tmp_path / "stages.png", device="cpu")
    picture = Image.open(out)
    # 6 panels of 56 px with 5 gaps of 4 px; two rows of 40 px under a 16 px title strip, one 4 px gap
    assert picture.size == (6 * 56 + 5 * 4, 16 + 2 * 40 + 4)
    (first, a), (second, b) = maps.items()
    assert first != second and list(a) == list(b) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert a["stem"].shape == (20, 28) and a["layer4"].shape == (5, 7)  # stride 2 stem, output stride 8
    for stage in a:
        assert a[stage].min() == 0 and a[stage].max() == 1  # min-max scaled per map
        assert (a[stage] - b[stage]).abs().mean() > 0.01  # other weights, other features
    same, _ = viz_stages(image, [ModelSpec(str(_recipe(tmp_path, 0)))], tmp_path / "one.png", device="cpu")
    assert Image.open(same).size == (6 * 56 + 5 * 4, 16 + 40)


def test_error_map_colours_a_hand_made_case():
    photo = np.full((4, 4, 3), 90, dtype=np.uint8)
    label = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 1], [2, 0, 0, 1], [2, 2, 2, 0]])
    out = error_map(photo, pred, label, 255)
    colours = {tuple(c): int(n) for c, n in zip(*np.unique(out.reshape(-1, 3), axis=0, return_counts=True))}
    # wrong: (0,1), (1,2), (2,1), (3,3); ignored: (2,2), (2,3), (3,2); right: the other 9, 90 // 3 = 30
    assert colours == {ERROR_RGB: 4, IGNORED_RGB: 3, (30, 30, 30): 9}
    assert tuple(out[3, 3]) == ERROR_RGB and tuple(out[3, 2]) == IGNORED_RGB


def test_viz_compare_draws_the_evaluators_view(tmp_path, capsys):
    from nlseg.config import load_config
    from nlseg.data import SyntheticContext
    from nlseg.engine.checkpoint import save_checkpoint

    recipe = _recipe(tmp_path, 0)
    torch.manual_seed(0)
    model = nlseg.create_model("fcn_r18", num_classes=8, backbone_width=8, head_channels=8)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "fcn_r18", "num_classes": 8,
                     "class_names": list(SyntheticContext.classes), "config": load_config(recipe).to_dict(),
                     "iteration": 1}, checkpoint)
    out = tmp_path / "compare.png"
    overrides = ["data.eval_options={size: [32, 48], length: 3}"]
    assert main(["viz", "compare", str(recipe), "--checkpoint", str(checkpoint), "--num", "2", "--out", str(out),
                 "--device", "cpu", "--set", *overrides]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[0].startswith("val_000000: pixel accuracy ")
    assert Image.open(out).size == (4 * 48 + 3 * 4, 16 + 2 * 32 + 4)
    panels = np.asarray(Image.open(out).convert("RGB"))[16 : 16 + 32]
    errors = panels[:, 3 * 52 :]  # the error map of the first row
    wrong = np.all(errors == ERROR_RGB, axis=-1).mean() * 100
    accuracy = float(printed[0].split()[-1].rstrip("%"))
    assert wrong == pytest.approx(100 - accuracy, abs=0.1)  # the synthetic set labels every pixel


def _one_error_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("nlseg export: error: ") and all(f in err for f in fragments), err
    return err


def test_export_refuses_random_anchor_sampling_before_any_work(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    # with the recipe: refused before the checkpoint is read (it does not even exist)
    assert main(["export", "ann_r101_cityscapes_pyramid_random1236", "--checkpoint", str(tmp_path / "none.pt"),
                 "--out", str(out)]) == 2
    _one_error_line(capsys, "model.options.context_pool_mode", "'random'", "expected 'avg' or 'max'",
                    "ann_r101_cityscapes_pyramid_random1236")
    # without a recipe: the checkpoint's recipe says so, before tracing
    from nlseg.engine.checkpoint import save_checkpoint

    options = {"backbone": "resnet18", "backbone_width": 8, "head_channels": 16, "context_pool_mode": "random",
               "context_pool_sizes": [1, 2]}
    model = nlseg.create_model("ann_r50", num_classes=3, **options)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "ann_r50", "num_classes": 3,
                     "config": {"model": {"name": "ann_r50", "options": options}}, "iteration": 1}, checkpoint)
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    _one_error_line(capsys, f"checkpoint {checkpoint}", "model.options.context_pool_mode is 'random'")
    assert not out.exists()
    # the same model with average sampling gets past the check (refused later only for other reasons)
    from nlseg.engine.export import random_sampling_reason

    assert random_sampling_reason({**options, "context_pool_mode": "avg"}, model.eval()) is not None  # module scan
    model_avg = nlseg.create_model("ann_r50", num_classes=3, **{**options, "context_pool_mode": "avg"})
    assert random_sampling_reason({**options, "context_pool_mode": "avg"}, model_avg) is None
