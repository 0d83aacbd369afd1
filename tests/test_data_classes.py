"""What every registered data set class declares: its classes, palette and counts, and explicit keyword options."""
from __future__ import annotations

import inspect

import pytest

from nlseg.data import ADE20K, COCOStuff10K, Cityscapes, NYUDv2, PascalContext, dataset_class, list_datasets


@pytest.mark.parametrize("cls", [Cityscapes, ADE20K, PascalContext, COCOStuff10K, NYUDv2])
def test_class_metadata(cls):
    assert cls.num_classes == len(cls.classes) == len(cls.palette)
    assert len(set(cls.classes)) == cls.num_classes and cls.ignore_index == 255
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in cls.palette)
    assert len(set(cls.palette)) == cls.num_classes


def test_class_counts_and_names():
    counts = [cls.num_classes for cls in (ADE20K, PascalContext, COCOStuff10K, NYUDv2)]
    assert counts == [150, 60, 171, 40]
    assert ADE20K.classes[0] == "wall" and ADE20K.classes[12].startswith("person") and ADE20K.classes[149] == "flag"


@pytest.mark.parametrize("name", list_datasets())
def test_every_data_set_takes_explicit_keyword_options(name):
    """No ``**kwargs``: a recipe's ``data.options`` can be checked against the constructor's parameters."""
    cls = dataset_class(name)
    kinds = {p.kind for p in inspect.signature(cls).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert "transform" in inspect.signature(cls).parameters
    assert cls.requires_root is (name != "synthetic")
