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

Padding costs most where Ck is far below Cv (DANet's PAM: 64 against 512, so q · k takes 8x its FLOPs).
Where no gradient is needed on the CPU (inference), such calls instead take blocks of queries: each block's
(B, rows, Nk) map of at most :data:`BLOCK_ELEMENTS` values is built, softmaxed and multiplied by v, the
FLOPs of the formula itself and memory bounded by the block. Training keeps the flash kernel, whose backward
needs no stored map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nlseg.ops.local import exporting

__all__ = ["BLOCK_ELEMENTS", "nonlocal_attention", "nonlocal_attention_reference"]

BLOCK_ELEMENTS = 1 << 22
"""Values of one query block's attention map on the CPU inference path (16 MiB in float32)."""


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
    # (B, 1, N, C): the fused kernels want a head axis and a unit-stride channel axis.
    if q.device.type == "cpu" and ck != cv and not _traced_or_differentiated(q, k, v):
        return _by_query_blocks(q, k, v, scale)
    q, k, v = (t.unsqueeze(1) if t.stride(-1) == 1 else t.contiguous().unsqueeze(1) for t in (q, k, v))
    if q.device.type == "cpu" and ck != cv:
        # The CPU flash kernel needs one head dimension; zero channels change neither q · k nor the used outputs.
        width = max(ck, cv)
        q, k = F.pad(q, (0, width - ck)), F.pad(k, (0, width - ck))
        v = F.pad(v, (0, width - cv))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, 1, Nq, max(Ck, Cv))
    return out[..., :cv].squeeze(1)  # (B, Nq, Cv)


def _traced_or_differentiated(*tensors: Tensor) -> bool:
    """A gradient will flow through the call, or it is being exported (one op for any size, not a Python loop)."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return needs_grad or exporting()


def _by_query_blocks(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``softmax(scale · q kᵀ) v`` a block of queries at a time, each block's (B, rows, Nk) map at most
    :data:`BLOCK_ELEMENTS` values: (B, Nq, Ck), (B, Nk, Ck), (B, Nk, Cv) -> (B, Nq, Cv)."""
    rows = max(1, BLOCK_ELEMENTS // (q.shape[0] * k.shape[1]))
    keys = k.transpose(1, 2)  # (B, Ck, Nk)
    blocks = [
        torch.bmm(torch.softmax(torch.bmm(block, keys).mul_(scale), dim=-1), v)  # (B, rows, Cv)
        for block in q.split(rows, dim=1)
    ]
    return torch.cat(blocks, dim=1)  # (B, Nq, Cv)


def nonlocal_attention_reference(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
    """Plain path of :func:`nonlocal_attention`: explicit (B, Nq, Nk) map, softmax, product."""
    _check_tokens(q, k, v)
    energy = torch.bmm(q, k.transpose(1, 2)) * _resolve_scale(scale, q.shape[-1])  # (B, Nq, Nk)
    return torch.bmm(torch.softmax(energy, dim=-1), v)  # (B, Nq, Cv)
