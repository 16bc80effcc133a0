"""``toonvision balance-report``: how many crops each label and class has, and how big they are.

    img/unsorted/manifest.csv  ─┐
    img/data/<task>/split.csv  ─┴─▶  BalanceReport  ─▶  terminal table
                                                    └▶  <out>/balance.json, label_counts.png,
                                                        class_counts.png, split_counts.png, crop_sizes.png

Counts come from the manifest rows whose crop files are still in the pool (the same crops
``split`` uses); split counts from the task's ``split.csv`` when the task has been split.

Imbalance: a task is called imbalanced when its largest class has at least ``IMBALANCE_RATIO``
(3) times the crops of its smallest (a share threshold would flag every task of many equal
classes). The report then says what ``train`` does about it: the class weights of
``--class-weight balanced`` (n / (classes * n_c), here on the whole task; training computes them
on each run's train split) and the selection metric that reads every class alike.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toonvision import plots
from toonvision.constants import DEFAULT_CLASS_WEIGHT, DEFAULT_IMAGE_SIZE, DEFAULT_SELECT
from toonvision.errors import SplitError, UsageError
from toonvision.fsutil import atomic_write_text
from toonvision.layout import Layout
from toonvision.manifest import load_pool
from toonvision.split import SPLIT_CSV, load_split
from toonvision.tasks import Task

logger = logging.getLogger(__name__)

BALANCE_JSON = "balance.json"
# A crop smaller than half the model input on a side is upscaled more than 2x: it lost detail.
SMALL_CROP = (DEFAULT_IMAGE_SIZE.width // 2, DEFAULT_IMAGE_SIZE.height // 2)  # width, height in pixels
IMBALANCE_RATIO = 3.0  # largest class / smallest class at or above which a task is imbalanced


@dataclass(frozen=True)
class CountRow:
    """One label or class: its crops, its share, its split counts and what it lacks to the target."""

    name: str
    display: str
    count: int
    share: float
    deficit: int
    splits: tuple[int, ...] | None = None  # per split of the task's split; None when not split
    cls: str | None = None  # label rows of a task: the label's class (None: left out)


@dataclass(frozen=True)
class BalanceReport:
    """The numbers of ``balance-report``; ``to_dict`` is ``balance.json``."""

    task: str | None
    label_target: int
    class_target: int | None
    labels: tuple[CountRow, ...]
    classes: tuple[CountRow, ...]
    split_names: tuple[str, ...]  # () when the task has no split
    split_seed: int | None
    widths: tuple[int, ...]  # crop sizes of the task's crops (all crops without a task)
    heights: tuple[int, ...]
    missing: int = 0  # manifest rows whose crop file is gone
    small_crop: tuple[int, int] = SMALL_CROP

    @property
    def total(self) -> int:
        return sum(row.count for row in self.labels)

    @property
    def imbalance_ratio(self) -> float | None:
        """Crops of the task's largest class per crop of its smallest; None without a task."""
        counts = [row.count for row in self.classes if row.count > 0]
        return max(counts) / min(counts) if len(counts) >= 2 else None

    @property
    def imbalanced(self) -> bool:
        """Whether the largest class has at least IMBALANCE_RATIO times the crops of the smallest."""
        ratio = self.imbalance_ratio
        return ratio is not None and ratio >= IMBALANCE_RATIO

    def class_weights(self) -> dict[str, float]:
        """The weights ``--class-weight balanced`` gives each class, n / (classes * n_c), on the whole task."""
        total = sum(row.count for row in self.classes)
        return {row.name: total / (len(self.classes) * row.count) for row in self.classes if row.count > 0}

    def imbalance_note(self) -> str | None:
        """What the imbalance is and what training does about it (None without a task)."""
        ratio = self.imbalance_ratio
        if ratio is None:
            return None
        largest = max(self.classes, key=lambda r: r.count)
        smallest = min(self.classes, key=lambda r: r.count)
        head = (f"imbalance: {largest.display} has {ratio:.1f}x the crops of {smallest.display} "
                f"({smallest.share:.1%} of the task); ")
        if not self.imbalanced:
            return head + f"balanced enough (imbalanced from {IMBALANCE_RATIO:g}x)"
        weights = ", ".join(f"{name} {w:.2f}" for name, w in self.class_weights().items())
        doing = (f"train weighs each class's crops by n / (classes x n_c) on its train split (about: {weights})"
                 if DEFAULT_CLASS_WEIGHT == "balanced" else
                 f"pass `train --class-weight balanced` to weigh each class by n / (classes x n_c) ({weights})")
        return (head + f"IMBALANCED (>= {IMBALANCE_RATIO:g}x): accuracy alone hides a weak rare class. {doing}; "
                f"runs and epochs are chosen on {DEFAULT_SELECT} (`--select val_macro_f1` reads every class "
                "alike); judge the model by macro-F1 and the rare class's F1 in `toonvision evaluate`")

    @property
    def small_count(self) -> int:
        """Crops narrower or shorter than ``small_crop``."""
        w, h = self.small_crop
        return sum(1 for width, height in zip(self.widths, self.heights, strict=True) if width < w or height < h)

    def table(self) -> str:
        lines = [f"pool: {self.total} crops, {len(self.labels)} labels"
                 + (f" ({self.missing} listed crops are missing from the pool)" if self.missing else "")]
        lines += _table("label", self.labels, self.split_names, with_class=self.task is not None)
        lines.append(f"deficit: crops short of {self.label_target} per label")
        if self.task is not None:
            task_total = sum(row.count for row in self.classes)
            lines.append("")
            lines.append(f"task {self.task}: {task_total} crops, {len(self.classes)} classes"
                         + (f", split with seed {self.split_seed}" if self.split_names else ", not split yet"))
            lines += _table("class", self.classes, self.split_names, with_class=False)
            lines.append(f"deficit: crops short of {self.class_target} per class")
            note = self.imbalance_note()
            if note:
                lines.append(note)
        if self.widths:
            w, h = self.small_crop
            small = self.small_count
            lines.append("")
            lines.append(
                f"crop size: width median {statistics.median(self.widths):g} px "
                f"({min(self.widths)}-{max(self.widths)}), height median {statistics.median(self.heights):g} px "
                f"({min(self.heights)}-{max(self.heights)}); {small} crops ({small / len(self.widths):.0%}) "
                f"are narrower than {w} px or shorter than {h} px (upscaled over 2x for the model)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total"] = self.total
        data["small_count"] = self.small_count
        data["imbalance"] = None if self.imbalance_ratio is None else {
            "ratio": self.imbalance_ratio, "threshold": IMBALANCE_RATIO, "imbalanced": self.imbalanced,
            "class_weights": self.class_weights(), "note": self.imbalance_note(),
        }
        return data


