"""The Denoised Non-Local attention (Song et al., TNNLS 2023, §III-C to §III-E; DESIGN.md).

    A[i, j]   = softmax_j(q_i · k_j)                      Eq. (4), no scale
    A'        = A ⊙ sigmoid(p pᵀ)                         Global Rectifying, no re-normalisation
    A''[i, j] = Σ_n A'[i, j+n] · sigmoid(q_j · k_{j+n})   Local Retention over the k x k window of j
    out_i     = Σ_j A''[i, j] v_j

The released code builds A'' by unfolding the N x N map into (B, N, k², N): nine times the memory of
a plain non-local map. :func:`denoised_attention` computes the same function in bounded memory:

* LR commutes with the product by V: ``Σ_j A''[i, j] v_j = Σ_m A'[i, m] ṽ_m`` where
  ``ṽ = local_aggregate(v, S)`` (a fold of S ⊙ v done one offset at a time, see ``nlseg.ops.local``).
* GR is a gate applied after the softmax, so the softmax denominator stays the plain one and only the
  numerator is gated. Query rows are processed in chunks; the backward pass recomputes each chunk's
  scores from the saved log-sum-exp (flash-attention style), so no more than one chunk of the N x N
  map exists at a time, forward or backward.

The chunked kernel is a custom autograd Function; it traces under ``torch.compile`` (``fullgraph=True``).
While ``torch.export`` or an ONNX exporter traces (:func:`nlseg.ops.local.exporting`), the same function is
computed in plain tensor ops without chunks (:func:`_gated_attention_traceable`): one (B, N, N) map, where the
released formulation (:func:`denoised_attention_reference`) holds the (B, N, k², N) unfold as well.

The chunk budget is ``chunk_size`` (query rows per chunk) or, by default, :data:`CHUNK_ELEMENTS`
elements of the (B, rows, N) score block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from nlseg.ops.local import exporting, local_aggregate, local_relation, local_relation_reference

__all__ = ["CHUNK_ELEMENTS", "denoised_attention", "denoised_attention_reference"]

CHUNK_ELEMENTS: int = 1 << 21
"""Default budget of one (B, rows, N) score block: 2^21 elements, 8 MiB in float32. The backward pass
holds three such blocks at once, so the N x N work never needs more than about 24 MiB at this setting."""


def _rows_per_chunk(batch: int, n_queries: int, n_keys: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of query rows, got {chunk_size}")
        return min(chunk_size, n_queries)
    return max(1, min(n_queries, CHUNK_ELEMENTS // max(1, batch * n_keys)))


class _GatedAttention(torch.autograd.Function):
    """``out = (softmax(q kᵀ) ⊙ sigmoid(p pᵀ)) v`` on token layouts, chunked over query rows.

    q, k: (B, N, Ck); v: (B, N, Cv); p: (B, N, K) or None (no gate). Returns (B, N, Cv).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, p: Tensor | None, rows: int) -> Tensor:
        b, n, _ = q.shape
        out = v.new_empty(b, n, v.shape[-1])
        lse = q.new_empty(b, n)  # log Σ_j exp(q_i · k_j), kept for the backward recomputation
        k_t, p_t = k.transpose(1, 2), None if p is None else p.transpose(1, 2)
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            scores = torch.bmm(q[:, i0:i1], k_t)  # (B, r, N)
            row_max = scores.amax(-1, keepdim=True)
            weights = scores.sub_(row_max).exp_()  # unnormalised softmax numerator
            denom = weights.sum(-1, keepdim=True)  # (B, r, 1)
            if p is not None:
                weights.mul_(torch.bmm(p[:, i0:i1], p_t).sigmoid_())  # gate the numerator only
            out[:, i0:i1] = torch.bmm(weights, v).div_(denom)
            lse[:, i0:i1] = (row_max + denom.log()).squeeze(-1)
        ctx.save_for_backward(q, k, v, p, out, lse)
        ctx.rows = rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, p, out, lse = ctx.saved_tensors
        rows = ctx.rows
        n = q.shape[1]
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dp = None if p is None else torch.zeros_like(p)
        # [q_i, -lse_i] · [k_j, 1] = q_i · k_j - lse_i, so one matmul and one exp give P = softmax rows.
        q_aug = torch.cat([q, -lse.unsqueeze(-1)], dim=-1)  # (B, N, Ck + 1)
        k_aug_t = torch.cat([k, torch.ones_like(k[..., :1])], dim=-1).transpose(1, 2)  # (B, Ck + 1, N)
        v_t, p_t = v.transpose(1, 2), None if p is None else p.transpose(1, 2)
        # D_i = Σ_j A'_ij (dO_i · v_j) = dO_i · O_i: the row term of the softmax backward.
        row_dot = (grad_out * out).sum(-1, keepdim=True)  # (B, N, 1)
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            d_out, d_row = grad_out[:, i0:i1], row_dot[:, i0:i1]  # (B, r, Cv), (B, r, 1)
            prob = torch.bmm(q_aug[:, i0:i1], k_aug_t).exp_()  # P, (B, r, N)
            d_attn = torch.bmm(d_out, v_t)  # dL/dA', (B, r, N)
            if p is None:
                dv.baddbmm_(prob.transpose(1, 2), d_out)
                d_scores = d_attn.sub_(d_row).mul_(prob)  # P ⊙ (dA' - D)
            else:
                gate = torch.bmm(p[:, i0:i1], p_t).sigmoid_()  # G, (B, r, N)
                attn = prob * gate  # A' = P ⊙ G
                dv.baddbmm_(attn.transpose(1, 2), d_out)
                grad_attn = d_attn.mul_(attn)  # E = A' ⊙ dA'
                d_gate = torch.addcmul(grad_attn, grad_attn, gate, value=-1, out=gate)  # E ⊙ (1 - G)
                dp[:, i0:i1].baddbmm_(d_gate, p)
                dp.baddbmm_(d_gate.transpose(1, 2), p[:, i0:i1])
                d_scores = grad_attn.addcmul_(prob, d_row, value=-1)  # E - P ⊙ D
            dq[:, i0:i1] = torch.bmm(d_scores, k)
            dk.baddbmm_(d_scores.transpose(1, 2), q[:, i0:i1])
        return dq, dk, dv, dp, None


