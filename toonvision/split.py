"""Split the crop pool into train/validate/test folders for one task: stratified and group-aware.

    img/unsorted/  (the pool, never moved)       img/data/suit/
    ├── manifest.csv                             ├── split.csv    crop, label, class, split, file, source, seed
    ├── cog/cog_bb_flunky_0.png       ──────▶    ├── split.json   task, seed, ratios, grouped, classes, excluded
    ├── cog/cog_lb_bigwig_3.png                  ├── train/bb/cog_bb_flunky_0.png   (hard link to the pool file)
    └── toon/toon_cat_0.png                      ├── validate/lb/...
                                                 └── test/{bb,lb,cb,sb}/...

Decide first, then act: :func:`plan_split` is pure (records in, :class:`SplitPlan` out, no disk,
its own seeded generators) so that training can re-split the pool once per run; :func:`write_split`
turns a plan into folders beside the old ones and swaps them in, so a kill leaves the old split or
the new one, never a mix.

A fixed test split (training's default): :func:`plan_test_split` draws the test split once (the
test part of an ordinary plan for the training seed); ``plan_split(..., fixed_test=...)`` then puts
exactly those crops in test and re-splits only the rest into train/validate, so every run, model
and re-split is scored on the same crops and none of them ever trains on one.

Stratification: each class is divided by the ratios with largest-remainder rounding, and every
class gets at least one crop in every split. Group-aware (the default): all crops of one source
screenshot of a task go to the same split, since they share background and lighting, and so do
the crops of screenshots with identical pixels or near-duplicate perceptual hashes (the same scene
a frame apart: ``toonvision.dedup.screenshot_groups``, from the hashes extract keeps in the
manifest); the groups are placed greedily (largest first, seeded order) and then improved by
moving single groups while that brings the per-class counts closer to their targets.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toonvision.dedup import screenshot_groups
from toonvision.errors import PoolError, SplitError, UsageError, write_error
from toonvision.fsutil import (
    atomic_write_text,
    build_folder,
    recover_swap,
    remove_stale_temp_files,
    swap_directory,
)
from toonvision.labels import shown_class
from toonvision.layout import SPLITS, Layout
from toonvision.locks import locked
from toonvision.manifest import CropRecord, load_pool
from toonvision.manifest import is_safe_relative as _is_safe_relative
from toonvision.manifest import without_gc as _without_gc
from toonvision.tasks import Task

logger = logging.getLogger(__name__)

SPLIT_CSV = "split.csv"
SPLIT_JSON = "split.json"
CSV_COLUMNS = ("crop", "label", "class", "split", "file", "source", "source_sha256", "seed")
FORMAT_VERSION = 1
RATIO_TOLERANCE = 1e-6
MAX_IMPROVEMENT_PASSES = 20
CLASS_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a safe folder name
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


@dataclass(frozen=True)
class Assignment:
    """One crop of the pool and the split and class folder it goes to."""

    crop: str
    label: str
    cls: str
    split: str
    source: str
    source_sha256: str = ""


@dataclass(frozen=True)
class SplitPlan:
    """Which crop goes to which split, and how the plan was made (enough to rebuild it)."""

    task: str
    seed: int
    ratios: tuple[float, ...]
    grouped: bool
    classes: tuple[str, ...]
    assignments: tuple[Assignment, ...] = field(repr=False)
    excluded: tuple[tuple[str, int], ...] = ()
    near_merged: int = 0  # screenshots put in one group with near-duplicates of other content

    def __post_init__(self) -> None:
        if len(self.ratios) not in (2, 3):
            raise SplitError(f"a split plan needs 2 or 3 ratios, got {self.ratios}")
        if list(self.classes) != sorted(set(self.classes)):
            raise SplitError(f"a split plan's classes must be sorted and unique, got {self.classes}")

    @property
    def splits(self) -> tuple[str, ...]:
        """``("train", "validate", "test")``, or the first two when there is no test split."""
        return SPLITS[: len(self.ratios)]

    def files(self, split: str) -> list[Assignment]:
        """The assignments of one split, in plan order (class, then crop)."""
        return [a for a in self.assignments if a.split == split]

    def counts(self) -> dict[tuple[str, str], int]:
        """Crops per (class, split), zeros included."""
        counts = {(cls, split): 0 for cls in self.classes for split in self.splits}
        for a in self.assignments:
            counts[a.cls, a.split] += 1
        return counts

    def achieved_ratios(self) -> dict[str, tuple[float, ...]]:
        """Per class, the share of its crops in each split (compare with ``ratios``)."""
        counts = self.counts()
        out = {}
        for cls in self.classes:
            row = [counts[cls, split] for split in self.splits]
            total = sum(row) or 1
            out[cls] = tuple(n / total for n in row)
        return out

    def overall_ratios(self) -> tuple[float, ...]:
        """The share of all crops in each split."""
        per_split = Counter(a.split for a in self.assignments)
        total = len(self.assignments) or 1
        return tuple(per_split[split] / total for split in self.splits)


@dataclass(frozen=True)
class SplitResult:
    """What ``toonvision split`` did: the plan, where it was written, and how the seed was chosen."""

    plan: SplitPlan
    path: Path
    task: Task
    seed_chosen: bool = False
    missing: tuple[str, ...] = ()

    def summary(self) -> str:
        plan = self.plan
        counts = plan.counts()
        ratios = plan.achieved_ratios()
        names = {cls: shown_class(cls, self.task.display_name(cls)) for cls in plan.classes}
        width = max(len("class"), len("total"), *(len(n) for n in names.values()))
        cols = [f"{s:>8}" for s in plan.splits]
        target = "/".join(f"{r:.2f}" for r in plan.ratios)
        lines = [
            f"task {plan.task}: {len(plan.assignments)} crops in {len(plan.classes)} classes, "
            f"{'grouped by source screenshot' if plan.grouped else 'not grouped'}, seed {plan.seed}, "
            f"ratios {target}",
            f"{'class':<{width}} {' '.join(cols)} {'total':>7}  achieved",
        ]
        for cls in plan.classes:
            row = [counts[cls, s] for s in plan.splits]
            achieved = "/".join(f"{r:.2f}" for r in ratios[cls])
            lines.append(f"{names[cls]:<{width}} {' '.join(f'{n:>8}' for n in row)} {sum(row):>7}  {achieved}")
        totals = [sum(counts[cls, s] for cls in plan.classes) for s in plan.splits]
        overall = "/".join(f"{r:.2f}" for r in plan.overall_ratios())
        lines.append(f"{'total':<{width}} {' '.join(f'{n:>8}' for n in totals)} {sum(totals):>7}  {overall}")
        if plan.grouped:
            lines.append(f"{plan.near_merged} screenshots merged into near-duplicate groups"
                         + (" (same scene, other frame or encoding: kept in one split)" if plan.near_merged else ""))
        if plan.excluded:
            left_out = ", ".join(f"{cls} ({n})" for cls, n in plan.excluded)
            lines.append(f"left out by --min-per-class: {left_out}")
        if self.missing:
            lines.append(f"{len(self.missing)} crops of the manifest are no longer in the pool; left out")
        lines.append(f"written to {_shown_path(self.path)} (split.csv lists every crop)")
        if self.seed_chosen:
            lines.append(f"seed {plan.seed} was chosen at random; pass --seed {plan.seed} to repeat this split")
        return "\n".join(lines)


# --- planning (pure) ---------------------------------------------------------------------------


def check_ratios(ratios: Iterable[float]) -> tuple[float, ...]:
    """2 or 3 positive numbers summing to 1 (train, validate[, test]); normalised exactly."""
    ratios = list(ratios)
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        values = ()
    if (
        len(values) not in (2, 3)
        or not all(math.isfinite(r) and r > 0 for r in values)
        or abs(sum(values) - 1.0) > RATIO_TOLERANCE
    ):
        raise UsageError(
            f"ratios must be 2 or 3 positive numbers summing to 1 (train validate [test]), "
            f"e.g. 0.6 0.2 0.2; got {' '.join(str(r) for r in ratios)}"
        )
    total = sum(values)
    return tuple(r / total for r in values)


@_without_gc
def plan_split(
    records: Sequence[CropRecord],
    task: Task,
    ratios: Sequence[float],
    seed: int,
    group: bool = True,
    min_per_class: int | None = None,
    fixed_test: Collection[str] | None = None,
) -> SplitPlan:
    """Decide which split each crop of ``task`` goes to; deterministic for the same inputs.

    The result does not depend on the order of ``records``. Classes smaller than
    ``min_per_class`` are left out with a warning; a class that cannot have a crop in
    every split is a :class:`SplitError` naming it and the fix. ``fixed_test`` (crop paths,
    from :func:`plan_test_split`; three ratios only) is the test split, taken as it is: only
    the other crops are divided, into train and validate by the first two ratios.
    """
    ratios = check_ratios(ratios)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"the seed must be a whole number >= 0; got {seed!r}")
    if min_per_class is not None and (not isinstance(min_per_class, int) or min_per_class < 1):
        raise UsageError(f"--min-per-class must be a whole number >= 1; got {min_per_class!r}")

    by_class = _crops_by_class(records, task)
    excluded = tuple(
        (cls, len(crops)) for cls, crops in sorted(by_class.items())
        if min_per_class is not None and len(crops) < min_per_class
    )
    for cls, count in excluded:
        logger.warning(
            "class %s of task %s has %d crop%s (fewer than --min-per-class %d); left out",
            cls, task.name, count, "" if count == 1 else "s", min_per_class,
        )
        del by_class[cls]
    classes = tuple(sorted(by_class))
    groups = screenshot_groups([r for crops in by_class.values() for r in crops]) if group else None
    keys = groups.group_of if groups is not None else {}
    if groups is not None and groups.unhashed:
        logger.info("%d screenshots of task %s have no perceptual hash (extracted by an older version): grouped "
                    "by exact content only until `toonvision extract` reads them again", groups.unhashed, task.name)
    if fixed_test is not None:
        split_of = _assign_around_test(task, by_class, classes, ratios, seed, group, fixed_test, keys)
    else:
        _check_feasible(task, by_class, len(ratios), group, keys)
        split_of = _assign(by_class, classes, ratios, seed, group, keys)
    names = SPLITS[: len(ratios)]
    buckets: list[list[Assignment]] = [[] for _ in names]  # plan order: split, class, crop
    for cls in classes:
        for r in by_class[cls]:
            s = split_of[r.crop]
            buckets[s].append(Assignment(r.crop, r.label, cls, names[s], r.source, r.source_sha256))
    assignments = tuple(a for bucket in buckets for a in bucket)
    return SplitPlan(task.name, seed, ratios, group, classes, assignments, excluded,
                     groups.merged if groups is not None else 0)


def plan_test_split(
    records: Sequence[CropRecord],
    task: Task,
    ratios: Sequence[float],
    seed: int,
    group: bool = True,
    min_per_class: int | None = None,
) -> frozenset[str]:
    """The crops of a fixed test split: the test part of ``plan_split`` for ``seed`` (grouped, stratified).

    Pass it as ``plan_split(..., fixed_test=...)`` to every re-split of a training, a comparison or a
    cross-validation, so that all of them are scored on the same crops and never train on one.
    """
    if len(check_ratios(ratios)) != 3:
        raise UsageError("a fixed test split needs three ratios (train validate test)")
    plan = plan_split(records, task, ratios, seed, group=group, min_per_class=min_per_class)
    return frozenset(a.crop for a in plan.assignments if a.split == "test")


def _assign(
    by_class: Mapping[str, list[CropRecord]], classes: Sequence[str], ratios: Sequence[float], seed: int,
    group: bool, keys: Mapping[str, str],
) -> dict[str, int]:
    if group:
        return _assign_groups(by_class, classes, ratios, seed, keys)
    return _assign_per_class(by_class, classes, ratios, seed)


def _assign_around_test(
    task: Task, by_class: Mapping[str, list[CropRecord]], classes: Sequence[str], ratios: Sequence[float],
    seed: int, group: bool, fixed_test: Collection[str], keys: Mapping[str, str],
) -> dict[str, int]:
    """Test: exactly ``fixed_test``; the other crops divided into train/validate by the first two ratios.

    ``keys`` are the crops' split groups (same or near-duplicate screenshots share one)."""
    if len(ratios) != 3:
        raise UsageError("a fixed test split needs three ratios (train validate test)")
    test = frozenset(fixed_test)
    rest = {cls: [r for r in crops if r.crop not in test] for cls, crops in by_class.items()}
    known = {r.crop for crops in by_class.values() for r in crops}
    stray = sorted(test - known)
    lacking = [cls for cls in classes if len(rest[cls]) == len(by_class[cls])]
    if stray or lacking:
        detail = (f"{len(stray)} of its crops ({stray[0]}, ...) are not crops of task {task.name}" if stray
                  else f"it has no crop of class {', '.join(lacking)}")
        raise SplitError(f"the fixed test split does not fit this pool: {detail}; draw it again from this pool")
    if group:
        def key(r: CropRecord) -> str:
            return keys.get(r.crop) or _group_key(r)

        tested = {key(r) for crops in by_class.values() for r in crops if r.crop in test}
        shared = sorted({r.source for crops in rest.values() for r in crops if key(r) in tested})
        if shared:
            raise SplitError(f"the fixed test split holds only some crops of screenshot {shared[0]}; draw it "
                             "again grouped (plan_test_split with group=True)")
    _check_feasible(task, rest, 2, group, keys)
    split_of = _assign(rest, classes, (ratios[0] / (ratios[0] + ratios[1]), ratios[1] / (ratios[0] + ratios[1])),
                       seed, group, keys)
    split_of.update(dict.fromkeys(test, 2))
    return split_of


