"""A model's attention map of one pixel: what its context block sees for an image, and that block's map row.

The maps of Denoised NL Fig. 1 / 11 (A, A' after Global Rectifying, A'' after Local Retention) and the
corresponding maps of NL, APNB (ANN), CCNet and DANet. A forward pre-hook on the block records its
inputs (the feature map x and, for Denoised NL, the class map) during one forward pass of the model;
the block's own ``attention_rows`` then computes the one row of its map that is drawn, so memory stays
O(N·C) whatever the image size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nlseg.blocks import ROW_BLOCKS

__all__ = ["ATTENTION_BLOCKS", "BlockInputs", "attention_maps", "capture_block_inputs", "find_attention_block",
           "grid_index", "pixel_attention"]

ATTENTION_BLOCKS: tuple[type[nn.Module], ...] = ROW_BLOCKS
"""Blocks whose map of one pixel can be drawn (``nlseg.blocks.ROW_BLOCKS``); :func:`find_attention_block` takes
the first in a model."""


@dataclass(frozen=True)
class BlockInputs:
    """What a block received in one forward pass: x (1, C, h, w) and, for Denoised NL, its class map."""

    x: Tensor
    class_map: Tensor | None = None


def find_attention_block(model: nn.Module) -> nn.Module:
    """The first module of ``model`` (in ``model.modules()`` order) that is one of :data:`ATTENTION_BLOCKS`.

    Raises:
        ValueError: the model has none (the message names the supported blocks).
    """
    for module in model.modules():
        if isinstance(module, ATTENTION_BLOCKS):
            return module
    names = ", ".join(cls.__name__ for cls in ATTENTION_BLOCKS)
    raise ValueError(f"{type(model).__name__} has no attention block whose map can be drawn (supported: {names})")


def capture_block_inputs(model: nn.Module, block: nn.Module, image: Tensor) -> BlockInputs:
    """Run ``model(image)`` once without autograd and return what ``block`` received (its first call).

    Args:
        model: the network, in the mode it should run in (eval for pictures).
        block: a submodule of ``model``.
        image: (1, 3, H, W) normalised image.
    """
    captured: list[tuple] = []

    def record(module: nn.Module, args: tuple) -> None:
        if not captured:
            captured.append(args)

    handle = block.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            model(image)
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"{type(block).__name__} was not called in the forward pass of {type(model).__name__}")
    args = captured[0]
    return BlockInputs(args[0], args[1] if len(args) > 1 else None)


def grid_index(pixel: tuple[int, int], image_size: tuple[int, int], grid_size: tuple[int, int]) -> tuple[int, int]:
    """The cell (y, x) of an h x w grid covering an H x W image that holds the image pixel (y, x)."""
    (y, x), (height, width), (h, w) = pixel, image_size, grid_size
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"pixel (y, x) = ({y}, {x}) is outside the {height} x {width} image")
    return min(h - 1, y * h // height), min(w - 1, x * w // width)


@torch.no_grad()
def attention_maps(block: nn.Module, inputs: BlockInputs, index: tuple[int, int]) -> dict[str, Tensor]:
    """The block's attention of the grid cell ``index`` over its h x w grid, by the block's own q and k convs.

    Args:
        block: one of :data:`ATTENTION_BLOCKS`.
        inputs: what the block received (:func:`capture_block_inputs`), batch of one.
        index: (y, x) on the block's grid.

    Returns:
        ``{title: (h, w) map}``: Denoised NL gives "A", "A' (GR)" and "A'' (LR)" (Fig. 11 maps #1-#3);
        criss-cross attention one map per recurrence (the second pass reads the first one's output);
        the others their one map (APNB's anchor weights spread onto the pixels each anchor averages).
    """
    if not isinstance(block, ATTENTION_BLOCKS):
        names = ", ".join(cls.__name__ for cls in ATTENTION_BLOCKS)
        raise ValueError(f"cannot draw the attention of {type(block).__name__}; supported: {names}")
    extra = () if inputs.class_map is None else (inputs.class_map,)
    rows = block.attention_rows(inputs.x, *extra, index=index)
    return {title: row[0] for title, row in rows.items()}


def pixel_attention(
    model: nn.Module, image: Tensor, pixel: tuple[int, int]
) -> tuple[dict[str, Tensor], tuple[int, int], tuple[int, int]]:
    """The attention maps of the image pixel ``pixel`` in the model's context block.

    Args:
        model: a segmentor in eval mode.
        image: (1, 3, H, W) normalised image.
        pixel: (y, x) in image coordinates, mapped to the block's grid by :func:`grid_index`.

    Returns:
        the maps (``{title: (h, w)}``), the grid cell drawn and the grid size (h, w).
    """
    block = find_attention_block(model)
    inputs = capture_block_inputs(model, block, image)
    grid = tuple(inputs.x.shape[-2:])
    index = grid_index(pixel, tuple(image.shape[-2:]), grid)
    return attention_maps(block, inputs, index), index, grid
