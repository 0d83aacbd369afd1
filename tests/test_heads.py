"""The blocks' original networks (:mod:`nlseg.models.heads`): mmsegmentation 1.2.2's ``*_r50-d8`` layouts in numbers,
the attention in the heads equal to the plain formulas forward and backward, and a short run whose loss falls.

The parameter counts are written out from mmsegmentation's layer lists (``NLHead``, ``DAHead``, ``PSPHead``,
``ASPPHead``, ``ANNHead``, ``CCHead``, ``FCNHead``, ``ResNetV1c``). Building mmsegmentation 1.2.2's own models (SyncBN as BN) gave the same
totals per backbone, decode head and auxiliary head, DANet's decode head less its two branch classifiers
(2 x (512·19 + 19) = 19,494); see docs/models.md.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlseg.blocks import NonLocal2d, PositionAttention
from nlseg.models import create_model
from nlseg.models.heads import HEADS

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

K = 19
NAMES = [f"{head}_head_r50" for head in HEADS]


def cba(cin: int, cout: int, k: int) -> int:
    """conv k x k without bias + BN (γ, β)."""
    return cin * cout * k * k + 2 * cout


def conv(cin: int, cout: int) -> int:
    """conv 1x1 with bias."""
    return cin * cout + cout


CLASSIFIER = conv(512, K)
HEAD_PARAMS = {
    # convs[0], NonLocal2d(512, reduction 2): θ, φ, g 1x1 with bias, conv_out 1x1 256->512 + BN; convs[1]; conv_cat
    "nl_head_r50": cba(2048, 512, 3) + 3 * conv(512, 256) + cba(256, 512, 1) + cba(512, 512, 3)
    + cba(2048 + 512, 512, 3) + CLASSIFIER,
    # pam_in, PAM (q, k 512->64, v 512->512, γ), pam_out; cam_in, CAM (γ), cam_out; no pam/cam classifiers
    "danet_head_r50": 2 * cba(2048, 512, 3) + 2 * conv(512, 64) + conv(512, 512) + 1 + 1 + 2 * cba(512, 512, 3)
    + CLASSIFIER,
    # four pooled 1x1 branches, bottleneck 3x3 on 2048 + 4·512
    "ppm_head_r50": 4 * cba(2048, 512, 1) + cba(2048 + 4 * 512, 512, 3) + CLASSIFIER,
    # image pool 1x1, 1x1, three dilated 3x3, bottleneck 3x3 on 5·512
    "aspp_head_r50": 2 * cba(2048, 512, 1) + 3 * cba(2048, 512, 3) + cba(5 * 512, 512, 3) + CLASSIFIER,
    # AFNB (query 2048->256, key 1024->256 with BN; value 1024->256, out 256->2048 with bias; bottleneck 4096->2048
    # + BN), bottleneck 3x3 -> 512, APNB (shared key/query 512->256 + BN, value, out 256->512, bottleneck 1024->512)
    "ann_head_r50": cba(2048, 256, 1) + cba(1024, 256, 1) + conv(1024, 256) + conv(256, 2048) + cba(4096, 2048, 1)
    + cba(2048, 512, 3) + cba(512, 256, 1) + conv(512, 256) + conv(256, 512) + cba(1024, 512, 1) + CLASSIFIER,
    # convs[0], criss-cross attention (q, k 512->64, v 512->512 with bias, γ), convs[1], conv_cat
    "ccnet_head_r50": cba(2048, 512, 3) + 2 * conv(512, 64) + conv(512, 512) + 1 + cba(512, 512, 3)
    + cba(2048 + 512, 512, 3) + CLASSIFIER,
    # convs[0], convs[1], conv_cat
    "fcn_head_r50": cba(2048, 512, 3) + cba(512, 512, 3) + cba(2048 + 512, 512, 3) + CLASSIFIER,
}
AUX_PARAMS = cba(1024, 256, 3) + conv(256, K)  # FCNHead(num_convs=1, channels=256)


def resnet_v1c_50_params() -> int:
    stem = cba(3, 32, 3) + cba(32, 32, 3) + cba(32, 64, 3)
    total, inplanes = stem, 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for i in range(blocks):
            total += cba(inplanes, planes, 1) + cba(planes, planes, 3) + cba(planes, 4 * planes, 1)
            if i == 0:
                total += cba(inplanes, 4 * planes, 1)  # downsample
            inplanes = 4 * planes
    return total


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_are_mmsegmentations(name: str):
    with torch.device("meta"):
        model = create_model(name, num_classes=K)
    assert count(model.decoder) == HEAD_PARAMS[name]
    assert count(model.aux_heads) == AUX_PARAMS == 2_364_691
    assert count(model.backbone) == resnet_v1c_50_params() == 23_527_264


def test_totals_without_the_auxiliary_head():
    """R-50, 19 classes: nlseg's totals (mmsegmentation's: the same, DANet's 47,481,883 with its branch classifiers)."""
    totals = {}
    for name in NAMES:
        with torch.device("meta"):
            model = create_model(name, num_classes=K)
        totals[name] = count(model) - count(model.aux_heads)
    assert totals == {
        "nl_head_r50": 47_659_123,
        "danet_head_r50": 47_462_389,
        "ppm_head_r50": 46_610_803,
        "aspp_head_r50": 65_748_339,
        "ann_head_r50": 43_863_923,
        "ccnet_head_r50": 47_461_364,
        "fcn_head_r50": 47_133_043,
    }