def _crops_by_class(records: Sequence[CropRecord], task: Task) -> dict[str, list[CropRecord]]:
    """The task's crops per class, each list sorted by crop path (so input order does not matter)."""
    class_of: dict[str, str | None] = {}
    by_class: dict[str, list[CropRecord]] = defaultdict(list)
    labels_of: dict[str, set[str]] = defaultdict(set)
    seen: set[str] = set()
    for record in records:
        label = record.label
        if label not in class_of:
            cls = task.class_of(label)
            if cls is not None and not CLASS_NAME_PATTERN.match(cls):
                raise SplitError(
                    f"task {task.name}: label {label!r} gives class {cls!r}, which cannot be a folder "
                    "name; change the task's pattern so that classes are letters, digits, '_', '-' or '.'"
                )
            class_of[label] = cls
        cls = class_of[label]
        if cls is None:
            continue
        if record.crop in seen:
            raise SplitError(
                f"the manifest lists crop {record.crop} twice; move manifest.csv aside and run "
                "`toonvision extract` again"
            )
        seen.add(record.crop)
        by_class[cls].append(record)
        labels_of[cls].add(label)
    if task.one_label_per_class:
        for cls, labels in sorted(labels_of.items()):
            if len(labels) > 1:
                raise SplitError(
                    f"task {task.name}: labels {', '.join(sorted(labels))} all become class {cls!r}; "
                    "rename one of them in labelImg (and extract again) or use the `label` task"
                )
    if not by_class:
        raise SplitError(
            f"no crop of the pool belongs to task {task.name} ({task.description}); "
            "check the task name or extract screenshots that have such labels"
        )
    for crops in by_class.values():
        crops.sort(key=lambda r: r.crop)
    return dict(by_class)


