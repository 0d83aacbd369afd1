"""SyntheticContext: determinism, value ranges, class coverage, and the properties that make context necessary."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nlseg.data.synthetic import _BEACON_GAP, _BEACON_SIDE, _DISC_RADIUS, SyntheticContext

SIZE = (48, 128)  # a small strip shaped like the default (96, 256)
A, B = SyntheticContext.classes.index("disc_a"), SyntheticContext.classes.index("disc_b")
BEACON_A, BEACON_B = SyntheticContext.classes.index("beacon_a"), SyntheticContext.classes.index("beacon_b")
BUILDING = SyntheticContext.classes.index("building")


def _samples(n: int, split: str = "val", **options: object) -> list[dict]:
    ds = SyntheticContext(split, length=n, size=SIZE, **options)
    return [ds[i] for i in range(n)]


def test_same_seed_split_index_gives_identical_tensors_and_any_change_differs() -> None:
    first = SyntheticContext("train", length=8, size=SIZE, seed=3)[5]
    again = SyntheticContext("train", length=8, size=SIZE, seed=3)[5]
    torch.testing.assert_close(first["image"], again["image"], rtol=0, atol=0)
    assert torch.equal(first["label"], again["label"])
    others = [
        SyntheticContext("train", length=8, size=SIZE, seed=3)[6],
        SyntheticContext("val", length=8, size=SIZE, seed=3)[5],
        SyntheticContext("train", length=8, size=SIZE, seed=4)[5],
    ]
    for other in others:
        assert not torch.equal(first["image"], other["image"])
        assert not torch.equal(first["label"], other["label"])


def test_cache_serves_the_same_samples_and_in_place_transforms_do_not_reach_it() -> None:
    def scribble(sample: dict) -> dict:
        sample["image"].mul_(0)  # an in-place transform
        sample["label"].fill_(0)
        return sample

    plain = SyntheticContext("train", length=4, size=SIZE, seed=2)
    cached = SyntheticContext("train", length=4, size=SIZE, seed=2, cache=True, transform=scribble)
    cached[1]  # generated, transformed, cached
    cached.transform = None
    for index in (1, 1, 3):
        expected, got = plain[index], cached[index]
        torch.testing.assert_close(got["image"], expected["image"], rtol=0, atol=0)
        assert torch.equal(got["label"], expected["label"]) and got["label"].dtype == torch.int64
    assert sorted(cached._cache) == [1, 3]


def test_generation_does_not_touch_global_random_state() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    _samples(2)
    torch.testing.assert_close(torch.rand(3), expected_torch)
    np.testing.assert_array_equal(np.random.rand(3), expected_numpy)


def test_sample_format_ranges_and_ids() -> None:
    ds = SyntheticContext("train", length=4, size=(48, 80), seed=1)
    sample = ds[2]
    image, label = sample["image"], sample["label"]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 80)
    assert label.dtype == torch.int64 and label.shape == (48, 80)
    assert image.min() >= 0 and image.max() <= 1
    assert set(label.unique().tolist()) <= set(range(ds.num_classes))
    assert sample["image_path"] == "synthetic/train/000002"
    assert sample["label_path"] is None and sample["name"] == "train_000002"
    assert len(ds) == 4 and len(ds.classes) == len(ds.palette) == ds.num_classes == 8
    assert ds.ignore_index == 255


def test_every_class_appears_in_a_few_dozen_samples() -> None:
    counts = torch.zeros(SyntheticContext.num_classes, dtype=torch.int64)
    for sample in _samples(40):
        counts += torch.bincount(sample["label"].flatten(), minlength=SyntheticContext.num_classes)
    assert (counts > 0).all(), dict(zip(SyntheticContext.classes, counts.tolist()))
    assert counts[A] > 0.2 * counts[B] and counts[B] > 0.2 * counts[A]  # both ambiguous classes are common


def test_transform_is_applied_to_the_sample_dict() -> None:
    ds = SyntheticContext(length=2, size=SIZE, transform=lambda s: {**s, "image": 1 - s["image"], "seen": True})
    plain = SyntheticContext(length=2, size=SIZE)[1]
    sample = ds[1]
    assert sample["seen"]
    torch.testing.assert_close(sample["image"], 1 - plain["image"])


def _texture_stats(samples: list[dict], cls: int) -> np.ndarray:
    """Per-channel mean, std and mean absolute neighbour difference (texture) of the pixels of ``cls``."""
    values, diffs = [], []
    for sample in samples:
        image, mask = sample["image"].numpy(), sample["label"].numpy() == cls  # (3, H, W), (H, W)
        values.append(image[:, mask])  # (3, n)
        right = mask[:, 1:] & mask[:, :-1]  # horizontal neighbours both inside the class
        down = mask[1:, :] & mask[:-1, :]  # vertical neighbours both inside the class
        diffs.append(np.abs(image[:, :, 1:] - image[:, :, :-1])[:, right])  # (3, m)
        diffs.append(np.abs(image[:, 1:, :] - image[:, :-1, :])[:, down])  # (3, m')
    values, diffs = np.concatenate(values, 1), np.concatenate(diffs, 1)
    return np.concatenate([values.mean(1), values.std(1), diffs.mean(1)])


def test_ambiguous_classes_have_the_same_local_statistics_and_only_the_beacon_differs() -> None:
    samples = _samples(300)
    stats_a, stats_b = _texture_stats(samples, A), _texture_stats(samples, B)
    np.testing.assert_allclose(stats_a, stats_b, rtol=0.03)
    for sample in samples:  # the beacon of an image names the class of all its discs
        present = set(sample["label"].unique().tolist())
        assert (A in present, B in present) == (BEACON_A in present, BEACON_B in present)
    red, blue = _texture_stats(samples, BEACON_A)[:3], _texture_stats(samples, BEACON_B)[:3]
    assert red[0] > 0.8 and red[2] < 0.2
    assert blue[0] < 0.2 and blue[2] > 0.8


@pytest.mark.parametrize(("size", "cue_distance"), [((64, 64), 0.7), ((48, 128), 0.5)])
def test_one_disc_class_per_image_and_all_but_the_cued_disc_far_from_the_beacon(
    size: tuple[int, int], cue_distance: float
) -> None:
    h, w = size
    s = min(h, w)
    max_radius = _DISC_RADIUS[1] * s
    near_limit = 2 * max_radius + _BEACON_GAP[1] * s + _BEACON_SIDE * s / math.sqrt(2)  # reach of the cued disc
    far_limit = cue_distance * max(h, w) - max_radius - 1  # nearest pixel of any other disc
    assert near_limit < far_limit  # the two groups are told apart by distance alone
    ds = SyntheticContext("val", length=30, size=size, cue_distance=cue_distance)
    for sample in (ds[i] for i in range(len(ds))):
        label = sample["label"].numpy()
        present = {A, B} & set(np.unique(label).tolist())
        assert len(present) == 1
        by, bx = np.argwhere((label == BEACON_A) | (label == BEACON_B)).mean(0) + 0.5  # the beacon's centre
        ys, xs = np.nonzero(label == present.pop())
        dist = np.hypot(ys + 0.5 - by, xs + 0.5 - bx)
        assert (dist <= near_limit).any()  # the cued disc
        assert (dist >= far_limit).any()  # at least one far disc
        assert not ((dist > near_limit) & (dist < far_limit)).any()


def _hollows(samples: list[dict]) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Building pixels whose colour is far from both brick and mortar (the hollows): their fraction of the
    building, their mean colour, and the mean colour of the background pixels."""
    brick, mortar = torch.tensor([0.47, 0.33, 0.52]), torch.tensor([0.72, 0.68, 0.74])
    hollow, building, background = [], 0, []
    for sample in samples:
        pixels = sample["image"][:, sample["label"] == BUILDING].T  # (n, 3)
        distance = torch.minimum((pixels - brick).norm(dim=1), (pixels - mortar).norm(dim=1))
        hollow.append(pixels[distance > 0.2])
        building += len(pixels)
        background.append(sample["image"][:, sample["label"] == 0].T)
    hollow_pixels = torch.cat(hollow)
    return len(hollow_pixels) / building, hollow_pixels.mean(0), torch.cat(background).mean(0)


