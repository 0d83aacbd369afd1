"""nlseg: semantic segmentation with non-local context blocks.

Implements the Denoised Non-Local Network (Song et al., TNNLS 2023) and the Asymmetric Non-local
Network (Zhu et al., ICCV 2019), with every block those papers compare against.

The factories are imported on first use, so ``import nlseg.ops`` stays light.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "create_block": "nlseg.blocks",
    "list_blocks": "nlseg.blocks",
    "create_model": "nlseg.models",
    "list_models": "nlseg.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nlseg' has no attribute {name!r}")
