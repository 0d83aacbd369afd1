"""Asymmetric non-local blocks and ANN's fusion baselines (Zhu et al., ICCV 2019, §3.2-3.4, Table 6).

Structure as in DESIGN.md "APNB and AFNB", which records what the released models do:

* APNB(x): key and query share one 1x1 conv + BN + ReLU, value is a plain 1x1 conv;
  ``O = softmax(Ck^-1/2 · q P(k)ᵀ) P(v)`` with P the pyramid sampling of ``nlseg.ops.pyramid``;
  ``Wo`` a 1x1 conv initialised to zero; out = ReLU(BN(conv1x1(cat(Wo(O), x)))) + Dropout2d.
* AFNB(low, high): query from high, key and value from low (both pooled);
  out = BN(conv1x1(cat(Wo(O), high))) + Dropout2d, no ReLU (released model).
* FNB = AFNB with all N_low keys; common fusion = high + ReLU(BN(conv1x1(low))).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nlseg.blocks.layers import ConvNormAct, check_channels, to_map, to_tokens
from nlseg.ops import POOL_MODES, apnb_row, nonlocal_attention, nonlocal_attention_reference, nonlocal_row, pyramid_sample

__all__ = ["AFNB", "APNB", "FNB", "CommonFusion"]


def _check_pooling(block: str, pool_sizes: Sequence[int] | None, pool_mode: str) -> tuple[int, ...] | None:
    if pool_mode not in POOL_MODES:
        raise ValueError(f"{block}: unknown pool_mode {pool_mode!r}; expected one of {POOL_MODES}")
    if pool_sizes is None:
        return None
    if len(pool_sizes) == 0 or any(not isinstance(n, int) or n < 1 for n in pool_sizes):
        raise ValueError(f"{block}: pool_sizes must be positive ints or None (all positions), got {pool_sizes!r}")
    return tuple(pool_sizes)


def asymmetric_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pool_sizes: tuple[int, ...] | None,
    pool_mode: str,
    *,
    fused: bool = True,
    scaled: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``softmax(s · q P(k)ᵀ) P(v)`` on maps (ANN Eq. 9-10 and 15-16), s = Ck^-1/2 (released) or 1 (the paper's).

    Args:
        query: (B, Ck, H, W), one output position per query position.
        key: (B, Ck, H', W'), any size.
        value: (B, Cv, H', W').
        pool_sizes: pyramid levels of P; None keeps all H'·W' positions (plain / fusion non-local).
        pool_mode: "avg", "max" or "random" (key and value then share their random positions).
        fused: nlseg's fused kernel (True) or the materialised N x S map (the reference path).
        scaled: s = Ck^-1/2 as the released code (True), or no scale as the paper's Eq. 9 and 15 (False).
        generator: where "random" draws its positions (None: the global generator).

    Returns:
        (B, Cv, H, W).
    """
    if pool_sizes is None:
        key, value = key.flatten(2), value.flatten(2)  # (B, C, N')
    elif pool_mode == "random":  # one draw for both: key and value anchors at the same positions
        anchors = pyramid_sample(torch.cat([key, value], dim=1), pool_sizes, pool_mode, generator=generator)
        key, value = anchors.split([key.shape[1], value.shape[1]], dim=1)  # (B, Ck, S), (B, Cv, S)
    else:
        key = pyramid_sample(key, pool_sizes, pool_mode)  # (B, Ck, S)
        value = pyramid_sample(value, pool_sizes, pool_mode)  # (B, Cv, S)
    attention = nonlocal_attention if fused else nonlocal_attention_reference
    scale = None if scaled else 1.0
    out = attention(to_tokens(query), key.transpose(1, 2), value.transpose(1, 2), scale=scale)  # (B, N, Cv)
    return to_map(out, *query.shape[-2:])


