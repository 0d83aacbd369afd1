"""Suite-wide settings and the two tiers.

The tests use tiny tensors, for which one intra-op thread is fastest and immune to oversubscription on a
busy 2-core machine. ``make test`` runs every test not marked ``slow`` (every module and every user
command at least once, in minutes); ``make test-all`` runs them all (long journeys, kill tests, every
recipe, every model and every family).
"""
from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch

torch.set_num_threads(1)


def tiered(values: Iterable, fast: Iterable) -> list:
    """Parameters for ``pytest.mark.parametrize``: those in ``fast`` run in both tiers, the rest are slow."""
    fast = set(fast)
    return [value if value in fast else pytest.param(value, marks=pytest.mark.slow) for value in values]


def deep_is_slow(names: Iterable[str]) -> list:
    """Model names, the ResNet-101 ones slow: each differs from its R-18/R-50 sibling in depth only."""
    names = list(names)
    return tiered(names, [name for name in names if not name.endswith("_r101")])
