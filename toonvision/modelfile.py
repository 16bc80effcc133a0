"""Model files: tell a .keras zip from a Keras 2 HDF5 file, load it safely, and learn what it means.

    models/<task>/best.keras + best.json     classes, image size, resize mode, task, display names, the
    (or any .keras/.h5 file + --classes)     run's split; best.json's model_sha256 must match the file
                 │
                 ▼
    LoadedModel(model, ModelInfo)            probabilities(images): one column per class

The format is told by the file's first bytes, not its name (the original project saved HDF5
files as ``.keras``). Keras' ``safe_mode`` stays on: a model holding Python code (a ``Lambda``
layer) is refused unless the user passes ``--unsafe``. A model is checked against its classes
before use: one RGB input of a fixed size, one (batch, classes) output, one unit per class (or
one sigmoid unit for two classes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toonvision.constants import DEFAULT_RESIZE, RESIZE_MODES
from toonvision.errors import ModelFileError, UsageError
from toonvision.fsutil import file_sha256
from toonvision.layout import BEST_MODEL

if TYPE_CHECKING:
    import keras

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
TFLITE_IDENTIFIER = b"TFL3"  # a LiteRT flatbuffer's file identifier, at bytes 4..8
ONNX_SUFFIX = ".onnx"
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass(frozen=True)
class ModelInfo:
    """What a model file is for: its classes in output order, input size and resize mode, and, if known, its run."""

    path: Path
    classes: tuple[str, ...]
    image_size: tuple[int, int]
    task: str | None = None
    display_names: tuple[tuple[str, str], ...] = ()
    legacy: bool = False  # a Keras 2 HDF5 file
    record: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)  # best.json
    resize: str = DEFAULT_RESIZE  # how images become image_size (toonvision.decode.resize); best.json's "resize"

    def display(self, cls: str) -> str:
        return dict(self.display_names).get(cls, cls)

    @property
    def names(self) -> dict[str, str]:
        return {cls: self.display(cls) for cls in self.classes}


@dataclass(frozen=True)
class LoadedModel:
    """A loaded Keras model and what it means; ``probabilities`` gives one column per class."""

    model: keras.Model = field(repr=False)
    info: ModelInfo

    @property
    def sigmoid(self) -> bool:
        """One output unit: P(classes[1])."""
        return int(self.model.outputs[0].shape[-1]) == 1

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities of a batch of float RGB 0..255 images."""
        raw = np.asarray(self.model.predict_on_batch(images), dtype=np.float32).reshape(len(images), -1)
        if self.sigmoid:
            return np.concatenate([1.0 - raw, raw], axis=1)
        return raw


def resolve_model_file(path: Path) -> Path:
    """A model file, or ``best.keras`` inside a ``models/<task>/`` folder; a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        if (path / BEST_MODEL).is_file():
            return path / BEST_MODEL
        if (path / SAVED_MODEL_FILE).is_file():
            raise ModelFileError(
                f"{path}: a TensorFlow SavedModel folder, which Keras 3 cannot load as a model; "
                "`toonvision predict` runs it (with the JSON `toonvision export` wrote beside it), the other "
                "commands need the .keras model it was exported from"
            )
        raise ModelFileError(f"{path}: no {BEST_MODEL} in this folder; train a model with `toonvision train` first")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; pass a .keras/.h5 file or a models/<task>/ folder")
    return path


def model_format(path: Path) -> str:
    """``"keras"`` (a .keras zip) or ``"hdf5"`` (Keras 2), told by the file's signature, not its name."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model ({exc.strerror or exc})") from None
    if head == HDF5_SIGNATURE:
        return "hdf5"
    if head.startswith(ZIP_SIGNATURE):
        return "keras"
    exported = exported_format(path)
    if exported is not None:
        raise ModelFileError(
            f"{path}: an exported {exported} model, which only `toonvision predict` runs; the other commands "
            "need the .keras model it was exported from"
        )
    raise ModelFileError(
        f"{path}: not a Keras model (neither a .keras zip nor an HDF5 file); "
        "pass the best.keras that `toonvision train` wrote"
    )


