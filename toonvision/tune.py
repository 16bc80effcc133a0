"""Search architectures and hyperparameters with keras-tuner on one train/validate split; test is never seen.

    img/unsorted/ (the pool)                     models/<task>/tune/
    ├── manifest.csv  --test split set aside-->  ├── .lock              held while a search runs
    └── <group>/*.png   as train sets it aside;  ├── tune.json          options, pool fingerprint, classes, space
                        the rest split ONCE      ├── trials.csv         one row per finished trial
                        into train/validate      ├── best_hparams.json  the best trial: train --hparams FILE
                        (grouped, stratified)    ├── tuning.png         objective per trial and best so far
                                                 └── keras_tuner/       keras-tuner's project (oracle.json, trial_*/)

The search space (:func:`declare_space`, built by :func:`toonvision.models.build_from_hparams`)::

    family        cnn | pretrained     pretrained only when MobileNetV2's ImageNet weights for the input
                                       size are in Keras' cache (never downloaded) and the image is >= 32 px
    cnn           conv_blocks          2 .. --max-blocks (each: conv, batch norm?, ReLU, max-pool 2)
                  filters              8 | 16 | 32 in the first block, doubling per block
                  kernel_size          3 | 5
                  batch_norm           on | off
    pretrained    base                 mobilenetv2
                  fine_tune            0 | 20 | 50 top layers of the base trained
    both          dropout              0.0 .. 0.5, step 0.1, before the head
                  learning_rate        1e-4 .. 1e-2, log-uniform (Adam)
                  lr_schedule          constant | exponential (x0.94 per epoch, as `optimized`)
                  class_weight         none | balanced (every class the same total weight)
                  augment              on | off (the flip/rotation/zoom of toonvision.augment)

Every trial trains a fresh model on the search split's train part and is scored on its validate
part at the last epoch (``--select``: val_loss, val_macro_f1 from the validation predictions, or
val_accuracy), the way ``train`` scores a run. Hyperband's later rounds train a fresh model for
their larger epoch budget instead of continuing an earlier trial's weights: each score is then the
score of what ``train --hparams`` would train. The test crops are never split, decoded nor fed.

Crash safety: keras-tuner's project is the search's ledger. After every trial it records the trial
and its own state (oracle.json, trial_*/trial.json, tuner0.json), written here through a temp file
and a rename so a kill never leaves half a JSON; trials.csv, best_hparams.json and tuning.png are
derived from it after every trial (atomically) and again by ``--resume``. A kill loses at most the
trial in progress, which ``--resume`` runs again (keras-tuner retries an unfinished trial); a
finished trial is never redone.

Fanning trials out: keras-tuner's own distributed mode is a chief oracle serving workers over gRPC
(KERASTUNER_ORACLE_IP/PORT, KERASTUNER_TUNER_ID), each worker a long-lived process asking for the
next trial, not a task per trial; Ray Tune can drive trials as tasks with its own search
algorithms, but not keras-tuner's oracles. This module runs trials one after another.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import datetime as dt
import gc
import io
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from toonvision import __version__, cache, datasets, plots
from toonvision.augment import DEFAULT_AUGMENT
from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_BLOCKS,
    DEFAULT_RATIOS,
    DEFAULT_TUNE_ALGORITHM,
    DEFAULT_TUNE_EPOCHS,
    DEFAULT_TUNE_SEED,
    DEFAULT_TUNE_TRIALS,
    DEFAULT_WEIGHTS,
    FOLDER_LOCK,
    TUNE_ALGORITHMS,
    TUNE_OBJECTIVES,
)
from toonvision.decode import find_undecodable
from toonvision.errors import ToonVisionError, TrainingError, UsageError
from toonvision.fsutil import atomic_write_text, remove_stale_temp_files
from toonvision.layout import TUNE_DIR, Layout
from toonvision.ledger import make_folder
from toonvision.locks import locked
from toonvision.manifest import CropRecord, load_pool
from toonvision.metrics import classification_metrics, decide
from toonvision.models import (
    CLASS_WEIGHTS,
    FAMILIES,
    LR_SCHEDULES,
    MOBILENET_MIN_SIZE,
    PRETRAINED_BASES,
    Hyperparameters,
    build_from_hparams,
    resolve_mobilenet_weights,
)
from toonvision.progress import Bar, progress_bar
from toonvision.split import SplitPlan, check_ratios, plan_split, plan_test_split
from toonvision.tasks import Task, get_task
from toonvision.train import class_weights, free_large_buffers_eagerly, pool_fingerprint

logger = logging.getLogger(__name__)

TUNE_INFO = "tune.json"
TRIALS = "trials.csv"
BEST_HPARAMS = "best_hparams.json"
TUNING_PLOT = "tuning.png"
PROJECT = "keras_tuner"
_DERIVED = (TRIALS, BEST_HPARAMS, TUNING_PLOT)

ALGORITHMS = TUNE_ALGORITHMS
_DIRECTIONS = {"val_loss": "min", "val_macro_f1": "max", "val_accuracy": "max"}
OBJECTIVES = {name: _DIRECTIONS[name] for name in TUNE_OBJECTIVES}  # --select: its direction
MIN_BLOCKS = 2
HYPERBAND_FACTOR = 3
FILTERS = (8, 16, 32)
KERNEL_SIZES = (3, 5)
FINE_TUNE = (0, 20, 50)
DROPOUT = (0.0, 0.5, 0.1)  # min, max, step
LEARNING_RATE = (1e-4, 1e-2)  # log-uniform
_METRICS = ("val_loss", "val_accuracy", "val_macro_f1")
_HPARAM_NAMES = tuple(f.name for f in fields(Hyperparameters))
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TuneConfig:
    """Everything that decides what ``tune`` does; validated on construction (the space too)."""

    task: str
    algorithm: str = DEFAULT_TUNE_ALGORITHM
    max_trials: int = DEFAULT_TUNE_TRIALS
    max_epochs: int = DEFAULT_TUNE_EPOCHS
    seed: int = DEFAULT_TUNE_SEED  # the split's (test set aside as `train --seed S` sets it aside) and the oracle's
    select: str = TUNE_OBJECTIVES[0]
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    group: bool = True
    min_per_class: int | None = None
    max_blocks: int = DEFAULT_MAX_BLOCKS
    weights: str | None = DEFAULT_WEIGHTS  # the pretrained family's: "imagenet" (Keras' cache), a file, or None
    task_config: Path | None = None
    resume: bool = False
    overwrite: bool = False
    verbose: bool = False
    cache_budget: int | str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.select not in OBJECTIVES:
            raise UsageError(f"--select must be one of {', '.join(OBJECTIVES)}, got {self.select!r}")
        for name, minimum in (("max_trials", 1), ("max_epochs", 1), ("batch_size", 1), ("seed", 0),
                              ("max_blocks", MIN_BLOCKS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise UsageError(f"--image-size must be HEIGHTxWIDTH in pixels, got {self.image_size}")
        ratios = check_ratios(self.ratios)
        if len(ratios) != 3:
            raise UsageError(
                "tune sets the test split aside as train does, so --ratio needs three numbers "
                f"(train validate test), got {' '.join(str(r) for r in self.ratios)}"
            )
        object.__setattr__(self, "ratios", ratios)
        if self.min_per_class is not None and self.min_per_class < 1:
            raise UsageError(f"--min-per-class must be >= 1, got {self.min_per_class}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        check_space(self.image_size, self.max_blocks)
        cache.cache_budget(self.cache_budget)

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.select]

    def identity(self, pretrained: str | None) -> dict[str, Any]:
        """What a resumed search must share with the original (--max-trials may grow), JSON-ready."""
        return {
            "task": self.task, "algorithm": self.algorithm, "max_epochs": self.max_epochs, "seed": self.seed,
            "select": self.select, "ratios": [float(r) for r in self.ratios],
            "image_size": [int(v) for v in self.image_size], "batch_size": self.batch_size, "group": self.group,
            "min_per_class": self.min_per_class, "max_blocks": self.max_blocks,
            "pretrained": Path(pretrained).name if pretrained else None,
        }


def check_space(image_size: Sequence[int], max_blocks: int) -> None:
    """The CNN family's largest network must fit the image: a UsageError before anything is searched."""
    side = min(int(v) for v in image_size)
    need = 2 ** (max_blocks + 1)  # the first pooling and one per block, one pixel left
    if side >= need:
        return
    fits = side.bit_length() - 2  # the most blocks this side survives
    fix = (f"pass --max-blocks {fits} or an --image-size of at least {need}x{need}" if fits >= MIN_BLOCKS
           else f"pass an --image-size of at least {2 ** (MIN_BLOCKS + 1)}x{2 ** (MIN_BLOCKS + 1)}")
    raise UsageError(
        f"the search space cannot fit a {image_size[0]}x{image_size[1]} image: {max_blocks} pooling blocks "
        f"(after the first pooling) need at least {need}x{need} pixels; {fix}"
    )


