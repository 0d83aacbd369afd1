"""Attention ops: fast path == reference path (forward and backward), gradcheck, hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import nlseg.ops.attention as attention_module
import nlseg.ops.pyramid as pyramid_module
from nlseg.engine.memory import PeakMemory
from nlseg.ops import (
    adaptive_avg_pool,
    channel_attention,
    channel_attention_reference,
    criss_cross_attention,
    criss_cross_attention_reference,
    nonlocal_attention,
    nonlocal_attention_reference,
    pyramid_sample,
    pyramid_sample_reference,
)

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

F64 = dict(dtype=torch.float64)
TIGHT = dict(rtol=1e-7, atol=1e-9)


def assert_same_function(fast, reference, inputs, **tol):
    """fast(*inputs) == reference(*inputs), and so are the gradients w.r.t. every input."""
    tol = tol or TIGHT
    leaves_fast = [t.detach().clone().requires_grad_() for t in inputs]
    leaves_ref = [t.detach().clone().requires_grad_() for t in inputs]
    out_fast, out_ref = fast(*leaves_fast), reference(*leaves_ref)
    torch.testing.assert_close(out_fast, out_ref, **tol)
    weights = torch.randn_like(out_ref)  # a generic upstream gradient
    grads_fast = torch.autograd.grad((out_fast * weights).sum(), leaves_fast)
    grads_ref = torch.autograd.grad((out_ref * weights).sum(), leaves_ref)
    for g_fast, g_ref in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(g_fast, g_ref, **tol)


def tokens_of_map(batch: int, channels: int, n: int, dtype=torch.float64) -> torch.Tensor:
    """(B, N, C) tokens viewed from a (B, C, N) map: the non-contiguous layout the blocks pass in."""
    return torch.randn(batch, channels, n, dtype=dtype).transpose(1, 2)


# ---------------------------------------------------------------- nonlocal_attention


@pytest.mark.parametrize("ck,cv", [(8, 8), (4, 12), (12, 4)])
@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_nonlocal_fast_matches_reference(ck, cv, scale):
    torch.manual_seed(0)
    q, k, v = tokens_of_map(2, ck, 37), tokens_of_map(2, ck, 23), tokens_of_map(2, cv, 23)
    assert_same_function(
        lambda *t: nonlocal_attention(*t, scale=scale),
        lambda *t: nonlocal_attention_reference(*t, scale=scale),
        (q, k, v),
    )


def test_nonlocal_fast_matches_reference_float32():
    torch.manual_seed(0)
    q, k, v = tokens_of_map(2, 16, 300, torch.float32), tokens_of_map(2, 16, 300, torch.float32), tokens_of_map(
        2, 32, 300, torch.float32
    )
    assert_same_function(nonlocal_attention, nonlocal_attention_reference, (q, k, v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ck,cv", [(6, 6), (16, 16)])
def test_nonlocal_runs_on_the_flash_kernel(ck, cv):
    """With only the flash backend allowed, SDPA raises unless the op feeds it a kernel-compatible layout
    (4-D, unit channel stride, one head dim) — so passing means the N x N-free kernel ran."""
    torch.manual_seed(0)
    q, k, v = tokens_of_map(1, ck, 40), tokens_of_map(1, ck, 40), tokens_of_map(1, cv, 40)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        assert_same_function(nonlocal_attention, nonlocal_attention_reference, (q, k, v))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("ck,cv", [(3, 10), (10, 3)])
def test_nonlocal_narrow_keys_take_query_blocks_not_sdpa(ck, cv, grad, monkeypatch):
    """Ck != Cv on the CPU: query blocks of at most BLOCK_ELEMENTS map values (here 2 x 7 keys x 3 rows, so 37
    queries make 13 blocks, the last one short), with or without a gradient, and never SDPA (which would pad)."""
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 2 * 7 * 3)
    monkeypatch.setattr(F, "scaled_dot_product_attention", None)  # calling it would raise
    torch.manual_seed(0)
    q, k, v = tokens_of_map(2, ck, 37), tokens_of_map(2, ck, 7), tokens_of_map(2, cv, 7)
    calls = []
    monkeypatch.setattr(torch, "bmm", lambda *a, _bmm=torch.bmm, **kw: calls.append(1) or _bmm(*a, **kw))
    with torch.set_grad_enabled(grad):
        got = nonlocal_attention(q.requires_grad_(grad), k, v, scale=0.5)
    assert len(calls) == 2 * 13  # q kᵀ and the product with v, per block
    torch.testing.assert_close(got, nonlocal_attention_reference(q, k, v, scale=0.5), **TIGHT)


@pytest.mark.parametrize("ck,cv,scale", [(3, 10, None), (10, 3, 1.0), (1, 5, 0.3)])
def test_nonlocal_query_blocks_match_reference_and_gradcheck(ck, cv, scale, monkeypatch):
    """Several blocks, the last one short, in float64: the reference's function and gradients, and gradcheck."""
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 2 * 23 * 4)  # 4 query rows per block
    torch.manual_seed(0)
    q, k, v = tokens_of_map(2, ck, 37), tokens_of_map(2, ck, 23), tokens_of_map(2, cv, 23)
    assert_same_function(
        lambda *t: nonlocal_attention(*t, scale=scale), lambda *t: nonlocal_attention_reference(*t, scale=scale),
        (q, k, v),
    )
    leaves = [t[:1, :9].detach().clone().requires_grad_() for t in (q, k, v)]  # 9 queries, 9 keys: 3 blocks of 4
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 9 * 4)
    assert torch.autograd.gradcheck(lambda *t: nonlocal_attention(*t, scale=scale), leaves)


