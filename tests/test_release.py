"""nlseg's defaults and options that reproduce the authors' released code (issue 12)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nlseg.blocks import create_block
from nlseg.models import create_model

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

NUM_CLASSES = 5
SMALL = dict(backbone_width=8, head_channels=16, key_channels=8)


def _std_ratio(conv: nn.Conv2d, fan: int, gain: float) -> float:
    """Empirical std of a conv's weights over the Kaiming std ``gain / sqrt(fan)``."""
    return conv.weight.std().item() / (gain / math.sqrt(fan))


def test_released_init_is_kaiming_fan_in_gain_1_on_every_conv_and_unit_norms() -> None:
    torch.manual_seed(0)
    model = create_model("denoised_nl_r18", num_classes=NUM_CLASSES, init="released", **SMALL)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    assert len(convs) > 10
    for conv in convs:  # kaiming_normal_(a=1): std 1 / sqrt(fan-in), backbone and heads alike
        fan_in = conv.weight[0].numel()
        assert _std_ratio(conv, fan_in, 1.0) == pytest.approx(1.0, abs=0.06)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((n.weight == 1).all()) and bool((n.bias == 0).all()) for n in norms)

    torch.manual_seed(0)
    pytorch = create_model("denoised_nl_r18", num_classes=NUM_CLASSES, init="pytorch", **SMALL)
    conv = pytorch.backbone.layer4[1].conv2  # the backbone's own init: Kaiming fan-out, ReLU gain
    assert _std_ratio(conv, conv.weight.shape[0] * 9, math.sqrt(2)) == pytest.approx(1.0, abs=0.06)
    released = model.backbone.layer4[1].conv2
    assert _std_ratio(released, released.weight.shape[0] * 9, math.sqrt(2)) < 0.8  # not the same init


def test_released_init_leaves_the_pretrained_backbone_as_loaded(tmp_path) -> None:
    torch.manual_seed(1)
    source = create_model("denoised_nl_r18", num_classes=NUM_CLASSES, init="pytorch", **SMALL).backbone
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    model = create_model("denoised_nl_r18", num_classes=NUM_CLASSES, init="released", pretrained_backbone=str(path),
                         **SMALL)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_unknown_init_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown init 'xavier'; expected one of \('released', 'pytorch'\)"):
        create_model("dnl_baseline_r18", num_classes=NUM_CLASSES, init="xavier", backbone_width=8, head_channels=16)


def test_qkv_bias_option() -> None:
    torch.manual_seed(0)
    plain = create_block("denoised_nl", 16, key_channels=4, qkv_bias=False)
    assert all(conv.bias is None for conv in (plain.query, plain.key, plain.value))
    biased = create_block("denoised_nl", 16, key_channels=4, qkv_bias=True)
    assert [tuple(c.bias.shape) for c in (biased.query, biased.key, biased.value)] == [(4,), (4,), (16,)]
    # With the biases zeroed the two blocks compute the same function.
    biased.load_state_dict(plain.state_dict(), strict=False)
    for conv in (biased.query, biased.key, biased.value):
        nn.init.zeros_(conv.bias)
    plain.gamma.data.fill_(0.5), biased.gamma.data.fill_(0.5)
    x, probs = torch.randn(2, 16, 5, 6), torch.rand(2, 3, 5, 6).softmax(1)
    torch.testing.assert_close(plain(x, probs), biased(x, probs))
    model = create_model("denoised_nl_r18", num_classes=NUM_CLASSES, qkv_bias=False, **SMALL)
    assert "decoder.block.query.bias" not in model.state_dict()


# --- class weights (loss.class_weights) ------------------------------------------------------------------

# Five pixels of one image, two classes: probabilities of (class 0, class 1) and the label.
PROBS = [(0.5, 0.5), (0.1, 0.9), (0.8, 0.2), (0.4, 0.6), (0.3, 0.7)]
LABELS = [0, 1, 1, 0, 255]  # true-class probabilities 0.5, 0.9, 0.2, 0.4; the last pixel is ignored
WEIGHTS = [2.0, 0.5]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(PROBS, dtype=torch.float64).log().T.reshape(1, 2, 1, 5)  # (B, K, H, W)
    return logits, torch.tensor(LABELS).reshape(1, 1, 5)


def _loss(main: str, min_kept: int, weights: list[float] | None):
    from nlseg.config import LossConfig
    from nlseg.engine.losses import SegmentationLoss

    cfg = LossConfig(main=main, ohem_threshold=0.7, ohem_min_kept=min_kept, aux_weights=[0.4], class_weights=weights)
    logits, labels = _batch()
    return SegmentationLoss(cfg).double()({"out": logits, "aux": [logits]}, labels)