@dataclass(frozen=True)
class TrialRow:
    """One row of trials.csv: a finished trial, its hyperparameters and validation scores."""

    trial: str
    status: str
    hyperparameters: Mapping[str, Any]
    objective: float | None
    metrics: Mapping[str, float | None]
    epochs: int | None
    seconds: float | None


@dataclass(frozen=True)
class TuneResult:
    """What a search produced: its trials, the best one, and where the files are."""

    task: str
    classes: tuple[str, ...]
    select: str
    trials: tuple[TrialRow, ...]
    best: TrialRow | None
    output: Path
    seed: int
    resumed: int = 0  # trials found finished when this call started
    pretrained: bool = False
    plots: tuple[Path, ...] = field(default=())
    image_size: tuple[int, int] = (0, 0)

    def summary(self) -> str:
        done = [t for t in self.trials if t.status == "COMPLETED"]
        seconds = [t.seconds for t in done if t.seconds is not None]
        lines = [
            f"task {self.task}: {len(self.trials)} trial(s) ({len(done)} completed), classes {', '.join(self.classes)}"
            + (f" (resumed after {self.resumed})" if self.resumed else ""),
        ]
        if seconds:
            lines.append(f"time per trial: mean {sum(seconds) / len(seconds):.1f} s, total {sum(seconds):.1f} s")
        if not self.pretrained:
            lines.append("pretrained bases were not searched (no MobileNetV2 ImageNet weights in Keras' cache; "
                         "`toonvision train --model mobilenetv2` downloads them there)")
        if self.best is None:
            lines.append("no trial completed; nothing to recommend")
        else:
            b = self.best
            shown = ", ".join(f"{k}={_shown(v)}" for k, v in b.hyperparameters.items())
            lines.append(f"best on validation: trial {b.trial}, {self.select} {b.objective:.4f} after {b.epochs} "
                         f"epoch{'' if b.epochs == 1 else 's'}")
            lines.append(f"  {shown}")
            size = f"{self.image_size[0]}x{self.image_size[1]}"
            lines.append(f"train it: toonvision train --task {self.task} --hparams {self.output / BEST_HPARAMS} "
                         f"--seed {self.seed} --epochs {b.epochs} --image-size {size} --runs N")
        lines.append(f"trials: {self.output / TRIALS}")
        return "\n".join(lines)


