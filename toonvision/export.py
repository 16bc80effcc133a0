"""``toonvision export``: a trained model as a TensorFlow SavedModel, an ONNX file or a LiteRT file, checked.

    models/<task>/best.keras + best.json      or ensemble.keras + ensemble.json, or a 2022 HDF5
                 │                            model with --classes
                 │  Keras' Model.export (tf_saved_model, onnx, litert)
                 ▼
    models/<task>/best.onnx                   --format onnx          (--out PATH)
                 best.tflite                  --format litert
                 best_saved_model/            --format savedmodel
                 best.onnx.json               beside each: classes in output order, display names,
                                              image size, resize, the source's SHA-256, format,
                                              versions and the check

The export is the same network, preprocessing included: it takes float32 RGB 0..255 batches of
(n, height, width, 3), as best.keras does, and gives one probability per class (one sigmoid unit,
P(classes[1]), for a binary model). Before it is reported as done its outputs on a few crops (of the
model's split when best.json has one and the pool holds them, else synthetic images) must equal
Keras' within 1e-4, run by the export's own runtime (onnxruntime, LiteRT, TensorFlow).

Crash safety: the export is built and checked in a hidden folder beside the target
(``.best.onnx.building-<pid>-<random>``), then renamed into place (a SavedModel folder swapped in
whole), then its JSON written atomically. A failed check or a kill leaves any previous export as it
was (a kill between the two renames leaves an export its JSON does not describe, which predict
refuses by SHA-256); the next export removes the build folders of killed ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toonvision import __version__
from toonvision.constants import EXPORT_FORMATS, EXPORT_TOLERANCE
from toonvision.decode import decode_files
from toonvision.errors import (
    ExportError,
    ImageError,
    ModelFileError,
    SplitError,
    UsageError,
    write_error,
)
from toonvision.fsutil import (
    atomic_write_text,
    build_folder,
    file_sha256,
    remove_stale_temp_files,
    swap_directory,
)
from toonvision.layout import Layout
from toonvision.modelfile import (
    LoadedModel,
    ModelInfo,
    exported_format,
    model_format,
    open_model,
)
from toonvision.runtimes import (
    export_info_path,
    export_sha256,
    litert_interpreter,
    model_batch,
    open_exported,
    require,
)
from toonvision.split import plan_from_dict

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

KERAS_FORMATS = {"savedmodel": "tf_saved_model", "onnx": "onnx", "litert": "litert"}  # Model.export's names
FORMAT_NAMES = {"savedmodel": "TensorFlow SavedModel", "onnx": "ONNX", "litert": "LiteRT"}
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}  # predict tells them by these; a SavedModel is a folder
SAVED_MODEL_SUFFIX = "_saved_model"
CHECK_IMAGES = 8  # crops compared between Keras and the export
CHECK_SPLITS = ("validate", "test", "train")  # where check crops are taken from, first found first
PACKAGES = {  # what each format needs beyond TensorFlow: (module, package, what for)
    "onnx": (("tf2onnx", "tf2onnx", "ONNX export"), ("onnx", "onnx", "ONNX export"),
             ("onnxruntime", "onnxruntime", "Checking an ONNX export")),
    "litert": (),
    "savedmodel": (),
}


@dataclass(frozen=True)
class ExportResult:
    """An export that passed its check: where it is, its JSON, and how close it came to Keras."""

    source: Path
    path: Path
    info_path: Path
    format: str
    images: int
    images_from: str
    max_difference: float
    seconds: float

    def summary(self) -> str:
        kind = "folder" if self.path.is_dir() else f"{_size_text(self.path)}"
        return "\n".join([
            f"exported {self.source} as {FORMAT_NAMES[self.format]}: {self.path} ({kind}) and {self.info_path.name}",
            f"checked on {self.images} {self.images_from}: largest difference from Keras {self.max_difference:.2g} "
            f"(allowed {EXPORT_TOLERANCE:g}); {self.seconds:.1f} s",
            f"use it: toonvision predict {self.path} CROPS... --format csv",
        ])


def default_export_path(model: Path, fmt: str) -> Path:
    """Beside the model: ``best.keras`` -> ``best.onnx``, ``best.tflite``, ``best_saved_model/``."""
    model = Path(model)
    if fmt == "savedmodel":
        return model.with_name(model.stem + SAVED_MODEL_SUFFIX)
    return model.with_suffix(SUFFIXES[fmt])


def export_model(
    layout: Layout | None, model: Path, fmt: str, *, out: Path | None = None,
    classes: Sequence[str] | str | None = None, unsafe: bool = False, check_images: int = CHECK_IMAGES,
) -> ExportResult:
    """``toonvision export``: write ``model`` in ``fmt``, with its JSON, once its outputs match Keras'."""
    start = time.perf_counter()
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    for module, package, what in PACKAGES[fmt]:
        require(module, package, what)
    if fmt == "litert":
        litert_interpreter()
    loaded = open_model(model, classes, unsafe)
    info = loaded.info
    target = check_target(Path(out) if out is not None else default_export_path(info.path, fmt), fmt, info.path)
    batch, images_from = check_batch(layout, info, check_images)
    original = loaded.probabilities(batch)  # as Keras runs it: in float16 for a mixed-precision model
    loaded = LoadedModel(float32_model(loaded.model), info)
    expected = loaded.probabilities(batch)
    remove_stale_temp_files(target)
    build = build_folder(target)
    try:
        try:
            build.mkdir(parents=True)
        except OSError as exc:
            raise write_error(target, exc) from None
        artifact = build / target.name
        _keras_export(loaded, artifact, fmt)
        difference, runtime = _check(artifact, fmt, info, batch, expected)
        record = export_record(loaded, fmt, artifact, runtime, len(batch), images_from, difference)
        record["check"]["float32_difference"] = float(np.max(np.abs(expected - original))) if len(batch) else 0.0
        del runtime  # let go of the files before they move
        _place(artifact, target)
        atomic_write_text(export_info_path(target), _json(record))
    finally:
        shutil.rmtree(build, ignore_errors=True)
    logger.info("%s: exported as %s, largest difference %.3g", info.path, fmt, difference)
    return ExportResult(info.path, target, export_info_path(target), fmt, len(batch), images_from, difference,
                        round(time.perf_counter() - start, 3))


