"""Image index by trailing digits, and RGB decoding with one-line reasons for bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_files import huge_png
from PIL import Image

from pkd.data.images import ImageError, ImageIndex, coco_path, load_rgb
from pkd.errors import PkdError


def _rgb(size: int = 32) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_scan_parses_trailing_digits(tmp_path):
    for name in ("COCO_val2014_000000000042.jpg", "7.png", "000000000123.PNG"):
        _rgb(4).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("9")  # not an image suffix
    (tmp_path / "cover.jpg").write_bytes(b"x")  # no digits
    (tmp_path / "55.jpg").mkdir()  # a folder
    index = ImageIndex.scan(tmp_path)
    assert index.paths == {42: tmp_path / "COCO_val2014_000000000042.jpg", 7: tmp_path / "7.png",
                           123: tmp_path / "000000000123.PNG"}
    assert index.get(42).name.endswith("42.jpg") and index.get(8) is None
    assert 7 in index and len(index) == 3


def test_scan_refuses_two_files_with_one_id(tmp_path):
    _rgb(4).save(tmp_path / "42.png")
    _rgb(4).save(tmp_path / "COCO_train2014_000000000042.jpg")
    with pytest.raises(PkdError, match=r"both have image id 42$"):
        ImageIndex.scan(tmp_path)


def test_scan_missing_folder(tmp_path):
    with pytest.raises(PkdError, match="image folder not found"):
        ImageIndex.scan(tmp_path / "nope")


def test_coco_path():
    assert coco_path("/c", "val2014", 42) == Path("/c/val2014/COCO_val2014_000000000042.jpg")
    assert coco_path("/c", "train2017", 42) == Path("/c/train2017/000000000042.jpg")


def test_rgb_passes_through(tmp_path):
    img = _rgb()
    img.save(tmp_path / "1.png")
    out = load_rgb(tmp_path / "1.png")
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("L", 100, (100, 100, 100)),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
    ("CMYK", (0, 255, 0, 0), (255, 0, 255)),  # no cyan/yellow, full magenta
])
def test_modes_become_rgb(tmp_path, mode, value, expected):
    path = tmp_path / ("1.tif" if mode == "CMYK" else "1.png")
    Image.new(mode, (3, 2), value).save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert out.getpixel((0, 0)) == expected


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 2), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.info["transparency"] = 0
    img.save(tmp_path / "1.png")
    assert Image.open(tmp_path / "1.png").mode == "P"
    assert load_rgb(tmp_path / "1.png").getpixel((1, 1)) == (0, 0, 255)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "1.png")
    assert Image.open(tmp_path / "1.png").mode.startswith("I")
    out = np.asarray(load_rgb(tmp_path / "1.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])
    assert out.shape == (1, 3, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    full = tmp_path / "full"
    _rgb(64).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / "cut.img"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.img: truncated or corrupt image"):
        load_rgb(cut)


def test_missing_empty_and_not_an_image(tmp_path):
    with pytest.raises(ImageError, match=r"gone\.jpg: image file not found"):
        load_rgb(tmp_path / "gone.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_rgb(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, not a picture")
    with pytest.raises(ImageError, match=r"text\.jpg: not an image") as err:
        load_rgb(tmp_path / "text.jpg")
    assert isinstance(err.value, PkdError) and "\n" not in str(err.value)


@pytest.mark.parametrize("size", [(12_000, 10_000), (40_000, 40_000)])
def test_huge_image_is_refused_from_its_header(tmp_path, size):
    """Above the limit (12k x 10k: Pillow would only warn and decode 360 MB; 40k x 40k: Pillow's
    own bomb error) the file is refused with one line, and nothing is decoded."""
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png(*size))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        with pytest.raises(ImageError, match=r"huge\.png: image too large") as err:
            load_rgb(path)
    assert "\n" not in str(err.value) and "not decoded" in str(err.value)


def test_pixel_limit_is_a_parameter(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    assert load_rgb(path, max_pixels=200).size == (20, 10)
    with pytest.raises(ImageError, match=r"20x10 pixels, more than 199"):
        load_rgb(path, max_pixels=199)
