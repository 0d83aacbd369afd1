"""nlseg's defaults and options that reproduce the authors' released code (issue 12)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nlseg.blocks import create_block
from nlseg.models import create_model

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
