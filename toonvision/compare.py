"""Compare models over the same re-splits: run k of every model trains and tests on split k.

    pool ──plan_split(seed + k, fixed_test)──▶ split k ──▶ run k of baseline, run k of optimized, ...
                                                  (fresh model, fresh optimizer, seed + k)
                                              ──▶ run k of reference: colour histograms + logistic
                                                  regression (toonvision.reference), no epochs

The test split is drawn once (seed, grouped, stratified) and shared by every run of every model;
only train/validate are re-split per run (``--resplit-test``: everything re-split per run).
    models/<task>/compare/                         (--out DIR)
    ├── compare.json          options, per-model statistics, every run's metrics and split
    ├── compare_runs.csv      model, run, seed, split, train/val/test loss and accuracy, val/test macro-F1,
    │                         seconds (epochs n/a for the reference)
    ├── compare_histories.jsonl  per-epoch history of every run
    ├── compare_curves.png    training curves averaged over runs, every model on one figure
    └── compare_boxplots.png  test accuracy and test loss per model

Giving every model the same splits makes the comparison paired: a split that happens to be
easy helps every model equally, so the spread between models is not split luck; the ``reference``
model shows on the same splits what a trivial classifier reaches on the data. Nothing is
written until every run has finished; a killed comparison leaves the previous outputs as they were.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toonvision import cache, plots
from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS_WEIGHT,
    DEFAULT_COMPARE_MODELS,
    DEFAULT_COMPARE_RUNS,
    DEFAULT_COMPARE_SEED,
    DEFAULT_EPOCHS,
    DEFAULT_MODEL,
    DEFAULT_PATIENCE,
    DEFAULT_RATIOS,
    DEFAULT_RESIZE,
    DEFAULT_SELECT,
    DEFAULT_WEIGHTS,
    FOLDER_LOCK,
    IMAGE_SIZE_AUTO,
)
from toonvision.errors import TrainingError, UsageError, write_error
from toonvision.executors import Executor, LocalExecutor, RunOrder, RunSite, failure_message
from toonvision.fsutil import (
    atomic_write_text,
    build_folder,
    recover_swap,
    remove_stale_temp_files,
    swap_directory,
)
from toonvision.layout import Layout
from toonvision.ledger import (
    LEDGER_COLUMNS,
    RunRecord,
    describe,
    make_folder,
)
from toonvision.locks import locked
from toonvision.manifest import CropRecord, load_pool
from toonvision.models import get_model_spec
from toonvision.progress import Bar, progress_bar
from toonvision.reference import REFERENCE_MODEL, FeatureTable, reference_run
from toonvision.split import SplitPlan, plan_split
from toonvision.tasks import Task, get_task
from toonvision.train import (
    TrainConfig,
    checked_image_size,
    fixed_test_split,
    resolve_image_size,
    resolve_weights,
    train_run,
)

logger = logging.getLogger(__name__)

COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare_runs.csv"
COMPARE_HISTORIES = "compare_histories.jsonl"
CURVES_PLOT = "compare_curves.png"
BOXPLOT = "compare_boxplots.png"
CURVE_KEYS = ("accuracy", "val_accuracy", "loss", "val_loss")
_METRICS = ("test_accuracy", "test_loss", "test_macro_f1")
NOT_APPLICABLE = "n/a"  # the reference's epochs in compare_runs.csv
RESULT_FILES = (COMPARE_JSON, COMPARE_CSV, COMPARE_HISTORIES, CURVES_PLOT, BOXPLOT)


@dataclass(frozen=True)
class CompareConfig:
    """What ``compare`` trains: every model of ``models`` on the same ``runs`` splits."""

    task: str
    models: tuple[str, ...] = DEFAULT_COMPARE_MODELS
    runs: int = DEFAULT_COMPARE_RUNS
    epochs: int = DEFAULT_EPOCHS
    seed: int = DEFAULT_COMPARE_SEED
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    image_size: tuple[int, int] | str | None = None  # None: the task's default; "auto": from the crop sizes
    resize: str = DEFAULT_RESIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    group: bool = True
    min_per_class: int | None = None
    weights: str | None = DEFAULT_WEIGHTS  # mobilenetv2 only
    task_config: Path | None = None
    verbose: bool = False
    class_weight: str = DEFAULT_CLASS_WEIGHT
    select: str = DEFAULT_SELECT  # the epoch each run keeps
    patience: int | None = DEFAULT_PATIENCE
    resplit_test: bool = False

    def __post_init__(self) -> None:
        models = tuple(self.models)
        if not models:
            raise UsageError("--models needs at least one model name, e.g. --models baseline optimized")
        if len(set(models)) != len(models):
            raise UsageError(f"--models names a model twice: {' '.join(models)}")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "image_size", checked_image_size(self.task, self.image_size))
        self.train_config(DEFAULT_MODEL)  # validates every shared option, also for a reference-only comparison
        for model in self.networks:
            self.train_config(model)  # validates the model name

    @property
    def networks(self) -> tuple[str, ...]:
        """The models that ``train_run`` trains (every one but the reference)."""
        return tuple(m for m in self.models if m != REFERENCE_MODEL)

    def train_config(self, model: str) -> TrainConfig:
        """The training options of one model's runs (shared by every model but the name)."""
        return TrainConfig(
            task=self.task, model=model, runs=self.runs, epochs=self.epochs, seed=self.seed,
            ratios=tuple(self.ratios), image_size=self.image_size, resize=self.resize, batch_size=self.batch_size,
            group=self.group, min_per_class=self.min_per_class, weights=self.weights,
            task_config=self.task_config, verbose=self.verbose, class_weight=self.class_weight,
            select=self.select, patience=self.patience, resplit_test=self.resplit_test,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "models": list(self.models), "runs": self.runs, "epochs": self.epochs,
            "seed": self.seed, "ratios": [float(r) for r in self.ratios],
            "image_size": (self.image_size if isinstance(self.image_size, str)
                           else [int(v) for v in self.image_size]),
            "resize": self.resize, "batch_size": self.batch_size,
            "group": self.group, "min_per_class": self.min_per_class, "weights": self.weights,
            "class_weight": self.class_weight, "select": self.select, "patience": self.patience,
            "resplit_test": self.resplit_test,
        }


