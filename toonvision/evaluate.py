"""What a trained model does, in numbers: ``evaluate`` on its own split, ``predict`` on new images.

    models/<task>/best.keras + best.json          (or a Keras 2 HDF5 file + --classes)
            │   the split of the run that produced the model, rebuilt from best.json:
            │   never a fresh split, whose "test" crops may have been trained on
            ▼
    models/<task>/evaluation/                     (--out DIR)
    ├── evaluation.json        accuracy, loss; per class precision, recall, F1, support;
    │                          macro and weighted averages; the confusion matrix
    ├── predictions.csv        file, actual, predicted, confidence, p_<class>..., in file order
    ├── confusion_matrix.png   raw counts and row-normalised
    └── worst_predictions.png  the most confident mistakes

Metrics are pure numpy functions of (y_true, y_pred); nothing here shuffles, so every
prediction stays aligned with its file. Images are preprocessed as in training: decoded to
8-bit RGB, resized bilinearly (no aspect-ratio padding) to the model's (height, width), fed as
float 0..255 (the models rescale inside). Models load with Keras' ``safe_mode`` on: a model
holding Python code (a ``Lambda`` layer) is refused unless the user passes ``--unsafe``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from toonvision.constants import DEFAULT_BATCH_SIZE, FOLDER_LOCK, IMAGE_SUFFIXES, XML_SUFFIX
from toonvision.errors import ImageError, ModelFileError, PoolError, UsageError
from toonvision.fsutil import atomic_write_text, file_sha256, glob_escape, locked, remove_stale_temp_files
from toonvision.layout import SPLITS, Layout

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    from PIL import Image

    from toonvision.extract import Problem
    from toonvision.split import SplitPlan

logger = logging.getLogger(__name__)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
BEST_MODEL = "best.keras"
EVALUATION_JSON = "evaluation.json"
PREDICTIONS_CSV = "predictions.csv"
CONFUSION_PLOT = "confusion_matrix.png"
WORST_PLOT = "worst_predictions.png"
DEFAULT_WORST = 16
CROSS_ENTROPY_EPSILON = 1e-7  # keras.backend.epsilon(): the clip Keras' cross-entropy losses use
FORMATS = ("table", "csv", "json")


# -- metrics (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class (or an average of them), and how many crops it had."""

    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, float | int]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support}


@dataclass(frozen=True)
class Metrics:
    """Accuracy, per-class scores, macro and weighted averages, and the confusion matrix.

    ``confusion[i][j]`` counts crops of actual class i predicted as class j. A class that is
    never predicted has precision 0 (and F1 0), as scikit-learn reports it by default.
    """

    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    accuracy: float
    per_class: tuple[ClassScores, ...]
    macro: ClassScores
    weighted: ClassScores

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "per_class": {cls: s.to_dict() for cls, s in zip(self.classes, self.per_class)},
            "macro_avg": self.macro.to_dict(),
            "weighted_avg": self.weighted.to_dict(),
            "confusion_matrix": {"rows": "actual", "columns": "predicted", "classes": list(self.classes),
                                 "counts": [list(row) for row in self.confusion]},
        }

    def table(self, names: Mapping[str, str] | None = None) -> str:
        """A classification report for the terminal, one row per class then the averages."""
        names = names or {}
        shown = [_shown(cls, names.get(cls, cls)) for cls in self.classes]
        width = max(len("weighted avg"), *(len(s) for s in shown))
        head = f"{'':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"
        lines = [head]
        for name, s in zip(shown, self.per_class):
            lines.append(f"{name:<{width}}  {s.precision:>9.4f}  {s.recall:>6.4f}  {s.f1:>6.4f}  {s.support:>7}")
        lines.append("")
        lines.append(f"{'accuracy':<{width}}  {'':>9}  {'':>6}  {self.accuracy:>6.4f}  {self.total:>7}")
        for label, s in (("macro avg", self.macro), ("weighted avg", self.weighted)):
            lines.append(f"{label:<{width}}  {s.precision:>9.4f}  {s.recall:>6.4f}  {s.f1:>6.4f}  {s.support:>7}")
        return "\n".join(lines)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts of (actual i, predicted j) as an int64 (num_classes, num_classes) matrix."""
    y_true, y_pred = _as_labels(y_true, num_classes, "y_true"), _as_labels(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> Metrics:
    """Accuracy, per-class precision/recall/F1/support and their macro and weighted averages."""
    classes = tuple(classes)
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    if matrix.sum() == 0:
        raise ValueError("no predictions to score")
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _divide(true_positive, predicted)
    recall = _divide(true_positive, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    per_class = tuple(
        ClassScores(float(p), float(r), float(f), int(s)) for p, r, f, s in zip(precision, recall, f1, support)
    )
    total = int(support.sum())
    weights = support / total
    macro = ClassScores(float(precision.mean()), float(recall.mean()), float(f1.mean()), total)
    weighted = ClassScores(
        float(precision @ weights), float(recall @ weights), float(f1 @ weights), total
    )
    return Metrics(
        classes=classes,
        confusion=tuple(tuple(int(v) for v in row) for row in matrix),
        accuracy=float(true_positive.sum() / total),
        per_class=per_class,
        macro=macro,
        weighted=weighted,
    )


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of each actual class predicted as each class)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return _divide(matrix, matrix.sum(axis=1, keepdims=True))


def decide(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class index and its probability for each row.

    For a sigmoid model's [1 - p, p] rows this is ``p > 0.5``, exactly Keras' binary accuracy.
    """
    probabilities = np.asarray(probabilities)
    indices = probabilities.argmax(axis=1)
    return indices, probabilities[np.arange(len(indices)), indices]


