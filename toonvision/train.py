"""Repeated, rebalanced training runs that keep the best model, chosen on validation.

Run k re-splits the pool with seed S+k (stratified, group-aware: the "rebalance"), builds a
fresh model and optimizer, trains, and evaluates on validation and test. The best run is the
one with the lowest validation loss (ties: higher validation accuracy, then the earlier run);
test metrics never take part in the choice, they are only reported. Outputs::

    models/<task>/
    ├── best.keras        the chosen run's model (replaced atomically, only by a better run)
    ├── best.json         task, classes in output order, image size, seed, the run's split, metrics
    ├── runs.csv          one row per finished run: the ledger that --resume continues from
    ├── histories.jsonl   per-epoch history of each run
    ├── train.json        the options and pool fingerprint a --resume must match
    └── *.png             training curves, test box plots, architecture
    img/data/<task>/      the chosen run's split, written when training ends

Crash safety: a finished run is committed by rewriting runs.csv atomically; a better model is
first saved under .work/ and promoted only after that commit, so a kill -9 at any moment loses
at most the run in progress, and ``--resume`` repairs a promotion cut in half.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_RATIOS,
    DEFAULT_RUNS,
    FOLDER_LOCK,
)
from toonvision.decode import find_undecodable
from toonvision.errors import PoolLockedError, ToonVisionError, TrainingError, UsageError
from toonvision.fsutil import atomic_write_text, file_sha256, remove_stale_temp_files
from toonvision.layout import Layout
from toonvision.locks import locked
from toonvision.manifest import CropRecord
from toonvision.models import get_model_spec

if TYPE_CHECKING:
    import keras

    from toonvision.cache import CropCache
    from toonvision.split import SplitPlan
    from toonvision.tasks import Task

logger = logging.getLogger(__name__)

BEST_MODEL = "best.keras"
BEST_INFO = "best.json"
LEDGER = "runs.csv"
HISTORIES = "histories.jsonl"
TRAIN_INFO = "train.json"
WORK = ".work"
CURVES_PLOT = "training_curves.png"
BOXPLOT = "test_metrics.png"
ARCHITECTURE_PLOT = "architecture.png"
_CANDIDATE_MODEL = "candidate.keras"
_CANDIDATE_INFO = "candidate.json"
_PROTECTED = (BEST_MODEL, BEST_INFO, LEDGER)  # what a new training must not replace silently
_DERIVED = (LEDGER, HISTORIES, TRAIN_INFO, CURVES_PLOT, BOXPLOT, ARCHITECTURE_PLOT)
# The options a --resume must share with the training it continues (runs may grow).
_IDENTITY = ("task", "model", "epochs", "seed", "ratios", "image_size", "batch_size", "group",
             "min_per_class", "weights", "dropout", "augment", "mixed_precision")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what ``train`` does; validated on construction."""

    task: str
    model: str = "baseline"
    runs: int = DEFAULT_RUNS
    epochs: int = DEFAULT_EPOCHS
    seed: int | None = None  # None: chosen at random (or, with resume, the resumed training's)
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    group: bool = True
    min_per_class: int | None = None
    weights: str | None = "imagenet"  # mobilenetv2 only: "imagenet", a file path, or None
    dropout: float | None = None  # None: the model's default
    augment: bool | None = None  # None: the model's default (on for `optimized`)
    task_config: Path | None = None  # toonvision.toml with custom tasks
    resume: bool = False
    overwrite: bool = False
    verbose: bool = False
    cache_budget: int | str | None = None  # RAM for decoded crops (toonvision.cache); None: $TOONVISION_CACHE_BUDGET or 2 GiB
    mixed_precision: bool = False  # float16 compute (GPUs); float32 weights and head

    def __post_init__(self) -> None:
        get_model_spec(self.model)
        for name, minimum in (("runs", 1), ("epochs", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise UsageError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise UsageError(f"--image-size must be HEIGHTxWIDTH in pixels, got {self.image_size}")
        from toonvision.split import check_ratios

        ratios = check_ratios(self.ratios)
        if len(ratios) != 3:
            raise UsageError(
                f"training reports test metrics, so --ratio needs three numbers (train validate test), "
                f"got {' '.join(str(r) for r in self.ratios)}"
            )
        object.__setattr__(self, "ratios", ratios)
        if self.min_per_class is not None and self.min_per_class < 1:
            raise UsageError(f"--min-per-class must be >= 1, got {self.min_per_class}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        from toonvision.cache import cache_budget

        cache_budget(self.cache_budget)  # a bad size fails here, before any work

    @property
    def augmented(self) -> bool:
        """Whether training batches are augmented."""
        return get_model_spec(self.model).augment if self.augment is None else self.augment

    @property
    def model_weights(self) -> str | None:
        """The --weights that apply to this model (None for models without a pretrained base)."""
        return self.weights if get_model_spec(self.model).uses_weights else None

    def identity(self) -> dict[str, Any]:
        """The options a resumed training must share with the original, JSON-ready."""
        values = {
            "task": self.task, "model": self.model, "epochs": self.epochs, "seed": self.seed,
            "ratios": [float(r) for r in self.ratios], "image_size": [int(v) for v in self.image_size],
            "batch_size": self.batch_size, "group": self.group, "min_per_class": self.min_per_class,
            "weights": self.model_weights, "dropout": self.dropout, "augment": self.augmented,
            "mixed_precision": self.mixed_precision,
        }
        return {key: values[key] for key in _IDENTITY}


@dataclass(frozen=True)
class RunRecord:
    """One finished run: a row of runs.csv. Train metrics are the last epoch's, as fit reports them."""

    run: int
    seed: int
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float

    def to_row(self) -> list[str]:
        return [repr(v) if isinstance(v, float) else str(v) for v in (getattr(self, f.name) for f in fields(self))]

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> "RunRecord":
        values = {}
        for f in fields(cls):
            raw = row[f.name]
            values[f.name] = int(raw) if f.type == "int" else float(raw)
        return cls(**values)


LEDGER_COLUMNS = tuple(f.name for f in fields(RunRecord))


def choose_best(runs: Sequence[RunRecord]) -> RunRecord:
    """The run with the lowest validation loss; ties by higher validation accuracy, then earlier run.

    Test metrics are deliberately ignored: choosing on test would make the reported test
    score an optimistic, selected-on number. A run whose validation loss is NaN ranks last.
    """
    if not runs:
        raise ValueError("choose_best needs at least one run")

    def key(r: RunRecord) -> tuple[float, float, int]:
        loss = r.val_loss if math.isfinite(r.val_loss) else math.inf
        accuracy = r.val_accuracy if math.isfinite(r.val_accuracy) else -math.inf
        return (loss, -accuracy, r.run)

    return min(runs, key=key)


def describe(values: Sequence[float]) -> dict[str, float]:
    """mean, median, std (population; 0 for one run), min and max of ``values``."""
    data = [float(v) for v in values]
    return {
        "mean": statistics.fmean(data),
        "median": statistics.median(data),
        "std": statistics.pstdev(data) if len(data) > 1 else 0.0,
        "min": min(data),
        "max": max(data),
    }


@dataclass(frozen=True)
class TrainResult:
    """What a training produced: every run, the chosen one, and where the files are."""

    task: str
    model: str
    classes: tuple[str, ...]
    runs: tuple[RunRecord, ...]
    best: RunRecord
    output: Path
    split_dir: Path
    seed: int = 0
    seed_chosen: bool = False  # the seed was drawn at random, not given
    resumed: int = 0  # runs found finished when this call started
    plots: tuple[Path, ...] = field(default=())

    def summary(self) -> str:
        """A few lines for the terminal: the chosen run and the spread of test metrics over runs."""
        b = self.best
        lines = [
            f"task {self.task}: {self.model} over {len(self.runs)} run(s), classes {', '.join(self.classes)}"
            + (f" (resumed after {self.resumed})" if self.resumed else ""),
            f"chosen on validation: run {b.run} (seed {b.seed}): "
            f"val loss {b.val_loss:.4f}, val accuracy {b.val_accuracy:.4f}; "
            f"test loss {b.test_loss:.4f}, test accuracy {b.test_accuracy:.4f}",
        ]
        for metric in ("test_accuracy", "test_loss"):
            s = describe([getattr(r, metric) for r in self.runs])
            lines.append(
                f"{metric.replace('_', ' ')} over runs: mean {s['mean']:.4f}, median {s['median']:.4f}, "
                f"std {s['std']:.4f}, min {s['min']:.4f}, max {s['max']:.4f}"
            )
        lines.append(f"model: {self.output / BEST_MODEL} (+ {BEST_INFO}); ledger: {self.output / LEDGER}")
        lines.append(f"split of the chosen run: {self.split_dir}")
        if self.seed_chosen:
            lines.append(f"seed {self.seed} was chosen at random; pass --seed {self.seed} to repeat this training")
        return "\n".join(lines)


def train(layout: Layout, config: TrainConfig, progress: bool = False) -> TrainResult:
    """Train ``config.runs`` runs (continuing a ledger with ``resume``) and keep the best on validation."""
    from toonvision.split import load_pool, plan_split
    from toonvision.tasks import get_task

    task = get_task(config.task, config.task_config)
    with locked(layout.lock_file, str(layout.img_dir)):
        records, _missing = load_pool(layout)
    out = layout.task_models(task.name)
    seed_chosen = config.seed is None
    config = _resolve_seed(config, out)
    first = _plan(plan_split, records, task, config, 0)  # a task with < 2 classes fails here, before any write
    classes = tuple(first.classes)  # the same for every seed: they depend on the pool and --min-per-class only
    weights = resolve_weights(config)
    _crops(layout, config, first)  # decode every crop of the task once, before anything is written
    _make_folder(out)
    with locked(out / FOLDER_LOCK, str(out)):
        ledger = _Ledger.open(out, config, _pool_fingerprint(records, task), classes)
        runs = list(ledger.runs)
        resumed = len(runs)
        bar = _progress_bar(config, resumed, progress, task.name)
        try:
            _show_best(bar, runs)
            for k in range(resumed, config.runs):
                plan = first if k == 0 else _plan(plan_split, records, task, config, k)
                record, history, model = train_run(layout, config, plan, k, weights)
                ledger.commit(record, history, model, _best_info(task, config, plan, record, history))
                runs.append(record)
                bar.update(1)
                _show_best(bar, runs)
                del model
                _release_memory()
        finally:
            bar.close()
        best = choose_best(runs)
        split_dir = _write_chosen_split(layout, out)
        plots = _draw_plots(out, config, classes, ledger.histories, runs)
        shutil.rmtree(out / WORK, ignore_errors=True)
    return TrainResult(
        task.name, config.model, classes, tuple(runs), best, out, split_dir,
        config.seed, seed_chosen, resumed, plots,
    )


# -- one run -------------------------------------------------------------------------------

def _plan(plan_split, records: list[CropRecord], task: "Task", config: TrainConfig, k: int) -> "SplitPlan":
    return plan_split(
        records, task, tuple(config.ratios), config.seed + k,
        group=config.group, min_per_class=config.min_per_class,
    )


def train_run(
    layout: Layout, config: TrainConfig, plan: "SplitPlan", k: int, weights: str | None
) -> tuple[RunRecord, dict[str, list[float | None]], "keras.Model"]:
    """Train and evaluate run ``k`` on ``plan``: fresh seed, fresh model, fresh optimizer."""
    import keras
    import tensorflow as tf

    from toonvision import datasets
    from toonvision.augment import DEFAULT_AUGMENT
    from toonvision.models import build_model

    start = time.perf_counter()
    free_large_buffers_eagerly()
    seed = config.seed + k
    keras.backend.clear_session()  # drop the previous run's graphs and layers
    keras.utils.set_random_seed(seed)
    size = tuple(config.image_size)
    common = dict(image_size=size, batch_size=config.batch_size, cache=_crops(layout, config, plan))
    train_ds = datasets.from_plan(
        plan, layout.pool, "train", shuffle=True, seed=seed,
        augment=DEFAULT_AUGMENT if config.augmented else None, **common,
    )
    val_ds = datasets.from_plan(plan, layout.pool, "validate", **common)
    test_ds = datasets.from_plan(plan, layout.pool, "test", **common)
    steps = math.ceil(len(train_ds.file_paths) / config.batch_size)
    model = build_model(
        config.model, len(plan.classes), size,
        dropout=config.dropout, weights=weights, seed=seed, steps_per_epoch=steps,
        mixed_precision=config.mixed_precision,
    )
    try:
        fit = model.fit(
            train_ds, validation_data=val_ds, epochs=config.epochs, shuffle=False,  # the pipeline shuffles
            verbose=2 if config.verbose else 0,
        )
        test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
    except tf.errors.OpError as exc:
        paths = train_ds.file_paths + val_ds.file_paths + test_ds.file_paths
        bad = find_undecodable(paths)
        if bad is not None:
            raise bad from None
        raise TrainingError(f"run {k} (seed {seed}) failed inside TensorFlow: {exc.message.splitlines()[0]}") from None
    history = {name: [_finite_or_none(v) for v in values] for name, values in fit.history.items()}
    last = {name: float(values[-1]) for name, values in fit.history.items()}
    record = RunRecord(
        run=k, seed=seed, epochs=config.epochs,
        train_loss=last["loss"], train_accuracy=last["accuracy"],
        val_loss=last["val_loss"], val_accuracy=last["val_accuracy"],
        test_loss=float(test_loss), test_accuracy=float(test_accuracy),
        seconds=round(time.perf_counter() - start, 3),
    )
    logger.info("run %d (seed %d): val loss %.4f, test accuracy %.4f", k, seed, record.val_loss, record.test_accuracy)
    return record, history, model


def _crops(layout: Layout, config: TrainConfig, plan: "SplitPlan") -> "CropCache":
    """The process's decoded-crop cache with every crop of ``plan``: decoded on the first call only."""
    from toonvision.cache import crop_cache

    paths = [str(layout.pool / a.crop) for a in plan.assignments]
    return crop_cache(layout.cache, paths, config.cache_budget, tuple(config.image_size))


def _best_info(
    task: "Task", config: TrainConfig, plan: "SplitPlan", record: RunRecord, history: Mapping[str, Any]
) -> dict[str, Any]:
    """best.json: everything needed to use the model and rebuild the split it was tested on."""
    import keras
    import tensorflow as tf

    import toonvision
    from toonvision.models import default_dropout
    from toonvision.split import plan_to_dict

    classes = list(plan.classes)
    return {
        "task": task.name,
        "classes": classes,
        "display_names": {c: task.display_name(c) for c in classes},
        "image_size": [int(v) for v in config.image_size],
        "model": config.model,
        "run": record.run,
        "seed": record.seed,
        "split": plan_to_dict(plan),
        "metrics": {
            "train": {"loss": record.train_loss, "accuracy": record.train_accuracy},
            "validate": {"loss": record.val_loss, "accuracy": record.val_accuracy},
            "test": {"loss": record.test_loss, "accuracy": record.test_accuracy},
        },
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "augment": config.augmented,
        "mixed_precision": config.mixed_precision,
        "dropout": config.dropout if config.dropout is not None else default_dropout(config.model, len(classes)),
        "weights": config.model_weights,
        "input": {"color": "rgb", "resize": "bilinear", "range": "0-255 float; the model rescales itself"},
        "selection": "lowest validation loss, ties by higher validation accuracy",
        "versions": {"toonvision": toonvision.__version__, "tensorflow": tf.__version__, "keras": keras.__version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# -- the ledger ----------------------------------------------------------------------------

class _Ledger:
    """models/<task>/: the runs so far, their histories, and the best model, crash-safe."""

    def __init__(self, out: Path, runs: list[RunRecord], histories: list[dict[str, Any]]) -> None:
        self.out = out
        self.runs = runs
        self.histories = histories

    @classmethod
    def open(cls, out: Path, config: TrainConfig, pool: str, classes: tuple[str, ...]) -> "_Ledger":
        """Start a new ledger, or continue one with --resume; refuse to clobber one silently."""
        info = {"config": config.identity(), "pool": pool, "classes": list(classes)}
        remove_stale_temp_files(out, "*", recursive=True)  # left by killed writes; only dead writers' files go
        existing = [name for name in _PROTECTED if (out / name).exists()]
        if existing and not (config.resume or config.overwrite):
            raise UsageError(
                f"{out} already holds a training ({', '.join(existing)}); pass --resume to continue it "
                "or --overwrite to replace it"
            )
        if config.resume and (out / TRAIN_INFO).exists():
            previous = _read_json(out / TRAIN_INFO)
            _check_same_training(out, previous, info)
            runs = _read_ledger(out / LEDGER)
            histories = _read_histories(out / HISTORIES, {r.run for r in runs})
            ledger = cls(out, runs, histories)
            ledger._recover_promotion()
            logger.info("%s: resuming after %d finished run(s)", out, len(runs))
            return ledger
        if config.resume and existing:
            raise UsageError(
                f"{out} holds {', '.join(existing)} but no {TRAIN_INFO} to resume from; "
                "pass --overwrite to start again"
            )
        # A fresh start. The previous best.keras/best.json stay until the first new run replaces them.
        for name in _DERIVED:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / WORK, ignore_errors=True)
        atomic_write_text(out / TRAIN_INFO, json.dumps(info, indent=2) + "\n")
        return cls(out, [], [])

    def commit(
        self, record: RunRecord, history: Mapping[str, Any], model: "keras.Model", info: Mapping[str, Any]
    ) -> None:
        """Record a finished run; if it beats the best, replace best.keras and best.json.

        Order: candidate model saved under .work/, then histories, then runs.csv (the commit
        point), then the promotion. A kill before the commit loses only this run.
        """
        runs = [*self.runs, record]
        is_best = choose_best(runs) is record
        work = self.out / WORK
        if is_best:
            work.mkdir(exist_ok=True)
            _save_model(model, work / _CANDIDATE_MODEL)
            info = {**info, "model_sha256": file_sha256(work / _CANDIDATE_MODEL)}  # ties best.json to its model
            atomic_write_text(work / _CANDIDATE_INFO, json.dumps(info, indent=2) + "\n")
        histories = [*self.histories, {"run": record.run, "seed": record.seed, "history": dict(history)}]
        atomic_write_text(self.out / HISTORIES, "".join(json.dumps(h) + "\n" for h in histories))
        atomic_write_text(self.out / LEDGER, _format_ledger(runs))
        self.runs, self.histories = runs, histories
        if is_best:
            self._promote()

    def _promote(self) -> None:
        work = self.out / WORK
        if (work / _CANDIDATE_MODEL).exists():
            os.replace(work / _CANDIDATE_MODEL, self.out / BEST_MODEL)
        os.replace(work / _CANDIDATE_INFO, self.out / BEST_INFO)

    def _recover_promotion(self) -> None:
        """Finish a promotion a kill interrupted, or drop a candidate whose run never committed."""
        candidate = self.out / WORK / _CANDIDATE_INFO
        if candidate.exists() and self.runs:
            run = _read_json(candidate).get("run")
            if run == choose_best(self.runs).run and run in {r.run for r in self.runs}:
                logger.warning("%s: finishing the promotion of run %s interrupted by a kill", self.out, run)
                self._promote()
        shutil.rmtree(self.out / WORK, ignore_errors=True)


def _check_same_training(out: Path, previous: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    old, new = {"mixed_precision": False, **previous.get("config", {})}, current["config"]  # older ledgers lack it
    differ = [f"{key}={old.get(key)!r} (now {new[key]!r})" for key in _IDENTITY if old.get(key) != new[key]]
    if differ:
        raise UsageError(
            f"{out} was trained with {', '.join(differ)}; --resume needs the same options "
            "(only --runs may grow), or pass --overwrite to start again"
        )
    if previous.get("pool") != current["pool"]:
        raise UsageError(
            f"{out}: the pool's crops for task {new['task']!r} changed since this training started, so "
            "resumed runs would not get the splits their seeds promise; pass --overwrite to start again"
        )


def _format_ledger(runs: Sequence[RunRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LEDGER_COLUMNS)
    writer.writerows(r.to_row() for r in runs)
    return buffer.getvalue()


def _read_ledger(path: Path) -> list[RunRecord]:
    if not path.exists():
        return []
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
        runs = [RunRecord.from_row(row) for row in reader]
    except (KeyError, TypeError, ValueError, csv.Error):
        raise TrainingError(f"{path}: the ledger is damaged; pass --overwrite to start the training again") from None
    if [r.run for r in runs] != list(range(len(runs))):
        raise TrainingError(f"{path}: runs are not 0..{len(runs) - 1} in order; pass --overwrite to start again")
    return runs


def _read_histories(path: Path, committed: set[int]) -> list[dict[str, Any]]:
    """Histories of committed runs; a line written for a run whose commit a kill prevented is dropped."""
    if not path.exists():
        return []
    histories = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            if entry.get("run") in committed:
                histories.append(entry)
    return histories


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: cannot be read ({exc}); pass --overwrite to start the training again") from None


def _save_model(model: "keras.Model", path: Path) -> None:
    try:
        model.save(path)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise TrainingError(f"{path}: cannot save the model ({exc.strerror or exc}); free space or fix permissions") from None


# -- at the end ------------------------------------------------------------------------------

def _write_chosen_split(layout: Layout, out: Path) -> Path:
    """Rebuild the chosen run's split from best.json into img/data/<task>/."""
    from toonvision.split import plan_from_dict, write_split

    info = _read_json(out / BEST_INFO)
    plan = plan_from_dict(info["split"], str(out / BEST_INFO))
    try:
        with locked(layout.lock_file, str(layout.img_dir)):
            return Path(write_split(plan, layout))
    except PoolLockedError as exc:
        raise TrainingError(
            f"training finished and {out / BEST_MODEL} is saved, but the chosen split could not be written "
            f"to {layout.task_data(plan.task)} ({exc}); run the same command with --resume to write it"
        ) from None


def _draw_plots(
    out: Path, config: TrainConfig, classes: tuple[str, ...], histories: Sequence[Mapping[str, Any]],
    runs: Sequence[RunRecord],
) -> tuple[Path, ...]:
    """Training curves, test box plots and the architecture; a plot that fails is skipped with a warning."""
    from toonvision import plots
    from toonvision.models import build_model

    title = f"{config.task}: {config.model}, {len(runs)} run(s)"
    jobs = (
        (CURVES_PLOT, lambda path: plots.plot_training_curves([h["history"] for h in histories], path, title)),
        (BOXPLOT, lambda path: plots.plot_test_boxplots(
            [r.test_accuracy for r in runs], [r.test_loss for r in runs], path, title)),
        (ARCHITECTURE_PLOT, lambda path: plots.plot_architecture(
            build_model(config.model, len(classes), tuple(config.image_size), weights=None), path)),
    )
    written = []
    for name, draw in jobs:
        try:
            if draw(out / name) is not None:
                written.append(out / name)
        except ToonVisionError:
            raise
        except Exception as exc:  # a figure is never worth the training that produced it
            logger.warning("%s: could not draw this plot (%s: %s); skipped", out / name, type(exc).__name__, exc)
    return tuple(written)


# -- helpers ---------------------------------------------------------------------------------

def _resolve_seed(config: TrainConfig, out: Path) -> TrainConfig:
    """Fill in a missing seed: the resumed training's, or a random one (reported in the summary)."""
    if config.seed is not None:
        return config
    seed = None
    if config.resume and (out / TRAIN_INFO).is_file():
        seed = _read_json(out / TRAIN_INFO).get("config", {}).get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = secrets.randbelow(1_000_000)
    return dataclasses.replace(config, seed=seed)


def resolve_weights(config: TrainConfig) -> str | None:
    """Find the pretrained weights before anything is written, so a missing file fails fast."""
    if config.model_weights is None:
        return None
    from toonvision.models import resolve_mobilenet_weights

    return resolve_mobilenet_weights(config.model_weights, tuple(config.image_size))


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(
            f"{out}: cannot write there ({exc.strerror or exc}); fix its permissions or pass another --models-dir"
        ) from None


def _pool_fingerprint(records: Sequence[CropRecord], task: "Task") -> str:
    """A hash of the task's crops (path, label, content), so --resume can tell the pool changed."""
    lines = sorted(f"{r.crop}\t{r.label}\t{r.crop_sha256}" for r in records if task.class_of(r.label) is not None)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


def free_large_buffers_eagerly() -> None:
    """Have glibc map every allocation of 1 MiB or more on its own, so freeing it frees the memory.

    By default glibc raises that threshold after each large free, and from then on the float
    images and batches of the input pipeline (1.4 MB and 46 MB at 600x200) come from its
    per-thread heaps, which keep freed memory: a run's peak resident memory measured 1240 MiB
    with the default and about 1050 MiB with this (bench/bench_memory.py).
    """
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: its own allocator decides
        pass


def _release_memory() -> None:
    """Give the memory of the finished run back to the system before the next one.

    Without it, glibc keeps the freed tensors of every run in its per-thread arenas and the
    resident memory of a long training creeps up run after run (measured in bench/README.md).
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, text: str) -> None: ...
    def close(self) -> None: ...


def _progress_bar(config: TrainConfig, done: int, progress: bool, task: str) -> Any:
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=config.runs, initial=min(done, config.runs), desc=f"train {task}", unit="run")


def _show_best(bar: Any, runs: Sequence[RunRecord]) -> None:
    if runs:
        best = choose_best(runs)
        bar.set_postfix_str(f"best val loss {best.val_loss:.4f} (run {best.run})")


def iter_histories(path: Path) -> Iterator[dict[str, Any]]:
    """Read a histories.jsonl (for plots and the compare command)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)


