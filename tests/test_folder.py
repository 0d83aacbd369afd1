"""The ``folder`` data set (your own images and labels): layout rules, label checks, and the user's journey
through the CLI with ``configs/custom_folder.yaml``: train, eval, predict, and one-line errors."""
from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nlseg.cli import main
from nlseg.config import load_config
from nlseg.data.build import build_dataset
from nlseg.engine.datacheck import CACHE_NAME, check_files
from nlseg.data import FolderDataset, create_dataset
from nlseg.data.base import index_palette
from nlseg.errors import DatasetError
from nlseg.engine.metrics import ConfusionMatrix

H, W = 24, 40
CLASSES = ["sky", "tree", "road"]


def _write(root: Path, split: str, name: str, seed: int, label: np.ndarray | None = None) -> np.ndarray:
    """Write image ``name`` (format by suffix) and its label PNG (``label``, or random classes); return the label."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 3, (H, W)) if label is None else label
    colours = np.array([[70, 130, 180], [30, 140, 40], [128, 128, 128]], dtype=np.uint8)
    rgb = colours[np.clip(values, 0, 2)] + rng.integers(0, 20, (H, W, 3), dtype=np.uint8)  # (H, W, 3)
    image = root / "images" / split / name
    image.parent.mkdir(parents=True, exist_ok=True)
    suffix = image.suffix.lower()
    Image.fromarray(rgb).save(image, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix, suffix[1:].upper()))
    label_path = root / "labels" / split / Path(name).with_suffix(".png")
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(label_path)
    return values


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small data set in the folder layout: JPEG and PNG images (suffixes in any case), a sub-folder,
    unlabelled pixels, and the stray files real folders collect."""
    root = tmp_path / "mydata"
    for i, name in enumerate(["street1.jpg", "street2.PNG", "park.JPEG", "site/corner.png"]):
        values = np.random.default_rng(i).integers(0, 3, (H, W))
        values[:2] = 255  # an unlabelled band
        _write(root, "train", name, i, values)
    for i, name in enumerate(["v1.png", "v2.jpg"]):
        _write(root, "val", name, 10 + i)
    for split in ("train", "val"):
        for stray in (".DS_Store", "Thumbs.db", "notes.txt", ".hidden.png"):
            (root / "images" / split / stray).write_bytes(b"not an image")
            (root / "labels" / split / stray).write_bytes(b"not an image")
    (root / "images" / "train" / ".ipynb_checkpoints").mkdir()
    (root / "images" / "train" / ".ipynb_checkpoints" / "street1-checkpoint.jpg").write_bytes(b"x")
    return root


# --- the data set ----------------------------------------------------------------------------


def test_pairs_by_name_skips_stray_files_and_maps_the_labels(root: Path):
    data = create_dataset("folder", root, "train", classes=CLASSES)
    assert isinstance(data, FolderDataset) and data.num_classes == 3 and data.classes == tuple(CLASSES)
    pairs = [(image.relative_to(root).as_posix(), label.relative_to(root).as_posix()) for image, label in data.samples]
    assert pairs == [
        ("images/train/park.JPEG", "labels/train/park.png"),
        ("images/train/site/corner.png", "labels/train/site/corner.png"),
        ("images/train/street1.jpg", "labels/train/street1.png"),
        ("images/train/street2.PNG", "labels/train/street2.png"),
    ]
    sample = data[2]
    expected = np.random.default_rng(0).integers(0, 3, (H, W))
    expected[:2] = 255
    assert sample["name"] == "street1" and sample["image"].shape == (3, H, W)
    assert torch.equal(sample["label"], torch.from_numpy(expected))
    assert data.palette == index_palette(4)[1:] and data.ignore_index == 255