def test_nonlocal_query_blocks_match_reference_float32_odd_sizes(monkeypatch):
    """float32, odd Nq and Nk, batch 3, a short last block: reference values and gradients to float32 rounding."""
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 3 * 157 * 50)  # 50 rows per block: 301 = 6 x 50 + 1
    torch.manual_seed(0)
    q, k, v = tokens_of_map(3, 7, 301, torch.float32), tokens_of_map(3, 7, 157, torch.float32), tokens_of_map(
        3, 45, 157, torch.float32)
    assert_same_function(nonlocal_attention, nonlocal_attention_reference, (q, k, v), rtol=1e-4, atol=1e-5)
    assert_same_function(lambda *t: nonlocal_attention(*t, scale=1.0),
                         lambda *t: nonlocal_attention_reference(*t, scale=1.0), (q * 3, k, v), rtol=1e-4, atol=1e-4)


def test_nonlocal_query_blocks_floor_far_negative_exponents_and_keep_the_function(monkeypatch):
    """Scores spread over hundreds, as in DANet's PAM (no scale) at random init, where 99 % of a row's shifted
    scores lie below -87 and the CPU's exp leaves its fast path: the blocks raise those exponents to EXP_FLOOR and
    still give the float64 reference's values and gradients to float32 rounding."""
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 2 * 157 * 50)  # 50 rows per block
    torch.manual_seed(0)
    q, k, v = tokens_of_map(2, 16, 301) * 40, tokens_of_map(2, 16, 157), tokens_of_map(2, 40, 157)
    scores = torch.bmm(q, k.transpose(1, 2))
    assert ((scores - scores.amax(-1, keepdim=True)) < attention_module.EXP_FLOOR).double().mean() > 0.9
    q32, k32, v32 = (t.float() for t in (q, k, v))
    floored = lambda *t: nonlocal_attention(*t, scale=1.0)  # noqa: E731

    def unfloored(*t):  # the same blocks with a plain exp
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(attention_module, "softmax_numerator_", lambda shifted: shifted.exp_())
            return nonlocal_attention(*t, scale=1.0)

    # float32: the floor changes no value or gradient beyond rounding (float32's own error here is 1e-5 of the
    # largest gradient, far above this tolerance)
    assert_same_function(floored, unfloored, (q32, k32, v32), rtol=1e-6, atol=1e-12)
    # float64: the reference's values and gradients
    assert_same_function(floored, lambda *t: nonlocal_attention_reference(*t, scale=1.0), (q, k, v))


def test_nonlocal_query_blocks_hold_no_map(monkeypatch):
    """Forward + backward at Ck != Cv holds two blocks of the map at most, never the Nq x Nk map."""
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 64 * 1024)
    torch.manual_seed(0)
    n = 2048
    q, k, v = (torch.randn(1, n, c, requires_grad=True) for c in (8, 8, 32))
    with PeakMemory() as mem:
        out = nonlocal_attention(q, k, v, scale=1.0)
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert mem.peak_bytes < n * n  # a quarter of ONE float32 N x N map (16 MiB); about 2 MiB in all


def test_nonlocal_gradcheck():
    torch.manual_seed(0)
    q = torch.randn(1, 5, 3, **F64, requires_grad=True)
    k = torch.randn(1, 4, 3, **F64, requires_grad=True)
    v = torch.randn(1, 4, 2, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: nonlocal_attention(*t, scale=0.7), (q, k, v))


