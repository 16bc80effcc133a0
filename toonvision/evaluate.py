"""``toonvision evaluate``: score a trained model, honestly, on the split of the run that made it.

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

The numbers come from ``toonvision.metrics``, the model from ``toonvision.modelfile``. Nothing
here shuffles, so every prediction stays aligned with its file. A model without best.json is
scored on ``img/data/<task>/<split>/`` (checked by ``split.check_split_dirs``), with a warning
that this split may overlap its training data.

Crash safety: ``evaluation/.lock`` is held while scoring, so a second evaluation into the same
folder is refused at once; every file is written atomically, and temp files a killed
evaluation left are removed first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toonvision import datasets
from toonvision import plots as draw
from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EVALUATION_SPLIT,
    DEFAULT_WORST,
    FOLDER_LOCK,
)
from toonvision.decode import find_undecodable
from toonvision.errors import (
    ImageError,
    ModelFileError,
    PoolError,
    SplitError,
    UsageError,
)
from toonvision.fsutil import atomic_write_text, remove_stale_temp_files
from toonvision.labels import shown_class
from toonvision.layout import BEST_INFO, ENSEMBLE_MODEL, SPLITS, Layout, evaluation_dir_name
from toonvision.locks import locked
from toonvision.metrics import (
    Metrics,
    classification_metrics,
    decide,
    log_loss,
    row_normalise,
    worst_mistakes,
)
from toonvision.modelfile import LoadedModel, ModelInfo, open_model
from toonvision.predict import InputImage, Prediction, predictions_csv
from toonvision.problems import without_source
from toonvision.split import SplitPlan, check_split_dirs, plan_from_dict

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
PREDICTIONS_CSV = "predictions.csv"
CONFUSION_PLOT = "confusion_matrix.png"
WORST_PLOT = "worst_predictions.png"


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
    split: str = DEFAULT_EVALUATION_SPLIT,
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
    if out is None:  # an ensemble beside best.keras gets a folder of its own, not best's evaluation
        suffix = "_ensemble" if info.path.name == ENSEMBLE_MODEL else ""
        out = info.path.parent / f"{evaluation_dir_name(split)}{suffix}"
    out = Path(out)
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
        for f, t, p, c, row in zip(files, y_true, y_pred, confidence, probabilities, strict=True)
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


def missing_pool_files(plan: SplitPlan, pool: Path, split: str | None = None) -> list[str]:
    """Crops of ``plan`` (of one split, or all) that are not in the pool any more."""
    return [a.crop for a in plan.assignments if (split is None or a.split == split) and not (pool / a.crop).is_file()]


def _dataset_from_record(layout: Layout, info: ModelInfo, split: str, batch_size: int) -> tuple[tf.data.Dataset, str]:
    plan = plan_from_dict(info.record["split"], str(info.path.parent / BEST_INFO))
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
    dataset = datasets.from_plan(plan, layout.pool, split, image_size=info.image_size, batch_size=batch_size,
                                 resize=info.resize)
    run = info.record.get("run")
    members = info.record.get("members")
    if isinstance(members, list):  # an ensemble.json: its members share only the (fixed) test split
        if split != "test":
            logger.warning("%s averages runs %s, each trained on its own part of the %s split: only the test "
                           "split is unseen by all of them", info.path, ", ".join(map(str, members)), split)
        return dataset, f"the fixed test split of the ensemble of runs {', '.join(map(str, members))}, from " \
                        f"{info.path.with_suffix('.json').name}"
    return dataset, f"the split of training run {run} (seed {plan.seed}) from best.json"


def _dataset_from_folder(
    layout: Layout, info: ModelInfo, task: str, split: str, batch_size: int
) -> tuple[tf.data.Dataset, str]:
    """Batches of ``img/data/<task>/<split>/``, once ``split.check_split_dirs`` finds the model's classes there."""
    folder = layout.split_dir(task, split)
    try:
        check_split_dirs(folder.parent, info.classes, [split])
    except SplitError as exc:
        if not folder.is_dir():
            raise
        raise UsageError(
            f"the model's classes ({','.join(info.classes)}) do not fit the class folders of {folder}: "
            f"{without_source(exc, str(folder))}; or pass --classes with the classes the model was trained on, "
            "in its output order, or --task with the task it was trained for"
        ) from None
    dataset = datasets.from_directory(
        folder, info.classes, image_size=info.image_size, batch_size=batch_size, shuffle=False, resize=info.resize
    )
    logger.warning(
        "%s has no best.json: scoring it on %s, which may hold crops it was trained on "
        "(its own split is unknown); treat the numbers as an upper bound", info.path, folder,
    )
    return dataset, f"{folder}; the model's own split is unknown"


def _predict_dataset(loaded: LoadedModel, dataset: tf.data.Dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Predict every batch in order and keep labels and files aligned with the predictions."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    labels, probabilities = [], []
    try:
        for images, y in dataset:
            probabilities.append(loaded.probabilities(images))
            labels.append(np.asarray(y).reshape(-1).astype(np.int64))
    except tf.errors.OpError as exc:
        bad = find_undecodable(dataset.file_paths)
        if bad is not None:
            raise bad from None
        raise ImageError(f"cannot read the crops to score ({exc.message.splitlines()[0]})") from None
    files = list(dataset.file_paths)
    y_true = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(loaded.info.classes)))
    if len(files) != len(y_true):
        raise ImageError(f"{len(files)} files listed but {len(y_true)} crops read; run the command again")
    return files, y_true, probs


def _write_evaluation(result: EvaluationResult, out: Path, worst: int, plots: bool) -> list[Path]:
    """evaluation.json, predictions.csv and the figures, each written atomically (``evaluate`` holds the lock)."""
    for name in (EVALUATION_JSON, PREDICTIONS_CSV, CONFUSION_PLOT, WORST_PLOT):
        remove_stale_temp_files(out / name)  # left by a killed evaluation
    written = [out / EVALUATION_JSON, out / PREDICTIONS_CSV]
    atomic_write_text(out / EVALUATION_JSON, json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(out / PREDICTIONS_CSV, predictions_csv(result.predictions, result.classes))
    if not plots:
        return written
    names = [shown_class(c, result.names.get(c, c)) for c in result.classes]
    counts = np.asarray(result.metrics.confusion)
    metrics = result.metrics
    title = f"{result.task}, {result.split} split: accuracy {metrics.accuracy:.3f} ({metrics.total} crops)"
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



__all__ = ["EvaluationResult", "evaluate", "missing_pool_files"]
