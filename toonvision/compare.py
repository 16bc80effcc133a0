"""Compare models over the same re-splits: run k of every model trains and tests on split k.

    pool ──plan_split(seed + k)──▶ split k ──▶ run k of baseline, run k of optimized, ...
                                                  (fresh model, fresh optimizer, seed + k)
    models/<task>/compare/                         (--out DIR)
    ├── compare.json          options, per-model statistics, every run's metrics and split
    ├── compare_runs.csv      model, run, seed, split, train/val/test loss and accuracy, seconds
    ├── compare_histories.jsonl  per-epoch history of every run
    ├── compare_curves.png    training curves averaged over runs, every model on one figure
    └── compare_boxplots.png  test accuracy and test loss per model

Giving every model the same splits makes the comparison paired: a split that happens to be
easy helps every model equally, so the spread between models is not split luck. Nothing is
written until every run has finished; a killed comparison leaves the previous outputs as they were.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toonvision import plots
from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPARE_MODELS,
    DEFAULT_COMPARE_RUNS,
    DEFAULT_COMPARE_SEED,
    DEFAULT_EPOCHS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_RATIOS,
    DEFAULT_WEIGHTS,
    FOLDER_LOCK,
)
from toonvision.errors import TrainingError, UsageError
from toonvision.executors import Executor, LocalExecutor, RunOrder, RunSite, failure_message
from toonvision.fsutil import atomic_write_text
from toonvision.layout import Layout
from toonvision.ledger import LEDGER_COLUMNS, RunRecord, describe, make_folder
from toonvision.locks import locked
from toonvision.manifest import load_pool
from toonvision.progress import Bar, progress_bar
from toonvision.split import SplitPlan, plan_split
from toonvision.tasks import get_task
from toonvision.train import TrainConfig, resolve_weights, train_run

logger = logging.getLogger(__name__)

COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare_runs.csv"
COMPARE_HISTORIES = "compare_histories.jsonl"
CURVES_PLOT = "compare_curves.png"
BOXPLOT = "compare_boxplots.png"
CURVE_KEYS = ("accuracy", "val_accuracy", "loss", "val_loss")
_METRICS = ("test_accuracy", "test_loss")


@dataclass(frozen=True)
class CompareConfig:
    """What ``compare`` trains: every model of ``models`` on the same ``runs`` splits."""

    task: str
    models: tuple[str, ...] = DEFAULT_COMPARE_MODELS
    runs: int = DEFAULT_COMPARE_RUNS
    epochs: int = DEFAULT_EPOCHS
    seed: int = DEFAULT_COMPARE_SEED
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    group: bool = True
    min_per_class: int | None = None
    weights: str | None = DEFAULT_WEIGHTS  # mobilenetv2 only
    task_config: Path | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        models = tuple(self.models)
        if not models:
            raise UsageError("--models needs at least one model name, e.g. --models baseline optimized")
        if len(set(models)) != len(models):
            raise UsageError(f"--models names a model twice: {' '.join(models)}")
        object.__setattr__(self, "models", models)
        for model in models:
            self.train_config(model)  # validates the model name and every shared option

    def train_config(self, model: str) -> TrainConfig:
        """The training options of one model's runs (shared by every model but the name)."""
        return TrainConfig(
            task=self.task, model=model, runs=self.runs, epochs=self.epochs, seed=self.seed,
            ratios=tuple(self.ratios), image_size=tuple(self.image_size), batch_size=self.batch_size,
            group=self.group, min_per_class=self.min_per_class, weights=self.weights,
            task_config=self.task_config, verbose=self.verbose,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "models": list(self.models), "runs": self.runs, "epochs": self.epochs,
            "seed": self.seed, "ratios": [float(r) for r in self.ratios],
            "image_size": [int(v) for v in self.image_size], "batch_size": self.batch_size,
            "group": self.group, "min_per_class": self.min_per_class, "weights": self.weights,
        }


