"""Paired transforms: exact numbers, image/label alignment, and determinism under a seed."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from nlseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    build_transforms,
    collate,
)


def _ramp(h: int, w: int) -> dict:
    """Image and label whose every pixel is unique: image[c, y, x] = c*1000 + y*w + x (scaled)."""
    idx = torch.arange(h * w, dtype=torch.float32).reshape(h, w)
    image = torch.stack([idx, idx + 1000, idx + 2000]) / 4000  # (3, H, W)
    return {"image": image, "label": idx.long() % 200, "name": "ramp"}


def _blocks(seed: int, h: int = 48, w: int = 64, block: int = 8) -> dict:
    """Label of random classes 1..6 on 8x8 blocks; the image encodes the class of each pixel as the
    point (k/6, (k/6)^2) on a parabola in channels 0 and 1, so a bilinear blend of different classes
    (strictly inside the parabola) never looks like a pure class value."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(1, 7, (h // block, w // block), generator=g)
    label = classes.repeat_interleave(block, 0).repeat_interleave(block, 1)  # (H, W)
    a = label.float() / 6
    return {"image": torch.stack([a, a * a, torch.full_like(a, 0.5)]), "label": label}


def _misaligned(image: torch.Tensor, label: torch.Tensor) -> tuple[int, int]:
    """(pixels where the image shows a pure class different from the label, pure pixels)."""
    k = torch.arange(1, 7, dtype=torch.float32) / 6
    dist = (image[0, None] - k[:, None, None]).abs() + (image[1, None] - k[:, None, None] ** 2).abs()  # (6, H, W)
    best, cls = dist.min(0)
    pure = (best < 1e-5) & (label != 255)
    return int(((cls + 1 != label) & pure).sum()), int(pure.sum())


@pytest.mark.parametrize("seed", range(8))
def test_label_stays_aligned_with_image_through_scale_crop_flip(seed: int):
    sample = _blocks(seed)
    pipeline = Compose([RandomScale((0.5, 2.0)), RandomCrop((32, 40)), RandomHorizontalFlip()])
    torch.manual_seed(seed)
    out = pipeline(sample)
    image, label = out["image"], out["label"]
    assert image.shape == (3, 32, 40) and label.shape == (32, 40)
    wrong, pure = _misaligned(image, label)
    assert pure > 0.3 * label.numel() and wrong == 0
    # padding: label 255 exactly where the image is the fill value 0
    assert torch.equal(label == 255, (image == 0).all(0))
    # the check can fail: a label one pixel off, or mirrored, is caught
    assert _misaligned(image, label.roll(1, dims=1))[0] > 0
    assert _misaligned(image, label.flip(-1))[0] > 0


def test_same_seed_same_output_and_different_seed_different_output():
    sample = _blocks(0)
    pipeline = build_transforms(True, crop_size=(24, 24), brightness=0.3, contrast=0.3, saturation=0.3)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(pipeline(sample))
    assert torch.equal(runs[0]["image"], runs[1]["image"]) and torch.equal(runs[0]["label"], runs[1]["label"])
    assert not torch.equal(runs[0]["image"], runs[2]["image"])


def test_generator_makes_draws_reproducible_and_leaves_global_rng_alone():
    sample = _blocks(1)
    outs = []
    for _ in range(2):
        pipeline = build_transforms(True, crop_size=24, generator=torch.Generator().manual_seed(5))
        state = torch.random.get_rng_state()
        outs.append([pipeline(sample) for _ in range(3)])
        assert torch.equal(state, torch.random.get_rng_state())
    for a, b in zip(*outs):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(outs[0][0]["label"], outs[0][1]["label"])


class _Repeated(torch.utils.data.Dataset):
    def __init__(self, sample: dict, n: int, transform) -> None:
        self.sample, self.n, self.transform = sample, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return self.transform(self.sample)


def test_dataloader_workers_are_deterministic_under_a_seed():
    data = _Repeated(_blocks(2), 6, build_transforms(True, crop_size=16))

    def run(seed: int) -> torch.Tensor:
        loader = DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate,
                            generator=torch.Generator().manual_seed(seed))
        return torch.cat([batch["label"] for batch in loader])  # (6, 16, 16)

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len({tuple(x.flatten().tolist()) for x in first}) == 6  # workers do not repeat each other


def test_random_crop_takes_one_window_of_image_and_label():
    sample = _ramp(10, 12)
    out = RandomCrop((5, 7), generator=torch.Generator().manual_seed(0))(sample)
    top, left = divmod(int(round(out["image"][0, 0, 0].item() * 4000)), 12)
    assert torch.equal(out["image"], sample["image"][:, top : top + 5, left : left + 7])
    assert torch.equal(out["label"], sample["label"][top : top + 5, left : left + 7])
    assert out["name"] == "ramp"


