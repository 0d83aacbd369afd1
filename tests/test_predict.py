"""``nlseg predict`` as a user runs it: never over an input, every input kept, bad files skipped, big photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import nlseg
from nlseg.cli import main
from nlseg.config import EvalConfig, load_config
from nlseg.data import Cityscapes
from nlseg.engine.checkpoint import save_checkpoint
from nlseg.engine.inference import Segmenter
from nlseg.engine.predict import estimate_peak_memory, plan_outputs

TINY_MODEL = {"backbone_width": 8, "head_channels": 16}
WHOLE = ["--set", "eval.mode=whole", "eval.flip=false"]


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """A Cityscapes recipe for a small fcn_r18 and a lean checkpoint of it (weights, names, config: no optimizer)."""
    import yaml

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": "fcn_r18", "options": TINY_MODEL},
        "data": {"dataset": "cityscapes", "root": str(tmp_path / "unused")},
    }))
    torch.manual_seed(0)
    model = nlseg.create_model("fcn_r18", num_classes=19, **TINY_MODEL).eval()
    checkpoint = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "fcn_r18", "num_classes": 19,
                     "class_names": list(Cityscapes.classes), "config": load_config(recipe).to_dict(),
                     "iteration": 4, "metrics": {"mIoU": 1.0}}, checkpoint)
    return recipe, checkpoint


def _segmenter(checkpoint: Path) -> Segmenter:
    return Segmenter.from_checkpoint(checkpoint, eval_cfg=EvalConfig())


def _photo(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _predict(tiny: tuple[Path, Path], *args: str) -> int:
    recipe, checkpoint = tiny
    return main(["predict", str(recipe), "--checkpoint", str(checkpoint), "--device", "cpu", *WHOLE, *args])


def _one_error_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("nlseg predict: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_predict_refuses_to_write_over_its_inputs(tiny, tmp_path: Path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, stem in enumerate(("a", "b")):
        _photo(images / f"{stem}.png", 12, 16, seed=i)
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    assert _predict(tiny, "--input", str(images), "--output", str(images)) == 2
    _one_error_line(capsys, str(images / "a.png"), "input")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before  # nothing written, nothing replaced


def test_images_sharing_a_stem_all_survive_under_their_extension(tiny, tmp_path: Path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    photos = {"a.jpg": _photo(images / "a.jpg", 12, 16, seed=0), "a.png": _photo(images / "a.png", 14, 10, seed=1),
              "b.png": _photo(images / "b.png", 9, 9, seed=2)}
    assert _predict(tiny, "--input", str(images), "--output", str(out)) == 0
    captured = capsys.readouterr()
    names = {"a.jpg": "a_jpg", "a.png": "a_png", "b.png": "b"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}{kind}.png" for name in names.values() for kind in ("", "_color", "_overlay")
    )
    assert "9 files" in captured.out and "predicted 3 of 3" in captured.out
    assert "a.jpg -> a_jpg.png" in captured.err and "a.png -> a_png.png" in captured.err
    segmenter = _segmenter(tiny[1])
    for source, name in names.items():
        index = np.array(Image.open(out / f"{name}.png"))
        assert index.shape == photos[source].shape[:2]
        assert np.array_equal(index, segmenter.predict(images / source).numpy())


def test_output_names_never_collide():
    plan = plan_outputs([Path("d/a.jpg"), Path("d/a.png"), Path("d/A.PNG"), Path("e/b.png"), Path("d/b_color.png"),
                         Path("d/a_jpg.png")], "out")
    assert [files.index.name for files in plan] == [
        "a_jpg.png", "a_png.png", "A_PNG_2.png", "b.png", "b_color_2.png", "a_jpg_2.png"
    ]
    outputs = [path.name.casefold() for files in plan for path in files.outputs]
    assert len(set(outputs)) == len(outputs) == 18


def test_unreadable_images_are_reported_and_skipped(tiny, tmp_path: Path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    _photo(images / "a.png", 12, 16, seed=0)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _photo(images / "c.png", 10, 10, seed=1)
    (images / "notes.txt").write_text("not an image")
    (images / ".DS_Store").write_bytes(b"\0\0")
    assert _predict(tiny, "--input", str(images), "--output", str(out)) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "broken.png" in skipped[0] and "corrupt" in skipped[0]
    assert "notes.txt" not in " ".join(skipped)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{kind}.png" for stem in ("a", "c") for kind in ("", "_color", "_overlay")
    )
    assert "predicted 2 of 3 image(s): 6 files" in captured.out and "1 failed" in captured.out
    # --strict stops at the first: a (sorted before it) is written, c is not
    strict = tmp_path / "strict"
    assert _predict(tiny, "--input", str(images), "--output", str(strict), "--strict") == 2
    _one_error_line(capsys, "broken.png")
    assert sorted(p.name for p in strict.iterdir()) == ["a.png", "a_color.png", "a_overlay.png"]


def test_exif_orientation_is_applied_before_predicting(tiny, tmp_path: Path):
    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait: rotate 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    assert _predict(tiny, "--input", str(tmp_path / "phone.jpg"), "--output", str(out)) == 0
    index = Image.open(out / "phone.png")
    assert index.size == (20, 30)  # (width, height) as shown
    upright = np.array(Image.open(tmp_path / "phone.jpg").transpose(Image.Transpose.ROTATE_270))  # (30, 20, 3)
    assert np.array_equal(np.array(index), _segmenter(tiny[1]).predict(upright).numpy())


def test_16_bit_png_is_predicted_from_its_real_values(tiny, tmp_path: Path):
    deep = (np.random.default_rng(4).integers(0, 65536, (12, 16))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = tmp_path / "out"
    assert _predict(tiny, "--input", str(tmp_path / "deep.png"), "--output", str(out)) == 0
    grey = torch.from_numpy(deep.astype(np.float32) / 65535).expand(3, 12, 16)
    pred = _segmenter(tiny[1]).predict(grey.clone())
    assert np.array_equal(np.array(Image.open(out / "deep.png")), pred.numpy())
    # the overlay averages the photo (the 16-bit values brought to 8 bits) with the class colours
    photo = np.round(deep.astype(np.float64) / 65535 * 255).astype(np.uint16)[..., None]
    colour = np.array(Image.open(out / "deep_color.png")).astype(np.uint16)
    assert np.array_equal(np.array(Image.open(out / "deep_overlay.png")), ((photo + colour) // 2).astype(np.uint8))


def test_max_size_predicts_downscaled_and_returns_the_full_size(tiny, tmp_path: Path):
    rgb = _photo(tmp_path / "big.png", 40, 60, seed=5)
    out = tmp_path / "out"
    assert _predict(tiny, "--input", str(tmp_path / "big.png"), "--output", str(out), "--max-size", "24") == 0
    segmenter = _segmenter(tiny[1])
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    small = F.interpolate(image[None], size=(16, 24), mode="bilinear", align_corners=False, antialias=True)[0]
    coarse = segmenter.predict(small.clamp(0, 1)).numpy()  # (16, 24)
    index = np.array(Image.open(out / "big.png"))
    assert index.shape == (40, 60)
    # nearest neighbour, x 2.5: pixel (y, x) takes the coarse pixel whose centre is nearest, floor((y + 0.5) / 2.5)
    rows, cols = (np.arange(40) + 0.5) // 2.5, (np.arange(60) + 0.5) // 2.5
    assert np.array_equal(index, coarse[rows.astype(int)][:, cols.astype(int)])
    assert len(np.unique(index)) > 1  # a prediction that can tell a wrong resize from a right one
    with pytest.raises(SystemExit):
        _predict(tiny, "--input", str(tmp_path / "big.png"), "--output", str(out), "--max-size", "0")


def test_a_large_image_gets_one_warning_with_the_expected_memory(tiny, tmp_path: Path, capsys, monkeypatch):
    import nlseg.engine.predict as predict_module

    monkeypatch.setattr(predict_module, "LARGE_IMAGE_PIXELS", 1000)
    images = tmp_path / "images"
    images.mkdir()
    _photo(images / "a.png", 40, 60, seed=0)
    _photo(images / "b.png", 50, 50, seed=1)
    assert _predict(tiny, "--input", str(images), "--output", str(tmp_path / "out")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert "a.png" in warnings[0] and "60x40" in warnings[0] and "GiB" in warnings[0]
    assert "--max-size" in warnings[0]
    assert _predict(tiny, "--input", str(images), "--output", str(tmp_path / "out2"), "--max-size", "64") == 0
    assert "warning:" not in capsys.readouterr().err


@pytest.mark.parametrize("eval_cfg", [EvalConfig(), EvalConfig(mode="slide", crop_size=[64, 64], stride=[48, 48])])
def test_peak_memory_estimate_is_within_twice_the_measured_peak(tiny, eval_cfg: EvalConfig):
    from nlseg.engine.memory import PeakMemory

    segmenter = Segmenter.from_checkpoint(tiny[1], eval_cfg=eval_cfg)
    estimate = estimate_peak_memory(segmenter, 480, 640)
    with PeakMemory("cpu") as memory:
        segmenter.predict(torch.rand(3, 480, 640))
    assert memory.peak_bytes / 2 <= estimate <= 2 * memory.peak_bytes, (estimate, memory.peak_bytes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_one_line(tiny, tmp_path: Path, capsys):
    _photo(tmp_path / "a.png", 8, 8, seed=0)
    recipe, checkpoint = tiny
    assert main(["predict", str(recipe), "--checkpoint", str(checkpoint), "--input", str(tmp_path / "a.png"),
                 "--output", str(tmp_path / "out"), "--device", "cuda"]) == 2
    _one_error_line(capsys, "'cuda'", "no CUDA device")


@pytest.mark.parametrize("kind", ["text", "jpeg", "folder", "missing"])
def test_a_checkpoint_that_is_not_one_is_one_line(tiny, tmp_path: Path, capsys, kind: str):
    recipe, _ = tiny
    bad = tmp_path / f"bad_{kind}"
    if kind == "text":
        bad.write_text("model: fcn\n")
    elif kind == "jpeg":
        Image.new("RGB", (8, 8)).save(bad, format="JPEG")
    elif kind == "folder":
        bad.mkdir()
    _photo(tmp_path / "a.png", 8, 8, seed=0)
    assert main(["predict", str(recipe), "--checkpoint", str(bad), "--input", str(tmp_path / "a.png"),
                 "--output", str(tmp_path / "out"), "--device", "cpu"]) == 2
    line = _one_error_line(capsys, str(bad))
    if kind == "folder":
        assert "folder" in line and "best.pt" in line


def test_output_that_is_a_file_is_refused_before_the_model_is_read(tiny, tmp_path: Path, capsys):
    recipe, _ = tiny
    _photo(tmp_path / "a.png", 8, 8, seed=0)
    (tmp_path / "taken").write_text("a file")
    assert main(["predict", str(recipe), "--checkpoint", str(tmp_path / "missing.pt"), "--input",
                 str(tmp_path / "a.png"), "--output", str(tmp_path / "taken")]) == 2
    _one_error_line(capsys, "--output", "taken", "is a file")


