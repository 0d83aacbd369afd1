"""nlseg.models.fuse: residual stages with their epilogues fused into oneDNN convolutions compute what the folded
blocks compute, never write into their caller's input, and step aside wherever the fused ops do not apply."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nlseg.backbones import BasicBlock, Bottleneck, ResNet
from nlseg.backbones.resnet import STAGES
from nlseg.config import InferenceOptions
from nlseg.engine.inference import prepare_for_inference
from nlseg.models import create_model
from nlseg.models.fold import fold_batchnorm
from nlseg.models.fuse import FusedStage, fuse_epilogues, fusion_available

pytestmark = [
    pytest.mark.numeric,
    pytest.mark.skipif(not fusion_available(), reason="this PyTorch has no oneDNN fused convolutions"),
]


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to float32 rounding: oneDNN's fused primitive may pick another kernel than ATen's convolution (it
    does at 1 thread), and rounding grows with depth: 1e-5 of the largest value, as for ``eval.fold_bn``."""
    torch.testing.assert_close(got, want, rtol=0, atol=float(want.abs().max()) * 1e-5)


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding changes every convolution."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    return model.eval()


def _folded_backbone(block, layers, channels_last: bool) -> ResNet:
    torch.manual_seed(0)
    net = fold_batchnorm(_randomise_norms(ResNet(block, layers, width=8)))
    return net.to(memory_format=torch.channels_last) if channels_last else net


@pytest.mark.parametrize("block,layers", [(Bottleneck, (2, 2, 3, 2)), (BasicBlock, (2, 1, 2, 2))])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_stages_compute_the_folded_blocks(block, layers, channels_last):
    net = _folded_backbone(block, layers, channels_last)
    x = torch.randn(2, 3, 45, 61)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = net(x)
        keys = list(net.state_dict())
        assert fuse_epilogues(net) == 4
        assert all(type(getattr(net, name)) is FusedStage for name in STAGES)
        assert list(net.state_dict()) == keys
        got = net(x)
    for name in STAGES:
        close(got[name], want[name])
        layout = torch.channels_last
        assert got[name].is_contiguous(memory_format=layout) == want[name].is_contiguous(memory_format=layout)


def test_the_callers_input_is_never_written_and_hooked_outputs_stay():
    """A stage whose first block has no projection: its shortcut is the caller's tensor, which must survive; a
    hook's view of block 1's output must survive block 2's in-place epilogue."""
    torch.manual_seed(0)
    blocks = [_randomise_norms(Bottleneck(32, 8)) for _ in range(3)]
    stage = nn.Sequential(*blocks)
    for b in blocks:
        fold_batchnorm(b)
    x = torch.randn(1, 32, 9, 11)
    with torch.no_grad():
        want, first = stage(x), blocks[0](x).clone()
        fused = FusedStage(*blocks)
        seen = []
        blocks[0].register_forward_hook(lambda module, inputs, output: seen.append(output))
        x_before = x.clone()
        got = fused(x)
    assert torch.equal(x, x_before)
    close(got, want)
    close(seen[0], first)


@pytest.mark.parametrize("case", ["grad", "float64", "autocast", "compiled-trace"])
def test_fused_stages_step_aside_where_the_fused_ops_do_not_apply(case, monkeypatch):
    net = _folded_backbone(Bottleneck, (1, 1, 1, 1), channels_last=False)
    fuse_epilogues(net)
    calls = []
    real = torch.ops.mkldnn._convolution_pointwise_
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise_", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(1, 3, 33, 35)
    if case == "grad":
        out = net(x.requires_grad_())["layer4"]
        out.sum().backward()
        assert x.grad is not None
    elif case == "float64":
        net.double()
        with torch.no_grad():
            net(x.double())
    elif case == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert net(x)["layer4"].dtype == torch.bfloat16
    else:
        with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.compiler, "is_compiling", lambda: True)
            net(x)
    assert calls == []
    with torch.no_grad():  # and the fused path itself runs when nothing stands in its way
        net.float()(torch.randn(1, 3, 33, 35))
    assert len(calls) == 4


def test_prepare_for_inference_fuses_only_folded_blocks():
    model = create_model("fcn_r18", num_classes=3)
    stages = lambda prepared: [type(getattr(prepared.model.backbone, n)) for n in STAGES]  # noqa: E731
    assert stages(prepare_for_inference(model)) == [FusedStage] * 4
    assert stages(prepare_for_inference(model, InferenceOptions(fuse=False))) == [nn.Sequential] * 4
    assert stages(prepare_for_inference(model, InferenceOptions(fold_bn=False))) == [nn.Sequential] * 4
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        fused = prepare_for_inference(model)(x)["out"]
        unfused = prepare_for_inference(model, InferenceOptions(fuse=False))(x)["out"]
    close(fused, unfused)


def test_fused_convolutions_count_the_flops_of_the_unfused_ones():
    from nlseg.analysis.measure import count_flops

    model = create_model("fcn_r50", num_classes=3)
    x = torch.randn(1, 3, 64, 80)
    counts = {}
    for fuse in (False, True):
        prepared = prepare_for_inference(model, InferenceOptions(fuse=fuse))
        with torch.no_grad():
            counts[fuse] = count_flops(lambda prepared=prepared: prepared(x))
    assert counts[True] == counts[False] > 0
