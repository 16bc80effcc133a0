"""``toonvision report``: one self-contained HTML page of a trained model, for a person to check.

    models/<task>/                          best.json, runs.csv, training_curves.png, test_metrics.png
    ├── ensemble.json                       (when trained with an ensemble)
    ├── evaluation/                         evaluation.json, confusion_matrix.png, worst_predictions.png
    └── explain/                            *_gradcam.png (the first few)
    img/data/<task>/split.csv               the split on disk (best.json's split is the model's own)
    img/reports/<task>/audit/               audit.json, label_issues.csv, label_issues.png, duplicates.csv
                 │
                 ▼  load_report: files -> ReportData (frozen)   render_html: ReportData -> str (pure)
    models/<task>/report.html               (--out FILE): figures as base64 data: URIs, CSS inline,
                                            no script, no URL outside the file

Only ``best.json`` is required; every other section appears when its files exist, and a file that
cannot be read becomes a note on the page, not a failure. Every value from a file is escaped.
Crash safety: the page is written through a temp file and a rename, so a kill leaves the old
report or the new one; nothing else is written.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import toonvision
from toonvision.audit import AUDIT_DIR, AUDIT_JSON, LABEL_ISSUE_COLUMNS, LABEL_ISSUES_CSV, LABEL_ISSUES_PLOT
from toonvision.dedup import DUPLICATE_COLUMNS, DUPLICATES_CSV
from toonvision.errors import ModelFileError, UsageError
from toonvision.evaluate import CONFUSION_PLOT, EVALUATION_JSON, WORST_PLOT
from toonvision.explain import GRADCAM_SUFFIX
from toonvision.fsutil import atomic_write_text
from toonvision.layout import (
    BEST_INFO,
    ENSEMBLE_INFO,
    EXPLAIN_DIR,
    SPLITS,
    Layout,
    evaluation_dir_name,
)
from toonvision.ledger import LEDGER
from toonvision.split import SPLIT_CSV
from toonvision.train import BOXPLOT, CURVES_PLOT

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"

MAX_GRADCAMS = 4  # a few maps show what the model looks at; explain/ may hold hundreds
MAX_TABLE_ROWS = 25  # rows of a long CSV shown on the page; the rest are counted
MAX_FIGURE_BYTES = 32 * 1024 * 1024  # a PNG beyond this is not a figure of ours
MAX_JSON_BYTES = 64 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MISSING = "\u2013"  # en dash: a value the files do not have
_ORIGINAL_SELECTION = "the lowest validation loss at the last epoch"  # a best.json from before --select


# -- the data (frozen) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One PNG to embed: its file name, a caption, its bytes and pixel size."""

    name: str
    caption: str
    png: bytes
    width: int
    height: int

    def __repr__(self) -> str:  # the bytes would flood a traceback
        return f"Figure({self.name!r}, {self.width}x{self.height}, {len(self.png)} bytes)"


@dataclass(frozen=True)
class Table:
    """Rows of text cells under column names; ``total`` counts the rows the file had (rows may be the first)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    total: int


@dataclass(frozen=True)
class ClassCount:
    """One class of the split: its display name, crops per split, and the labels it gathers."""

    cls: str
    display: str
    counts: tuple[int, ...]  # per split, in SplitSummary.splits order
    labels: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class SplitSummary:
    """Crops per class and split, and where the numbers came from."""

    source: str
    seed: int | None
    ratios: tuple[float, ...]
    grouped: bool | None
    splits: tuple[str, ...]
    classes: tuple[ClassCount, ...]
    excluded: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Scores:
    """A row of the classification report."""

    name: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int | None


@dataclass(frozen=True)
class EvaluationSummary:
    """``evaluation.json`` of the test split: the classification report and the confusion matrix."""

    split: str
    crops: int | None
    accuracy: float | None
    loss: float | None
    per_class: tuple[Scores, ...]
    averages: tuple[Scores, ...]
    classes: tuple[str, ...]  # confusion rows (actual) and columns (predicted)
    confusion: tuple[tuple[int, ...], ...]
    created: str


@dataclass(frozen=True)
class AuditSummary:
    """What ``toonvision audit`` found: its numbers, leaks, label-issue suspects and duplicates."""

    facts: tuple[tuple[str, str], ...]
    leaks: Table | None
    label_issues: Table | None
    duplicates: Table | None
    duplicate_clusters: tuple[tuple[str, int], ...]  # (kind, clusters)
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, read from the model's folder and the data beside it."""

    folder: Path
    task: str
    model: str
    run: int | None
    classes: tuple[str, ...]
    display_names: tuple[tuple[str, str], ...]
    image_size: str
    metrics: tuple[tuple[str, float | None, float | None], ...]  # (split, loss, accuracy)
    options: tuple[tuple[str, str], ...]
    selection: str  # how the run was chosen, as best.json says it
    versions: tuple[tuple[str, str], ...]
    created: str
    split: SplitSummary | None
    runs: Table | None
    chosen_run: str | None
    training_figures: tuple[Figure, ...]
    ensemble: tuple[tuple[str, str], ...] | None
    ensemble_metrics: tuple[tuple[str, float | None, float | None], ...]
    evaluation: EvaluationSummary | None
    evaluation_figures: tuple[Figure, ...]
    gradcams: tuple[Figure, ...]
    gradcam_total: int
    audit: AuditSummary | None
    notes: tuple[str, ...]
    made: str
    generator: str

    @property
    def test_accuracy(self) -> float | None:
        return next((acc for split, _loss, acc in self.metrics if split == "test"), None)


