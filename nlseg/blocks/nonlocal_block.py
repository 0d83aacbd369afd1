"""The embedded-Gaussian non-local block (Wang et al., CVPR 2018; ANN §3.1, Eq. 1-5)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from nlseg.blocks.layers import ConvNormAct, check_channels, to_map, to_tokens
from nlseg.ops import nonlocal_attention, nonlocal_attention_reference, nonlocal_row

__all__ = ["NonLocal2d", "nonlocal_concat"]

SCALES = {"sqrt": None, "none": 1.0}  # None: Ck^-1/2 inside the op
FUSIONS = ("add", "concat")


class NonLocal2d(nn.Module):
    """Non-local block: ``O = softmax(s · θ(x) φ(x)ᵀ) g(x)``, then ``Wo(O)`` added to or concatenated with x.

    ANN Eq. (1)-(5). θ (query), φ (key) and g (value) are three separate 1x1 convolutions (Wang et al.;
    ANN Fig. 1a). The two fusions of ANN Eq. (5):

    * ``fusion="add"`` (Wang et al.): ``x + BN(Wo(O))``. As Wang et al. do, the BN's γ after ``Wo`` is
      initialised to zero, so the block starts as the identity in train and eval mode alike.
    * ``fusion="concat"`` (ANN's "NB" structure): ``Dropout2d(ReLU(BN(conv1x1(cat(Wo(O), x)))))`` with
      ``Wo`` (weight and bias) initialised to zero, as ANN's released blocks do. ANN's released code
      shares one conv + BN + ReLU for key and query; that exact variant is ``APNB(pool_sizes=None)``.

    :meth:`attend` is the attention branch alone, ``Wo(O)``.

    ``fused`` (attribute, default True) picks the op's fast path; False runs its plain reference path, which
    materialises the attention map as the released code does (see :func:`nlseg.blocks.set_fused`).

    Args:
        in_channels: channels C of x.
        key_channels: channels Ck of θ and φ; default C/2 (Wang et al.).
        value_channels: channels Cv of g; default C/2.
        scale: "sqrt" for s = Ck^-1/2 (ANN), "none" for s = 1 (Wang et al.'s embedded Gaussian).
        fusion: "add" or "concat", see above.
        out_channels: output channels of the concat fusion, default C; "add" needs it to equal C.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
        dropout: Dropout2d rate after the concat fusion (unused by "add").
    """

    num_inputs = 1

    def __init__(
        self,
        in_channels: int,
        key_channels: int | None = None,
        value_channels: int | None = None,
        *,
        scale: str = "sqrt",
        fusion: str = "add",
        out_channels: int | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dropout: float = 0.05,
    ) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"NonLocal2d: unknown scale {scale!r}; expected one of {tuple(SCALES)}")
        if fusion not in FUSIONS:
            raise ValueError(f"NonLocal2d: unknown fusion {fusion!r}; expected one of {FUSIONS}")
        key_channels = in_channels // 2 if key_channels is None else key_channels
        value_channels = in_channels // 2 if value_channels is None else value_channels
        out_channels = in_channels if out_channels is None else out_channels
        check_channels("NonLocal2d", key_channels=key_channels, value_channels=value_channels)
        if fusion == "add" and out_channels != in_channels:
            raise ValueError(
                f"NonLocal2d: fusion='add' is a residual, so out_channels must equal in_channels={in_channels}, "
                f"got {out_channels}; use fusion='concat' to change the width"
            )
        self.fusion = fusion
        self.scale = SCALES[scale]
        self.out_channels = out_channels
        self.fused = True
        self.query = nn.Conv2d(in_channels, key_channels, 1)
        self.key = nn.Conv2d(in_channels, key_channels, 1)
        self.value = nn.Conv2d(in_channels, value_channels, 1)
        if fusion == "add":
            self.out_proj = ConvNormAct(value_channels, in_channels, 1, norm_layer=norm_layer, activation=False)
            nn.init.zeros_(self.out_proj[1].weight)  # BN γ = 0: Wo(O) contributes nothing at init
        else:
            self.out_proj = nn.Conv2d(value_channels, in_channels, 1)
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)
            self.fuse = nn.Sequential(
                ConvNormAct(2 * in_channels, out_channels, 1, norm_layer=norm_layer), nn.Dropout2d(dropout)
            )

    def attend(self, x: Tensor) -> Tensor:
        """The attention branch alone: (B, C, H, W) -> ``Wo(softmax(s · θ(x) φ(x)ᵀ) g(x))`` (B, C, H, W)."""
        attention = nonlocal_attention if self.fused else nonlocal_attention_reference
        context = attention(
            to_tokens(self.query(x)), to_tokens(self.key(x)), to_tokens(self.value(x)), scale=self.scale
        )  # (B, N, Cv)
        return self.out_proj(to_map(context, *x.shape[-2:]))  # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_channels, H, W)."""
        context = self.attend(x)
        if self.fusion == "add":
            return x + context
        return self.fuse(torch.cat([context, x], dim=1))

    def attention_rows(self, x: Tensor, *, index: tuple[int, int]) -> dict[str, Tensor]:
        """Query ``index`` = (y, x)'s row of the map over x's grid (:func:`nlseg.ops.nonlocal_row`): {title: (B, H, W)}."""
        return {"attention": nonlocal_row(self.query(x), self.key(x), index, scale=self.scale)}


def nonlocal_concat(
    in_channels: int,
    key_channels: int | None = None,
    value_channels: int | None = None,
    *,
    scale: str = "sqrt",
    out_channels: int | None = None,
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
    dropout: float = 0.05,
) -> NonLocal2d:
    """ANN's "NB" (Table 6, Eq. 5): the non-local block in its concatenation form,
    ``Dropout2d(ReLU(BN(conv1x1(cat(Wo(O), x)))))`` with θ, φ, g separate 1x1 convs and Ck^-1/2 scale.

    Args: as :class:`NonLocal2d` (``fusion="concat"``).
    """
    return NonLocal2d(
        in_channels,
        key_channels,
        value_channels,
        scale=scale,
        fusion="concat",
        out_channels=out_channels,
        norm_layer=norm_layer,
        dropout=dropout,
    )
