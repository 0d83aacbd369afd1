"""The embedded demo: evaluation strips from ``data.eval_options``, the near/far disc scores, a tiny end-to-end run."""
from __future__ import annotations

import json

import pytest

from nlseg.errors import OutputError
import torch
import torch.nn.functional as F
from PIL import Image

from nlseg.config import load_config
from nlseg.data.build import build_dataset
from nlseg.data.synthetic import _DISC_RADIUS, BEACON_A, BEACON_B, DISC_A, DISC_B, SyntheticContext
from nlseg.apps.demo import _context_scores, run_demo

# Both demo recipes, shrunk to seconds: small strips, few images, a few iterations.
TINY = [
    "data.options.size=[48,128]", "data.crop_size=[48,128]", "data.options.length=4",
    "data.eval_options.size=[48,256]", "train.batch_size=2", "train.log_interval=1",
    "model.options.backbone_width=8", "model.options.head_channels=16",
]


def test_eval_options_replace_options_for_evaluation_only() -> None:
    cfg = load_config("demo")
    assert cfg.data.options["size"] == [96, 256] and cfg.data.eval_options == {"size": [96, 512]}
    train_set = build_dataset(cfg, cfg.data.train_split, train=True)
    val_set = build_dataset(cfg, cfg.data.val_split, train=False)
    assert train_set.size == (96, 256) and val_set.size == (96, 512)
    assert val_set.length == train_set.length == 256  # options not named in eval_options are kept
    assert val_set[0]["label"].shape == (96, 512)


class _Oracle(torch.nn.Module):
    """Returns the ground truth of the data set's images in order, with the pixels of the discs far from
    the beacon given the other disc class: a model whose near/far disc accuracy is known (100 / 0).

    "Far" here comes from the generator's geometry, not from the code under test: every disc but the cued
    one is centred at least the cue distance from the beacon, so all its pixels lie within one largest
    disc radius of that.
    """

    def __init__(self, dataset: SyntheticContext, wrong_far: bool) -> None:
        super().__init__()
        self.labels = [dataset[i]["label"] for i in range(len(dataset))]
        self.wrong_far, self.calls = wrong_far, 0
        self.far = dataset.cue_distance * max(dataset.size) - _DISC_RADIUS[1] * min(dataset.size)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        label = self.labels[self.calls].clone()  # (H, W)
        self.calls += 1
        if self.wrong_far:
            beacon = ((label == BEACON_A) | (label == BEACON_B)).nonzero().double().mean(0)  # (2,)
            yy, xx = torch.meshgrid(torch.arange(label.shape[0]), torch.arange(label.shape[1]), indexing="ij")
            far = torch.hypot(yy - beacon[0], xx - beacon[1]) >= self.far  # (H, W)
            disc = (label == DISC_A) | (label == DISC_B)
            label[disc & far] = DISC_A + DISC_B - label[disc & far]  # swap a <-> b
        label[label == 255] = 0
        return {"out": F.one_hot(label, 8).permute(2, 0, 1)[None].float()}  # (1, 8, H, W)


@pytest.mark.parametrize("wrong_far", [False, True])
def test_context_scores_split_discs_by_distance_from_the_beacon(wrong_far: bool) -> None:
    dataset = SyntheticContext("val", length=6, size=(48, 160))
    scores = _context_scores(_Oracle(dataset, wrong_far), dataset, load_config("demo"), count=6)
    assert scores["near"] == pytest.approx(100.0)
    if wrong_far:
        assert scores["far"] == pytest.approx(0.0)
        assert 0 < scores["mIoU"] < 100  # the two disc classes are confused far from the beacon
    else:
        assert scores["far"] == pytest.approx(100.0) and scores["mIoU"] == pytest.approx(100.0)


def test_tiny_demo_trains_both_networks_prints_both_tables_and_draws(tmp_path, capsys) -> None:
    results = run_demo(tmp_path, iters=3, overrides=TINY, context_images=2)
    out = capsys.readouterr().out
    assert list(results) == ["Baseline", "Denoised NL"]
    for label, result in results.items():
        assert result["iteration"] == 3 and result["num_images"] == 4
        assert set(result["context"]) == {"48x128", "48x256"}
        assert all(0 <= result["context"][k]["mIoU"] <= 100 for k in result["context"])
        assert (tmp_path / "work" / ("demo_baseline" if label == "Baseline" else "demo") / "last.pt").is_file()
    assert "48x256 strips (both networks trained on 48x128 strips)" in out
    assert "| disc_a |" in out and "discs ≥ 128 px from the beacon (48x256 strips)" in out
    assert "| mIoU (48x128 strips) |" in out and "mIoU (48x256" not in out  # the scored strips' is the table's
    picture = Image.open(tmp_path / "predictions.png")
    assert picture.width == 4 * 256 + 3 * 4  # input, ground truth, two predictions, at the evaluation width
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["Denoised NL"]["mIoU"] == pytest.approx(results["Denoised NL"]["mIoU"])

    # a second demo into the same folder replaces the demo's own runs (it reproduces them from the seed) ...
    again = run_demo(tmp_path, iters=3, overrides=TINY, context_images=2)
    assert "replacing the previous demo run in" in capsys.readouterr().out
    assert again["Denoised NL"]["mIoU"] == results["Denoised NL"]["mIoU"]
    assert sorted(p.name for p in (tmp_path / "work" / "demo").iterdir() if not p.name.startswith("previous")) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "train.log"]
    # ... but never a run of another recipe
    (tmp_path / "work" / "demo" / "config.yaml").write_text("name: my_experiment\n")
    with pytest.raises(OutputError, match="holds a run of 'my_experiment'"):
        run_demo(tmp_path, iters=3, overrides=TINY, context_images=2)
    assert (tmp_path / "work" / "demo" / "last.pt").is_file()


def test_demo_baseline_receptive_field_is_727_px_wide() -> None:
    """The reach the SyntheticContext docstring quotes: the gradient of one output pixel is non-zero on
    input columns -371..+355 around it (strided convolutions make it lopsided)."""
    from nlseg.engine.trainer import build_model

    model = build_model(load_config("demo_baseline"), 8).eval()
    image = torch.randn(1, 3, 96, 1024, requires_grad=True)
    model(image)["out"][0, :, 48, 512].sum().backward()
    columns = image.grad.abs().sum((0, 1, 2)).nonzero().flatten() - 512  # (n,)
    assert (columns.min().item(), columns.max().item()) == (-371, 355)