# -- loading (reads files, never writes) ------------------------------------------------------


def resolve_folder(path: Path) -> Path:
    """``models/<task>/`` from itself, its ``best.json`` or its ``best.keras``."""
    path = Path(path)
    if path.is_file() and path.suffix in (".json", ".keras"):
        path = path.parent
    if not path.exists():
        raise UsageError(f"{path}: no such folder; pass a trained model's folder, e.g. models/suit/")
    if not path.is_dir():
        raise UsageError(f"{path}: not a folder; pass a trained model's folder, e.g. models/suit/")
    return path


def load_report(layout: Layout, folder: Path) -> ReportData:
    """Read a trained model's folder (and its task's data and audit) into a :class:`ReportData`."""
    folder = resolve_folder(folder).absolute()
    info = _best_info(folder)
    notes: list[str] = []
    task = str(info.get("task") or folder.name)
    classes = tuple(str(c) for c in _as_list(info.get("classes")))
    names = info.get("display_names") if isinstance(info.get("display_names"), Mapping) else {}
    display_names = tuple((c, str(names.get(c, c))) for c in classes)
    run = info.get("run") if isinstance(info.get("run"), int) and not isinstance(info.get("run"), bool) else None
    evaluation, evaluation_figures = _evaluation(folder, info, notes)
    gradcams, gradcam_total = _gradcams(folder / EXPLAIN_DIR, notes)
    ensemble, ensemble_metrics = _ensemble(folder, notes)
    runs = _csv_table(folder / LEDGER, None, notes, limit=None)
    return ReportData(
        folder=folder,
        task=task,
        model=str(info.get("model", _MISSING)),
        run=run,
        classes=classes,
        display_names=display_names,
        image_size=_image_size(info.get("image_size")),
        metrics=_metrics(info.get("metrics")),
        options=_options(info),
        selection=_text(info.get("selection", _ORIGINAL_SELECTION)),
        versions=tuple((str(k), _text(v)) for k, v in _as_mapping(info.get("versions")).items()),
        created=_text(info.get("created", _MISSING)),
        split=_split(layout, task, info, dict(display_names), notes),
        runs=runs,
        chosen_run=None if run is None else str(run),
        training_figures=tuple(f for f in (
            _figure(folder / CURVES_PLOT, "Loss and accuracy per epoch, training and validation, every run", notes),
            _figure(folder / BOXPLOT, "Test accuracy and loss over the runs", notes),
        ) if f is not None),
        ensemble=ensemble,
        ensemble_metrics=ensemble_metrics,
        evaluation=evaluation,
        evaluation_figures=evaluation_figures,
        gradcams=gradcams,
        gradcam_total=gradcam_total,
        audit=_audit(layout.report_dir(task) / AUDIT_DIR, notes),
        notes=tuple(notes),
        made=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        generator=f"toonvision {toonvision.__version__}",
    )


def _best_info(folder: Path) -> dict[str, Any]:
    path = folder / BEST_INFO
    if not path.is_file():
        raise ModelFileError(f"{folder}: no {BEST_INFO} here; train first (toonvision train --task <task>), "
                             "or pass the folder of a trained model")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); it is damaged, "
                             "train again (toonvision train --task <task> --overwrite)") from None
    if not isinstance(info, dict) or not isinstance(info.get("classes"), list) or not isinstance(
            info.get("metrics", {}), dict):
        raise ModelFileError(f"{path}: not a {BEST_INFO} written by toonvision train (no classes list); "
                             "train again (toonvision train --task <task> --overwrite)")
    return info


