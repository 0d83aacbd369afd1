"""Every registered block: shapes on odd sizes, gradients, train/eval, save/load; then block-specific numbers."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlseg.blocks import (
    AFNB,
    APNB,
    FNB,
    PPM,
    ChannelAttention,
    CompactChannelAttention,
    CompactPositionAttention,
    CrissCrossAttention,
    DenoisedNL,
    NonLocal2d,
    ObjectContext,
    PositionAttention,
    create_block,
    list_blocks,
)
from nlseg.blocks.layers import to_map, to_tokens
from nlseg.ops import criss_cross_attention_reference, nonlocal_attention_reference, pyramid_sample_reference

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

CHANNELS, LOW_CHANNELS, NUM_CLASSES = 32, 16, 5
SIZE = (13, 29)

# Small options per block; fusion blocks get their low-level channels here.
SMALL_OPTIONS: dict[str, dict] = {
    "nb": dict(key_channels=8, value_channels=8),
    "nonlocal2d": dict(key_channels=8, value_channels=8),
    "apnb": dict(key_channels=8, value_channels=8),
    "afnb": dict(low_channels=LOW_CHANNELS, key_channels=8, value_channels=8),
    "fnb": dict(low_channels=LOW_CHANNELS, key_channels=8, value_channels=8),
    "common_fusion": dict(low_channels=LOW_CHANNELS),
    "denoised_nl": dict(key_channels=8),
    "ocnet": dict(key_channels=8, value_channels=8),
    "ccnet_head": dict(out_channels=16),
    "dranet": dict(compact_channels=2),
    "dranet_head": dict(compact_channels=2),
    "ppm": dict(out_channels=16),
    "aspp": dict(out_channels=16, dilations=(1, 2, 3)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_block(name, CHANNELS, **SMALL_OPTIONS.get(name, {}))


def make_inputs(block: nn.Module, batch: int, size: tuple[int, int] = SIZE) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, CHANNELS, *size)
    if block.num_inputs == 1:
        return (x,)
    if isinstance(block, DenoisedNL):
        coarse = (size[0] // 2 + 1, size[1] // 2 + 1)  # exercises the resize to x's size
        return x, torch.randn(batch, NUM_CLASSES, *coarse).softmax(1)
    return torch.randn(batch, LOW_CHANNELS, *size), x  # (low, high)


def perturb_zero_parameters(block: nn.Module) -> None:
    """Give zero-initialised parameters (γ, Wo, BN γ after Wo) random values so gradients reach everything."""
    with torch.no_grad():
        for p in block.parameters():
            if not p.any():
                p.normal_(0.0, 0.5)


def test_every_brief_block_is_registered():
    names = {"nl", "apnb", "afnb", "fnb", "common_fusion", "denoised_nl", "ocnet", "ccnet", "danet", "dranet"}
    names |= {"ppm", "aspp"}
    assert names <= set(list_blocks())
    assert list_blocks() == sorted(list_blocks())


@pytest.mark.parametrize("name", list_blocks())
@pytest.mark.parametrize("batch", [1, 2])
def test_forward_shape_on_odd_sizes(name, batch):
    block = build(name).eval()  # eval: 1 x 1 pooled branches cannot batch-normalise a single image in training
    torch.manual_seed(1)
    with torch.no_grad():
        out = block(*make_inputs(block, batch))
    assert out.shape == (batch, block.out_channels, *SIZE)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_blocks())
def test_backward_reaches_every_parameter(name):
    block = build(name).train()
    perturb_zero_parameters(block)
    torch.manual_seed(1)
    inputs = [t.requires_grad_() for t in make_inputs(block, 2)]
    out = block(*inputs)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.any(), f"{name}: zero gradient for {pname}"
    for t in inputs:
        assert t.grad is not None and t.grad.any()


@pytest.mark.parametrize("name", list_blocks())
def test_train_updates_norm_statistics_and_eval_is_deterministic(name):
    block = build(name)
    perturb_zero_parameters(block)
    torch.manual_seed(1)
    inputs = make_inputs(block, 2)
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    block.train()(*inputs)
    assert all(not torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))
    block.eval()
    after = [m.running_mean.clone() for m in norms]
    with torch.no_grad():
        first, second = block(*inputs), block(*inputs)
    assert torch.equal(first, second)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(after, norms, strict=True))


@pytest.mark.parametrize("name", list_blocks())
def test_state_dict_round_trip(name):
    block = build(name, seed=0)
    perturb_zero_parameters(block)
    torch.manual_seed(1)
    inputs = make_inputs(block, 2)
    block.train()(*inputs)  # move the running statistics off their initial values
    buffer = io.BytesIO()
    torch.save(block.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, seed=123)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(block.eval()(*inputs), restored.eval()(*inputs))


# ---------------------------------------------------------------- behaviour at initialisation


def test_nonlocal_add_is_identity_at_init():
    torch.manual_seed(0)
    block = NonLocal2d(CHANNELS, 8, 8, fusion="add")
    x = torch.randn(2, CHANNELS, *SIZE)
    assert torch.equal(block.train()(x), x)
    assert torch.equal(block.eval()(x), x)


def test_denoised_nl_is_identity_at_init():
    torch.manual_seed(0)
    block = DenoisedNL(CHANNELS, 8).eval()
    x = torch.randn(2, CHANNELS, *SIZE)
    assert torch.equal(block(x, torch.randn(2, NUM_CLASSES, *SIZE).softmax(1)), x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CrissCrossAttention(16),
        lambda: PositionAttention(16),
        lambda: ChannelAttention(16),
        lambda: CompactPositionAttention(16),
        lambda: CompactChannelAttention(16, 2),
    ],
    ids=["cca", "pam", "cam", "cpam", "ccam"],
)
def test_gamma_residual_cores_are_identity_at_init(make):
    torch.manual_seed(0)
    block = make().eval()
    x = torch.randn(2, 16, 7, 9)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize(
    "make",
    [lambda: APNB(CHANNELS, None, 8, 8), lambda: NonLocal2d(CHANNELS, 8, 8, fusion="concat")],
    ids=["apnb", "nl"],
)
def test_concat_blocks_fuse_a_zero_context_at_init(make):
    """Wo = 0: the block is its fusion conv applied to cat(0, x)."""
    torch.manual_seed(0)
    block = make().eval()
    x = torch.randn(2, CHANNELS, *SIZE)
    with torch.no_grad():
        expected = block.fuse(torch.cat([torch.zeros_like(x), x], dim=1))
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("norm_after_wo", [False, True])
def test_afnb_ignores_low_level_input_at_init(norm_after_wo):
    torch.manual_seed(0)
    block = AFNB(LOW_CHANNELS, CHANNELS, CHANNELS, 8, 8, norm_after_wo=norm_after_wo).eval()
    high = torch.randn(2, CHANNELS, *SIZE)
    with torch.no_grad():
        first = block(torch.randn(2, LOW_CHANNELS, *SIZE), high)
        second = block(torch.randn(2, LOW_CHANNELS, *SIZE), high)
        assert torch.equal(first, second)
        torch.testing.assert_close(first, block.fuse(torch.cat([torch.zeros_like(high), high], dim=1)))


# ---------------------------------------------------------------- block maths against hand-written references


def double_eval(block: nn.Module) -> nn.Module:
    perturb_zero_parameters(block)
    return block.double().eval()


def apnb_by_hand(block: APNB, x: torch.Tensor, pool_sizes, pool_mode: str = "avg") -> torch.Tensor:
    key = block.key(x)
    query = key if block.query is None else block.query(x)
    value = block.value(x)
    if pool_sizes is None:
        key_t, value_t = to_tokens(key), to_tokens(value)
    else:
        key_t = pyramid_sample_reference(key, pool_sizes, pool_mode).transpose(1, 2)  # (B, S, Ck)
        value_t = pyramid_sample_reference(value, pool_sizes, pool_mode).transpose(1, 2)  # (B, S, Cv)
    context = nonlocal_attention_reference(to_tokens(query), key_t, value_t, scale=key.shape[1] ** -0.5)
    context = block.out_proj(to_map(context, *x.shape[-2:]))
    return block.fuse(torch.cat([context, x], dim=1))


@pytest.mark.parametrize(
    "pool_sizes,pool_mode,share",
    [((1, 3, 6, 8), "avg", True), ((1, 3, 6, 8), "max", True), ((2, 5), "avg", False), (None, "avg", True)],
)
def test_apnb_matches_hand_written_block(pool_sizes, pool_mode, share):
    torch.manual_seed(0)
    block = double_eval(APNB(CHANNELS, 24, 8, 6, pool_sizes, pool_mode=pool_mode, share_key_query=share))
    assert (block.query is None) == share
    x = torch.randn(2, CHANNELS, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        assert out.shape == (2, 24, *SIZE)
        torch.testing.assert_close(out, apnb_by_hand(block, x, pool_sizes, pool_mode))


def test_apnb_on_the_full_grid_is_a_plain_nonlocal_block():
    """Pooling a 6 x 6 map to 6 x 6 keeps every position: APNB((6,)) == APNB(None) == OCNet's block."""
    torch.manual_seed(0)
    pooled = double_eval(APNB(CHANNELS, None, 8, 8, (6,)))
    plain = APNB(CHANNELS, None, 8, 8, None).double().eval()
    plain.load_state_dict(pooled.state_dict())
    object_context = ObjectContext(CHANNELS, None, 8, 8).double().eval()
    object_context.load_state_dict(pooled.state_dict())
    x = torch.randn(2, CHANNELS, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        out = pooled(x)
        torch.testing.assert_close(out, plain(x))
        torch.testing.assert_close(out, object_context(x))
        torch.testing.assert_close(out, apnb_by_hand(pooled, x, None))


@pytest.mark.parametrize("block_cls", [AFNB, FNB])
def test_fusion_blocks_match_hand_written_block(block_cls):
    torch.manual_seed(0)
    block = double_eval(block_cls(LOW_CHANNELS, CHANNELS, 24, 8, 8))
    pool_sizes = block.pool_sizes
    low = torch.randn(2, LOW_CHANNELS, 9, 11, dtype=torch.float64)  # another size than high
    high = torch.randn(2, CHANNELS, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        key, value = block.key(low), block.value(low)
        if pool_sizes is None:
            key_t, value_t = to_tokens(key), to_tokens(value)
        else:
            key_t = pyramid_sample_reference(key, pool_sizes).transpose(1, 2)
            value_t = pyramid_sample_reference(value, pool_sizes).transpose(1, 2)
        context = nonlocal_attention_reference(to_tokens(block.query(high)), key_t, value_t, scale=8**-0.5)
        context = block.out_proj(to_map(context, *SIZE))
        expected = block.fuse(torch.cat([context, high], dim=1))
        out = block(low, high)
    assert out.shape == (2, 24, *SIZE)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("scale", ["sqrt", "none"])
def test_nonlocal_add_matches_hand_written_block(scale):
    torch.manual_seed(0)
    block = double_eval(NonLocal2d(CHANNELS, 8, 6, scale=scale))
    x = torch.randn(2, CHANNELS, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        context = nonlocal_attention_reference(
            to_tokens(block.query(x)), to_tokens(block.key(x)), to_tokens(block.value(x)),
            scale=8**-0.5 if scale == "sqrt" else 1.0,
        )
        torch.testing.assert_close(block(x), x + block.out_proj(to_map(context, *SIZE)))


def test_criss_cross_recurrence_shares_weights():
    torch.manual_seed(0)
    block = double_eval(CrissCrossAttention(16, recurrence=2))
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = x
        for _ in range(2):
            cca = criss_cross_attention_reference(block.query(expected), block.key(expected), block.value(expected))
            expected = block.gamma * cca + expected
        torch.testing.assert_close(block(x), expected)


def test_compact_position_attention_matches_hand_written_module():
    """Each pyramid level gets its own conv + BN + ReLU before the S = 50 centres meet the queries."""
    torch.manual_seed(0)
    block = double_eval(CompactPositionAttention(16))
    with torch.no_grad():  # non-trivial BN statistics so a level mix-up would show
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 16, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        levels = zip((1, 2, 3, 6), block.encoders, strict=True)
        centres = torch.cat([encode(F.adaptive_avg_pool2d(x, n)).flatten(2) for n, encode in levels], dim=2)
        centres = centres.transpose(1, 2)  # (B, 50, C)
        context = nonlocal_attention_reference(
            to_tokens(block.query(x)), block.key(centres), block.value(centres), scale=1.0
        )
        torch.testing.assert_close(block(x), block.gamma * to_map(context, *SIZE) + x)


def test_apnb_ends_in_relu_and_afnb_does_not():
    """Released models: APNB's fusion is conv + BN + ReLU, AFNB's is conv + BN only."""
    torch.manual_seed(0)
    x = torch.randn(2, CHANNELS, *SIZE)
    apnb = double_eval(APNB(CHANNELS, None, 8, 8)).float()
    afnb = double_eval(AFNB(LOW_CHANNELS, CHANNELS, CHANNELS, 8, 8)).float()
    with torch.no_grad():
        assert (apnb(x) >= 0).all()
        assert (afnb(torch.randn(2, LOW_CHANNELS, *SIZE), x) < 0).any()


def test_ppm_matches_hand_written_module():
    torch.manual_seed(0)
    block = PPM(16, 8).double().eval()
    x = torch.randn(2, 16, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        levels = [
            F.interpolate(branch(F.adaptive_avg_pool2d(x, n)), size=SIZE, mode="bilinear", align_corners=True)
            for n, branch in zip((1, 2, 3, 6), block.branches, strict=True)
        ]
        assert all(level.shape[1] == 4 for level in levels)  # C / 4 channels per level
        torch.testing.assert_close(block(x), block.bottleneck(torch.cat([x, *levels], dim=1)))


def test_denoised_nl_class_map_handling():
    torch.manual_seed(0)
    x = torch.randn(2, CHANNELS, *SIZE)
    logits = torch.randn(2, NUM_CLASSES, 7, 15)
    from_logits = DenoisedNL(CHANNELS, 8, class_input="logits").eval()
    perturb_zero_parameters(from_logits)
    from_probs = DenoisedNL(CHANNELS, 8).eval()
    from_probs.load_state_dict(from_logits.state_dict())
    # Logits are resized (bilinear, align_corners=True) to x's size, then turned into probabilities.
    probs = F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=True).softmax(1)
    with torch.no_grad():
        torch.testing.assert_close(from_logits(x, logits), from_probs(x, probs))
        with pytest.raises(ValueError, match="class map"):
            from_probs(x)
        no_gr = DenoisedNL(CHANNELS, 8, rectify=False).eval()
        assert no_gr(x).shape == x.shape
