"""Local (k x k window) relations on feature maps: the Local Retention step of Denoised NL (§III-E).

Offsets n run over the k x k window centred on a position in row-major order, the order of
``F.unfold``: n = ky * k + kx is the offset (ky - r, kx - r) with r = k // 2. A neighbour outside the
image is zero, as ``unfold`` with zero padding gives.

Three primitives, each a loop over the k^2 offsets that touches one (B, C, H, W) map at a time, so
neither direction of autograd ever holds a (B, C * k^2, N) buffer:

- ``local_relation(q, k)[b, n, j]      = q_j · k_{j+n}``                 (dot with a neighbour)
- ``local_aggregate(v, w)[b, :, m]     = Σ_n w[b, n, m-n] · v_{m-n}``    (scatter to neighbours, a ``fold``)
- ``_gather(x, w)[b, :, j]             = Σ_n w[b, n, j] · x_{j+n}``      (weighted sum of neighbours)

They are each other's gradients, which is how the custom backward passes below are written. The two
autograd Functions trace under ``torch.compile`` (``fullgraph=True``). While ``torch.export`` or the ONNX
exporter traces (:func:`exporting`), the public ops run the same loops out of place and without the custom
Function, so the exported graph holds plain tensor ops. The ``*_reference`` versions use ``F.unfold`` /
``F.fold`` the way the released code does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "exporting",
    "local_aggregate",
    "local_aggregate_reference",
    "local_relation",
    "local_relation_reference",
]


def _check_kernel(kernel_size: int) -> int:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return kernel_size // 2


def _windows(x: Tensor, kernel_size: int):
    """Yield (n, view of x shifted by offset n) for every offset of the window, zero outside."""
    r = kernel_size // 2
    h, w = x.shape[-2:]
    xp = F.pad(x, (r, r, r, r))  # (B, C, H + 2r, W + 2r)
    for n in range(kernel_size * kernel_size):
        ky, kx = divmod(n, kernel_size)
        yield n, xp[..., ky : ky + h, kx : kx + w]  # x_{j+n} at position j


def exporting() -> bool:
    """True while ``torch.export`` (and so the ONNX exporter) or the TorchScript ONNX exporter traces.

    The fused ops then take their traceable formulation: an exported graph cannot call a custom autograd
    Function, nor loop over a number of chunks that depends on a dynamic height or width.
    """
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def _relation(q: Tensor, k: Tensor, kernel_size: int) -> Tensor:
    """``q_j · k_{j+n}`` for every offset n, out of place (so also the traceable path export takes)."""
    return torch.stack([(q * k_n).sum(1) for _, k_n in _windows(k, kernel_size)], dim=1)  # (B, k^2, H, W)


def _relation_by_rows(q: Tensor, k: Tensor, kernel_size: int) -> Tensor:
    """:func:`_relation` a band of rows at a time, so that the product ``q ⊙ k_n`` is never a whole (B, C, H, W)
    map (about 1 MiB per band): the weights' gradient in :class:`_LocalAggregate`, where C is the value width."""
    b, c, h, w = q.shape
    band = max(1, (1 << 18) // max(1, b * c * w))  # rows per band: at most 2^18 elements of the product
    out = q.new_empty(b, kernel_size * kernel_size, h, w)
    for n, k_n in _windows(k, kernel_size):
        for y0 in range(0, h, band):
            out[:, n, y0 : y0 + band] = (q[:, :, y0 : y0 + band] * k_n[:, :, y0 : y0 + band]).sum(1)
    return out  # (B, k^2, H, W)


def _gather(x: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
    out = torch.zeros_like(x)
    for n, x_n in _windows(x, kernel_size):
        out.addcmul_(weights[:, n : n + 1], x_n)
    return out  # (B, C, H, W)


def _aggregate(v: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
    r = kernel_size // 2
    b, c, h, w = v.shape
    out = v.new_zeros(b, c, h + 2 * r, w + 2 * r)  # room for contributions that land outside
    for n in range(kernel_size * kernel_size):
        ky, kx = divmod(n, kernel_size)
        out[..., ky : ky + h, kx : kx + w].addcmul_(weights[:, n : n + 1], v)
    return out[..., r : r + h, r : r + w]  # (B, C, H, W)


def _aggregate_traceable(v: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
    """:func:`_aggregate` out of place, for export: each offset's ``w_n ⊙ v`` padded so that it lands at
    (ky, kx) of the (H + 2r, W + 2r) frame, summed, then the frame cropped back to H x W."""
    r = kernel_size // 2
    h, w = v.shape[-2:]
    out = None
    for n in range(kernel_size * kernel_size):
        ky, kx = divmod(n, kernel_size)
        term = F.pad(weights[:, n : n + 1] * v, (kx, 2 * r - kx, ky, 2 * r - ky))  # (B, C, H + 2r, W + 2r)
        out = term if out is None else out + term
    return out[..., r : r + h, r : r + w]  # (B, C, H, W)


class _LocalRelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, kernel_size: int) -> Tensor:
        ctx.save_for_backward(q, k)
        ctx.kernel_size = kernel_size
        return _relation(q, k, kernel_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        q, k = ctx.saved_tensors
        grad = grad.contiguous()
        dq = _gather(k, grad, ctx.kernel_size) if ctx.needs_input_grad[0] else None
        dk = _aggregate(q, grad, ctx.kernel_size) if ctx.needs_input_grad[1] else None
        return dq, dk, None


class _LocalAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
        ctx.save_for_backward(v, weights)
        ctx.kernel_size = kernel_size
        return _aggregate(v, weights, kernel_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        v, weights = ctx.saved_tensors
        grad = grad.contiguous()
        dv = _gather(grad, weights, ctx.kernel_size) if ctx.needs_input_grad[0] else None
        dw = _relation_by_rows(v, grad, ctx.kernel_size) if ctx.needs_input_grad[1] else None
        return dv, dw, None


def _check_maps(name_a: str, a: Tensor, name_b: str, b: Tensor, same_channels: bool) -> None:
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"{name_a} and {name_b} must be (B, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:] or (same_channels and a.shape[1] != b.shape[1]):
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} do not match")


def local_relation(q: Tensor, k: Tensor, kernel_size: int = 3) -> Tensor:
    """Dot product of each query with the keys in its k x k window (Denoised NL §III-E, S before the sigmoid).

    Args:
        q: queries (B, C, H, W).
        k: keys (B, C, H, W).
        kernel_size: odd window size k.

    Returns:
        (B, k^2, H, W) with ``out[b, n, j] = q_j · k_{j+n}``, zero where ``j+n`` is outside the image.
    """
    _check_kernel(kernel_size)
    _check_maps("q", q, "k", k, same_channels=True)
    if exporting():
        return _relation(q, k, kernel_size)
    return _LocalRelation.apply(q.contiguous(), k.contiguous(), kernel_size)


def local_aggregate(v: Tensor, weights: Tensor, kernel_size: int = 3) -> Tensor:
    """Scatter each value to its k x k neighbours with per-offset weights: the ``fold`` of ``weights ⊙ v``.

    This is how Local Retention is applied without the (B, N, k^2, N) map: for the attention
    ``A''[i, j] = Σ_n A'[i, j+n] w[j, n]``, ``Σ_j A''[i, j] v_j = Σ_m A'[i, m] ṽ_m`` with
    ``ṽ = local_aggregate(v, w)``.

    Args:
        v: values (B, C, H, W).
        weights: (B, k^2, H, W), ``weights[b, n, j]`` is the weight of the offset n at the source j.
        kernel_size: odd window size k.

    Returns:
        (B, C, H, W) with ``out[b, :, m] = Σ_n weights[b, n, m-n] · v_{m-n}`` over sources inside the image.
    """
    _check_kernel(kernel_size)
    _check_maps("v", v, "weights", weights, same_channels=False)
    if weights.shape[1] != kernel_size * kernel_size:
        raise ValueError(f"weights must have k^2 = {kernel_size ** 2} channels, got {weights.shape[1]}")
    if exporting():
        return _aggregate_traceable(v, weights, kernel_size)
    return _LocalAggregate.apply(v.contiguous(), weights.contiguous(), kernel_size)


def local_relation_reference(q: Tensor, k: Tensor, kernel_size: int = 3) -> Tensor:
    """Plain path of :func:`local_relation`: unfold the keys into (B, C, k^2, N) as the released code does."""
    r = _check_kernel(kernel_size)
    b, c, h, w = q.shape
    k_windows = F.unfold(k, kernel_size, padding=r).view(b, c, kernel_size * kernel_size, h * w)
    return (q.flatten(2).unsqueeze(2) * k_windows).sum(1).view(b, -1, h, w)  # (B, k^2, H, W)


def local_aggregate_reference(v: Tensor, weights: Tensor, kernel_size: int = 3) -> Tensor:
    """Plain path of :func:`local_aggregate`: ``F.fold`` of the (B, C * k^2, N) columns ``weights ⊙ v``."""
    r = _check_kernel(kernel_size)
    b, c, h, w = v.shape
    columns = weights.flatten(2).unsqueeze(1) * v.flatten(2).unsqueeze(2)  # (B, C, k^2, N)
    return F.fold(columns.reshape(b, -1, h * w), (h, w), kernel_size, padding=r)