class APNB(nn.Module):
    """Asymmetric Pyramid Non-local Block (ANN §3.2, Eq. 8-12; Fig. 3).

    :meth:`attend` is the attention branch alone, ``Wo(O)``: the unit ANN Table 1 counts and times.

    ``fused`` (attribute, default True) picks the op's fast path; False runs its plain reference path, which
    materialises the attention map as the released code does (see :func:`nlseg.blocks.set_fused`).
    ``generator`` (attribute, default None: the global generator) is where ``pool_mode="random"`` draws its
    anchor positions, afresh at every forward.

    Args:
        in_channels: channels C of x.
        out_channels: output channels, default C.
        key_channels: channels Ck of key/query.
        value_channels: channels Cv of the value.
        pool_sizes: pyramid levels (S = Σ n² anchors); None attends to all N positions, which is ANN's
            "NB" as released (and OCNet's base object-context block).
        pool_mode: "avg" (released), "max" or "random" (ANN Table 7).
        share_key_query: one conv + BN + ReLU for key and query (released); False gives each its own.
        share_key_value: the paper's sharing (Fig. 3 caption, §3.4: "W_θ and W_γ share parameters", θ the key and
            γ the value): the value is the key's conv + BN + ReLU, the query has its own (needs
            ``share_key_query=False`` and ``value_channels == key_channels``).
        scaled: Ck^-1/2 on q · k (released); False: no scale (the paper's Eq. 9).
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
        dropout: Dropout2d rate after the fusion conv.
        shared_norm_updates: how many running-statistics updates the shared key/query norm makes per training
            forward: 2 as released (its code runs the shared conv + BN once for the query and once for the key,
            on the same input), i.e. momentum ``1 - (1 - m)**2``; 1 updates them once. Outputs and gradients
            are the same either way; only the running statistics, hence the eval-mode function after
            training, differ.
    """

    num_inputs = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        key_channels: int = 256,
        value_channels: int = 256,
        pool_sizes: Sequence[int] | None = (1, 3, 6, 8),
        *,
        pool_mode: str = "avg",
        share_key_query: bool = True,
        share_key_value: bool = False,
        scaled: bool = True,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dropout: float = 0.05,
        shared_norm_updates: int = 2,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if shared_norm_updates not in (1, 2):
            raise ValueError(f"{name}: shared_norm_updates must be 1 or 2, got {shared_norm_updates!r}")
        if share_key_value and share_key_query:
            raise ValueError(f"{name}: share_key_value (the paper's) and share_key_query (released) exclude each other")
        if share_key_value and value_channels != key_channels:
            raise ValueError(f"{name}: share_key_value needs value_channels == key_channels, got {value_channels} "
                             f"and {key_channels}")
        out_channels = in_channels if out_channels is None else out_channels
        check_channels(name, key_channels=key_channels, value_channels=value_channels, out_channels=out_channels)
        self.pool_sizes = _check_pooling(name, pool_sizes, pool_mode)
        self.pool_mode = pool_mode
        self.scaled = scaled
        self.out_channels = out_channels
        self.fused = True
        self.generator: torch.Generator | None = None
        self.key = ConvNormAct(in_channels, key_channels, 1, norm_layer=norm_layer)
        self.query = None if share_key_query else ConvNormAct(in_channels, key_channels, 1, norm_layer=norm_layer)
        norm = self.key[1]
        if share_key_query and getattr(norm, "momentum", None) is not None:  # two updates with the same batch
            norm.momentum = 1 - (1 - norm.momentum) ** shared_norm_updates
        self.value = None if share_key_value else nn.Conv2d(in_channels, value_channels, 1)
        self.out_proj = nn.Conv2d(value_channels, in_channels, 1)  # Wo
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.fuse = nn.Sequential(
            ConvNormAct(2 * in_channels, out_channels, 1, norm_layer=norm_layer), nn.Dropout2d(dropout)
        )

    def query_key(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q and k (B, Ck, H, W) of x; one map when key and query are shared (released)."""
        key = self.key(x)
        return (key if self.query is None else self.query(x)), key

    def attend(self, x: Tensor) -> Tensor:
        """The attention branch alone: (B, C, H, W) -> ``Wo(softmax(Ck^-1/2 q P(k)ᵀ) P(v))`` (B, C, H, W)."""
        query, key = self.query_key(x)
        value = key if self.value is None else self.value(x)  # the paper's key/value sharing, or a plain conv
        context = asymmetric_attention(
            query, key, value, self.pool_sizes, self.pool_mode, fused=self.fused, scaled=self.scaled,
            generator=self.generator,
        )  # (B, Cv, H, W)
        return self.out_proj(context)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W)."""
        return self.fuse(torch.cat([self.attend(x), x], dim=1))

    def attention_rows(self, x: Tensor, *, index: tuple[int, int]) -> dict[str, Tensor]:
        """Query ``index`` = (y, x)'s attention over x's grid (:func:`nlseg.ops.apnb_row`): {title: (B, H, W)}.

        With pyramid pooling, each anchor's weight is spread evenly over the pixels its bin averages
        (average pooling only); without it, the plain non-local row.
        """
        query, key = self.query_key(x)
        if self.pool_sizes is None:
            return {"attention": nonlocal_row(query, key, index)}
        if self.pool_mode != "avg":
            raise ValueError("APNB's map of a pixel is drawn for average pyramid pooling only (pool_mode='avg')")
        return {"attention (anchors on their bins)": apnb_row(query, key, index, pool_sizes=self.pool_sizes)}


class AFNB(nn.Module):
    """Asymmetric Fusion Non-local Block (ANN §3.3, Eq. 14-17): stage-5 queries attend to stage-4 anchors.

    ``fused`` (attribute, default True) picks the op's fast path; False runs its plain reference path, which
    materialises the attention map as the released code does (see :func:`nlseg.blocks.set_fused`).
    ``generator`` (attribute) is where ``pool_mode="random"`` draws, as in :class:`APNB`.

    ``forward(low, high)``: low = stage 4 (layer3), high = stage 5 (layer4). The output has high's
    spatial size; low may have another size.

    Args:
        low_channels: channels of the low-level map (key and value source).
        high_channels: channels of the high-level map (query source, concatenated to the output).
        out_channels: output channels (and channels of ``Wo``).
        key_channels: channels Ck of key/query.
        value_channels: channels Cv of the value.
        pool_sizes: pyramid levels of the sampling; None keeps all low positions (FNB).
        pool_mode: "avg" (released), "max" or "random".
        norm_after_wo: add the BN after ``Wo`` that ANN's supplement reports helps AFNB used alone. The
            zero initialisation then moves from ``Wo`` to that BN's γ, so ``Wo(O)`` still starts at 0.
        scaled: Ck^-1/2 on q · k (released); False: no scale (the paper's Eq. 15).
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
        dropout: Dropout2d rate after the fusion conv.
    """

    num_inputs = 2

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        out_channels: int,
        key_channels: int = 256,
        value_channels: int = 256,
        pool_sizes: Sequence[int] | None = (1, 3, 6, 8),
        *,
        pool_mode: str = "avg",
        norm_after_wo: bool = False,
        scaled: bool = True,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dropout: float = 0.05,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_channels(name, key_channels=key_channels, value_channels=value_channels, out_channels=out_channels)
        self.pool_sizes = _check_pooling(name, pool_sizes, pool_mode)
        self.pool_mode = pool_mode
        self.scaled = scaled
        self.out_channels = out_channels
        self.fused = True
        self.generator: torch.Generator | None = None
        self.query = ConvNormAct(high_channels, key_channels, 1, norm_layer=norm_layer)
        self.key = ConvNormAct(low_channels, key_channels, 1, norm_layer=norm_layer)
        self.value = nn.Conv2d(low_channels, value_channels, 1)
        if norm_after_wo:
            self.out_proj = ConvNormAct(value_channels, out_channels, 1, norm_layer=norm_layer, activation=False)
            nn.init.zeros_(self.out_proj[1].weight)
        else:
            self.out_proj = nn.Conv2d(value_channels, out_channels, 1)
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)
        self.fuse = nn.Sequential(
            ConvNormAct(out_channels + high_channels, out_channels, 1, norm_layer=norm_layer, activation=False),
            nn.Dropout2d(dropout),
        )

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """low (B, C_l, H_l, W_l), high (B, C_h, H, W) -> (B, out_channels, H, W)."""
        context = asymmetric_attention(
            self.query(high), self.key(low), self.value(low), self.pool_sizes, self.pool_mode, fused=self.fused,
            scaled=self.scaled, generator=self.generator,
        )  # (B, Cv, H, W)
        return self.fuse(torch.cat([self.out_proj(context), high], dim=1))


