"""Repeated, rebalanced training runs that keep the best model, chosen on validation.

The test split is drawn once per training (seed S, grouped, stratified; ``--resplit-test``
draws it again per run instead). Run k re-splits the rest of the pool into train/validate
with seed S+k (the "rebalance"), builds a fresh model and optimizer, trains with class
weights (``--class-weight balanced``: inverse class frequency on the run's train split), keeps
the weights of its best validation epoch by the selection metric (``--select``; ``--patience``
stops it early), and evaluates on validation and test. The best run is the best by the same
metric (ties: lower validation loss, higher validation accuracy, then the earlier run); test
metrics never take part in the choice, they are only reported. Outputs::

    models/<task>/
    ├── best.keras        the chosen run's model (replaced atomically, only by a better run)
    ├── best.json         task, classes in output order, image size and resize mode, seed, the run's split, metrics
    ├── runs.csv          one row per finished run: the ledger that --resume continues from
    ├── histories.jsonl   per-epoch history of each run (every epoch, also after the kept one)
    ├── train.json        the options and pool fingerprint a --resume must match
    ├── ensemble.keras    --ensemble K: one model averaging the K best runs (+ ensemble.json)
    ├── runs/run_<k>.keras  --ensemble K: the K best runs' models, the ensemble's members
    └── *.png             training curves, test box plots, architecture
    img/data/<task>/      the chosen run's split, written when training ends
    <--tensorboard DIR>/run_<k>/  Keras' TensorBoard logs of each run

The run loop only produces finished runs (:func:`train_run`); :class:`toonvision.ledger.Ledger`
commits them. Crash safety (the ledger's contract): a finished run is committed by rewriting
runs.csv atomically; a better model is first saved under .work/ and promoted only after that
commit, so a kill -9 at any moment loses at most the run in progress, and ``--resume`` repairs
a promotion cut in half.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import gc
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toonvision import __version__, cache, datasets, plots
from toonvision.augment import DEFAULT_AUGMENT
from toonvision.constants import (
    CLASS_WEIGHT_MODES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS_WEIGHT,
    DEFAULT_EPOCHS,
    DEFAULT_PATIENCE,
    DEFAULT_RATIOS,
    DEFAULT_RESIZE,
    DEFAULT_RUNS,
    DEFAULT_SELECT,
    DEFAULT_WEIGHTS,
    HW,
    IMAGE_SIZE_AUTO,
    default_image_size,
    default_model,
)
from toonvision.decode import auto_image_size, check_resize_mode, find_undecodable
from toonvision.ensemble import build_ensemble, write_ensemble
from toonvision.errors import (
    PoolLockedError,
    ToonVisionError,
    TrainingError,
    UsageError,
)
from toonvision.executors import Executor, LocalExecutor, RunOrder, RunSite, failure_message, portable
from toonvision.fsutil import atomic_write_text
from toonvision.layout import BEST_INFO, BEST_MODEL, ENSEMBLE_INFO, ENSEMBLE_MODEL, Layout
from toonvision.ledger import (
    LEDGER,
    FinishedRun,
    Ledger,
    RunRecord,
    check_select,
    describe,
    higher_is_better,
    make_folder,
    recorded_config,
)
from toonvision.locks import locked
from toonvision.manifest import CropRecord, load_pool
from toonvision.metrics import classification_metrics, decide, log_loss
from toonvision.models import (
    DEFAULT_FINE_TUNE_EPOCHS,
    FINE_TUNE_RATE_FACTOR,
    LEARNING_RATE,
    MODELS,
    Hyperparameters,
    build_from_hparams,
    build_model,
    default_dropout,
    get_model_spec,
    load_hparams,
    resolve_mobilenet_weights,
    unfreeze_top,
)
from toonvision.progress import Bar, progress_bar
from toonvision.split import (
    SplitPlan,
    check_ratios,
    plan_from_dict,
    plan_split,
    plan_test_split,
    plan_to_dict,
    write_split,
)
from toonvision.tasks import Task, get_task

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from toonvision.cache import CropCache

logger = logging.getLogger(__name__)

CURVES_PLOT = "training_curves.png"
BOXPLOT = "test_metrics.png"
ARCHITECTURE_PLOT = "architecture.png"
PLOTS = (CURVES_PLOT, BOXPLOT, ARCHITECTURE_PLOT)
# The options a --resume must share with the training it continues (runs may grow).
_IDENTITY = ("task", "model", "epochs", "seed", "ratios", "image_size", "resize", "batch_size", "group",
             "min_per_class", "weights", "dropout", "augment", "mixed_precision", "fine_tune",
             "class_weight", "select", "patience", "resplit_test", "ensemble",
             "hparams")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what ``train`` does; validated on construction."""

    task: str
    model: str | None = None  # None: the task's default (constants.default_model)
    runs: int = DEFAULT_RUNS
    epochs: int = DEFAULT_EPOCHS
    seed: int | None = None  # None: chosen at random (or, with resume, the resumed training's)
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    # (height, width), "auto" (from the task's crop sizes: resolve_image_size), or None: the task's default
    image_size: tuple[int, int] | str | None = None
    resize: str = DEFAULT_RESIZE  # stretch, or pad (aspect ratio kept): toonvision.decode.resize
    batch_size: int = DEFAULT_BATCH_SIZE
    group: bool = True
    min_per_class: int | None = None
    weights: str | None = DEFAULT_WEIGHTS  # mobilenetv2 only: "imagenet", a file path, or None
    dropout: float | None = None  # None: the model's default
    augment: bool | None = None  # None: the model's default (on for `optimized`)
    task_config: Path | None = None  # toonvision.toml with custom tasks
    resume: bool = False
    overwrite: bool = False
    verbose: bool = False
    # RAM for decoded crops (toonvision.cache); None: $TOONVISION_CACHE_BUDGET or 2 GiB
    cache_budget: int | str | None = None
    mixed_precision: bool = False  # float16 compute (GPUs); float32 weights and head
    fine_tune: bool = False  # a second phase with the top of the pretrained base unfrozen (models.unfreeze_top)
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS  # epochs of that second phase

    class_weight: str = DEFAULT_CLASS_WEIGHT  # "balanced" (inverse frequency on the train split) or "none"
    select: str = DEFAULT_SELECT  # the validation metric that picks the run and its epoch
    patience: int | None = DEFAULT_PATIENCE  # stop a run after this many epochs without a better metric
    resplit_test: bool = False  # draw the test split again per run (the original behaviour)
    ensemble: int = 0  # K >= 2: also save one model averaging the K best runs (0: none)
    tensorboard: Path | None = None  # Keras' TensorBoard logs of run k in <tensorboard>/run_<k>

    hparams: Path | None = None  # tune's best_hparams.json: the model it describes replaces --model
    tuned: Hyperparameters | None = field(init=False, default=None, repr=False, compare=False)  # read from hparams

    def __post_init__(self) -> None:
        if self.hparams is not None:
            if self.model is not None or self.dropout is not None:
                raise UsageError("--hparams describes the model and its dropout; leave out --model")
            object.__setattr__(self, "tuned", load_hparams(self.hparams))
        if self.model is None:
            object.__setattr__(self, "model", default_model(self.task))
        get_model_spec(self.model)
        if self.class_weight not in CLASS_WEIGHT_MODES:
            raise UsageError(
                f"--class-weight must be one of {', '.join(CLASS_WEIGHT_MODES)}, got {self.class_weight!r}"
            )
        check_select(self.select)
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise UsageError(f"--patience must be an integer >= 1, got {self.patience!r}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble == 1 \
                or self.ensemble < 0:
            raise UsageError(f"--ensemble must be 0 (none) or an integer >= 2, got {self.ensemble!r}")
        if self.ensemble > self.runs:
            raise UsageError(f"--ensemble {self.ensemble} averages the {self.ensemble} best runs: pass --runs "
                             f"{self.ensemble} or more")
        if self.ensemble and self.resplit_test:
            raise UsageError("--ensemble needs the fixed test split its members share; leave out --resplit-test")
        for name, minimum in (("runs", 1), ("epochs", 1), ("batch_size", 1), ("fine_tune_epochs", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise UsageError(f"--seed must be an integer >= 0, got {self.seed!r}")
        object.__setattr__(self, "image_size", checked_image_size(self.task, self.image_size))
        check_resize_mode(self.resize)
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
        if self.fine_tune and get_model_spec(self.model).fine_tune_from is None:
            fine_tunable = ", ".join(name for name, spec in MODELS.items() if spec.fine_tune_from)
            raise UsageError(f"--fine-tune needs a model with a pretrained base ({fine_tunable}), not {self.model}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        if self.tuned is not None and isinstance(self.image_size, HW) and min(self.image_size) < self.tuned.min_size:
            raise UsageError(f"the model of {self.hparams} needs images of at least {self.tuned.min_size}x"
                             f"{self.tuned.min_size} pixels, got {self.image_size[0]}x{self.image_size[1]}; "
                             "pass the --image-size the search used")
        cache.cache_budget(self.cache_budget)  # a bad size fails here, before any work

    @property
    def size(self) -> HW:
        """The input (height, width); a run needs ``auto`` resolved first (:func:`resolve_image_size`)."""
        if not isinstance(self.image_size, HW):
            raise UsageError("--image-size auto is chosen from the pool's crops: call resolve_image_size first")
        return self.image_size

    @property
    def augmented(self) -> bool:
        """Whether training batches are augmented."""
        if self.augment is not None:
            return self.augment
        return self.tuned.augment if self.tuned is not None else get_model_spec(self.model).augment

    @property
    def model_weights(self) -> str | None:
        """The --weights that apply to this model (None for models without a pretrained base)."""
        uses = self.tuned.uses_weights if self.tuned is not None else get_model_spec(self.model).uses_weights
        return self.weights if uses else None

    @property
    def total_epochs(self) -> int:
        """Epochs of a run: the configured ones plus the fine-tuning phase's."""
        return self.epochs + (self.fine_tune_epochs if self.fine_tune else 0)

    def identity(self) -> dict[str, Any]:
        """The options a resumed training must share with the original, JSON-ready."""
        values = {
            "task": self.task, "model": self.model, "epochs": self.epochs, "seed": self.seed,
            "ratios": [float(r) for r in self.ratios], "image_size": [int(v) for v in self.size],
            "resize": self.resize,
            "batch_size": self.batch_size, "group": self.group, "min_per_class": self.min_per_class,
            "weights": self.model_weights, "dropout": self.dropout, "augment": self.augmented,
            "mixed_precision": self.mixed_precision,
            "fine_tune": self.fine_tune_epochs if self.fine_tune else 0,  # epochs of the second phase
            "class_weight": self.class_weight, "select": self.select,
            "patience": self.patience, "resplit_test": self.resplit_test, "ensemble": self.ensemble,
            "hparams": self.tuned.to_dict() if self.tuned is not None else None,
        }
        return {key: values[key] for key in _IDENTITY}


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
    select: str = DEFAULT_SELECT
    fixed_test: bool = True  # every run was scored on one test split
    ensemble: Mapping[str, Any] | None = None  # ensemble.json, with --ensemble

    def summary(self) -> str:
        """A few lines for the terminal: the chosen run and the spread of test metrics over runs."""
        b = self.best
        lines = [
            f"task {self.task}: {self.model} over {len(self.runs)} run(s), classes {', '.join(self.classes)}"
            + (f" (resumed after {self.resumed})" if self.resumed else ""),
            f"test split: {'fixed (the same crops for every run)' if self.fixed_test else 're-split per run'}",
            f"chosen on {self.select}: run {b.run} (seed {b.seed}), epoch {b.best_epoch} of {b.epochs}: "
            f"val loss {b.val_loss:.4f}, val accuracy {b.val_accuracy:.4f}, val macro-F1 {b.val_macro_f1:.4f}; "
            f"test loss {b.test_loss:.4f}, test accuracy {b.test_accuracy:.4f}, test macro-F1 {b.test_macro_f1:.4f}",
        ]
        if self.ensemble is not None:
            t = self.ensemble["metrics"]["test"]
            lines.append(
                f"ensemble of runs {', '.join(str(m) for m in self.ensemble['members'])}: test loss {t['loss']:.4f}, "
                f"test accuracy {t['accuracy']:.4f}, test macro-F1 {t['macro_f1']:.4f} "
                f"(the chosen run: {b.test_accuracy:.4f}, {b.test_macro_f1:.4f}); {self.output / ENSEMBLE_MODEL}"
            )
        for metric in ("test_macro_f1", "test_accuracy", "test_loss"):
            s = describe([getattr(r, metric) for r in self.runs])
            lines.append(
                f"{metric.replace('_', ' ').replace('macro f1', 'macro-F1')} over runs: mean {s['mean']:.4f}, "
                f"median {s['median']:.4f}, "
                f"std {s['std']:.4f}, min {s['min']:.4f}, max {s['max']:.4f}"
            )
        lines.append(f"model: {self.output / BEST_MODEL} (+ {BEST_INFO}); ledger: {self.output / LEDGER}")
        lines.append(f"split of the chosen run: {self.split_dir}")
        if self.seed_chosen:
            lines.append(f"seed {self.seed} was chosen at random; pass --seed {self.seed} to repeat this training")
        return "\n".join(lines)


def train(
    layout: Layout, config: TrainConfig, progress: bool = False, executor: Executor | None = None,
) -> TrainResult:
    """Train ``config.runs`` runs (continuing a ledger with ``resume``) and keep the best on validation.

    ``executor`` runs them (default: here, one at a time; see :mod:`toonvision.executors`);
    whatever runs them, this process commits them in run order.
    """
    task = get_task(config.task, config.task_config)
    with locked(layout.lock_file, str(layout.img_dir)):
        records, _missing = load_pool(layout)
    out = layout.task_models(task.name)
    seed_chosen = config.seed is None
    config = resolve_image_size(_resolve_seed(config, out), records, task)
    fixed_test = fixed_test_split(records, task, config)  # a task with < 2 classes fails here, before any write
    first = _plan(records, task, config, 0, fixed_test)
    classes = tuple(first.classes)  # the same for every seed: they depend on the pool and --min-per-class only
    weights = resolve_weights(config)
    _crops(layout, config, first)  # decode every crop of the task once, before anything is written
    make_folder(out, "--models-dir")
    with Ledger.open(out, config.identity(), pool_fingerprint(records, task), classes,
                     resume=config.resume, overwrite=config.overwrite, derived=(*PLOTS, ENSEMBLE_MODEL, ENSEMBLE_INFO),
                     select=config.select, keep=config.ensemble) as ledger:
        resumed = ledger.next_run
        bar = progress_bar(progress, config.runs, f"train {task.name}", "run", initial=min(resumed, config.runs))
        try:
            _show_best(bar, ledger.best, config.select)
            plans = (first if k == 0 else _plan(records, task, config, k, fixed_test)
                     for k in range(resumed, config.runs))
            _dispatch_runs(executor or LocalExecutor(), layout, config, first, plans, weights, ledger, task, bar)
        finally:
            bar.close()
        runs, best = ledger.done, ledger.best
        ensemble = _save_ensemble(layout, task, config, ledger) if config.ensemble else None
        split_dir = _write_chosen_split(layout, ledger)
        plots = _draw_plots(out, config, classes, ledger.histories, runs)
    return TrainResult(
        task.name, config.model, classes, runs, best, out, split_dir,
        config.seed, seed_chosen, resumed, plots, config.select, not config.resplit_test, ensemble,
    )


# -- the runs: dispatched to an executor, committed here in run order -------------------------

@dataclass(frozen=True)
class RunJob:
    """What one run needs besides the crops: the options, its split, its number and the weights."""

    config: TrainConfig
    plan: SplitPlan
    run: int
    weights: str | None


def run_job(site: RunSite, job: RunJob) -> FinishedRun:
    """The run function every executor calls: :func:`train_run` on the site's crops (the model as bytes remotely)."""
    finished = train_run(site.layout(), job.config, job.plan, job.run, job.weights)
    return portable(finished) if site.remote else finished


def _dispatch_runs(
    executor: Executor, layout: Layout, config: TrainConfig, first: SplitPlan, plans: Iterator[SplitPlan],
    weights: str | None, ledger: Ledger, task: Task, bar: Bar,
) -> None:
    """Hand the runs to ``executor`` and commit them in run order as they arrive (the bar counts arrivals)."""
    start = ledger.next_run
    if executor.remote:
        plans = iter(list(plans))  # every task is submitted at once
    site = executor.site(layout, _crop_paths(layout, first))  # every plan splits the same crops
    order: RunOrder[FinishedRun] = RunOrder()  # by position among the jobs: run start + position
    jobs = (RunJob(config, plan, k, weights) for k, plan in enumerate(plans, start))
    with contextlib.closing(executor.map_runs(run_job, jobs, site)) as outcomes:  # closing cancels what is left
        for outcome in outcomes:
            bar.update(1)
            for finished in order.add(outcome):
                ledger.commit(finished, _best_info(task, config, finished.plan, finished.record))
                _show_best(bar, ledger.best, config.select)
                del finished  # the model: its memory goes back before the next run
            del outcome
            _release_memory()
    if order.failed:
        raise TrainingError(failure_message(
            f"training of {task.name}", order.failed, order.waiting,
            lambda i: f"run {start + i} (seed {config.seed + start + i})",
        ) + f"; {ledger.next_run} run(s) are committed: run the same command with --resume to train the rest")


# -- one run -------------------------------------------------------------------------------

def fixed_test_split(records: Sequence[CropRecord], task: Task, config: TrainConfig) -> frozenset[str] | None:
    """The training's one test split (drawn with the training seed), or None with --resplit-test."""
    if config.resplit_test:
        return None
    return plan_test_split(records, task, tuple(config.ratios), config.seed,
                           group=config.group, min_per_class=config.min_per_class)


def _plan(
    records: Sequence[CropRecord], task: Task, config: TrainConfig, k: int, fixed_test: frozenset[str] | None
) -> SplitPlan:
    return plan_split(
        records, task, tuple(config.ratios), config.seed + k,
        group=config.group, min_per_class=config.min_per_class, fixed_test=fixed_test,
    )


def class_weights(plan: SplitPlan, mode: str) -> dict[int, float] | None:
    """Keras' ``class_weight``: n / (classes * n_c) over the plan's train split ("balanced"), or None."""
    if mode == "none":
        return None
    counts = {cls: 0 for cls in plan.classes}
    for a in plan.files("train"):
        counts[a.cls] += 1
    total = sum(counts.values())
    return {i: total / (len(plan.classes) * counts[cls]) for i, cls in enumerate(plan.classes)}


def split_labels(plan: SplitPlan, pool: Path, dataset: tf.data.Dataset) -> np.ndarray:
    """The class index of each file of an unshuffled ``datasets.from_plan`` dataset, in its order."""
    index = {str(Path(pool) / a.crop): plan.classes.index(a.cls) for a in plan.assignments}
    return np.array([index[path] for path in dataset.file_paths], dtype=np.int64)


def probabilities(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """(n, classes) probabilities of an unshuffled dataset (a sigmoid unit becomes [1 - p, p])."""
    # A split's last, smaller batch and every run's fresh model trace predict anew; TensorFlow then
    # warns of "excessive retracing" on the terminal although nothing is wrong: hushed for this call.
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        raw = np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)
    finally:
        tf_logger.setLevel(level)
    raw = raw.reshape(len(raw), -1)
    return np.concatenate([1.0 - raw, raw], axis=1) if raw.shape[1] == 1 else raw


def macro_f1(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> float:
    """Macro-averaged F1 of the predicted classes (``toonvision.metrics``, as evaluate reports it)."""
    return classification_metrics(labels, decide(probs)[0], classes).macro.f1


def best_epoch_callback(
    select: str, patience: int | None = None, macro_f1_of: Callable[[keras.Model], float] | None = None,
) -> keras.callbacks.Callback:
    """A callback that keeps the weights of the best epoch by ``select`` and restores them at the end.

    Keras' ``EarlyStopping(restore_best_weights=True)``, except that it restores whether or not
    the run stopped early; ``patience`` (None: never) stops after that many epochs without a
    better value. As between runs, an epoch with an equal accuracy or macro-F1 and a lower
    validation loss is better (macro-F1 on a small validation set often stays put for epochs).
    With ``macro_f1_of`` it first adds ``val_macro_f1`` (of the model at the end of the epoch)
    to the epoch's logs, so histories record it. ``best_epoch`` is the kept epoch (from 0).
    """
    import keras  # lazy: TensorFlow takes seconds to import

    higher = higher_is_better(select)

    def key(logs: Mapping[str, Any]) -> tuple[float, float] | None:
        """(metric, tie-break) to maximise: an equal metric with a lower validation loss is better too."""
        value, loss = float(logs.get(select, math.nan)), float(logs.get("val_loss", math.nan))
        if not math.isfinite(value):
            return None
        if not higher:
            return (-value, 0.0)
        return (value, -loss if math.isfinite(loss) else -math.inf)

    class BestEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.best, self.best_epoch, self.best_weights, self.last_epoch, self.wait = None, None, None, -1, 0

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs if logs is not None else {}
            if macro_f1_of is not None:
                logs["val_macro_f1"] = macro_f1_of(self.model)
            self.last_epoch = epoch
            value = key(logs)
            if value is not None and (self.best is None or value > self.best):
                self.best, self.best_epoch, self.wait = value, epoch, 0
                self.best_weights = self.model.get_weights()
                return
            self.wait += 1
            if patience is not None and self.wait >= patience:
                self.model.stop_training = True

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if self.best_epoch is None:  # no finite value: keep the last epoch
                self.best_epoch = self.last_epoch
            elif self.best_epoch != self.last_epoch:
                self.model.set_weights(self.best_weights)
            self.best_weights = None

    return BestEpoch()


def train_run(layout: Layout, config: TrainConfig, plan: SplitPlan, k: int, weights: str | None) -> FinishedRun:
    """Train and evaluate run ``k`` on ``plan``: fresh seed, fresh model, fresh optimizer."""
    # Keras and TensorFlow load only when a run starts: they take seconds to import.
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    free_large_buffers_eagerly()
    seed = config.seed + k
    keras.backend.clear_session()  # drop the previous run's graphs and layers
    keras.utils.set_random_seed(seed)
    size = config.size
    common = dict(image_size=size, batch_size=config.batch_size, cache=_crops(layout, config, plan),
                  resize=config.resize)
    train_ds = datasets.from_plan(
        plan, layout.pool, "train", shuffle=True, seed=seed,
        augment=DEFAULT_AUGMENT if config.augmented else None, **common,
    )
    val_ds = datasets.from_plan(plan, layout.pool, "validate", **common)
    test_ds = datasets.from_plan(plan, layout.pool, "test", **common)
    val_labels, test_labels = split_labels(plan, layout.pool, val_ds), split_labels(plan, layout.pool, test_ds)
    steps = math.ceil(len(train_ds.file_paths) / config.batch_size)
    model = _build(config, len(plan.classes), weights, seed, steps)

    def keeper() -> keras.callbacks.Callback:
        return best_epoch_callback(
            config.select, config.patience,
            (lambda m: macro_f1(val_labels, probabilities(m, val_ds), plan.classes))
            if config.select == "val_macro_f1" else None,
        )

    logs = [] if config.tensorboard is None else [tensorboard_callback(Path(config.tensorboard) / f"run_{k}")]
    weighting = class_weights(plan, config.tuned.class_weight if config.tuned is not None else config.class_weight)
    best = keeper()  # first among the callbacks: it adds val_macro_f1 to the logs the others read
    try:
        fit = model.fit(
            train_ds, validation_data=val_ds, epochs=config.epochs, shuffle=False,  # the pipeline shuffles
            verbose=2 if config.verbose else 0, class_weight=weighting, callbacks=[best, *logs],
        )
        if config.fine_tune:  # from the best epoch of the frozen phase; its best epoch is kept in turn
            best = keeper()
            fine_tune(model, fit, train_ds, val_ds, config, weighting, [best, *logs])
        test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
        val_f1 = macro_f1(val_labels, probabilities(model, val_ds), plan.classes)
        test_f1 = macro_f1(test_labels, probabilities(model, test_ds), plan.classes)
    except tf.errors.OpError as exc:
        paths = train_ds.file_paths + val_ds.file_paths + test_ds.file_paths
        bad = find_undecodable(paths)
        if bad is not None:
            raise bad from None
        raise TrainingError(f"run {k} (seed {seed}) failed inside TensorFlow: {exc.message.splitlines()[0]}") from None
    history = {name: [_finite_or_none(v) for v in values] for name, values in fit.history.items()}
    kept = best.best_epoch
    at = {name: float(values[kept]) for name, values in fit.history.items()}
    record = RunRecord(
        run=k, seed=seed, epochs=len(history["loss"]),  # run (early stopping may end it sooner)
        train_loss=at["loss"], train_accuracy=at["accuracy"],
        val_loss=at["val_loss"], val_accuracy=at["val_accuracy"],
        test_loss=float(test_loss), test_accuracy=float(test_accuracy),
        seconds=round(time.perf_counter() - start, 3),
        val_macro_f1=float(val_f1), test_macro_f1=float(test_f1), best_epoch=kept + 1,
    )
    logger.info("run %d (seed %d): kept epoch %d of %d, val loss %.4f, val macro-F1 %.4f, test accuracy %.4f",
                k, seed, kept + 1, len(history["loss"]), record.val_loss, record.val_macro_f1, record.test_accuracy)
    return FinishedRun(record, history, model, plan)


def fine_tune(model: keras.Model, fit: keras.callbacks.History, train_ds: tf.data.Dataset,
              val_ds: tf.data.Dataset, config: TrainConfig, class_weight: Mapping[int, float] | None = None,
              callbacks: Sequence[keras.callbacks.Callback] = ()) -> None:
    """--fine-tune's second phase, once the head has converged on the frozen base.

    Unfreezes the top of the base at a tenth of the learning rate (``models.unfreeze_top``) and
    trains ``config.fine_tune_epochs`` more epochs (numbered on from the first phase's last, which
    may have stopped early); their history extends ``fit``'s.
    """
    unfreeze_top(model)
    done = len(fit.history.get("loss", ()))
    second = model.fit(
        train_ds, validation_data=val_ds, initial_epoch=done, epochs=done + config.fine_tune_epochs,
        shuffle=False, verbose=2 if config.verbose else 0, class_weight=class_weight, callbacks=list(callbacks),
    )
    for name, values in second.history.items():
        fit.history.setdefault(name, []).extend(values)


def _build(config: TrainConfig, num_classes: int, weights: str | None, seed: int | None = None,
           steps: int | None = None) -> keras.Model:
    """A fresh compiled model: the one --hparams describes, else --model."""
    size = tuple(config.size)
    if config.tuned is not None:
        return build_from_hparams(config.tuned, num_classes, size, weights=weights, seed=seed, steps_per_epoch=steps)
    return build_model(config.model, num_classes, size, dropout=config.dropout, weights=weights, seed=seed,
                       steps_per_epoch=steps, mixed_precision=config.mixed_precision)



def _crops(layout: Layout, config: TrainConfig, plan: SplitPlan) -> CropCache:
    """The process's decoded-crop cache with every crop of ``plan``: decoded on the first call only."""
    paths = [str(p) for p in _crop_paths(layout, plan)]
    return cache.crop_cache(layout.cache, paths, config.cache_budget, config.size)


def _crop_paths(layout: Layout, plan: SplitPlan) -> list[Path]:
    return [layout.pool / a.crop for a in plan.assignments]


def _best_info(task: Task, config: TrainConfig, plan: SplitPlan, record: RunRecord) -> dict[str, Any]:
    """best.json: everything needed to use the model and rebuild the split it was tested on."""
    # Only their version numbers are needed, and train_run has imported both by now.
    import keras
    import tensorflow as tf

    classes = list(plan.classes)
    weights = class_weights(plan, config.class_weight)
    return {
        "task": task.name,
        "classes": classes,
        "display_names": {c: task.display_name(c) for c in classes},
        "image_size": [int(v) for v in config.size],
        "resize": config.resize,
        "model": "tuned" if config.tuned is not None else config.model,
        "hparams": config.tuned.to_dict() if config.tuned is not None else None,
        "run": record.run,
        "seed": record.seed,
        "split": plan_to_dict(plan),
        "metrics": {
            "train": {"loss": record.train_loss, "accuracy": record.train_accuracy},
            "validate": {"loss": record.val_loss, "accuracy": record.val_accuracy, "macro_f1": record.val_macro_f1},
            "test": {"loss": record.test_loss, "accuracy": record.test_accuracy, "macro_f1": record.test_macro_f1},
        },
        "test_split": {"fixed": not config.resplit_test,
                       "seed": record.seed if config.resplit_test else config.seed},
        "select": config.select,
        "epoch": record.best_epoch,  # the epoch whose weights were kept, from 1
        "patience": config.patience,
        "class_weight": config.class_weight,
        "class_weights": None if weights is None else {cls: weights[i] for i, cls in enumerate(classes)},
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "augment": config.augmented,
        "mixed_precision": config.mixed_precision,
        "dropout": config.tuned.dropout if config.tuned is not None else (
            config.dropout if config.dropout is not None else default_dropout(config.model, len(classes))),
        "weights": config.model_weights,
        "fine_tune": _fine_tune_info(config),
        "input": {"color": "rgb", "resize": "bilinear", "range": "0-255 float; the model rescales itself",
                  "aspect": "kept, centred in zero bands" if config.resize == "pad" else "stretched"},
        "selection": _selection_text(config.select),
        "versions": {"toonvision": __version__, "tensorflow": tf.__version__, "keras": keras.__version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _fine_tune_info(config: TrainConfig) -> dict[str, Any] | None:
    """What --fine-tune did, for best.json (None without it)."""
    if not config.fine_tune:
        return None
    return {
        "epochs": config.fine_tune_epochs,
        "unfrozen_from": get_model_spec(config.model).fine_tune_from,
        "learning_rate": LEARNING_RATE * FINE_TUNE_RATE_FACTOR,
        "batch_norm": "frozen",
    }


def _selection_text(select: str) -> str:
    best = "highest" if higher_is_better(select) else "lowest"
    what = {"val_loss": "validation loss", "val_macro_f1": "validation macro-F1", "val_accuracy": "validation accuracy"}
    return (f"the run and, within it, the epoch with the {best} {what[select]}; ties by lower validation loss, "
            "then higher validation accuracy, then the earlier run")


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback:
    """Keras' TensorBoard callback into ``log_dir``; without the tensorboard package, the same epoch scalars.

    TensorFlow 2.16+ no longer installs tensorboard, and Keras' callback needs it; the fallback
    writes what it would per epoch (``train/`` and ``validation/`` event files, tags ``epoch_<metric>``)
    through TensorFlow's own summary writer, so ``tensorboard --logdir`` shows the runs either way.
    """
    import keras  # lazy: TensorFlow takes seconds to import

    try:
        import tensorboard  # noqa: F401  (only whether it is there)
    except ImportError:
        return _epoch_scalars(log_dir)
    return keras.callbacks.TensorBoard(log_dir=str(log_dir))


def _epoch_scalars(log_dir: Path) -> keras.callbacks.Callback:
    """A callback writing each epoch's logs as TensorBoard scalars (the class needs Keras: built here)."""
    import keras
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    scalar = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

    class EpochScalars(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.writers = {part: tf.summary.create_file_writer(str(log_dir / part))
                            for part in ("train", "validation")}

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            for name, value in (logs or {}).items():
                part, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
                with self.writers[part].as_default():
                    tf.summary.write(f"epoch_{tag}", tf.constant(float(value)), step=epoch, metadata=scalar)

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            for writer in self.writers.values():
                writer.close()

    return EpochScalars()


# -- at the end ------------------------------------------------------------------------------

def _save_ensemble(layout: Layout, task: Task, config: TrainConfig, ledger: Ledger) -> dict[str, Any]:
    """ensemble.keras + ensemble.json from the K best runs' models; its test metrics also go into best.json."""
    import keras  # lazy: TensorFlow takes seconds to import

    from toonvision.modelfile import load_model

    members = ledger.members
    best = ledger.best_info()
    plan = plan_from_dict(best["split"], str(ledger.out / BEST_INFO))
    keras.backend.clear_session()
    model = build_ensemble({r.run: load_model(ledger.member_path(r.run)) for r in members}, tuple(config.image_size))
    test_ds = datasets.from_plan(plan, layout.pool, "test", image_size=tuple(config.image_size),
                                 batch_size=config.batch_size, cache=_crops(layout, config, plan))
    labels = split_labels(plan, layout.pool, test_ds)
    probs = probabilities(model, test_ds)
    scores = classification_metrics(labels, decide(probs)[0], plan.classes)
    test = {"loss": log_loss(labels, probs), "accuracy": scores.accuracy, "macro_f1": scores.macro.f1}
    info = {
        **{key: value for key, value in best.items() if key not in ("model_sha256", "run", "seed", "epoch")},
        "ensemble": len(members),
        "members": [r.run for r in members],
        "member_seeds": [r.seed for r in members],
        "run": None,
        "split_note": f"test is the training's fixed test split, which every member was scored on and none trained "
                      f"on; train and validate are those of run {best['run']} (the other members split them otherwise)",
        "metrics": {"train": None, "validate": None, "test": test},
        "best_run": {"run": best["run"], "test": best["metrics"]["test"]},
        "selection": f"the {len(members)} best runs by {config.select}; output: the mean of their probabilities",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_ensemble(ledger.out, model, info)
    best["ensemble"] = {"members": info["members"], "test": test, "model": ENSEMBLE_MODEL}
    atomic_write_text(ledger.out / BEST_INFO, json.dumps(best, indent=2) + "\n")
    del model
    _release_memory()
    return info


def _write_chosen_split(layout: Layout, ledger: Ledger) -> Path:
    """Rebuild the chosen run's split from best.json into img/data/<task>/."""
    plan = plan_from_dict(ledger.best_info()["split"], str(ledger.out / BEST_INFO))
    try:
        with locked(layout.lock_file, str(layout.img_dir)):
            return Path(write_split(plan, layout))
    except PoolLockedError as exc:
        raise TrainingError(
            f"training finished and {ledger.out / BEST_MODEL} is saved, but the chosen split could not be written "
            f"to {layout.task_data(plan.task)} ({exc}); run the same command with --resume to write it"
        ) from None


def _draw_plots(
    out: Path, config: TrainConfig, classes: tuple[str, ...], histories: Sequence[Mapping[str, Any]],
    runs: Sequence[RunRecord],
) -> tuple[Path, ...]:
    """Training curves, test box plots and the architecture; a plot that fails is skipped with a warning."""
    title = f"{config.task}: {'tuned' if config.tuned is not None else config.model}, {len(runs)} run(s)"
    jobs = (
        (CURVES_PLOT, lambda path: plots.plot_training_curves([h["history"] for h in histories], path, title)),
        (BOXPLOT, lambda path: plots.plot_test_boxplots(
            [r.test_accuracy for r in runs], [r.test_loss for r in runs], path, title)),
        (ARCHITECTURE_PLOT, lambda path: plots.plot_architecture(_build(config, len(classes), None), path)),
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
    seed = recorded_config(out).get("seed") if config.resume else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = secrets.randbelow(1_000_000)
    return dataclasses.replace(config, seed=seed)


def resolve_weights(config: TrainConfig) -> str | None:
    """Find the pretrained weights before anything is written, so a missing file fails fast."""
    if config.model_weights is None:
        return None
    return resolve_mobilenet_weights(config.model_weights, config.size)


def resolve_image_size(
    config: TrainConfig, records: Sequence[CropRecord], task: Task, min_side: int | None = None
) -> TrainConfig:
    """``config`` with ``--image-size auto`` replaced by :func:`toonvision.decode.auto_image_size` of the
    task's crops (no side under ``min_side``, by default the model's smallest input); others unchanged."""
    if config.image_size != IMAGE_SIZE_AUTO:
        return config
    sizes = [(r.height, r.width) for r in records if task.class_of(r.label) is not None]
    size = auto_image_size(sizes, get_model_spec(config.model).min_size if min_side is None else min_side)
    logger.info("--image-size auto: %s from the median of %d crop sizes of task %s", size.as_text(), len(sizes),
                task.name)
    return dataclasses.replace(config, image_size=size)


def checked_image_size(task: str, value: tuple[int, int] | str | None) -> HW | str:
    """An HW, or ``auto``; None becomes the task's default (:func:`toonvision.constants.default_image_size`)."""
    value = default_image_size(task) if value is None else value
    if isinstance(value, str):
        if value.strip().lower() != IMAGE_SIZE_AUTO:
            raise UsageError(f"--image-size must be HEIGHTxWIDTH in pixels or {IMAGE_SIZE_AUTO}, got {value!r}")
        return IMAGE_SIZE_AUTO
    if len(value) != 2 or min(value) < 1:
        raise UsageError(f"--image-size must be HEIGHTxWIDTH in pixels, got {value}")
    return HW(int(value[0]), int(value[1]))


def pool_fingerprint(records: Sequence[CropRecord], task: Task) -> str:
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
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: its own allocator decides
        pass


def _release_memory() -> None:
    """Give the memory of the finished run back to the system before the next one.

    Without it, glibc keeps the freed tensors of every run in its per-thread arenas and the
    resident memory of a long training creeps up run after run (measured in bench/README.md).
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _show_best(bar: Bar, best: RunRecord | None, select: str) -> None:
    if best is not None:
        bar.set_postfix_str(f"best {select.replace('_', ' ')} {best.metric(select):.4f} (run {best.run})")


__all__ = [
    "ARCHITECTURE_PLOT", "BOXPLOT", "CURVES_PLOT", "PLOTS", "RunJob", "TrainConfig", "TrainResult",
    "best_epoch_callback", "checked_image_size", "class_weights", "fine_tune", "fixed_test_split",
    "free_large_buffers_eagerly", "macro_f1", "pool_fingerprint", "probabilities", "resolve_image_size",
    "resolve_weights", "run_job", "split_labels", "tensorboard_callback", "train", "train_run",
]
