"""Every registered model: outputs, gradients, modes, save/load, norms; then full-size parameter counts
derived by hand, Table V's FLOPs, the wiring of the two papers' networks, weights files and errors."""
from __future__ import annotations

import dataclasses
import functools
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from conftest import deep_is_slow

from nlseg.analysis.measure import count_flops
from nlseg.backbones import WeightsMismatchError, resnet50
from nlseg.blocks import DenoisedNL
from nlseg.models import ZooEntry, create_model, list_models, model_info, model_options, register_model, zoo_entry
from nlseg.models.denoised import denoised_nl_pipeline

NUM_CLASSES = 3
SIZE = (65, 67)
# head_channels 16: every derived width stays >= 1 (layer2 head: 16 / 8; DRANet*'s CCAM: 16 / 16).
SMALL = dict(backbone_width=8, head_channels=16)


class TaggedNorm(nn.BatchNorm2d):
    """A BatchNorm2d the tests can tell apart, to see that ``norm_layer`` reaches every norm."""


def small_options(name: str) -> dict:
    accepted = model_options(name)
    return SMALL | {key: 8 for key in ("key_channels", "value_channels") if key in accepted}


def build(name: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=NUM_CLASSES, **(small_options(name) | options))


def perturb_zero_parameters(model: nn.Module) -> None:
    """Give zero-initialised parameters (γ, Wo, BN γ after Wo, biases) random values so gradients reach everything."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.5)


def test_every_row_of_both_papers_is_registered():
    families = {
        "fcn": (18, 50, 101),
        "denoised_nl": (18, 50, 101),
        "dnl_baseline": (18, 50, 101),
        **{f: (50, 101) for f in ("nl", "ocnet", "ccnet", "danet", "dranet", "ppm", "aspp")},
        **{f"{f}_head": (50, 101) for f in ("nl", "danet", "ppm", "aspp", "ann", "ccnet", "fcn")},  # original networks
        **{
            f: (50, 101)
            for f in ("ann", "ann_baseline", "ann_nb", "ann_apnb", "ann_common_fusion", "ann_fnb", "ann_afnb")
            + ("ann_common_fusion_nb", "ann_fnb_nb")
        },
    }
    expected = {f"{family}_r{depth}" for family, depths in families.items() for depth in depths}
    assert set(list_models()) == expected
    assert model_info("ann_r101")["miou"] == 79.9 and "Table 6" in model_info("ann_r101")["paper"]
    assert model_info("denoised_nl_r101")["miou"] == 83.5 and model_info("denoised_nl_r101")["input_size"] == (768, 768)
    assert model_info("ann_r50")["miou"] is None  # the paper has no ResNet-50 row for ANN


BN = nn.BatchNorm2d
SHARED = dict(norm_layer=BN, backbone_width=64, output_stride=8, stem_ceil_mode=False)
FCN_OPTIONS = SHARED | dict(stem="classic", multi_grid=None, dilate_first_block=False, head_channels=512, dropout=0.1,
                            aux_layers=("layer3",), align_corners=True, grad_checkpointing=False)
ANN_OPTIONS = SHARED | dict(stem="classic", head_channels=512, key_channels=256, value_channels=256, dropout=0.05,
                            align_corners=True, grad_checkpointing=False,
                            # the ablation options (Tables 7 and 9, paper vs release switches) default to the release
                            context_pool_sizes=(1, 3, 6, 8), context_pool_mode="avg", fusion_stages=("layer3",),
                            share_key_query=True, share_key_value=False, norm_after_wo=False, scaled_attention=True)
PIPELINE_OPTIONS = SHARED | dict(stem="deep", multi_grid=(1, 2, 4), dilate_first_block=True, head_channels=512,
                                 dropout=0.05, global_context=True, align_corners=True, grad_checkpointing=False,
                                 init="released")
HEAD_OPTIONS = SHARED | dict(stem="v1c", multi_grid=None, dilate_first_block=False, head_channels=512, dropout=0.1,
                             align_corners=False, grad_checkpointing=False)
DNL_OPTIONS = PIPELINE_OPTIONS | dict(key_channels=64, kernel_size=3, rectify=True, retain=True, detach_class_probs=False,
                                      qkv_bias=False, class_map_source="layer3_head")


def expected_options(name: str) -> dict:
    """Every model's options and defaults as they were before the segmentors were composed of parts."""
    family, depth = name.rsplit("_r", 1)
    backbone = {"backbone": f"resnet{depth}"}
    small_grid = {"multi_grid": (1, 2)} if depth == "18" else {}
    if family.endswith("_head"):  # the blocks' original networks (mmsegmentation's heads), ann_head too
        return backbone | HEAD_OPTIONS
    if family == "fcn":
        return backbone | FCN_OPTIONS
    if family.startswith("ann"):
        return backbone | ANN_OPTIONS
    if family == "denoised_nl":
        return backbone | DNL_OPTIONS | small_grid
    return backbone | PIPELINE_OPTIONS | small_grid


