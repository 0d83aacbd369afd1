"""nlseg.ops.denoised_attention and the local relation ops against the paper's equations."""
from __future__ import annotations

import itertools

import pytest
import torch

from nlseg.engine.memory import PeakMemory
from nlseg.ops import (
    denoised_attention,
    denoised_attention_reference,
    local_aggregate,
    local_aggregate_reference,
    local_relation,
    local_relation_reference,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run


def literal_denoised(q, k, v, p, kernel_size, rectify, retain):
    """Song et al. §III transcribed index by index (DESIGN.md), independent of unfold/fold."""
    b, c, h, w = q.shape
    n, r = h * w, kernel_size // 2
    qf, kf, vf = q.reshape(b, c, n), k.reshape(b, c, n), v.reshape(b, v.shape[1], n)
    logits = torch.einsum("bci,bcj->bij", qf, kf)
    attn = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)  # Eq. (4), no scale
    if rectify:
        pf = p.reshape(b, p.shape[1], n)
        attn = attn * torch.sigmoid(torch.einsum("bki,bkj->bij", pf, pf))  # A' = A ⊙ P_class
    if retain:
        columns = []
        for j in range(n):
            yj, xj = divmod(j, w)
            col = torch.zeros_like(attn[:, :, 0])
            for dy, dx in itertools.product(range(-r, r + 1), repeat=2):
                y, x = yj + dy, xj + dx
                if 0 <= y < h and 0 <= x < w:  # outside the image the neighbour is zero
                    m = y * w + x
                    s = torch.sigmoid((qf[:, :, j] * kf[:, :, m]).sum(1))  # S[j, n] = σ(q_j · k_{j+n})
                    col = col + attn[:, :, m] * s[:, None]
            columns.append(col)
        attn = torch.stack(columns, dim=-1)  # A''[i, j] = Σ_n A'[i, j+n] S[j, n]
    return torch.einsum("bij,bcj->bci", attn, vf).reshape(b, -1, h, w)


def make_inputs(b=2, ck=5, cv=3, k=4, h=5, w=7, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, ck, h, w, generator=gen, dtype=dtype)
    key = torch.randn(b, ck, h, w, generator=gen, dtype=dtype)
    v = torch.randn(b, cv, h, w, generator=gen, dtype=dtype)
    p = torch.randn(b, k, h, w, generator=gen, dtype=dtype).softmax(1)
    return [t.requires_grad_() for t in (q, key, v, p)]


def values_and_grads(fn, inputs, seed=1):
    out = fn(*inputs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return out, grads


def assert_rel_close(actual, expected, rtol=1e-6):
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((actual - expected).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("rectify,retain", list(itertools.product([True, False], repeat=2)))
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_matches_literal_equations(kernel_size, rectify, retain, impl):
    inputs = make_inputs()
    options = dict(kernel_size=kernel_size, rectify=rectify, retain=retain)
    if impl == "fast":
        fn = lambda q, k, v, p: denoised_attention(q, k, v, p, chunk_size=4, **options)  # several chunks
    else:
        fn = lambda q, k, v, p: denoised_attention_reference(q, k, v, p, **options)
    out, grads = values_and_grads(fn, inputs)
    out_lit, grads_lit = values_and_grads(lambda q, k, v, p: literal_denoised(q, k, v, p, **options), inputs)
    assert_rel_close(out, out_lit)
    for name, g, g_lit in zip("qkvp", grads, grads_lit):
        if g_lit is None:  # class_probs unused when GR is off
            assert name == "p" and not rectify and g is None
            continue
        assert g_lit.abs().max() > 0, name
        assert_rel_close(g, g_lit)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 35, None])
def test_chunking_does_not_change_the_result(chunk_size):
    inputs = make_inputs(b=1)
    out, grads = values_and_grads(lambda *x: denoised_attention(*x, chunk_size=chunk_size), inputs)
    out_ref, grads_ref = values_and_grads(denoised_attention_reference, inputs)
    assert_rel_close(out, out_ref, 1e-12)
    for g, g_ref in zip(grads, grads_ref):
        assert_rel_close(g, g_ref, 1e-12)


@pytest.mark.parametrize("rectify,retain", [(True, True), (False, False)])
def test_far_negative_exponents_are_floored_without_changing_the_function(rectify, retain, monkeypatch):
    """Scores spread over hundreds (most shifted scores below -87, where the CPU's exp is slow): the chunks floor the
    exponents at EXP_FLOOR; in float32 that moves no value or gradient beyond rounding, in float64 the literal
    equations still hold."""
    import nlseg.ops.denoised as denoised_module
    from nlseg.ops.attention import EXP_FLOOR

    q, k, v, p = make_inputs(h=6, w=9, seed=3)
    q = (q.detach() * 30).requires_grad_()
    scores = torch.einsum("bci,bcj->bij", q.flatten(2), k.flatten(2))
    assert ((scores - scores.amax(-1, keepdim=True)) < EXP_FLOOR).double().mean() > 0.6
    options = dict(kernel_size=3, rectify=rectify, retain=retain, chunk_size=7)
    fast = lambda *x: denoised_attention(*x, **options)  # noqa: E731
    out, grads = values_and_grads(fast, [t.detach().float().requires_grad_() for t in (q, k, v, p)])
    monkeypatch.setattr(denoised_module, "softmax_numerator_", lambda shifted: shifted.exp_())
    out_plain, grads_plain = values_and_grads(fast, [t.detach().float().requires_grad_() for t in (q, k, v, p)])
    monkeypatch.undo()
    assert_rel_close(out, out_plain)
    for g, g_plain in zip(grads, grads_plain):
        assert (g is None) == (g_plain is None)
        if g is not None:
            assert_rel_close(g, g_plain)
    out64, grads64 = values_and_grads(fast, [q, k, v, p])
    out_lit, grads_lit = values_and_grads(lambda *x: literal_denoised(*x, 3, rectify, retain), [q, k, v, p])
    assert_rel_close(out64, out_lit)
    for g, g_lit in zip(grads64, grads_lit):
        assert (g is None) == (g_lit is None)
        if g is not None:
            assert_rel_close(g, g_lit)


