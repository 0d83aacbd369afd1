"""Dilated ResNet backbones and weight loading: sizes, dilations, parameter counts, key layouts,
checkpointing (weight files: tests/test_backbone_weights.py)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nlseg.backbones import (
    BasicBlock,
    Bottleneck,
    ResNet,
    create_backbone,
    list_backbones,
    resnet18,
    resnet50,
)

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

WIDTH = 8  # base width of the tiny networks used wherever the real width does not matter
LAYOUTS = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True)}


def reference_shapes(name: str, width: int, stem: str, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of torchvision's ResNet (classic stem) or of the released Denoised NL
    backbone (deep stem), written out from the architecture, independently of nlseg. No ``fc``."""
    layers, bottleneck = LAYOUTS[name]
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, c: int) -> None:
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{stat}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    w = width
    if stem == "classic":
        shapes["conv1.weight"] = (w, in_channels, 7, 7)
        norm("bn1", w)
        c = w
    else:
        shapes["conv1.0.weight"] = (w, in_channels, 3, 3)
        norm("conv1.1", w)
        shapes["conv1.3.weight"] = (w, w, 3, 3)
        norm("conv1.4", w)
        shapes["conv1.6.weight"] = (2 * w, w, 3, 3)
        norm("bn1", 2 * w)
        c = 2 * w
    expansion = 4 if bottleneck else 1
    for i, n_blocks in enumerate(layers):
        p = w * 2**i
        for j in range(n_blocks):
            prefix = f"layer{i + 1}.{j}"
            convs = [(p, c, 1), (p, p, 3), (4 * p, p, 1)] if bottleneck else [(p, c, 3), (p, p, 3)]
            for k, (out, inp, size) in enumerate(convs, start=1):
                shapes[f"{prefix}.conv{k}.weight"] = (out, inp, size, size)
                norm(f"{prefix}.bn{k}", out)
            if j == 0 and (i > 0 or c != p * expansion):
                shapes[f"{prefix}.downsample.0.weight"] = (p * expansion, c, 1, 1)
                norm(f"{prefix}.downsample.1", p * expansion)
            c = p * expansion
    return shapes


