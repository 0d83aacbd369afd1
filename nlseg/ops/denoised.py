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

from nlseg.ops.attention import softmax_numerator_
from nlseg.ops.local import exporting, local_aggregate, local_relation, local_relation_reference

__all__ = ["CHUNK_ELEMENTS", "denoised_attention", "denoised_attention_reference"]

CHUNK_ELEMENTS: int = 1 << 19
"""Default budget of one (B, rows, N) score block: 2^19 elements, 2 MiB in float32 (113 rows at 48x96). The
backward pass holds four such blocks at once (P, dA', G, A'), so the N x N work needs about 8 MiB at this
setting; each block is freed before the next one is allocated. Blocks of a few MiB also run faster than larger
ones on the CPU (they stay in cache between the products and the elementwise passes)."""


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
        out = v.new_empty(b, v.shape[-1], n).transpose(1, 2)  # (B, N, Cv) over (B, Cv, N) memory: the map layout
        lse = q.new_empty(b, n)  # log Σ_j exp(q_i · k_j), kept for the backward recomputation
        k_t, p_t = k.transpose(1, 2), None if p is None else p.transpose(1, 2)
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            weights = torch.bmm(q[:, i0:i1], k_t)  # scores, (B, r, N)
            row_max = weights.amax(-1, keepdim=True)
            weights = softmax_numerator_(weights.sub_(row_max))  # unnormalised
            denom = weights.sum(-1, keepdim=True)  # (B, r, 1)
            if p is not None:
                weights.mul_(torch.bmm(p[:, i0:i1], p_t).sigmoid_())  # gate the numerator only
            out[:, i0:i1] = torch.bmm(weights, v).div_(denom)
            lse[:, i0:i1] = (row_max + denom.log()).squeeze(-1)
            del weights  # the next block is allocated after this one is freed
        ctx.save_for_backward(q, k, v, p, out, lse)
        ctx.rows = rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, p, out, lse = ctx.saved_tensors
        rows = ctx.rows
        n = q.shape[1]
        # grad_out is used in whatever layout it comes (bmm takes either); dv is built as (B, Cv, N), the layout of
        # the maps it flows back to.
        dq, dk = torch.empty_like(q), torch.zeros_like(k)
        dv_t = v.new_zeros(v.shape[0], v.shape[2], v.shape[1])  # (B, Cv, N)
        dp = None if p is None else torch.zeros_like(p)
        # [q_i, -lse_i] · [k_j, 1] = q_i · k_j - lse_i, so one matmul and one exp give P = softmax rows.
        q_aug = torch.cat([q, -lse.unsqueeze(-1)], dim=-1)  # (B, N, Ck + 1)
        k_aug_t = torch.cat([k, torch.ones_like(k[..., :1])], dim=-1).transpose(1, 2)  # (B, Ck + 1, N)
        v_t, p_t = v.transpose(1, 2), None if p is None else p.transpose(1, 2)
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            d_out = grad_out[:, i0:i1]  # (B, r, Cv)
            # D_i = Σ_j A'_ij (dO_i · v_j) = dO_i · O_i: the row term of the softmax backward, (B, r, 1).
            d_row = (d_out * out[:, i0:i1]).sum(-1, keepdim=True)
            prob = softmax_numerator_(torch.bmm(q_aug[:, i0:i1], k_aug_t))  # P, (B, r, N)
            d_attn = torch.bmm(d_out, v_t)  # dL/dA', (B, r, N)
            if p is None:
                dv_t.baddbmm_(d_out.transpose(1, 2), prob)
                d_scores = d_attn.sub_(d_row).mul_(prob)  # P ⊙ (dA' - D)
            else:
                gate = torch.bmm(p[:, i0:i1], p_t).sigmoid_()  # G, (B, r, N)
                attn = gate.mul(prob)  # A' = P ⊙ G
                dv_t.baddbmm_(d_out.transpose(1, 2), attn)
                grad_attn = d_attn.mul_(attn)  # E = A' ⊙ dA'
                del attn
                d_gate = torch.addcmul(grad_attn, grad_attn, gate, value=-1, out=gate)  # E ⊙ (1 - G)
                dp[:, i0:i1].baddbmm_(d_gate, p)
                dp.baddbmm_(d_gate.transpose(1, 2), p[:, i0:i1])
                del gate, d_gate
                d_scores = grad_attn.addcmul_(prob, d_row, value=-1)  # E - P ⊙ D
                del grad_attn
            del prob
            dq[:, i0:i1] = torch.bmm(d_scores, k)
            dk.baddbmm_(d_scores.transpose(1, 2), q[:, i0:i1])
            del d_attn, d_scores  # the next block is allocated after this one is freed
        return dq, dk, dv_t.transpose(1, 2), dp, None


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
    v_t = v.flatten(2).transpose(1, 2)  # (B, N, Cv), a view: bmm takes the (B, Cv, N) layout as it is
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