def test_nonlocal_hand_cases():
    torch.manual_seed(0)
    v = torch.randn(2, 1, 5, **F64)
    # A single key takes all the weight: every query returns that value.
    out = nonlocal_attention(torch.randn(2, 7, 3, **F64), torch.randn(2, 1, 3, **F64), v)
    torch.testing.assert_close(out, v.expand(2, 7, 5))
    # Zero queries see flat scores: the output is the mean value.
    values = torch.randn(1, 6, 4, **F64)
    out = nonlocal_attention(torch.zeros(1, 3, 2, **F64), torch.randn(1, 6, 2, **F64), values)
    torch.testing.assert_close(out, values.mean(1, keepdim=True).expand(1, 3, 4))
    # Two keys: weights are a logistic of the scaled score difference.
    q = torch.tensor([[[1.0, 2.0]]], **F64)
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], **F64)  # scores 1 and 2, scale 2^-1/2
    v = torch.tensor([[[10.0], [20.0]]], **F64)
    w_second = 1 / (1 + math.exp(-(2 - 1) / math.sqrt(2)))
    torch.testing.assert_close(nonlocal_attention(q, k, v), torch.tensor([[[10 + 10 * w_second]]], **F64))


def test_nonlocal_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="Ck"):
        nonlocal_attention(torch.randn(1, 4, 3), torch.randn(1, 5, 2), torch.randn(1, 5, 2))
    with pytest.raises(ValueError, match="token layouts"):
        nonlocal_attention(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2))


# ---------------------------------------------------------------- pyramid_sample


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("size", [(13, 29), (5, 7), (2, 9)])
@pytest.mark.parametrize("sizes", [(1, 3, 6, 8), (1, 2, 3, 6), (4,)])
def test_pyramid_fast_matches_reference(mode, size, sizes):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, **F64)
    assert_same_function(
        lambda t: pyramid_sample(t, sizes, mode), lambda t: pyramid_sample_reference(t, sizes, mode), (x,)
    )


def test_pyramid_hand_cases():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 13, 29, **F64)
    assert pyramid_sample(x).shape == (2, 4, 110)  # S = 1 + 9 + 36 + 64
    torch.testing.assert_close(pyramid_sample(x, (1,)), x.mean((2, 3)).unsqueeze(-1))
    torch.testing.assert_close(pyramid_sample(x, (1,), "max"), x.amax((2, 3)).unsqueeze(-1))
    grid = torch.randn(2, 4, 3, 3, **F64)
    torch.testing.assert_close(pyramid_sample(grid, (3,)), grid.flatten(2))  # 3x3 -> 3x3 is the identity, row-major
    # Length 3 into 2 bins: [0, 2) and [1, 3) overlap on the middle element.
    row = torch.tensor([[[[1.0, 2.0, 4.0]]]], **F64)
    torch.testing.assert_close(pyramid_sample(row, (2,)), torch.tensor([[[1.5, 3.0, 1.5, 3.0]]], **F64))
    torch.testing.assert_close(pyramid_sample(row, (2,), "max"), torch.tensor([[[2.0, 4.0, 2.0, 4.0]]], **F64))
    # Levels are concatenated in the order given.
    torch.testing.assert_close(pyramid_sample(row, (1, 2))[..., 0], row.mean((2, 3)))


def test_pyramid_gradcheck():
    x = torch.randn(1, 2, 5, 4, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pyramid_sample(t, (1, 2, 3)), (x,))


# ---------------------------------------------------------------- adaptive_avg_pool (matrix form)


@pytest.mark.parametrize("bins", [1, 2, 3, 6, 8])
def test_adaptive_avg_pool_matrix_form_equals_aten(bins):
    """Two matrix products == F.adaptive_avg_pool2d, forward and backward, for L = 1, L < n, L a multiple of
    n and not (overlapping bins), in float64: equal to rounding."""
    torch.manual_seed(bins)
    for size in [(1, 1), (1, 7), (2, 5), (5, 3), (8, 24), (13, 29), (17, 9)]:
        x = torch.randn(2, 3, *size, **F64)
        got = adaptive_avg_pool(x, bins, traceable=True)
        assert got.shape == (2, 3, bins, bins)
        assert (got - F.adaptive_avg_pool2d(x, bins)).abs().max() < 1e-14, size
        assert_same_function(lambda t: adaptive_avg_pool(t, bins, traceable=True),
                             lambda t: F.adaptive_avg_pool2d(t, bins), (x,), rtol=0, atol=1e-14)