def _check_feasible(
    task: Task, by_class: Mapping[str, list[CropRecord]], n_splits: int, group: bool, keys: Mapping[str, str]
) -> None:
    """Every class must be able to put a crop in every split; name all those that cannot."""
    splits = ", ".join(SPLITS[:n_splits])
    if len(by_class) < 2:
        only = ", ".join(f"{cls} ({len(c)} crops)" for cls, c in by_class.items()) or "none"
        raise SplitError(
            f"task {task.name} has fewer than 2 classes to split (left: {only}); a classifier needs two: "
            "label more, lower --min-per-class, or choose another task"
        )
    too_small, too_few_sources = [], []
    for cls, crops in sorted(by_class.items()):
        if len(crops) < n_splits:
            too_small.append(f"{cls} has {len(crops)} crop{'' if len(crops) == 1 else 's'}")
        elif group:
            sources = len({keys.get(r.crop) or _group_key(r) for r in crops})
            if sources < n_splits:
                too_few_sources.append(f"{cls} has {len(crops)} crops from only {sources} screenshot"
                                       f"{'' if sources == 1 else 's'}")
    if not too_small and not too_few_sources:
        return
    fixes = ["label more"]
    if too_small:
        fixes.append(f"pass --min-per-class {n_splits} to leave out classes with fewer crops")
    if too_few_sources:
        fixes.append("pass --no-group to let crops of one screenshot go to different splits "
                     "(near-duplicates then leak from training into test)")
    raise SplitError(
        f"task {task.name} cannot give every class a crop in each split ({splits}): "
        f"{'; '.join(too_small + too_few_sources)}. Fix: {', or '.join(fixes)}"
    )