def exported_format(path: Path) -> str | None:
    """``"savedmodel"``, ``"onnx"`` or ``"litert"`` for a model as `toonvision export` writes it; None otherwise.

    A SavedModel is a folder with saved_model.pb, a LiteRT file has its flatbuffer identifier, an
    ONNX file (a bare protobuf, with no signature) is told by its ``.onnx`` name.
    """
    path = Path(path)
    if path.is_dir():
        return "savedmodel" if (path / SAVED_MODEL_FILE).is_file() else None
    if not path.is_file():
        return None
    if path.suffix.lower() == ONNX_SUFFIX:
        return "onnx"
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    return "litert" if head[4:8] == TFLITE_IDENTIFIER else None


def load_model(path: Path, unsafe: bool = False) -> keras.Model:
    """Load a .keras zip or a Keras 2 HDF5 file (whatever its name says), without compiling.

    ``safe_mode`` stays on unless ``unsafe``: a Lambda layer's Python code would run on loading.
    """
    import keras  # lazy: TensorFlow takes seconds to import

    path = resolve_model_file(path)
    kind = model_format(path)
    suffix = ".h5" if kind == "hdf5" else ".keras"
    with _named(path, suffix) as readable:
        try:
            model = keras.saving.load_model(readable, compile=False, safe_mode=not unsafe)
        except Exception as exc:  # Keras raises ValueError, TypeError, KeyError, OSError... for bad files
            raise _load_error(path, kind, exc) from None
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


@contextlib.contextmanager
def _named(path: Path, suffix: str) -> Iterator[str]:
    """``path`` itself, or a link to it named ``model<suffix>`` (Keras picks its loader by name)."""
    if path.suffix.lower() == suffix or (suffix == ".h5" and path.suffix.lower() == ".hdf5"):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="toonvision-model-") as folder:
        link = Path(folder) / f"model{suffix}"
        try:
            os.symlink(path.absolute(), link)
        except OSError:
            shutil.copyfile(path, link)
        yield str(link)


def _load_error(path: Path, kind: str, exc: Exception) -> ModelFileError:
    message = str(exc)
    if "safe_mode" in message or "Lambda" in message:
        return ModelFileError(
            f"{path}: the model holds Python code (a Lambda layer) that would run while loading, so "
            "toonvision refuses it: a model file from someone else could run any command on this machine. "
            "If you made this file yourself or trust where it came from, pass --unsafe"
        )
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    what = "Keras 2 HDF5" if kind == "hdf5" else ".keras"
    return ModelFileError(
        f"{path}: cannot load this {what} model ({first[:300]}); it may be damaged, or use layers this "
        "Keras does not know; re-save it with model.save('model.keras')"
    )


def read_model_info(path: Path) -> dict[str, Any] | None:
    """The JSON beside a model file (``best.keras`` -> ``best.json``), or None if there is none."""
    beside = resolve_model_file(path).with_suffix(".json")
    return read_description(beside, "a best.json object", "train the model again")


def read_description(candidate: Path, what: str, fix: str) -> dict[str, Any] | None:
    """The JSON object that describes a model or an export; None if the file is not there."""
    if not candidate.is_file():
        return None
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{candidate}: cannot be read ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{candidate}: not {what}; {fix}")
    return data


def parse_classes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``bb,lb,cb,sb`` (or a list) as class names in the model's output order."""
    if text is None:
        return None
    parts = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    classes = tuple(p.strip() for p in parts if p.strip())
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UsageError(
            f"--classes needs at least 2 different names in the model's output order, e.g. bb,lb,cb,sb; got {text!r}"
        )
    return classes


