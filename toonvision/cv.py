"""Grouped, stratified K-fold cross-validation over train+validate, with out-of-fold probabilities.

The test split is set aside first, as ``train`` sets it aside for its run 0 (:func:`_set_test_aside`);
the rest is cut into K folds by scikit-learn's ``StratifiedGroupKFold`` (shuffled with the seed),
with the groups ``split`` uses (same screenshot content or near-duplicate screenshots:
``toonvision.dedup.screenshot_groups``), so a scene never sits in two folds. Fold k trains a fresh
model through ``train.train_run`` on the other folds, of which a grouped slice (``split``'s
train:validate ratio, seed + k) is its validation data; the held-out fold is only predicted, so
every out-of-fold probability comes from a model that never saw that crop, and validation never
touches the fold it scores. The set-aside test crops, which no fold trains on, are predicted by every
fold's model and get the mean (``fold`` "test" in oof.csv), so ``audit`` checks every crop's label. Outputs::

    models/<task>/cv/
    ├── cv.json       options, per-fold and mean +- std (population) of accuracy and macro-F1, per-class F1
    ├── folds.csv     crop, fold: every crop of train+validate exactly once
    ├── oof.csv       crop, label, class, fold, predicted, p_<class>...: out-of-fold probabilities of every crop
    ├── cv_metrics.png  box plot of the fold metrics
    └── ledger.json   the options, pool fingerprint, folds and every finished fold's predictions

Crash safety: a finished fold is committed by rewriting ledger.json atomically (temp file + rename),
so a kill -9 loses at most the fold in progress and ``--resume`` continues with the next fold; a
resume with other options or another pool is refused. The other files are derived from the ledger
when the last fold is in, each written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toonvision import cache, datasets, plots
from toonvision.constants import DEFAULT_CV_SEED, DEFAULT_FOLDS, FOLDER_LOCK
from toonvision.dedup import screenshot_groups
from toonvision.errors import SplitError, ToonVisionError, TrainingError, UsageError
from toonvision.fsutil import atomic_write_text, remove_stale_temp_files
from toonvision.layout import Layout
from toonvision.ledger import describe, make_folder
from toonvision.locks import locked
from toonvision.manifest import CropRecord, load_pool
from toonvision.metrics import classification_metrics
from toonvision.progress import progress_bar
from toonvision.split import Assignment, SplitPlan, plan_split
from toonvision.tasks import Task, get_task
from toonvision.train import TrainConfig, resolve_image_size, resolve_weights, train_run

logger = logging.getLogger(__name__)

CV_DIR = "cv"
CV_JSON = "cv.json"
FOLDS_CSV = "folds.csv"
OOF_CSV = "oof.csv"
CV_PLOT = "cv_metrics.png"
CV_LEDGER = "ledger.json"
FORMAT_VERSION = 1
_DERIVED = (CV_JSON, FOLDS_CSV, OOF_CSV, CV_PLOT)


@dataclass(frozen=True)
class CVConfig:
    """What ``cv`` does: the training options of every fold (``train``'s, ``runs`` unused) and K."""

    train: TrainConfig
    folds: int = DEFAULT_FOLDS
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise UsageError(f"--folds must be an integer >= 2, got {self.folds!r}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        if self.train.seed is None:
            object.__setattr__(self, "train", dataclasses.replace(self.train, seed=DEFAULT_CV_SEED))

    def identity(self) -> dict[str, Any]:
        """The options a resumed (or reused) cross-validation must share, JSON-ready."""
        return {**self.train.identity(), "folds": self.folds}


@dataclass(frozen=True)
class FoldResult:
    """One finished fold: its held-out crops' probabilities (rows in ``crops`` order) and its time."""

    fold: int
    seed: int
    seconds: float
    crops: tuple[str, ...]
    probabilities: tuple[tuple[float, ...], ...] = field(repr=False)
    aside: tuple[str, ...] = ()  # the set-aside test crops, predicted by this fold's model too
    aside_probabilities: tuple[tuple[float, ...], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class CVResult:
    """A finished cross-validation: the folds, out-of-fold probabilities and where the files are."""

    task: str
    classes: tuple[str, ...]
    fold_of: Mapping[str, int] = field(repr=False)  # crop -> fold
    label_of: Mapping[str, str] = field(repr=False)  # crop -> manifest label
    class_of: Mapping[str, str] = field(repr=False)  # crop -> class (test crops set aside included)
    folds: tuple[FoldResult, ...] = field(repr=False)
    info: Mapping[str, Any] = field(repr=False)  # cv.json
    output: Path = Path()
    resumed: int = 0

    def oof(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(crops, class indices, probabilities) of every cross-validated crop, in crop order."""
        rows = {crop: p for f in self.folds for crop, p in zip(f.crops, f.probabilities, strict=True)}
        crops = sorted(rows)
        labels = np.array([self.classes.index(self.class_of[c]) for c in crops], dtype=np.int64)
        probabilities = np.array([rows[c] for c in crops], dtype=np.float64).reshape(len(crops), len(self.classes))
        return crops, labels, probabilities

    def aside(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(crops, class indices, mean probabilities over the fold models) of the set-aside test crops."""
        sums: dict[str, np.ndarray] = {}
        for f in self.folds:
            for crop, p in zip(f.aside, f.aside_probabilities, strict=True):
                sums[crop] = sums.get(crop, 0) + np.asarray(p, dtype=np.float64)
        crops = sorted(sums)
        labels = np.array([self.classes.index(self.class_of[c]) for c in crops], dtype=np.int64)
        probabilities = np.array([sums[c] / len(self.folds) for c in crops]).reshape(len(crops), len(self.classes))
        return crops, labels, probabilities

    def every_crop(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """:meth:`oof` followed by :meth:`aside`: out-of-sample probabilities of every crop of the task."""
        a, b = self.oof(), self.aside()
        return a[0] + b[0], np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])

    def summary(self) -> str:
        """A few lines for the terminal: mean +- std over folds and where the files are."""
        mean, std = self.info["mean"], self.info["std"]
        lines = [
            f"task {self.task}: {self.info['options']['model']}, {len(self.folds)}-fold grouped cross-validation over "
            f"{len(self.fold_of)} crops ({self.info['test_set_aside']} test crops set aside)"
            + (f" (resumed after {self.resumed} folds)" if self.resumed else ""),
            f"accuracy {mean['accuracy']:.4f} +- {std['accuracy']:.4f}, "
            f"macro-F1 {mean['macro_f1']:.4f} +- {std['macro_f1']:.4f} (mean +- std over folds)",
            "per fold macro-F1: " + ", ".join(f"{f['macro_f1']:.4f}" for f in self.info["per_fold"]),
            f"written to {self.output} ({CV_JSON}, {FOLDS_CSV}, {OOF_CSV}, {CV_PLOT})",
        ]
        return "\n".join(lines)


# -- planning (pure) --------------------------------------------------------------------------


def _set_test_aside(records: Sequence[CropRecord], task: Task, config: TrainConfig) -> SplitPlan:
    """The split whose test part cv leaves out: exactly the fixed test split train draws (split.plan_test_split)."""
    return plan_split(records, task, tuple(config.ratios), config.seed, group=config.group,
                      min_per_class=config.min_per_class)


def assign_folds(assignments: Sequence[Assignment], records: Sequence[CropRecord], folds: int, seed: int,
                 group: bool = True) -> dict[str, int]:
    """Crop -> fold (0..folds-1): stratified by class, whole groups per fold (``split``'s groups)."""
    # scikit-learn loads only here: it takes a second to import.
    from sklearn.model_selection import StratifiedGroupKFold

    ordered = sorted(assignments, key=lambda a: a.crop)
    classes = sorted({a.cls for a in ordered})
    keys = screenshot_groups(records).group_of if group else {}
    group_ids: dict[str, int] = {}
    groups = np.array([group_ids.setdefault(keys.get(a.crop, a.crop), len(group_ids)) for a in ordered])
    y = np.array([classes.index(a.cls) for a in ordered])
    if len(group_ids) < folds:
        raise SplitError(f"{folds} folds need at least {folds} {'screenshot groups' if group else 'crops'}, "
                         f"found {len(group_ids)}; lower --folds or label more screenshots")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    with warnings.catch_warnings():  # a class too small for K folds is reported below, naming it
        warnings.simplefilter("ignore", UserWarning)
        for k, (_train, held_out) in enumerate(splitter.split(np.zeros(len(ordered)), y, groups)):
            for i in held_out:
                fold_of[ordered[i].crop] = k
    present = {(fold_of[a.crop], a.cls) for a in ordered}
    missing = [(cls, k) for k in range(folds) for cls in classes if (k, cls) not in present]
    if missing:
        shown = ", ".join(f"{cls} in fold {k}" for cls, k in missing[:5])
        raise SplitError(f"every class needs crops in every fold, but none of {shown}; lower --folds, "
                         "label more screenshots of those classes, or pass --min-per-class to leave them out")
    return fold_of


def fold_plan(base: SplitPlan, records: Sequence[CropRecord], task: Task, config: TrainConfig,
              fold_of: Mapping[str, int], k: int) -> SplitPlan:
    """Fold ``k``'s plan for ``train_run``: a grouped train/validate split of the other folds, fold k as test."""
    held = {crop for crop, f in fold_of.items() if f == k}
    training = [r for r in records if r.crop in fold_of and r.crop not in held]
    kept = config.ratios[0] + config.ratios[1]
    ratios = (config.ratios[0] / kept, config.ratios[1] / kept)
    inner = plan_split(training, task, ratios, config.seed + k, group=config.group)
    if inner.classes != base.classes:
        raise SplitError(f"fold {k}: the training folds lack classes {sorted(set(base.classes) - set(inner.classes))}")
    test = [dataclasses.replace(a, split="test") for a in base.assignments if a.crop in held]
    assignments = sorted([*inner.assignments, *test],
                         key=lambda a: (("train", "validate", "test").index(a.split), a.cls, a.crop))
    return SplitPlan(task.name, config.seed + k, tuple(config.ratios), config.group, base.classes,
                     tuple(assignments), base.excluded, inner.near_merged)


def fold_metrics(result: CVResult) -> list[dict[str, Any]]:
    """Accuracy, macro-F1 and per-class F1 of each fold's held-out predictions."""
    out = []
    for f in result.folds:
        y_true = [result.classes.index(result.class_of[c]) for c in f.crops]
        y_pred = np.asarray(f.probabilities).argmax(axis=1)
        m = classification_metrics(y_true, y_pred, result.classes)
        out.append({"fold": f.fold, "seed": f.seed, "crops": len(f.crops), "accuracy": m.accuracy,
                    "macro_f1": m.macro.f1,
                    "per_class_f1": {c: s.f1 for c, s in zip(result.classes, m.per_class, strict=True)},
                    "seconds": f.seconds})
    return out


# -- the command ------------------------------------------------------------------------------


def cv(layout: Layout, config: CVConfig, progress: bool = False) -> CVResult:
    """Cross-validate ``config.train`` over ``config.folds`` grouped folds; resumable by fold."""
    train_config = config.train
    task = get_task(train_config.task, train_config.task_config)
    with locked(layout.lock_file, str(layout.img_dir)):
        records, _missing = load_pool(layout)
    train_config = resolve_image_size(train_config, records, task)  # auto: from the crops, as train chooses it
    config = dataclasses.replace(config, train=train_config)
    base = _set_test_aside(records, task, train_config)
    pool = [a for a in base.assignments if a.split != "test"]
    pooled = {a.crop for a in pool}
    pool_records = [r for r in records if r.crop in pooled]
    fold_of = assign_folds(pool, pool_records, config.folds, train_config.seed, train_config.group)
    classes = tuple(base.classes)
    label_of = {a.crop: a.label for a in base.assignments}
    class_of = {a.crop: a.cls for a in base.assignments}
    weights = resolve_weights(train_config)
    out = layout.task_models(task.name) / CV_DIR
    make_folder(out, "--models-dir")
    header = {"version": FORMAT_VERSION, "config": config.identity(), "pool": _fingerprint(pool),
              "classes": list(classes), "test_set_aside": len(base.assignments) - len(pool),
              "folds": {crop: fold_of[crop] for crop in sorted(fold_of)}}
    with locked(out / FOLDER_LOCK, str(out)):
        done = _start(out, header, config.resume, config.overwrite)
        resumed = len(done)
        bar = progress_bar(progress, config.folds, f"cv {task.name}", "fold", initial=resumed)
        try:
            for k in range(resumed, config.folds):
                plan = fold_plan(base, pool_records, task, train_config, fold_of, k)
                done.append(_run_fold(layout, train_config, plan, base, k, weights))
                atomic_write_text(out / CV_LEDGER, _ledger_text(header, done))  # the commit point
                bar.update(1)
                gc.collect()
        finally:
            bar.close()
        result = CVResult(task.name, classes, fold_of, label_of, class_of, tuple(done), {}, out, resumed)
        info = _cv_info(result, header)
        result = dataclasses.replace(result, info=info)
        _write_outputs(result)
    return result


def load_cv(layout: Layout, config: CVConfig) -> CVResult | None:
    """The finished cross-validation in models/<task>/cv/ for exactly these options and this pool, else None."""
    train_config = config.train
    task = get_task(train_config.task, train_config.task_config)
    out = layout.task_models(task.name) / CV_DIR
    if not (out / CV_LEDGER).is_file() or not (out / CV_JSON).is_file():
        return None
    records, _missing = load_pool(layout)
    train_config = resolve_image_size(train_config, records, task)
    config = dataclasses.replace(config, train=train_config)
    base = _set_test_aside(records, task, train_config)
    pool = [a for a in base.assignments if a.split != "test"]
    try:
        ledger = json.loads((out / CV_LEDGER).read_text(encoding="utf-8"))
        info = json.loads((out / CV_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if ledger.get("config") != config.identity() or ledger.get("pool") != _fingerprint(pool):
        return None
    done = _folds_of(ledger)
    if len(done) != config.folds:
        return None
    return CVResult(task.name, tuple(ledger["classes"]), {c: int(f) for c, f in ledger["folds"].items()},
                    {a.crop: a.label for a in base.assignments}, {a.crop: a.cls for a in base.assignments},
                    tuple(done), info, out)


def _run_fold(layout: Layout, config: TrainConfig, plan: SplitPlan, base: SplitPlan, k: int,
              weights: str | None) -> FoldResult:
    """Train fold ``k`` through ``train_run``; predict its held-out crops (the plan's test split) and the
    crops ``base`` set aside as test (no fold trains on them)."""
    start = time.perf_counter()
    finished = train_run(layout, config, plan, k, weights)
    model = finished.model
    if isinstance(model, bytes):
        raise TrainingError(f"fold {k}: train_run returned a saved model, not one to predict with")
    crops, probabilities = _predict(layout, config, model, plan)
    aside, aside_probabilities = _predict(layout, config, model, base)
    seconds = round(time.perf_counter() - start, 3)
    logger.info("fold %d (seed %d): %d held-out crops in %.1f s", k, config.seed + k, len(crops), seconds)
    return FoldResult(k, config.seed + k, seconds, crops, probabilities, aside, aside_probabilities)


def _predict(layout: Layout, config: TrainConfig, model: Any, plan: SplitPlan,
             ) -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]:
    """The crops of ``plan``'s test split and one probability per class for each (rows summing to 1)."""
    size = tuple(config.image_size)
    paths = [str(layout.pool / a.crop) for a in plan.files("test")]
    crops_cache = cache.crop_cache(layout.cache, paths, config.cache_budget, size)
    data = datasets.from_plan(plan, layout.pool, "test", image_size=size, batch_size=config.batch_size,
                              cache=crops_cache)
    raw = np.asarray(model.predict(data, verbose=0), dtype=np.float64).reshape(len(data.file_paths), -1)
    probabilities = np.concatenate([1.0 - raw, raw], axis=1) if raw.shape[1] == 1 else raw
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    pool = Path(layout.pool)
    crops = tuple(Path(p).relative_to(pool).as_posix() for p in data.file_paths)
    return crops, tuple(tuple(float(v) for v in row) for row in probabilities)


# -- the ledger -------------------------------------------------------------------------------


def _fingerprint(pool: Sequence[Assignment]) -> str:
    """A hash of the cross-validated crops (path, label, class, screenshot), so a resume sees a changed pool."""
    lines = sorted(f"{a.crop}\t{a.label}\t{a.cls}\t{a.source_sha256}" for a in pool)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _start(out: Path, header: Mapping[str, Any], resume: bool, overwrite: bool) -> list[FoldResult]:
    """The folds finished so far (resume), or none after clearing a previous cross-validation."""
    remove_stale_temp_files(out)
    existing = [name for name in (CV_LEDGER, *_DERIVED) if (out / name).exists()]
    if existing and not (resume or overwrite):
        raise UsageError(f"{out} already holds a cross-validation ({', '.join(existing)}); pass --resume to "
                         "continue it or --overwrite to replace it")
    if resume and (out / CV_LEDGER).is_file():
        try:
            ledger = json.loads((out / CV_LEDGER).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainingError(f"{out / CV_LEDGER}: cannot be read ({exc}); pass --overwrite to start again") from None
        old = ledger.get("config", {})
        differ = [f"{key}={old.get(key)!r} (now {value!r})" for key, value in header["config"].items()
                  if old.get(key) != value]
        if differ:
            raise UsageError(f"{out} was cross-validated with {', '.join(differ)}; --resume needs the same "
                             "options, or pass --overwrite to start again")
        if ledger.get("pool") != header["pool"] or ledger.get("folds") != header["folds"]:
            raise UsageError(f"{out}: the pool's crops for task {header['config']['task']!r} changed since this "
                             "cross-validation started; pass --overwrite to start again")
        done = _folds_of(ledger)
        logger.info("%s: resuming after %d finished fold(s)", out, len(done))
        return done
    for name in (CV_LEDGER, *_DERIVED):
        (out / name).unlink(missing_ok=True)
    atomic_write_text(out / CV_LEDGER, _ledger_text(header, []))
    return []


def _ledger_text(header: Mapping[str, Any], done: Sequence[FoldResult]) -> str:
    folds = [{"fold": f.fold, "seed": f.seed, "seconds": f.seconds, "crops": list(f.crops),
              "probabilities": [list(p) for p in f.probabilities], "aside": list(f.aside),
              "aside_probabilities": [list(p) for p in f.aside_probabilities]} for f in done]
    return json.dumps({**header, "done": folds}) + "\n"


def _folds_of(ledger: Mapping[str, Any]) -> list[FoldResult]:
    try:
        done = [FoldResult(int(f["fold"]), int(f["seed"]), float(f["seconds"]), tuple(f["crops"]),
                           tuple(tuple(float(v) for v in p) for p in f["probabilities"]), tuple(f["aside"]),
                           tuple(tuple(float(v) for v in p) for p in f["aside_probabilities"]))
                for f in ledger["done"]]
    except (KeyError, TypeError, ValueError):
        raise TrainingError("the cross-validation ledger is damaged; pass --overwrite to start again") from None
    if [f.fold for f in done] != list(range(len(done))):
        raise TrainingError("the cross-validation ledger's folds are out of order; pass --overwrite to start again")
    return done


# -- outputs ----------------------------------------------------------------------------------


def _cv_info(result: CVResult, header: Mapping[str, Any]) -> dict[str, Any]:
    per_fold = fold_metrics(result)
    crops, labels, probabilities = result.oof()
    pooled = classification_metrics(labels, probabilities.argmax(axis=1), result.classes)
    stats = {name: describe([f[name] for f in per_fold]) for name in ("accuracy", "macro_f1")}
    return {
        "version": FORMAT_VERSION,
        "task": result.task,
        "options": header["config"],
        "classes": list(result.classes),
        "crops": len(crops),
        "test_set_aside": header["test_set_aside"],
        "validation": "a grouped slice of each fold's training part (split's train:validate ratio, seed + fold)",
        "per_fold": per_fold,
        "mean": {name: s["mean"] for name, s in stats.items()},
        "std": {name: s["std"] for name, s in stats.items()},
        "per_class_f1": {c: describe([f["per_class_f1"][c] for f in per_fold]) for c in result.classes},
        "out_of_fold": {"accuracy": pooled.accuracy, "macro_f1": pooled.macro.f1},
        "std_kind": "population (ddof 0) over folds",
    }


def format_folds_csv(result: CVResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("crop", "fold"))
    writer.writerows((crop, result.fold_of[crop]) for crop in sorted(result.fold_of))
    return buffer.getvalue()


def format_oof_csv(result: CVResult) -> str:
    crops, labels, probabilities = result.every_crop()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("crop", "label", "class", "fold", "predicted", *(f"p_{c}" for c in result.classes)))
    for crop, row in zip(crops, probabilities, strict=True):
        writer.writerow((crop, result.label_of[crop], result.class_of[crop], result.fold_of.get(crop, "test"),
                         result.classes[int(row.argmax())], *(repr(float(v)) for v in row)))
    return buffer.getvalue()


def _write_outputs(result: CVResult) -> None:
    out = result.output
    atomic_write_text(out / FOLDS_CSV, format_folds_csv(result))
    atomic_write_text(out / OOF_CSV, format_oof_csv(result))
    per_fold = result.info["per_fold"]
    try:
        plots.plot_cv_folds([f["accuracy"] for f in per_fold], [f["macro_f1"] for f in per_fold], out / CV_PLOT,
                            f"{result.task}: {result.info['options']['model']}, {len(per_fold)} folds")
    except ToonVisionError:
        raise
    except Exception as exc:  # a figure is never worth the folds that produced it
        logger.warning("%s: could not draw this plot (%s: %s); skipped", out / CV_PLOT, type(exc).__name__, exc)
    atomic_write_text(out / CV_JSON, json.dumps(result.info, indent=2) + "\n")  # last: cv.json means done


__all__ = [
    "CV_DIR", "CV_JSON", "CV_LEDGER", "CV_PLOT", "DEFAULT_CV_SEED", "DEFAULT_FOLDS", "FOLDS_CSV", "OOF_CSV",
    "CVConfig", "CVResult", "FoldResult", "assign_folds", "cv", "fold_metrics", "fold_plan",
    "format_folds_csv", "format_oof_csv", "load_cv",
]
