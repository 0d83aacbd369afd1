"""The Denoised Non-Local block (Song et al., TNNLS 2023, §III; DESIGN.md "Denoised Non-Local block")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.blocks.layers import check_channels
from nlseg.ops import denoised_attention, denoised_attention_reference, denoised_attention_rows

__all__ = ["DenoisedNL"]

CLASS_INPUTS = ("probs", "logits")


class DenoisedNL(nn.Module):
    """Denoised NL: ``F' = γ · denoised_attention(q, k, v, p) + F`` with γ initialised to 0.

    q and k are separate 1x1 convs to ``key_channels``, v a 1x1 conv to ``value_channels``, without bias as
    released (``qkv_bias=True`` adds one to each); the attention has no scale. Global Rectifying reads class probabilities p (B, K, H', W') from an
    auxiliary head; when H' x W' differs from x's, the class map is resized bilinearly with
    align_corners=True (released model). With ``class_input="logits"`` the softmax over classes is
    taken after the resize, as DESIGN.md records for the released model.

    ``fused`` (attribute, default True) picks nlseg's exact op that never holds the N x N map; False runs
    :func:`nlseg.ops.denoised_attention_reference`, the released formulation (A, A', A'' materialised, A''
    through a (B, N, k², N) unfold). See :func:`nlseg.blocks.set_fused`.

    Args:
        in_channels: channels C of x.
        key_channels: channels Ck of q and k.
        value_channels: channels of v; default C, and it must equal C for the residual.
        kernel_size: odd Local Retention window.
        rectify: Global Rectifying on (needs a class map in ``forward``).
        retain: Local Retention on.
        class_input: "probs" if the class map is already a softmax over classes, "logits" otherwise.
        qkv_bias: give the q, k and v convolutions a bias (the released block has none).
    """

    num_inputs = 2

    def __init__(
        self,
        in_channels: int,
        key_channels: int = 64,
        value_channels: int | None = None,
        *,
        kernel_size: int = 3,
        rectify: bool = True,
        retain: bool = True,
        class_input: str = "probs",
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        value_channels = in_channels if value_channels is None else value_channels
        if value_channels != in_channels:
            raise ValueError(
                f"DenoisedNL: value_channels must equal in_channels={in_channels} for the residual, "
                f"got {value_channels}"
            )
        if class_input not in CLASS_INPUTS:
            raise ValueError(f"DenoisedNL: unknown class_input {class_input!r}; expected one of {CLASS_INPUTS}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DenoisedNL: kernel_size must be a positive odd integer, got {kernel_size}")
        check_channels("DenoisedNL", key_channels=key_channels)
        self.kernel_size = kernel_size
        self.rectify = rectify
        self.retain = retain
        self.class_input = class_input
        self.out_channels = in_channels
        self.fused = True
        self.query = nn.Conv2d(in_channels, key_channels, 1, bias=qkv_bias)
        self.key = nn.Conv2d(in_channels, key_channels, 1, bias=qkv_bias)
        self.value = nn.Conv2d(in_channels, value_channels, 1, bias=qkv_bias)
        self.gamma = nn.Parameter(torch.zeros(1))

    def class_probs(self, class_map: Tensor, size: tuple[int, int]) -> Tensor:
        """Class probabilities (B, K, H, W) at ``size`` from a class map of probabilities or logits."""
        if class_map.shape[-2:] != size:
            class_map = F.interpolate(class_map, size=size, mode="bilinear", align_corners=True)
        return class_map.softmax(dim=1) if self.class_input == "logits" else class_map

    def _probs(self, x: Tensor, class_map: Tensor | None) -> Tensor | None:
        """GR's class probabilities at x's size, or None when rectify is off."""
        if not self.rectify:
            return None
        if class_map is None:
            raise ValueError("DenoisedNL(rectify=True) needs a class map: forward(x, class_map)")
        return self.class_probs(class_map, tuple(x.shape[-2:]))

    def forward(self, x: Tensor, class_map: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), class_map (B, K, H', W') or None when rectify is off -> (B, C, H, W)."""
        probs = self._probs(x, class_map)
        attention = denoised_attention if self.fused else denoised_attention_reference
        out = attention(
            self.query(x),
            self.key(x),
            self.value(x),
            probs,
            kernel_size=self.kernel_size,
            rectify=self.rectify,
            retain=self.retain,
        )
        return self.gamma * out + x

    def attention_rows(
        self, x: Tensor, class_map: Tensor | None = None, *, index: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Query ``index`` = (y, x)'s rows of A, A' (after GR) and A'' (after LR) over x's grid (Fig. 11 maps
        #1-#3; :func:`nlseg.ops.denoised_attention_rows`), each (B, H, W). A' = A when rectify is off."""
        maps = denoised_attention_rows(
            self.query(x), self.key(x), self._probs(x, class_map), index, kernel_size=self.kernel_size
        )
        return dict(zip(("A", "A' (GR)", "A'' (LR)"), maps, strict=True))
