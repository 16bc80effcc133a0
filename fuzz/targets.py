"""The properties the fuzzers check, shared with tests/test_fuzz_regressions.py.

Each ``check_*`` takes raw bytes and returns normally when the input is handled well:
accepted, or refused with the project's own error. Any other exception is a bug.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from toonvision.errors import AnnotationError, ImageError
from toonvision.images import decode_image
from toonvision.labels import group_of, normalise_label
from toonvision.voc import parse_annotation

FUZZ_MAX_PIXELS = 1 << 16  # small, so no input can make a decode slow or large
_SAFE_LABEL = re.compile(r"[a-z0-9_-]+")
_POOL = PurePosixPath("/pool")


def check_voc(data: bytes) -> None:
    """parse_annotation accepts the bytes or raises AnnotationError naming the source."""
    try:
        parse_annotation(data, "fuzz.xml")
    except AnnotationError as exc:
        assert "fuzz.xml" in str(exc), f"message does not name the file: {exc}"


def check_image(data: bytes) -> None:
    """decode_image returns an 8-bit RGB image within the pixel limit, or raises ImageError."""
    try:
        image = decode_image(data, "fuzz.png", max_pixels=FUZZ_MAX_PIXELS)
    except ImageError as exc:
        assert "fuzz.png" in str(exc), f"message does not name the file: {exc}"
        return
    assert image.mode == "RGB", image.mode
    assert image.width * image.height <= FUZZ_MAX_PIXELS, image.size


# Pieces a hostile label is made of: path syntax, look-alikes, case-folding oddities.
# Saved label inputs (corpus, found, regressions) decode through this exact tuple: never edit it.
LABEL_TOKENS = (
    "cog_", "toon_", "bb_", "..", ".", "/", "\\", "\x00", "~", ":", " ", "\t", "\n",
    "\u0430",  # Cyrillic a
    "\uff43\uff41\uff54",  # fullwidth cat
    "\u212a",  # Kelvin sign, lowercases to ASCII k
    "\u0130",  # Turkish dotted I, lowercases to i + combining dot
    "\u00df", "\ufb01", "\u2167", "\U0001d41a",  # sharp s, fi ligature, roman numeral, math bold a
    "\u200b", "\u00a0", "\u2028", "\u3000", "\ufeff", "\u0085", "\u0301",  # invisible, spaces, combining
    "\u2215", "\u2024", "\uff0f",  # division slash, one-dot leader, fullwidth solidus
    "\ud800",  # lone surrogate
    "a" * 101,
)


def label_from_bytes(data: bytes) -> str:
    """Build a label from fuzz bytes: a byte below 0x80 is itself, 0x80 + i is LABEL_TOKENS[i % len]."""
    return "".join(chr(b) if b < 0x80 else LABEL_TOKENS[(b - 0x80) % len(LABEL_TOKENS)] for b in data)


def check_label(data: bytes) -> None:
    """A label is refused with ValueError, or becomes a safe ASCII file name under the pool."""
    check_label_text(label_from_bytes(data))


def check_label_text(raw: str) -> None:
    try:
        label = normalise_label(raw)
    except ValueError:
        return
    assert _SAFE_LABEL.fullmatch(label), repr(label)
    assert label.isascii() and raw.strip().isascii(), f"non-ASCII label accepted: {raw!r} -> {label!r}"
    crop = _POOL / group_of(label) / f"{label}_0.png"
    assert ".." not in crop.parts and crop.parent.parent == _POOL, crop

