"""The one registry type, and that models, blocks, data sets and recipes each are one."""
from __future__ import annotations

import pytest

from nlseg.blocks import BLOCKS
from nlseg.config import recipes
from nlseg.data import DATASETS
from nlseg.models import ZOO
from nlseg.registry import Registry, UnknownName, keyword_options


def test_register_look_up_list_and_refuse():
    things = Registry("thing", {"alpha": 1, "beta": 2})
    assert things.register("gamma", 3) == 3 and things.names() == ["alpha", "beta", "gamma"]
    assert things["beta"] == 2 == things.lookup("beta") and "alpha" in things and len(things) == 3
    assert things.get("delta") is None and dict(things) == {"alpha": 1, "beta": 2, "gamma": 3}  # a Mapping
    with pytest.raises(UnknownName) as info:
        things.lookup("betta")
    assert str(info.value) == "unknown thing 'betta' (did you mean 'beta'?); registered things: alpha, beta, gamma"
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    with pytest.raises(ValueError, match="thing 'beta' is already registered; registered things: alpha, beta, gamma"):
        things.register("beta", 4)
    assert things["beta"] == 2


def test_keyword_options_are_the_explicit_parameters():
    def builder(in_channels: int, *, width: int = 8, norm: str = "bn") -> None: ...

    def sloppy(in_channels: int, **options) -> None: ...

    assert list(keyword_options(builder, skip=["in_channels"])) == ["width", "norm"]
    with pytest.raises(TypeError, match="sloppy takes \\*args/\\*\\*kwargs"):
        keyword_options(sloppy)


@pytest.mark.parametrize("registry, kind, member", [
    (ZOO, "model", "ann_r101"), (BLOCKS, "block", "apnb"), (DATASETS, "data set", "cityscapes"),
    (recipes(), "recipe", "denoised_nl_r101_cityscapes"),
])
def test_models_blocks_data_sets_and_recipes_are_registries(registry, kind, member):
    assert isinstance(registry, Registry) and registry.kind == kind and member in registry
    with pytest.raises(ValueError, match=f"unknown {kind} '{member}x' \\(did you mean '{member}'\\?\\)"):
        registry.lookup(member + "x")