def reference_file_state(name: str, width: int, stem: str, *, counters: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict in the reference layout, with a 10-class ``fc`` as torchvision files have."""
    state = {}
    for key, shape in reference_shapes(name, width, stem).items():
        if key.endswith("num_batches_tracked"):
            if counters:
                state[key] = torch.tensor(1234)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = torch.randn(shape)
    out_channels = width * 8 * (4 if LAYOUTS[name][1] else 1)
    state["fc.weight"] = torch.randn(10, out_channels)
    state["fc.bias"] = torch.randn(10)
    return state


def conv_size(n: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def stage_convs(model: ResNet, stage: str) -> list[nn.Conv2d]:
    """The 3×3 convolution of each block that carries stride and dilation (conv2 for both block types)."""
    return [block.conv2 for block in getattr(model, stage)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stem, in_channels", [("classic", 3), ("deep", 1)])
def test_state_dict_layout_matches_reference(name: str, stem: str, in_channels: int) -> None:
    model = create_backbone(name, stem=stem, in_channels=in_channels, width=WIDTH)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == reference_shapes(name, WIDTH, stem, in_channels)


def test_parameter_counts_match_torchvision() -> None:
    # torchvision totals minus the ImageNet classifier fc (512·1000 + 1000, or 2048·1000 + 1000):
    expected = {
        "resnet18": 11_689_512 - 513_000,
        "resnet34": 21_797_672 - 513_000,
        "resnet50": 25_557_032 - 2_049_000,
        "resnet101": 44_549_160 - 2_049_000,
        "resnet152": 60_192_808 - 2_049_000,
    }
    with torch.device("meta"):  # shapes only; resnet101/152 are built once and cost no memory
        counts = {name: sum(p.numel() for p in create_backbone(name).parameters()) for name in expected}
        deep101 = sum(p.numel() for p in create_backbone("resnet101", stem="deep").parameters())
    assert counts == expected
    # Deep stem instead of conv7×7 (9408) + bn1 (128): 3·64·9 + 128 + 64·64·9 + 128 + 64·128·9 + 256,
    # plus layer1.0.conv1 and its shortcut now reading 128 instead of 64 channels: 64·64 + 64·256.
    added = 1728 + 128 + 36_864 + 128 + 73_728 + 256 + 4096 + 16_384
    assert deep101 - counts["resnet101"] == added - 9408 - 128 == 123_776


@pytest.mark.parametrize("name, stem", [("resnet18", "classic"), ("resnet50", "deep")])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_sizes_channels_and_strides(name: str, output_stride: int, stem: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, output_stride=output_stride, stem=stem, width=WIDTH).eval()
    h, w = 65, 75
    with torch.no_grad():
        features = model(torch.randn(1, 3, h, w))

    expansion = 4 if name == "resnet50" else 1
    assert model.stage_channels == {f"layer{i + 1}": WIDTH * 2**i * expansion for i in range(4)}
    assert model.out_channels == WIDTH * 8 * expansion
    strides = {"layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
    assert model.stage_strides == strides

    def after_stem(n: int) -> int:
        n = conv_size(n, 7, 2, 3) if stem == "classic" else conv_size(n, 3, 2, 1)
        return conv_size(n, 3, 2, 1)  # maxpool

    sizes = {"layer1": (after_stem(h), after_stem(w))}
    stride = 4
    for stage, previous in (("layer2", "layer1"), ("layer3", "layer2"), ("layer4", "layer3")):
        if stride < output_stride:  # strided 3×3 (padding 1); a dilated stage keeps the size
            sizes[stage] = tuple(conv_size(n, 3, 2, 1) for n in sizes[previous])
            stride *= 2
        else:
            sizes[stage] = sizes[previous]
    hand = {8: (9, 10), 16: (5, 5), 32: (3, 3)}  # 65×75 → 33×38 → 17×19 → 9×10 → 5×5 → 3×3
    assert sizes["layer4"] == hand[output_stride]
    for stage, feature in features.items():
        assert feature.shape == (1, model.stage_channels[stage], *sizes[stage])
        stride = model.stage_strides[stage]
        assert feature.shape[-2:] == (math.ceil(h / stride), math.ceil(w / stride))


# Input side -> (stem conv side, layer1 side, layer4 side at output stride 8), floor and ceil-mode max-pool.
# Stem conv 3x3/2 pad 1: ceil(n / 2). Max-pool 3x3/2 pad 1 on a side h: floor mode ceil(h / 2); ceil mode
# h / 2 + 1 for even h (the last window starts on the last row), ceil(h / 2) for odd h. layer2: ceil(/ 2).
STEM_SIZES = {
    64: (32, {False: (16, 8), True: (17, 9)}),  # ≡ 0 (mod 4): the stem map is even, one more row
    65: (33, {False: (17, 9), True: (17, 9)}),  # ≡ 1
    66: (33, {False: (17, 9), True: (17, 9)}),  # ≡ 2
    67: (34, {False: (17, 9), True: (18, 9)}),  # ≡ 3: one more row at layer1, the same at layer4
    1024: (512, {False: (256, 128), True: (257, 129)}),  # Cityscapes: layer4 129 x 257 as released
}


@pytest.mark.parametrize("stem", ["classic", "deep"])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_stem_ceil_mode_at_every_residue_mod_4(stem: str, ceil_mode: bool) -> None:
    model = resnet18(output_stride=8, stem=stem, width=2, stem_ceil_mode=ceil_mode).eval()
    assert model.maxpool.ceil_mode is ceil_mode
    for h, (_, by_mode) in STEM_SIZES.items():
        if h == 1024:
            continue  # below, on the stem alone
        w = 64 + (h + 1) % 4  # another residue for the width
        with torch.no_grad():
            features = model(torch.randn(1, 3, h, w))
        (l1_h, l4_h), (l1_w, l4_w) = by_mode[ceil_mode], STEM_SIZES[w][1][ceil_mode]
        assert features["layer1"].shape[-2:] == (l1_h, l1_w), (h, w)
        assert features["layer4"].shape[-2:] == (l4_h, l4_w), (h, w)
    stem_side, (layer1, layer4) = STEM_SIZES[1024][0], STEM_SIZES[1024][1][ceil_mode]
    with torch.no_grad():
        pooled = model.maxpool(torch.zeros(1, 1, stem_side, 2 * stem_side))
    assert pooled.shape[-2:] == (layer1, 2 * layer1 - (1 if ceil_mode else 0))
    assert math.ceil(layer1 / 2) == layer4


@pytest.mark.parametrize(
    "output_stride, layer3, layer4",
    [
        # (stride, dilation) of each block's 3×3 conv; the first block of a dilated stage keeps the
        # previous dilation, as torchvision's replace_stride_with_dilation does.
        (32, [(2, 1)] + [(1, 1)] * 5, [(2, 1), (1, 1), (1, 1)]),
        (16, [(2, 1)] + [(1, 1)] * 5, [(1, 1), (1, 2), (1, 2)]),
        (8, [(1, 1)] + [(1, 2)] * 5, [(1, 2), (1, 4), (1, 4)]),
    ],
)
def test_bottleneck_dilations(output_stride: int, layer3: list, layer4: list) -> None:
    model = resnet50(output_stride=output_stride, width=WIDTH)
    for stage, expected in (("layer3", layer3), ("layer4", layer4)):
        convs = stage_convs(model, stage)
        assert [(c.stride[0], c.dilation[0]) for c in convs] == expected
        assert all(c.padding == c.dilation and c.stride[0] == c.stride[1] for c in convs)
        assert getattr(model, stage)[0].downsample[0].stride == (expected[0][0],) * 2
    for stage in ("layer1", "layer2"):
        assert all(c.dilation == (1, 1) for c in stage_convs(model, stage))


def test_basic_block_dilates_both_convs() -> None:
    model = resnet18(output_stride=8, width=WIDTH)
    for stage, expected in (("layer3", [1, 2]), ("layer4", [2, 4])):
        for block, dilation in zip(getattr(model, stage), expected):
            assert block.conv1.dilation == block.conv2.dilation == (dilation, dilation)
            assert block.conv1.padding == block.conv2.padding == (dilation, dilation)


@pytest.mark.parametrize(
    "output_stride, strides, dilations",
    [(8, [1, 1, 1], [4, 8, 16]), (16, [1, 1, 1], [2, 4, 8]), (32, [2, 1, 1], [1, 2, 4])],
)
def test_multi_grid_multiplies_layer4_dilation(output_stride: int, strides: list, dilations: list) -> None:
    torch.manual_seed(0)
    model = resnet50(output_stride=output_stride, multi_grid=(1, 2, 4), width=WIDTH).eval()
    convs = stage_convs(model, "layer4")
    assert [c.stride[0] for c in convs] == strides
    assert [c.dilation[0] for c in convs] == [c.padding[0] for c in convs] == dilations
    plain = resnet50(output_stride=output_stride, width=WIDTH)
    assert [c.dilation for c in stage_convs(model, "layer3")] == [c.dilation for c in stage_convs(plain, "layer3")]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 75))["layer4"]
    assert out.shape[-2:] == (math.ceil(65 / output_stride), math.ceil(75 / output_stride))


def test_multi_grid_basic_block_and_errors() -> None:
    model = resnet18(output_stride=8, multi_grid=(1, 2), width=WIDTH)
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in model.layer4] == [(4, 4), (8, 8)]
    with pytest.raises(ValueError, match=r"one positive factor per layer4 block \(2 blocks\)"):
        resnet18(multi_grid=(1, 2, 4), width=WIDTH)
    with pytest.raises(ValueError, match="multi_grid"):
        resnet50(multi_grid=(0, 1, 2), width=WIDTH)


@pytest.mark.parametrize(
    "output_stride, multi_grid, layer3, layer4",
    [
        # The released Denoised NL backbone: every layer3 block at dilation 2, layer4 (4, 8, 16).
        (8, (1, 2, 4), [(1, 2)] * 6, [(1, 4), (1, 8), (1, 16)]),
        (8, None, [(1, 2)] * 6, [(1, 4)] * 3),
        (16, None, [(2, 1)] + [(1, 1)] * 5, [(1, 2)] * 3),
        (32, None, [(2, 1)] + [(1, 1)] * 5, [(2, 1), (1, 1), (1, 1)]),  # nothing dilated: unchanged
    ],
)
def test_dilate_first_block(output_stride: int, multi_grid, layer3: list, layer4: list) -> None:
    torch.manual_seed(0)
    model = resnet50(output_stride=output_stride, multi_grid=multi_grid, dilate_first_block=True, width=WIDTH).eval()
    for stage, expected in (("layer3", layer3), ("layer4", layer4)):
        convs = stage_convs(model, stage)
        assert [(c.stride[0], c.dilation[0]) for c in convs] == expected
        assert all(c.padding == c.dilation for c in convs)
    # Same parameters as the torchvision-style network: only the first dilated block's 3×3 conv differs,
    # so the outputs differ from the first dilated stage on (layer3 at stride 8, layer4 at 16, none at 32).
    plain = resnet50(output_stride=output_stride, multi_grid=multi_grid, width=WIDTH).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 65, 75)
    with torch.no_grad():
        ours, theirs = model(x), plain(x)
    assert ours["layer4"].shape == theirs["layer4"].shape
    torch.testing.assert_close(ours["layer2"], theirs["layer2"], rtol=0, atol=0)
    assert torch.equal(ours["layer3"], theirs["layer3"]) == (output_stride != 8)
    assert torch.equal(ours["layer4"], theirs["layer4"]) == (output_stride == 32)
    basic = resnet18(output_stride=8, dilate_first_block=True, width=WIDTH)
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in (*basic.layer3, *basic.layer4)] == [(2, 2)] * 2 + [
        (4, 4)
    ] * 2


def test_zero_init_residual_makes_blocks_start_as_identity() -> None:
    torch.manual_seed(0)
    model = resnet50(zero_init_residual=True, width=WIDTH).eval()
    default = resnet50(width=WIDTH)
    assert all(torch.equal(b.bn3.weight, torch.ones_like(b.bn3.weight)) for b in default.layer1)
    for block in (*model.layer1, *model.layer3):
        assert torch.count_nonzero(block.bn3.weight) == 0
    stem_out = torch.rand(2, WIDTH, 9, 9)  # non-negative, as a block's input is after a ReLU
    inner = torch.rand(2, 4 * WIDTH, 9, 9)
    with torch.no_grad():
        first = model.layer1[0]
        torch.testing.assert_close(first(stem_out), torch.relu(first.downsample(stem_out)), rtol=0, atol=0)
        torch.testing.assert_close(model.layer1[1](inner), inner, rtol=0, atol=0)


def test_sync_batchnorm_is_used_everywhere_and_matches_batchnorm() -> None:
    torch.manual_seed(0)
    plain = resnet18(width=WIDTH, stem="deep").train()
    synced = resnet18(width=WIDTH, stem="deep", norm_layer=nn.SyncBatchNorm).train()
    norms = [m for m in synced.modules() if isinstance(m, _BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert len(norms) == sum(isinstance(m, _BatchNorm) for m in plain.modules())
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 33, 35)
    expected, found = plain(x), synced(x)  # no process group: SyncBatchNorm normalises locally
    for stage in expected:
        torch.testing.assert_close(found[stage], expected[stage])


def test_checkpointing_gives_same_outputs_gradients_and_running_stats() -> None:
    torch.manual_seed(0)
    plain = resnet50(width=WIDTH, stem="deep", multi_grid=(1, 2, 4)).double().train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointing = True
    calls = {"plain": 0, "ckpt": 0}

    def counter(key: str):
        def hook(*_) -> None:
            calls[key] += 1
        return hook

    plain.layer3[1].register_forward_pre_hook(counter("plain"))
    ckpt.layer3[1].register_forward_pre_hook(counter("ckpt"))

    x = torch.randn(2, 3, 33, 35, dtype=torch.float64)
    results = []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_()
        features = model(xi)
        weights = torch.Generator().manual_seed(1)
        loss = sum((f * torch.randn(f.shape, generator=weights, dtype=f.dtype)).sum() for f in features.values())
        loss.backward()
        results.append((features, xi.grad, {n: p.grad for n, p in model.named_parameters()}))

    assert calls == {"plain": 1, "ckpt": 2}  # the checkpointed block ran again in the backward pass
    (f0, gx0, g0), (f1, gx1, g1) = results
    for stage in f0:
        torch.testing.assert_close(f1[stage], f0[stage])
    torch.testing.assert_close(gx1, gx0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], msg=name)
    # the recomputation must not update BatchNorm's running statistics a second time
    for (name, b0), b1 in zip(plain.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b1, b0, rtol=0, atol=0, msg=name)

    ckpt.eval()
    with torch.no_grad():
        ckpt(x)
    assert calls["ckpt"] == 3  # no recomputation outside training


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_builds_and_fails_loudly() -> None:
    assert list_backbones() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    model = create_backbone("resnet34", width=WIDTH, output_stride=16)
    assert isinstance(model.layer1[0], BasicBlock)
    assert [len(getattr(model, s)) for s in ("layer1", "layer2", "layer3", "layer4")] == [3, 4, 6, 3]
    assert isinstance(create_backbone("resnet152", width=2).layer3[35], Bottleneck)
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet99'.*'resnet101'"):
        create_backbone("resnet99")
    with pytest.raises(TypeError, match=r"\['outputstride'\].*'output_stride'.*'pretrained'"):
        create_backbone("resnet50", outputstride=8)
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\), got 4"):
        create_backbone("resnet50", output_stride=4)
    with pytest.raises(ValueError, match=r"stem must be one of \('classic', 'deep', 'v1c'\), got 'wide'"):
        create_backbone("resnet50", stem="wide")