def log_loss(y_true: Sequence[int], probabilities: np.ndarray) -> float:
    """Mean cross-entropy of the true classes, clipped as Keras clips it (so it equals model.evaluate's)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = _as_labels(y_true, probabilities.shape[1], "y_true")
    true = probabilities[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(true, CROSS_ENTROPY_EPSILON, 1 - CROSS_ENTROPY_EPSILON)).mean())


def worst_mistakes(y_true: Sequence[int], y_pred: Sequence[int], confidence: Sequence[float], limit: int) -> list[int]:
    """Indices of wrong predictions, most confident first (ties: file order), at most ``limit``."""
    y_true, y_pred, confidence = np.asarray(y_true), np.asarray(y_pred), np.asarray(confidence)
    wrong = np.flatnonzero(y_true != y_pred)
    order = sorted(wrong.tolist(), key=lambda i: (-float(confidence[i]), i))
    return order[: max(0, limit)]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.broadcast_arrays(
        np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    )
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _as_labels(values: Sequence[int], num_classes: int, name: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{name} must hold class indices in 0..{num_classes - 1}")
    return array.astype(np.int64)


# -- models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What a model file is for: its classes in output order, input size and, if known, its run."""

    path: Path
    classes: tuple[str, ...]
    image_size: tuple[int, int]
    task: str | None = None
    display_names: tuple[tuple[str, str], ...] = ()
    legacy: bool = False  # a Keras 2 HDF5 file
    record: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)  # best.json

    def display(self, cls: str) -> str:
        return dict(self.display_names).get(cls, cls)

    @property
    def names(self) -> dict[str, str]:
        return {cls: self.display(cls) for cls in self.classes}


@dataclass(frozen=True)
class LoadedModel:
    """A loaded Keras model and what it means; ``probabilities`` gives one column per class."""

    model: "keras.Model" = field(repr=False)
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
        if (path / "saved_model.pb").is_file():
            raise ModelFileError(
                f"{path}: a TensorFlow SavedModel folder, which Keras 3 cannot load as a model; "
                "re-save it from the Python that made it with model.save('model.keras')"
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
    raise ModelFileError(
        f"{path}: not a Keras model (neither a .keras zip nor an HDF5 file); "
        "pass the best.keras that `toonvision train` wrote"
    )


def load_model(path: Path, unsafe: bool = False) -> "keras.Model":
    """Load a .keras zip or a Keras 2 HDF5 file (whatever its name says), without compiling.

    ``safe_mode`` stays on unless ``unsafe``: a Lambda layer's Python code would run on loading.
    """
    import keras

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
            import shutil

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
    candidate = resolve_model_file(path).with_suffix(".json")
    if not candidate.is_file():
        return None
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{candidate}: cannot be read ({exc}); train the model again") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{candidate}: not a best.json object; train the model again")
    return data


