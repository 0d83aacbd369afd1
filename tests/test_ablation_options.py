"""The ablation switches of ANN (Tables 7 and 9, the paper-vs-release switches): numbers against plain references.

Random sampling (Table 7) against its one-position-at-a-time reference with equally seeded generators; the
blocks' random mode, the paper's key/value sharing and the unscaled attention against hand-written blocks;
the multi-stage fusion (Table 9) against the sum of the fusion blocks written out by hand.
"""
from __future__ import annotations

import pytest
import torch

from nlseg.blocks import AFNB, APNB
from nlseg.blocks.layers import to_map, to_tokens
from nlseg.models import create_model
from nlseg.ops import nonlocal_attention_reference, pyramid_sample, pyramid_sample_reference, random_anchor_positions

pytestmark = pytest.mark.numeric

F64 = torch.float64


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sizes", [(15,), (1, 2, 3, 6), (1, 4, 8, 12)])
def test_random_sampling_equals_its_reference_forward_and_backward(sizes):
    x = torch.randn(2, 5, 11, 13, dtype=F64, generator=seeded(0), requires_grad=True)
    fast = pyramid_sample(x, sizes, "random", generator=seeded(7))
    plain = pyramid_sample_reference(x, sizes, "random", generator=seeded(7))
    assert fast.shape == (2, 5, sum(n * n for n in sizes))  # S = 225 / 50 / 225
    torch.testing.assert_close(fast, plain, rtol=0, atol=0)
    weight = torch.randn(fast.shape, dtype=F64, generator=seeded(1))
    (grad_fast,) = torch.autograd.grad((fast * weight).sum(), x)
    (grad_plain,) = torch.autograd.grad((plain * weight).sum(), x)
    torch.testing.assert_close(grad_fast, grad_plain)  # repeated positions: sums in another order
    # every anchor is the map at one position, the positions torch.randint(H·W, (n²,)) draws level by level
    index = torch.cat([torch.randint(11 * 13, (n * n,), generator=g) for g in [seeded(7)] for n in sizes])
    torch.testing.assert_close(fast, x.flatten(2)[:, :, index])


def test_random_positions_are_drawn_per_call_uniformly_with_replacement():
    gen = seeded(3)
    first, second = (torch.cat(random_anchor_positions(4, 5, (15,), gen)) for _ in range(2))
    assert not torch.equal(first, second)  # a fresh draw per call (per forward)
    assert first.numel() == 225 and int(first.max()) < 20 and len(set(first.tolist())) == 20  # 225 of 20: repeats
    counts = torch.bincount(torch.cat(random_anchor_positions(6, 6, (100,), seeded(4))), minlength=36)
    assert counts.sum() == 10_000 and 200 < counts.min() and counts.max() < 360  # uniform: 277.8 each, ± 5 σ


def test_random_mode_refuses_nothing_else_and_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="unknown pyramid pooling mode 'rand'"):
        pyramid_sample(torch.zeros(1, 1, 4, 4), (2,), "rand")
    with pytest.raises(ValueError, match="unknown pool_mode 'rand'"):
        APNB(8, pool_mode="rand")


def test_apnb_random_mode_samples_key_and_value_at_the_same_positions():
    torch.manual_seed(0)
    block = APNB(8, key_channels=4, value_channels=6, pool_sizes=(3, 2), pool_mode="random").double().eval()
    torch.nn.init.normal_(block.out_proj.weight)
    x = torch.randn(1, 8, 7, 9, dtype=F64, generator=seeded(0))
    block.generator = seeded(11)
    out = block.attend(x)
    with torch.no_grad():
        key, value = block.key(x), block.value(x)
        index = torch.cat(random_anchor_positions(7, 9, (3, 2), seeded(11)))  # one draw for key and value
        anchors_k, anchors_v = key.flatten(2)[:, :, index], value.flatten(2)[:, :, index]  # (B, C, 13)
        o = nonlocal_attention_reference(to_tokens(key), anchors_k.transpose(1, 2), anchors_v.transpose(1, 2))
        torch.testing.assert_close(out, block.out_proj(to_map(o, 7, 9)))