def test_building_has_background_textured_hollows_unless_turned_off() -> None:
    fraction, hollow_colour, background_colour = _hollows(_samples(40))
    assert fraction > 0.08
    torch.testing.assert_close(hollow_colour, background_colour, rtol=0, atol=0.03)
    assert _hollows(_samples(40, hollows=(0, 0)))[0] < 0.002


def test_bad_arguments_raise_with_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="train, val, test"):
        SyntheticContext("training")
    with pytest.raises(ValueError, match="discs"):
        SyntheticContext(discs=(1, 3))
    with pytest.raises(ValueError, match="size"):
        SyntheticContext(size=16)
    with pytest.raises(IndexError, match="length 3"):
        SyntheticContext(length=3)[3]


def test_describe_names_every_class() -> None:
    text = SyntheticContext.describe()
    assert all(name in text for name in SyntheticContext.classes)


def test_registered_like_every_data_set(tmp_path) -> None:
    """``synthetic`` is one name of the data set registry; it needs no root, and build_dataset gives the
    same samples as the class itself (the demo's data)."""
    from nlseg.config import load_config
    from nlseg.data import create_dataset, dataset_class, list_datasets
    from nlseg.data.build import build_dataset

    assert "synthetic" in list_datasets() and dataset_class("synthetic") is SyntheticContext
    assert SyntheticContext.requires_root is False
    made = create_dataset("synthetic", None, "val", length=3, size=SIZE, seed=5)
    direct = SyntheticContext("val", length=3, size=SIZE, seed=5)
    assert torch.equal(made[2]["image"], direct[2]["image"]) and torch.equal(made[2]["label"], direct[2]["label"])
    with pytest.raises(ValueError, match="the synthetic data set is generated and reads no files"):
        create_dataset("synthetic", tmp_path, "val")

    cfg = load_config("demo", ["eval.size=null"])
    built = build_dataset(cfg, "val", train=False)
    assert isinstance(built, SyntheticContext) and built.size == (96, 512) and len(built) == 256
    plain = SyntheticContext("val", length=256, size=(96, 512))[7]
    expected = (plain["image"] - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(built[7]["image"], expected, rtol=0, atol=1e-6)
    assert torch.equal(built[7]["label"], plain["label"])


def test_an_option_the_data_set_does_not_take_is_one_line(tmp_path, capsys) -> None:
    from nlseg.cli import main

    assert main(["train", "demo", "--work-dir", str(tmp_path / "w"), "--set", "data.options.sizee=[96,128]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("nlseg train: error: ") and err.endswith(
        "demo.yaml with --set: data.options.sizee is not an option of the synthetic data set (did you mean 'size'?); "
        "its options: length, size, seed, discs, hollows, cue_distance, noise, cache"
    )