def _read_json(path: Path, notes: list[str]) -> Any | None:
    """A JSON file's content, or None with a note when it cannot be read."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _note(notes, f"{path} cannot be read ({type(exc).__name__}: {exc}); its section is left out")
        return None


def _note(notes: list[str], text: str) -> None:
    logger.warning("%s", text)
    notes.append(text)


def _figure(path: Path, caption: str, notes: list[str]) -> Figure | None:
    """A PNG file as a figure; None when absent, None with a note when it is not a readable PNG."""
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_FIGURE_BYTES:
            raise ValueError(f"larger than {MAX_FIGURE_BYTES} bytes")
        data = path.read_bytes()
        width, height = png_size(data)
    except (OSError, ValueError) as exc:
        _note(notes, f"{path} is not a readable PNG ({exc}); left out")
        return None
    return Figure(path.name, caption, data, width, height)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError for anything else."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    if not (width and height):
        raise ValueError("a PNG of size 0")
    return width, height


def _csv_table(path: Path, columns: Sequence[str] | None, notes: list[str], limit: int | None = MAX_TABLE_ROWS,
               ) -> Table | None:
    """A CSV file's rows (the first ``limit``); ``columns``: the header it must start with."""
    if not path.is_file():
        return None
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        _note(notes, f"{path} cannot be read ({type(exc).__name__}: {exc}); left out")
        return None
    if not rows or (columns is not None and tuple(rows[0][:len(columns)]) != tuple(columns)):
        expected = ",".join(columns) if columns else "a header row"
        _note(notes, f"{path}: expected the columns {expected}; left out")
        return None
    header, body = tuple(rows[0]), [tuple(r) for r in rows[1:] if r]
    shown = body if limit is None else body[:limit]
    return Table(header, tuple(tuple(r[:len(header)]) + ("",) * (len(header) - len(r)) for r in shown), len(body))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    """A JSON value as a person reads it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _image_size(value: Any) -> str:
    if isinstance(value, list) and len(value) == 2 and all(_count(v) for v in value):
        return f"{value[0]}x{value[1]}"
    return _text(value) if value is not None else _MISSING


def _metrics(value: Any) -> tuple[tuple[str, float | None, float | None], ...]:
    metrics = _as_mapping(value)
    order = [s for s in SPLITS if s in metrics] + [s for s in metrics if s not in SPLITS]
    rows = [(str(s), _as_mapping(metrics[s])) for s in order]
    return tuple((s, _number(m.get("loss")), _number(m.get("accuracy"))) for s, m in rows)


_NOT_OPTIONS = {"task", "model", "image_size", "classes", "display_names", "metrics", "split", "versions", "created",
                "model_sha256"}  # shown elsewhere on the page, or at the end of the options


def _options(info: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Every other field of best.json: the options of the training, in file order."""
    rows = []
    for key, value in info.items():
        if key in _NOT_OPTIONS:
            continue
        rows.append((str(key), _text(value)))
    if "model_sha256" in info:
        rows.append(("model_sha256", _text(info["model_sha256"])))
    return tuple(rows)


def _split(layout: Layout, task: str, info: Mapping[str, Any], names: Mapping[str, str],
           notes: list[str]) -> SplitSummary | None:
    """Crops per class and split: the model's own split from best.json, else img/data/<task>/split.csv."""
    on_disk = layout.task_data(task) / SPLIT_CSV
    disk_rows = _split_csv_rows(on_disk, notes)
    plan = _as_mapping(info.get("split"))
    columns = _as_list(plan.get("columns")) or ["crop", "label", "class", "split", "source", "source_sha256"]
    try:
        at = {name: columns.index(name) for name in ("crop", "label", "class", "split")}
        rows = [{name: str(row[i]) for name, i in at.items()} for row in _as_list(plan.get("assignments"))]
    except (ValueError, IndexError, TypeError):
        rows = []
        _note(notes, f"{BEST_INFO}: its split cannot be read; the split table comes from {on_disk}")
    if rows:
        if disk_rows is not None and {r["crop"] for r in disk_rows} != {r["crop"] for r in rows}:
            _note(notes, f"{on_disk} holds another split than the model's; the table shows the model's "
                         f"(from {BEST_INFO}). Run toonvision evaluate to score the model on its own split")
        header = plan
        source = f"{BEST_INFO} (the split of the chosen run)"
    elif disk_rows:
        rows, header, source = disk_rows, {}, str(on_disk)
    else:
        return None
    splits = tuple(s for s in SPLITS if any(r["split"] == s for r in rows)) + tuple(
        sorted({r["split"] for r in rows} - set(SPLITS)))
    order = [str(c) for c in _as_list(header.get("classes"))] or sorted({r["class"] for r in rows})
    order += sorted({r["class"] for r in rows} - set(order))
    counts = []
    for cls in order:
        mine = [r for r in rows if r["class"] == cls]
        counts.append(ClassCount(cls, names.get(cls, cls), tuple(sum(r["split"] == s for r in mine) for s in splits),
                                 tuple(sorted({r["label"] for r in mine}))))
    if header:
        seed = _count(header.get("seed"))
    else:
        seed = _int_or_none(disk_rows[0].get("seed")) if disk_rows else None
    grouped = header.get("grouped") if isinstance(header.get("grouped"), bool) else None
    excluded = tuple((str(e[0]), int(e[1])) for e in _as_list(header.get("excluded"))
                     if isinstance(e, list) and len(e) == 2 and _count(e[1]) is not None)
    ratios = tuple(float(r) for r in _as_list(header.get("ratios")) if _number(r) is not None)
    return SplitSummary(source, seed, ratios, grouped, splits, tuple(counts), excluded)