def _gated_attention_traceable(q: Tensor, k: Tensor, v: Tensor, p: Tensor | None) -> Tensor:
    """What :class:`_GatedAttention` computes, in plain tensor ops and in one piece, for export.

    q, k: (B, N, Ck); v: (B, N, Cv); p: (B, N, K) or None. Returns (B, N, Cv). Holds the (B, N, N) map.
    """
    attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)  # A, (B, N, N)
    if p is not None:
        attn = attn * torch.bmm(p, p.transpose(1, 2)).sigmoid()  # A' = A ⊙ G, no re-normalisation
    return torch.bmm(attn, v)  # (B, N, Cv)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, class_probs: Tensor | None, rectify: bool, kernel_size: int):
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must be (B, Ck, H, W) of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[0] != q.shape[0] or v.shape[-2:] != q.shape[-2:]:
        raise ValueError(f"v must be (B, Cv, H, W) matching q {tuple(q.shape)}, got {tuple(v.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if rectify:
        if class_probs is None:
            raise ValueError("rectify=True (Global Rectifying) needs class_probs; pass rectify=False to switch GR off")
        if class_probs.dim() != 4 or class_probs.shape[0] != q.shape[0] or class_probs.shape[-2:] != q.shape[-2:]:
            raise ValueError(
                f"class_probs must be (B, K, H, W) at the size of q {tuple(q.shape)}, got {tuple(class_probs.shape)}"
            )


def denoised_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    class_probs: Tensor | None = None,
    *,
    kernel_size: int = 3,
    rectify: bool = True,
    retain: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Denoised non-local attention, exact and in bounded memory (Song et al. §III; DESIGN.md).

    Args:
        q: queries (B, Ck, H, W).
        k: keys (B, Ck, H, W).
        v: values (B, Cv, H, W).
        class_probs: class probabilities (B, K, H, W), a softmax over K at each position; needed when
            ``rectify`` is on.
        kernel_size: odd size of the Local Retention window.
        rectify: apply Global Rectifying, ``A' = A ⊙ sigmoid(p pᵀ)``.
        retain: apply Local Retention, ``A''[i, j] = Σ_n A'[i, j+n] sigmoid(q_j · k_{j+n})``.
        chunk_size: query rows per chunk of the N x N work; ``None`` picks rows so that one score block
            holds at most :data:`CHUNK_ELEMENTS` elements.

    Returns:
        ``Σ_j A''[i, j] v_j`` as (B, Cv, H, W). Differentiable in q, k, v and class_probs.
    """
    _check_inputs(q, k, v, class_probs, rectify, kernel_size)
    b, cv, h, w = v.shape
    n = h * w
    out_dtype = q.dtype
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype  # exp/sums in fp32
    q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    if retain:
        local = local_relation(q, k, kernel_size).sigmoid()  # S[j, n], (B, k², H, W)
        v = local_aggregate(v, local, kernel_size)  # ṽ_m = Σ_n S[m-n, n] v_{m-n}
    q_t = q.flatten(2).transpose(1, 2).contiguous()  # (B, N, Ck)
    k_t = k.flatten(2).transpose(1, 2).contiguous()  # (B, N, Ck)
    v_t = v.flatten(2).transpose(1, 2).contiguous()  # (B, N, Cv)
    p_t = class_probs.to(compute_dtype).flatten(2).transpose(1, 2).contiguous() if rectify else None  # (B, N, K)
    if exporting():
        out = _gated_attention_traceable(q_t, k_t, v_t, p_t)  # (B, N, Cv)
    else:
        out = _GatedAttention.apply(q_t, k_t, v_t, p_t, _rows_per_chunk(b, n, n, chunk_size))  # (B, N, Cv)
    return out.transpose(1, 2).reshape(b, cv, h, w).to(out_dtype)


def denoised_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    class_probs: Tensor | None = None,
    *,
    kernel_size: int = 3,
    rectify: bool = True,
    retain: bool = True,
) -> Tensor:
    """The released formulation: materialise A, A' and A'' (via a (B, N, k², N) unfold). Plain autograd.

    Same arguments and result as :func:`denoised_attention`; memory grows as 9·N² per image.
    """
    _check_inputs(q, k, v, class_probs, rectify, kernel_size)
    b, cv, h, w = v.shape
    n = h * w
    attn = torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2), dim=-1)  # A, (B, N, N)
    if rectify:
        p = class_probs.flatten(2)  # (B, K, N)
        attn = attn * torch.sigmoid(p.transpose(1, 2) @ p)  # A'
    if retain:
        local = local_relation_reference(q, k, kernel_size).sigmoid().view(b, 1, kernel_size**2, n)  # S, key-indexed
        windows = F.unfold(attn.reshape(b * n, 1, h, w), kernel_size, padding=kernel_size // 2)  # (B·N, k², N)
        attn = (windows.view(b, n, kernel_size**2, n) * local).sum(2)  # A'', (B, N, N)
    out = attn @ v.flatten(2).transpose(1, 2)  # (B, N, Cv)
    return out.transpose(1, 2).reshape(b, cv, h, w)

