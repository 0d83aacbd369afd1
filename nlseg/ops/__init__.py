"""Pure functions on tensors: the mathematics of every block.

Each op has a fast path (the public name) and a plain reference path (``*_reference``) that
materialises everything; tests hold the two equal, forward and backward. ``*_row(s)`` give one query
pixel's attention over all keys (for pictures), equal to a row of the materialised map.
"""
from nlseg.ops.attention import nonlocal_attention, nonlocal_attention_reference
from nlseg.ops.channel import channel_attention, channel_attention_reference
from nlseg.ops.criss_cross import criss_cross_attention, criss_cross_attention_reference
from nlseg.ops.denoised import denoised_attention, denoised_attention_reference
from nlseg.ops.local import local_aggregate, local_aggregate_reference, local_relation, local_relation_reference
from nlseg.ops.pyramid import (
    POOL_MODES,
    adaptive_avg_pool,
    pyramid_sample,
    pyramid_sample_reference,
    random_anchor_positions,
)
from nlseg.ops.rows import apnb_row, criss_cross_row, denoised_attention_rows, nonlocal_row

__all__ = [
    "POOL_MODES",
    "adaptive_avg_pool",
    "apnb_row",
    "channel_attention",
    "channel_attention_reference",
    "criss_cross_attention",
    "criss_cross_attention_reference",
    "criss_cross_row",
    "denoised_attention",
    "denoised_attention_reference",
    "denoised_attention_rows",
    "local_aggregate",
    "local_aggregate_reference",
    "local_relation",
    "local_relation_reference",
    "nonlocal_attention",
    "nonlocal_attention_reference",
    "nonlocal_row",
    "pyramid_sample",
    "pyramid_sample_reference",
    "random_anchor_positions",
]
