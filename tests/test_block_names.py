"""One block name means one module: every model's context block is ``create_block(<its zoo block>, ...)``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nlseg.blocks import ParallelSum, PositionAttention, create_block, list_blocks
from nlseg.blocks.dual_attention import ChannelAttention, DualAttention
from nlseg.models import ZOO, create_model

WITH_BLOCK = [name for name, entry in ZOO.items() if entry.block is not None]


def context_block(model: nn.Module) -> nn.Module:
    """The module the model builds from its zoo block name: ANN's context, the Denoised NL pipeline's block."""
    decoder = model.decoder
    return decoder.context if hasattr(decoder, "context") else decoder.block


def layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in module.state_dict().items()}


@pytest.mark.parametrize("name", WITH_BLOCK)
def test_model_block_is_the_factory_block(name: str):
    with torch.device("meta"):
        model = create_model(name, num_classes=19)
        block = context_block(model)
        reference = create_block(ZOO[name].block, 512)
    assert type(block) is type(reference)
    assert layout(block) == layout(reference)
    for (key, sub), (_, ref_sub) in zip(block.named_modules(), reference.named_modules(), strict=True):
        assert type(sub) is type(ref_sub), key


def test_every_comparison_row_names_a_registered_block():
    assert {ZOO[name].block for name in WITH_BLOCK} <= set(list_blocks())
    assert {name for name in WITH_BLOCK if name.endswith("_r101")} >= {
        f"{b}_r101" for b in ("nl", "ocnet", "ccnet", "danet", "dranet", "ppm", "aspp", "denoised_nl")
    }


def test_danet_is_one_module_in_the_model_and_the_factory():
    """``nlseg bench blocks --blocks danet`` builds create_block("danet"): PAM + CAM, the block of danet_r101."""
    danet = create_block("danet", 32)
    assert type(danet) is ParallelSum
    assert (type(danet.first), type(danet.second)) == (PositionAttention, ChannelAttention)
    assert type(create_block("danet_head", 32)) is DualAttention
    model = create_model("danet_r50", num_classes=3, backbone_width=8, head_channels=32)
    assert type(context_block(model)) is type(danet) and layout(context_block(model)) == layout(danet)
