"""evaluate() and ``nlseg eval`` on a tiny Cityscapes-layout set: hand-computed metrics, export, CLI errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nlseg.config import EvalConfig
from nlseg.data import Cityscapes, build_transforms
from nlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from nlseg.engine.evaluate import evaluate, export_values, format_table

K = 19
# train id -> Cityscapes label id (cityscapesScripts helpers/labels.py)
LABEL_ID = dict(enumerate((7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)))


class Oracle(nn.Module):
    """Predicts the train id written into the image's red channel (red = 10 * train id)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        red = x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # (B, H, W), back to 0..1
        train_id = (red * 25.5).round().long().clamp(0, K - 1)  # (B, H, W)
        return {"out": F.one_hot(train_id, K).permute(0, 3, 1, 2).float() * self.scale, "aux": []}


def write_cityscapes(root: Path, split: str, frames: dict[str, tuple[np.ndarray, np.ndarray]], seed: int = 0) -> None:
    """Write ``{frame stem: (predicted train ids, ground-truth label ids)}`` in the official layout.

    The image encodes the prediction for :class:`Oracle`; the ground truth is a ``*_gtFine_labelIds.png``.
    """
    rng = np.random.default_rng(seed)
    for stem, (pred, label_ids) in frames.items():
        city = stem.split("_")[0]
        rgb = rng.integers(0, 256, (*pred.shape, 3), dtype=np.uint8)
        rgb[..., 0] = 10 * pred
        image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        label = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        for path in (image, label):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(image)
        Image.fromarray(label_ids.astype(np.uint8), mode="L").save(label)


# Two 2x4 images. Ground truth in label ids (7 road, 8 sidewalk, 26 car, 0 unlabeled = ignored), predictions
# in train ids (0 road, 1 sidewalk, 13 car, 10 sky, 5 pole, 2 building).
HAND = {
    "frankfurt_000000_000294": (np.array([[0, 1, 1, 1], [13, 0, 5, 13]]), np.array([[7, 7, 8, 8], [26, 26, 0, 0]])),
    "lindau_000001_000019": (np.array([[0, 0, 0, 13], [1, 1, 10, 2]]), np.array([[7, 7, 7, 7], [8, 8, 8, 0]])),
}


@pytest.fixture
def hand_set(tmp_path: Path) -> Cityscapes:
    write_cityscapes(tmp_path / "cityscapes", "val", HAND)
    return Cityscapes(tmp_path / "cityscapes", "val", transform=build_transforms(False))


def test_evaluate_matches_hand_computed_confusion(hand_set: Cityscapes):
    torch.manual_seed(0)
    model = Oracle().train()
    metrics = evaluate(model, hand_set, EvalConfig(), device="cpu", num_classes=K, progress=False)
    assert model.training  # given back in the mode it came in
    # valid pixels: (gt, pred) road: 4 x (0,0), (0,1), (0,13); sidewalk: 4 x (1,1), (1,10); car: (13,13), (13,0).
    # Predictions on ignored pixels (5, 13, 2) count nowhere.
    iou = {"road": 4 / 7, "sidewalk": 4 / 6, "car": 1 / 3, "sky": 0.0}  # sky: predicted once, never in the truth
    acc = {"road": 4 / 6, "sidewalk": 4 / 5, "car": 1 / 2}
    assert metrics["num_images"] == 2
    assert metrics["mIoU"] == pytest.approx(100 * sum(iou.values()) / 4)
    assert metrics["mAcc"] == pytest.approx(100 * sum(acc.values()) / 3)
    assert metrics["aAcc"] == pytest.approx(100 * 9 / 13)
    assert list(metrics["per_class_iou"]) == list(Cityscapes.classes)
    for name in Cityscapes.classes:
        got_iou, got_acc = metrics["per_class_iou"][name], metrics["per_class_acc"][name]
        assert got_iou == pytest.approx(100 * iou[name]) if name in iou else np.isnan(got_iou), name
        assert got_acc == pytest.approx(100 * acc[name]) if name in acc else np.isnan(got_acc), name
    table = format_table(metrics)
    assert "sidewalk" in table and "66.67" in table and "mIoU 39.29" in table


