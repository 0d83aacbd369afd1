"""read_image: the pixel values it returns for every kind of image file a user may hold."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nlseg.data.base import read_image
from nlseg.errors import DatasetError


def _channels_equal(image: torch.Tensor, expected: list[float]) -> None:
    """``image`` is (3, 1, N), the same grey values ``expected`` in R, G and B."""
    assert image.shape == (3, 1, len(expected)) and image.dtype == torch.float32
    for channel in image:
        assert torch.allclose(channel[0], torch.tensor(expected), atol=1e-7)


def test_16_bit_png_is_scaled_by_65535_not_clipped(tmp_path: Path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    _channels_equal(read_image(tmp_path / "deep.png"), [0.0, 257 / 65535, 32768 / 65535, 1.0])


def test_16_bit_big_endian_tiff(tmp_path: Path):
    values = np.array([[0, 4096, 65535]], dtype=">u2")
    Image.frombytes("I;16B", (3, 1), values.tobytes()).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == "I;16B"
    _channels_equal(read_image(tmp_path / "deep.tif"), [0.0, 4096 / 65535, 1.0])


def test_32_bit_integer_image_is_16_bit_when_above_255_else_8_bit(tmp_path: Path):
    Image.fromarray(np.array([[0, 1000, 65535, 70000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32)).save(tmp_path / "narrow.tif")
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    _channels_equal(read_image(tmp_path / "wide.tif"), [0.0, 1000 / 65535, 1.0, 1.0])  # clipped above 65535
    _channels_equal(read_image(tmp_path / "narrow.tif"), [0.0, 128 / 255, 1.0])


def test_palette_grey_and_alpha_images(tmp_path: Path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert torch.allclose(image[:, 0, 0], torch.tensor([10, 20, 30]) / 255)
    assert torch.allclose(image[:, 0, 1], torch.tensor([200, 100, 50]) / 255)

    Image.new("L", (1, 1), 100).save(tmp_path / "grey.png")
    _channels_equal(read_image(tmp_path / "grey.png"), [100 / 255])
    # alpha is dropped: the stored colours are kept, even where the pixel is fully transparent
    Image.new("LA", (1, 1), (100, 0)).save(tmp_path / "grey_alpha.png")
    _channels_equal(read_image(tmp_path / "grey_alpha.png"), [100 / 255])
    Image.new("RGBA", (1, 1), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert torch.allclose(read_image(tmp_path / "rgba.png")[:, 0, 0], torch.tensor([10, 20, 30]) / 255)


def test_cmyk_is_converted_to_rgb(tmp_path: Path):
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 128))  # half black
    cmyk.putpixel((2, 0), (0, 255, 255, 0))  # magenta + yellow = red
    cmyk.save(tmp_path / "print.tif")
    image = read_image(tmp_path / "print.tif")
    assert torch.allclose(image[:, 0, 0], torch.tensor([0.0, 1.0, 1.0]))
    assert torch.allclose(image[:, 0, 1], torch.full((3,), 127 / 255))
    assert torch.allclose(image[:, 0, 2], torch.tensor([1.0, 0.0, 0.0]))


def test_8_bit_rgb_is_unchanged(tmp_path: Path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    assert torch.equal(read_image(tmp_path / "photo.png"), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [(6, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180), (8, Image.Transpose.ROTATE_90)],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, transpose: Image.Transpose):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    stored = Image.open(tmp_path / "phone.jpg")
    assert stored.size == (30, 20)
    upright = np.array(stored.transpose(transpose))  # as a viewer shows it
    image = read_image(tmp_path / "phone.jpg")
    assert image.shape == (3, *upright.shape[:2])
    assert torch.equal(image, torch.from_numpy(upright).permute(2, 0, 1).float() / 255)


def test_unreadable_files_raise_dataset_errors_naming_them(tmp_path: Path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DatasetError, match="notes.png.*not an image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(DatasetError, match="missing.png does not exist"):
        read_image(tmp_path / "missing.png")
