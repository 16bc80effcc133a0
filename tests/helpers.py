"""Builders for the end-to-end tests: real screenshots through real ``extract``, Keras spies, a kill driver.

These tests exercise the public surface only (the CLI, ``train``/``TrainConfig``, ``Layout``, the
files on disk, and Keras itself), so they keep working when the library's modules are rearranged.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # on CI a missing fixture or fault is a failure


def _find_samples() -> Path:
    """``../shared`` beside the repository, or beside a folder above it (a git worktree sits deeper)."""
    for folder in REPO.parents:
        candidate = folder / "shared" / "fixtures" / "toonvision-samples"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "fixtures" / "toonvision-samples"


SAMPLES = _find_samples()


def skip_unless_ci(reason: str) -> None:
    """Skip a test this machine cannot run; under CI=true fail instead, so that a skip never hides a broken
    machine (missing shared fixtures, a tmpfs that cannot be mounted, folder permissions that do not apply)."""
    if CI:
        pytest.fail(f"{reason} (CI=true: this must work here)", pytrace=False)
    pytest.skip(reason)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}

UNPRIVILEGED = (  # root without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER obeys file modes
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for cap in (1, 2, 3):\n"
    "    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; the exec below drops them from root\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def run_unprivileged(args: list) -> tuple[int, str]:
    prefix = [sys.executable, "-c", UNPRIVILEGED] if os.geteuid() == 0 else [sys.executable]
    done = subprocess.run([*prefix, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr

CROP = (16, 32)  # (width, height) of every object in the screenshots below
SIZE = "48x44"  # --image-size HEIGHTxWIDTH: the smallest the baseline model takes
IMAGE_SIZE = (48, 44)
COLOURS = ((210, 50, 50), (50, 70, 210), (40, 190, 60), (230, 200, 40), (160, 60, 200))


# -- screenshots and pools ----------------------------------------------------------------------


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


CLASS_COLOURS = ((220, 40, 40), (40, 70, 220), (40, 190, 60), (230, 200, 40), (160, 60, 200))


def write_colour_pool(img_dir: Path, counts: dict[str, int], *, size: tuple[int, int] = (40, 48), seed: int = 0):
    """A learnable pool: label k is colour k plus noise, one screenshot per crop; returns (Layout, records).

    ``size`` is (width, height). Crops of different labels are easy to tell apart, so a model's
    loss falls within an epoch or two.
    """
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




def voc(filename: str, size: tuple[int, int], boxes: Sequence[tuple[str, tuple[int, int, int, int]]]) -> str:
    """labelImg's Pascal VOC XML for ``boxes`` of (label, (xmin, ymin, xmax, ymax))."""
    objects = "".join(
        f"<object><name>{label}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for label, b in boxes
    )
    return (f"<annotation><folder>shots</folder><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>")