def test_adaptive_avg_pool_picks_its_path_by_exporting(monkeypatch):
    x = torch.randn(1, 64, 11, 14, generator=torch.Generator().manual_seed(0))
    aten, matrices = F.adaptive_avg_pool2d(x, 3), adaptive_avg_pool(x, 3, traceable=True)
    assert not torch.equal(aten, matrices)  # float32 rounding tells the two apart
    assert torch.equal(adaptive_avg_pool(x, 3), aten)  # eager: ATen's, bit for bit (golden outputs unchanged)
    monkeypatch.setattr(pyramid_module, "exporting", lambda: True)
    assert torch.equal(adaptive_avg_pool(x, 3), matrices)  # while exporting: the matrix form


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_pyramid_export_path_equals_eager(monkeypatch, mode):
    """While exporting: avg by the matrix form, max by the reference slices; the same function."""
    x = torch.randn(2, 3, 7, 19, **F64)
    eager = pyramid_sample(x, mode=mode)
    monkeypatch.setattr(pyramid_module, "exporting", lambda: True)
    assert_same_function(lambda t: pyramid_sample(t, mode=mode), lambda t: pyramid_sample_reference(t, mode=mode),
                         (x,))
    torch.testing.assert_close(pyramid_sample(x, mode=mode), eager, **TIGHT)


def test_adaptive_avg_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bins"):
        adaptive_avg_pool(torch.randn(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="shape"):
        adaptive_avg_pool(torch.randn(4, 4), 2)


def test_pyramid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        pyramid_sample(torch.randn(1, 1, 4, 4), mode="median")
    with pytest.raises(ValueError, match="sizes"):
        pyramid_sample(torch.randn(1, 1, 4, 4), sizes=(0, 2))


# ---------------------------------------------------------------- criss_cross_attention


@pytest.mark.parametrize("size", [(4, 6), (5, 3), (1, 4), (3, 1)])
def test_criss_cross_fast_matches_reference(size):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, *size, **F64), torch.randn(2, 3, *size, **F64), torch.randn(2, 5, *size, **F64)
    assert_same_function(criss_cross_attention, criss_cross_attention_reference, (q, k, v))


def test_criss_cross_gradcheck():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 3, 4, **F64, requires_grad=True), torch.randn(1, 2, 3, 4, **F64, requires_grad=True)
    v = torch.randn(1, 3, 3, 4, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(criss_cross_attention, (q, k, v))


def test_criss_cross_counts_self_once():
    """Flat scores weigh the H + W - 1 cross positions equally, the centre once."""
    torch.manual_seed(0)
    h, w = 4, 5
    v = torch.randn(1, 2, h, w, **F64)
    zeros = torch.zeros(1, 3, h, w, **F64)
    expected = (v.sum(2, keepdim=True) + v.sum(3, keepdim=True) - v) / (h + w - 1)
    torch.testing.assert_close(criss_cross_attention(zeros, zeros, v), expected)


def test_criss_cross_ignores_positions_off_the_cross():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 5, **F64), torch.randn(1, 2, 4, 5, **F64), torch.randn(1, 3, 4, 5, **F64)
    out = criss_cross_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[..., 2, 3] += 5.0
    v2[..., 2, 3] += 5.0  # (2, 3) is off the cross of (0, 0)
    out2 = criss_cross_attention(q, k2, v2)
    torch.testing.assert_close(out2[..., 0, 0], out[..., 0, 0])
    assert not torch.allclose(out2[..., 0, 3], out[..., 0, 3])  # ... but on the cross of (0, 3)


# ---------------------------------------------------------------- channel_attention


@pytest.mark.parametrize("compact", [None, 3])
def test_channel_fast_matches_reference(compact):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, **F64)
    inputs = (x,) if compact is None else (x, torch.randn(2, compact, 5, 7, **F64))
    assert_same_function(channel_attention, channel_attention_reference, inputs)


@pytest.mark.parametrize("compact", [None, 3])
def test_channel_attention_keeps_a_channels_last_layout(compact):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, **F64)
    keys = None if compact is None else torch.randn(2, compact, 5, 7, **F64)
    want = channel_attention(x, keys)
    to_nhwc = (lambda t: None if t is None else t.contiguous(memory_format=torch.channels_last))
    got = channel_attention(to_nhwc(x), to_nhwc(keys))
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, want, **TIGHT)


def test_channel_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 2, 3, **F64, requires_grad=True)
    keys = torch.randn(1, 2, 2, 3, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(channel_attention, (x,))
    assert torch.autograd.gradcheck(channel_attention, (x, keys))


def test_channel_hand_case():
    """x = [[1, 0], [0, 2]] (C = 2, N = 2): E = diag(1, 4), so the rows of softmax(max(E) - E) are
    softmax([0, 1]) and softmax([4, 0])."""
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]], **F64)  # (1, 2, 1, 2)
    e = math.e
    expected = torch.tensor([[[[1 / (1 + e), 2 * e / (1 + e)]], [[e**4 / (1 + e**4), 2 / (1 + e**4)]]]], **F64)
    torch.testing.assert_close(channel_attention(x), expected)
    torch.testing.assert_close(channel_attention(x, x), expected)  # CAM is CCAM with the map as its own keys
