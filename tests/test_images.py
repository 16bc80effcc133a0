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


# -- transparency and orientation, pixel by pixel ------------------------------------------------


def _over_white(rgb: tuple[int, ...], alpha: int) -> np.ndarray:
    """Straight-alpha ``rgb`` composited over opaque white, as floats."""
    return np.array(rgb, dtype=float) * alpha / 255 + 255 * (1 - alpha / 255)


@pytest.mark.parametrize("rgb, alpha", [((0, 0, 0), 0), ((0, 0, 0), 64), ((0, 0, 0), 128), ((0, 0, 0), 191),
                                         ((0, 0, 0), 255), ((200, 100, 0), 100), ((10, 250, 60), 1)])
def test_partially_transparent_pixels_are_composited_over_white(rgb, alpha):
    decoded = decode_image(_encode(Image.new("RGBA", (3, 2), (*rgb, alpha))), "alpha.png")
    pixels = np.asarray(decoded, dtype=float)
    assert decoded.mode == "RGB"
    assert np.abs(pixels - _over_white(rgb, alpha)).max() <= 1.0


def test_gray_alpha_and_a_transparent_palette_entry_are_composited_over_white():
    gray = decode_image(_encode(Image.new("LA", (2, 2), (0, 128))), "la.png")
    assert np.abs(np.asarray(gray, dtype=float) - _over_white((0, 0, 0), 128)).max() <= 1.0
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    decoded = decode_image(_encode(palette, transparency=0), "p.png")  # entry 0 (black) is transparent
    assert decoded.getpixel((0, 0)) == (255, 255, 255) and decoded.getpixel((1, 0)) == (255, 0, 0)


# What each EXIF orientation asks the viewer to do to the stored pixels (TIFF/EXIF 2.3, tag 0x0112).
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # rotated 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, k=1),  # rotated 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_every_exif_orientation_gives_the_upright_pixels(orientation):
    stored = np.arange(3 * 2 * 3, dtype=np.uint8).reshape(2, 3, 3) * 12  # 2 rows, 3 columns, all distinct
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(stored, "RGB"), "PNG", exif=exif.tobytes())
    decoded = np.asarray(decode_image(data, f"o{orientation}.png"))
    np.testing.assert_array_equal(decoded, ORIENTATIONS[orientation](stored))