@dataclass(frozen=True)
class ComparedRun:
    """Run k of one model: its metrics, its per-epoch history, and a digest of the split it used."""

    model: str
    split: str
    record: RunRecord
    history: Mapping[str, Sequence[float | None]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class CompareResult:
    """Every run of every model, with per-model statistics and the files written."""

    config: CompareConfig
    classes: tuple[str, ...]
    runs: tuple[ComparedRun, ...]
    out: Path
    files: tuple[Path, ...] = ()

    def values(self, model: str, metric: str) -> list[float]:
        return [float(getattr(r.record, metric)) for r in self.runs if r.model == model]

    def statistics(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per model and metric (test accuracy, test loss): median, mean, std, min, max over runs."""
        return {m: {metric: describe(self.values(m, metric)) for metric in _METRICS} for m in self.config.models}

    def table(self) -> str:
        stats = self.statistics()
        width = max(len("model"), *(len(m) for m in self.config.models))
        head = (f"{'model':<{width}}  {'runs':>4}  {'test accuracy: median':>21}  {'mean':>6}  {'std':>6}"
                f"  {'test loss: median':>17}  {'mean':>6}  {'std':>6}")
        lines = [head]
        for model in self.config.models:
            a, e = stats[model]["test_accuracy"], stats[model]["test_loss"]
            lines.append(
                f"{model:<{width}}  {len(self.values(model, 'test_accuracy')):>4}  {a['median']:>21.4f}  "
                f"{a['mean']:>6.4f}  {a['std']:>6.4f}  {e['median']:>17.4f}  {e['mean']:>6.4f}  {e['std']:>6.4f}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        c = self.config
        lines = [
            f"task {c.task}: {', '.join(c.models)} over the same {c.runs} split(s) "
            f"(seeds {c.seed}..{c.seed + c.runs - 1}), "
            f"{c.epochs} epoch(s), classes {', '.join(self.classes)}",
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
    configs = {m: config.train_config(m) for m in config.models}
    weights = {m: resolve_weights(c) for m, c in configs.items()}  # a missing weights file fails before training
    with locked(layout.lock_file, str(layout.img_dir)):
        records, _missing = load_pool(layout)
    out = Path(out) if out is not None else layout.compare_dir(task.name)
    make_folder(out, "--out")

    def plan(k: int) -> SplitPlan:
        return plan_split(records, task, tuple(config.ratios), config.seed + k,
                          group=config.group, min_per_class=config.min_per_class)

    first = plan(0)
    classes = tuple(first.classes)
    if len(classes) < 2:
        raise TrainingError(f"task {task.name!r} has fewer than 2 classes in {layout.pool}")
    jobs = (CompareJob(model, configs[model], split, k, weights[model])
            for k, split in ((k, first if k == 0 else plan(k)) for k in range(config.runs)) for model in config.models)
    with locked(out / FOLDER_LOCK, str(out)):
        bar = progress_bar(progress, config.runs * len(config.models), f"compare {config.task}", "run")
        try:
            runs = _dispatch_runs(executor or LocalExecutor(), layout, first, jobs, bar, config)
        finally:
            bar.close()
        result = CompareResult(config, classes, tuple(runs), out)
        files = write_comparison(result, out)
    return CompareResult(config, classes, tuple(runs), out, tuple(files))


@dataclass(frozen=True)
class CompareJob:
    """Run ``run`` of one model: its options, the shared split, and the weights."""

    model: str
    config: TrainConfig
    plan: SplitPlan
    run: int
    weights: str | None


def compare_job(site: RunSite, job: CompareJob) -> ComparedRun:
    """The run function every executor calls: :func:`train_run`, keeping metrics and history (no model)."""
    finished = train_run(site.layout(), job.config, job.plan, job.run, job.weights)
    return ComparedRun(job.model, split_digest(job.plan), finished.record, dict(finished.history))


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
    """compare.json, compare_runs.csv, compare_histories.jsonl and the two figures, each atomically."""
    c = result.config
    atomic_write_text(out / COMPARE_JSON, json.dumps(_json_safe({
        "config": c.to_dict(),
        "classes": list(result.classes),
        "statistics": result.statistics(),
        "runs": [{"model": r.model, "split": r.split, **_record_dict(r.record)} for r in result.runs],
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


def _record_dict(record: RunRecord) -> dict[str, Any]:
    return asdict(record)


def _runs_csv(runs: Sequence[ComparedRun]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "split", *(LEDGER_COLUMNS if runs else ())])
    writer.writerows([r.model, r.split, *r.record.to_row()] for r in runs)
    return buffer.getvalue()


__all__ = [
    "CompareConfig", "CompareJob", "CompareResult", "ComparedRun", "compare", "compare_job", "describe",
    "mean_curves", "split_digest",
    "write_comparison",
]