def parse_classes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``bb,lb,cb,sb`` (or a list) as class names in the model's output order."""
    if text is None:
        return None
    parts = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    classes = tuple(p.strip() for p in parts if p.strip())
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UsageError(f"--classes needs at least 2 different names in the model's output order, e.g. bb,lb,cb,sb; got {text!r}")
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
            raise ModelFileError(f"{file.parent}: best.json lacks classes or image_size; train the model again") from None
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
    info = ModelInfo(file, tuple(given), image_size, task, display, legacy, record)
    return LoadedModel(model, info)


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


def _input_size(model: "keras.Model", file: Path) -> tuple[int, int]:
    if len(model.inputs) != 1:
        raise ModelFileError(f"{file}: the model has {len(model.inputs)} inputs; toonvision feeds one image")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ModelFileError(
            f"{file}: the model's input is {shape}; toonvision feeds RGB images of a fixed size, "
            "(batch, height, width, 3)"
        )
    return int(shape[1]), int(shape[2])


def _check_outputs(model: "keras.Model", file: Path, classes: Sequence[str]) -> None:
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


# -- images in, predictions out ----------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    """One image to classify: a file, or an object cut from a screenshot that has XML beside it."""

    file: str
    obj: int | None = None
    box: tuple[int, int, int, int] | None = None
    label: str | None = None  # the XML label of an object, or the actual class in an evaluation
    png: bytes | None = field(default=None, repr=False)  # the object's crop, as extract cuts it

    def load(self) -> "Image.Image":
        from toonvision.images import decode_image, load_image

        if self.png is not None:
            return decode_image(self.png, self.where)
        return load_image(Path(self.file))

    @property
    def where(self) -> str:
        return self.file if self.obj is None else f"{self.file}: object {self.obj}"


@dataclass(frozen=True)
class Prediction:
    """A model's answer for one image: the class, its probability, and every class's probability."""

    file: str
    predicted: str
    confidence: float
    probabilities: tuple[float, ...]
    obj: int | None = None
    box: tuple[int, int, int, int] | None = None
    label: str | None = None


@dataclass(frozen=True)
class PredictResult:
    """Predictions in input order, and the inputs that could not be read."""

    model: Path
    classes: tuple[str, ...]
    predictions: tuple[Prediction, ...]
    problems: tuple["Problem", ...] = ()

    @property
    def exit_code(self) -> int:
        return 1 if any(p.severity == "error" for p in self.problems) else 0

    def format(self, fmt: str = "table") -> str:
        return format_predictions(self.predictions, self.classes, fmt, self.model)


def collect_inputs(paths: Iterable[Path]) -> tuple[list[InputImage], list["Problem"]]:
    """Expand files and folders into images; a screenshot with a VOC XML beside it becomes its objects.

    Folders are walked in sorted order (hidden folders skipped) for image files; a file named
    on the command line is opened by content whatever its extension.
    """
    from toonvision.extract import Problem

    inputs: list[InputImage] = []
    problems: list[Problem] = []
    for path in _images_for_xml(map(Path, paths)):
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                problems.append(Problem(str(path), f"no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})"))
        elif path.is_file():
            files = [path]
        else:
            problems.append(Problem(str(path), "no such file or folder"))
            continue
        for file in files:
            _add_file(file, inputs, problems)
    return inputs, problems


