"""Know your data: label-issue suspects from out-of-fold probabilities, duplicates, and split leaks.

    models/<task>/cv/oof.csv  (``toonvision.cv``; run first when missing for these options)
    img/unsorted/manifest.csv                      img/reports/<task>/audit/  (or --out)
          │                                        ├── label_issues.csv  crop,label,suggested,score,source,xmin,..
          ▼                                        ├── label_issues.png  the top suspects, given and suggested label
    cleanlab ranking ─ dedup.find_duplicates ──▶   ├── duplicates.csv    cluster,kind,source,crop
    img/data/<task>/ (the current split) ──────▶   └── audit.json        counts, thresholds, leaks in the split

Label issues: cleanlab's confident learning (``cleanlab.filter.find_label_issues``) flags the crops
whose given class the out-of-sample probabilities contradict (cv's out-of-fold ones, and for the
test crops cv set aside the mean of the fold models, none of which trained on them); the suspects
are those crops and every crop those probabilities give to another class, ranked by cleanlab's
self-confidence label quality (``cleanlab.rank.get_label_quality_scores``), ``score`` being
1 - quality (0..1, higher = more likely mislabelled). Measured on BCCD with 5% of the labels
flipped (README): cleanlab's flagged set alone held 81-86% of the flips, the wider ranked list
98-99% in its first 2 x (number flipped) rows. ``label`` is the manifest's label (what to
change in labelImg), ``suggested`` the class the models predicted, ``source`` and the box the object.

Crash safety: every file is written atomically (temp file + rename); a kill leaves each file
whole, old or new. Only the cross-validation this runs keeps state (its own ledger, resumable).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from toonvision import plots
from toonvision.cv import CV_DIR, CVConfig, CVResult, cv, load_cv
from toonvision.dedup import DUPLICATES_CSV, find_duplicates, leaks, write_duplicates_csv
from toonvision.errors import SplitError, UsageError
from toonvision.fsutil import atomic_write_text
from toonvision.layout import Layout
from toonvision.manifest import CropRecord, load_pool
from toonvision.split import SPLIT_JSON, load_split
from toonvision.tasks import get_task

logger = logging.getLogger(__name__)

AUDIT_DIR = "audit"
AUDIT_JSON = "audit.json"
LABEL_ISSUES_CSV = "label_issues.csv"
LABEL_ISSUES_PLOT = "label_issues.png"
LABEL_ISSUE_COLUMNS = ("crop", "label", "suggested", "score", "source", "xmin", "ymin", "xmax", "ymax")
GALLERY_SIZE = 24  # suspects shown in label_issues.png


@dataclass(frozen=True)
class LabelIssue:
    """One suspect: a row of label_issues.csv."""

    crop: str
    label: str
    suggested: str
    score: float
    source: str
    box: tuple[int, int, int, int]

    def to_row(self) -> list[str]:
        return [self.crop, self.label, self.suggested, f"{self.score:.6f}", self.source, *map(str, self.box)]


@dataclass(frozen=True)
class AuditResult:
    """What ``audit`` found and wrote."""

    task: str
    output: Path
    issues: tuple[LabelIssue, ...]
    crops: int
    info: dict[str, Any]

    def summary(self) -> str:
        counts, leak_list = self.info["counts"], self.info["leaks"]
        lines = [
            f"task {self.task}: {len(self.issues)} label-issue suspect(s) among {self.crops} crops"
            f" ({self.info['cv']['folds']}-fold, macro-F1 {self.info['cv']['macro_f1_mean']:.4f} +- "
            f"{self.info['cv']['macro_f1_std']:.4f})",
        ]
        for issue in self.issues[:5]:
            lines.append(f"  {issue.score:.3f}  {issue.crop}: given {issue.label}, suggested {issue.suggested} "
                         f"({issue.source} box {','.join(map(str, issue.box))})")
        lines.append(
            f"duplicates: {counts['exact_screenshot_clusters']} exact and {counts['near_screenshot_clusters']} near "
            f"screenshot clusters, {counts['exact_crop_clusters'] + counts['near_crop_clusters']} crop clusters")
        lines.append("leaks in the current split: "
                     + ("no split in img/data/" + self.task if leak_list is None else str(len(leak_list))))
        lines.append(f"written to {self.output} ({LABEL_ISSUES_CSV}, {LABEL_ISSUES_PLOT}, {DUPLICATES_CSV}, "
                     f"{AUDIT_JSON})")
        return "\n".join(lines)


def rank_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the suspects, most suspicious first; the score of every crop, 1 - cleanlab's label quality).

    Suspects: cleanlab's confident-learning issues and every crop predicted as another class.
    """
    # cleanlab loads only here: it pulls in pandas and scikit-learn (start-up time).
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    flagged = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    scores = np.clip(1.0 - quality, 0.0, 1.0)
    suspects = set(np.asarray(flagged).tolist()) | set(np.flatnonzero(probabilities.argmax(axis=1) != labels).tolist())
    return np.array(sorted(suspects, key=lambda i: (-scores[i], i)), dtype=np.int64), scores


