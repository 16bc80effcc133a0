"""Images are opened by content, upright, as 8-bit RGB, and hostile ones are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from toonvision.errors import ImageError
from toonvision.images import decode_image, load_image


def _encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (4, 3), (10, 20, 30, 255)),
        Image.new("RGB", (4, 3), (10, 20, 30)).convert("P"),
        Image.new("L", (4, 3), 77),
        Image.new("LA", (4, 3), (77, 255)),
        Image.new("I;16", (4, 3), 65535),
    ],
    ids=["rgba", "palette", "grayscale", "gray+alpha", "16-bit"],
)
def test_every_mode_becomes_8bit_rgb(image):
    decoded = decode_image(_encode(image), "x.png")
    assert decoded.mode == "RGB" and decoded.size == (4, 3)


def test_sixteen_bit_white_stays_white():
    decoded = decode_image(_encode(Image.new("I;16", (2, 2), 65535)), "x.png")
    assert np.asarray(decoded).min() == 255


def test_opened_by_content_not_extension(tmp_path):
    path = tmp_path / "really_png.jpg"
    path.write_bytes(_encode(Image.new("RGB", (5, 4), (1, 2, 3))))
    assert load_image(path).getpixel((0, 0)) == (1, 2, 3)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (6, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes()), "rotated.jpg")
    assert decoded.size == (2, 6)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (_encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:200], "truncated or corrupt"),
    ],
    ids=["zero bytes", "garbage", "truncated"],
)
def test_broken_images_name_the_file(data, message):
    with pytest.raises(ImageError, match=message) as info:
        decode_image(data, "broken.png")
    assert "broken.png" in str(info.value)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _encode(Image.new("1", (20_000, 20_000)))  # a few kB that would decode to 400 Mpx
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(bomb, "bomb.png")


def test_folder_named_like_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path / "dir.png")