def tune(layout: Layout, config: TuneConfig, progress: bool = False) -> TuneResult:
    """Search the space on one train/validate split of the pool (test set aside); write models/<task>/tune/."""
    task = get_task(config.task, config.task_config)
    with locked(layout.lock_file, str(layout.img_dir)):
        records, _missing = load_pool(layout)
    rest, _test = _set_test_aside(records, task, config)
    plan = search_plan(rest, task, config)
    classes = tuple(plan.classes)
    pretrained = _pretrained_weights(config)
    crops = cache.crop_cache(layout.cache, [str(layout.pool / a.crop) for a in plan.assignments],
                             config.cache_budget, tuple(config.image_size))  # decoded before anything is written
    out = layout.tune_dir(task.name)
    make_folder(out, "--models-dir")
    info = {"config": config.identity(pretrained), "pool": pool_fingerprint(records, task), "classes": list(classes),
            "space": describe_space(config.max_blocks, pretrained is not None)}
    with locked(out / FOLDER_LOCK, str(out)):
        _start(out, info, config)
        failure: list[ToonVisionError] = []
        runner = _TrialRunner(layout, config, plan, crops, pretrained, failure)
        with _quiet_stdout(config.verbose), _atomic_keras_tuner_writes():
            tuner = _make_tuner(config, out, pretrained is not None, runner)
            finished = _finished(tuner.oracle)
            bar = progress_bar(progress, _trial_budget(config, tuner.oracle), f"tune {task.name}", "trial",
                               initial=finished)
            tuner.on_end = lambda: _after_trial(out, config, tuner.oracle, classes, bar)
            try:
                _search(tuner, config, failure)
            finally:
                bar.close()
        rows, best, drawn = _write_outputs(out, config, tuner.oracle, classes)
    return TuneResult(task.name, classes, config.select, rows, best, out, config.seed, finished,
                      pretrained is not None, drawn, tuple(config.image_size))