def label_issues(result: CVResult, records: Sequence[CropRecord]) -> list[LabelIssue]:
    """The suspects of ``result``'s out-of-sample probabilities (:func:`rank_label_issues`), most suspicious first."""
    crops, labels, probabilities = result.every_crop()
    flagged, scores = rank_label_issues(labels, probabilities)
    by_crop = {r.crop: r for r in records}
    issues = []
    for i in flagged.tolist():
        record = by_crop.get(crops[i])
        issues.append(LabelIssue(
            crops[i], result.label_of[crops[i]], result.classes[int(probabilities[i].argmax())], float(scores[i]),
            record.source if record is not None else "", record.box if record is not None else (0, 0, 0, 0),
        ))
    return issues


def format_label_issues_csv(issues: Sequence[LabelIssue]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_ISSUE_COLUMNS)
    writer.writerows(issue.to_row() for issue in issues)
    return buffer.getvalue()


def audit(layout: Layout, config: CVConfig, out: Path | None = None, progress: bool = False) -> AuditResult:
    """``toonvision audit``: cross-validate when needed, rank label issues, find duplicates and split leaks."""
    train_config = config.train
    task = get_task(train_config.task, train_config.task_config)
    result = load_cv(layout, config)
    if result is None:
        logger.info("no finished cross-validation of task %s for these options: running %d folds",
                    task.name, config.folds)
        try:  # continue a cross-validation of these options a kill cut short
            result = cv(layout, CVConfig(train_config, config.folds, resume=True), progress)
        except UsageError:  # refused: it has other options or another pool
            logger.warning("%s holds a cross-validation with other options or another pool; replaced",
                           layout.task_models(task.name) / CV_DIR)
            result = cv(layout, CVConfig(train_config, config.folds, overwrite=True), progress)
    records, _missing = load_pool(layout)
    issues = label_issues(result, records)
    folder = Path(out) if out is not None else layout.report_dir(task.name) / AUDIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / LABEL_ISSUES_CSV, format_label_issues_csv(issues))
    _draw_gallery(layout, issues, folder / LABEL_ISSUES_PLOT, task.name)
    report = find_duplicates(layout, task)
    write_duplicates_csv(report, folder / DUPLICATES_CSV)
    leak_list = _leaks(layout, task.name, report)
    info = {
        "task": task.name,
        "counts": {**report.counts(), "cross_validated_crops": len(result.fold_of),
                   "checked_crops": len(result.class_of),
                   "label_issue_suspects": len(issues), "leaks": None if leak_list is None else len(leak_list)},
        "thresholds": report.thresholds(),
        "label_issues": {"method": "cleanlab.filter.find_label_issues on out-of-fold probabilities (test crops: "
                                   "the mean of the fold models), plus every crop predicted as another class, "
                                   "ranked by self-confidence; score = 1 - label quality",
                         "cv": str(result.output)},
        "cv": {"folds": len(result.folds), "model": result.info["options"]["model"],
               "macro_f1_mean": result.info["mean"]["macro_f1"], "macro_f1_std": result.info["std"]["macro_f1"],
               "accuracy_mean": result.info["mean"]["accuracy"], "accuracy_std": result.info["std"]["accuracy"]},
        "leaks": leak_list,
    }
    atomic_write_text(folder / AUDIT_JSON, json.dumps(info, indent=2) + "\n")
    return AuditResult(task.name, folder, tuple(issues), len(result.class_of), info)


def _leaks(layout: Layout, task: str, report: Any) -> list[dict[str, object]] | None:
    """Near-duplicate pairs straddling the splits of img/data/<task>/ (None when there is no split)."""
    folder = layout.task_data(task)
    if not (folder / SPLIT_JSON).is_file():
        return None
    try:
        plan = load_split(folder)
    except SplitError as exc:
        logger.warning("%s: the current split cannot be read (%s); leaks not checked", folder, exc)
        return None
    return [leak.as_dict() for leak in leaks(report, plan)]


def _draw_gallery(layout: Layout, issues: Sequence[LabelIssue], path: Path, task: str) -> None:
    """label_issues.png: the top suspects; a figure that fails is skipped with a warning."""
    top = issues[:GALLERY_SIZE]
    try:
        images = []
        for issue in top:
            with Image.open(layout.pool / issue.crop) as image:
                images.append(np.asarray(image.convert("RGB")))
        plots.plot_label_issues(images, [i.label for i in top], [i.suggested for i in top], [i.score for i in top],
                                path, f"{task}: the {len(top)} most suspicious labels")
    except Exception as exc:  # a figure is never worth the audit that produced it
        logger.warning("%s: could not draw this plot (%s: %s); skipped", path, type(exc).__name__, exc)


__all__ = [
    "AUDIT_DIR", "AUDIT_JSON", "GALLERY_SIZE", "LABEL_ISSUES_CSV", "LABEL_ISSUES_PLOT", "LABEL_ISSUE_COLUMNS",
    "AuditResult", "LabelIssue", "audit", "format_label_issues_csv", "label_issues", "rank_label_issues",
]