def test_random_crop_pads_image_with_fill_and_label_with_255():
    sample = _ramp(4, 6)
    out = RandomCrop((6, 8), image_fill=(0.1, 0.2, 0.3))(sample)
    assert torch.equal(out["image"][:, :4, :6], sample["image"])
    assert torch.equal(out["label"][:4, :6], sample["label"])
    assert (out["label"][4:] == 255).all() and (out["label"][:, 6:] == 255).all()
    fill = torch.tensor([0.1, 0.2, 0.3]).reshape(3, 1)
    assert torch.equal(out["image"][:, 4:, :].reshape(3, -1), fill.expand(3, 16))
    assert torch.equal(out["image"][:, :4, 6:].reshape(3, -1), fill.expand(3, 8))


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    # columns 0..15 class 0, columns 16..31 alternate classes 1 and 2; an 8x8 crop at column
    # offset `left` is 0-dominated (share >= 0.75) unless left >= 11.
    label = torch.cat([torch.zeros(8, 16, dtype=torch.long), (torch.arange(16) % 2 + 1).expand(8, 16)], 1)
    sample = {"image": torch.zeros(3, 8, 32), "label": label}
    redrawn = 0
    for seed in range(20):
        plain = RandomCrop(8, generator=torch.Generator().manual_seed(seed))(sample)["label"]
        crop = RandomCrop(8, cat_max_ratio=0.75, generator=torch.Generator().manual_seed(seed))(sample)["label"]
        share = (crop == 0).float().mean().item()
        assert share < 0.75 and len(crop.unique()) > 1
        redrawn += (plain == 0).float().mean().item() >= 0.75
    assert redrawn > 0
    single = {"image": torch.zeros(3, 8, 32), "label": torch.zeros(8, 32, dtype=torch.long)}
    assert RandomCrop(8, cat_max_ratio=0.75)(single)["label"].shape == (8, 8)  # gives up after 10 draws


def test_random_scale_sizes_and_nearest_labels():
    sample = _ramp(6, 10)
    out = RandomScale((2.0, 2.0))(sample)
    assert out["image"].shape == (3, 12, 20)
    assert torch.equal(out["label"], sample["label"].repeat_interleave(2, 0).repeat_interleave(2, 1))
    out = RandomScale((1.0, 1.0), base_size=12)(sample)  # shorter side 6 -> 12
    assert out["image"].shape == (3, 12, 20)
    torch.manual_seed(0)
    for _ in range(10):
        out = RandomScale((0.5, 2.0))(sample)
        h, w = out["label"].shape
        assert 3 <= h <= 12 and abs(w / h - 10 / 6) < 0.35
        assert set(out["label"].unique().tolist()) <= set(sample["label"].unique().tolist())
    same = RandomScale((1.0, 1.0))(sample)
    assert torch.allclose(same["image"], sample["image"]) and torch.equal(same["label"], sample["label"])


def test_label_resampling_uses_the_pixel_centres_bilinear_uses():
    # 10 -> 4 pixels: bilinear (align_corners=False) samples source coordinates (d + 0.5) * 2.5 - 0.5
    # = 0.75, 3.25, 5.75, 8.25, whose nearest pixels are 1, 3, 6, 8 (legacy "nearest" would take 0, 2, 5, 7).
    idx = torch.arange(100).reshape(10, 10)
    out = Resize((4, 4))({"image": torch.zeros(3, 10, 10), "label": idx})["label"]
    rows = cols = torch.tensor([1, 3, 6, 8])
    assert torch.equal(out, idx[rows][:, cols])


def test_resize_and_flip():
    sample = _ramp(6, 10)
    assert Resize(3)(sample)["image"].shape == (3, 3, 5)
    out = Resize((4, 4), resize_label=False)(sample)
    assert out["image"].shape == (3, 4, 4) and torch.equal(out["label"], sample["label"])
    flipped = RandomHorizontalFlip(p=1.0)(sample)
    assert torch.equal(flipped["image"], sample["image"].flip(-1))
    assert torch.equal(flipped["label"], sample["label"].flip(-1))
    assert RandomHorizontalFlip(p=0.0)(sample) is sample


def test_color_jitter_formulas():
    torch.manual_seed(0)
    image = 0.3 + 0.2 * torch.rand(3, 5, 6)  # in [0.3, 0.5]: no clamping below
    out = ColorJitter(0.4, 0.5, 0.6, generator=torch.Generator().manual_seed(3))({"image": image})["image"]
    g = torch.Generator().manual_seed(3)
    ranges = [(0.6, 1.4), (0.5, 1.5), (0.4, 1.6)]  # [1 - x, 1 + x] for brightness, contrast, saturation
    fb, fc, fs = (lo + (hi - lo) * torch.rand((), generator=g).item() for lo, hi in ranges)
    luma = torch.tensor([0.299, 0.587, 0.114]).reshape(3, 1, 1)
    expected = image * fb
    mean = (expected * luma).sum(0).mean()
    expected = mean + fc * (expected - mean)
    grey = (expected * luma).sum(0)
    expected = grey + fs * (expected - grey)
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-6)
    assert not torch.allclose(out, image)
    with pytest.raises(ValueError, match="brightness must be >= 0"):
        ColorJitter(brightness=-0.1)


def test_normalize_numbers():
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    out = Normalize()({"image": mean.expand(3, 2, 2).clone()})["image"]
    assert torch.allclose(out, torch.zeros(3, 2, 2), atol=1e-7)
    ones = Normalize()({"image": torch.ones(3, 1, 1)})["image"].flatten()
    assert torch.allclose(ones, torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]))


def test_build_transforms_and_collate():
    sample = _blocks(3)
    torch.manual_seed(0)
    train = build_transforms(True, crop_size=(20, 30), cat_max_ratio=0.9, brightness=0.2)
    batch = collate([train(sample), train(sample)])
    assert batch["image"].shape == (2, 3, 20, 30) and batch["label"].dtype == torch.int64
    ev = build_transforms(False, eval_size=24)(sample)
    assert ev["image"].shape == (3, 24, 32) and ev["label"].shape == (48, 64)
    plain = build_transforms(False)(sample)["image"]
    assert torch.allclose(plain, Normalize()(sample)["image"])
    with pytest.raises(ValueError, match="needs crop_size"):
        build_transforms(True)
    with pytest.raises(ValueError, match=r"cannot stack 'image' of shapes \[\(3, 24, 32\), \(3, 48, 64\)\]"):
        collate([ev, build_transforms(False)(sample)])