class FNB(AFNB):
    """Fusion Non-local Block (ANN §3.3, Eq. 14-17): AFNB without pyramid sampling, all N_low keys."""

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        out_channels: int,
        key_channels: int = 256,
        value_channels: int = 256,
        *,
        norm_after_wo: bool = False,
        scaled: bool = True,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dropout: float = 0.05,
    ) -> None:
        super().__init__(
            low_channels,
            high_channels,
            out_channels,
            key_channels,
            value_channels,
            pool_sizes=None,
            norm_after_wo=norm_after_wo,
            scaled=scaled,
            norm_layer=norm_layer,
            dropout=dropout,
        )


class CommonFusion(nn.Module):
    """ANN's "common fusion" baseline (Table 6): ``high + ReLU(BN(conv1x1(low)))``.

    Args:
        low_channels: channels of the stage-4 map.
        high_channels: channels of the stage-5 map, and of the output.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
    """

    num_inputs = 2

    def __init__(self, low_channels: int, high_channels: int, *, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.out_channels = high_channels
        self.project = ConvNormAct(low_channels, high_channels, 1, norm_layer=norm_layer)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """low (B, C_l, H, W), high (B, C_h, H, W) -> (B, C_h, H, W)."""
        if low.shape[-2:] != high.shape[-2:]:
            raise ValueError(
                f"CommonFusion needs maps of one size, got low {tuple(low.shape)} and high {tuple(high.shape)}"
            )
        return high + self.project(low)
