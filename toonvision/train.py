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
import logging
import math
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toonvision import __version__, cache, datasets, plots
from toonvision.augment import DEFAULT_AUGMENT
from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    DEFAULT_RATIOS,
    DEFAULT_RUNS,
    DEFAULT_WEIGHTS,
)
from toonvision.decode import find_undecodable
from toonvision.errors import (
    PoolLockedError,
    ToonVisionError,
    TrainingError,
    UsageError,
)
from toonvision.executors import Executor, LocalExecutor, RunOrder, RunSite, failure_message, portable
from toonvision.layout import BEST_INFO, BEST_MODEL, Layout
from toonvision.ledger import (
    LEDGER,
    FinishedRun,
    Ledger,
    RunRecord,
    describe,
    make_folder,
    recorded_config,
)
from toonvision.locks import locked
from toonvision.manifest import CropRecord, load_pool
from toonvision.models import (
    build_model,
    default_dropout,
    get_model_spec,
    resolve_mobilenet_weights,
)
from toonvision.progress import Bar, progress_bar
from toonvision.split import (
    SplitPlan,
    check_ratios,
    plan_from_dict,
    plan_split,
    plan_to_dict,
    write_split,
)
from toonvision.tasks import Task, get_task

if TYPE_CHECKING:
    from toonvision.cache import CropCache

logger = logging.getLogger(__name__)

CURVES_PLOT = "training_curves.png"
BOXPLOT = "test_metrics.png"
ARCHITECTURE_PLOT = "architecture.png"
PLOTS = (CURVES_PLOT, BOXPLOT, ARCHITECTURE_PLOT)
# The options a --resume must share with the training it continues (runs may grow).
_IDENTITY = ("task", "model", "epochs", "seed", "ratios", "image_size", "batch_size", "group",
             "min_per_class", "weights", "dropout", "augment", "mixed_precision")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what ``train`` does; validated on construction."""

    task: str
    model: str = DEFAULT_MODEL
    runs: int = DEFAULT_RUNS
    epochs: int = DEFAULT_EPOCHS
    seed: int | None = None  # None: chosen at random (or, with resume, the resumed training's)
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
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
        cache.cache_budget(self.cache_budget)  # a bad size fails here, before any work

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
    config = _resolve_seed(config, out)
    first = _plan(records, task, config, 0)  # a task with < 2 classes fails here, before any write
    classes = tuple(first.classes)  # the same for every seed: they depend on the pool and --min-per-class only
    weights = resolve_weights(config)
    _crops(layout, config, first)  # decode every crop of the task once, before anything is written
    make_folder(out, "--models-dir")
    with Ledger.open(out, config.identity(), _pool_fingerprint(records, task), classes,
                     resume=config.resume, overwrite=config.overwrite, derived=PLOTS) as ledger:
        resumed = ledger.next_run
        bar = progress_bar(progress, config.runs, f"train {task.name}", "run", initial=min(resumed, config.runs))
        try:
            _show_best(bar, ledger.best)
            plans = (first if k == 0 else _plan(records, task, config, k) for k in range(resumed, config.runs))
            _dispatch_runs(executor or LocalExecutor(), layout, config, first, plans, weights, ledger, task, bar)
        finally:
            bar.close()
        runs, best = ledger.done, ledger.best
        split_dir = _write_chosen_split(layout, ledger)
        plots = _draw_plots(out, config, classes, ledger.histories, runs)
    return TrainResult(
        task.name, config.model, classes, runs, best, out, split_dir,
        config.seed, seed_chosen, resumed, plots,
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
                _show_best(bar, ledger.best)
                del finished  # the model: its memory goes back before the next run
            del outcome
            _release_memory()
    if order.failed:
        raise TrainingError(failure_message(
            f"training of {task.name}", order.failed, order.waiting,
            lambda i: f"run {start + i} (seed {config.seed + start + i})",
        ) + f"; {ledger.next_run} run(s) are committed: run the same command with --resume to train the rest")


# -- one run -------------------------------------------------------------------------------

def _plan(records: list[CropRecord], task: Task, config: TrainConfig, k: int) -> SplitPlan:
    return plan_split(
        records, task, tuple(config.ratios), config.seed + k,
        group=config.group, min_per_class=config.min_per_class,
    )


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
    return FinishedRun(record, history, model, plan)


def _crops(layout: Layout, config: TrainConfig, plan: SplitPlan) -> CropCache:
    """The process's decoded-crop cache with every crop of ``plan``: decoded on the first call only."""
    paths = [str(p) for p in _crop_paths(layout, plan)]
    return cache.crop_cache(layout.cache, paths, config.cache_budget, tuple(config.image_size))


def _crop_paths(layout: Layout, plan: SplitPlan) -> list[Path]:
    return [layout.pool / a.crop for a in plan.assignments]


def _best_info(task: Task, config: TrainConfig, plan: SplitPlan, record: RunRecord) -> dict[str, Any]:
    """best.json: everything needed to use the model and rebuild the split it was tested on."""
    # Only their version numbers are needed, and train_run has imported both by now.
    import keras
    import tensorflow as tf

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
        "versions": {"toonvision": __version__, "tensorflow": tf.__version__, "keras": keras.__version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# -- at the end ------------------------------------------------------------------------------

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
    seed = recorded_config(out).get("seed") if config.resume else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = secrets.randbelow(1_000_000)
    return dataclasses.replace(config, seed=seed)


def resolve_weights(config: TrainConfig) -> str | None:
    """Find the pretrained weights before anything is written, so a missing file fails fast."""
    if config.model_weights is None:
        return None
    return resolve_mobilenet_weights(config.model_weights, tuple(config.image_size))


def _pool_fingerprint(records: Sequence[CropRecord], task: Task) -> str:
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


def _show_best(bar: Bar, best: RunRecord | None) -> None:
    if best is not None:
        bar.set_postfix_str(f"best val loss {best.val_loss:.4f} (run {best.run})")


__all__ = [
    "ARCHITECTURE_PLOT", "BOXPLOT", "CURVES_PLOT", "PLOTS", "RunJob", "TrainConfig", "TrainResult",
    "free_large_buffers_eagerly", "resolve_weights", "run_job", "train", "train_run",
]
