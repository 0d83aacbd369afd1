"""nlseg viz and nlseg.analysis.attention: the drawn rows are the blocks' own attention, PNGs of the right size."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import nlseg
from nlseg.analysis.attention import capture_block_inputs, find_attention_block, grid_index, pixel_attention
from nlseg.analysis.viz import CURVES_FIGSIZE, DPI, GAP_PX, TITLE_PX, confusion_figsize, viz_attention, viz_curves
from nlseg.errors import ConfigError
from nlseg.blocks import APNB, DenoisedNL, PositionAttention
from nlseg.blocks.asymmetric import asymmetric_attention
from nlseg.cli import main as cli_main
from nlseg.config import EvalConfig, load_config
from nlseg.engine.checkpoint import save_checkpoint
from nlseg.engine.evaluate import evaluate
from nlseg.ops import criss_cross_attention

K = 5
TINY = {"backbone_width": 8, "head_channels": 16}
MODELS = {
    "denoised_nl_r18": {**TINY, "key_channels": 8},
    "nl_r50": TINY,
    "ann_apnb_r50": {**TINY, "key_channels": 8, "value_channels": 8},
    "ccnet_r50": TINY,
}
H, W = 96, 128


def tiny_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = nlseg.create_model(name, num_classes=K, **MODELS[name]).eval()
    with torch.no_grad():  # non-zero residual weights, so that each block's output shows its attention
        for module in model.modules():
            if hasattr(module, "gamma"):
                module.gamma.fill_(1.0)
    return model


def image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(seed))


def weighted_sum(row: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (row[None, None] * value).sum((-2, -1))  # Σ_j row[j] v_j, (1, Cv)


def test_denoised_rows_are_the_block_attention_at_that_pixel():
    model = tiny_model("denoised_nl_r18")
    block = find_attention_block(model)
    assert isinstance(block, DenoisedNL)
    inputs = capture_block_inputs(model, block, image())
    assert inputs.x.shape[-2:] == (H // 16, W // 16) and inputs.class_map.shape[1] == K
    maps, index, grid = pixel_attention(model, image(), (50, 70))
    assert list(maps) == ["A", "A' (GR)", "A'' (LR)"] and grid == (6, 8) and index == (3, 4)
    with torch.no_grad():
        out = block(inputs.x, inputs.class_map) - inputs.x  # γ = 1: the attention output Σ_j A''[i, j] v_j
        value = block.value(inputs.x)
    torch.testing.assert_close(weighted_sum(maps["A'' (LR)"], value), out[:, :, 3, 4], rtol=1e-5, atol=1e-6)
    assert maps["A"].sum().item() == pytest.approx(1.0)
    assert (maps["A' (GR)"] <= maps["A"]).all()  # the gate is a sigmoid < 1


def test_nl_and_apnb_maps_are_their_blocks_attention():
    nl = tiny_model("nl_r50")
    block = find_attention_block(nl)
    assert isinstance(block, PositionAttention)
    inputs = capture_block_inputs(nl, block, image(1))
    maps, index, _ = pixel_attention(nl, image(1), (10, 120))
    with torch.no_grad():
        out = block(inputs.x) - inputs.x
        value = block.value(inputs.x)
    torch.testing.assert_close(weighted_sum(maps["attention"], value), out[:, :, index[0], index[1]])

    ann = tiny_model("ann_apnb_r50")
    block = find_attention_block(ann)
    assert isinstance(block, APNB)
    inputs = capture_block_inputs(ann, block, image(2))
    maps, index, grid = pixel_attention(ann, image(2), (95, 0))
    assert grid == (H // 8, W // 8) and index == (grid[0] - 1, 0)
    (row,) = maps.values()
    with torch.no_grad():
        key, value = block.key(inputs.x), block.value(inputs.x)
        out = asymmetric_attention(key, key, value, block.pool_sizes, block.pool_mode)  # (1, Cv, h, w)
    torch.testing.assert_close(weighted_sum(row, value), out[:, :, index[0], index[1]], rtol=1e-5, atol=1e-6)


def test_criss_cross_maps_follow_both_passes():
    model = tiny_model("ccnet_r50")
    block = find_attention_block(model)
    inputs = capture_block_inputs(model, block, image(3))
    maps, index, _ = pixel_attention(model, image(3), (40, 40))
    assert list(maps) == ["pass 1", "pass 2"]
    x = inputs.x
    with torch.no_grad():
        for row in maps.values():
            q, k, v = block.query(x), block.key(x), block.value(x)
            out = criss_cross_attention(q, k, v)
            torch.testing.assert_close(weighted_sum(row, v), out[:, :, index[0], index[1]], rtol=1e-5, atol=1e-6)
            x = block.gamma * out + x


def test_grid_index_maps_image_pixels_to_cells():
    assert grid_index((0, 0), (96, 128), (6, 8)) == (0, 0)
    assert grid_index((95, 127), (96, 128), (6, 8)) == (5, 7)
    assert grid_index((16, 15), (96, 128), (6, 8)) == (1, 0)
    with pytest.raises(ValueError, match="outside the 96 x 128 image"):
        grid_index((96, 0), (96, 128), (6, 8))


# ---------------------------------------------------------------------------------------------------- CLI


def write_model(tmp_path: Path, name: str) -> tuple[Path, Path]:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": name, "options": MODELS[name]},
        "data": {"dataset": "cityscapes"},
        "train": {"device": "cpu"},
    }))
    checkpoint = tmp_path / f"{name}.pt"
    save_checkpoint(
        {
            "model": tiny_model(name).state_dict(),
            "model_name": name,
            "num_classes": K,
            "class_names": [f"class_{k}" for k in range(K)],
            "config": load_config(recipe).to_dict(),
            "iteration": 0,
        },
        checkpoint,
    )
    return recipe, checkpoint


def write_image(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size  # (width, height)


def test_viz_attention_draws_the_image_and_three_maps(tmp_path):
    recipe, checkpoint = write_model(tmp_path, "denoised_nl_r18")
    img = write_image(tmp_path / "a.png", 0)
    out = tmp_path / "figs" / "attention.png"
    argv = ["viz", "attention", str(recipe), "--checkpoint", str(checkpoint), "--image", str(img),
            "--pixel", "50,70", "--out", str(out)]
    assert cli_main(argv) == 0
    assert png_size(out) == (4 * W + 3 * GAP_PX, TITLE_PX + H)
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert (picture[TITLE_PX + 50, 70] == (0, 255, 0)).all()  # the green cross on the input panel
    # maps were drawn over the image, and Local Retention changed the map (untrained: GR only rescales A)
    panels = [picture[TITLE_PX:, i * (W + GAP_PX) : i * (W + GAP_PX) + W].astype(int) for i in range(4)]
    assert np.abs(panels[1] - panels[0]).mean() > 10 and np.abs(panels[3] - panels[2]).mean() > 1


def test_viz_attention_refuses_a_pixel_outside_the_image(tmp_path, capsys):
    recipe, checkpoint = write_model(tmp_path, "denoised_nl_r18")
    img = write_image(tmp_path / "a.png", 0)
    argv = ["viz", "attention", str(recipe), "--checkpoint", str(checkpoint), "--image", str(img), "--pixel", "96,0",
            "--device", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "outside the 96 x 128 image" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="outside the 96 x 128 image"):  # the library call, plain values
        viz_attention(str(recipe), checkpoint, img, (0, 128), device="cpu")


def test_viz_predictions_grid(tmp_path):
    recipe, checkpoint = write_model(tmp_path, "ann_apnb_r50")
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "x.png", 1)
    write_image(folder / "y.jpg", 2)
    out = tmp_path / "pred.png"
    argv = ["viz", "predictions", str(recipe), "--checkpoint", str(checkpoint), "--images", str(folder),
            "--out", str(out)]
    assert cli_main(argv) == 0
    assert png_size(out) == (3 * W + 2 * GAP_PX, TITLE_PX + 2 * H + GAP_PX)


class _Oracle(nn.Module):
    """Predicts class (x + y) mod K at every pixel."""

    def forward(self, x):
        h, w = x.shape[-2:]
        classes = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % K
        return {"out": nn.functional.one_hot(classes, K).permute(2, 0, 1)[None].float().expand(x.shape[0], -1, -1, -1)}


class _Labels(torch.utils.data.Dataset):
    classes = tuple(f"class_{k}" for k in range(K))
    ignore_index = 255

    def __len__(self):
        return 2

    def __getitem__(self, i):
        label = torch.full((4, 6), i, dtype=torch.int64)
        label[0, 0] = 255
        return {"image": torch.zeros(3, 4, 6), "label": label, "name": f"img{i}"}


def test_eval_json_confusion_matrix_and_its_picture(tmp_path):
    metrics = evaluate(_Oracle(), _Labels(), EvalConfig(), device="cpu", num_classes=K, progress=False)
    matrix = np.array(metrics["confusion_matrix"])
    expected = np.zeros((K, K), dtype=int)
    for i in range(2):
        for y in range(4):
            for x in range(6):
                if (y, x) != (0, 0):
                    expected[i, (y + x) % K] += 1
    assert (matrix == expected).all()
    path = tmp_path / "val.json"
    path.write_text(json.dumps({**metrics, "per_class_iou": {k: None for k in metrics["per_class_iou"]},
                                "per_class_acc": {}, "mIoU": metrics["mIoU"], "recipe": "r", "split": "val"}))
    out = tmp_path / "confusion.png"
    assert cli_main(["viz", "confusion", "--eval-json", str(path), "--out", str(out)]) == 0
    side = round(confusion_figsize(K)[0] * DPI)
    assert png_size(out) == (side, side)


def test_viz_confusion_without_a_matrix_says_how_to_get_one(tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"mIoU": 50.0}))
    assert cli_main(["viz", "confusion", "--eval-json", str(path), "--out", str(tmp_path / "c.png")]) == 2
    assert "no 'confusion_matrix'" in capsys.readouterr().err


def test_viz_curves(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    lines = [{"kind": "train", "iter": i, "loss_total": 2 / i, "loss_main": 1.5 / i, "lr": 0.01 * (1 - i / 10)}
             for i in range(1, 10)]
    lines.insert(4, {"kind": "train", "iter": 3, "loss_total": 9.0, "lr": 0.0})  # a resumed run repeats iter 3
    lines += [{"kind": "val", "iter": 5, "mIoU": 30.0}, {"kind": "val", "iter": 9, "mIoU": 41.0}]
    (work / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = tmp_path / "curves.png"
    assert cli_main(["viz", "curves", str(work), "--out", str(out)]) == 0
    assert png_size(out) == (round(CURVES_FIGSIZE[0] * DPI), round(CURVES_FIGSIZE[1] * DPI))
    assert viz_curves(work, tmp_path / "again.png") == tmp_path / "again.png"  # the library call, plain paths
    assert cli_main(["viz", "curves", str(tmp_path), "--out", str(out)]) == 2  # no metrics.jsonl: one-line error


@pytest.mark.parametrize("target", ["curves", "confusion"])
def test_missing_matplotlib_exits_2_with_the_install_hint(tmp_path, monkeypatch, capsys, target):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    argv = [str(tmp_path), "--out", "x.png"] if target == "curves" else ["--eval-json", "x.json", "--out", "x.png"]
    assert cli_main(["viz", target, *argv]) == 2
    assert "nlseg viz: error: this picture needs matplotlib: pip install 'nlseg[viz]'" in capsys.readouterr().err