def _int_or_none(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _split_csv_rows(path: Path, notes: list[str]) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
        rows = [dict(r) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        _note(notes, f"{path} cannot be read ({type(exc).__name__}: {exc})")
        return None
    if rows and not {"crop", "label", "class", "split"} <= set(rows[0]):
        _note(notes, f"{path}: expected the columns crop, label, class, split")
        return None
    return rows


def _evaluation(folder: Path, info: Mapping[str, Any], notes: list[str]
                ) -> tuple[EvaluationSummary | None, tuple[Figure, ...]]:
    out = folder / evaluation_dir_name("test")
    if not (out / EVALUATION_JSON).is_file():
        return None, ()
    data = _read_json(out / EVALUATION_JSON, notes)
    if not isinstance(data, Mapping):
        return None, ()
    per_class = _as_mapping(data.get("per_class"))
    names = _as_mapping(data.get("display_names"))
    rows = tuple(_scores(_shown(str(c), str(names.get(c, c))), s) for c, s in per_class.items())
    averages = tuple(_scores(label, data.get(key)) for label, key in (("macro avg", "macro_avg"),
                                                                       ("weighted avg", "weighted_avg"))
                     if isinstance(data.get(key), Mapping))
    matrix = _as_mapping(data.get("confusion_matrix"))
    classes = tuple(str(c) for c in _as_list(matrix.get("classes")))
    counts = tuple(tuple(int(v) for v in row if _count(v) is not None) for row in _as_list(matrix.get("counts"))
                   if isinstance(row, list))
    if len(counts) != len(classes) or any(len(row) != len(classes) for row in counts):
        classes, counts = (), ()
    recorded = _as_mapping(data.get("recorded_at_training"))
    trained = _as_mapping(_as_mapping(info.get("metrics")).get("test"))
    if recorded and trained and recorded.get("accuracy") != trained.get("accuracy"):
        _note(notes, f"{out / EVALUATION_JSON} scores an earlier model than this {BEST_INFO}; "
                     f"run toonvision evaluate {folder} again")
    summary = EvaluationSummary(
        split=str(data.get("split", "test")), crops=_count(data.get("crops")), accuracy=_number(data.get("accuracy")),
        loss=_number(data.get("loss")), per_class=rows, averages=averages, classes=classes, confusion=counts,
        created=_text(data.get("created", _MISSING)),
    )
    figures = tuple(f for f in (
        _figure(out / CONFUSION_PLOT, "Confusion matrix: counts, and shares of each actual class", notes),
        _figure(out / WORST_PLOT, "The most confident mistakes: actual class, predicted class, confidence", notes),
    ) if f is not None)
    return summary, figures


def _scores(name: str, value: Any) -> Scores:
    s = _as_mapping(value)
    return Scores(name, _number(s.get("precision")), _number(s.get("recall")), _number(s.get("f1")),
                  _count(s.get("support")))


def _shown(cls: str, display: str) -> str:
    return cls if display == cls else f"{cls} ({display})"


def _gradcams(folder: Path, notes: list[str]) -> tuple[tuple[Figure, ...], int]:
    if not folder.is_dir():
        return (), 0
    try:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(GRADCAM_SUFFIX) and p.is_file())
    except OSError as exc:
        _note(notes, f"{folder} cannot be listed ({exc})")
        return (), 0
    figures = []
    for path in files[:MAX_GRADCAMS]:
        figure = _figure(path, f"Grad-CAM of {path.name[:-len(GRADCAM_SUFFIX)]}", notes)
        if figure is not None:
            figures.append(figure)
    return tuple(figures), len(files)


def _ensemble(folder: Path, notes: list[str]
              ) -> tuple[tuple[tuple[str, str], ...] | None, tuple[tuple[str, float | None, float | None], ...]]:
    if not (folder / ENSEMBLE_INFO).is_file():
        return None, ()
    data = _read_json(folder / ENSEMBLE_INFO, notes)
    if not isinstance(data, Mapping):
        return None, ()
    facts = tuple((str(k), _text(v)) for k, v in data.items() if k not in ("metrics", "split"))
    return facts, _metrics(data.get("metrics"))


def _audit(folder: Path, notes: list[str]) -> AuditSummary | None:
    names = (AUDIT_JSON, LABEL_ISSUES_CSV, LABEL_ISSUES_PLOT, DUPLICATES_CSV)
    if not folder.is_dir() or not any((folder / n).is_file() for n in names):
        return None
    data = _read_json(folder / AUDIT_JSON, notes) if (folder / AUDIT_JSON).is_file() else None
    data = data if isinstance(data, Mapping) else {}
    facts, leaks = [], None
    for key, value in data.items():
        if key == "leaks" and isinstance(value, list):
            leaks = _records_table(value)
        elif isinstance(value, Mapping):
            facts.extend((f"{key}: {k}", _text(v)) for k, v in value.items())
        else:
            facts.append((str(key), _text(value)))
    duplicates = _csv_table(folder / DUPLICATES_CSV, DUPLICATE_COLUMNS, notes, limit=None)
    clusters: dict[str, set[str]] = {}
    if duplicates is not None:
        for row in duplicates.rows:
            clusters.setdefault(row[1], set()).add(row[0])
        duplicates = Table(duplicates.columns, duplicates.rows[:MAX_TABLE_ROWS], duplicates.total)
    issues = _csv_table(folder / LABEL_ISSUES_CSV, LABEL_ISSUE_COLUMNS, notes)
    plot = _figure(folder / LABEL_ISSUES_PLOT, "The top label-issue suspects: given and suggested label", notes)
    return AuditSummary(tuple(facts), leaks, issues, duplicates,
                        tuple((kind, len(ids)) for kind, ids in sorted(clusters.items())),
                        () if plot is None else (plot,))


def _records_table(items: list[Any]) -> Table:
    """A JSON list (of objects, or of lists) as a table."""
    if items and all(isinstance(i, Mapping) for i in items):
        columns = tuple(dict.fromkeys(str(k) for i in items for k in i))
        rows = tuple(tuple(_text(i.get(c, "")) for c in columns) for i in items[:MAX_TABLE_ROWS])
    else:
        width = max((len(i) for i in items if isinstance(i, list)), default=1)
        columns = tuple(f"#{n + 1}" for n in range(width))
        rows = tuple(tuple(_text(v) for v in (i if isinstance(i, list) else [i])) + ("",) * (
            width - (len(i) if isinstance(i, list) else 1)) for i in items[:MAX_TABLE_ROWS])
    return Table(columns, rows, len(items))


# -- rendering (pure) -------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return _MISSING
    return f"{value:.{digits}f}"


def _cell(column: str, text: str) -> str:
    """A CSV cell: numbers right-aligned (floats to 4 places, seconds to 1), text as it is."""
    try:
        number = float(text)
    except ValueError:
        return f"<td>{_e(text)}</td>"
    if text.strip().lstrip("-").isdigit():
        return f'<td class="num">{_e(text.strip())}</td>'
    return f'<td class="num">{_fmt(number, 1 if column == "seconds" else 4)}</td>'


def _table(table: Table, chosen_column: str | None = None, chosen: str | None = None, note: str = "") -> str:
    numeric = [bool(table.rows) and all(_is_number(row[i]) for row in table.rows) for i in range(len(table.columns))]
    head = "".join(f'<th class="num">{_e(c)}</th>' if n else f"<th>{_e(c)}</th>"
                   for c, n in zip(table.columns, numeric, strict=True))
    at = table.columns.index(chosen_column) if chosen_column in table.columns else None
    body = []
    for row in table.rows:
        mark = ' class="chosen"' if at is not None and row[at] == chosen else ""
        body.append(f"<tr{mark}>" + "".join(_cell(c, v) for c, v in zip(table.columns, row, strict=True)) + "</tr>")
    more = ""
    if table.total > len(table.rows):
        more = f'<p class="muted">The first {len(table.rows)} of {table.total} rows{_e(note)}.</p>'
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            + more)