# -- the split: test aside, then one train/validate split of the rest ----------------------------

def _set_test_aside(records: Sequence[CropRecord], task: Task, config: TuneConfig) -> tuple[
        list[CropRecord], list[CropRecord]]:
    """(the task's crops left for the search, the test crops): the fixed test split ``train --seed S`` draws."""
    test = plan_test_split(records, task, tuple(config.ratios), config.seed,
                           group=config.group, min_per_class=config.min_per_class)
    kept = {a.crop for a in plan_split(records, task, tuple(config.ratios), config.seed, group=config.group,
                                       min_per_class=config.min_per_class, fixed_test=test).assignments
            if a.split != "test"}
    return [r for r in records if r.crop in kept], [r for r in records if r.crop in test]


def search_plan(rest: Sequence[CropRecord], task: Task, config: TuneConfig) -> SplitPlan:
    """The one grouped, stratified train/validate split the whole search trains and scores on."""
    train, validate = config.ratios[0], config.ratios[1]
    return plan_split(rest, task, (train / (train + validate), validate / (train + validate)), config.seed,
                      group=config.group)


def _pretrained_weights(config: TuneConfig) -> str | None:
    """MobileNetV2's weights file when the pretrained family can be searched, else None (said in the log)."""
    if config.weights is None or min(config.image_size) < MOBILENET_MIN_SIZE:
        logger.info("pretrained bases left out of the space (no --weights, or an image under %d px)",
                    MOBILENET_MIN_SIZE)
        return None
    try:
        return resolve_mobilenet_weights(config.weights, tuple(config.image_size), download=False)
    except TrainingError as exc:
        logger.info("pretrained bases left out of the space: %s", exc)
        return None


# -- the space -------------------------------------------------------------------------------------

def declare_space(hp: Any, max_blocks: int, pretrained: bool) -> Hyperparameters:
    """Declare the space on keras-tuner's ``hp`` and return the point it holds (see the module docstring)."""
    family = hp.Choice("family", FAMILIES) if pretrained else "cnn"
    values: dict[str, Any] = {"family": family}
    scope = (lambda: hp.conditional_scope("family", [family])) if pretrained else contextlib.nullcontext
    with scope():
        if family == "cnn":
            values.update(
                conv_blocks=hp.Int("conv_blocks", MIN_BLOCKS, max_blocks),
                filters=hp.Choice("filters", FILTERS),
                kernel_size=hp.Choice("kernel_size", KERNEL_SIZES),
                batch_norm=hp.Boolean("batch_norm"),
            )
        else:
            values.update(base=hp.Choice("base", PRETRAINED_BASES), fine_tune=hp.Choice("fine_tune", FINE_TUNE))
    low, high, step = DROPOUT
    values.update(
        dropout=round(hp.Float("dropout", low, high, step=step), 4),
        learning_rate=hp.Float("learning_rate", *LEARNING_RATE, sampling="log"),
        lr_schedule=hp.Choice("lr_schedule", LR_SCHEDULES),
        class_weight=hp.Choice("class_weight", CLASS_WEIGHTS),
        augment=hp.Boolean("augment"),
    )
    return Hyperparameters(**values)


def describe_space(max_blocks: int, pretrained: bool) -> dict[str, Any]:
    """The space as tune.json records it (a resume needs the same one)."""
    space: dict[str, Any] = {
        "family": list(FAMILIES) if pretrained else ["cnn"],
        "conv_blocks": [MIN_BLOCKS, max_blocks], "filters": list(FILTERS), "kernel_size": list(KERNEL_SIZES),
        "batch_norm": [False, True], "dropout": list(DROPOUT), "learning_rate": [*LEARNING_RATE, "log"],
        "lr_schedule": list(LR_SCHEDULES), "class_weight": list(CLASS_WEIGHTS), "augment": [False, True],
    }
    if pretrained:
        space.update(base=list(PRETRAINED_BASES), fine_tune=list(FINE_TUNE))
    return space


