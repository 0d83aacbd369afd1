"""Dot-product (non-local) attention on token layouts (Wang et al. 2018; ANN §3.1, Eq. 2-4).

    O = softmax_over_keys(s · q kᵀ) v

with q (B, Nq, Ck), k (B, Nk, Ck), v (B, Nk, Cv), the layout of ``F.scaled_dot_product_attention``.
Nk = Nq for a plain non-local block, Nk = S anchors for APNB / AFNB (pyramid-sampled keys), Nk = N_low
for FNB. The fast path is SDPA: on CPU its flash kernel tiles over keys and never holds the Nq x Nk
map, forward or backward. Two conditions keep SDPA on that kernel instead of its math fallback (which
builds the map):

* one head dimension for q, k and v. When Ck != Cv the narrower side is zero-padded to max(Ck, Cv):
  zero channels add nothing to q · k (the scale is taken from the true Ck) and produce output channels
  that are sliced off. This costs at most twice the FLOPs of the product; memory stays linear in Nq.
  On other devices the tensors go to SDPA unpadded and SDPA picks its kernel (on CUDA, the
  memory-efficient one allows Cv != Ck); only the CPU path is checked by the test suite.
* a unit-stride channel axis. Token views of a (B, C, H, W) map (``x.flatten(2).transpose(1, 2)``)
  are copied once, O(N·C).

Padding costs most where Ck is far below Cv (DANet's PAM: 64 against 512, so q · k takes 8x its FLOPs, and
the flash backward's three Ck-wide products as well). So on the CPU, Ck != Cv, outside export, the op instead
takes blocks of query rows (:class:`_QueryRowAttention`): each block's (B, rows, Nk) map of at most
:data:`BLOCK_ELEMENTS` values is built, softmaxed and multiplied by v, with the FLOPs of the formula itself;
the backward pass recomputes each block's softmax from q, k and the saved per-row log-sum-exp, so memory is
bounded by two blocks in either direction. Measured forward + backward on this project's 2-core CPU
(B = 1, Nq = Nk = H·W, scale 1 as DANet's PAM; SDPA is the flash kernel, padded when Ck != Cv):

    Ck   Cv   size     SDPA            query blocks (default)   speed-up   peak MiB (SDPA / blocks)
    64   512  48x96      632 ms           352 ms (227 rows)        1.80x      72.0 / 54.8
    64   512  64x128    1965 ms          1040 ms (128 rows)        1.89x     128.0 / 88.1
    256  256  48x96     4421 ms         10267 ms (227 rows)        0.43x      36.0 / 57.0

(``python benchmarks/attention_paths.py``, all paths of a shape alternating in one process, median of 5; blocks
of 128-256 rows ran 1.4-1.9x, larger blocks fall out of cache; the 256/256 row was taken while other jobs
loaded the machine, which slows both paths alike.) Ck = Cv keeps SDPA's flash kernel, nothing to
pad and faster than Python-level blocks. While exporting, SDPA (padded) is the one traceable op.

The blocks' softmax floors its exponents at :data:`EXP_FLOOR` before ``exp``: with scores spread over hundreds
(DANet's PAM at random init: 99.5 % of the shifted scores below -87 at 64x128), a plain ``exp`` took 11.0 s
forward + backward at 64x128 against 1.2 s floored (the README's attention-paths table), and DANet R-50's whole
inference went from 4.10 s to 3.45 s with bitwise the same logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from nlseg.ops.local import exporting

__all__ = [
    "BLOCK_ELEMENTS",
    "EXP_FLOOR",
    "nonlocal_attention",
    "nonlocal_attention_reference",
    "query_block_attention",
    "sdpa_attention",
]

BLOCK_ELEMENTS = 1 << 20
"""Values of one query block's attention map on the CPU path for Ck != Cv (4 MiB in float32): 128 rows at
N = 8192 keys. Blocks of 128-256 rows beat 512-900 rows (cache); see the table in the module docstring."""

EXP_FLOOR = -64.0
"""The lowest exponent the chunked softmaxes hand to ``exp`` (:func:`softmax_numerator_`). On the CPU, PyTorch's
vectorised ``exp`` leaves its fast path for float32 inputs below about -87 (where the result is subnormal or 0):
measured on this project's AVX-512 CPU, 19 ms per million such values against 0.3-0.6 ms in range, and with
random or trained weights most of a softmax row lies there (DANet's PAM, no scale: 80 % of the values). Raising
them to -64 changes each such weight from under 1e-38 to e^-64 = 1.6e-28, next to the row's largest weight 1: a
row of N keys moves its sum by at most N · 1.6e-28, below float32's resolution for any N under 10^20, and the
gated products (weight x sigmoid gate) stay normal numbers, which keeps them off the CPU's slow subnormal path."""


def softmax_numerator_(shifted: Tensor) -> Tensor:
    """``exp`` in place of row-shifted scores (values <= 0): the softmax numerator, exponents floored at
    :data:`EXP_FLOOR`."""
    return shifted.clamp_min_(EXP_FLOOR).exp_()


def _check_tokens(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            "q, k, v must be token layouts (B, Nq, Ck), (B, Nk, Ck), (B, Nk, Cv); "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0] or q.shape[2] != k.shape[2] or k.shape[1] != v.shape[1]:
        raise ValueError(
            "q, k, v must be (B, Nq, Ck), (B, Nk, Ck), (B, Nk, Cv) with one B, one Ck and one Nk; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def _resolve_scale(scale: float | None, key_channels: int) -> float:
    return key_channels**-0.5 if scale is None else float(scale)


def nonlocal_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
    """Non-local attention ``softmax(scale · q kᵀ) v`` without materialising the Nq x Nk map on CPU.

    ANN Eq. (2)-(4) and (9)-(10); DANet's position attention and DRANet's CPAM are the case scale=1.

    Args:
        q: queries (B, Nq, Ck).
        k: keys (B, Nk, Ck).
        v: values (B, Nk, Cv).
        scale: factor on q · k; None means Ck^-1/2 (ANN), 1.0 means no scale (DANet PAM, DRANet CPAM).

    Returns:
        (B, Nq, Cv), one output token per query.
    """
    _check_tokens(q, k, v)
    ck, cv = q.shape[-1], v.shape[-1]
    scale = _resolve_scale(scale, ck)
    if q.device.type == "cpu" and ck != cv and not exporting():
        return query_block_attention(q, k, v, scale)
    return sdpa_attention(q, k, v, scale)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``softmax(scale · q kᵀ) v`` by SDPA: (B, Nq, Ck), (B, Nk, Ck), (B, Nk, Cv) -> (B, Nq, Cv). On the CPU,
    Ck != Cv is zero-padded to one head width for the flash kernel (the path export takes; the benchmarks'
    baseline)."""
    ck, cv = q.shape[-1], v.shape[-1]
    # (B, 1, N, C): the fused kernels want a head axis and a unit-stride channel axis.
    q, k, v = (t.unsqueeze(1) if t.stride(-1) == 1 else t.contiguous().unsqueeze(1) for t in (q, k, v))
    if q.device.type == "cpu" and ck != cv:
        # The CPU flash kernel needs one head dimension; zero channels change neither q · k nor the used outputs.
        width = max(ck, cv)
        q, k = F.pad(q, (0, width - ck)), F.pad(k, (0, width - ck))
        v = F.pad(v, (0, width - cv))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, 1, Nq, max(Ck, Cv))
    return out[..., :cv].squeeze(1)  # (B, Nq, Cv)


def query_block_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, rows: int | None = None) -> Tensor:
    """``softmax(scale · q kᵀ) v`` by blocks of query rows (:class:`_QueryRowAttention`), forward and backward, no
    padding: (B, Nq, Ck), (B, Nk, Ck), (B, Nk, Cv) -> (B, Nq, Cv). ``rows`` per block; None: a block of at most
    :data:`BLOCK_ELEMENTS` map values."""
    if rows is None:
        rows = max(1, BLOCK_ELEMENTS // (q.shape[0] * k.shape[1]))
    return _QueryRowAttention.apply(q, k, v, scale, rows)


class _QueryRowAttention(torch.autograd.Function):
    """``softmax(scale · q kᵀ) v`` a block of query rows at a time, forward and backward, no padding.

    q: (B, Nq, Ck), k: (B, Nk, Ck), v: (B, Nk, Cv), rows: query rows per block. Returns (B, Nq, Cv). Saves q, k,
    v, the output and the per-row log-sum-exp; the backward pass recomputes each block's softmax from them
    (flash-attention style), so at most two (B, rows, Nk) blocks exist at a time in either direction.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, rows: int) -> Tensor:
        b, nq, _ = q.shape
        out = v.new_empty(b, nq, v.shape[-1])
        lse = q.new_empty(b, nq, 1)  # log Σ_j exp(scale · q_i · k_j)
        keys = k.transpose(1, 2)  # (B, Ck, Nk)
        for i0 in range(0, nq, rows):
            i1 = min(nq, i0 + rows)
            scores = torch.bmm(q[:, i0:i1], keys).mul_(scale)  # (B, r, Nk)
            row_max = scores.amax(-1, keepdim=True)
            weights = softmax_numerator_(scores.sub_(row_max))
            denom = weights.sum(-1, keepdim=True)  # (B, r, 1)
            out[:, i0:i1] = torch.bmm(weights, v).div_(denom)  # (B, r, Cv)
            lse[:, i0:i1] = row_max + denom.log()
            del scores, weights  # the next block is allocated after this one is freed
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.rows = scale, rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        scale, rows = ctx.scale, ctx.rows
        nq = q.shape[1]
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        # [scale · q_i, -lse_i] · [k_j, 1] = scale · q_i · k_j - lse_i: one matmul and one exp give the softmax P.
        q_aug = torch.cat([q * scale, -lse], dim=-1)  # (B, Nq, Ck + 1)
        k_aug = torch.cat([k, torch.ones_like(k[..., :1])], dim=-1).transpose(1, 2)  # (B, Ck + 1, Nk)
        v_t = v.transpose(1, 2)  # (B, Cv, Nk)
        row_dot = (grad_out * out).sum(-1, keepdim=True)  # D_i = dO_i · O_i, (B, Nq, 1)
        for i0 in range(0, nq, rows):
            i1 = min(nq, i0 + rows)
            d_out = grad_out[:, i0:i1]  # (B, r, Cv)
            prob = softmax_numerator_(torch.bmm(q_aug[:, i0:i1], k_aug))  # P, (B, r, Nk)
            dv.baddbmm_(prob.transpose(1, 2), d_out)
            d_scores = torch.bmm(d_out, v_t).sub_(row_dot[:, i0:i1]).mul_(prob)  # P ⊙ (dP - D), (B, r, Nk)
            dq[:, i0:i1] = torch.bmm(d_scores, k)  # (B, r, Ck)
            dk.baddbmm_(d_scores.transpose(1, 2), q[:, i0:i1])
            del prob, d_scores  # the next block is allocated after this one is freed
        return dq.mul_(scale), dk.mul_(scale), dv, None, None


def nonlocal_attention_reference(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
    """Plain path of :func:`nonlocal_attention`: explicit (B, Nq, Nk) map, softmax, product."""
    _check_tokens(q, k, v)
    energy = torch.bmm(q, k.transpose(1, 2)) * _resolve_scale(scale, q.shape[-1])  # (B, Nq, Nk)
    return torch.bmm(torch.softmax(energy, dim=-1), v)  # (B, Nq, Cv)
