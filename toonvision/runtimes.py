"""Runtimes: probabilities from a model in whatever form it was saved, Keras or exported.

    best.keras, ensemble.keras, a 2022 .h5     Keras (LoadedModel)        tensorflow + keras
    best.onnx        + best.onnx.json          OnnxRuntime                onnxruntime
    best.tflite      + best.tflite.json        LiteRTRuntime              ai-edge-litert (or tf.lite)
    best_saved_model/ + best_saved_model.json  SavedModelRuntime          tensorflow
                 │
                 ▼
    runtime.info: classes in output order, image size, resize     runtime.probabilities(batch): (n, classes)

Every runtime takes the same batch, float32 RGB 0..255 at the model's (height, width) as
``decode.model_input`` makes it (the models rescale inside). An exported model's meaning comes
from the JSON `toonvision export` wrote beside it (the same path plus ``.json``), whose
``model_sha256`` must match the export, as best.json's must match best.keras; without one,
``--classes`` names the classes and the image size is read from the model's input. Nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from toonvision.constants import DEFAULT_RESIZE, RESIZE_MODES
from toonvision.decode import model_input
from toonvision.errors import ExportError, ModelFileError, UsageError
from toonvision.fsutil import file_sha256
from toonvision.modelfile import ModelInfo, exported_format, open_model, parse_classes, read_description

EXPORT_EXTRA = "pip install 'toonvision[export]'"


class Runtime(Protocol):
    """What predict needs of a model: what it means, and its probabilities for a batch."""

    @property
    def info(self) -> ModelInfo: ...

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...


def export_info_path(path: Path) -> Path:
    """The JSON beside an export: ``best.onnx`` -> ``best.onnx.json``, ``best_saved_model/`` -> ``.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_sha256(path: Path) -> str:
    """The SHA-256 of an export: of the file, or over a SavedModel folder's relative paths and file hashes."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def require(module: str, package: str, what: str) -> Any:
    """Import an optional dependency, or an ExportError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(package, what) from None


def missing(package: str, what: str) -> ExportError:
    """The message for an optional package that is not installed: what needs it and how to install it."""
    return ExportError(
        f"{what} needs the Python package {package}, which is not installed; {EXPORT_EXTRA} (or pip install {package})"
    )


def litert_interpreter() -> tuple[type, str]:
    """LiteRT's interpreter class and where it came from: ai-edge-litert, else TensorFlow's own tf.lite."""
    try:
        from ai_edge_litert.interpreter import (
            Interpreter,  # lazy: an optional dependency
        )

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    interpreter = getattr(getattr(tf, "lite", None), "Interpreter", None)
    if interpreter is None:
        raise missing("ai-edge-litert", "Running a LiteRT (.tflite) model")
    return interpreter, "tf.lite"


def columns(raw: Any, count: int, classes: Sequence[str], path: Path) -> np.ndarray:
    """A model's raw (n, units) output as one probability column per class (a sigmoid unit is P(classes[1]))."""
    values = np.asarray(raw, dtype=np.float32).reshape(count, -1)
    if values.shape[1] == 1 and len(classes) == 2:
        return np.concatenate([1.0 - values, values], axis=1)
    if values.shape[1] != len(classes):
        raise ModelFileError(f"{path}: the model gives {values.shape[1]} outputs for {len(classes)} classes")
    return values