def check_target(target: Path, fmt: str, source: Path) -> Path:
    """Where the export goes, refused if it names a file or folder that is not an export of this format."""
    if fmt in SUFFIXES and target.suffix.lower() != SUFFIXES[fmt]:
        raise UsageError(f"--out {target}: a {FORMAT_NAMES[fmt]} file's name ends with {SUFFIXES[fmt]}")
    if target.absolute() == Path(source).absolute():
        raise UsageError(f"--out {target} is the model being exported; choose another path")
    if target.exists() or target.is_symlink():
        empty_folder = fmt == "savedmodel" and target.is_dir() and not any(target.iterdir())
        if exported_format(target) != fmt and not empty_folder:
            what = "folder" if target.is_dir() else "file"
            raise UsageError(
                f"--out {target}: an existing {what} that is not a {FORMAT_NAMES[fmt]} export; toonvision only "
                "replaces its own exports: choose another path or remove it"
            )
    return target


def check_batch(layout: Layout | None, info: ModelInfo, count: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """The images an export is checked on: crops of the model's split when the pool has them, else synthetic."""
    arrays: list[np.ndarray] = []
    where = ""
    if layout is not None and info.record is not None and info.record.get("split") is not None:
        paths, where = _split_crops(layout, info, count)
        try:
            arrays = list(decode_files([str(p) for p in paths]))
        except ImageError as exc:
            logger.warning("%s; checking the export on synthetic images instead", exc)
            arrays = []
    found = len(arrays)
    arrays.extend(synthetic_images(info.image_size, count - found))
    if found == 0:
        text = f"synthetic image{'s' if count != 1 else ''}"
    else:
        text = f"crops of the {where} split" + (f" and {count - found} synthetic images" if found < count else "")
    return model_batch(arrays, info), text


def synthetic_images(size: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` uint8 images at ``size``: noise, flat colours and gradients, so every unit is exercised."""
    rng = np.random.default_rng(seed)
    height, width = size
    out = []
    for k in range(max(count, 0)):
        if k % 3 == 0:
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        elif k % 3 == 1:
            image = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
        else:
            ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
            image = np.broadcast_to(ramp * rng.uniform(0.2, 1.0, 3), (height, width, 3)).astype(np.uint8)
        out.append(image)
    return out


def _split_crops(layout: Layout, info: ModelInfo, count: int) -> tuple[list[Path], str]:
    """Up to ``count`` pool crops of the model's split (one class after another), and the split's name."""
    try:
        plan = plan_from_dict(info.record["split"], str(info.path.with_suffix(".json")))
    except SplitError as exc:
        logger.warning("%s; checking the export on synthetic images", exc)
        return [], ""
    for split in CHECK_SPLITS:
        by_class: dict[str, list[Path]] = {}
        for a in plan.files(split):
            if (layout.pool / a.crop).is_file():
                by_class.setdefault(a.cls, []).append(layout.pool / a.crop)
        if by_class:
            mixed = [p for row in _interleave(list(by_class.values())) for p in row]
            return mixed[:count], split
    return [], ""


def _interleave(groups: list[list[Path]]) -> list[list[Path]]:
    """Rows of one item per group: the first of each, then the second of each..."""
    return [[g[i] for g in groups if i < len(g)] for i in range(max(map(len, groups), default=0))]


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` itself, or for a mixed-precision one the same network and weights computing in float32.

    Keras' ONNX export needs float32 layers, and LiteRT's interpreter lacks some float16 ops;
    the weights of a mixed-precision model are float32 already, so nothing is lost.
    """
    config = model.get_config()
    if "mixed_" not in json.dumps(config, default=str):
        return model
    copy = type(model).from_config(_float32_config(config))
    copy.set_weights(model.get_weights())
    logger.info("%s: mixed precision; exporting its float32 twin", model.name)
    return copy


def _float32_config(value: Any) -> Any:
    """A model config with every mixed-precision dtype policy made float32."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy" and str(value.get("config", {}).get("name", "")).startswith(
                "mixed_"):
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_float32_config(v) for v in value]
    if isinstance(value, str) and value.startswith("mixed_"):
        return "float32"
    return value


def _keras_export(loaded: LoadedModel, artifact: Path, fmt: str) -> None:
    """Keras' own export of the loaded model; its errors become an ExportError naming the model."""
    try:
        with warnings.catch_warnings():  # Keras' tf2onnx patch trips NumPy's FutureWarning about np.object
            warnings.simplefilter("ignore", FutureWarning)
            loaded.model.export(str(artifact), format=KERAS_FORMATS[fmt], verbose=False)
    except ExportError:
        raise
    except Exception as exc:  # Keras and the converters raise anything from ValueError to their own errors
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        raise ExportError(
            f"{loaded.info.path}: Keras could not export it as {FORMAT_NAMES[fmt]} ({first}); nothing was written"
        ) from None


def _check(artifact: Path, fmt: str, info: ModelInfo, batch: np.ndarray, expected: np.ndarray) -> tuple[float, Any]:
    """The export's largest difference from Keras on ``batch``; an ExportError past the tolerance."""
    try:
        runtime = open_exported(artifact, fmt).bind(ModelInfo(artifact, info.classes, info.image_size))
        got = runtime.probabilities(batch)
    except ModelFileError:
        raise
    except Exception as exc:  # the runtimes raise RuntimeError, their own Fail errors... for ops they lack
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        raise ExportError(
            f"{info.path}: the {FORMAT_NAMES[fmt]} export does not run ({first}); the export was deleted and "
            "nothing was written"
        ) from None
    if got.shape != expected.shape:
        raise ExportError(f"{info.path}: the {FORMAT_NAMES[fmt]} export gives {got.shape} outputs, Keras "
                          f"{expected.shape}; nothing was written")
    difference = float(np.max(np.abs(got.astype(np.float64) - expected))) if len(batch) else 0.0
    if not math.isfinite(difference) or difference > EXPORT_TOLERANCE:
        raise ExportError(
            f"{info.path}: the {FORMAT_NAMES[fmt]} export's outputs differ from Keras' by up to {difference:.3g} "
            f"on {len(batch)} images (allowed {EXPORT_TOLERANCE:g}); the export was deleted and nothing was written"
        )
    return difference, runtime


def export_record(
    loaded: LoadedModel, fmt: str, artifact: Path, runtime: Any, images: int, images_from: str, difference: float
) -> dict[str, Any]:
    """The JSON beside an export: everything a program needs to feed it and read its outputs."""
    info = loaded.info
    units = int(loaded.model.outputs[0].shape[-1])
    height, width = info.image_size
    return {
        "format": fmt,
        "model_sha256": export_sha256(artifact),
        "task": info.task,
        "classes": list(info.classes),
        "display_names": info.names,
        "image_size": [height, width],
        "resize": info.resize,
        "input": {
            "name": runtime.input_name, "shape": [None, height, width, 3], "dtype": "float32",
            "color": "rgb", "range": "0-255 float; the model rescales itself",
        },
        "output": {
            "units": units,
            "meaning": "P(classes[1]), one sigmoid unit" if units == 1 else "one probability per class, in order",
        },
        "source": {
            "path": str(info.path), "sha256": file_sha256(info.path), "format": model_format(info.path),
            "record": info.path.with_suffix(".json").name if info.record is not None else None,
        },
        "check": {"images": images, "from": images_from, "max_difference": difference,
                  "tolerance": EXPORT_TOLERANCE, "runtime": runtime.source},
        "versions": versions(fmt),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    }


def versions(fmt: str) -> dict[str, str]:
    """toonvision's, TensorFlow's, Keras' and the format's converter and runtime versions."""
    names = ["tensorflow", "keras", *{"onnx": ["tf2onnx", "onnx", "onnxruntime"], "litert": ["ai-edge-litert"],
                                      "savedmodel": []}[fmt]]
    found = {"toonvision": __version__}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _place(artifact: Path, target: Path) -> None:
    """The checked export into place: a file renamed over the old one, a folder swapped in whole."""
    try:
        if artifact.is_dir():
            swap_directory(artifact, target)
        else:
            os.replace(artifact, target)
    except OSError as exc:
        raise write_error(target, exc, "the previous export, if any, was kept") from None


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2) + "\n"


def _size_text(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


__all__ = [
    "CHECK_IMAGES", "ExportResult", "check_batch", "check_target", "default_export_path", "export_model",
    "export_record", "synthetic_images", "versions",
]
