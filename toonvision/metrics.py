"""Classification metrics, as pure numpy functions of (y_true, y_pred) or class probabilities.

Accuracy, per-class precision/recall/F1/support, macro and weighted averages and the
confusion matrix, computed as scikit-learn computes them (a never-predicted class has
precision 0); the loss is clipped as Keras clips it, so it equals ``model.evaluate``'s.
Nothing here loads a model or an image, so ``evaluate``, ``predict`` and ``explain`` share
one decision rule (``decide``) and the tests check the numbers by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toonvision.labels import shown_class

CROSS_ENTROPY_EPSILON = 1e-7  # keras.backend.epsilon(): the clip Keras' cross-entropy losses use


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
            "per_class": {cls: s.to_dict() for cls, s in zip(self.classes, self.per_class, strict=True)},
            "macro_avg": self.macro.to_dict(),
            "weighted_avg": self.weighted.to_dict(),
            "confusion_matrix": {"rows": "actual", "columns": "predicted", "classes": list(self.classes),
                                 "counts": [list(row) for row in self.confusion]},
        }

    def table(self, names: Mapping[str, str] | None = None) -> str:
        """A classification report for the terminal, one row per class then the averages."""
        names = names or {}
        shown = [shown_class(cls, names.get(cls, cls)) for cls in self.classes]
        width = max(len("weighted avg"), *(len(s) for s in shown))
        head = f"{'':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"
        lines = [head]
        for name, s in zip(shown, self.per_class, strict=True):
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
        ClassScores(float(p), float(r), float(f), int(s))
        for p, r, f, s in zip(precision, recall, f1, support, strict=True)
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


__all__ = [
    "ClassScores", "Metrics", "classification_metrics", "confusion_matrix", "decide", "log_loss", "row_normalise",
    "worst_mistakes",
]
