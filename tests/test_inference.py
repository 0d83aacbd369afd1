"""Inference modes against hand-built references: sliding windows, padding, scales, flips, the Segmenter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nlseg.config import EvalConfig
from nlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from nlseg.engine.inference import Segmenter, dataset_palette, predict_probs

K = 5


class ConvNet(nn.Module):
    """One convolution 3 -> K with zero padding: a model that obeys the ``{"out": ...}`` contract.

    kernel 1: translation- and flip-equivariant; kernel 3: neither (borders, random kernel) unless
    ``symmetric``, which mirrors the kernel so the model is flip-equivariant.
    """

    def __init__(self, kernel: int = 3, *, symmetric: bool = False, align_corners: bool | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, K, kernel, padding=kernel // 2)
        nn.init.normal_(self.conv.weight, std=0.5)
        if symmetric:
            with torch.no_grad():
                self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)
        if align_corners is not None:
            self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        return {"out": self.conv(x), "aux": []}


def _probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)["out"].softmax(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_whole_single_scale_is_the_softmax_of_the_model():
    model, x = ConvNet(), torch.randn(2, 3, 9, 13)
    probs = predict_probs(model, x, num_classes=K)
    assert torch.equal(probs, _probs(model, x))
    assert torch.equal(predict_probs(model, x, scales=(1.0,), flip=False, num_classes=K), probs)
    assert torch.allclose(probs.sum(1), torch.ones(2, 9, 13))


def test_slide_with_one_window_the_size_of_the_image_equals_whole_exactly():
    model, x = ConvNet(), torch.randn(2, 3, 10, 14)
    whole = predict_probs(model, x, num_classes=K)
    assert torch.equal(predict_probs(model, x, mode="slide", crop_size=(10, 14), stride=(5, 7), num_classes=K), whole)


def test_slide_with_overlapping_windows_on_a_translation_equivariant_model_equals_whole():
    model, x = ConvNet(kernel=1), torch.randn(1, 3, 20, 27)
    whole = predict_probs(model, x, num_classes=K)
    slide = predict_probs(model, x, mode="slide", crop_size=(8, 10), stride=(5, 6), num_classes=K)
    assert torch.allclose(slide, whole, atol=1e-6)


def test_slide_averages_the_logits_of_hand_placed_windows():
    # H = 11, window 6, stride 4: windows start at rows 0, 4 and 11 - 6 = 5 (the last one shifted to the
    # border); W = 9, window 5, stride 5: columns 0 and 9 - 5 = 4. A 3x3 model sees each window's own borders.
    model, x = ConvNet(), torch.randn(2, 3, 11, 9)
    total, count = torch.zeros(2, K, 11, 9), torch.zeros(11, 9)
    for y in (0, 4, 5):
        for x0 in (0, 4):
            total[:, :, y : y + 6, x0 : x0 + 5] += model(x[:, :, y : y + 6, x0 : x0 + 5])["out"]
            count[y : y + 6, x0 : x0 + 5] += 1
    assert count[5, 4] == 6 and count[0, 0] == 1 and count[10, 8] == 1
    expected = (total / count).softmax(1)
    slide = predict_probs(model, x, mode="slide", crop_size=(6, 5), stride=(4, 5), num_classes=K)
    assert torch.allclose(slide, expected, atol=1e-6)


def test_slide_default_stride_is_two_thirds_of_the_window():
    model, x = ConvNet(), torch.randn(1, 3, 7, 7)
    # window 6, default stride ceil(4) = 4: rows and columns start at 0 and 7 - 6 = 1
    total, count = torch.zeros(1, K, 7, 7), torch.zeros(7, 7)
    for y in (0, 1):
        for x0 in (0, 1):
            total[:, :, y : y + 6, x0 : x0 + 6] += model(x[:, :, y : y + 6, x0 : x0 + 6])["out"]
            count[y : y + 6, x0 : x0 + 6] += 1
    slide = predict_probs(model, x, mode="slide", crop_size=6, num_classes=K)
    assert torch.allclose(slide, (total / count).softmax(1), atol=1e-6)


def test_image_smaller_than_the_window_is_padded_and_cropped_back():
    model, x = ConvNet(), torch.randn(1, 3, 5, 6)
    expected = model(F.pad(x, (0, 3, 0, 4)))["out"][:, :, :5, :6].softmax(1)  # zero padding bottom/right to 9x9
    slide = predict_probs(model, x, mode="slide", crop_size=9, stride=3, num_classes=K)
    assert slide.shape == (1, K, 5, 6)
    assert torch.allclose(slide, expected, atol=1e-6)
    # taller than the window but narrower: padded in width only, two windows down
    x = torch.randn(1, 3, 12, 4)
    padded = F.pad(x, (0, 2, 0, 0))  # (1, 3, 12, 6)
    total = torch.zeros(1, K, 12, 6)
    total[:, :, :8] += model(padded[:, :, :8])["out"]
    total[:, :, 4:] += model(padded[:, :, 4:])["out"]
    total[:, :, 4:8] /= 2
    slide = predict_probs(model, x, mode="slide", crop_size=(8, 6), stride=(4, 6), num_classes=K)
    assert torch.allclose(slide, total[:, :, :, :4].softmax(1), atol=1e-6)
    one_by_one = ConvNet(kernel=1)
    assert torch.allclose(
        predict_probs(one_by_one, x, mode="slide", crop_size=16, num_classes=K),
        predict_probs(one_by_one, x, num_classes=K),
        atol=1e-6,
    )


def test_flip_on_a_flip_equivariant_model_changes_nothing():
    model, x = ConvNet(symmetric=True), torch.randn(2, 3, 8, 11)
    assert torch.allclose(
        predict_probs(model, x, flip=True, num_classes=K), predict_probs(model, x, num_classes=K), atol=1e-6
    )


def test_flip_averages_the_mirrored_prediction():
    model, x = ConvNet(), torch.randn(2, 3, 8, 11)
    expected = (_probs(model, x) + _probs(model, x.flip(-1)).flip(-1)) / 2
    flipped = predict_probs(model, x, flip=True, num_classes=K)
    assert torch.allclose(flipped, expected, atol=1e-6)
    assert not torch.allclose(flipped, _probs(model, x), atol=1e-3)  # the model is not flip-equivariant


@pytest.mark.parametrize("align_corners", [False, True])
def test_multi_scale_averages_probabilities_resized_back(align_corners: bool):
    model, x = ConvNet(align_corners=align_corners), torch.randn(2, 3, 12, 10)
    scales = (0.5, 1.0, 1.75)
    views = []
    for s, size in zip(scales, [(6, 5), (12, 10), (21, 18)]):
        scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners) if s != 1.0 else x
        for mirror in (False, True):
            view = scaled.flip(-1) if mirror else scaled
            logits = model(view)["out"]
            logits = logits.flip(-1) if mirror else logits
            views.append(F.interpolate(logits, size=(12, 10), mode="bilinear", align_corners=align_corners).softmax(1))
    probs = predict_probs(model, x, scales=scales, flip=True, num_classes=K)
    assert probs.shape == (2, K, 12, 10)
    assert torch.allclose(probs, torch.stack(views).mean(0), atol=1e-6)
    # the model's align_corners attribute is followed unless overridden
    other = predict_probs(model, x, scales=scales, flip=True, num_classes=K, align_corners=not align_corners)
    assert not torch.allclose(other, probs, atol=1e-4)


def test_multi_scale_slide_uses_windows_at_every_scale():
    model, x = ConvNet(kernel=1), torch.randn(1, 3, 16, 20)
    whole = predict_probs(model, x, scales=(0.75, 1.5), num_classes=K)
    slide = predict_probs(model, x, mode="slide", crop_size=(7, 9), stride=(4, 5), scales=(0.75, 1.5), num_classes=K)
    assert torch.allclose(slide, whole, atol=1e-6)


def test_size_resizes_the_input_and_the_result_back():
    model, x = ConvNet(), torch.randn(1, 3, 12, 10)
    logits = model(F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False))["out"]
    expected = F.interpolate(logits, size=(12, 10), mode="bilinear", align_corners=False).softmax(1)
    assert torch.allclose(predict_probs(model, x, size=8, num_classes=K), expected, atol=1e-6)


def test_bad_settings_raise_clear_errors():
    model, x = ConvNet(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="whole, slide"):
        predict_probs(model, x, mode="sliding", num_classes=K)
    with pytest.raises(ValueError, match="crop_size"):
        predict_probs(model, x, mode="slide", num_classes=K)
    with pytest.raises(ValueError, match="gaps"):
        predict_probs(model, x, mode="slide", crop_size=4, stride=5, num_classes=K)
    with pytest.raises(ValueError, match=r"expected \(1, 7, 8, 8\)"):
        predict_probs(model, x, num_classes=7)
    with pytest.raises(ValueError, match="scales"):
        predict_probs(model, x, scales=(), num_classes=K)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        predict_probs(model, x[0], num_classes=K)


# --- Segmenter --------------------------------------------------------------------------------


class Recorder(ConvNet):
    """ConvNet that remembers its last input."""

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        self.seen = x
        return super().forward(x)


def _segmenter(model: nn.Module, eval_cfg: EvalConfig | None = None) -> Segmenter:
    names = [f"c{k}" for k in range(K)]
    return Segmenter(model, class_names=names, palette=dataset_palette("cityscapes", 19)[:K], eval_cfg=eval_cfg)


def test_segmenter_accepts_every_image_type_and_normalises_like_the_data_pipeline(tmp_path: Path):
    rgb = np.random.default_rng(0).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    model = Recorder()
    segmenter = _segmenter(model)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    normalised = (tensor - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    preds = []
    for image in (str(path), path, Image.open(path), rgb, tensor):
        pred = segmenter.predict(image)
        assert torch.allclose(model.seen[0], normalised, atol=1e-6)
        preds.append(pred)
    assert preds[0].dtype == torch.int64 and preds[0].shape == (9, 12)
    assert all(torch.equal(p, preds[0]) for p in preds)
    assert torch.equal(preds[0], model(normalised[None])["out"][0].argmax(0))
    proba = segmenter.predict_proba(rgb)
    assert proba.shape == (K, 9, 12) and torch.allclose(proba.sum(0), torch.ones(9, 12))


def test_segmenter_uses_its_inference_settings():
    model = ConvNet()
    rgb = torch.rand(3, 10, 13)
    cfg = EvalConfig(mode="slide", crop_size=[6, 6], stride=[4, 4], scales=[0.5, 1.0], flip=True)
    normalised = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = predict_probs(
        model, normalised[None], mode="slide", crop_size=6, stride=4, scales=(0.5, 1.0), flip=True, num_classes=K
    )[0]
    assert torch.allclose(_segmenter(model, cfg).predict_proba(rgb), expected, atol=1e-6)


def test_segmenter_refuses_images_it_cannot_read(tmp_path: Path):
    segmenter = _segmenter(ConvNet())
    with pytest.raises(ValueError, match="uint8"):
        segmenter.predict(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        segmenter.predict(torch.zeros(4, 4, 3))
    with pytest.raises(TypeError, match="PIL image"):
        segmenter.predict(42)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    from nlseg.data import DatasetError

    with pytest.raises(DatasetError, match="broken.png"):
        segmenter.predict(bad)


def test_segmenter_index_and_colour_images():
    segmenter = _segmenter(ConvNet())
    pred = torch.tensor([[0, 1, 2], [3, 4, 0]])
    index = segmenter.index_image(pred)
    assert index.mode == "P" and np.array_equal(np.array(index), pred.numpy())
    assert index.getpalette()[: 3 * K] == [c for colour in segmenter.palette for c in colour]
    colour = segmenter.colorize(pred)
    assert colour.shape == (2, 3, 3) and tuple(colour[1, 0]) == segmenter.palette[3]


def test_dataset_palette():
    assert dataset_palette("cityscapes", 19)[0] == (128, 64, 128)
    pc59 = dataset_palette("pascal_context", 59)
    from nlseg.data import PascalContext

    assert pc59 == PascalContext.palette[1:]  # the 59-class variant drops background's black
    assert dataset_palette("no_such_set", 3) == [(128, 0, 0), (0, 128, 0), (128, 128, 0)]


# --- checkpoints, Segmenter.from_checkpoint, nlseg predict ----------------------------------------

TINY_MODEL = {"backbone_width": 8, "head_channels": 16}


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> tuple[Path, Path, nn.Module]:
    """A recipe (Cityscapes, a small fcn_r18, slide + flip inference) and a checkpoint of a random model."""
    import yaml

    import nlseg
    from nlseg.config import load_config
    from nlseg.data import Cityscapes
    from nlseg.engine.checkpoint import save_checkpoint

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": "fcn_r18", "options": TINY_MODEL},
        "data": {"dataset": "cityscapes", "root": str(tmp_path / "unused")},
        "train": {"device": "cpu"},
        "eval": {"mode": "slide", "crop_size": [16, 16], "stride": [12, 12], "flip": True},
    }))
    model = nlseg.create_model("fcn_r18", num_classes=19, **TINY_MODEL).eval()
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "fcn_r18", "num_classes": 19,
                     "class_names": list(Cityscapes.classes), "config": load_config(recipe).to_dict()}, checkpoint)
    return recipe, checkpoint, model


def test_segmenter_from_checkpoint_round_trip(tiny_checkpoint: tuple[Path, Path, nn.Module]):
    from nlseg.data import Cityscapes

    _, checkpoint, model = tiny_checkpoint
    segmenter = Segmenter.from_checkpoint(checkpoint)
    assert segmenter.class_names == list(Cityscapes.classes) and segmenter.palette == Cityscapes.palette
    cfg = segmenter.eval_cfg
    assert (cfg.mode, cfg.crop_size, cfg.stride, cfg.flip) == ("slide", [16, 16], [12, 12], True)
    rgb = torch.rand(3, 21, 16)  # two windows down, one across
    normalised = ((rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]
    expected = predict_probs(model, normalised, mode="slide", crop_size=16, stride=12, flip=True, num_classes=19)
    assert torch.allclose(segmenter.predict_proba(rgb), expected[0], atol=1e-5)
    whole = Segmenter.from_checkpoint(checkpoint, eval_cfg=EvalConfig())
    assert torch.equal(whole.predict(rgb), model(normalised)["out"][0].argmax(0))


def test_build_model_from_checkpoint_checks_the_recipe(tiny_checkpoint: tuple[Path, Path, nn.Module], tmp_path: Path):
    from nlseg.config import load_config
    from nlseg.engine.checkpoint import CheckpointError
    from nlseg.engine.inference import build_model_from_checkpoint

    recipe, checkpoint, model = tiny_checkpoint
    cfg = load_config(recipe)
    rebuilt, state = build_model_from_checkpoint(checkpoint, cfg, num_classes=19)
    assert not rebuilt.training and state["model_name"] == "fcn_r18"
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="19 classes, but the data set has 7"):
        build_model_from_checkpoint(checkpoint, cfg, num_classes=7)
    with pytest.raises(CheckpointError, match="'fcn_r18' model, but the recipe builds 'fcn_r50'"):
        build_model_from_checkpoint(checkpoint, load_config(recipe, ["model.name=fcn_r50"]))
    # weights that do not fit the model the checkpoint names
    state["config"]["model"]["options"] = {"backbone_width": 16, "head_channels": 16}
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        build_model_from_checkpoint(tmp_path / "mismatch.pt")


def test_predict_cli_writes_index_colour_and_overlay_pngs(
    tiny_checkpoint: tuple[Path, Path, nn.Module], tmp_path: Path
):
    from nlseg.cli import main
    from nlseg.data import Cityscapes

    recipe, checkpoint, _ = tiny_checkpoint
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a": (20, 30), "b": (17, 25)}
    for stem, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{stem}.png")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    whole = ["--set", "eval.mode=whole", "--set", "eval.flip=false"]
    assert main(["predict", str(recipe), "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out),
                 *whole]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}.png" for stem in sizes for suffix in ("", "_color", "_overlay")
    )
    segmenter = Segmenter.from_checkpoint(checkpoint, eval_cfg=EvalConfig())
    flat_palette = [c for colour in Cityscapes.palette for c in colour]
    for stem, (h, w) in sizes.items():
        photo = np.array(Image.open(images / f"{stem}.png"))
        index = Image.open(out / f"{stem}.png")
        assert index.mode == "P" and index.size == (w, h)
        assert index.getpalette()[: len(flat_palette)] == flat_palette
        pred = np.array(index)
        assert np.array_equal(pred, segmenter.predict(images / f"{stem}.png").numpy())
        colour = np.array(Image.open(out / f"{stem}_color.png"))
        assert colour.shape == (h, w, 3)
        assert np.array_equal(colour, np.asarray(Cityscapes.palette, dtype=np.uint8)[pred])
        overlay = np.array(Image.open(out / f"{stem}_overlay.png"))
        assert np.array_equal(overlay, ((photo.astype(np.uint16) + colour) // 2).astype(np.uint8))
    # a single file works too; a missing input is a one-line error
    single = tmp_path / "single"
    assert main(["predict", str(recipe), "--checkpoint", str(checkpoint), "--input", str(images / "a.png"),
                 "--output", str(single), *whole]) == 0
    assert sorted(p.name for p in single.iterdir()) == ["a.png", "a_color.png", "a_overlay.png"]
    assert main(["predict", str(recipe), "--checkpoint", str(checkpoint), "--input", str(tmp_path / "nothing"),
                 "--output", str(single)]) == 2