def _group_key(record: CropRecord) -> str:
    """Crops of the same screenshot content share a group (a missing hash falls back to the path)."""
    return record.source_sha256 or record.source or record.crop


def _quota(n: int, ratios: Sequence[float], rng: random.Random) -> list[int]:
    """Largest-remainder rounding of ``n * ratios`` (ties broken by ``rng``), then at least
    one per split when ``n`` allows it, taken from the largest split."""
    exact = [n * r for r in ratios]
    counts = [math.floor(q + 1e-9) for q in exact]
    order = sorted(range(len(ratios)), key=lambda s: (-round(exact[s] - counts[s], 9), rng.random()))
    for s in order[: n - sum(counts)]:
        counts[s] += 1
    if n >= len(ratios):
        for s in range(len(ratios)):
            if counts[s] == 0:
                donor = max(range(len(ratios)), key=lambda i: (counts[i], -i))
                counts[donor] -= 1
                counts[s] = 1
    return counts


def _class_rng(seed: int, cls: str) -> random.Random:
    """Each class has its own generator, so adding crops of one class leaves the others' split alone."""
    return random.Random(f"{seed}/{cls}")


def _assign_per_class(
    by_class: Mapping[str, list[CropRecord]], classes: Sequence[str], ratios: Sequence[float], seed: int
) -> dict[str, int]:
    """Ungrouped: shuffle each class and cut it at its exact largest-remainder counts."""
    split_of: dict[str, int] = {}
    for cls in classes:
        crops = by_class[cls]
        rng = _class_rng(seed, cls)
        counts = _quota(len(crops), ratios, rng)
        order = list(range(len(crops)))
        rng.shuffle(order)
        start = 0
        for s, count in enumerate(counts):
            for i in order[start:start + count]:
                split_of[crops[i].crop] = s
            start += count
    return split_of