def write_shots(folder: Path, shots: Sequence[Sequence[str]], *, seed: int = 0, prefix: str = "shot") -> list[Path]:
    """Screenshot i holds one CROP-sized block per label of ``shots[i]``, side by side, in that label's colour
    plus noise (so classes are learnable and every crop is distinct); its labelImg XML lies beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = sorted({label for shot in shots for label in shot})
    rng = np.random.default_rng(seed)
    paths = []
    for i, shot in enumerate(shots):
        width, height = CROP[0] * len(shot) + 8, CROP[1] + 8
        pixels = rng.integers(0, 256, (height, width, 3))
        boxes = []
        for j, label in enumerate(shot):
            x = 4 + CROP[0] * j
            colour = np.array(COLOURS[labels.index(label) % len(COLOURS)])
            noise = rng.integers(-40, 41, (CROP[1], CROP[0], 3))
            pixels[4:4 + CROP[1], x:x + CROP[0]] = np.clip(colour + noise, 0, 255)
            boxes.append((label, (x, 4, x + CROP[0], 4 + CROP[1])))
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
        path.with_suffix(".xml").write_text(voc(path.name, (width, height), boxes))
        paths.append(path)
    return paths


def cli(*args: Any, expect: int | None = 0):
    """``toonvision ARGS`` in this process (click's CliRunner); asserts the exit code unless ``expect`` is None."""
    from click.testing import CliRunner

    from toonvision.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, result.output
    return result


def extract_pool(img_dir: Path, shots: Sequence[Sequence[str]], *, seed: int = 0):
    """Screenshots of ``shots`` in img/raw/screenshots, extracted by the real CLI; returns the Layout."""
    from toonvision.layout import Layout

    layout = Layout.from_dirs(img_dir, img_dir.parent / "models")
    write_shots(layout.screenshots, shots, seed=seed)
    cli("--img-dir", img_dir, "-q", "extract", "--workers", "1")
    return layout


def manifest(layout) -> dict[str, dict[str, str]]:
    """manifest.csv by crop path relative to the pool."""
    return {row["crop"]: row for row in csv.DictReader(io.StringIO(layout.manifest.read_text()))}


def grouped_shots(per_class: int, labels: Sequence[str] = ("cog_bb_a", "toon_cat")) -> list[list[str]]:
    """Screenshots holding 2 to 6 crops each (mixed classes), ``per_class`` screenshots' worth per label."""
    shots, sizes = [], (2, 3, 4, 5, 6)
    for i in range(per_class * len(labels)):
        n = sizes[i % len(sizes)]
        shots.append([labels[(i + j) % len(labels)] for j in range(n)])
    return shots


# -- what Keras was given ------------------------------------------------------------------------


@dataclass
class KerasRun:
    """The datasets one training run handed to Keras: fit's x and validation_data, evaluate's x."""

    train: Any = None
    validate: Any = None
    test: Any = None
    fit_kwargs: dict = field(default_factory=dict)


@contextlib.contextmanager
def keras_spy() -> Iterator[list[KerasRun]]:
    """Record the datasets every ``keras.Model.fit`` and top-level ``evaluate`` receive, then call Keras.

    Keras calls ``evaluate`` from inside ``fit`` for validation; those calls are not recorded.
    """
    import keras

    runs: list[KerasRun] = []
    real_fit, real_evaluate = keras.Model.fit, keras.Model.evaluate
    depth = [0]

    def fit(self, x=None, y=None, *args, **kwargs):
        runs.append(KerasRun(train=x, validate=kwargs.get("validation_data"), fit_kwargs=dict(kwargs)))
        depth[0] += 1
        try:
            return real_fit(self, x, y, *args, **kwargs)
        finally:
            depth[0] -= 1

    def evaluate(self, x=None, *args, **kwargs):
        if depth[0] == 0 and runs:
            runs[-1].test = x
        return real_evaluate(self, x, *args, **kwargs)

    keras.Model.fit, keras.Model.evaluate = fit, evaluate
    try:
        yield runs
    finally:
        keras.Model.fit, keras.Model.evaluate = real_fit, real_evaluate


def batches(dataset) -> tuple[np.ndarray, np.ndarray]:
    """One pass over a dataset: all images and labels, in the order it yields them."""
    images, labels = [], []
    for x, y in dataset:
        images.append(np.asarray(x))
        labels.append(np.asarray(y).reshape(len(x), -1)[:, 0])
    return np.concatenate(images), np.concatenate(labels)


def clean_images(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """The files as Keras' image_dataset_from_directory loads them: decoded RGB, bilinear resize, float32."""
    import tensorflow as tf

    return np.stack([
        tf.image.resize(tf.image.decode_image(tf.io.read_file(str(p)), channels=3, expand_animations=False),
                        size, method="bilinear").numpy()
        for p in paths
    ])


def matches(images: np.ndarray, references: np.ndarray, atol: float = 1e-3) -> list[int | None]:
    """For each image, the index of the reference it equals (within ``atol``), or None."""
    found = []
    for image in images:
        hits = np.flatnonzero(np.abs(references - image).reshape(len(references), -1).max(axis=1) <= atol)
        found.append(int(hits[0]) if len(hits) else None)
    return found


# -- files on disk ------------------------------------------------------------------------------


def ledger_rows(path: Path, drop: Sequence[str] = ("seconds",)) -> list[dict[str, str]]:
    """runs.csv as rows, without the columns in ``drop`` (wall time differs between equal runs)."""
    return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(path.open())]


def best_json(path: Path) -> dict:
    """best.json without its time stamp and model hash (a .keras archive holds save times)."""
    info = json.loads(path.read_text())
    info.pop("created", None)
    info.pop("model_sha256", None)
    return info


def assert_same_weights(a: Path, b: Path) -> None:
    """Two model files hold the same layers with identical weights."""
    import keras

    wa = keras.saving.load_model(a, compile=False).get_weights()
    wb = keras.saving.load_model(b, compile=False).get_weights()
    assert len(wa) == len(wb) > 0, (len(wa), len(wb))
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_array_equal(x, y)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


# -- a command killed at an exact point ------------------------------------------------------------

DRIVER = r'''
import os, re, signal, sys
point, pattern, nth = sys.argv[1], re.compile(sys.argv[2]), int(sys.argv[3])
seen = [0]
def reached(text):
    if pattern.search(text):
        seen[0] += 1
        return seen[0] == nth
    return False
if point in ("before-rename", "after-rename"):
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        hit = reached(os.fsdecode(dst))
        if hit and point == "before-rename":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real_replace(src, dst, *args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    os.replace = replace
elif point == "fit":  # the nth keras.Model.fit call: a run's training is starting
    import keras
    real_fit = keras.Model.fit
    def fit(self, *args, **kwargs):
        if reached("fit"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fit(self, *args, **kwargs)
    keras.Model.fit = fit
from toonvision.cli import main
main(sys.argv[4:], prog_name="toonvision")
'''


def run_killed(args: Sequence[Any], point: str, pattern: str, nth: int = 1, timeout: float = 300) -> str:
    """Run ``toonvision ARGS`` in a subprocess and SIGKILL it at the nth ``point`` matching ``pattern``
    (before-rename, after-rename: os.replace's destination; fit: Keras' fit). Asserts the kill happened."""
    command = [sys.executable, "-c", DRIVER, point, pattern, str(nth), *map(str, args)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == -9, f"expected a kill at {point} {pattern!r} #{nth}, got exit {done.returncode}:\n" \
                                  f"{done.stdout}{done.stderr}"
    return done.stdout + done.stderr
