"""The classical reference of ``compare``: colour histograms and a grey thumbnail, a balanced logistic regression.

    pool crops, decoded as training decodes them (toonvision.cache / toonvision.decode)
        │ features(): per crop, a joint RGB histogram (4x4x4 bins), hue, saturation and value
        │             histograms (16, 8, 8 bins), each a fraction of the crop's pixels, and an 8x8
        │             grey thumbnail resized by toonvision.decode.resize with the run's --resize mode
        ▼
    (n, 160) float32 ──fit()──▶ StandardScaler -> LogisticRegression(C=0.1, class_weight="balanced")
                     ──score()──▶ accuracy, log loss, macro-F1 of one split

``compare --models reference baseline ...`` fits it on each run's train split and scores it on the
same validation and test crops as the CNNs (:func:`reference_run`), so a user sees at once
whether a network beats a trivial model on their data. It trains in seconds and has no epochs.
Everything here is pure: nothing is written (compare writes its rows).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toonvision.constants import DEFAULT_RESIZE
from toonvision.decode import check_resize_mode, resize
from toonvision.ledger import RunRecord
from toonvision.metrics import classification_metrics, log_loss

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from toonvision.cache import CropCache
    from toonvision.split import SplitPlan

logger = logging.getLogger(__name__)

REFERENCE_MODEL = "reference"  # its name in compare --models
RGB_BINS = 4  # per channel of the joint RGB histogram: 64 cells
HSV_BINS = (16, 8, 8)  # hue, saturation, value
THUMBNAIL = (8, 8)  # (height, width) of the grey thumbnail
MAX_ITER = 2000  # lbfgs iterations; a few hundred suffice on standardised features
# Inverse L2 strength. On BCCD (2 grouped splits) C=1, 0.1, 0.01 gave validation macro-F1 0.960, 0.966,
# 0.967 and log loss 0.066, 0.042, 0.041: 1 overfits (train accuracy 0.9997); 0.1 keeps small pools from underfitting.
C = 0.1
FEATURES = RGB_BINS ** 3 + sum(HSV_BINS) + THUMBNAIL[0] * THUMBNAIL[1]
_SPLITS = ("train", "validate", "test")


@dataclass(frozen=True)
class Scores:
    """One split's accuracy, log loss (as Keras computes it) and macro-F1."""

    accuracy: float
    loss: float
    macro_f1: float


def features(images: Sequence[np.ndarray], resize_mode: str = DEFAULT_RESIZE) -> np.ndarray:
    """(n, FEATURES) float32: colour histograms and a grey thumbnail of each (h, w, 3) uint8 crop."""
    check_resize_mode(resize_mode)
    rows = np.zeros((len(images), FEATURES), np.float32)
    for i, image in enumerate(images):
        rows[i] = _crop_features(np.asarray(image, np.uint8), resize_mode)
    return rows


def _crop_features(image: np.ndarray, resize_mode: str) -> np.ndarray:
    from PIL import Image  # lazy, as everywhere: only compare's reference needs it here

    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"a crop must be (height, width, 3) uint8, got shape {image.shape}")
    pixels = image.reshape(-1, 3).astype(np.int64)
    count = float(len(pixels))
    cells = pixels * RGB_BINS // 256
    joint = np.bincount((cells[:, 0] * RGB_BINS + cells[:, 1]) * RGB_BINS + cells[:, 2], minlength=RGB_BINS ** 3)
    hsv = np.asarray(Image.fromarray(image, "RGB").convert("HSV"), np.int64).reshape(-1, 3)
    channels = [np.bincount(hsv[:, c] * bins // 256, minlength=bins) for c, bins in enumerate(HSV_BINS)]
    thumbnail = resize(image, THUMBNAIL, mode=resize_mode).numpy()
    grey = thumbnail @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0  # ITU-R 601 luma, as PIL's "L"
    return np.concatenate([joint / count, *(c / count for c in channels), grey.reshape(-1)]).astype(np.float32)


def fit(x: np.ndarray, y: Sequence[int], seed: int = 0) -> Pipeline:
    """A StandardScaler + class-balanced multinomial logistic regression fitted on ``x`` and labels ``y``."""
    # scikit-learn loads only when the reference is fitted: it takes a second to import.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y, np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("the reference model needs crops of at least 2 classes to fit")
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=MAX_ITER, random_state=seed)
    )
    return model.fit(np.asarray(x, np.float64), y)