def test_export_writes_label_ids_named_after_the_image(hand_set: Cityscapes, tmp_path: Path):
    out = tmp_path / "export"
    evaluate(Oracle(), hand_set, EvalConfig(), device="cpu", num_classes=K, export_dir=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}_leftImg8bit.png" for stem in sorted(HAND)]
    for stem, (pred, _) in HAND.items():
        img = Image.open(out / f"{stem}_leftImg8bit.png")
        assert img.mode == "L"
        assert np.array_equal(np.array(img), np.vectorize(LABEL_ID.get)(pred))


def test_export_formats():
    pred = torch.tensor([[0, 1], [18, 13]])
    assert np.array_equal(export_values(pred, "cityscapes"), [[7, 8], [33, 26]])
    assert np.array_equal(export_values(pred, "ade20k"), [[1, 2], [19, 14]])
    assert np.array_equal(export_values(pred, "train_id"), [[0, 1], [18, 13]])
    assert export_values(pred, "train_id").dtype == np.uint8
    with pytest.raises(ValueError, match="cityscapes, ade20k, train_id"):
        export_values(pred, "voc")
    with pytest.raises(ValueError, match="0..255"):
        export_values(torch.tensor([255]), "ade20k")


class Halves(nn.Module):
    """Class 0 on the left half of any input, class 1 on the right half (resolution-independent)."""

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        b, _, h, w = x.shape
        right = (torch.arange(w) >= w // 2).float().expand(b, h, w)  # (B, H, W)
        return {"out": torch.stack([1 - right, right], 1) * 5, "aux": []}


def test_eval_size_predicts_small_and_scores_at_the_label_size(tmp_path: Path):
    label = np.full((8, 16), 7)
    label[:, 8:] = 8
    write_cityscapes(tmp_path / "cs", "val", {"aachen_000000_000019": (np.zeros((8, 16), dtype=np.int64), label)})
    dataset = Cityscapes(tmp_path / "cs", "val", transform=build_transforms(False, eval_size=(4, 8)))
    assert dataset[0]["image"].shape == (3, 4, 8) and dataset[0]["label"].shape == (8, 16)
    metrics = evaluate(Halves(), dataset, EvalConfig(size=[4, 8]), device="cpu", num_classes=2, progress=False)
    assert metrics["aAcc"] == 100 and metrics["mIoU"] == 100


def test_unlabelled_split_is_only_exported(tmp_path: Path):
    write_cityscapes(tmp_path / "cs", "test", {"berlin_000000_000019": (np.full((4, 4), 13), np.zeros((4, 4)))})
    dataset = Cityscapes(tmp_path / "cs", "test", transform=build_transforms(False))
    metrics = evaluate(Oracle(), dataset, EvalConfig(), device="cpu", num_classes=K, export_dir=tmp_path / "e",
                       progress=False)
    assert metrics["num_images"] == 0 and np.isnan(metrics["mIoU"])
    exported = np.array(Image.open(tmp_path / "e" / "berlin_000000_000019_leftImg8bit.png"))
    assert np.array_equal(exported, np.full((4, 4), 26))  # car: label id 26


def _eval_rank(rank: int, init: str, root: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    dataset = Cityscapes(root, "val", transform=build_transforms(False))
    metrics = evaluate(Oracle(), dataset, EvalConfig(), device="cpu", num_classes=K, export_dir=out, progress=False)
    torch.save(metrics, f"{out}/metrics_{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_shards_and_reduces(tmp_path: Path):
    rng = np.random.default_rng(1)
    frames = {
        f"ulm_000000_00000{i}": (rng.integers(0, K, (6, 10)), rng.choice([0, 7, 8, 11, 21, 23, 26], (6, 10)))
        for i in range(3)
    }
    write_cityscapes(tmp_path / "cs", "val", frames)
    single = evaluate(Oracle(), Cityscapes(tmp_path / "cs", "val", transform=build_transforms(False)), EvalConfig(),
                      device="cpu", num_classes=K, progress=False)
    out = tmp_path / "out"
    out.mkdir()
    torch.multiprocessing.spawn(_eval_rank, args=(str(tmp_path / "init"), str(tmp_path / "cs"), str(out)), nprocs=2)
    for rank in (0, 1):
        metrics = torch.load(out / f"metrics_{rank}.pt", weights_only=False)
        assert metrics["num_images"] == 3
        assert metrics["mIoU"] == pytest.approx(single["mIoU"]) and metrics["aAcc"] == pytest.approx(single["aAcc"])
    assert len(list(out.glob("*_leftImg8bit.png"))) == 3  # rank 0 wrote two, rank 1 one


# --- nlseg eval ---------------------------------------------------------------------------------

TINY_MODEL = {"backbone_width": 8, "head_channels": 16}


def write_recipe(path: Path, root: Path, model: str = "fcn_r18", options: dict | None = None) -> Path:
    import yaml

    recipe = {
        "name": "tiny_cityscapes",
        "model": {"name": model, "options": TINY_MODEL if options is None else options},
        "data": {"dataset": "cityscapes", "root": str(root), "num_workers": 0},
        "train": {"device": "cpu"},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_checkpoint(path: Path, model: nn.Module, name: str, recipe: Path, num_classes: int = K) -> Path:
    from nlseg.config import load_config
    from nlseg.engine.checkpoint import save_checkpoint

    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_name": name,
            "num_classes": num_classes,
            "class_names": list(Cityscapes.classes)[:num_classes],
            "config": load_config(recipe).to_dict(),
            "iteration": 0,
        },
        path,
    )
    return path


def random_frames(
    seed: int, names: list[str], size: tuple[int, int] = (16, 32)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random predictions (train ids) and ground truth over every stored label id 0..33."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, K, size), rng.integers(0, 34, size)) for name in names}


@pytest.fixture
def tiny_eval(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny Cityscapes val split, its recipe and a checkpoint of a small random fcn_r18."""
    import nlseg

    root = tmp_path / "cityscapes"
    write_cityscapes(root, "val", random_frames(0, ["frankfurt_000000_000294", "munster_000002_000019"]))
    recipe = write_recipe(tmp_path / "tiny.yaml", root)
    torch.manual_seed(0)
    model = nlseg.create_model("fcn_r18", num_classes=K, **TINY_MODEL)
    return recipe, write_checkpoint(tmp_path / "tiny.pt", model, "fcn_r18", recipe)


def test_eval_cli_writes_json_and_prints_the_table(tiny_eval: tuple[Path, Path], tmp_path: Path, capsys):
    import json

    from nlseg.cli import main
    from nlseg.engine.inference import build_model_from_checkpoint

    recipe, checkpoint = tiny_eval
    out = tmp_path / "metrics" / "val.json"
    assert main(["eval", str(recipe), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"mIoU", "mAcc", "aAcc", "per_class_iou", "per_class_acc", "num_images"} <= result.keys()
    assert list(result["per_class_iou"]) == list(Cityscapes.classes) and result["num_images"] == 2
    # the same numbers as evaluate() on the same model
    model, _ = build_model_from_checkpoint(checkpoint)
    dataset = Cityscapes(recipe.parent / "cityscapes", "val", transform=build_transforms(False))
    direct = evaluate(model, dataset, EvalConfig(), device="cpu", num_classes=K, progress=False)
    assert result["mIoU"] == pytest.approx(direct["mIoU"]) and result["aAcc"] == pytest.approx(direct["aAcc"])
    for name, value in direct["per_class_iou"].items():
        assert result["per_class_iou"][name] == (None if np.isnan(value) else pytest.approx(value))
    assert "class" in printed and "IoU" in printed and "Acc" in printed and "motorcycle" in printed
    assert f"mIoU {direct['mIoU']:5.2f}" in printed


def _fails_with_one_line(argv: list[str], capsys, *fragments: str) -> None:
    from nlseg.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("nlseg eval: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_eval_cli_bad_label_value_fails_with_one_line(tiny_eval: tuple[Path, Path], capsys):
    recipe, checkpoint = tiny_eval
    bad = recipe.parent / "cityscapes/gtFine/val/munster/munster_000002_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((16, 32), 200, dtype=np.uint8), mode="L").save(bad)
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", str(checkpoint)], capsys, str(bad), "200")


def test_eval_cli_corrupt_image_fails_with_one_line(tiny_eval: tuple[Path, Path], capsys):
    recipe, checkpoint = tiny_eval
    bad = recipe.parent / "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", str(checkpoint)], capsys, str(bad), "corrupt")


def test_eval_cli_refuses_a_checkpoint_of_another_model_or_class_count(tiny_eval: tuple[Path, Path], capsys):
    import nlseg

    recipe, checkpoint = tiny_eval
    five = write_checkpoint(recipe.parent / "five.pt", nlseg.create_model("fcn_r18", num_classes=5, **TINY_MODEL),
                            "fcn_r18", recipe, num_classes=5)
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", str(five)], capsys, str(five), "5 classes", "19")
    other = write_recipe(recipe.parent / "other.yaml", recipe.parent / "cityscapes", model="denoised_nl_r18")
    _fails_with_one_line(
        ["eval", str(other), "--checkpoint", str(checkpoint)], capsys, "'fcn_r18'", "'denoised_nl_r18'"
    )
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", str(recipe.parent / "missing.pt")], capsys, "missing.pt")


def test_eval_cli_missing_data_root_fails_with_one_line(tiny_eval: tuple[Path, Path], capsys):
    recipe, checkpoint = tiny_eval
    _fails_with_one_line(
        ["eval", str(recipe), "--checkpoint", str(checkpoint), "--set", "data.root=/no/such/cityscapes"],
        capsys, "/no/such/cityscapes",
    )


# --- agreement with the official Cityscapes evaluator ------------------------------------------


def test_eval_cli_export_agrees_with_the_official_cityscapes_evaluator(tmp_path: Path, monkeypatch, capsys):
    ev = pytest.importorskip(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        reason="cityscapesscripts is not installed (pip install --no-deps cityscapesscripts pyquaternion)",
    )
    import json

    import nlseg.models
    from nlseg.cli import main

    # The CLI builds the model from the checkpoint by name: let the name "oracle" build the Oracle, whose
    # predictions (random train ids written into the images) hit every kind of pixel: right, wrong, on
    # ignored ground truth, classes absent from the truth.
    create_model = nlseg.models.create_model
    monkeypatch.setattr(
        nlseg.models, "create_model", lambda name, **kw: Oracle() if name == "oracle" else create_model(name, **kw)
    )
    root = tmp_path / "cityscapes"
    names = ["frankfurt_000000_000294", "frankfurt_000001_007973", "lindau_000000_000019", "munster_000173_000019"]
    write_cityscapes(root, "val", random_frames(3, names, size=(24, 40)))
    recipe = write_recipe(tmp_path / "oracle.yaml", root, model="oracle", options={})
    checkpoint = write_checkpoint(tmp_path / "oracle.pt", Oracle(), "oracle", recipe)
    export, out = tmp_path / "results", tmp_path / "metrics.json"
    argv = ["eval", str(recipe), "--checkpoint", str(checkpoint), "--export-dir", str(export), "--out", str(out)]
    assert main(argv) == 0
    ours = json.loads(out.read_text())

    # The official script, its functions called directly: no instance-level scores (they need
    # *_instanceIds.png files and np.in1d, gone from numpy >= 2.4), results searched under `export`.
    for key, value in {"evalInstLevelScore": False, "evalPixelAccuracy": False, "quiet": True,
                       "exportFile": str(tmp_path / "official.json"), "predictionPath": str(export),
                       "predictionWalk": None}.items():
        monkeypatch.setattr(ev.args, key, value)
    ground_truth = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [ev.getPrediction(ev.args, gt) for gt in ground_truth]
    assert [Path(p).name for p in predictions] == [f"{n}_leftImg8bit.png" for n in names]
    official = ev.evaluateImgLists(predictions, ground_truth, ev.args)
    assert 100 * official["averageScoreClasses"] == pytest.approx(ours["mIoU"], abs=1e-6)
    for name in Cityscapes.classes:
        assert 100 * official["classScores"][name] == pytest.approx(ours["per_class_iou"][name], abs=1e-6), name
    assert 0 < ours["mIoU"] < 100


# --- output paths, checkpoints and the device are checked before any work ------------------------------


def test_eval_cli_unwritable_out_is_found_before_the_checkpoint_is_read(tiny_eval: tuple[Path, Path], capsys):
    recipe, _ = tiny_eval
    (recipe.parent / "a_file").write_text("not a folder")
    missing = str(recipe.parent / "missing.pt")  # would be the error if the checkpoint were read first
    out = str(recipe.parent / "a_file" / "m.json")
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", missing, "--out", out], capsys, "--out", "a_file")
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", missing, "--export-dir", str(recipe.parent / "a_file")],
                         capsys, "--export-dir", "a_file", "is a file")
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", missing, "--out", str(recipe.parent)],
                         capsys, "--out", "is a folder")


@pytest.mark.parametrize("kind", ["text", "jpeg", "folder"])
def test_eval_cli_a_checkpoint_that_is_not_one_is_one_line(tiny_eval: tuple[Path, Path], capsys, kind: str):
    recipe, _ = tiny_eval
    bad = recipe.parent / f"bad_{kind}"
    if kind == "text":
        bad.write_text("iterations: 10\n")
    elif kind == "jpeg":
        Image.new("RGB", (8, 8)).save(bad, format="JPEG")
    else:
        bad.mkdir()
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", str(bad), "--device", "cpu"], capsys, str(bad))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_cli_unavailable_device_is_one_line(tiny_eval: tuple[Path, Path], capsys):
    recipe, checkpoint = tiny_eval
    _fails_with_one_line(["eval", str(recipe), "--checkpoint", str(checkpoint), "--device", "cuda:1"],
                         capsys, "'cuda:1'", "no CUDA device")


def test_evaluate_checkpoint_reads_a_lean_best_checkpoint_on_the_device_given(tiny_eval: tuple[Path, Path],
                                                                              tmp_path: Path):
    from nlseg.config import load_config
    from nlseg.engine.checkpoint import load_checkpoint, save_checkpoint
    from nlseg.engine.evaluate import evaluate_checkpoint
    from nlseg.engine.inference import build_model_from_checkpoint

    recipe, checkpoint = tiny_eval
    state = load_checkpoint(checkpoint)
    lean = {key: state[key] for key in ("model", "model_name", "num_classes", "class_names", "config", "iteration")}
    save_checkpoint({**lean, "metrics": {"mIoU": 1.0}}, tmp_path / "best.pt")
    cfg = load_config(recipe)
    record = evaluate_checkpoint(cfg, tmp_path / "best.pt", device="cpu", export_dir=tmp_path / "export",
                                 progress=False)
    model, _ = build_model_from_checkpoint(checkpoint)
    dataset = Cityscapes(recipe.parent / "cityscapes", "val", transform=build_transforms(False))
    direct = evaluate(model, dataset, EvalConfig(), device="cpu", num_classes=K, progress=False)
    assert record["mIoU"] == pytest.approx(direct["mIoU"]) and record["confusion_matrix"] == direct["confusion_matrix"]
    assert (record["split"], record["dataset"], record["export_format"]) == ("val", "cityscapes", "cityscapes")
    assert len(list((tmp_path / "export").glob("*_leftImg8bit.png"))) == 2
