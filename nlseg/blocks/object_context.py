"""OCNet's base object-context block (Yuan and Wang, "OCNet: Object Context Network for Scene Parsing", 2018)."""
from __future__ import annotations

from torch import nn

from nlseg.blocks.asymmetric import APNB

__all__ = ["ObjectContext"]


class ObjectContext(APNB):
    """Base object context (OCNet's self-attention block): APNB's structure with all N positions as keys.

    OCNet's released base-OC block, from which ANN's code derives: key and query share one
    1x1 conv + BN + ReLU, the value is a 1x1 conv, ``softmax(Ck^-1/2 · q kᵀ) v``, ``W`` a 1x1 conv
    initialised to zero, then ReLU(BN(conv1x1(cat(W(O), x)))) + Dropout2d.

    Args:
        in_channels: channels C of x.
        out_channels: output channels, default C.
        key_channels: channels of key/query, default C/2 (OCNet: 512 -> 256).
        value_channels: channels of the value, default C/2.
        norm_layer: normalisation class (BatchNorm2d, or SyncBatchNorm when distributed).
        dropout: Dropout2d rate after the fusion conv (OCNet: 0.05).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        key_channels: int | None = None,
        value_channels: int | None = None,
        *,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dropout: float = 0.05,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            in_channels // 2 if key_channels is None else key_channels,
            in_channels // 2 if value_channels is None else value_channels,
            pool_sizes=None,
            norm_layer=norm_layer,
            dropout=dropout,
        )