def balance_report(layout: Layout, task: Task | None = None, target: int | None = None) -> BalanceReport:
    """Count the pool's crops per label (and per class of ``task``, with its split if any)."""
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 1):
        raise UsageError(f"--target must be a whole number >= 1; got {target!r}")
    records, missing = load_pool(layout)

    plan = None
    if task is not None and (layout.task_data(task.name) / SPLIT_CSV).exists():
        try:
            plan = load_split(layout.task_data(task.name))
        except SplitError as exc:
            logger.warning("ignoring the split of task %s: %s", task.name, exc)
    split_names = plan.splits if plan else ()
    split_by_label: dict[str, list[int]] = {}
    split_by_class: dict[str, list[int]] = {}
    if plan is not None:
        index = {name: i for i, name in enumerate(split_names)}
        for a in plan.assignments:
            split_by_label.setdefault(a.label, [0] * len(split_names))[index[a.split]] += 1
            split_by_class.setdefault(a.cls, [0] * len(split_names))[index[a.split]] += 1

    label_counts: dict[str, int] = {}
    for record in records:
        label_counts[record.label] = label_counts.get(record.label, 0) + 1
    label_target = target or max(label_counts.values())
    total = len(records)
    labels = tuple(
        CountRow(
            label, label, count, count / total, max(0, label_target - count),
            _splits_of(split_by_label, label),
            task.class_of(label) if task is not None else None,
        )
        for label, count in sorted(label_counts.items())
    )

    classes: tuple[CountRow, ...] = ()
    class_target = None
    in_scope = records
    if task is not None:
        class_counts: dict[str, int] = {}
        for label, count in label_counts.items():
            cls = task.class_of(label)
            if cls is not None:
                class_counts[cls] = class_counts.get(cls, 0) + count
        task_total = sum(class_counts.values())
        class_target = target or max(class_counts.values(), default=0)
        classes = tuple(
            CountRow(cls, task.display_name(cls), count, count / task_total, max(0, class_target - count),
                     _splits_of(split_by_class, cls))
            for cls, count in sorted(class_counts.items())
        )
        in_scope = [r for r in records if task.class_of(r.label) is not None]

    return BalanceReport(
        task=task.name if task is not None else None,
        label_target=label_target,
        class_target=class_target,
        labels=labels,
        classes=classes,
        split_names=tuple(split_names),
        split_seed=plan.seed if plan else None,
        widths=tuple(r.width for r in in_scope),
        heights=tuple(r.height for r in in_scope),
        missing=len(missing),
    )