@pytest.mark.parametrize("name", list_models())
def test_model_options_and_defaults_are_kept(name: str):
    assert model_options(name) == expected_options(name)


@pytest.mark.parametrize("name", deep_is_slow(list_models()))
def test_model_outputs_gradients_modes_and_round_trip(name: str):
    model = build(name, norm_layer=TaggedNorm)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert norms and all(type(m) is TaggedNorm for m in norms)
    perturb_zero_parameters(model)
    x = torch.randn(2, 3, *SIZE)

    model.train()
    result = model(x)
    assert set(result) == {"out", "aux"} and len(result["aux"]) == len(model.aux_heads) >= 1
    for logits in (result["out"], *result["aux"]):
        assert logits.shape == (2, NUM_CLASSES, *SIZE)
    weights = torch.randn(len(result["aux"]) + 1, 2, NUM_CLASSES, *SIZE)
    loss = sum((w * logits).sum() for w, logits in zip(weights, (result["out"], *result["aux"])))
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: {param_name} gradient is zero"

    model.eval()
    x = x[:1]
    with torch.no_grad():
        first, second = model(x, with_aux=True), model(x, with_aux=True)
    torch.testing.assert_close(first["out"], second["out"], rtol=0, atol=0)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, seed=1, norm_layer=TaggedNorm)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.eval()
    with torch.no_grad():
        again = restored(x, with_aux=True)
    for a, b in zip((first["out"], *first["aux"]), (again["out"], *again["aux"])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# Parameter counts of the full-size networks with K = 19, derived from the architecture by hand.
K = 19
RESNET101 = 44_549_160 - (2048 * 1000 + 1000)  # torchvision's ResNet-101 without its ImageNet classifier
DEEP_STEM = (3 * 64 + 64 * 64 + 64 * 128) * 9 + 2 * (64 + 64 + 128) - (3 * 64 * 49 + 2 * 64) + (64 * 64 + 64 * 256)
#           three 3x3 convs                    their BNs              classic 7x7 + BN       layer1.0 sees 128 ch in
CLASSIFIER = 512 * K + K
AUX_LAYER3 = 9 * 1024 * 512 + 2 * 512 + CLASSIFIER  # conv3x3 1024 -> 512 + BN + conv1x1
AUX_LAYER2 = 9 * 512 * 64 + 2 * 64 + 64 * K + K  # conv3x3 512 -> 64 + BN + conv1x1
FCN_R101 = RESNET101 + (9 * 2048 * 512 + 2 * 512 + CLASSIFIER) + AUX_LAYER3
AFNB = (
    (2048 * 256 + 2 * 256)  # query: conv1x1 (no bias) + BN
    + (1024 * 256 + 2 * 256)  # key: conv1x1 + BN
    + (1024 * 256 + 256)  # value: conv1x1 with bias
    + (256 * 2048 + 2048)  # Wo
    + (4096 * 2048 + 2 * 2048)  # fuse: conv1x1 over cat(Wo(O), high) + BN
)
APNB = (512 * 256 + 2 * 256) + (512 * 256 + 256) + (256 * 512 + 512) + (1024 * 512 + 2 * 512)
ANN_R101 = RESNET101 + AFNB + (9 * 2048 * 512 + 2 * 512) + APNB + CLASSIFIER + AUX_LAYER3
DNL_R101 = (
    RESNET101
    + DEEP_STEM
    + (9 * 2048 * 512 + 2 * 512)  # reduction conv3x3 + BN
    + 3 * (9 * 512 * 512 + 2 * 512)  # basic block: two 3x3 convs + BNs, 3x3 stride-2 shortcut + BN
    + (2 * 512 * 64 + 512 * 512 + 1)  # Denoised NL: q, k, v (no biases, as released) and γ
    + (9 * 512 * 512 + 2 * 512)  # conv3x3 after the x2 upsampling
    + (2048 * 512 + 512)  # global context conv1x1
    + (9 * (2048 + 512 + 512) * 512 + 2 * 512 + CLASSIFIER)  # head
    + AUX_LAYER2
    + AUX_LAYER3
)


@pytest.mark.parametrize(
    "name, expected", [("fcn_r101", FCN_R101), ("ann_r101", ANN_R101), ("denoised_nl_r101", DNL_R101)]
)
def test_full_size_parameter_counts_and_forward(name: str, expected: int):
    assert (FCN_R101, ANN_R101, DNL_R101) == (56_677_478, 67_566_182, 82_072_378)  # the numbers in docs/models.md
    torch.manual_seed(0)
    model = create_model(name, num_classes=K).eval()
    assert sum(p.numel() for p in model.parameters()) == expected
    with torch.no_grad():
        result = model(torch.randn(1, 3, 33, 33))
    assert result["out"].shape == (1, K, 33, 33) and torch.isfinite(result["out"]).all()


@functools.cache
def meta_gflop(name: str, size: tuple[int, int] = (768, 768)) -> float:
    with torch.device("meta"):
        model = create_model(name, num_classes=K).eval()
        x = torch.empty(1, 3, *size)
    with torch.no_grad():
        return count_flops(lambda: model(x, with_aux=True)) / 1e9  # Table V's pipelines, auxiliary heads included


N, C, CK = 48 * 48, 512, 64  # the block's input in Table V: 1/16 of 768 x 768, 512 channels, Ck = 64
NL_BY_HAND = 2 * N * (2 * C * CK + C * C) + 2 * N * N * (CK + C)  # 1x1 convs q, k, v; q kᵀ; A v
# 2 FLOPs per multiply-add; LR's k² terms and every softmax / sigmoid are elementwise, not counted.


@pytest.mark.parametrize(
    "name, by_hand, paper",
    [
        ("denoised_nl_r101", NL_BY_HAND + 2 * N * N * K, 7.83),  # + GR's p pᵀ
        ("nl_r101", NL_BY_HAND, 7.63),
        ("danet_r101", NL_BY_HAND + 2 * 2 * C * C * N, 10.04),  # + CAM: x xᵀ and its product with x
    ],
)
def test_blocks_add_table_v_flops_over_the_baseline_pipeline(name: str, by_hand: int, paper: float):
    """Table V: what each block adds at 768 x 768 over the same pipeline without a block."""
    delta = meta_gflop(name) - meta_gflop("dnl_baseline_r101")
    assert delta == pytest.approx(by_hand / 1e9, rel=1e-9)
    assert round(delta, 2) == paper


def test_denoised_nl_network_wiring_as_design():
    model = build("denoised_nl_r50")
    perturb_zero_parameters(model)
    model.eval()
    x = torch.randn(1, 3, *SIZE)

    def up(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    with torch.no_grad():
        features = model.backbone(x)
        aux2 = model.aux_heads["layer2"](features["layer2"])
        aux3 = model.aux_heads["layer3"](features["layer3"])
        big = features["layer4"]  # X at 1/8: 9 x 9
        decoder = model.decoder
        reduced = decoder.reduction(big)
        assert reduced.shape[-2:] == (5, 5)  # stride-2 basic block: 1/16
        # Reduction: conv3x3 + BN + ReLU, then a basic block whose shortcut is conv3x3/2 + BN + ReLU.
        first, basic = decoder.reduction
        shortcut = basic.downsample
        assert basic.conv1.stride == shortcut[0].stride == (2, 2) and shortcut[0].kernel_size == (3, 3)
        r = first(big)
        residual = basic.bn2(basic.conv2(F.relu(basic.bn1(basic.conv1(r)))))
        by_hand = F.relu(residual + F.relu(shortcut[1](shortcut[0](r))))
        torch.testing.assert_close(reduced, by_hand, rtol=0, atol=0)
        probs = up(aux3, reduced.shape[-2:]).softmax(1)
        block = decoder.block
        attended = block(reduced, aux3)
        by_ops = block.gamma * _denoised_reference(block, reduced, probs) + reduced
        torch.testing.assert_close(attended, by_ops, rtol=1e-5, atol=1e-5)
        context = decoder.fuse(up(attended, big.shape[-2:]))
        pooled = F.relu(decoder.global_context[1](big.mean((2, 3), keepdim=True))).expand_as(context)
        logits = decoder.head(torch.cat([big, context, pooled], 1))
        result = model(x, with_aux=True)
    torch.testing.assert_close(result["out"], up(logits, SIZE), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result["aux"][0], up(aux2, SIZE), rtol=0, atol=0)
    torch.testing.assert_close(result["aux"][1], up(aux3, SIZE), rtol=0, atol=0)


def _denoised_reference(block: DenoisedNL, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """DESIGN.md's equations with everything materialised: A ⊙ sigmoid(p pᵀ), then Local Retention, then A'' v."""
    b, c, h, w = x.shape
    q, k, v = (conv(x).flatten(2) for conv in (block.query, block.key, block.value))  # (B, C', N)
    a = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N)
    p = probs.flatten(2)
    a = a * torch.sigmoid(p.transpose(1, 2) @ p)
    r = block.kernel_size // 2
    k_map = k.view(b, -1, h, w)
    a_map = a.view(b, h * w, h, w)  # A'[i, j] with j laid out as a map
    retained = torch.zeros_like(a_map)
    k_pad = F.pad(k_map, (r, r, r, r))
    a_pad = F.pad(a_map, (r, r, r, r))
    q_map = q.view(b, -1, h, w)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            k_n = k_pad[..., r + dy : r + dy + h, r + dx : r + dx + w]  # k_{j+n}
            s = torch.sigmoid((q_map * k_n).sum(1, keepdim=True))  # S[j, n] = sigmoid(q_j · k_{j+n})
            retained += a_pad[..., r + dy : r + dy + h, r + dx : r + dx + w] * s  # A'[i, j+n] S[j, n]
    out = retained.view(b, h * w, h * w) @ v.transpose(1, 2)  # (B, N, C)
    return out.transpose(1, 2).reshape(b, c, h, w)


def test_ann_network_wiring_as_design():
    model = build("ann_r50")
    perturb_zero_parameters(model)
    model.eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        features = model.backbone(x)
        decoder = model.decoder
        fused = decoder.fusion(features["layer3"], features["layer4"])
        logits = decoder.classifier(decoder.context(decoder.reduce(fused)))
        result = model(x, with_aux=True)
    assert type(decoder.dropout) is nn.Identity  # APNB ends with the branch's only Dropout2d
    up = dict(size=SIZE, mode="bilinear", align_corners=True)
    torch.testing.assert_close(result["out"], F.interpolate(logits, **up), rtol=0, atol=0)
    aux = model.aux_heads["layer3"](features["layer3"])
    torch.testing.assert_close(result["aux"][0], F.interpolate(aux, **up), rtol=0, atol=0)
    assert isinstance(build("ann_afnb_r50").decoder.dropout, nn.Dropout2d)  # no context block: dropout before the classifier


@pytest.mark.parametrize("rectify, retain", [(True, True), (True, False), (False, True), (False, False)])
def test_table_ii_switches_and_global_rectifying_reads_the_layer3_head(rectify: bool, retain: bool):
    model = build("denoised_nl_r50", rectify=rectify, retain=retain)
    assert (model.decoder.block.rectify, model.decoder.block.retain) == (rectify, retain)
    perturb_zero_parameters(model)  # γ != 0, so the block's output reaches `out`
    model.eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        before = model(x)["out"]
        model.aux_heads["layer3"][-1].weight.add_(torch.randn_like(model.aux_heads["layer3"][-1].weight))
        after = model(x)["out"]
    assert not torch.equal(before, after) if rectify else torch.equal(before, after)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_class_probs_stops_gr_gradient_into_the_layer3_head(detach: bool):
    model = build("denoised_nl_r50", detach_class_probs=detach)
    perturb_zero_parameters(model)
    model.eval()
    model(torch.randn(1, 3, *SIZE))["out"].sum().backward()
    grad = model.aux_heads["layer3"][-1].weight.grad
    assert (grad is None) == detach
    if not detach:
        assert grad.abs().sum() > 0


def test_options_reach_the_parts():
    dnl = build("denoised_nl_r50", global_context=False, grad_checkpointing=True)
    assert dnl.decoder.global_context is None and dnl.backbone.checkpointing
    assert dnl.decoder.head[0][0].in_channels == dnl.backbone.out_channels + SMALL["head_channels"]
    dilations = [b.conv2.dilation[0] for b in (*dnl.backbone.layer3, *dnl.backbone.layer4)]
    assert dilations == [2] * 6 + [4, 8, 16]  # released Denoised NL backbone
    assert isinstance(dnl.backbone.conv1, nn.Sequential)  # deep stem
    fcn = build("fcn_r50", aux_layers=("layer2", "layer3"), stem="deep", multi_grid=(1, 2, 4), dilate_first_block=True)
    assert list(fcn.aux_heads) == ["layer2", "layer3"]
    assert [b.conv2.dilation[0] for b in (*fcn.backbone.layer3, *fcn.backbone.layer4)] == dilations
    assert build("ann_r50", stem="deep").backbone.stage_channels == build("ann_r50").backbone.stage_channels
    x = torch.randn(1, 3, *SIZE)
    corners = [build("fcn_r18", align_corners=flag).eval() for flag in (True, False)]
    with torch.no_grad():
        same_logits = [m.decoder.head(m.backbone(x)["layer4"]) for m in corners]
        outs = [m(x)["out"] for m in corners]
    torch.testing.assert_close(same_logits[0], same_logits[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[1])


def test_pretrained_backbone_loads_every_tensor_unchanged(tmp_path):
    for name, stem in (("fcn_r50", "classic"), ("denoised_nl_r50", "deep")):
        torch.manual_seed(1)
        reference = resnet50(width=SMALL["backbone_width"], stem=stem)
        state = {k: v + torch.rand_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
        if stem == "classic":  # torchvision's files carry the ImageNet classifier
            state |= {"fc.weight": torch.randn(1000, 256), "fc.bias": torch.randn(1000)}
        path = tmp_path / f"{stem}.pth"
        torch.save(state, path)
        model = build(name, pretrained_backbone=str(path))
        loaded = model.backbone.state_dict()
        assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
        for key, value in loaded.items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=f"{key} changed on loading")
    with pytest.raises(WeightsMismatchError, match="stem='deep'"):
        build("fcn_r50", pretrained_backbone=str(tmp_path / "deep.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build("ann_r50", pretrained_backbone=str(tmp_path / "missing.pth"))


def test_errors_name_what_exists():
    with pytest.raises(ValueError, match=r"unknown model 'ann_r100' \(did you mean 'ann_r101'\?\).*fcn_r18"):
        create_model("ann_r100", num_classes=K)
    with pytest.raises(TypeError, match=r"'denoised_nl_r50' got unknown option\(s\) \['rectfy'\].*'rectify'"):
        create_model("denoised_nl_r50", num_classes=K, rectfy=False)
    with pytest.raises(TypeError, match=r"'nl_r50' got unknown option\(s\) \['rectify'\]"):
        create_model("nl_r50", num_classes=K, rectify=False)  # only the Denoised NL rows have GR / LR
    with pytest.raises(ValueError, match="aux_layers"):
        build("fcn_r50", aux_layers=("layer5",))
    with pytest.raises(ValueError, match="num_classes"):
        create_model("fcn_r18", num_classes=0, **SMALL)
    with pytest.raises(ValueError, match="unknown backbone 'resnet99'"):
        build("fcn_r50", backbone="resnet99")
    with pytest.raises(ValueError, match="unknown block 'sa'"):
        denoised_nl_pipeline("sa", num_classes=K)
    with pytest.raises(ValueError, match="already registered"):
        register_model(dataclasses.replace(zoo_entry("fcn_r50"), paper="again"))
    loose = ZooEntry("loose", lambda *, num_classes, pretrained_backbone=None, **kw: None, "none", "", "", (8, 8))
    with pytest.raises(TypeError, match=r"\*\*kwargs"):
        register_model(loose)
    assert "loose" not in list_models()
