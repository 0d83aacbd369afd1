"""Blocks own their math: fused vs reference paths, APNB's attention branch, one query's attention rows."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nlseg.blocks import (
    AFNB,
    APNB,
    ROW_BLOCKS,
    ChannelAttention,
    CompactChannelAttention,
    CompactPositionAttention,
    CrissCrossAttention,
    DenoisedNL,
    NonLocal2d,
    ObjectContext,
    PositionAttention,
    create_block,
    set_fused,
)
from nlseg.blocks.layers import to_map, to_tokens
from nlseg.models import create_model
from nlseg.ops import (
    apnb_row,
    criss_cross_row,
    denoised_attention_rows,
    nonlocal_attention_reference,
    nonlocal_row,
    pyramid_sample,
)

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

C, K, SIZE = 16, 4, (7, 9)
F64 = torch.float64

ATTENTION = {
    "NonLocal2d": lambda: NonLocal2d(C, 8, 8),
    "NonLocal2d_concat": lambda: NonLocal2d(C, 8, 8, fusion="concat"),
    "APNB": lambda: APNB(C, key_channels=8, value_channels=8, pool_sizes=(1, 2, 3)),
    "ObjectContext": lambda: ObjectContext(C),
    "AFNB": lambda: AFNB(C // 2, C, C, 8, 8, pool_sizes=(1, 2)),
    "PositionAttention": lambda: PositionAttention(C),
    "ChannelAttention": lambda: ChannelAttention(C),
    "CompactPositionAttention": lambda: CompactPositionAttention(C, (1, 2)),
    "CompactChannelAttention": lambda: CompactChannelAttention(C, 4),
    "CrissCrossAttention": lambda: CrissCrossAttention(C, recurrence=2),
    "DenoisedNL": lambda: DenoisedNL(C, 8),
    "DenoisedNL_no_gr": lambda: DenoisedNL(C, 8, rectify=False),
}


def randomised(block: nn.Module) -> nn.Module:
    """Double precision, eval mode, every parameter random (γ and Wo too, so the attention reaches the output)."""
    block = block.to(F64).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return block


def inputs_for(block: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    x = torch.randn(2, C, *SIZE, generator=gen, dtype=F64)
    if isinstance(block, AFNB):
        return torch.randn(2, C // 2, 5, 6, generator=gen, dtype=F64), x
    if isinstance(block, DenoisedNL) and block.rectify:
        return x, torch.randn(2, K, *SIZE, generator=gen, dtype=F64).softmax(1)
    return (x,)


@pytest.mark.parametrize("name", list(ATTENTION))
def test_fused_and_reference_paths_agree_forward_and_backward(name: str):
    torch.manual_seed(0)
    block = randomised(ATTENTION[name]())
    assert block.fused is True
    results = []
    for fused in (True, False):
        assert set_fused(block, fused) >= 1 and block.fused is fused
        block.zero_grad()
        inputs = tuple(t.clone().requires_grad_() for t in inputs_for(block, torch.Generator().manual_seed(1)))
        out = block(*inputs)
        (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum().backward()
        results.append((out, [t.grad for t in inputs], [p.grad.clone() for p in block.parameters()]))
    (out_f, in_f, par_f), (out_r, in_r, par_r) = results
    torch.testing.assert_close(out_f, out_r)
    for a, b in zip(in_f + par_f, in_r + par_r, strict=True):
        torch.testing.assert_close(a, b)


def test_set_fused_reaches_every_block_of_a_model():
    model = create_model("danet_r50", num_classes=3, backbone_width=8, head_channels=16)
    assert set_fused(model, False) == 2  # PAM and CAM
    assert all(m.fused is False for m in model.modules() if hasattr(m, "fused"))
    assert set_fused(create_model("fcn_r18", num_classes=3, backbone_width=8, head_channels=16), False) == 0


@pytest.mark.parametrize("pool_sizes", [(1, 3, 6, 8), None])
def test_apnb_attend_is_the_attend_of_its_forward(pool_sizes):
    """attend(x) = Wo(softmax(Ĉ^-1/2 q P(k)ᵀ) P(v)), and forward = fuse(cat(attend(x), x)) (ANN Table 1's unit)."""
    torch.manual_seed(0)
    block = randomised(APNB(C, key_channels=8, value_channels=8, pool_sizes=pool_sizes))
    x = torch.randn(1, C, 9, 10, dtype=F64)
    with torch.no_grad():
        key = block.key(x)
        value = block.value(x)
        if pool_sizes is None:
            anchors_k, anchors_v = key.flatten(2), value.flatten(2)
        else:
            anchors_k, anchors_v = pyramid_sample(key, pool_sizes), pyramid_sample(value, pool_sizes)
        o = nonlocal_attention_reference(to_tokens(key), anchors_k.transpose(1, 2), anchors_v.transpose(1, 2))
        by_hand = block.out_proj(to_map(o, 9, 10))
        torch.testing.assert_close(block.attend(x), by_hand)
        torch.testing.assert_close(block(x), block.fuse(torch.cat([by_hand, x], 1)))
        nb = randomised(NonLocal2d(C, 8, 8, fusion="concat"))
        torch.testing.assert_close(nb(x), nb.fuse(torch.cat([nb.attend(x), x], 1)))


def test_attention_rows_are_the_ops_rows_of_the_blocks_q_and_k():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, C, *SIZE, generator=gen, dtype=F64)
    logits = torch.randn(1, K, 4, 5, generator=gen, dtype=F64)
    index = (3, 5)
    with torch.no_grad():
        dnl = randomised(DenoisedNL(C, 8, class_input="logits"))
        probs = dnl.class_probs(logits, SIZE)
        expected = denoised_attention_rows(dnl.query(x), dnl.key(x), probs, index)
        rows = dnl.attention_rows(x, logits, index=index)
        assert list(rows) == ["A", "A' (GR)", "A'' (LR)"]
        for row, ref in zip(rows.values(), expected, strict=True):
            torch.testing.assert_close(row, ref)

        apnb = randomised(APNB(C, key_channels=8, value_channels=8))
        key = apnb.key(x)
        torch.testing.assert_close(
            apnb.attention_rows(x, index=index)["attention (anchors on their bins)"], apnb_row(key, key, index)
        )
        oc = randomised(ObjectContext(C))
        key = oc.key(x)
        torch.testing.assert_close(oc.attention_rows(x, index=index)["attention"], nonlocal_row(key, key, index))
        nl = randomised(create_block("nonlocal2d", C, scale="none"))
        torch.testing.assert_close(
            nl.attention_rows(x, index=index)["attention"], nonlocal_row(nl.query(x), nl.key(x), index, scale=1.0)
        )
        pam = randomised(PositionAttention(C))
        torch.testing.assert_close(
            pam.attention_rows(x, index=index)["attention"], nonlocal_row(pam.query(x), pam.key(x), index, scale=1.0)
        )
        cca = randomised(CrissCrossAttention(C, recurrence=2))
        rows = cca.attention_rows(x, index=index)
        second_input = cca.gamma * _criss_cross_by_rows(cca, x) + x  # the first pass, computed from its rows
        torch.testing.assert_close(rows["pass 1"], criss_cross_row(cca.query(x), cca.key(x), index))
        torch.testing.assert_close(
            rows["pass 2"], criss_cross_row(cca.query(second_input), cca.key(second_input), index)
        )
    assert all(hasattr(cls, "attention_rows") for cls in ROW_BLOCKS)


def _criss_cross_by_rows(block: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """One criss-cross pass, each output position the row-weighted sum of the values."""
    q, k, v = block.query(x), block.key(x), block.value(x)
    out = torch.empty_like(v)
    for y in range(x.shape[2]):
        for col in range(x.shape[3]):
            weights = criss_cross_row(q, k, (y, col))  # (B, H, W)
            out[:, :, y, col] = torch.einsum("bhw,bchw->bc", weights, v)
    return out