def _pairs(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="pairs"><tbody>{body}</tbody></table>'


def _img(figure: Figure, size: str = "full") -> str:
    """The figure inline; ``size`` "medium" caps its width (strips of small images read better smaller)."""
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure class="{size}"><img src="data:image/png;base64,{data}" alt="{_e(figure.name)}" '
            f'width="{figure.width}" style="aspect-ratio: {figure.width} / {figure.height}">'
            f"<figcaption>{_e(figure.caption)} <span class=\"file\">{_e(figure.name)}</span></figcaption></figure>")


def _metric_card(label: str, value: str, detail: str = "") -> str:
    small = f"<small>{_e(detail)}</small>" if detail else ""
    return f'<div class="card"><span>{_e(label)}</span><strong>{_e(value)}</strong>{small}</div>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _overview(data: ReportData) -> str:
    metrics = {split: (loss, acc) for split, loss, acc in data.metrics}
    cards = []
    for split in ("test", "validate"):
        if split in metrics:
            loss, acc = metrics[split]
            cards.append(_metric_card(f"{split} accuracy", _fmt(acc), f"loss {_fmt(loss)}"))
    if data.evaluation is not None and data.evaluation.averages:
        macro = data.evaluation.averages[0]
        cards.append(_metric_card("test macro F1", _fmt(macro.f1), "from evaluation.json"))
    cards.append(_metric_card("classes", str(len(data.classes)), ", ".join(data.classes)))
    if data.split is not None:
        cards.append(_metric_card("crops", str(sum(c.total for c in data.split.classes)),
                                  " / ".join(f"{s} {sum(c.counts[i] for c in data.split.classes)}"
                                             for i, s in enumerate(data.split.splits))))
    if data.runs is not None:
        cards.append(_metric_card("runs", str(data.runs.total), f"chosen: run {data.chosen_run or _MISSING}"))
    table = _metrics_table("split", data.metrics)
    return (f'<div class="cards">{"".join(cards)}</div>'
            f"<p>The chosen run's metrics at training ({_e(BEST_INFO)}). It was chosen on validation data "
            f"({_e(data.selection)}), so its test numbers are an honest estimate.</p>{table}")


