"""Opening untrusted images: by content (never by extension), with a pixel limit,
EXIF orientation applied, and every mode converted to 8-bit RGB.
"""

from __future__ import annotations

import io
import logging
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from toonvision.constants import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from toonvision.errors import ImageError

logger = logging.getLogger(__name__)

_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
_ORIENTATION = 0x0112  # the EXIF tag that says how the camera was turned
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(data: bytes, source: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image, or raise ImageError naming ``source``."""
    if not data:
        raise ImageError(f"{source}: file is empty (0 bytes); re-export the screenshot")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt EXIF etc.: noise to a user
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{source}: {width}x{height} pixels exceeds the limit of {max_pixels} "
                    "(a decompression bomb, or a far larger image than a screenshot); refusing to decode it"
                )
            image.load()
            if image.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even an upright image
                image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{source}: decompression bomb (more pixels than Pillow's safety limit); refusing to decode it"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{source}: not an image Pillow can read (expected one of {', '.join(_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{source}: truncated or corrupt image ({exc}); re-export it") from None
    except Exception as exc:  # Pillow's parsers raise TypeError, struct.error, ... on malformed files
        logger.debug("%s: Pillow failed to decode it", source, exc_info=True)
        raise ImageError(
            f"{source}: corrupt image (Pillow failed with {type(exc).__name__}: {exc}); re-export it"
        ) from None


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read and decode one image file."""
    return decode_image(read_image_bytes(path), str(path), max_pixels)


def read_image_bytes(path: Path) -> bytes:
    """Read an image file's bytes, refusing folders, pipes and devices (reading them could
    block forever) and files too large to be a screenshot (reading them could exhaust memory)."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{path}: is a folder, not an image")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: is not a regular file (a pipe, socket or device); not read")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ImageError(
                f"{path}: {info.st_size} bytes is larger than the {MAX_IMAGE_BYTES}-byte limit for an "
                "image; is this really a screenshot?"
            )
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert palette, RGBA, LA, grayscale and 16-bit images to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.uint32)
        scale = 65535 if pixels.max(initial=0) > 255 or image.mode != "I" else 255
        eight_bit = (pixels.astype(np.float64) * 255.0 / scale + 0.5).clip(0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
