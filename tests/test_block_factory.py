"""The block factory and the blocks' constructors: channels mapped, and every wrong name or option refused."""
from __future__ import annotations

import pytest
from torch import nn

from nlseg.blocks import AFNB, APNB, DenoisedNL, NonLocal2d, create_block, list_blocks, register_block

CHANNELS, LOW_CHANNELS = 32, 16


def test_fusion_factory_maps_channels():
    block = create_block("afnb", CHANNELS, low_channels=LOW_CHANNELS, key_channels=8, value_channels=8)
    assert isinstance(block, AFNB) and block.out_channels == CHANNELS and block.num_inputs == 2
    assert block.query[0].in_channels == CHANNELS and block.key[0].in_channels == LOW_CHANNELS
    assert create_block("fnb", CHANNELS, low_channels=LOW_CHANNELS, out_channels=12).out_channels == 12


def test_factory_errors():
    with pytest.raises(ValueError, match=r"unknown block 'nonlocal' \(did you mean 'nonlocal2d'\?\); registered blocks: .*apnb"):
        create_block("nonlocal", CHANNELS)
    with pytest.raises(TypeError, match=r"\['key_chanels'\].*key_channels"):
        create_block("apnb", CHANNELS, key_chanels=8)
    with pytest.raises(TypeError, match=r"unknown option.*out_channels"):
        create_block("common_fusion", CHANNELS, low_channels=LOW_CHANNELS, out_channels=8)
    with pytest.raises(TypeError, match=r"needs option\(s\) \['low_channels'\]"):
        create_block("afnb", CHANNELS)
    with pytest.raises(ValueError, match="already registered"):
        register_block("nl", NonLocal2d)

    class Swallowing(nn.Module):
        def __init__(self, in_channels: int, **options) -> None:
            super().__init__()

    with pytest.raises(TypeError, match="kwargs"):
        register_block("swallowing", Swallowing)
    assert "swallowing" not in list_blocks()


def test_constructor_errors():
    with pytest.raises(ValueError, match="fusion"):
        NonLocal2d(CHANNELS, fusion="sum")
    with pytest.raises(ValueError, match="scale"):
        NonLocal2d(CHANNELS, scale="log")
    with pytest.raises(ValueError, match="out_channels must equal"):
        NonLocal2d(CHANNELS, out_channels=16)
    with pytest.raises(ValueError, match="pool_mode"):
        APNB(CHANNELS, pool_mode="median")
    with pytest.raises(ValueError, match="pool_sizes"):
        APNB(CHANNELS, pool_sizes=(0, 3))
    with pytest.raises(ValueError, match="value_channels"):
        DenoisedNL(CHANNELS, value_channels=16)
    with pytest.raises(ValueError, match="compact_channels"):
        create_block("dranet_head", CHANNELS)  # 32 / 4 / 16 = 0 compact channels
