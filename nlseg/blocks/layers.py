"""Small building pieces shared by the blocks: conv + norm + ReLU units and token/map reshapes."""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ConvNormAct", "ParallelSum", "check_channels", "to_map", "to_tokens"]


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias, the norm absorbs it) + norm + optional ReLU, "same" padding for odd kernels.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd square kernel size.
        dilation: dilation of the kernel (the padding grows with it, so H x W is kept).
        norm_layer: normalisation class called as ``norm_layer(out_channels)``.
        activation: append ``ReLU`` when true.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        dilation: int = 1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        activation: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            norm_layer(out_channels),
        ]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ParallelSum(nn.Module):
    """Two blocks on one input, outputs summed, as DANet sums its position and channel branches.

    Args:
        first: a block keeping the channel count.
        second: another one.
    """

    num_inputs = 1

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.out_channels = first.out_channels

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.first(x) + self.second(x)


def check_channels(block: str, **channels: int) -> None:
    """Raise ``ValueError`` naming ``block`` if any (possibly derived) channel count is below 1."""
    bad = {name: value for name, value in channels.items() if value < 1}
    if bad:
        raise ValueError(f"{block}: channel counts must be >= 1, got {bad}; raise in_channels or set them explicitly")


def to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) map -> (B, N, C) tokens, N = H·W row-major."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, N, C) tokens -> (B, C, H, W) map; inverse of :func:`to_tokens`."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