def open_model(path: Path, classes: Sequence[str] | str | None = None, unsafe: bool = False) -> LoadedModel:
    """Load a model with its meaning (best.json, or ``classes`` for a bare/HDF5 file) and check they fit."""
    file = resolve_model_file(path)
    legacy = model_format(file) == "hdf5"
    record = read_model_info(file)
    given = parse_classes(classes)
    if record is not None:
        try:
            recorded = tuple(str(c) for c in record["classes"])
            size = tuple(int(v) for v in record["image_size"])
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(
                f"{file.parent}: best.json lacks classes or image_size; train the model again"
            ) from None
        if given is not None and given != recorded:
            raise UsageError(
                f"{file}: best.json says the classes are {','.join(recorded)}; --classes {','.join(given)} "
                "disagrees; leave out --classes"
            )
        given = recorded
        _check_model_hash(file, record)
    elif given is None:
        kind = "a Keras 2 HDF5 model" if legacy else "a model without best.json beside it"
        raise UsageError(
            f"{file} is {kind}, so its classes are unknown; pass --classes with the class names in "
            "the model's output order, e.g. --classes bb,lb,cb,sb"
        )
    model = load_model(file, unsafe)
    image_size = _input_size(model, file)
    if record is not None and tuple(size) != image_size:
        raise ModelFileError(
            f"{file}: the model takes {image_size[0]}x{image_size[1]} images but best.json says "
            f"{size[0]}x{size[1]}; the two files do not belong together: train again"
        )
    _check_outputs(model, file, given)
    display = ()
    if record is not None and isinstance(record.get("display_names"), dict):
        display = tuple((str(k), str(v)) for k, v in record["display_names"].items())
    task = str(record["task"]) if record is not None and record.get("task") else None
    info = ModelInfo(file, tuple(given), image_size, task, display, legacy, record=record,
                     resize=_resize_mode(file, record))
    return LoadedModel(model, info)


def _resize_mode(file: Path, record: Mapping[str, Any] | None) -> str:
    """best.json's resize mode; ``stretch`` for a model without one (every model before --resize)."""
    mode = DEFAULT_RESIZE if record is None else record.get("resize", DEFAULT_RESIZE)
    if mode not in RESIZE_MODES:
        raise ModelFileError(
            f"{file.with_suffix('.json')}: resize {mode!r} is not one of {', '.join(RESIZE_MODES)}; "
            "train the model again"
        )
    return str(mode)


def _check_model_hash(file: Path, record: Mapping[str, Any]) -> None:
    """Refuse a model file that is not the one its best.json describes (a promotion cut short)."""
    recorded = record.get("model_sha256")
    if recorded is None or file_sha256(file) == recorded:
        return
    task = record.get("task") or "T"
    raise ModelFileError(
        f"{file} is not the model {file.with_suffix('.json').name} describes (a training was stopped while "
        f"replacing them); run `toonvision train --task {task} --resume` with the same options to finish it"
    )


def _input_size(model: keras.Model, file: Path) -> tuple[int, int]:
    if len(model.inputs) != 1:
        raise ModelFileError(f"{file}: the model has {len(model.inputs)} inputs; toonvision feeds one image")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ModelFileError(
            f"{file}: the model's input is {shape}; toonvision feeds RGB images of a fixed size, "
            "(batch, height, width, 3)"
        )
    return int(shape[1]), int(shape[2])


def _check_outputs(model: keras.Model, file: Path, classes: Sequence[str]) -> None:
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        shapes = ", ".join(str(tuple(o.shape)) for o in model.outputs)
        raise ModelFileError(f"{file}: the model outputs {shapes}; a classifier outputs (batch, classes)")
    units = int(model.outputs[0].shape[-1])
    if not (units == len(classes) or (units == 1 and len(classes) == 2)):
        raise ModelFileError(
            f"{file}: the model has {units} output unit{'s' if units != 1 else ''} but {len(classes)} classes "
            f"were given ({','.join(classes)}); a binary model has 1 sigmoid unit, a multiclass one a unit "
            "per class. Pass the classes it was trained on"
        )


__all__ = [
    "LoadedModel", "ModelInfo", "exported_format", "load_model", "model_format", "open_model", "parse_classes",
    "read_model_info", "resolve_model_file",
]