def _assign_groups(
    by_class: Mapping[str, list[CropRecord]], classes: Sequence[str], ratios: Sequence[float], seed: int,
    keys: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Grouped: whole screenshots go to one split, as close to each class's counts as groups allow."""
    groups = _GroupAssigner(by_class, classes, ratios, seed, keys)
    groups.place()
    groups.reach_every_split()
    passes = groups.improve()
    logger.debug("grouped split: %d groups, %d improvement passes", len(groups.members), passes)
    return groups.split_of_crops()


class _GroupAssigner:
    """The groups (source screenshots) of one task and the split each is in, improved in phases.

    Cost: the sum over classes and splits of (count - target)^2 / class size. :meth:`place` puts
    the groups largest first (seeded order among equal sizes) where they raise the cost least;
    :meth:`reach_every_split` moves a group into any split a class is missing from; :meth:`improve`
    makes single-group moves that lower the cost until none is left. A move never empties a class
    out of a split. Classes and splits are indices here (``classes[c]``, ``SPLITS[s]``).
    """

    def __init__(
        self, by_class: Mapping[str, list[CropRecord]], classes: Sequence[str], ratios: Sequence[float], seed: int,
        keys: Mapping[str, str] | None = None,
    ) -> None:
        keys = keys or {}
        self.classes = classes
        self.n_splits = len(ratios)
        group_of: dict[str, int] = {}
        self.members: list[list[str]] = []  # crops of each group
        contents: list[dict[int, int]] = []  # crops per class of each group
        for c, cls in enumerate(classes):  # canonical order: class, then crop path
            for r in by_class[cls]:
                key = keys.get(r.crop) or _group_key(r)
                g = group_of.get(key)
                if g is None:
                    g = group_of[key] = len(self.members)
                    self.members.append([])
                    contents.append({})
                self.members[g].append(r.crop)
                counts = contents[g]
                counts[c] = counts.get(c, 0) + 1
        self.groups_of_class: list[list[int]] = [[] for _ in classes]
        for g, counts in enumerate(contents):
            for c in counts:
                self.groups_of_class[c].append(g)

        sizes = [len(by_class[cls]) for cls in classes]
        weight = [1.0 / n for n in sizes]
        # dev[c][s] = count - target. Adding v crops of class c to split s changes the cost by
        # weight * v * (2 * dev + v): each group keeps its (c, v, 2 * weight * v) terms and a constant.
        self.target = [_quota(n, ratios, _class_rng(seed, cls)) for n, cls in zip(sizes, classes, strict=True)]
        self.dev = [[-t for t in row] for row in self.target]
        self.terms = [tuple((c, v, 2.0 * weight[c] * v) for c, v in sorted(counts.items())) for counts in contents]
        self.square = [sum(weight[c] * v * v for c, v in counts.items()) for counts in contents]
        self.split_of: list[int] = [-1] * len(self.members)  # split of each group; -1 until placed
        self.order = list(range(len(self.members)))
        random.Random(f"{seed}/groups").shuffle(self.order)
        self.order.sort(key=lambda g: -len(self.members[g]))  # stable: equal sizes keep the seeded order

    def move(self, g: int, s: int) -> None:
        """Put group ``g`` into split ``s``, taking it out of the one it was in."""
        old = self.split_of[g]
        dev = self.dev
        for c, v, _ in self.terms[g]:
            if old >= 0:
                dev[c][old] -= v
            dev[c][s] += v
        self.split_of[g] = s

    def gain(self, g: int, s: int) -> float:
        """Cost of adding group ``g`` to split ``s``, less its constant part."""
        dev = self.dev
        total = 0.0
        for c, _, a in self.terms[g]:
            total += a * dev[c][s]
        return total

    def keeps_classes(self, g: int) -> bool:
        """Moving ``g`` out of its split leaves each of its classes still present there."""
        s = self.split_of[g]
        return all(self.dev[c][s] + self.target[c][s] > v for c, v, _ in self.terms[g])

    def place(self) -> None:
        """Phase 1: each group, largest first, into the split where it raises the cost least."""
        for g in self.order:
            best_s, best = 0, math.inf
            for s in range(self.n_splits):
                cost = self.gain(g, s)
                if cost < best:
                    best_s, best = s, cost
            self.move(g, best_s)

    def reach_every_split(self) -> None:
        """Phase 2: for each class missing from a split (classes in fewest groups first), move there
        the group that costs least to move and leaves its own split every class it has."""
        for c in sorted(range(len(self.classes)), key=lambda c: len(self.groups_of_class[c])):
            for s in range(self.n_splits):
                if self.dev[c][s] + self.target[c][s]:
                    continue
                movable = [g for g in self.groups_of_class[c] if self.split_of[g] != s and self.keeps_classes(g)]
                if not movable:
                    raise SplitError(
                        f"class {self.classes[c]} cannot have a crop in every split without dividing screenshots "
                        "that hold other classes too; label more screenshots or pass --no-group"
                    )
                self.move(min(movable, key=lambda g: (self.move_cost(g, s), g)), s)

    def move_cost(self, g: int, s: int) -> float:
        """How much moving group ``g`` from its split to ``s`` changes the cost."""
        return 2.0 * self.square[g] + self.gain(g, s) - self.gain(g, self.split_of[g])

    def improve(self) -> int:
        """Phase 3: passes of single-group moves that lower the cost, until one moves nothing
        (at most MAX_IMPROVEMENT_PASSES); returns the number of passes."""
        passes, moved = 0, True
        while moved and passes < MAX_IMPROVEMENT_PASSES:
            moved = self.improve_once()
            passes += 1
        return passes

    def improve_once(self) -> bool:
        """One pass over the groups (placing order), moving each where it lowers the cost most."""
        moved = False
        for g in self.order:
            here = self.split_of[g]
            # moving g from here to s changes the cost by 2 * square + gain(g, s) - gain(g, here)
            threshold = self.gain(g, here) - 2.0 * self.square[g] - 1e-12
            best_s, best = here, threshold
            for s in range(self.n_splits):
                if s != here:
                    cost = self.gain(g, s)
                    if cost < best:
                        best_s, best = s, cost
            if best_s != here and self.keeps_classes(g):
                self.move(g, best_s)
                moved = True
        return moved

    def split_of_crops(self) -> dict[str, int]:
        """The split index of every crop."""
        return {crop: self.split_of[g] for g in range(len(self.members)) for crop in self.members[g]}


# --- writing -------------------------------------------------------------------------------------


def file_names(plan: SplitPlan) -> list[str]:
    """Each assignment's file inside the task folder (``train/bb/cog_bb_flunky_0.png``), in plan order.

    The crop's own file name, unless two crops of one class folder share it (crops from
    different pool folders); then the pool path with '/' turned into '__'.
    """
    taken: dict[tuple[str, str], set[str]] = defaultdict(set)
    out = []
    for a in plan.assignments:
        used = taken[a.split, a.cls]
        name = a.crop.rpartition("/")[2]
        if name in used:
            name = a.crop.replace("/", "__")
            stem, dot, suffix = name.rpartition(".")
            n = 1
            while name in used:
                name = f"{stem}~{n}.{suffix}" if dot else f"{name}~{n}"
                n += 1
        used.add(name)
        out.append(f"{a.split}/{a.cls}/{name}")
    return out


@_without_gc
def write_split(plan: SplitPlan, layout: Layout, dest: Path | None = None) -> Path:
    """Build the plan's folders beside ``img/data/<task>/`` (or ``dest``) and swap them in.

    Files are hard links to the pool (copies where the file system refuses links), so the
    pool is never moved. The caller holds the img/ lock when others may write (see run_split).
    """
    _check_plan(plan, "the split plan")
    target = Path(dest) if dest is not None else layout.task_data(plan.task)
    target = target.absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_swap(target)
        remove_stale_temp_files(target)  # half-built folders of killed runs (their process is gone)
        build = build_folder(target)
        build.mkdir()  # not mkdtemp: its 0700 mode would become the split's after the swap
    except OSError as exc:
        raise write_error(target, exc) from exc
    try:
        files = file_names(plan)
        _fill(plan, files, layout.pool, build)
        atomic_write_text(build / SPLIT_CSV, format_split_csv(plan, files))
        atomic_write_text(build / SPLIT_JSON, json.dumps(_header(plan), indent=2) + "\n")
        swap_directory(build, target)
    except OSError as exc:
        shutil.rmtree(build, ignore_errors=True)
        raise write_error(target, exc) from exc
    except BaseException as exc:
        shutil.rmtree(build, ignore_errors=True)
        if isinstance(exc.__cause__, OSError) and not isinstance(exc, PoolError):  # a failed atomic write
            raise write_error(target, exc.__cause__) from exc.__cause__  # name the split, not its build
        raise
    return target


def _fill(plan: SplitPlan, files: Sequence[str], pool: Path, build: Path) -> None:
    """Create every split/class folder (even one that would stay empty) and link the crops in."""
    root = os.fspath(build)
    for split in plan.splits:
        for cls in plan.classes:
            os.makedirs(os.path.join(root, split, cls))
    pool_root = os.fspath(pool)
    copy_only = False
    copied = 0
    for a, rel in zip(plan.assignments, files, strict=True):
        src = f"{pool_root}/{a.crop}"  # f-strings: os.path.join costs more than the link itself
        dst = f"{root}/{rel}"
        try:
            if copy_only:
                shutil.copyfile(src, dst)
                copied += 1
                continue
            try:
                os.link(src, dst)
            except OSError as exc:
                if exc.errno not in _LINK_FALLBACK:
                    raise
                copy_only = exc.errno != errno.EMLINK  # EMLINK is one file; the others hold for all
                shutil.copyfile(src, dst)
                copied += 1
        except FileNotFoundError:
            if os.path.exists(src):
                raise
            raise PoolError(
                f"{src}: listed in the split of task {plan.task} but missing from the pool; "
                "restore the file, or run `toonvision split` again to split the crops that remain"
            ) from None
    if copied:
        logger.info("%d files were copied because hard links into %s are impossible", copied, build.parent)


def format_split_csv(plan: SplitPlan, files: Sequence[str] | None = None) -> str:
    """``split.csv``: one row per crop with the file it became (``files``: from :func:`file_names`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    seed = str(plan.seed)
    writer.writerows(
        (a.crop, a.label, a.cls, a.split, rel, a.source, a.source_sha256, seed)
        for a, rel in zip(plan.assignments, files if files is not None else file_names(plan), strict=True)
    )
    return out.getvalue()


def _header(plan: SplitPlan) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "task": plan.task,
        "seed": plan.seed,
        "ratios": list(plan.ratios),
        "grouped": plan.grouped,
        "splits": list(plan.splits),
        "classes": list(plan.classes),
        "excluded": [[cls, n] for cls, n in plan.excluded],
        "crops": len(plan.assignments),
        "near_duplicates_merged": plan.near_merged,
    }


# --- reading a split back ------------------------------------------------------------------------


def plan_to_dict(plan: SplitPlan) -> dict[str, Any]:
    """The plan as JSON-ready data (``best.json`` embeds it so the split can be rebuilt)."""
    data = _header(plan)
    data["columns"] = ["crop", "label", "class", "split", "source", "source_sha256"]
    data["assignments"] = [[a.crop, a.label, a.cls, a.split, a.source, a.source_sha256]
                           for a in plan.assignments]
    return data


def plan_from_dict(data: Mapping[str, Any], where: str = "split plan") -> SplitPlan:
    """Inverse of :func:`plan_to_dict`; anything inconsistent is a SplitError naming ``where``."""
    try:
        rows = [Assignment(*(str(v) for v in row)) for row in data["assignments"]]
        plan = _plan_from_header(data, rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise SplitError(f"{where}: not a valid split plan ({exc!r}); split the task again") from None
    except SplitError as exc:
        raise SplitError(f"{where}: {exc}") from None
    _check_plan(plan, where)
    return plan


def _plan_from_header(header: Mapping[str, Any], rows: list[Assignment]) -> SplitPlan:
    seed = header["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed {seed!r}")
    return SplitPlan(
        task=str(header["task"]),
        seed=seed,
        ratios=tuple(float(r) for r in header["ratios"]),
        grouped=bool(header["grouped"]),
        classes=tuple(str(c) for c in header["classes"]),
        assignments=tuple(rows),
        excluded=tuple((str(c), int(n)) for c, n in header.get("excluded", ())),
        near_merged=int(header.get("near_duplicates_merged", 0)),
    )


def _check_plan(plan: SplitPlan, where: str) -> None:
    """Paths stay inside the pool, class names are safe folders, every class is in every split."""
    bad_class = [c for c in plan.classes if not CLASS_NAME_PATTERN.match(c)]
    if bad_class:
        raise SplitError(f"{where}: class {bad_class[0]!r} cannot be a folder name; split the task again")
    classes, splits = set(plan.classes), set(plan.splits)
    seen: set[str] = set()
    present: set[tuple[str, str]] = set()
    for a in plan.assignments:
        if not _is_safe_relative(a.crop):
            raise SplitError(f"{where}: crop path {a.crop!r} points outside the pool; split the task again")
        if a.cls not in classes or a.split not in splits:
            raise SplitError(f"{where}: crop {a.crop} has class {a.cls!r} / split {a.split!r}, "
                             f"not one of {sorted(classes)} / {sorted(splits)}; split the task again")
        if a.crop in seen:
            raise SplitError(f"{where}: crop {a.crop} appears twice; split the task again")
        seen.add(a.crop)
        present.add((a.cls, a.split))
    for split in plan.splits:
        for cls in plan.classes:
            if (cls, split) not in present:
                raise SplitError(
                    f"{where}: class {cls} has no crop in {split}; every class needs one in every split. "
                    "Split again with --min-per-class, or label more"
                )


@_without_gc
def load_split(task_dir: Path) -> SplitPlan:
    """Read ``split.json`` and ``split.csv`` of a task folder back into its plan.

    An interrupted re-split is finished or rolled back first (:func:`recover_swap`).
    """
    task_dir = Path(task_dir)
    recover_swap(task_dir)
    json_path, csv_path = task_dir / SPLIT_JSON, task_dir / SPLIT_CSV
    fix = f"run `toonvision split --task {task_dir.name}` again"
    if not json_path.is_file() or not csv_path.is_file():
        raise SplitError(f"{task_dir}: no split here (split.json and split.csv missing); {fix}")
    try:
        header = json.loads(json_path.read_text(encoding="utf-8"))
        reader = csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8")))
        header_row = next(reader, [])
        missing = set(CSV_COLUMNS) - set(header_row)
        if missing:
            raise ValueError(f"columns {sorted(missing)} missing")
        at = [header_row.index(c) for c in ("crop", "label", "class", "split", "source", "source_sha256")]
        rows = [Assignment(*(row[i] for i in at)) for row in reader]
        plan = _plan_from_header(header, rows)
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, IndexError, TypeError, ValueError) as exc:
        raise SplitError(f"{task_dir}: split.json/split.csv cannot be read ({exc!r}); {fix}") from None
    except SplitError as exc:
        raise SplitError(f"{task_dir}: {exc}; {fix}") from None
    _check_plan(plan, str(csv_path))
    return plan


def check_split_dirs(task_dir: Path, classes: Sequence[str], splits: Sequence[str] | None = None) -> None:
    """Each split folder holds exactly one non-empty folder per class, so Keras' class indices agree.

    ``image_dataset_from_directory`` numbers the class folders it finds; a missing or extra
    folder would silently shift every label after it.
    """
    task_dir = Path(task_dir)
    wanted = set(classes)
    if splits is None:
        splits = [s for s in SPLITS if (task_dir / s).is_dir()] or list(SPLITS[:2])
    fix = f"run `toonvision split --task {task_dir.name}` again"
    for split in splits:
        folder = task_dir / split
        if not folder.is_dir():
            raise SplitError(f"{folder}: split folder missing; {fix}")
        found = {e.name for e in os.scandir(folder) if e.is_dir()}
        if found != wanted:
            missing, extra = sorted(wanted - found), sorted(found - wanted)
            detail = "; ".join(part for part in (
                f"missing class folders {missing}" if missing else "",
                f"unexpected folders {extra}" if extra else "",
            ) if part)
            raise SplitError(f"{folder}: {detail}; {fix}")
        for cls in sorted(wanted):
            with os.scandir(folder / cls) as entries:
                if not any(e.is_file() for e in entries):
                    raise SplitError(f"{folder / cls}: no crops of class {cls} in {split}; {fix}")


# --- the command ---------------------------------------------------------------------------------


def run_split(
    layout: Layout,
    task: Task,
    ratios: Sequence[float],
    seed: int | None = None,
    group: bool = True,
    min_per_class: int | None = None,
) -> SplitResult:
    """``toonvision split``: plan the pool's split for ``task`` and write it, under the img/ lock."""
    ratios = check_ratios(ratios)
    if not layout.manifest.is_file():  # before the lock, which would create img/
        raise PoolError(f"no crop pool at {layout.pool}: run `toonvision extract` first")
    chosen = seed is None
    if seed is None:
        seed = secrets.randbelow(1_000_000)
    with locked(layout.lock_file, str(layout.img_dir)):
        records, missing = load_pool(layout)
        plan = plan_split(records, task, ratios, seed, group=group, min_per_class=min_per_class)
        path = write_split(plan, layout)
    return SplitResult(plan, path, task, seed_chosen=chosen, missing=missing)


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