def _metrics_table(first: str, rows: Sequence[tuple[str, float | None, float | None]]) -> str:
    """(name, loss, accuracy) rows as a table: accuracy first, as people read it."""
    body = "".join(f'<tr><th>{_e(name)}</th><td class="num">{_fmt(acc)}</td><td class="num">{_fmt(loss)}</td></tr>'
                   for name, loss, acc in rows)
    return (f'<table class="metrics"><thead><tr><th>{_e(first)}</th><th class="num">accuracy</th>'
            f'<th class="num">loss</th></tr></thead><tbody>{body}</tbody></table>')


def _data_section(data: ReportData) -> str:
    split = data.split
    if split is None:
        return ('<p class="muted">No split recorded: neither best.json nor img/data/&lt;task&gt;/split.csv '
                "has one.</p>")
    head = "".join(f'<th class="num">{_e(s)}</th>' for s in split.splits)
    body = []
    for c in split.classes:
        counts = "".join(f'<td class="num">{n}</td>' for n in c.counts)
        labels = ", ".join(c.labels)
        body.append(f"<tr><th>{_e(c.cls)}</th><td>{_e(c.display)}</td>{counts}<td class=\"num\">{c.total}</td>"
                    f'<td class="labels">{_e(labels)}</td></tr>')
    totals = "".join(f'<td class="num">{sum(c.counts[i] for c in split.classes)}</td>'
                     for i in range(len(split.splits)))
    grand = sum(c.total for c in split.classes)
    facts = [("task", data.task), ("from", split.source)]
    if split.seed is not None:
        facts.append(("split seed", str(split.seed)))
    if split.ratios:
        facts.append(("ratios", " / ".join(f"{r:g}" for r in split.ratios)))
    if split.grouped is not None:
        facts.append(("grouped by screenshot", "yes" if split.grouped else "no: crops of one screenshot may be in "
                                                                             "different splits"))
    if split.excluded:
        facts.append(("left out", ", ".join(f"{c} ({n} crops)" for c, n in split.excluded)))
    return (_pairs(facts) + '<div class="scroll"><table><thead><tr><th>class</th><th>name</th>'
            f'{head}<th class="num">total</th><th>labels</th></tr></thead><tbody>{"".join(body)}</tbody>'
            f'<tfoot><tr><th>total</th><td></td>{totals}<td class="num">{grand}</td><td></td></tr></tfoot>'
            "</table></div>")


