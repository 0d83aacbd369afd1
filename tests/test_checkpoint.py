"""Any file that is not an nlseg checkpoint gets one CheckpointError line saying what it is."""
from __future__ import annotations

import pytest
import torch

from nlseg.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def one_line(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_text_image_folder_missing_and_empty_files(tmp_path):
    (tmp_path / "notes.txt").write_text("epoch 3: loss 0.2\n")
    assert "is a text file, not a PyTorch checkpoint" in one_line(tmp_path / "notes.txt")  # was KeyError: 101
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(200))
    assert "is a JPEG image" in one_line(tmp_path / "photo.jpg")  # was torch's multi-line weights_only advice
    (tmp_path / "label.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert "is a PNG image" in one_line(tmp_path / "label.png")
    assert "is a folder" in one_line(tmp_path)
    assert "does not exist" in one_line(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "is an empty file" in one_line(tmp_path / "empty.pt")


def test_truncated_checkpoint(tmp_path):
    save_checkpoint({"model": {"w": torch.ones(1000)}, "iteration": 1}, tmp_path / "last.pt")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert "is truncated or damaged" in one_line(tmp_path / "cut.pt")


def test_plain_state_dict_says_how_to_use_it(tmp_path):
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(4)}, tmp_path / "resnet.pth")
    message = one_line(tmp_path / "resnet.pth")
    assert "is a plain state dict (2 tensors), not an nlseg checkpoint" in message
    assert f"model.pretrained_backbone={tmp_path / 'resnet.pth'}" in message and "model.init_from=" in message


def test_other_pickles(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, tmp_path / "lightning.ckpt")
    assert "keys state_dict, epoch" in one_line(tmp_path / "lightning.ckpt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    assert "holds list" in one_line(tmp_path / "list.pt")
    torch.save({"model": {}, "fn": torch.nn.Identity()}, tmp_path / "module.pt")  # needs unpickling code
    assert "Python objects other than tensors" in one_line(tmp_path / "module.pt")