def test_gradcheck_denoised_attention():
    inputs = make_inputs(b=1, ck=3, cv=2, k=3, h=3, w=4)
    assert torch.autograd.gradcheck(lambda *x: denoised_attention(*x, chunk_size=5), inputs)


def test_gradcheck_local_ops():
    q, k, v, _ = make_inputs(b=2, ck=3, cv=2, h=4, w=5)
    weights = torch.randn(2, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(local_relation, (q, k))
    assert torch.autograd.gradcheck(local_aggregate, (v, weights))
    weights5 = torch.randn(2, 25, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: local_aggregate(a, b, 5), (v, weights5))


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_local_ops_match_unfold_reference(kernel_size):
    q, k, v, _ = make_inputs(b=2, ck=4, cv=3, h=6, w=5)
    weights = torch.randn(2, kernel_size**2, 6, 5, dtype=torch.float64, requires_grad=True)
    for fast, ref, args in [
        (local_relation, local_relation_reference, (q, k)),
        (local_aggregate, local_aggregate_reference, (v, weights)),
    ]:
        out, grads = values_and_grads(lambda *x: fast(*x, kernel_size), args)
        out_ref, grads_ref = values_and_grads(lambda *x: ref(*x, kernel_size), args)
        assert_rel_close(out, out_ref, 1e-12)
        for g, g_ref in zip(grads, grads_ref):
            assert_rel_close(g, g_ref, 1e-12)


def test_local_relation_hand_computed():
    # 1 channel, 2x2 image, q = 1 everywhere: each output is the key at that neighbour (0 outside).
    k = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    rel = local_relation(torch.ones_like(k), k)
    # offset (0, +1) is n = 5 in row-major order of the 3x3 window
    assert rel[0, 5].tolist() == [[2.0, 0.0], [4.0, 0.0]]
    # offset (-1, -1) is n = 0
    assert rel[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert rel[0, 4].tolist() == k[0, 0].tolist()  # centre


def test_retention_commutes_with_values():
    """The identity nlseg relies on: A'' v = A' ṽ with ṽ = local_aggregate(v, S)."""
    q, k, v, p = (t.detach() for t in make_inputs(b=1))
    plain = denoised_attention_reference(q, k, v, p, retain=False)
    s = local_relation(q, k).sigmoid()
    via_fold = denoised_attention_reference(q, k, local_aggregate(v, s), p, retain=False)
    assert_rel_close(denoised_attention_reference(q, k, v, p), via_fold, 1e-12)
    assert not torch.allclose(plain, via_fold)  # LR does change the result


class LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_fast_path_never_materialises_the_attention_map():
    h, w = 24, 32
    n = h * w
    q, k, v, p = make_inputs(b=1, ck=8, cv=16, k=6, h=h, w=w, dtype=torch.float32)
    rows = 64
    with LargestAllocation() as watch, PeakMemory() as mem:
        out = denoised_attention(q, k, v, p, chunk_size=rows)
        torch.autograd.grad(out, (q, k, v, p), torch.ones_like(out))
    assert watch.largest <= rows * n  # no tensor bigger than one chunk of scores
    assert mem.peak_bytes < n * n * 4  # fwd + bwd peak stays below ONE float32 N x N map
    with PeakMemory() as mem_ref:
        out = denoised_attention_reference(q, k, v, p)
        torch.autograd.grad(out, (q, k, v, p), torch.ones_like(out))
    assert mem_ref.peak_bytes > 9 * n * n * 4  # the released form holds the (N, k², N) unfold
    assert mem_ref.peak_bytes > 20 * mem.peak_bytes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    inputs = [t.detach() for t in make_inputs(b=1, dtype=torch.float32)]
    expected = denoised_attention(*inputs)
    out = denoised_attention(*(t.to(dtype) for t in inputs))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)


def test_input_errors():
    q, k, v, p = (t.detach() for t in make_inputs(b=1))
    with pytest.raises(ValueError, match="needs class_probs"):
        denoised_attention(q, k, v)
    assert denoised_attention(q, k, v, rectify=False).shape == v.shape
    with pytest.raises(ValueError, match="odd"):
        denoised_attention(q, k, v, p, kernel_size=4)
    with pytest.raises(ValueError, match="q and k"):
        denoised_attention(q, k[:, :2], v, p)
    with pytest.raises(ValueError, match="class_probs"):
        denoised_attention(q, k, v, p[..., :3])
    with pytest.raises(ValueError, match="chunk_size"):
        denoised_attention(q, k, v, p, chunk_size=0)