class _Exported:
    """An exported model: its info, and ``_raw(images)`` -> the network's output, given by each runtime."""

    input_shape: tuple[Any, ...] = ()
    input_name: str = ""
    output_units: int | None = None
    source = ""  # the runtime that runs it: "onnxruntime", "ai-edge-litert", "tf.lite", "tensorflow"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise ModelFileError(f"{self.path}: the model's classes are not known yet")
        return self._info

    def bind(self, info: ModelInfo) -> _Exported:
        """Give the runtime its meaning, once checked against the network's input and output."""
        _check_fits(self, info)
        self._info = info
        return self

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities of a batch of float RGB 0..255 images."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        if len(batch) == 0:
            return np.zeros((0, len(self.info.classes)), dtype=np.float32)
        return columns(self._raw(batch), len(batch), self.info.classes, self.path)

    def _raw(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntime(_Exported):
    """An ONNX file run by ONNX Runtime (its default providers: the CPU, or a GPU where installed)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        ort = require("onnxruntime", "onnxruntime", "Running an ONNX model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        try:
            self._session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... for bad files
            raise _open_error(path, "ONNX", exc) from None
        self.source = "onnxruntime"
        first = self._session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = tuple(v if isinstance(v, int) else None for v in first.shape)
        out = self._session.get_outputs()[0].shape
        self.output_units = out[-1] if out and isinstance(out[-1], int) else None

    def _raw(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self.input_name: images})[0]


class LiteRTRuntime(_Exported):
    """A LiteRT (.tflite) file run by LiteRT's interpreter, resized to each batch's size."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__(path)
        interpreter, self.source = litert_interpreter()
        try:
            with _native_stderr_hidden():
                self._interpreter = interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad files
            raise _open_error(path, "LiteRT", exc) from None
        self._in = self._interpreter.get_input_details()[0]
        self.input_name = str(self._in["name"])
        self._out_index = self._interpreter.get_output_details()[0]["index"]
        signature = [int(v) for v in self._in.get("shape_signature", self._in["shape"])]
        self.input_shape = tuple(v if v > 0 else None for v in signature)
        self.output_units = int(self._interpreter.get_output_details()[0]["shape"][-1])
        self._batch = -1

    def _raw(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self._batch:
            self._interpreter.resize_tensor_input(self._in["index"], images.shape, strict=False)
            with _native_stderr_hidden():
                self._interpreter.allocate_tensors()
            self._batch = len(images)
        self._interpreter.set_tensor(self._in["index"], images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out_index).copy()


class SavedModelRuntime(_Exported):
    """A TensorFlow SavedModel folder, called through its ``serving_default`` signature."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import tensorflow as tf  # lazy: TensorFlow takes seconds to import

        try:
            self._loaded = tf.saved_model.load(str(path))
            self._function = self._loaded.signatures["serving_default"]
        except Exception as exc:  # TensorFlow raises OSError/KeyError/its own errors for bad folders
            raise _open_error(path, "SavedModel", exc) from None
        inputs = self._function.structured_input_signature[1]
        if len(inputs) != 1:
            raise ModelFileError(f"{path}: the SavedModel takes {len(inputs)} inputs; toonvision feeds one image")
        self.source = "tensorflow"
        self.input_name, spec = next(iter(inputs.items()))
        self.input_shape = tuple(spec.shape.as_list())
        outputs = self._function.structured_outputs
        self._output = sorted(outputs)[0]
        units = outputs[self._output].shape.as_list()[-1]
        self.output_units = int(units) if units is not None else None
        self._tf = tf

    def _raw(self, images: np.ndarray) -> np.ndarray:
        return self._function(**{self.input_name: self._tf.constant(images)})[self._output].numpy()


RUNTIMES: dict[str, type[_Exported]] = {"onnx": OnnxRuntime, "litert": LiteRTRuntime, "savedmodel": SavedModelRuntime}


def open_exported(path: Path, fmt: str) -> _Exported:
    """The runtime of an export, not yet told its classes (see :meth:`_Exported.bind`)."""
    return RUNTIMES[fmt](Path(path))


def open_runtime(path: Path, classes: Sequence[str] | str | None = None, unsafe: bool = False) -> Runtime:
    """Any model predict can run: a Keras model (``open_model``), or an export with its JSON (or ``classes``)."""
    fmt = exported_format(Path(path))
    if fmt is None:
        loaded = open_model(path, classes, unsafe)
        check_resize(loaded.info)
        return loaded
    path = Path(path)
    record = read_export_info(path, fmt)
    runtime = open_exported(path, fmt)
    info = export_model_info(path, record, parse_classes(classes), runtime.input_shape)
    check_resize(info)
    return runtime.bind(info)


def read_export_info(path: Path, fmt: str) -> dict[str, Any] | None:
    """The JSON beside an export (None if there is none), checked to describe this very export."""
    candidate = export_info_path(path)
    data = read_description(candidate, "an export description", "export the model again")
    if data is None:
        return None
    if data.get("format") not in (None, fmt):
        raise ModelFileError(f"{candidate}: describes a {data.get('format')} export, but {path} is {fmt}")
    recorded = data.get("model_sha256")
    if recorded is not None and export_sha256(path) != recorded:
        raise ModelFileError(
            f"{path} is not the export {candidate.name} describes (an export was stopped while replacing "
            "them, or one was copied without the other); run `toonvision export` again"
        )
    return data


def export_model_info(
    path: Path, record: Mapping[str, Any] | None, given: tuple[str, ...] | None, input_shape: Sequence[Any]
) -> ModelInfo:
    """What an export means: its JSON's classes, size, names and resize, or ``given`` and its input's size."""
    if record is None:
        if given is None:
            raise UsageError(
                f"{path} has no {export_info_path(path).name} beside it, so its classes are unknown; pass --classes "
                "with the class names in the model's output order, or export it again with `toonvision export`"
            )
        return ModelInfo(path, given, _input_size(path, input_shape))
    try:
        classes = tuple(str(c) for c in record["classes"])
        size = tuple(int(v) for v in record["image_size"])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{export_info_path(path)}: lacks classes or image_size; export the model again") from None
    if given is not None and given != classes:
        raise UsageError(
            f"{export_info_path(path)} says the classes are {','.join(classes)}; --classes {','.join(given)} "
            "disagrees; leave out --classes"
        )
    names = record.get("display_names")
    display = tuple((str(k), str(v)) for k, v in names.items()) if isinstance(names, dict) else ()
    task = str(record["task"]) if record.get("task") else None
    resize = str(record.get("resize") or DEFAULT_RESIZE)
    return ModelInfo(path, classes, (size[0], size[1]), task, display, False, record, resize)


def check_resize(info: ModelInfo) -> None:
    """A resize mode this version applies, so crops are fitted to the model's size as in training."""
    if info.resize not in RESIZE_MODES:
        raise ModelFileError(
            f"{info.path}: made with --resize {info.resize}, which this toonvision cannot apply "
            f"(it knows {', '.join(RESIZE_MODES)}); upgrade toonvision"
        )


def model_batch(images: Sequence[Any], info: ModelInfo) -> np.ndarray:
    """PIL images or uint8 arrays as the model's input batch: its size, its resize mode, float32 0..255."""
    check_resize(info)
    return model_input(images, info.image_size, info.resize)


def _input_size(path: Path, shape: Sequence[Any]) -> tuple[int, int]:
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or not isinstance(shape[2], int):
        raise ModelFileError(
            f"{path}: the model's input is {tuple(shape)}; toonvision feeds RGB images of a fixed size, "
            "(batch, height, width, 3)"
        )
    return int(shape[1]), int(shape[2])


def _check_fits(runtime: _Exported, info: ModelInfo) -> None:
    """The network takes ``info.image_size`` RGB images and has a unit per class (or one sigmoid unit)."""
    shape = runtime.input_shape
    if len(shape) == 4 and None not in shape[1:] and tuple(shape[1:]) != (*info.image_size, 3):
        raise ModelFileError(
            f"{runtime.path}: the model takes {tuple(shape[1:])} inputs but its JSON says "
            f"{info.image_size[0]}x{info.image_size[1]} RGB; the two files do not belong together: export again"
        )
    units = runtime.output_units
    if units is not None and not (units == len(info.classes) or (units == 1 and len(info.classes) == 2)):
        raise ModelFileError(
            f"{runtime.path}: the model has {units} output units but {len(info.classes)} classes "
            f"({','.join(info.classes)}); pass the classes it was trained on"
        )


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """Hide what native code writes to stderr for the block (LiteRT's "INFO: Created ... delegate" line,
    which no Python setting silences); Python's own errors are raised, not written, so none is lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _open_error(path: Path, what: str, exc: Exception) -> ModelFileError:
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    return ModelFileError(f"{path}: cannot open this {what} model ({first}); it may be damaged: export it again")


__all__ = [
    "EXPORT_EXTRA", "LiteRTRuntime", "OnnxRuntime", "RUNTIMES", "Runtime", "SavedModelRuntime",
    "check_resize", "columns", "export_info_path", "export_model_info", "export_sha256", "litert_interpreter",
    "missing", "model_batch", "open_exported", "open_runtime", "read_export_info", "require",
]