def test_paper_sharing_and_unscaled_attention_are_the_papers_equations():
    """share_key_value: the value is the key's conv + BN + ReLU, the query has its own; scaled=False: s = 1."""
    torch.manual_seed(0)
    block = APNB(8, key_channels=4, value_channels=4, share_key_query=False, share_key_value=True,
                 scaled=False).double().eval()
    torch.nn.init.normal_(block.out_proj.weight)
    assert block.value is None and block.query is not None
    x = torch.randn(1, 8, 6, 7, dtype=F64, generator=seeded(0))
    with torch.no_grad():
        key = block.key(x)
        anchors = pyramid_sample(key, (1, 3, 6, 8)).transpose(1, 2)  # (B, 110, Ck): θ_P = γ_P
        o = nonlocal_attention_reference(to_tokens(block.query(x)), anchors, anchors, scale=1.0)
        torch.testing.assert_close(block.attend(x), block.out_proj(to_map(o, 6, 7)))
    with pytest.raises(ValueError, match="exclude each other"):
        APNB(8, share_key_value=True)
    with pytest.raises(ValueError, match="value_channels == key_channels"):
        APNB(8, key_channels=4, value_channels=6, share_key_query=False, share_key_value=True)


def test_afnb_unscaled_is_scale_one():
    torch.manual_seed(0)
    block = AFNB(6, 8, 8, 4, 4, scaled=False).double().eval()
    torch.nn.init.normal_(block.out_proj.weight)
    low = torch.randn(1, 6, 5, 5, dtype=F64, generator=seeded(1))
    high = torch.randn(1, 8, 5, 5, dtype=F64, generator=seeded(2))
    with torch.no_grad():
        k = pyramid_sample(block.key(low), (1, 3, 6, 8)).transpose(1, 2)
        v = pyramid_sample(block.value(low), (1, 3, 6, 8)).transpose(1, 2)
        o = nonlocal_attention_reference(to_tokens(block.query(high)), k, v, scale=1.0)
        expected = block.fuse(torch.cat([block.out_proj(to_map(o, 5, 5)), high], 1))
        torch.testing.assert_close(block(low, high), expected)


@pytest.mark.parametrize("stages", [("layer2", "layer3"), ("layer1", "layer2", "layer3")])
def test_multi_stage_fusion_sums_one_afnb_per_low_stage(stages):
    """ANN Table 9: Stage5 receives one AFNB per low stage; their outputs are summed, then the main branch."""
    torch.manual_seed(0)
    model = create_model("ann_afnb_r50", num_classes=3, backbone_width=8, fusion_stages=stages,
                         norm_after_wo=True).double().eval()
    decoder = model.decoder
    assert list(decoder.fusion) == list(stages)
    for block in decoder.fusion.values():  # non-zero Wo(O) so that each block's attention counts
        torch.nn.init.normal_(block.out_proj[1].weight)
    x = torch.randn(1, 3, 41, 37, dtype=F64, generator=seeded(0))
    with torch.no_grad():
        features = model.backbone(x)
        high = features["layer4"]
        fused = decoder.fusion[stages[0]](features[stages[0]], high)
        for stage in stages[1:]:
            fused = fused + decoder.fusion[stage](features[stage], high)
        logits = decoder.classifier(decoder.dropout(decoder.reduce(fused)))
        torch.testing.assert_close(model(x)["out"], model.resize(logits, (41, 37)))
        # each block reads its own stage: the layer1 block's keys are at 1/4, the others' at 1/8
        assert decoder.fusion[stages[0]].key[0].in_channels == model.backbone.stage_channels[stages[0]]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"fusion_stages": ("layer4",)}, "fusion_stages must be distinct stages"),
        ({"fusion_stages": ("layer3", "layer3")}, "fusion_stages must be distinct stages"),
        ({"fusion_stages": ()}, "fusion_stages must be distinct stages"),
        ({"context_pool_mode": "median"}, "unknown context_pool_mode 'median'"),
    ],
)
def test_model_options_refuse_unknown_values(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("ann_r50", num_classes=3, backbone_width=8, **options)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("ann_afnb_r50", {"context_pool_mode": "max"}, "APNB's options; context is None"),
        ("ann_nb_r50", {"share_key_query": False}, "APNB's options; context is 'nb'"),
        ("ann_apnb_r50", {"norm_after_wo": True}, "norm_after_wo is an option of AFNB and FNB"),
        ("ann_apnb_r50", {"fusion_stages": ("layer2", "layer3")}, "without a fusion block"),
    ],
)
def test_options_of_a_block_the_model_lacks_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, num_classes=3, backbone_width=8, **options)