def test_backbone_is_resnet_v1c_with_contracted_dilation():
    with torch.device("meta"):
        backbone = create_model("ppm_head_r101", num_classes=K).backbone
    assert [backbone.conv1[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    assert backbone.layer1[0].conv1.in_channels == 64
    dilations = {name: [block.conv2.dilation[0] for block in getattr(backbone, name)] for name in ("layer3", "layer4")}
    assert dilations == {"layer3": [1] + [2] * 22, "layer4": [2, 4, 4]}  # first block at half: contract_dilation
    assert backbone.stage_strides["layer4"] == 8


def _grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors]


def test_nl_head_block_is_scaled_softmax_attention_forward_and_backward():
    model = create_model("nl_head_r50", num_classes=3, backbone_width=8, head_channels=16).double()
    block = model.decoder.head.inner[1]
    assert isinstance(block, NonLocal2d) and block.fusion == "add"
    assert (block.query.out_channels, block.value.out_channels) == (8, 8)  # reduction 2
    assert all(conv.bias is not None for conv in (block.query, block.key, block.value))
    block.eval()
    with torch.no_grad():
        block.out_proj[1].weight.normal_()  # γ of Wo's BN is 0 at init: give the branch a value
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64, requires_grad=True)
    weights = [block.query.weight, block.value.weight, block.out_proj[0].weight]

    out = block(x)
    out.square().sum().backward()
    fused = (out.detach(), x.grad.clone(), *_grads(*weights))
    x.grad = None
    block.zero_grad()

    tokens = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731  (B, N, C)
    q, k, v = tokens(block.query(x)), tokens(block.key(x)), tokens(block.value(x))
    o = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1) @ v  # (B, N, Cv)
    ref = x + block.out_proj(o.transpose(1, 2).reshape(2, 8, 5, 7))
    ref.square().sum().backward()
    reference = (ref.detach(), x.grad.clone(), *_grads(*weights))
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_pam_has_no_scale_forward_and_backward():
    model = create_model("danet_head_r50", num_classes=3, backbone_width=8, head_channels=16).double()
    pam = model.decoder.head.position[1]
    assert isinstance(pam, PositionAttention) and pam.query.out_channels == 2  # pam_channels = 512 / 8
    with torch.no_grad():
        pam.gamma.fill_(0.7)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64, requires_grad=True)
    out = pam(x)
    out.square().sum().backward()
    fused = (out.detach(), x.grad.clone(), pam.gamma.grad.clone(), pam.key.weight.grad.clone())
    x.grad = None
    pam.zero_grad()
    q, k = pam.query(x).flatten(2), pam.key(x).flatten(2)  # (B, Ck, N)
    v = pam.value(x).flatten(2)  # (B, C, N)
    attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N), no scale
    ref = pam.gamma * (v @ attention.transpose(1, 2)).reshape(2, 16, 5, 7) + x
    ref.square().sum().backward()
    reference = (ref.detach(), x.grad.clone(), pam.gamma.grad.clone(), pam.key.weight.grad.clone())
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_a_short_run_lowers_the_loss(name: str):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, backbone_width=8, head_channels=16).train()
    images = torch.randn(2, 3, 33, 41)
    labels = torch.zeros(2, 33, 41, dtype=torch.long)  # (B, H, W): a layout to learn from position and context
    labels[:, :, 20:] = 1
    labels[1, 16:] = 2
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        result = model(images)
        loss = F.cross_entropy(result["out"], labels) + 0.4 * F.cross_entropy(result["aux"][0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert len(result["aux"]) == 1 and result["out"].shape == (2, 3, 33, 41)
    assert min(losses[-3:]) < 0.5 * losses[0], losses