def _training_section(data: ReportData) -> str:
    parts = [_img(f) for f in data.training_figures]
    if not data.training_figures:
        parts.append('<p class="muted">No training figures in this folder.</p>')
    if data.runs is not None:
        at = data.runs.columns.index("test_accuracy") if "test_accuracy" in data.runs.columns else None
        accuracies = [float(r[at]) for r in data.runs.rows if at is not None and _is_float(r[at])]
        spread = ""
        if accuracies:
            spread = (f" Test accuracy over the runs: mean {_fmt(sum(accuracies) / len(accuracies))}, "
                      f"min {_fmt(min(accuracies))}, max {_fmt(max(accuracies))}.")
        parts.append(f"<h3>Runs</h3><p>One row per run ({_e(LEDGER)}); the chosen run is highlighted.{spread}</p>")
        parts.append(_table(data.runs, "run", data.chosen_run))
    if data.ensemble is not None:
        compared = [*((f"chosen run, {s}", lo, a) for s, lo, a in data.metrics if s == "test"),
                    *((f"ensemble, {s}", lo, a) for s, lo, a in data.ensemble_metrics)]
        parts.append("<h3>Ensemble</h3>" + _pairs(data.ensemble) + _metrics_table("model", compared))
    return "".join(parts)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _evaluation_section(data: ReportData) -> str:
    ev = data.evaluation
    if ev is None:
        return (f'<p class="missing">Not evaluated yet: run <code>toonvision evaluate {_e(data.folder)}</code> '
                "for the classification report, the confusion matrix and the worst predictions, then this "
                f"report again (<code>toonvision report {_e(data.folder)}</code>).</p>")
    head = ("<thead><tr><th></th><th class=\"num\">precision</th><th class=\"num\">recall</th>"
            "<th class=\"num\">F1</th><th class=\"num\">support</th></tr></thead>")

    def row(s: Scores) -> str:
        return (f"<tr><th>{_e(s.name)}</th><td class=\"num\">{_fmt(s.precision)}</td><td class=\"num\">"
                f"{_fmt(s.recall)}</td><td class=\"num\">{_fmt(s.f1)}</td><td class=\"num\">"
                f"{_MISSING if s.support is None else s.support}</td></tr>")

    accuracy = (f'<tr class="sep"><th>accuracy</th><td></td><td></td><td class="num">{_fmt(ev.accuracy)}</td>'
                f'<td class="num">{_MISSING if ev.crops is None else ev.crops}</td></tr>')
    report = (f'<table class="report">{head}<tbody>{"".join(row(s) for s in ev.per_class)}{accuracy}'
              f'{"".join(row(s) for s in ev.averages)}</tbody></table>')
    intro = (f"<p>{_e(ev.split)} split, {_MISSING if ev.crops is None else ev.crops} crops: accuracy "
             f"{_fmt(ev.accuracy)}, loss {_fmt(ev.loss)} (evaluated {_e(ev.created)}).</p>")
    parts = [intro, '<div class="side">', report, _confusion_table(ev), "</div>"]
    parts.extend(_img(f) for f in data.evaluation_figures)
    return "".join(parts)


def _confusion_table(ev: EvaluationSummary) -> str:
    if not ev.classes:
        return ""
    head = "".join(f'<th class="num">{_e(c)}</th>' for c in ev.classes)
    body = []
    for cls, row in zip(ev.classes, ev.confusion, strict=True):
        total = sum(row) or 1
        cells = []
        for j, n in enumerate(row):
            share = n / total
            colour = "34, 139, 84" if ev.classes[j] == cls else "200, 60, 50"
            style = f' style="background: rgba({colour}, {0.08 + 0.6 * share:.2f})"' if n else ""
            cells.append(f'<td class="num"{style}>{n}</td>')
        body.append(f"<tr><th>{_e(cls)}</th>{''.join(cells)}</tr>")
    return (f'<table class="confusion"><caption>rows: actual, columns: predicted</caption><thead><tr><th></th>'
            f'{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _gradcam_section(data: ReportData) -> str:
    shown = f"{len(data.gradcams)} of {data.gradcam_total}" if data.gradcam_total > len(data.gradcams) else "all"
    intro = (f"<p>Where the model looked for each class ({shown} maps in {_e(EXPLAIN_DIR)}/): the image, then "
             "one heatmap per class titled with its probability.</p>")
    return intro + "".join(_img(f, "medium") for f in data.gradcams)


def _audit_section(audit: AuditSummary) -> str:
    parts = []
    if audit.facts:
        parts.append(_pairs(audit.facts))
    if audit.duplicate_clusters:
        clusters = ", ".join(f"{n} {kind} cluster{'s' if n != 1 else ''}" for kind, n in audit.duplicate_clusters)
        parts.append(f"<h3>Near-duplicate merges</h3><p>{_e(clusters)} ({_e(DUPLICATES_CSV)}).</p>")
    if audit.duplicates is not None:
        parts.append(_table(audit.duplicates, note=f" ({DUPLICATES_CSV} has them all)"))
    if audit.leaks is not None:
        parts.append(f"<h3>Leaks in the current split</h3><p>{audit.leaks.total} near-duplicate pair(s) with members "
                     "in different splits.</p>")
        if audit.leaks.rows:
            parts.append(_table(audit.leaks))
    if audit.label_issues is not None:
        parts.append(f"<h3>Label-issue suspects</h3><p>Most suspicious first ({_e(LABEL_ISSUES_CSV)}); fix the box "
                     "in labelImg and run extract again.</p>")
        parts.append(_table(audit.label_issues, note=f" ({LABEL_ISSUES_CSV} has them all)"))
    parts.extend(_img(f) for f in audit.figures)
    if not parts:
        parts.append(f'<p class="muted">Nothing in {_e(AUDIT_DIR)}/ could be read; see the notes at the top.</p>')
    return "".join(parts)


_CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5f6b7a; --line: #dfe3ea; --soft: #f5f7fa;
  --accent: #2856b6; --chosen: #fff4c7; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f5; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; background: #fff; min-height: 100vh;
  box-shadow: 0 0 0 1px var(--line); }
