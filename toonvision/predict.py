"""``toonvision predict``: classify new images with a trained model, one row per image or object.

    best.keras, ensemble.keras, a 2022 .h5   or an export: best.onnx, best.tflite,
    (toonvision.runtimes)                    best_saved_model/ (with the JSON beside it)
    crop.png                                 a crop: one row
    folder/ (any depth, hidden folders       every image file in it, in sorted order
             skipped)
    street/shot1.png + street/shot1.xml      a screenshot with VOC XML beside it (or the XML
                 │                           itself): one row per object, cut as extract cuts it
                 ▼
    file, object, box, label, predicted, confidence, p_<class>...    (table, csv or json)

Images are preprocessed as in training: decoded to 8-bit RGB, resized bilinearly to the model's
(height, width), stretched or aspect-padded as best.json's ``resize`` says
(``toonvision.decode.model_input``), fed as float 0..255 (the models rescale inside). Inputs
are classified in the order given; an unreadable one becomes a Problem (exit 1) and the others
are still classified. An exported model runs in its own runtime (ONNX Runtime, LiteRT,
TensorFlow) on the same preprocessed batches. Nothing is written.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    PIL_IMAGE_SUFFIXES,
    PREDICTION_FORMATS,
    XML_SUFFIX,
)
from toonvision.errors import ImageError, UsageError
from toonvision.extract import Screenshot, read_screenshot
from toonvision.images import decode_image, load_image
from toonvision.metrics import decide
from toonvision.problems import Problem, Severity, has_errors, without_source
from toonvision.runtimes import Runtime, model_batch, open_runtime

if TYPE_CHECKING:
    from PIL import Image



@dataclass(frozen=True)
class InputImage:
    """One image to classify: a file, or an object cut from a screenshot that has XML beside it."""

    file: str
    obj: int | None = None
    box: tuple[int, int, int, int] | None = None
    label: str | None = None  # the XML label of an object, or the actual class in an evaluation
    png: bytes | None = field(default=None, repr=False)  # the object's crop, as extract cuts it

    def load(self) -> Image.Image:
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
    problems: tuple[Problem, ...] = ()

    @property
    def exit_code(self) -> int:
        return 1 if has_errors(self.problems) else 0

    def format(self, fmt: str = "table") -> str:
        return format_predictions(self.predictions, self.classes, fmt, self.model)


def collect_inputs(paths: Iterable[Path]) -> tuple[list[InputImage], list[Problem]]:
    """Expand files and folders into images; a screenshot with a VOC XML beside it becomes its objects.

    Folders are walked in sorted order (hidden folders skipped) for image files; a file named
    on the command line is opened by content whatever its extension.
    """
    inputs: list[InputImage] = []
    problems: list[Problem] = []
    for path in _images_for_xml(map(Path, paths)):
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in PIL_IMAGE_SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                looked = ", ".join(PIL_IMAGE_SUFFIXES)
                problems.append(Problem(str(path), f"no images in this folder (looked for {looked})"))
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
            images = sorted(p for p in path.parent.glob(f"{glob.escape(path.stem)}.*")
                            if p.suffix.lower() in PIL_IMAGE_SUFFIXES and p.is_file())
            path = images[0] if len(images) == 1 else path
        if path not in out:
            out.append(path)
    return out


def _add_file(file: Path, inputs: list[InputImage], problems: list[Problem]) -> None:
    xml = file.with_suffix(XML_SUFFIX)
    if file.suffix.lower() == XML_SUFFIX:
        problems.append(Problem(str(file), "has no single image beside it (same name, .png/.jpg/...) to classify"))
        return
    if not xml.is_file():
        inputs.append(InputImage(str(file)))
        return
    result = read_screenshot(Screenshot(file, xml, file.name))
    problems.extend(result.problems)
    if not result.crops and not result.has_errors:
        problems.append(Problem(str(xml), "has no usable objects; nothing to classify", severity=Severity.WARNING))
    for crop in result.crops:
        inputs.append(InputImage(str(file), crop.obj, crop.box, crop.label, crop.png))


def predict_inputs(
    loaded: Runtime, inputs: Sequence[InputImage], batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[list[Prediction], list[Problem]]:
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
                problems.append(Problem(item.file, without_source(exc, item.file), item.obj))
        if not kept:
            continue
        probabilities = loaded.probabilities(model_batch(images, loaded.info))
        predictions.extend(_predictions(kept, probabilities, loaded.info.classes))
    return predictions, problems


def predict(
    model: Path, paths: Sequence[Path], *, classes: Sequence[str] | str | None = None, unsafe: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PredictResult:
    """``toonvision predict``: classify crops, folders of crops, and screenshots with XML beside them,
    with a Keras model or an export of one."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if not paths:
        raise UsageError("nothing to classify: pass image files, folders, or screenshots with their XML beside them")
    inputs, problems = collect_inputs(paths)
    loaded = open_runtime(model, classes, unsafe)
    predictions, more = predict_inputs(loaded, inputs, batch_size)
    return PredictResult(loaded.info.path, loaded.info.classes, tuple(predictions), tuple(problems + more))


def _predictions(items: Sequence[InputImage], probabilities: np.ndarray, classes: Sequence[str]) -> list[Prediction]:
    indices, confidences = decide(probabilities)
    return [
        Prediction(
            item.file, classes[int(i)], float(c), tuple(float(p) for p in row), item.obj, item.box, item.label
        )
        for item, i, c, row in zip(items, indices, confidences, probabilities, strict=True)
    ]


def format_predictions(
    predictions: Sequence[Prediction], classes: Sequence[str], fmt: str = "table", model: Path | None = None
) -> str:
    """Predictions as an aligned table, CSV (one column per class probability) or JSON."""
    if fmt not in PREDICTION_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(PREDICTION_FORMATS)}, got {fmt!r}")
    if fmt == "json":
        rows = [
            {
                "file": p.file, "object": p.obj, "box": list(p.box) if p.box else None, "label": p.label,
                "predicted": p.predicted, "confidence": p.confidence,
                "probabilities": dict(zip(classes, p.probabilities, strict=True)),
            }
            for p in predictions
        ]
        document = {"model": str(model) if model else None, "classes": list(classes), "predictions": rows}
        return json.dumps(document, indent=2)
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
        obj = "" if p.obj is None else str(p.obj)
        rows.append((p.file, obj, box, p.label or "", p.predicted, f"{p.confidence:.4f}"))
    keep = [i for i in range(len(rows[0])) if any(row[i] for row in rows[1:]) or i in (0, 4, 5)]
    widths = [max(len(row[i]) for row in rows) for i in keep]
    return "\n".join("  ".join(row[i].ljust(w) for i, w in zip(keep, widths, strict=True)).rstrip() for row in rows)



def predictions_csv(predictions: Sequence[Prediction], classes: Sequence[str]) -> str:
    """``file, actual, predicted, confidence, p_<class>...``: one row per crop, in file order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "actual", "predicted", "confidence", *(f"p_{c}" for c in classes)])
    for p in predictions:
        writer.writerow(
            [p.file, p.label or "", p.predicted, f"{p.confidence:.6f}", *(f"{v:.6f}" for v in p.probabilities)]
        )
    return buffer.getvalue()


__all__ = [
    "InputImage", "PredictResult", "Prediction", "collect_inputs", "format_predictions", "predict",
    "predict_inputs", "predictions_csv",
]