def test_model_options_reach_the_blocks():
    model = create_model("ann_r50", num_classes=3, backbone_width=8, context_pool_sizes=(15,),
                         context_pool_mode="random", share_key_query=False, share_key_value=True,
                         norm_after_wo=True, scaled_attention=False)
    apnb, afnb = model.decoder.context, model.decoder.fusion
    assert (apnb.pool_sizes, apnb.pool_mode, apnb.scaled, apnb.value) == ((15,), "random", False, None)
    assert apnb.query is not None and not afnb.scaled and isinstance(afnb.out_proj, torch.nn.Sequential)
    nb = create_model("ann_nb_r50", num_classes=3, backbone_width=8, scaled_attention=False).decoder.context
    assert nb.scale == 1.0
    released = create_model("ann_r50", num_classes=3, backbone_width=8)
    apnb, afnb = released.decoder.context, released.decoder.fusion
    assert (apnb.pool_sizes, apnb.pool_mode, apnb.scaled, apnb.query) == ((1, 3, 6, 8), "avg", True, None)
    assert isinstance(afnb.out_proj, torch.nn.Conv2d) and afnb.scaled


def test_denoised_nl_paper_class_map_is_a_1x1_conv_on_the_blocks_input():
    """class_map_source="features": GR's P_coarse = conv1x1(F) (Denoised NL §III-D), softmax over classes, then the
    block's equation; the layer3 head stays an auxiliary output and the decoder no longer reads it."""
    from nlseg.ops import denoised_attention_reference

    torch.manual_seed(0)
    model = create_model("denoised_nl_r18", num_classes=3, backbone_width=8, head_channels=16, key_channels=8,
                         class_map_source="features").double().eval()
    decoder = model.decoder
    assert decoder.aux_inputs == () and decoder.class_conv.in_channels == 16
    block = decoder.block
    torch.nn.init.constant_(block.gamma, 0.7)
    f = torch.randn(1, 16, 6, 7, dtype=F64, generator=seeded(0))
    with torch.no_grad():
        probs = decoder.class_conv(f).softmax(dim=1)  # (B, K, h, w)
        attended = denoised_attention_reference(block.query(f), block.key(f), block.value(f), probs)
        torch.testing.assert_close(decoder.apply_block(f, {}), 0.7 * attended + f)
        assert len(model(torch.zeros(1, 3, 64, 64, dtype=F64), with_aux=True)["aux"]) == 2
    released = create_model("denoised_nl_r18", num_classes=3, backbone_width=8)
    assert released.decoder.aux_inputs == ("layer3",) and not hasattr(released.decoder, "class_conv")
    for options, message in (({"class_map_source": "logits"}, "unknown class_map_source 'logits'"),
                             ({"class_map_source": "features", "rectify": False}, "needs rectify=True")):
        with pytest.raises(ValueError, match=message):
            create_model("denoised_nl_r18", num_classes=3, backbone_width=8, **options)