def _hparams_of(values: Mapping[str, Any]) -> Hyperparameters:
    """The point a trial's recorded values (keras-tuner's, with its tuner/* entries) describe."""
    known = {k: v for k, v in values.items() if k in _HPARAM_NAMES}
    if isinstance(known.get("dropout"), float):
        known["dropout"] = round(known["dropout"], 4)  # keras-tuner's steps: 0.30000000000000004
    return Hyperparameters.from_dict(known)


# -- one trial -------------------------------------------------------------------------------------

class _TrialRunner:
    """Trains one trial's fresh model on the search split and scores it on validation."""

    def __init__(self, layout: Layout, config: TuneConfig, plan: SplitPlan, crops: cache.CropCache,
                 weights: str | None, failure: list[ToonVisionError]) -> None:
        self.layout, self.config, self.plan, self.crops = layout, config, plan, crops
        self.weights = weights
        self.failure = failure  # a ToonVisionError that stopped the search, re-raised after it

    def __call__(self, trial: Any) -> dict[str, float]:
        import keras_tuner as kt

        try:
            spec = declare_space(trial.hyperparameters, self.config.max_blocks, self.weights is not None)
            epochs = int(trial.hyperparameters.values.get("tuner/epochs", self.config.max_epochs))
            return self._train(spec, epochs, self.config.seed + int(trial.trial_id))
        except ToonVisionError as exc:
            self.failure.append(exc)
            raise kt.errors.FatalError(str(exc)) from exc
        finally:
            gc.collect()

    def _train(self, spec: Hyperparameters, epochs: int, seed: int) -> dict[str, float]:
        # Keras and TensorFlow load with the first trial: they take seconds to import.
        import keras
        import numpy as np
        import tensorflow as tf

        start = time.perf_counter()
        free_large_buffers_eagerly()
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        config, plan = self.config, self.plan
        size = tuple(config.image_size)
        common = dict(image_size=size, batch_size=config.batch_size, cache=self.crops)
        train_ds = datasets.from_plan(plan, self.layout.pool, "train", shuffle=True, seed=seed,
                                      augment=DEFAULT_AUGMENT if spec.augment else None, **common)
        val_ds = datasets.from_plan(plan, self.layout.pool, "validate", **common)
        steps = math.ceil(len(train_ds.file_paths) / config.batch_size)
        model = build_from_hparams(spec, len(plan.classes), size, weights=self.weights if spec.uses_weights else None,
                                   seed=seed, steps_per_epoch=steps)
        class_weight = class_weights(plan, spec.class_weight)
        try:
            fit = model.fit(train_ds, validation_data=val_ds, epochs=epochs, shuffle=False,
                            verbose=2 if config.verbose else 0, class_weight=class_weight)
            raw = np.asarray(model.predict(val_ds, verbose=0), dtype=np.float64)
        except tf.errors.OpError as exc:
            bad = find_undecodable(train_ds.file_paths + val_ds.file_paths)
            if bad is not None:
                raise bad from None
            first = exc.message.splitlines()[0]
            raise TrainingError(f"a trial (seed {seed}) failed inside TensorFlow: {first}") from None
        probabilities = np.concatenate([1.0 - raw, raw], axis=1) if raw.shape[1] == 1 else raw
        predicted, _ = decide(probabilities)
        scores = classification_metrics(validation_labels(plan), predicted, plan.classes)
        return {
            "val_loss": float(fit.history["val_loss"][-1]),
            "val_accuracy": float(fit.history["val_accuracy"][-1]),
            "val_macro_f1": scores.macro.f1,
            "epochs": float(epochs),
            "seconds": round(time.perf_counter() - start, 3),
        }


def validation_labels(plan: SplitPlan) -> list[int]:
    """Class indices of the validate split in ``datasets.from_plan``'s order (class, then crop)."""
    return sorted(plan.classes.index(a.cls) for a in plan.files("validate"))