def probabilities(model: Pipeline, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, num_classes) probabilities, one column per class index (a class unseen in training gets 0)."""
    out = np.zeros((len(x), num_classes), np.float64)
    if len(x):
        out[:, model.classes_] = model.predict_proba(np.asarray(x, np.float64))
    return out


def score(model: Pipeline, x: np.ndarray, y: Sequence[int], classes: Sequence[str]) -> Scores:
    """Accuracy, log loss and macro-F1 of ``model`` on ``x`` with true labels ``y`` (indices into ``classes``)."""
    p = probabilities(model, x, len(classes))
    predicted = p.argmax(axis=1)
    metrics = classification_metrics(list(y), list(predicted), list(classes))
    return Scores(float(metrics.accuracy), log_loss(list(y), p), float(metrics.macro.f1))


class FeatureTable:
    """The features of a pool's crops, computed once however many runs re-split them."""

    def __init__(self, resize_mode: str = DEFAULT_RESIZE) -> None:
        self.resize_mode = check_resize_mode(resize_mode)
        self._rows: dict[str, np.ndarray] = {}

    def rows(self, paths: Sequence[str], cache: CropCache) -> np.ndarray:
        """(len(paths), FEATURES) features of the crops of ``paths``, decoded through ``cache``."""
        missing = [p for p in dict.fromkeys(paths) if p not in self._rows]
        if missing:
            keys = cache.ensure(missing)
            read = cache.reader()
            images = [read(row) for row in cache.locate(keys)]
            for path, row in zip(missing, features(images, self.resize_mode), strict=True):
                self._rows[path] = row
        return np.stack([self._rows[p] for p in paths]) if paths else np.zeros((0, FEATURES), np.float32)


def reference_run(
    plan: SplitPlan, pool: Path, k: int, seed: int, cache: CropCache, table: FeatureTable,
) -> tuple[RunRecord, Mapping[str, Scores]]:
    """Fit the reference on the train split of ``plan`` (run ``k``, ``seed``) and score every split.

    The record has the ledger's columns (``epochs`` 0: the model has none), macro-F1 included.
    """
    start = time.perf_counter()
    classes = list(plan.classes)
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in _SPLITS:
        chosen = sorted((a for a in plan.assignments if a.split == split), key=lambda a: (classes.index(a.cls), a.crop))
        paths = [str(Path(pool) / a.crop) for a in chosen]
        parts[split] = (table.rows(paths, cache), np.array([classes.index(a.cls) for a in chosen], np.int64))
    model = fit(*parts["train"], seed=seed)
    scores = {split: score(model, x, y, classes) for split, (x, y) in parts.items()}
    record = RunRecord(
        run=k, seed=seed, epochs=0,
        train_loss=scores["train"].loss, train_accuracy=scores["train"].accuracy,
        val_loss=scores["validate"].loss, val_accuracy=scores["validate"].accuracy,
        test_loss=scores["test"].loss, test_accuracy=scores["test"].accuracy,
        seconds=round(time.perf_counter() - start, 3),
        val_macro_f1=scores["validate"].macro_f1, test_macro_f1=scores["test"].macro_f1,
    )
    logger.info("reference run %d (seed %d): val macro-F1 %.4f, test macro-F1 %.4f", k, seed,
                scores["validate"].macro_f1, scores["test"].macro_f1)
    return record, scores


__all__ = [
    "FEATURES", "REFERENCE_MODEL", "FeatureTable", "Scores", "features", "fit", "probabilities",
    "reference_run", "score",
]
