"""Data sets on tiny copies of their real folder layouts: pairing, label mapping, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nlseg.data import (
    ADE20K,
    COCOStuff10K,
    Cityscapes,
    DatasetError,
    NYUDv2,
    PascalContext,
    collate,
    create_dataset,
    list_datasets,
)
from nlseg.data.cityscapes import CITYSCAPES_LABELS
from nlseg.data.convert import cocostuff_ids_to_train_ids, convert_cocostuff10k

H, W = 16, 32


def _image(path: Path, seed: int) -> np.ndarray:
    """Write a random RGB image (PNG or JPEG by suffix) and return its pixels."""
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def _label(path: Path, values: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8), mode="L")
    if mode == "P":  # palette image whose colours differ from its indices
        img = img.convert("P")
        img.putpalette([(3 * i + 1) % 256 for i in range(768)])
    img.save(path)


def _cycle(values: list[int]) -> np.ndarray:
    """An H x W map that repeats ``values`` in row-major order."""
    return np.resize(np.asarray(values), (H, W))


# --- Cityscapes -------------------------------------------------------------------------------

# (name, id, trainId) of every label, as in cityscapesScripts' helpers/labels.py.
OFFICIAL_CITYSCAPES = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
]


def test_cityscapes_table_matches_official_entry_by_entry():
    assert len(CITYSCAPES_LABELS) == len(OFFICIAL_CITYSCAPES) == 35
    for label, (name, id_, train_id) in zip(CITYSCAPES_LABELS, OFFICIAL_CITYSCAPES):
        assert (label.name, label.id, label.train_id) == (name, id_, train_id)
    assert Cityscapes.classes == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    )
    assert Cityscapes.train_id_to_label_id == (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
    assert Cityscapes.palette[0] == (128, 64, 128) and Cityscapes.palette[18] == (119, 11, 32)


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for split, city, frame, seed in [("train", "aachen", "000000_000019", 0), ("train", "bochum", "000000_000313", 1),
                                     ("val", "lindau", "000000_000019", 2), ("test", "berlin", "000000_000019", 3)]:
        _image(root / "leftImg8bit" / split / city / f"{city}_{frame}_leftImg8bit.png", seed)
        gt = root / "gtFine" / split / city / f"{city}_{frame}_gtFine"
        _label(Path(f"{gt}_labelIds.png"), _cycle(list(range(34)) + [255]))
    # bochum also has a train-id file: it must win over its (all 'road') label-id file.
    bochum = root / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine"
    _label(Path(f"{bochum}_labelIds.png"), np.full((H, W), 7))
    _label(Path(f"{bochum}_labelTrainIds.png"), _cycle(list(range(19)) + [255]))
    return root


def test_cityscapes_pairs_and_maps_label_ids(cityscapes_root: Path):
    train = Cityscapes(cityscapes_root, "train")
    assert len(train) == 2
    sample = train[0]
    assert sample["name"] == "aachen_000000_000019_leftImg8bit"
    assert sample["image_path"].endswith("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    assert sample["label_path"].endswith("gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    rgb = np.array(Image.open(sample["image_path"]))
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
    assert torch.equal(sample["image"], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    id_to_train = {id_: (255 if t < 0 else t) for _, id_, t in OFFICIAL_CITYSCAPES}
    id_to_train[255] = 255
    expected = np.vectorize(id_to_train.get)(_cycle(list(range(34)) + [255]))
    assert sample["label"].dtype == torch.int64
    assert np.array_equal(sample["label"].numpy(), expected)
    # spot checks: id 0 -> 255, 7 (road) -> 0, 26 (car) -> 13, 33 (bicycle) -> 18
    flat = dict(zip(_cycle(list(range(34)) + [255]).ravel().tolist(), sample["label"].flatten().tolist()))
    assert (flat[0], flat[7], flat[26], flat[33]) == (255, 0, 13, 18)


def test_cityscapes_prefers_train_id_files(cityscapes_root: Path):
    sample = Cityscapes(cityscapes_root, "train")[1]
    assert sample["label_path"].endswith("bochum_000000_000313_gtFine_labelTrainIds.png")
    assert np.array_equal(sample["label"].numpy(), _cycle(list(range(19)) + [255]))


def test_cityscapes_test_split_has_no_labels(cityscapes_root: Path):
    test = Cityscapes(cityscapes_root, "test")
    sample = test[0]
    assert len(test) == 1 and "label" not in sample and sample["label_path"] is None
    assert len(Cityscapes(cityscapes_root, "val")) == 1


def test_cityscapes_trainval_is_train_then_val(cityscapes_root: Path):
    train, val = Cityscapes(cityscapes_root, "train"), Cityscapes(cityscapes_root, "val")
    both = Cityscapes(cityscapes_root, "trainval")
    assert both.samples == train.samples + val.samples
    assert torch.equal(both[len(train)]["label"], val[0]["label"])


def test_cityscapes_missing_label_names_both_expected_files(cityscapes_root: Path):
    (cityscapes_root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match=r"lindau_000000_000019_gtFine_labelIds\.png or .*labelTrainIds\.png"):
        Cityscapes(cityscapes_root, "val")


def test_cityscapes_export_to_label_ids():
    train_ids = torch.tensor([[0, 1, 2, 13], [18, 255, 10, 5]])
    assert Cityscapes.label_ids_from_train_ids(train_ids).tolist() == [[7, 8, 11, 26], [33, 0, 23, 17]]
    with pytest.raises(ValueError, match=r"0\.\.18 or 255; found \[19\]"):
        Cityscapes.label_ids_from_train_ids(torch.tensor([19, 3]))


# --- ADE20K ----------------------------------------------------------------------------------


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    base = tmp_path / "ADEChallengeData2016"
    splits = [("training", ["ADE_train_00000001", "ADE_train_00000002"]), ("validation", ["ADE_val_00000001"])]
    for folder, names in splits:
        for i, name in enumerate(names):
            _image(base / "images" / folder / f"{name}.jpg", i)
            _label(base / "annotations" / folder / f"{name}.png", _cycle(list(range(151))))
    return tmp_path


def test_ade20k_reduce_zero_label_and_either_root(ade_root: Path):
    for root in (ade_root, ade_root / "ADEChallengeData2016"):
        train = ADE20K(root, "train")
        assert len(train) == 2 and len(ADE20K(root, "val")) == 1
        sample = train[1]
        assert sample["name"] == "ADE_train_00000002"
        assert Path(sample["image_path"]).stem == Path(sample["label_path"]).stem == sample["name"]
        expected = np.where(_cycle(list(range(151))) == 0, 255, _cycle(list(range(151))) - 1)
        assert np.array_equal(sample["label"].numpy(), expected)
        assert sample["image"].shape == (3, H, W) and 0 <= sample["image"].min() and sample["image"].max() <= 1


def test_bad_label_value_names_file_values_and_allowed(ade_root: Path):
    bad = ade_root / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"
    _label(bad, _cycle([0, 5, 200, 151]))
    with pytest.raises(DatasetError) as err:
        ADE20K(ade_root, "val")[0]
    message = str(err.value)
    assert str(bad) in message and "151, 200" in message and "allowed values: 0-150, 255" in message


def test_corrupt_and_truncated_images_name_the_file(ade_root: Path):
    image = ade_root / "ADEChallengeData2016/images/training/ADE_train_00000001.jpg"
    data = image.read_bytes()
    image.write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match=rf"cannot read image {image}: the file is corrupt"):
        ADE20K(ade_root, "train")[0]
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=rf"cannot read image {image}"):
        ADE20K(ade_root, "train")[0]


def test_colour_label_and_size_mismatch_are_refused(ade_root: Path):
    label = ade_root / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png"
    Image.new("RGB", (W, H)).save(label)
    with pytest.raises(DatasetError, match=rf"label image {label} has mode 'RGB'"):
        ADE20K(ade_root, "train")[0]
    _label(label, np.zeros((H, W + 1)))
    with pytest.raises(DatasetError, match=rf"label file {label} is 33x16 pixels but its image .* is 32x16"):
        ADE20K(ade_root, "train")[0]


def test_missing_label_file_and_missing_folders(ade_root: Path, tmp_path: Path):
    (ade_root / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png").unlink()
    with pytest.raises(DatasetError, match=r"ADE_val_00000001\.png not found \(the label of .*ADE_val_00000001\.jpg\)"):
        ADE20K(ade_root, "val")
    nowhere = tmp_path / "nowhere"
    expected = rf"folder {nowhere}/leftImg8bit/val not found; expected files matching '\*/\*_leftImg8bit\.png'"
    with pytest.raises(DatasetError, match=expected):
        Cityscapes(nowhere, "val")
    empty = tmp_path / "empty"
    empty.mkdir()
    expected = rf"folder {empty}/ADEChallengeData2016/images/training not found; expected files matching '\*\.jpg'"
    with pytest.raises(DatasetError, match=expected):
        ADE20K(empty, "train")
    (empty / "images" / "training").mkdir(parents=True)
    with pytest.raises(DatasetError, match=rf"no files matching '\*\.jpg' in folder {empty}/images/training"):
        ADE20K(empty, "train")
    with pytest.raises(ValueError, match="unknown split 'test'; expected one of train, val"):
        ADE20K(ade_root, "test")


# --- PASCAL Context ----------------------------------------------------------------------------


@pytest.fixture
def context_root(tmp_path: Path) -> Path:
    base = tmp_path / "VOCdevkit" / "VOC2010"
    for i, name in enumerate(["2008_000002", "2008_000003"]):
        _image(base / "JPEGImages" / f"{name}.jpg", i)
        _label(base / "SegmentationClassContext" / f"{name}.png", _cycle(list(range(60)) + [255]), mode="P")
    lists = base / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2008_000002\n2008_000003\n")
    (lists / "val.txt").write_text("2008_000003\n")
    return tmp_path


def test_pascal_context_59_and_60_classes(context_root: Path):
    raw = _cycle(list(range(60)) + [255])
    sixty = PascalContext(context_root, "train", num_classes=60)
    assert len(sixty) == 2 and sixty.num_classes == 60 and sixty.classes[:2] == ("background", "aeroplane")
    assert np.array_equal(sixty[0]["label"].numpy(), raw)  # palette image: raw indices, not colours
    fifty_nine = PascalContext(context_root / "VOCdevkit" / "VOC2010", "val", num_classes=59)
    assert len(fifty_nine) == 1 and fifty_nine[0]["name"] == "2008_000003"
    assert fifty_nine.num_classes == len(fifty_nine.classes) == len(fifty_nine.palette) == 59
    assert fifty_nine.classes[0] == "aeroplane" and fifty_nine.classes[-1] == "wood"
    assert np.array_equal(fifty_nine[0]["label"].numpy(), np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1)))
    with pytest.raises(ValueError, match="num_classes must be 59 or 60, got 58"):
        PascalContext(context_root, "train", num_classes=58)


def test_pascal_context_errors(context_root: Path, tmp_path: Path):
    lists = context_root / "VOCdevkit/VOC2010/ImageSets/SegmentationContext"
    (lists / "val.txt").write_text("2008_999999\n")
    with pytest.raises(DatasetError, match=rf"2008_999999\.jpg not found \(listed in {lists}/val\.txt\)"):
        PascalContext(context_root, "val")
    (lists / "val.txt").unlink()
    with pytest.raises(DatasetError, match=rf"split list {lists}/val\.txt not found"):
        PascalContext(context_root, "val")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = rf"no JPEGImages folder found; searched {elsewhere}/VOCdevkit/VOC2010/JPEGImages"
    with pytest.raises(DatasetError, match=expected):
        PascalContext(elsewhere, "train")


# --- COCO-Stuff-10K ----------------------------------------------------------------------------


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "cocostuff-10k-v1.1"
    names = ["COCO_train2014_000000000077", "COCO_train2014_000000000078", "COCO_train2014_000000000079"]
    for i, name in enumerate(names):
        _image(root / "images" / f"{name}.jpg", i)
        _label(root / "annotations" / f"{name}.png", _cycle(list(range(171)) + [255]))
    (root / "imageLists").mkdir()
    (root / "imageLists" / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "imageLists" / "test.txt").write_text(names[2] + "\n")
    return root


def test_coco_stuff_reads_train_ids(coco_root: Path):
    train, test = COCOStuff10K(coco_root, "train"), COCOStuff10K(coco_root, "test")
    assert len(train) == 2 and len(test) == 1 and test[0]["name"] == "COCO_train2014_000000000079"
    assert np.array_equal(train[1]["label"].numpy(), _cycle(list(range(171)) + [255]))
    _label(coco_root / "annotations" / "COCO_train2014_000000000079.png", _cycle([0, 171]))
    with pytest.raises(DatasetError, match=r"contains value\(s\) 171 .* allowed values: 0-170, 255"):
        test[0]


def test_coco_stuff_asks_for_conversion_when_only_mat_files_exist(coco_root: Path):
    png = coco_root / "annotations" / "COCO_train2014_000000000079.png"
    png.unlink()
    png.with_suffix(".mat").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"convert_cocostuff10k"):
        COCOStuff10K(coco_root, "test")


def test_coco_stuff_id_to_train_id_table():
    # used thing ids 1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 -> 0..79; stuff 92..182 -> 80..170
    ids = np.array([0, 1, 11, 13, 25, 27, 28, 31, 44, 46, 65, 67, 70, 72, 82, 84, 90, 92, 93, 181, 182])
    expected = [255, 0, 10, 11, 23, 24, 25, 26, 39, 40, 59, 60, 61, 62, 72, 73, 79, 80, 81, 169, 170]
    assert cocostuff_ids_to_train_ids(ids).tolist() == expected
    assert cocostuff_ids_to_train_ids(ids).dtype == np.uint8
    with pytest.raises(DatasetError, match=r"value\(s\) 12, 91, 183 .*unused thing ids 12, 26"):
        cocostuff_ids_to_train_ids(np.array([12, 91, 183, 5]), "x.mat")
    names = COCOStuff10K.classes
    assert len(names) == COCOStuff10K.num_classes == 171
    assert [names[i] for i in (0, 11, 79, 80, 170)] == ["person", "stop sign", "toothbrush", "banner", "wood"]


def test_convert_cocostuff10k_from_mat(tmp_path: Path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "coco"
    ids = _cycle([0, 1, 13, 91 - 1, 92, 182]).astype(np.uint8)
    (root / "annotations").mkdir(parents=True)
    scipy_io.savemat(root / "annotations" / "COCO_train2014_000000000077.mat", {"S": ids, "names": ["x"]})
    _image(root / "images" / "COCO_train2014_000000000077.jpg", 0)
    (root / "imageLists").mkdir()
    (root / "imageLists" / "train.txt").write_text("COCO_train2014_000000000077\n")
    assert convert_cocostuff10k(root) == 1
    assert convert_cocostuff10k(root) == 0  # existing PNGs kept
    label = COCOStuff10K(root, "train")[0]["label"].numpy()
    assert np.array_equal(label, _cycle([255, 0, 11, 79, 80, 170]))


def test_convert_cocostuff10k_without_scipy_says_so(tmp_path: Path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match="pip install scipy"):
        convert_cocostuff10k(tmp_path)


# --- NYUD-V2 ---------------------------------------------------------------------------------


def test_nyudv2_labels_and_image_formats(tmp_path: Path):
    for split, names in [("train", ["0001", "0002"]), ("test", ["0003"])]:
        for i, name in enumerate(names):
            _image(tmp_path / "images" / split / f"{name}.{'jpg' if name == '0002' else 'png'}", i)
            _label(tmp_path / "labels40" / split / f"{name}.png", _cycle(list(range(41))))
    train = NYUDv2(tmp_path, "train")
    assert [s["name"] for s in train] == ["0001", "0002"] and len(NYUDv2(tmp_path, "test")) == 1
    raw = _cycle(list(range(41)))
    assert np.array_equal(train[1]["label"].numpy(), np.where(raw == 0, 255, raw - 1))
    assert NYUDv2.classes[0] == "wall" and NYUDv2.classes[-1] == "otherprop" and NYUDv2.num_classes == 40


# --- Shared behaviour ------------------------------------------------------------------------


def test_registry(ade_root: Path, context_root: Path):
    assert list_datasets() == [
        "ade20k", "cityscapes", "coco_stuff10k", "folder", "nyudv2", "pascal_context", "synthetic"
    ]
    assert len(create_dataset("ade20k", ade_root, "val")) == 1
    assert create_dataset("pascal_context", context_root, "train", num_classes=59).num_classes == 59
    with pytest.raises(ValueError, match=r"unknown data set .ade. \(did you mean .ade20k.\?\); registered data sets: ade20k, cityscapes"):
        create_dataset("ade", ade_root, "val")
    with pytest.raises(ValueError, match="the ade20k data set needs its root folder; got None"):
        create_dataset("ade20k", None, "val")


def test_transform_is_applied_and_batches_collate(ade_root: Path):
    def blacken(sample):
        return {**sample, "image": torch.zeros_like(sample["image"])}

    data = ADE20K(ade_root, "train", transform=blacken)
    assert data[0]["image"].abs().sum() == 0
    batch = collate([data[0], data[1]])
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    assert batch["name"] == ["ADE_train_00000001", "ADE_train_00000002"]