def test_class_weighted_ohem_against_a_hand_computed_case() -> None:
    ln = math.log
    # Kept: true-class probability <= 0.7 (0.5, 0.2, 0.4); the weights do not change the selection. The
    # weighted losses are averaged over the 3 kept pixels, as the released FSOhemCELoss does.
    total, parts = _loss("ohem", 1, WEIGHTS)
    assert parts["main"].item() == pytest.approx((2 * -ln(0.5) + 0.5 * -ln(0.2) + 2 * -ln(0.4)) / 3, rel=1e-12)
    # The auxiliary loss is PyTorch's weighted mean over every labelled pixel (divided by the weights' sum).
    aux = (2 * -ln(0.5) + 0.5 * -ln(0.9) + 0.5 * -ln(0.2) + 2 * -ln(0.4)) / (2 + 0.5 + 0.5 + 2)
    assert parts["aux0"].item() == pytest.approx(aux, rel=1e-12)
    assert total.item() == pytest.approx(parts["main"].item() + 0.4 * aux, rel=1e-12)
    # min_kept = 4 raises the threshold to the 4th smallest probability (0.9): every pixel is kept, and the
    # weighted sum is still divided by the number of pixels, not by the sum of their weights.
    _, parts = _loss("ohem", 4, WEIGHTS)
    assert parts["main"].item() == pytest.approx(aux * 5 / 4, rel=1e-12)
    # A heavy class-1 weight must not pull the easy 0.9 pixel into the selection (exp(-6·l) = 0.53 <= 0.7
    # would, if the selection read the weighted loss): still the same 3 pixels, divided by 3.
    _, heavy = _loss("ohem", 1, [2.0, 6.0])
    assert heavy["main"].item() == pytest.approx((2 * -ln(0.5) + 6 * -ln(0.2) + 2 * -ln(0.4)) / 3, rel=1e-12)
    _, unweighted = _loss("ohem", 1, None)
    assert unweighted["main"].item() == pytest.approx((-ln(0.5) - ln(0.2) - ln(0.4)) / 3, rel=1e-12)


def test_class_weighted_cross_entropy_main_loss() -> None:
    _, parts = _loss("ce", 0, WEIGHTS)
    assert parts["main"].item() == pytest.approx(parts["aux0"].item(), rel=1e-12)
    _, plain = _loss("ce", 0, None)
    assert plain["main"].item() == pytest.approx(-sum(math.log(p) for p in (0.5, 0.9, 0.2, 0.4)) / 4, rel=1e-12)


def test_class_weights_are_checked_against_the_data_set_at_load() -> None:
    from nlseg.config import load_config
    from nlseg.errors import ConfigError

    cfg = load_config("ann_r101_cityscapes")
    assert len(cfg.loss.class_weights) == 19 and cfg.loss.class_weights[0] == 0.8373
    assert cfg.loss.class_weights[-1] == 1.0507
    with pytest.raises(ConfigError, match=r"ann_r101_cityscapes\.yaml with --set: loss\.class_weights must hold 19 "
                                          r"weight\(s\), one per class of the cityscapes data set, got 2$"):
        load_config("ann_r101_cityscapes", ["loss.class_weights=[1, 2]"])
    with pytest.raises(ConfigError, match=r"loss\.class_weights\[1\] must be > 0"):
        load_config("ann_r101_cityscapes", ["loss.class_weights=[1, 0]"])
    with pytest.raises(ConfigError, match=r"must hold 60 weight\(s\), one per class of the pascal_context"):
        load_config("ann_r101_pascal_context", ["loss.class_weights=[1, 2]"])
    assert load_config("demo").loss.class_weights is None


# --- data.normalize, through a checkpoint ----------------------------------------------------------------


def test_caffe_normalization_is_bgr_0_255_minus_the_caffe_means() -> None:
    from nlseg.data.transforms import normalization

    rgb = torch.tensor([0.2, 0.5, 1.0]).reshape(3, 1, 1)
    caffe = normalization("caffe").image(rgb).flatten().tolist()
    assert caffe == pytest.approx([255 - 102.9801, 127.5 - 115.9465, 51 - 122.7717], rel=1e-6)
    imagenet = normalization("imagenet").image(rgb).flatten().tolist()
    assert imagenet == pytest.approx([(0.2 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1.0 - 0.406) / 0.225], rel=1e-6)


def test_normalize_round_trip_through_the_checkpoint(tmp_path) -> None:
    """A run trained with data.normalize=caffe: best.pt and last.pt carry it, and the Segmenter and
    ``nlseg eval`` (given a recipe that says imagenet) normalise as training did."""
    import dataclasses

    from test_trainer import write_recipe

    from nlseg.config import load_config
    from nlseg.data.build import build_dataset
    from nlseg.data.transforms import normalization
    from nlseg.engine.checkpoint import load_checkpoint
    from nlseg.engine.evaluate import evaluate, evaluate_checkpoint
    from nlseg.engine.inference import Segmenter, build_model_from_checkpoint
    from nlseg.engine.trainer import train

    recipe = write_recipe(tmp_path / "r.yaml", iters=2, checkpoint_interval=2, evaluate=True)
    cfg = load_config(recipe, ["data.normalize=caffe"])
    train(cfg, tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "run" / name)["config"]["data"]["normalize"] == "caffe", name

    checkpoint = tmp_path / "run" / "best.pt"
    segmenter = Segmenter.from_checkpoint(checkpoint)
    assert segmenter.normalize == "caffe"
    rgb = torch.rand(3, 40, 44, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = segmenter.model(normalization("caffe").image(rgb)[None])["out"][0].softmax(0)
        other = segmenter.model(normalization("imagenet").image(rgb)[None])["out"][0].softmax(0)
    probs = segmenter.predict_proba(rgb)
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs, other)

    imagenet = load_config(recipe)  # the recipe says imagenet; the checkpoint's caffe wins
    assert imagenet.data.normalize == "imagenet"
    scored = evaluate_checkpoint(imagenet, checkpoint, device="cpu", progress=False)
    model, _ = build_model_from_checkpoint(checkpoint, imagenet, "cpu")
    for norm, same in (("caffe", True), ("imagenet", False)):
        data = dataclasses.replace(imagenet, data=dataclasses.replace(imagenet.data, normalize=norm))
        dataset = build_dataset(data, data.data.val_split, train=False)
        direct = evaluate(model, dataset, data.eval, device="cpu", num_classes=dataset.num_classes, progress=False)
        assert (direct["confusion_matrix"] == scored["confusion_matrix"]) is same, norm