def _images_for_xml(paths: Iterable[Path]) -> list[Path]:
    """An XML file named on the command line stands for the screenshot beside it; duplicates dropped."""
    out: list[Path] = []
    for path in paths:
        if path.suffix.lower() == XML_SUFFIX and path.is_file():
            images = sorted(p for p in path.parent.glob(f"{glob_escape(path.stem)}.*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            path = images[0] if len(images) == 1 else path
        if path not in out:
            out.append(path)
    return out


def _add_file(file: Path, inputs: list[InputImage], problems: list["Problem"]) -> None:
    from toonvision.extract import Screenshot, read_screenshot

    xml = file.with_suffix(XML_SUFFIX)
    if file.suffix.lower() == XML_SUFFIX:
        problems.append(_problem(str(file), "has no single image beside it (same name, .png/.jpg/...) to classify"))
        return
    if not xml.is_file():
        inputs.append(InputImage(str(file)))
        return
    result = read_screenshot(Screenshot(file, xml, file.name))
    problems.extend(result.problems)
    if not result.crops and not result.has_errors:
        problems.append(_problem(str(xml), "has no usable objects; nothing to classify", "warning"))
    for crop in result.crops:
        inputs.append(InputImage(str(file), crop.obj, crop.box, crop.label, crop.png))


def preprocess(images: Sequence["Image.Image"], image_size: tuple[int, int]) -> np.ndarray:
    """8-bit RGB images -> float32 (n, h, w, 3) in 0..255, resized as Keras' loader resizes.

    ``image_dataset_from_directory`` (and ``datasets.from_plan``) call ``tf.image.resize`` with
    bilinear interpolation, no antialiasing and no aspect-ratio padding; so does this.
    """
    import tensorflow as tf

    if not images:
        return np.zeros((0, *image_size, 3), dtype=np.float32)
    arrays = [
        tf.image.resize(np.asarray(image.convert("RGB"), dtype=np.uint8), image_size, method="bilinear").numpy()
        for image in images
    ]
    return np.stack(arrays).astype(np.float32)


def predict_inputs(
    loaded: LoadedModel, inputs: Sequence[InputImage], batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[list[Prediction], list["Problem"]]:
    """Classify ``inputs`` in order, ``batch_size`` at a time; unreadable images become problems."""
    predictions: list[Prediction] = []
    problems: list[Problem] = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        kept, images = [], []
        for item in chunk:
            try:
                images.append(item.load())
                kept.append(item)
            except ImageError as exc:
                problems.append(_problem(item.file, _without_source(str(exc), item.file), obj=item.obj))
        if not kept:
            continue
        probabilities = loaded.probabilities(preprocess(images, loaded.info.image_size))
        predictions.extend(_predictions(kept, probabilities, loaded.info.classes))
    return predictions, problems


def predict(
    model: Path, paths: Sequence[Path], *, classes: Sequence[str] | str | None = None, unsafe: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PredictResult:
    """``toonvision predict``: classify crops, folders of crops, and screenshots with XML beside them."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if not paths:
        raise UsageError("nothing to classify: pass image files, folders, or screenshots with their XML beside them")
    inputs, problems = collect_inputs(paths)
    loaded = open_model(model, classes, unsafe)
    predictions, more = predict_inputs(loaded, inputs, batch_size)
    return PredictResult(loaded.info.path, loaded.info.classes, tuple(predictions), tuple(problems + more))


def _predictions(items: Sequence[InputImage], probabilities: np.ndarray, classes: Sequence[str]) -> list[Prediction]:
    indices, confidences = decide(probabilities)
    return [
        Prediction(
            item.file, classes[int(i)], float(c), tuple(float(p) for p in row), item.obj, item.box, item.label
        )
        for item, i, c, row in zip(items, indices, confidences, probabilities)
    ]


def format_predictions(
    predictions: Sequence[Prediction], classes: Sequence[str], fmt: str = "table", model: Path | None = None
) -> str:
    """Predictions as an aligned table, CSV (one column per class probability) or JSON."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        rows = [
            {
                "file": p.file, "object": p.obj, "box": list(p.box) if p.box else None, "label": p.label,
                "predicted": p.predicted, "confidence": p.confidence,
                "probabilities": dict(zip(classes, p.probabilities)),
            }
            for p in predictions
        ]
        return json.dumps({"model": str(model) if model else None, "classes": list(classes), "predictions": rows}, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "object", "xmin", "ymin", "xmax", "ymax", "label", "predicted", "confidence",
                         *(f"p_{c}" for c in classes)])
        for p in predictions:
            box = list(p.box) if p.box else ["", "", "", ""]
            writer.writerow([p.file, "" if p.obj is None else p.obj, *box, p.label or "", p.predicted,
                             f"{p.confidence:.6f}", *(f"{v:.6f}" for v in p.probabilities)])
        return buffer.getvalue().rstrip("\n")
    rows = [("file", "object", "box", "label", "predicted", "confidence")]
    for p in predictions:
        box = "" if p.box is None else ",".join(map(str, p.box))
        rows.append((p.file, "" if p.obj is None else str(p.obj), box, p.label or "", p.predicted, f"{p.confidence:.4f}"))
    keep = [i for i in range(len(rows[0])) if any(row[i] for row in rows[1:]) or i in (0, 4, 5)]
    widths = [max(len(row[i]) for row in rows) for i in keep]
    return "\n".join("  ".join(row[i].ljust(w) for i, w in zip(keep, widths)).rstrip() for row in rows)


# -- evaluate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of a model on one split, its predictions in file order, and the files written."""

    model: Path
    task: str
    split: str
    source: str  # where the crops came from: the run's split in best.json, or a split folder
    classes: tuple[str, ...]
    names: Mapping[str, str]
    metrics: Metrics
    loss: float
    predictions: tuple[Prediction, ...]
    recorded: Mapping[str, float] | None  # best.json's metrics for this split, from training
    out: Path
    files: tuple[Path, ...] = ()

    def summary(self) -> str:
        lines = [
            f"{self.model}: task {self.task}, {self.split} split ({self.metrics.total} crops, {self.source})",
            "",
            self.metrics.table(self.names),
            "",
            f"loss {self.loss:.4f}, accuracy {self.metrics.accuracy:.4f}"
            + (
                f" (at training: loss {self.recorded['loss']:.4f}, accuracy {self.recorded['accuracy']:.4f})"
                if self.recorded else ""
            ),
        ]
        if self.files:
            lines.append(f"wrote {', '.join(p.name for p in self.files)} to {self.out}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "task": self.task,
            "split": self.split,
            "source": self.source,
            "classes": list(self.classes),
            "display_names": dict(self.names),
            "crops": self.metrics.total,
            "loss": self.loss,
            **self.metrics.to_dict(),
            "recorded_at_training": dict(self.recorded) if self.recorded else None,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }


def evaluate(
    layout: Layout,
    model: Path | None = None,
    *,
    task: str | None = None,
    split: str = "test",
    classes: Sequence[str] | str | None = None,
    out: Path | None = None,
    unsafe: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    worst: int = DEFAULT_WORST,
    plots: bool = True,
) -> EvaluationResult:
    """``toonvision evaluate``: score a model on the split of the run that produced it.

    With a best.json the split is rebuilt from it and read from the pool (crops the model was
    trained on never reach the test split). A model without one (a Keras 2 HDF5 file) is scored
    on ``img/data/<task>/<split>/``, with a warning that this split may overlap its training data.
    """
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if batch_size < 1 or worst < 0:
        raise UsageError(f"--batch-size must be >= 1 and --worst >= 0, got {batch_size} and {worst}")
    if model is None:
        if task is None:
            raise UsageError("pass a MODEL (a .keras file or a models/<task>/ folder) or --task")
        model = layout.task_models(task)
    loaded = open_model(model, classes, unsafe)
    info = loaded.info
    out = Path(out) if out is not None else info.path.parent / ("evaluation" if split == "test" else f"evaluation_{split}")
    with locked(out / FOLDER_LOCK, str(out)):  # a second evaluation into ``out`` is told at once
        return _score(layout, loaded, task, split, batch_size, out, worst, plots)


def _score(
    layout: Layout, loaded: LoadedModel, task: str | None, split: str, batch_size: int, out: Path, worst: int,
    plots: bool,
) -> EvaluationResult:
    info = loaded.info
    if info.record is not None and info.record.get("split") is not None:
        if task is not None and info.task is not None and task != info.task:
            raise UsageError(f"{info.path} was trained for task {info.task!r}, not {task!r}; leave out --task")
        dataset, source = _dataset_from_record(layout, info, split, batch_size)
        task = info.task or task or "?"
    else:
        task = task or info.task
        if task is None:
            raise UsageError(
                f"{info.path} has no best.json, so the split it was tested on is unknown; pass --task T to "
                "score it on img/data/<T>/ (made by `toonvision split`)"
            )
        dataset, source = _dataset_from_folder(layout, info, task, split, batch_size)
    files, y_true, probabilities = _predict_dataset(loaded, dataset)
    y_pred, confidence = decide(probabilities)
    metrics = classification_metrics(y_true, y_pred, info.classes)
    predictions = tuple(
        Prediction(f, info.classes[int(p)], float(c), tuple(float(v) for v in row), label=info.classes[int(t)])
        for f, t, p, c, row in zip(files, y_true, y_pred, confidence, probabilities)
    )
    recorded = None
    if info.record is not None:
        recorded_metrics = info.record.get("metrics", {}).get(split)
        recorded = dict(recorded_metrics) if isinstance(recorded_metrics, dict) else None
    result = EvaluationResult(
        info.path, task, split, source, info.classes, info.names, metrics, log_loss(y_true, probabilities),
        predictions, recorded, out,
    )
    if recorded and abs(recorded.get("accuracy", metrics.accuracy) - metrics.accuracy) > 1e-6:
        logger.warning(
            "%s: accuracy on %s is %.4f but training recorded %.4f; the pool's crops may have changed since",
            info.path, split, metrics.accuracy, recorded["accuracy"],
        )
    files_written = _write_evaluation(result, out, worst, plots)
    return dataclasses.replace(result, files=tuple(files_written))


def missing_pool_files(plan: "SplitPlan", pool: Path, split: str | None = None) -> list[str]:
    """Crops of ``plan`` (of one split, or all) that are not in the pool any more."""
    return [a.crop for a in plan.assignments if (split is None or a.split == split) and not (pool / a.crop).is_file()]


def _dataset_from_record(layout: Layout, info: ModelInfo, split: str, batch_size: int) -> tuple["tf.data.Dataset", str]:
    from toonvision import datasets
    from toonvision.split import plan_from_dict

    plan = plan_from_dict(info.record["split"], f"{info.path.parent / 'best.json'}")
    if tuple(plan.classes) != info.classes:
        raise ModelFileError(
            f"{info.path}: best.json's split has classes {','.join(plan.classes)} but the model "
            f"{','.join(info.classes)}; train the model again"
        )
    if split not in plan.splits:
        raise UsageError(f"the model's split has no {split} part (splits: {', '.join(plan.splits)})")
    missing = missing_pool_files(plan, layout.pool, split)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PoolError(
            f"{len(missing)} crop{'s' if len(missing) != 1 else ''} of the {split} split this model was "
            f"tested on {'are' if len(missing) != 1 else 'is'} missing from {layout.pool}: {shown}. Restore "
            "them (or pass the --img-dir the model was trained with); toonvision will not score the model on "
            "other crops, which it may have been trained on"
        )
    dataset = datasets.from_plan(plan, layout.pool, split, image_size=info.image_size, batch_size=batch_size)
    run = info.record.get("run")
    return dataset, f"the split of training run {run} (seed {plan.seed}) from best.json"


def _dataset_from_folder(
    layout: Layout, info: ModelInfo, task: str, split: str, batch_size: int
) -> tuple["tf.data.Dataset", str]:
    from toonvision import datasets

    folder = layout.split_dir(task, split)
    if folder.is_dir():
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        if set(found) != set(info.classes):
            raise UsageError(
                f"the model's classes ({','.join(info.classes)}) are not the class folders of {folder} "
                f"({','.join(found) or 'none'}); pass --classes with the classes the model was trained on, in "
                "its output order, or --task with the task it was trained for"
            )
    dataset = datasets.from_directory(
        folder, info.classes, image_size=info.image_size, batch_size=batch_size, shuffle=False
    )
    logger.warning(
        "%s has no best.json: scoring it on %s, which may hold crops it was trained on "
        "(its own split is unknown); treat the numbers as an upper bound", info.path, folder,
    )
    return dataset, f"{folder}; the model's own split is unknown"


def _predict_dataset(loaded: LoadedModel, dataset: "tf.data.Dataset") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Predict every batch in order and keep labels and files aligned with the predictions."""
    import tensorflow as tf

    from toonvision import datasets

    labels, probabilities = [], []
    try:
        for images, y in dataset:
            probabilities.append(loaded.probabilities(images))
            labels.append(np.asarray(y).reshape(-1).astype(np.int64))
    except tf.errors.OpError as exc:
        bad = datasets.find_undecodable(dataset.file_paths)
        if bad is not None:
            raise bad from None
        raise ImageError(f"cannot read the crops to score ({exc.message.splitlines()[0]})") from None
    files = list(dataset.file_paths)
    y_true = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(loaded.info.classes)))
    if len(files) != len(y_true):
        raise ImageError(f"{len(files)} files listed but {len(y_true)} crops read; run the command again")
    return files, y_true, probs


def write_evaluation(result: EvaluationResult, out: Path, *, worst: int = DEFAULT_WORST, plots: bool = True) -> list[Path]:
    """evaluation.json, predictions.csv and the figures, each written atomically.

    A lock on ``out`` keeps two evaluations from mixing their files there.
    """
    out = Path(out)
    with locked(out / FOLDER_LOCK, str(out)):
        return _write_evaluation(result, out, worst, plots)


def _write_evaluation(result: EvaluationResult, out: Path, worst: int, plots: bool) -> list[Path]:
    for name in (EVALUATION_JSON, PREDICTIONS_CSV, CONFUSION_PLOT, WORST_PLOT):
        remove_stale_temp_files(out / name)  # left by a killed evaluation
    written = [out / EVALUATION_JSON, out / PREDICTIONS_CSV]
    atomic_write_text(out / EVALUATION_JSON, json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(out / PREDICTIONS_CSV, predictions_csv(result.predictions, result.classes))
    if not plots:
        return written
    from toonvision import plots as draw

    names = [_shown(c, result.names.get(c, c)) for c in result.classes]
    counts = np.asarray(result.metrics.confusion)
    title = f"{result.task}, {result.split} split: accuracy {result.metrics.accuracy:.3f} ({result.metrics.total} crops)"
    written.append(draw.plot_confusion_matrix(names, counts, row_normalise(counts), out / CONFUSION_PLOT, title))
    indices = worst_mistakes(
        [result.classes.index(p.label) for p in result.predictions],
        [result.classes.index(p.predicted) for p in result.predictions],
        [p.confidence for p in result.predictions], worst,
    )
    if indices:
        images, titles = [], []
        for i in indices:
            p = result.predictions[i]
            try:
                images.append(np.asarray(InputImage(p.file).load()))
            except ImageError as exc:
                logger.warning("%s", exc)
                continue
            titles.append(f"actual {result.names.get(p.label, p.label)}\n"
                          f"predicted {result.names.get(p.predicted, p.predicted)} {p.confidence:.1%}\n"
                          f"{Path(p.file).name}")
        written.append(draw.plot_prediction_grid(
            images, titles, out / WORST_PLOT, f"{len(images)} most confident mistakes ({result.split} split)"
        ))
    else:
        (out / WORST_PLOT).unlink(missing_ok=True)  # a previous evaluation's mistakes are not this one's
    return written


def predictions_csv(predictions: Sequence[Prediction], classes: Sequence[str]) -> str:
    """``file, actual, predicted, confidence, p_<class>...``: one row per crop, in file order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "actual", "predicted", "confidence", *(f"p_{c}" for c in classes)])
    for p in predictions:
        writer.writerow([p.file, p.label or "", p.predicted, f"{p.confidence:.6f}", *(f"{v:.6f}" for v in p.probabilities)])
    return buffer.getvalue()


# -- helpers -----------------------------------------------------------------------------------


def _problem(file: str, message: str, severity: str = "error", obj: int | None = None) -> "Problem":
    from toonvision.extract import Problem

    return Problem(file, message, obj, severity)


def _without_source(text: str, source: str) -> str:
    prefix = f"{source}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _shown(cls: str, display: str) -> str:
    return cls if display == cls else f"{cls} ({display})"