def test_a_custom_ignore_value_becomes_255_and_255_is_then_a_bad_value(root: Path):
    label = root / "labels" / "val" / "v1.png"
    values = np.array(Image.open(label)).astype(np.int64)
    values[0, :5] = 9
    Image.fromarray(values.astype(np.uint8), mode="L").save(label)
    data = FolderDataset(root, "val", classes=CLASSES, ignore_index=9, palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert data.unlabelled_value == 9 and data.palette == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    got = data[0]["label"]
    assert (got[0, :5] == 255).all() and torch.equal(got[0, 5:], torch.from_numpy(values[0, 5:]))
    values[1, 0] = 255
    Image.fromarray(values.astype(np.uint8), mode="L").save(label)
    with pytest.raises(DatasetError, match=r"v1\.png contains value\(s\) 255 .* allowed values: 0-2, 9$"):
        data[0]


def test_a_label_value_outside_the_classes_names_file_values_and_allowed_ones(root: Path):
    _write(root, "val", "v2.jpg", 11, np.full((H, W), 4))
    data = FolderDataset(root, "val", classes=CLASSES)
    data[0]
    with pytest.raises(DatasetError, match=r"labels/val/v2\.png contains value\(s\) 4 .*allowed values: 0-2, 255"):
        data[1]


def test_a_colour_label_is_refused(root: Path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "labels" / "val" / "v1.png")
    with pytest.raises(DatasetError, match=r"v1\.png has mode 'RGB'; expected a single-channel index image"):
        FolderDataset(root, "val", classes=CLASSES)[0]


def _unlabelled(root: Path) -> None:
    for name in ("x1.jpg", "x2.jpg", "x3.jpg", "x4.png", "x5.png", "x6.png", "x7.png"):
        _write(root, "train", name, 0)
        (root / "labels" / "train" / Path(name).with_suffix(".png")).unlink()


LAYOUT_ERRORS = {
    "images without labels": (
        _unlabelled,
        r"7 of 11 images in \S+/images/train have no label NAME\.png in \S+/labels/train: "
        r"x1\.jpg, x2\.jpg, x3\.jpg, x4\.png, x5\.png and 2 more$",
    ),
    "a label without an image": (
        lambda root: (root / "images" / "train" / "park.JPEG").unlink(),
        r"1 label\(s\) in \S+/labels/train have no image in \S+/images/train: park\.png$",
    ),
    "two images with one name": (
        lambda root: _write(root, "train", "street1.png", 0),
        r"images with the same name in \S+/images/train: street1\.jpg and street1\.png; "
        r"images and labels are matched by name",
    ),
    "a JPEG label": (
        lambda root: Image.new("L", (W, H)).save(root / "labels" / "train" / "street1.jpg"),
        r"label files must be PNG .*found 1 other image file\(s\) in \S+/labels/train: street1\.jpg$",
    ),
    "no labels folder": (
        lambda root: shutil.rmtree(root / "labels" / "train"),
        r"no folder \S+/labels/train; the labels of \S+/images/train go there as NAME\.png",
    ),
    "no images folder": (
        lambda root: shutil.rmtree(root / "images"),
        r"no folder \S+/mydata/images; expected images/SPLIT/ and labels/SPLIT/ under the root",
    ),
}


@pytest.mark.parametrize("fault", LAYOUT_ERRORS)
def test_layout_errors_name_the_files(root: Path, fault: str):
    make, message = LAYOUT_ERRORS[fault]
    make(root)
    with pytest.raises(DatasetError, match=r"^folder data set: " + message):
        FolderDataset(root, "train", classes=CLASSES)


def test_unknown_split_lists_the_split_folders(root: Path):
    with pytest.raises(DatasetError, match=r"no folder \S+/images/test for split 'test'; .*: train, val$"):
        FolderDataset(root, "test", classes=CLASSES)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"classes": []}, r"classes must be a non-empty list of class names, got \[\]"),
        ({"classes": "sky"}, r"classes must be a non-empty list of class names, got 'sky'"),
        ({"classes": ["sky", "sky", "road"]}, r"class name\(s\) 'sky' given more than once"),
        ({"classes": ["sky", ""]}, r"every class name must be a non-empty string, got ''"),
        ({"classes": [f"c{i}" for i in range(256)]}, r"at most 255 classes"),
        ({"classes": CLASSES, "palette": [[0, 0, 0]]}, r"one RGB colour per class: 3 classes, 1 colours"),
        ({"classes": CLASSES, "palette": [[0, 0, 0], [0, 0], [1, 1, 1]]}, r"palette entry 1 must be three .*\[0, 0\]"),
        ({"classes": CLASSES, "palette": [[0, 0, 0], [0, 0, 300], [1, 1, 1]]}, r"palette entry 1 .*got \[0, 0, 300\]"),
        ({"classes": CLASSES, "ignore_index": 1}, r"ignore_index 1 is the label value of class 'tree'"),
        ({"classes": CLASSES, "ignore_index": 256}, r"ignore_index must be an integer label value 0\.\.255, got 256"),
    ],
)
def test_options_are_checked(root: Path, options: dict, message: str):
    with pytest.raises(DatasetError, match=message):
        FolderDataset(root, "train", **options)


# --- the user's journey through the CLI ------------------------------------------------------