# -- keras-tuner ---------------------------------------------------------------------------------

def _make_tuner(config: TuneConfig, out: Path, pretrained: bool, runner: Callable[[Any], dict[str, float]]) -> Any:
    """keras-tuner's tuner for ``--algorithm``, reloading the project in ``out`` when there is one."""
    import keras_tuner as kt  # loads with the search: it imports TensorFlow

    class SearchTuner(kt.Tuner):
        """Runs each trial through ``runner`` (no checkpoints kept) and reports each finished trial."""

        on_end: Callable[[], None] = staticmethod(lambda: None)

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            return runner(trial)

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            self.on_end()

    objective = kt.Objective(config.select, config.direction)
    common = dict(objective=objective, seed=config.seed, max_retries_per_trial=0, max_consecutive_failed_trials=3)
    if config.algorithm == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=config.max_epochs, factor=HYPERBAND_FACTOR, **common)
    elif config.algorithm == "random":
        oracle = kt.oracles.RandomSearchOracle(max_trials=config.max_trials, **common)
    else:
        oracle = kt.oracles.BayesianOptimizationOracle(max_trials=config.max_trials, **common)
    oracle.max_trials = config.max_trials  # Hyperband's cap too; a resume may raise it

    def build(hp: Any) -> Any:
        import keras

        spec = declare_space(hp, config.max_blocks, pretrained)
        keras.backend.clear_session()
        return build_from_hparams(spec, 2, tuple(config.image_size), weights=None)  # only discovers the space

    tuner = SearchTuner(oracle=oracle, hypermodel=build, directory=str(out), project_name=PROJECT, overwrite=False)
    _requeue_interrupted(tuner.oracle)
    return tuner


def _requeue_interrupted(oracle: Any) -> None:
    """Queue again every trial a kill left RUNNING that keras-tuner's reload did not queue itself.

    keras-tuner writes a new trial's trial.json before oracle.json; a kill between the two leaves a
    trial that counts against --max-trials but is neither finished nor retried (nor in start_order).
    """
    queued = set(oracle._retry_queue)  # keras-tuner's own retry list (not public API), filled by its reload
    for trial_id, trial in sorted(oracle.trials.items()):
        if trial.status == "RUNNING" and trial_id not in queued:
            logger.info("trial %s was cut short by a kill; it runs again", trial_id)
            oracle._retry_queue.append(trial_id)
            if trial_id not in oracle.start_order:  # the kill also cut its place in the order trials.csv follows
                bisect.insort(oracle.start_order, trial_id)


def _search(tuner: Any, config: TuneConfig, failure: list[ToonVisionError]) -> None:
    """Run trials until the budget is spent; a ToonVisionError in a trial stops the search and is re-raised."""
    import keras_tuner as kt

    try:
        tuner.search(verbose=1 if config.verbose else 0)
    except kt.errors.FatalError:
        if failure:
            raise failure[0] from None
        raise
    except RuntimeError as exc:  # keras-tuner gives up after consecutive failed trials
        if "consecutive failures" not in str(exc):
            raise
        last = str(exc).strip().splitlines()[-1]
        raise TrainingError(f"the search stopped: 3 trials in a row failed (last: {last}); "
                            f"see {TRIALS}, fix the cause and run again with --resume") from None


def _trial_budget(config: TuneConfig, oracle: Any) -> int:
    """Trials the search will run: --max-trials, or fewer when Hyperband's brackets end first."""
    if config.algorithm != "hyperband":
        return config.max_trials
    try:  # keras-tuner's own bracket sizes (not public API); a progress total only
        brackets = oracle._get_num_brackets()
        natural = sum(oracle._get_size(b, r) for b in range(brackets) for r in range(b + 1))
    except (AttributeError, TypeError):
        return config.max_trials
    return min(config.max_trials, int(natural))


