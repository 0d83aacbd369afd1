"""Models are composed of parts: Segmentor's forward, the state-dict layout, old checkpoints, the backbone options
in one place, and every model built on the meta device."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.models import (
    ANNDecoder,
    BackboneOptions,
    DenoisedNLDecoder,
    FCNDecoder,
    Segmentor,
    create_model,
    list_models,
    model_options,
)

NUM_CLASSES = 3
SMALL = dict(backbone_width=8, head_channels=16)
ONE_PER_FAMILY = {"fcn_r18": FCNDecoder, "ann_r50": ANNDecoder, "nl_r50": DenoisedNLDecoder,
                  "denoised_nl_r18": DenoisedNLDecoder}


def build(name: str, seed: int) -> Segmentor:
    torch.manual_seed(seed)
    options = SMALL | {key: 8 for key in ("key_channels", "value_channels") if key in model_options(name)}
    model = create_model(name, num_classes=NUM_CLASSES, **options)
    with torch.no_grad():  # no zero-initialised block: every weight reaches the output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


class Stages(nn.Module):
    """A toy backbone: layer2 and layer3 maps at 1/2 and 1/4 of the input."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"layer2": F.avg_pool2d(x, 2), "layer3": F.avg_pool2d(x, 4)}


class Reads(nn.Module):
    """A toy decoder that returns layer3's map plus twice the layer2 head's logits pooled to its size."""

    def forward(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        return features["layer3"] + 2 * F.avg_pool2d(aux["layer2"], 2)


def test_segmentor_runs_backbone_heads_decoder_and_resizes_in_head_order():
    heads = {"layer3": nn.Conv2d(3, 3, 1), "layer2": nn.Conv2d(3, 3, 1)}
    model = Segmentor(Stages(), Reads(), heads, num_classes=3, align_corners=False)
    assert isinstance(model.aux_heads, nn.ModuleDict) and list(model.aux_heads) == ["layer3", "layer2"]
    assert (model.num_classes, model.align_corners) == (3, False)
    x = torch.randn(2, 3, 16, 12)
    with torch.no_grad():
        result = model(x)
        layer2, layer3 = F.avg_pool2d(x, 2), F.avg_pool2d(x, 4)
        aux2, aux3 = heads["layer2"](layer2), heads["layer3"](layer3)
        out = layer3 + 2 * F.avg_pool2d(aux2, 2)

    def up(t: Tensor) -> Tensor:
        return F.interpolate(t, size=(16, 12), mode="bilinear", align_corners=False)

    torch.testing.assert_close(result["out"], up(out), rtol=0, atol=0)
    assert len(result["aux"]) == 2
    torch.testing.assert_close(result["aux"][0], up(aux3), rtol=0, atol=0)  # aux_heads order
    torch.testing.assert_close(result["aux"][1], up(aux2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        Segmentor(Stages(), Reads(), heads, num_classes=0, align_corners=False)


DECODER_PARTS = {
    FCNDecoder: {"head"},
    ANNDecoder: {"fusion", "reduce", "context", "classifier"},
    DenoisedNLDecoder: {"reduction", "block", "fuse", "global_context", "head"},
}


@pytest.mark.parametrize("name", list(ONE_PER_FAMILY))
def test_parts_and_state_dict_layout(name: str):
    model = build(name, seed=0)
    assert type(model) is Segmentor and type(model.decoder) is ONE_PER_FAMILY[name]
    keys = list(model.state_dict())
    assert {key.split(".", 1)[0] for key in keys} == {"backbone", "aux_heads", "decoder"}
    assert {key.split(".")[1] for key in keys if key.startswith("decoder.")} == DECODER_PARTS[ONE_PER_FAMILY[name]]




@pytest.mark.slow
def test_every_model_builds_on_the_meta_device():
    """Config validation builds models on meta (to count auxiliary outputs): no storage, no initialisation cost."""
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, num_classes=19)
        tensors = [*model.parameters(), *model.buffers()]
        assert tensors and all(t.is_meta for t in tensors), name
        assert len(model.aux_heads) == (1 if name.startswith(("fcn", "ann")) or "_head_" in name else 2), name


def test_backbone_options_are_one_place_and_options_of_every_model():
    fields = set(BackboneOptions().options())
    assert fields == {"backbone", "norm_layer", "backbone_width", "output_stride", "stem", "multi_grid",
                      "dilate_first_block", "stem_ceil_mode", "grad_checkpointing"}
    for name in list_models():
        fixed = {"multi_grid", "dilate_first_block"} if name.startswith("ann") and "_head_" not in name else set()
        assert set(model_options(name)) & fields == fields - fixed, name
    model = create_model("fcn_r18", num_classes=NUM_CLASSES, stem="deep", output_stride=16, **SMALL)
    assert isinstance(model.backbone.conv1, nn.Sequential) and model.backbone.stage_strides["layer4"] == 16
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['multi_grid'\]"):
        create_model("ann_r50", num_classes=NUM_CLASSES, multi_grid=(1, 2, 4))  # ANN's backbone has none
    with pytest.raises(TypeError, match=r"unknown backbone option\(s\) \['stride'\]; the options are \['backbone'"):
        BackboneOptions().replace(stride=8)