QUICK = ["train.iters=3", "train.batch_size=2", "data.crop_size=[24,32]", "train.log_interval=1",
         "train.checkpoint_interval=3", "train.device=cpu", f"data.options.classes={json.dumps(CLASSES)}"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_train_eval_predict_on_your_own_data(root: Path, tmp_path: Path, capsys):
    work = tmp_path / "work"
    data = [f"data.root={root}", "data.num_workers=0"]
    assert main(["train", "custom_folder", "--work-dir", str(work), "--set", *data, *QUICK]) == 0
    state = torch.load(work / "last.pt", weights_only=False)
    assert state["class_names"] == CLASSES and state["num_classes"] == 3 and state["iteration"] == 3
    assert (work / "best.pt").is_file()

    results = tmp_path / "results.json"
    assert main(["eval", "custom_folder", "--checkpoint", str(work / "best.pt"), "--out", str(results),
                 "--set", *data, *QUICK]) == 0
    metrics = json.loads(results.read_text())
    assert metrics["dataset"] == "folder" and metrics["split"] == "val"

    photos, out = tmp_path / "photos", tmp_path / "predictions"
    photos.mkdir()
    for image in ("v1.png", "v2.jpg"):
        shutil.copy(root / "images" / "val" / image, photos)
    # as the README: predict needs neither the data set nor its classes (they are in the checkpoint)
    assert main(["predict", "custom_folder", "--checkpoint", str(work / "best.pt"), "--input", str(photos),
                 "--output", str(out)]) == 0
    # predict and eval agree: the mIoU of the written predictions against the labels is eval's
    matrix = ConfusionMatrix(3)
    for name in ("v1", "v2"):
        pred = np.array(Image.open(out / f"{name}.png"))
        assert pred.shape == (H, W) and pred.max() < 3
        label = np.array(Image.open(root / "labels" / "val" / f"{name}.png"))
        matrix.update(torch.from_numpy(pred).long(), torch.from_numpy(label).long())
    assert matrix.compute()["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-9)


@pytest.mark.parametrize("fault", ["images without labels", "a label without an image", "two images with one name",
                                   "a JPEG label"])
def test_layout_errors_stop_train_in_one_line(root: Path, tmp_path: Path, capsys, fault: str):
    make, message = LAYOUT_ERRORS[fault]
    make(root)
    work = tmp_path / "work"
    status = main(["train", "custom_folder", "--work-dir", str(work), "--set", f"data.root={root}", *QUICK])
    assert status == 2
    line = _error_line(capsys)
    assert line.startswith("nlseg train: error: folder data set: ")
    assert re.search(message, line), line
    assert not (work / "last.pt").exists()


def _checked_then_replaced(root: Path, work: Path, overrides: list[str]) -> None:
    """The start check reads every file into ``work``'s cache; then street2's label is replaced by one with a value
    the data set does not define, and the cache is told it is unchanged (as when a file is swapped with its old
    size and time kept): only a DataLoader worker, loading it, can find the bad value."""
    cfg = load_config("custom_folder", overrides)
    work.mkdir()
    cache = work / CACHE_NAME
    assert check_files(build_dataset(cfg, cfg.data.train_split, train=True), cache, progress=False) == 4
    label = root / "labels" / "train" / "street2.png"
    old = [label.stat().st_size, label.stat().st_mtime_ns]
    _write(root, "train", "street2.PNG", 1, np.full((H, W), 7))
    new = [label.stat().st_size, label.stat().st_mtime_ns]
    data = json.loads(cache.read_text())
    keys = [key for key in data["files"] if key.endswith(f"|{label}")]
    assert len(keys) == 1 and data["files"][keys[0]][2:] == old
    data["files"][keys[0]][2:] = new
    cache.write_text(json.dumps(data))


def test_a_bad_label_in_a_dataloader_worker_is_one_line(root: Path, tmp_path: Path):
    # A real process: after the error, the interpreter's exit must not wait for the workers (they ignore
    # SIGTERM so that the main process can save a checkpoint first).
    overrides = [f"data.root={root}", "data.num_workers=2", *QUICK]
    _checked_then_replaced(root, tmp_path / "w", overrides)
    command = [sys.executable, "-m", "nlseg", "train", "custom_folder", "--work-dir", str(tmp_path / "w"), "--set",
               *overrides]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers
        proc.communicate()
        pytest.fail("nlseg train did not exit after the worker's error")
    assert proc.returncode == 2
    line = err.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith("nlseg train: error: label file ") and "labels/train/street2.png" in line
    assert line.endswith("contains value(s) 7 that this data set does not define; allowed values: 0-2, 255")


def test_missing_root_and_classes_are_recipe_errors(root: Path, tmp_path: Path, capsys):
    assert main(["train", "custom_folder", "--work-dir", str(tmp_path / "a"), "--set", *QUICK]) == 2
    assert _error_line(capsys).endswith(
        "custom_folder.yaml: data.root must be set to the folder of the folder data set (--set data.root=/path/to/it), "
        "got null"
    )
    no_classes = [o for o in QUICK if not o.startswith("data.options")] + ["data.options={}", f"data.root={root}"]
    assert main(["train", "custom_folder", "--work-dir", str(tmp_path / "b"), "--set", *no_classes]) == 2
    line = _error_line(capsys)
    assert line.startswith("nlseg train: error: ") and line.endswith(
        "custom_folder.yaml with --set: data.options.classes is required by the folder data set and is not set"
    )
