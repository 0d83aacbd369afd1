"""The one device resolver, as train, eval, predict and viz use it."""
from __future__ import annotations

import pytest
import torch

from nlseg.engine.device import resolve_device
from nlseg.errors import ConfigError


def test_names_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu") == resolve_device("auto", 3)
    assert resolve_device(torch.device("meta")) == torch.device("meta")
    for name, message in (("cuda", "no CUDA device is available here"), ("gpu", "is not a device name")):
        with pytest.raises(ConfigError, match=message) as info:
            resolve_device(name)
        assert "\n" not in str(info.value) and repr(name) in str(info.value)


def test_cuda_names_and_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda")  # the current device
    assert resolve_device("cuda", local_rank=1) == resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index wins
    with pytest.raises(ConfigError, match=r"only 2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="cuda:2: there are only 2"):
        resolve_device("cuda", local_rank=2)