def _finished(oracle: Any) -> int:
    return sum(1 for t in oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID"))


@contextlib.contextmanager
def _atomic_keras_tuner_writes() -> Iterator[None]:
    """keras-tuner's JSON writer (oracle.json, trial.json, tuner0.json) through a temp file and a rename."""
    from keras_tuner.src import utils as kt_utils  # its one writer of state; wrapped for the search only

    original = kt_utils.save_json

    def save_json(path: str, obj: Any) -> str:
        text = json.dumps(obj)
        atomic_write_text(Path(path), text)
        return text

    kt_utils.save_json = save_json
    try:
        yield
    finally:
        kt_utils.save_json = original


@contextlib.contextmanager
def _quiet_stdout(verbose: bool) -> Iterator[None]:
    """keras-tuner prints ("Reloading Tuner from ...", trial tables) and warns; shown with -v only."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="keras_tuner")  # its threading calls
        yield


# -- starting, resuming, refusing ----------------------------------------------------------------

def _start(out: Path, info: Mapping[str, Any], config: TuneConfig) -> None:
    """A new search, a resumed one (same options), or a clear refusal; --overwrite starts again."""
    remove_stale_temp_files(out, "*", recursive=True)
    path = out / TUNE_INFO
    previous = _read_json(path) if path.exists() else None
    exists = previous is not None or (out / PROJECT).exists()
    if exists and not config.overwrite:
        old_task = (previous or {}).get("config", {}).get("task")
        if old_task is not None and old_task != config.task:
            raise UsageError(f"{out} holds a search for task {old_task!r}, not {config.task!r}; "
                             "move it aside or pass --overwrite to start a search for this task there")
        if not config.resume:
            raise UsageError(f"{out} already holds a search; pass --resume to continue it or --overwrite to "
                             "start again")
        if previous is None:
            raise UsageError(f"{out} holds a keras-tuner project but no {TUNE_INFO}; pass --overwrite to start again")
        _check_same_search(out, previous, info)
        logger.info("%s: resuming the search", out)
        return
    for name in _DERIVED:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PROJECT, ignore_errors=True)
    atomic_write_text(path, json.dumps(dict(info), indent=2) + "\n")


def _check_same_search(out: Path, previous: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    old, new = previous.get("config", {}), current["config"]
    differ = [f"{k}={old.get(k)!r} (now {v!r})" for k, v in new.items() if old.get(k) != v]
    if previous.get("space") != current["space"]:
        differ.append("the search space")
    if differ:
        raise UsageError(f"{out} was searched with {', '.join(differ)}; --resume needs the same options "
                         "(only --max-trials may grow), or pass --overwrite to start again")
    if previous.get("pool") != current["pool"]:
        raise UsageError(f"{out}: the pool's crops for task {new['task']!r} changed since this search started; "
                         "pass --overwrite to search again")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: cannot be read ({exc}); pass --overwrite to start the search again") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: not a search record; pass --overwrite to start the search again")
    return data


# -- outputs: derived from keras-tuner's project after every trial -------------------------------

def _after_trial(out: Path, config: TuneConfig, oracle: Any, classes: Sequence[str], bar: Bar) -> None:
    _rows, best, _ = _write_outputs(out, config, oracle, classes, draw=False)
    bar.update(1)
    if best is not None and best.objective is not None:
        bar.set_postfix_str(f"best {config.select} {best.objective:.4f} (trial {best.trial})")


def trial_rows(oracle: Any, select: str) -> list[TrialRow]:
    """The finished trials of keras-tuner's ``oracle``, in trial order."""
    rows = []
    order = [t for t in oracle.start_order if t in oracle.trials]
    for trial_id in order + sorted(set(oracle.trials) - set(order)):
        trial = oracle.trials[trial_id]
        if trial.status not in ("COMPLETED", "FAILED", "INVALID"):
            continue  # running, or stopped before it began
        values = _hparams_of(trial.hyperparameters.values).to_dict()
        metrics = {name: _metric(trial, name) for name in _METRICS}
        epochs = _metric(trial, "epochs")
        rows.append(TrialRow(trial_id, trial.status, values, metrics.get(select) if trial.status == "COMPLETED"
                             else None, metrics, None if epochs is None else int(epochs), _metric(trial, "seconds")))
    return rows


def choose_best(rows: Sequence[TrialRow], select: str) -> TrialRow | None:
    """The completed trial best by the objective (validation only).

    Ties (macro-F1 and accuracy saturate on easy data): the lower validation loss, or with
    ``val_loss`` as the objective the higher validation accuracy; then the earlier trial.
    """
    scored = [r for r in rows if r.status == "COMPLETED" and r.objective is not None and math.isfinite(r.objective)]
    if not scored:
        return None
    sign = 1.0 if OBJECTIVES[select] == "min" else -1.0
    tie, tie_sign = ("val_accuracy", -1.0) if select == "val_loss" else ("val_loss", 1.0)

    def key(item: tuple[int, TrialRow]) -> tuple[float, float, int]:
        index, row = item
        second = row.metrics.get(tie)
        return (sign * row.objective, tie_sign * second if second is not None and math.isfinite(second)
                else math.inf, index)

    return min(enumerate(scored), key=key)[1]


def _metric(trial: Any, name: str) -> float | None:
    if not trial.metrics.exists(name):
        return None
    value = trial.metrics.get_last_value(name)
    return None if value is None else float(value)


def _write_outputs(out: Path, config: TuneConfig, oracle: Any, classes: Sequence[str], draw: bool = True
                   ) -> tuple[tuple[TrialRow, ...], TrialRow | None, tuple[Path, ...]]:
    rows = trial_rows(oracle, config.select)
    best = choose_best(rows, config.select)
    atomic_write_text(out / TRIALS, format_trials(rows, config.select))
    if best is not None:
        atomic_write_text(out / BEST_HPARAMS, json.dumps(_best_info(config, classes, best, len(rows)), indent=2) + "\n")
    drawn: tuple[Path, ...] = ()
    if draw and rows:
        try:
            drawn = (plots.plot_tuning([r.objective for r in rows], out / TUNING_PLOT, name=config.select,
                                       direction=config.direction,
                                       title=f"{config.task}: {config.algorithm} search, {len(rows)} trial(s)"),)
        except Exception as exc:  # a figure is never worth the search that produced it
            logger.warning("%s: could not draw the plot (%s: %s); skipped", out / TUNING_PLOT, type(exc).__name__, exc)
    return tuple(rows), best, drawn


def format_trials(rows: Sequence[TrialRow], select: str) -> str:
    """trials.csv: trial, status, every hyperparameter, the objective, the validation metrics, epochs, seconds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "status", *_HPARAM_NAMES, "objective", *_METRICS, "epochs", "seconds"])
    for r in rows:
        writer.writerow([
            r.trial, r.status, *(_cell(r.hyperparameters.get(name)) for name in _HPARAM_NAMES),
            _cell(r.objective), *(_cell(r.metrics.get(m)) for m in _METRICS), _cell(r.epochs), _cell(r.seconds),
        ])
    return buffer.getvalue()


def _best_info(config: TuneConfig, classes: Sequence[str], best: TrialRow, trials: int) -> dict[str, Any]:
    """best_hparams.json: what train --hparams needs, and how the search that found it was made."""
    # Only their version numbers; the search has imported all three by now.
    import keras
    import keras_tuner
    import tensorflow as tf

    return {
        "format": FORMAT_VERSION,
        "task": config.task,
        "classes": list(classes),
        "image_size": [int(v) for v in config.image_size],
        "hyperparameters": dict(best.hyperparameters),
        "objective": {"name": config.select, "direction": config.direction, "value": best.objective},
        "validation": dict(best.metrics),
        "trial": best.trial,
        "epochs": best.epochs,
        "batch_size": config.batch_size,
        "split": {"seed": config.seed, "ratios": [float(r) for r in config.ratios], "grouped": config.group,
                  "min_per_class": config.min_per_class,
                  "test": "set aside before the search, as `train --seed` sets it aside; never seen"},
        "search": {"algorithm": config.algorithm, "trials": trials, "max_trials": config.max_trials,
                   "max_epochs": config.max_epochs},
        "versions": {"toonvision": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "keras_tuner": keras_tuner.__version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (Python 3.10)
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _shown(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


__all__ = [
    "ALGORITHMS", "BEST_HPARAMS", "OBJECTIVES", "PROJECT", "TRIALS", "TUNE_DIR", "TUNE_INFO", "TUNING_PLOT",
    "TrialRow", "TuneConfig", "TuneResult", "check_space", "choose_best", "declare_space", "describe_space",
    "format_trials", "search_plan", "trial_rows", "tune", "validation_labels",
]