header h1 { margin: 0 0 4px; font-size: 28px; letter-spacing: -0.01em; }
header p { margin: 0; color: var(--muted); }
nav { margin: 18px 0 6px; padding: 8px 0; border-top: 1px solid var(--line); border-bottom: 1px solid var(--line);
  font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; }
section { margin-top: 34px; }
h2 { font-size: 20px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--ink); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 8px 0 12px; max-width: 80ch; }
code { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; background: var(--soft);
  padding: 1px 5px; border-radius: 4px; }
.muted, .file { color: var(--muted); }
.file { font-size: 12px; font-family: ui-monospace, Menlo, Consolas, monospace; margin-left: 6px; }
.missing { background: #fff8e6; border-left: 4px solid #e0a800; padding: 10px 14px; }
.notes { background: #fdf0ef; border-left: 4px solid #c0392b; padding: 8px 14px 8px 30px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 4px 0 14px; }
.card { flex: 1 1 150px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px;
  background: var(--soft); }
.card span { display: block; font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); }
.card strong { display: block; font-size: 26px; font-variant-numeric: tabular-nums; }
.card small { display: block; color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #b9c0cc; font-weight: 600; white-space: nowrap; }
tbody th { font-weight: 600; white-space: nowrap; }
tfoot th, tfoot td { border-top: 2px solid #b9c0cc; border-bottom: none; font-weight: 600; }
.num { text-align: right; white-space: nowrap; }
td.labels { color: var(--muted); font-size: 13px; max-width: 520px; }
tr.chosen td, tr.chosen th { background: var(--chosen); font-weight: 600; }
tr.sep th, tr.sep td { border-top: 2px solid #b9c0cc; }
table.pairs th { color: var(--muted); font-weight: 500; padding-right: 24px; }
table.pairs td { overflow-wrap: anywhere; }
table.confusion caption { caption-side: bottom; color: var(--muted); font-size: 12px; text-align: left;
  padding-top: 4px; }
.scroll { overflow-x: auto; }
.side { display: flex; flex-wrap: wrap; gap: 36px; align-items: flex-start; }
figure { margin: 14px 0 22px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figure.medium img { max-width: min(100%, 820px); }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 10px; }
@media print { body { background: #fff; } main { box-shadow: none; } nav { display: none; } }
"""


def render_html(data: ReportData) -> str:
    """The whole page as one string: no script, no URL outside it, every value from a file escaped."""
    sections = [("overview", "Overview", _overview(data)), ("data", "Task and data", _data_section(data)),
                ("training", "Training", _training_section(data)),
                ("evaluation", "Test evaluation", _evaluation_section(data))]
    if data.gradcams:
        sections.append(("gradcam", "Grad-CAM", _gradcam_section(data)))
    if data.audit is not None:
        sections.append(("audit", "Data audit", _audit_section(data.audit)))
    options = _pairs((("model", data.model), ("classes in output order", ", ".join(data.classes)),
                      ("display names", ", ".join(f"{c}: {n}" for c, n in data.display_names)),
                      ("image size (height x width)", data.image_size), *data.options, ("trained", data.created)))
    sections.append(("options", "Options and versions", options + "<h3>Versions</h3>" + _pairs(data.versions)))
    nav = "".join(f'<a href="#{anchor}">{_e(title)}</a>' for anchor, title, _ in sections)
    notes = ""
    if data.notes:
        notes = '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in data.notes) + "</ul>"
    run = "" if data.run is None else f", run {data.run}"
    title = f"{data.task}: {data.model}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} - ToonVision report</title><style>{_CSS}</style></head>"
        f"<body><main><header><h1>{_e(data.task)} <span class=\"muted\">{_e(data.model)}{_e(run)}</span></h1>"
        f"<p>{_e(data.folder)} &middot; trained {_e(data.created)} &middot; test accuracy "
        f"{_fmt(data.test_accuracy)}</p></header><nav>{nav}</nav>{notes}"
        + "".join(_section(anchor, title, body) for anchor, title, body in sections)
        + f"<footer>Made by {_e(data.generator)} at {_e(data.made)} from the files in {_e(data.folder)}.</footer>"
        "</main></body></html>\n"
    )


# -- writing ---------------------------------------------------------------------------------


def write_report(data: ReportData, out: Path | None = None) -> Path:
    """Render ``data`` and write it atomically to ``out`` (default: ``report.html`` in the model's folder)."""
    path = Path(out) if out is not None else data.folder / REPORT_HTML
    if path.is_dir():
        raise UsageError(f"{path} is a folder; --out takes the HTML file to write, e.g. {path / REPORT_HTML}")
    atomic_write_text(path, render_html(data))
    return path


def make_report(layout: Layout, folder: Path, out: Path | None = None) -> Path:
    """Read ``folder`` and write its report; returns the page's path."""
    return write_report(load_report(layout, folder), out)
