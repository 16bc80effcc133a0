"""Shared test helpers: tiny screenshots with labelImg XML, made on disk in each test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "toonvision-samples"


def voc_xml(filename: str, objects: list[tuple[str, tuple]], size: tuple[int, int] | None = (64, 48)) -> str:
    """A labelImg-style XML string; ``objects`` are (name, (xmin, ymin, xmax, ymax))."""
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    )
    parts = [
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    ]
    return (
        f"<annotation><folder>raw</folder><filename>{filename}</filename>"
        f"<path>C:\\raw\\{filename}</path>{size_xml}<segmented>0</segmented>{''.join(parts)}</annotation>"
    )


def noise_image(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A random RGB image: every crop of it is distinct, so crops can be compared by content."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def write_screenshot(folder: Path, stem: str, objects, *, seed: int = 0, size=(64, 48),
                     image_format: str = "PNG", suffix: str = ".png", xml_size=None) -> Path:
    """Write ``stem<suffix>`` (a noise image encoded as ``image_format``) and ``stem.xml``."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / f"{stem}{suffix}"
    noise_image(*size, seed=seed).save(image_path, format=image_format)
    declared = size if xml_size is None else xml_size
    (folder / f"{stem}.xml").write_text(voc_xml(image_path.name, objects, declared))
    return image_path


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} not found (the shared fixtures sit beside the repository)")
    return SAMPLES