def default_report_dir(layout: Layout, task: Task | None) -> Path:
    """``img/reports/<task>/``, or ``img/reports/pool/`` without a task (see :meth:`Layout.report_dir`)."""
    return layout.report_dir(task.name if task is not None else None)


def write_balance_report(report: BalanceReport, out_dir: Path) -> list[Path]:
    """Write ``balance.json`` and the figures into ``out_dir``; each file atomically. Returns the paths."""
    out_dir = Path(out_dir)
    json_path = out_dir / BALANCE_JSON
    atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n")
    paths = [json_path]
    scope = f"task {report.task}" if report.task else "pool"
    paths.append(plots.plot_label_counts(
        [r.name for r in report.labels], [r.count for r in report.labels], out_dir / "label_counts.png",
        target=report.label_target, title=f"Crops per label ({report.total} crops)",
    ))
    if report.classes:
        paths.append(plots.plot_label_counts(
            [r.display for r in report.classes], [r.count for r in report.classes], out_dir / "class_counts.png",
            target=report.class_target, title=f"Crops per class, {scope}", xlabel="class",
        ))
    if report.classes and report.split_names:
        paths.append(plots.plot_split_counts(
            [r.display for r in report.classes],
            {name: [r.splits[i] if r.splits else 0 for r in report.classes]
             for i, name in enumerate(report.split_names)},
            out_dir / "split_counts.png",
            title=f"Crops per class and split, {scope} (seed {report.split_seed})",
        ))
    if report.widths:
        paths.append(plots.plot_crop_sizes(
            report.widths, report.heights, out_dir / "crop_sizes.png",
            small=report.small_crop, title=f"Crop sizes, {scope}",
        ))
    return paths


def _splits_of(counts: dict[str, list[int]], key: str) -> tuple[int, ...] | None:
    """Split counts of a label or class; None when it is not in the split (or there is none)."""
    return tuple(counts[key]) if key in counts else None


def _table(kind: str, rows: Sequence[CountRow], split_names: Sequence[str], with_class: bool) -> list[str]:
    names = [row.name if row.display == row.name else f"{row.name} ({row.display})" for row in rows]
    width = max([len(kind), *map(len, names)])
    class_width = max([len("class"), *(len(row.cls or "-") for row in rows)]) if with_class else 0
    head = f"{kind:<{width}}" + (f"  {'class':<{class_width}}" if with_class else "")
    head += f" {'count':>7} {'share':>6}" + "".join(f" {s:>8}" for s in split_names) + f" {'deficit':>8}"
    lines = [head]
    for name, row in zip(names, rows, strict=True):
        line = f"{name:<{width}}" + (f"  {row.cls or '-':<{class_width}}" if with_class else "")
        line += f" {row.count:>7} {row.share:>6.1%}"
        if split_names:
            cells = row.splits if row.splits else ["-"] * len(split_names)
            line += "".join(f" {n:>8}" for n in cells)
        lines.append(line + f" {row.deficit:>8}")
    return lines
