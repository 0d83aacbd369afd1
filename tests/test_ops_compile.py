"""The custom autograd Functions of the Denoised NL op (``_GatedAttention``, ``_LocalRelation``,
``_LocalAggregate``) under ``torch.compile``, and the traceable formulation that ``torch.export`` and the ONNX
exporter see instead of them: both equal the eager fused op, forward and backward."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

import nlseg.ops.denoised as denoised_module
import nlseg.ops.local as local_module
from nlseg.ops import denoised_attention, denoised_attention_reference


def _inputs(seed: int, h: int = 7, w: int = 9, dtype: torch.dtype = torch.float32) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 8, h, w, generator=g, dtype=dtype), torch.randn(2, 8, h, w, generator=g, dtype=dtype)
    v = torch.randn(2, 6, h, w, generator=g, dtype=dtype)
    p = torch.randn(2, 5, h, w, generator=g, dtype=dtype).softmax(1)
    return tuple(t.requires_grad_() for t in (q, k, v, p))


def _both_variants(q: Tensor, k: Tensor, v: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """GR + LR (all three Functions, the gated backward) and neither (the ungated backward); 3 chunks of rows."""
    full = denoised_attention(q, k, v, p, chunk_size=25)
    plain = denoised_attention(q, k, v, rectify=False, retain=False, chunk_size=25)
    return full, plain


def _value_and_grads(fn, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    full, plain = fn(*inputs)
    weight = torch.linspace(-1.0, 1.0, full.numel()).view_as(full)  # a fixed scalar that uses every output
    loss = (full * weight).sum() + (plain * weight.flip(0)).square().sum()
    return [full.detach(), plain.detach(), *torch.autograd.grad(loss, inputs)]


def test_fullgraph_compile_equals_eager_forward_and_backward():
    torch._dynamo.reset()
    compiled = torch.compile(_both_variants, fullgraph=True, backend="aot_eager")  # any graph break raises
    inputs = _inputs(0)
    got, want = _value_and_grads(compiled, inputs), _value_and_grads(_both_variants, inputs)
    for name, a, b in zip(("out GR+LR", "out plain", "dq", "dk", "dv", "dp"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert want[5].abs().sum() > 0  # the gate's gradient reaches the class probabilities


@pytest.mark.parametrize("rectify,retain", [(True, True), (False, True), (True, False)])
def test_traceable_path_equals_the_fused_op_forward_and_backward(monkeypatch, rectify: bool, retain: bool):
    """The export path (plain tensor ops, no chunks, no custom Function) is the same function (float64: to
    rounding)."""
    inputs = _inputs(1, 6, 11, torch.float64)
    q, k, v, p = inputs

    def run() -> list[Tensor]:
        out = denoised_attention(q, k, v, p if rectify else None, rectify=rectify, retain=retain, chunk_size=7)
        return [out.detach(), *torch.autograd.grad(out.square().sum(), inputs, allow_unused=True)]

    fused = run()
    for module in (denoised_module, local_module):
        monkeypatch.setattr(module, "exporting", lambda: True)
    traced = run()
    for a, b in zip(traced, fused, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # and the traceable path is not the released one by accident: that one also agrees, at 9x the memory
    reference = denoised_attention_reference(q, k, v, p if rectify else None, rectify=rectify, retain=retain)
    torch.testing.assert_close(traced[0], reference.detach(), rtol=1e-10, atol=1e-10)


class _Attention(torch.nn.Module):
    def forward(self, q: Tensor, k: Tensor, v: Tensor, p: Tensor) -> Tensor:
        return denoised_attention(q, k, v, p)


def test_torch_export_has_no_custom_function_and_a_dynamic_size():
    inputs = [t.detach() for t in _inputs(2)]
    dims = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}  # fails if height or width specialise
    program = torch.export.export(_Attention(), tuple(inputs), dynamic_shapes=[dims] * 4)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("autograd" in t or "higher_order" in t for t in targets), targets
    other = [t.detach() for t in _inputs(3, 5, 12)]  # another height and width than the traced ones
    torch.testing.assert_close(program.module()(*other), denoised_attention(*other), rtol=1e-5, atol=1e-5)


def test_nonlocal_query_blocks_compile_fullgraph_and_export_take_sdpa(monkeypatch):
    """nonlocal_attention with Ck != Cv (the query-block Function on the CPU): fullgraph torch.compile equals eager
    forward and backward; torch.export sees SDPA (padded), no custom Function, and the same function."""
    import nlseg.ops.attention as attention_module
    from nlseg.ops import nonlocal_attention

    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 2 * 30 * 8)  # 8 query rows per block: 4 blocks
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 30, 4, generator=g), torch.randn(2, 30, 4, generator=g)
    v = torch.randn(2, 30, 12, generator=g)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))

    def values_and_grads(fn) -> list[Tensor]:
        out = fn(*inputs)
        return [out.detach(), *torch.autograd.grad(out.square().sum(), inputs)]

    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: nonlocal_attention(*t, scale=1.0), fullgraph=True, backend="aot_eager")
    eager = values_and_grads(lambda *t: nonlocal_attention(*t, scale=1.0))
    for a, b in zip(values_and_grads(compiled), eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    class Attention(torch.nn.Module):
        def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return nonlocal_attention(q, k, v, scale=1.0)

    program = torch.export.export(Attention(), tuple(t.detach() for t in inputs))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("autograd" in t or "higher_order" in t for t in targets), targets
    assert any("scaled_dot_product" in t for t in targets), targets
    torch.testing.assert_close(program.module()(*(t.detach() for t in inputs)), eager[0], rtol=1e-5, atol=1e-5)