@dataclass(frozen=True)
class ComparedRun:
    """Run k of one model: its metrics, its per-epoch history, and a digest of the split it used."""

    model: str
    split: str
    record: RunRecord
    history: Mapping[str, Sequence[float | None]] = field(repr=False, compare=False)

    def metric(self, name: str) -> float:
        """A metric of the run's record (``test_macro_f1``, ``val_loss``...)."""
        return float(getattr(self.record, name))

@dataclass(frozen=True)
class CompareResult:
    """Every run of every model, with per-model statistics and the files written."""

    config: CompareConfig
    classes: tuple[str, ...]
    runs: tuple[ComparedRun, ...]
    out: Path
    files: tuple[Path, ...] = ()

    def values(self, model: str, metric: str) -> list[float]:
        """The metric of every run of ``model`` (NaN where a run lacks it)."""
        values = (r.metric(metric) for r in self.runs if r.model == model)
        return [math.nan if v is None else float(v) for v in values]

    def statistics(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per model and metric (test accuracy, loss, macro-F1): median, mean, std, min, max over runs."""
        return {m: {metric: describe(self.values(m, metric)) for metric in _METRICS} for m in self.config.models}

    def table(self) -> str:
        stats = self.statistics()
        width = max(len("model"), *(len(m) for m in self.config.models))
        head = (f"{'model':<{width}}  {'runs':>4}  {'test accuracy: median':>21}  {'mean':>6}  {'std':>6}"
                f"  {'test loss: median':>17}  {'mean':>6}  {'std':>6}  {'test macro-F1: median':>21}  {'mean':>6}")
        lines = [head]
        for model in self.config.models:
            a, e, f = (stats[model][m] for m in _METRICS)
            lines.append(
                f"{model:<{width}}  {len(self.values(model, 'test_accuracy')):>4}  {a['median']:>21.4f}  "
                f"{a['mean']:>6.4f}  {a['std']:>6.4f}  {e['median']:>17.4f}  {e['mean']:>6.4f}  {e['std']:>6.4f}  "
                f"{f['median']:>21.4f}  {f['mean']:>6.4f}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        c = self.config
        size = c.image_size if isinstance(c.image_size, str) else f"{c.image_size[0]}x{c.image_size[1]}"
        lines = [
            f"task {c.task}: {', '.join(c.models)} over the same {c.runs} split(s) "
            f"(seeds {c.seed}..{c.seed + c.runs - 1}), "
            f"{c.epochs} epoch(s), {size} ({c.resize}), classes {', '.join(self.classes)}",
            self.table(),
        ]
        if self.files:
            lines.append(f"wrote {', '.join(p.name for p in self.files)} to {self.out}")
        return "\n".join(lines)


def mean_curves(histories: Sequence[Mapping[str, Sequence[float | None]]]) -> dict[str, list[float | None]]:
    """Per key, the mean over runs of each epoch (runs missing an epoch or with NaN left out)."""
    out: dict[str, list[float | None]] = {}
    for key in CURVE_KEYS:
        curves = [[math.nan if v is None else float(v) for v in h.get(key, ())] for h in histories]
        curves = [c for c in curves if c]
        if not curves:
            continue
        stacked = np.full((len(curves), max(map(len, curves))), np.nan)
        for row, curve in enumerate(curves):
            stacked[row, : len(curve)] = curve
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch where every run is NaN
            mean = np.nanmean(stacked, axis=0)
        out[key] = [float(v) if math.isfinite(v) else None for v in mean]
    return out


def split_digest(plan: SplitPlan) -> str:
    """A short fingerprint of which crop went to which split (equal digests: the same split)."""
    lines = sorted(f"{a.crop}\t{a.cls}\t{a.split}" for a in plan.assignments)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def compare(
    layout: Layout, config: CompareConfig, out: Path | None = None, progress: bool = False,
    executor: Executor | None = None,
) -> CompareResult:
    """Train every model of ``config`` on the same ``config.runs`` splits and write the comparison.

    ``executor`` runs them (default: here, one at a time; see :mod:`toonvision.executors`).
    """
    task = get_task(config.task, config.task_config)
    with locked(layout.lock_file, str(layout.img_dir)):
        records, _missing = load_pool(layout)
    config = resolve_compare_size(config, records, task)
    configs = {m: config.train_config(m) for m in config.networks}
    weights = {m: resolve_weights(c) for m, c in configs.items()}  # a missing weights file fails before training
    out = Path(out) if out is not None else layout.compare_dir(task.name)
    make_folder(out, "--out")
    shared = config.train_config(DEFAULT_MODEL)  # what every model shares: size, resize, seed, the reference's options
    fixed_test = fixed_test_split(records, task, shared)  # one test split for every model and run

    def plan(k: int) -> SplitPlan:
        return plan_split(records, task, tuple(config.ratios), config.seed + k,
                          group=config.group, min_per_class=config.min_per_class, fixed_test=fixed_test)

    first = plan(0)
    classes = tuple(first.classes)
    if len(classes) < 2:
        raise TrainingError(f"task {task.name!r} has fewer than 2 classes in {layout.pool}")
    jobs = (CompareJob(model, configs.get(model, shared), split, k, weights.get(model))
            for k, split in ((k, first if k == 0 else plan(k)) for k in range(config.runs)) for model in config.models)
    with locked(out.with_name(f".{out.name}{FOLDER_LOCK}"), str(out)):  # beside out: out itself is swapped
        bar = progress_bar(progress, config.runs * len(config.models), f"compare {config.task}", "run")
        try:
            runs = _dispatch_runs(executor or LocalExecutor(), layout, first, jobs, bar, config)
        finally:
            bar.close()
        result = CompareResult(config, classes, tuple(runs), out)
        files = write_comparison(result, out)
    return CompareResult(config, classes, tuple(runs), out, tuple(files))


def resolve_compare_size(config: CompareConfig, records: Sequence[CropRecord], task: Task) -> CompareConfig:
    """``--image-size auto`` chosen once from the task's crops, no side under any compared network's minimum."""
    if config.image_size != IMAGE_SIZE_AUTO:
        return config
    floor = max((get_model_spec(m).min_size for m in config.networks), default=1)
    size = resolve_image_size(config.train_config(DEFAULT_MODEL), records, task, min_side=floor).image_size
    return replace(config, image_size=size)


def _crops(layout: Layout, plan: SplitPlan, size: tuple[int, int], budget: int | str | None = None) -> cache.CropCache:
    """The decoded crops of ``plan``: the same process-wide cache the networks' runs use."""
    paths = [str(layout.pool / a.crop) for a in plan.assignments]
    return cache.crop_cache(layout.cache, paths, budget, size)


@dataclass(frozen=True)
class CompareJob:
    """Run ``run`` of one model: its options, the shared split, and the weights."""

    model: str
    config: TrainConfig
    plan: SplitPlan
    run: int
    weights: str | None


def compare_job(site: RunSite, job: CompareJob) -> ComparedRun:
    """The run function every executor calls: :func:`train_run` (or the reference's fit), metrics and history only."""
    if job.model == REFERENCE_MODEL:
        layout, c = site.layout(), job.config
        crops = _crops(layout, job.plan, c.size, c.cache_budget)
        record, _scores = reference_run(job.plan, layout.pool, job.run, c.seed + job.run, crops, _features(c.resize))
        return ComparedRun(job.model, split_digest(job.plan), record, {})
    finished = train_run(site.layout(), job.config, job.plan, job.run, job.weights)
    return ComparedRun(job.model, split_digest(job.plan), finished.record, dict(finished.history))


@functools.cache
def _features(resize: str) -> FeatureTable:
    """The reference's features, computed once per crop and resize mode in this process, then reused by every run."""
    return FeatureTable(resize)


def _dispatch_runs(
    executor: Executor, layout: Layout, first: SplitPlan, jobs: Iterator[CompareJob], bar: Bar,
    config: CompareConfig,
) -> list[ComparedRun]:
    """Every run through ``executor``, returned in job order (run, then model) whatever order they finish in."""
    if executor.remote:
        jobs = iter(list(jobs))
    site = executor.site(layout, [layout.pool / a.crop for a in first.assignments])
    order: RunOrder[ComparedRun] = RunOrder()
    runs: list[ComparedRun] = []
    with contextlib.closing(executor.map_runs(compare_job, jobs, site)) as outcomes:
        for outcome in outcomes:
            if outcome.ok:
                done = outcome.value
                bar.set_postfix_str(f"run {done.record.run} {done.model}: "
                                    f"test accuracy {done.record.test_accuracy:.3f}")
            bar.update(1)
            runs.extend(order.add(outcome))
    if order.failed:
        models = len(config.models)
        raise TrainingError(failure_message(
            f"comparison of {config.task}", order.failed, order.waiting,
            lambda i: f"run {i // models} of {config.models[i % models]}",
        ) + "; nothing was written")
    return runs


def write_comparison(result: CompareResult, out: Path) -> list[Path]:
    """compare.json, compare_runs.csv, compare_histories.jsonl and the two figures, all or none.

    They are written into a folder built beside ``out`` (holding links to anything else ``out``
    holds) and swapped in, so a kill leaves the previous results whole, or the new ones.
    """
    out = Path(out)
    try:
        recover_swap(out)
        remove_stale_temp_files(out)  # half-built folders of killed comparisons
        build = build_folder(out)
        if out.is_dir():
            shutil.copytree(out, build, copy_function=os.link,
                            ignore=lambda folder, names: RESULT_FILES if Path(folder) == out else ())
        else:
            build.mkdir()
    except OSError as exc:
        raise write_error(out, exc) from exc
    try:
        written = _write_results(result, build)
        swap_directory(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return [out / path.name for path in written]


def _write_results(result: CompareResult, out: Path) -> list[Path]:
    c = result.config
    atomic_write_text(out / COMPARE_JSON, json.dumps(_json_safe({
        "config": c.to_dict(),
        "classes": list(result.classes),
        "statistics": result.statistics(),
        "runs": [{"model": r.model, "split": r.split, **_record_dict(r)} for r in result.runs],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }), indent=2) + "\n")
    atomic_write_text(out / COMPARE_CSV, _runs_csv(result.runs))
    atomic_write_text(out / COMPARE_HISTORIES, "".join(
        json.dumps(_json_safe({"model": r.model, "run": r.record.run, "seed": r.record.seed,
                               "history": dict(r.history)})) + "\n"
        for r in result.runs
    ))
    written = [out / COMPARE_JSON, out / COMPARE_CSV, out / COMPARE_HISTORIES]
    title = f"{c.task}: {' vs '.join(c.models)}, {c.runs} shared split(s), {c.epochs} epoch(s)"
    curves = {m: mean_curves([r.history for r in result.runs if r.model == m]) for m in c.models}
    jobs = (
        (CURVES_PLOT, lambda path: plots.plot_compare_curves(curves, path, title)),
        (BOXPLOT, lambda path: plots.plot_compare_boxplots(
            {m: result.values(m, "test_accuracy") for m in c.models},
            {m: result.values(m, "test_loss") for m in c.models}, path, title)),
    )
    for name, draw in jobs:
        try:
            written.append(draw(out / name))
        except Exception as exc:  # a figure is never worth the runs that produced the numbers
            logger.warning("%s: could not draw this plot (%s: %s); skipped", out / name, type(exc).__name__, exc)
    return written


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a diverged run) become null, so the file stays valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _record_dict(run: ComparedRun) -> dict[str, Any]:
    values = asdict(run.record)
    if run.model == REFERENCE_MODEL:
        values["epochs"] = None  # the reference has no epochs
    return values


def _runs_csv(runs: Sequence[ComparedRun]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "split", *(LEDGER_COLUMNS if runs else ())])
    for r in runs:
        row = dict(zip(LEDGER_COLUMNS, r.record.to_row(), strict=True))
        if r.model == REFERENCE_MODEL:
            row["epochs"] = NOT_APPLICABLE
        writer.writerow([r.model, r.split, *row.values()])
    return buffer.getvalue()


__all__ = [
    "CompareConfig", "CompareJob", "CompareResult", "ComparedRun", "compare", "compare_job", "describe",
    "mean_curves", "resolve_compare_size", "split_digest", "write_comparison",
]
