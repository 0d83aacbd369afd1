"""nlseg.ops rows: one query's attention equals that row of the materialised N x N map, for every query."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nlseg.ops import (
    apnb_row,
    criss_cross_attention_reference,
    criss_cross_row,
    denoised_attention_reference,
    denoised_attention_rows,
    local_relation_reference,
    nonlocal_attention_reference,
    nonlocal_row,
    pyramid_sample,
)

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

F64 = dict(dtype=torch.float64)
B, CK, CV, K, H, W = 2, 4, 3, 5, 5, 7


def maps(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, CK, H, W, generator=gen, **F64) for _ in range(2))
    v = torch.randn(B, CV, H, W, generator=gen, **F64)
    p = torch.randn(B, K, H, W, generator=gen, **F64).mul(2).softmax(1)
    return q, k, v, p


def tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, N, C)


def denoised_full_maps(q, k, p, kernel_size=3):
    """A, A', A'' as (B, N, N), built the way denoised_attention_reference builds them (unfold of A')."""
    n = H * W
    attn = torch.softmax(tokens(q) @ k.flatten(2), dim=-1)  # A
    rectified = attn * torch.sigmoid(tokens(p) @ p.flatten(2))  # A'
    local = local_relation_reference(q, k, kernel_size).sigmoid().view(B, 1, kernel_size**2, n)  # S
    windows = F.unfold(rectified.reshape(B * n, 1, H, W), kernel_size, padding=kernel_size // 2)
    retained = (windows.view(B, n, kernel_size**2, n) * local).sum(2)  # A''
    return attn, rectified, retained


def every_pixel():
    return [(y, x) for y in range(H) for x in range(W)]


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_denoised_rows_are_rows_of_the_released_maps(kernel_size):
    q, k, v, p = maps()
    full = denoised_full_maps(q, k, p, kernel_size)
    # the maps written here are the released op's: A'' v is its output
    out = (full[2] @ tokens(v)).transpose(1, 2).reshape(B, CV, H, W)
    torch.testing.assert_close(out, denoised_attention_reference(q, k, v, p, kernel_size=kernel_size))
    for y, x in every_pixel():
        rows = denoised_attention_rows(q, k, p, (y, x), kernel_size=kernel_size)
        for row, full_map in zip(rows, full, strict=True):
            torch.testing.assert_close(row.flatten(1), full_map[:, y * W + x], rtol=1e-12, atol=1e-14)


def test_denoised_rows_without_class_probs_skip_global_rectifying():
    q, k, v, _ = maps(1)
    a, a_rect, a_ret = denoised_attention_rows(q, k, None, (2, 3))
    torch.testing.assert_close(a_rect, a)
    ref = denoised_attention_reference(q, k, v, rectify=False)  # A'' v with A' = A
    lr = torch.stack([denoised_attention_rows(q, k, None, yx)[2].flatten(1) for yx in every_pixel()], 1)
    torch.testing.assert_close((lr @ tokens(v)).transpose(1, 2).reshape(B, CV, H, W), ref)
    assert a_ret.shape == (B, H, W)


def test_denoised_rows_hand_computed():
    """q = k = 0: A = 1/N; one-hot classes: the gate is sigmoid(1) within a class, 1/2 across; S = 1/2."""
    q = torch.zeros(1, 2, 3, 3, **F64)
    labels = torch.tensor([[0, 0, 1], [0, 0, 1], [1, 1, 1]])
    p = F.one_hot(labels, 2).permute(2, 0, 1)[None].to(torch.float64)
    a, a_rect, a_ret = denoised_attention_rows(q, q, p, (0, 0))
    torch.testing.assert_close(a, torch.full((1, 3, 3), 1 / 9, **F64))
    same = torch.where(labels == 0, 1 / (1 + math.exp(-1)), 0.5).to(torch.float64)
    torch.testing.assert_close(a_rect[0], same / 9)
    # centre pixel: all 9 neighbours are inside, each weighted by sigmoid(0) = 1/2
    torch.testing.assert_close(a_ret[0, 1, 1], 0.5 * a_rect.sum())
    # corner (0, 0): its 4 neighbours inside the grid
    torch.testing.assert_close(a_ret[0, 0, 0], 0.5 * a_rect[0, :2, :2].sum())


@pytest.mark.parametrize("scale", [None, 1.0])
def test_nonlocal_row_is_a_row_of_the_map(scale):
    q, k, v, _ = maps(2)
    s = CK**-0.5 if scale is None else scale
    full = torch.softmax(s * tokens(q) @ k.flatten(2), dim=-1)  # (B, N, N)
    torch.testing.assert_close(full @ tokens(v), nonlocal_attention_reference(tokens(q), tokens(k), tokens(v), scale=s))
    for y, x in every_pixel():
        torch.testing.assert_close(nonlocal_row(q, k, (y, x), scale=scale).flatten(1), full[:, y * W + x])


def test_criss_cross_row_is_a_row_of_the_map():
    q, k, v, _ = maps(3)
    rows = torch.arange(H).repeat_interleave(W)
    cols = torch.arange(W).repeat(H)
    cross = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])  # (N, N)
    full = torch.softmax((tokens(q) @ k.flatten(2)).masked_fill(~cross, float("-inf")), dim=-1)
    out = (full @ tokens(v)).transpose(1, 2).reshape(B, CV, H, W)
    torch.testing.assert_close(out, criss_cross_attention_reference(q, k, v))
    for y, x in every_pixel():
        row = criss_cross_row(q, k, (y, x))
        torch.testing.assert_close(row.flatten(1), full[:, y * W + x])
        off_cross = torch.ones(H, W, dtype=torch.bool)
        off_cross[y, :] = False
        off_cross[:, x] = False
        assert (row[:, off_cross] == 0).all()


def test_criss_cross_row_hand_computed():
    """Zero keys: uniform 1 / (H + W - 1) on the cross, the query pixel counted once."""
    q = torch.randn(1, 2, 4, 6, **F64)
    row = criss_cross_row(q, torch.zeros_like(q), (1, 2))
    assert row[0, 1, 2].item() == pytest.approx(1 / 9)
    assert row[0, 1].sum().item() == pytest.approx(6 / 9) and row[0, :, 2].sum().item() == pytest.approx(4 / 9)


@pytest.mark.parametrize("pool_sizes", [(1, 3, 6, 8), (2, 3)])
def test_apnb_row_is_the_exact_pixel_weighting(pool_sizes):
    """softmax(s q P(k)ᵀ) P(v) == (pixel weights) v, P the adaptive average bins (overlapping here: 5 x 7)."""
    q, k, v, _ = maps(4)
    n = H * W
    s = CK**-0.5
    attn = torch.softmax(s * tokens(q) @ pyramid_sample(k, pool_sizes), dim=-1)  # (B, N, S)
    out = attn @ pyramid_sample(v, pool_sizes).transpose(1, 2)  # (B, N, Cv), APNB's attention output
    pooling = pyramid_sample(torch.eye(n, **F64).view(n, 1, H, W), pool_sizes)[:, 0]  # (N, S): [j, s] = [j∈s]/|s|
    full = attn @ pooling.T  # (B, N, N) effective pixel weights
    torch.testing.assert_close(full @ tokens(v), out)
    for y, x in every_pixel():
        row = apnb_row(q, k, (y, x), pool_sizes=pool_sizes)
        torch.testing.assert_close(row.flatten(1), full[:, y * W + x])
        torch.testing.assert_close(row.sum((1, 2)), torch.ones(B, **F64))


def test_rows_refuse_a_pixel_outside_the_grid():
    q, k, _, p = maps()
    with pytest.raises(ValueError, match=r"outside the 5 x 7 grid"):
        nonlocal_row(q, k, (5, 0))
    with pytest.raises(ValueError, match="class_probs"):
        denoised_attention_rows(q, k, p[..., :3], (0, 0))
