"""Shared test helpers: tiny screenshots with labelImg XML, made on disk in each test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, skip_unless_ci  # noqa: F401 (SAMPLES: tests import it from here)
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
        skip_unless_ci(f"{SAMPLES} not found (the shared fixtures sit beside the repository)")
    return SAMPLES


def write_pool(img_dir: Path, crops, *, size: tuple[int, int] = (8, 8)):
    """A crop pool on disk: tiny distinct PNGs and their manifest; returns (Layout, records).

    ``crops`` is a list of (label, source) pairs, or {label: count} with one screenshot per crop.
    Manifest width/height vary per crop (10 + index, 20 + 2 * index) so size reports can be checked.
    """
    from toonvision.layout import Layout
    from toonvision.manifest import CropRecord, save_manifest

    if isinstance(crops, dict):
        crops = [(label, f"{label}_shot{i}.png") for label, n in crops.items() for i in range(n)]
    layout = Layout.from_dirs(img_dir, img_dir.parent / "models")
    records, index = [], {}
    for n, (label, source) in enumerate(crops):
        group = label.split("_")[0]
        i = index[label] = index.get(label, -1) + 1
        crop = f"{group}/{label}_{i}.png"
        (layout.pool / group).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (n % 256, (n // 256) % 256, 7)).save(layout.pool / crop)
        records.append(CropRecord(crop, label, group, i, source, 0, 0, 10 + n, 20 + 2 * n, 10 + n, 20 + 2 * n,
                                  f"sha-{source}", f"crop-{n}"))
    save_manifest(layout.manifest, records)
    return layout, records


@pytest.fixture
def make_pool(tmp_path):
    """``make_pool(crops)`` writes a pool under ``tmp_path/img`` (see :func:`write_pool`)."""
    return lambda crops, **kwargs: write_pool(tmp_path / "img", crops, **kwargs)


CLASS_COLOURS = ((220, 40, 40), (40, 70, 220), (40, 190, 60), (230, 200, 40), (160, 60, 200))


def write_colour_pool(img_dir: Path, counts: dict[str, int], *, size: tuple[int, int] = (40, 48), seed: int = 0):
    """A learnable pool: label k is colour k plus noise, one screenshot per crop; returns (Layout, records).

    ``size`` is (width, height). Crops of different labels are easy to tell apart, so a model's
    loss falls within an epoch or two.
    """
    import hashlib
    import io

    from toonvision.layout import Layout
    from toonvision.manifest import CropRecord, save_manifest

    layout = Layout.from_dirs(img_dir, img_dir.parent / "models")
    rng = np.random.default_rng(seed)
    records = []
    for k, (label, n) in enumerate(counts.items()):
        group = label.split("_")[0]
        (layout.pool / group).mkdir(parents=True, exist_ok=True)
        colour = np.array(CLASS_COLOURS[k % len(CLASS_COLOURS)])
        for i in range(n):
            noise = rng.integers(-40, 41, (size[1], size[0], 3))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
            crop = f"{group}/{label}_{i}.png"
            (layout.pool / crop).write_bytes(buffer.getvalue())
            source = f"{label}_shot{i}.png"
            records.append(CropRecord(crop, label, group, i, source, 0, 0, size[0], size[1], size[0], size[1],
                                      hashlib.sha256(source.encode()).hexdigest(),
                                      hashlib.sha256(buffer.getvalue()).hexdigest()))
    save_manifest(layout.manifest, records)
    return layout, records
