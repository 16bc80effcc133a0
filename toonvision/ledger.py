"""The ledger of a training: which runs finished, their histories, and the best model so far.

Executors (``train``'s run loop today) only produce :class:`FinishedRun` values; the ledger
commits them, one at a time and in order, into the task's model folder::

    models/<task>/
    ├── .lock             held by the training that owns the folder (:meth:`Ledger.open`)
    ├── train.json        the options and pool fingerprint a resume must match, and the classes
    ├── runs.csv          one row per committed run (:class:`RunRecord`): the commit point
    ├── histories.jsonl   per-epoch history of each committed run
    ├── best.keras        the model of the best run by :func:`choose_best` (validation only)
    ├── best.json         what is needed to use best.keras and rebuild its split; names its sha256
    ├── runs/run_<k>.keras  with an ensemble of K: the models of the K best runs so far, no others
    └── .work/            candidate.keras + candidate.json: a better run's model, before promotion

Crash safety: a better run's model and best.json are first written under .work/, then
histories.jsonl and runs.csv are replaced atomically (the commit), and only then are the two
files renamed over best.keras and best.json. A kill -9 at any moment loses at most the run being
committed; a resume finishes a promotion the kill cut in half, or drops a candidate whose run
never committed. A member model (runs/) is written atomically before its run commits, and the
members that fell out of the K best are deleted after it; a resume deletes whatever a kill left
between the two, so runs/ always ends up holding exactly the K best committed runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toonvision.constants import FOLDER_LOCK, SELECT_METRICS
from toonvision.errors import TrainingError, UsageError
from toonvision.fsutil import atomic_write_text, file_sha256, remove_stale_temp_files
from toonvision.layout import BEST_INFO, BEST_MODEL
from toonvision.locks import locked

if TYPE_CHECKING:
    import keras

    from toonvision.split import SplitPlan

logger = logging.getLogger(__name__)

LEDGER = "runs.csv"
HISTORIES = "histories.jsonl"
TRAIN_INFO = "train.json"
WORK = ".work"
_CANDIDATE_MODEL = "candidate.keras"
_CANDIDATE_INFO = "candidate.json"
_MEMBER_MODEL = "member.keras"
RUNS_DIR = "runs"  # the member models of an ensemble: runs/run_<k>.keras
_PROTECTED = (BEST_MODEL, BEST_INFO, LEDGER)  # what a new training must not replace silently
_LEDGER_FILES = (LEDGER, HISTORIES, TRAIN_INFO)  # removed when a training starts again
# Options added after train.json files were first written, with the value those trainings used.
_OLDER_DEFAULTS = {"mixed_precision": False, "resize": "stretch", "fine_tune": 0}
# Options whose absence means a training by a toonvision that kept the last epoch and re-split the
# test split per run: its runs are not comparable with new ones, so a resume is refused outright.
_SELECTION_KEYS = ("select", "class_weight", "patience", "resplit_test")


@dataclass(frozen=True)
class RunRecord:
    """One finished run: a row of runs.csv, with the metrics of the epoch it kept (``best_epoch``, from 1).

    Train, validation loss and accuracy are that epoch's, as fit reports them; macro-F1 comes from
    predictions on the clean validation and test sets. A runs.csv from before the macro-F1 and
    epoch columns reads them as NaN and 0 (unknown).
    """

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
    val_macro_f1: float = math.nan
    test_macro_f1: float = math.nan
    best_epoch: int = 0

    def to_row(self) -> list[str]:
        return [repr(v) if isinstance(v, float) else str(v) for v in (getattr(self, f.name) for f in fields(self))]

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> RunRecord:
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in row and f.name in _LATER_COLUMNS:
                continue  # an older runs.csv: the field's default says "unknown"
            raw = row[f.name]
            values[f.name] = int(raw) if f.type == "int" else float(raw)
        return cls(**values)

    def metric(self, name: str) -> float:
        """A selection metric of this run (one of SELECT_METRICS)."""
        return float(getattr(self, name))


LEDGER_COLUMNS = tuple(f.name for f in fields(RunRecord))
_LATER_COLUMNS = ("val_macro_f1", "test_macro_f1", "best_epoch")


def check_select(select: str) -> str:
    """``select`` if it is a selection metric; a UsageError naming the choices otherwise."""
    if select not in SELECT_METRICS:
        raise UsageError(f"--select must be one of {', '.join(SELECT_METRICS)}, got {select!r}")
    return select


def higher_is_better(select: str) -> bool:
    """Whether a larger value of the selection metric is better (accuracy, macro-F1) or worse (loss)."""
    return check_select(select) != "val_loss"


def rank_runs(runs: Sequence[RunRecord], select: str = "val_loss") -> list[RunRecord]:
    """The runs best first by the validation metric ``select``.

    Ties: lowest validation loss, then highest validation accuracy, then the earlier run. Test
    metrics are deliberately ignored: choosing on test would make the reported test score an
    optimistic, selected-on number. A run whose metric is NaN ranks last.
    """
    check_select(select)

    def finite(value: float, worst: float) -> float:
        return value if math.isfinite(value) else worst

    def key(r: RunRecord) -> tuple[float, float, float, int]:
        loss = finite(r.val_loss, math.inf)
        accuracy = finite(r.val_accuracy, -math.inf)
        main = loss if select == "val_loss" else -finite(r.metric(select), -math.inf)
        return (main, loss, -accuracy, r.run)

    return sorted(runs, key=key)


def choose_best(runs: Sequence[RunRecord], select: str = "val_loss") -> RunRecord:
    """The best run by the validation metric ``select`` (see :func:`rank_runs` for ties)."""
    if not runs:
        raise ValueError("choose_best needs at least one run")
    return rank_runs(runs, select)[0]


def describe(values: Sequence[float | None]) -> dict[str, float]:
    """median, mean, std (population; 0 for one value), min and max of the finite values.

    A diverged run (NaN or None) is left out rather than turning every statistic into NaN or,
    for median, min and max, into a value that depends on the runs' order; NaN when none is finite.
    """
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return {k: math.nan for k in ("median", "mean", "std", "min", "max")}
    return {
        "median": float(np.median(data)), "mean": float(data.mean()), "std": float(data.std()),
        "min": float(data.min()), "max": float(data.max()),
    }


@dataclass(frozen=True)
class FinishedRun:
    """What an executor returns for run ``record.run``: its metrics, history, model and split.

    ``model`` is a Keras model (trained in this process) or the bytes of a saved .keras file
    (trained elsewhere, e.g. in a worker process); the ledger saves it only if the run is the best.
    """

    record: RunRecord
    history: Mapping[str, Sequence[float | None]]
    model: keras.Model | bytes
    plan: SplitPlan

    def __post_init__(self) -> None:
        if not isinstance(self.record, RunRecord):
            raise TypeError(f"FinishedRun.record must be a RunRecord, got {type(self.record).__name__}")


def make_folder(out: Path, option: str) -> None:
    """Create ``out`` and check it takes a file; ``option`` is the command-line option that picks another."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(
            f"{out}: cannot write there ({exc.strerror or exc}); fix its permissions or pass another {option}"
        ) from None


def recorded_config(out: Path) -> dict[str, Any]:
    """The options train.json in ``out`` recorded (empty when there is none)."""
    path = out / TRAIN_INFO
    return dict(_read_json(path).get("config", {})) if path.is_file() else {}


class Ledger:
    """models/<task>/: the runs so far, their histories, and the best model, crash-safe."""

    def __init__(
        self, out: Path, runs: list[RunRecord], histories: list[dict[str, Any]], select: str = "val_loss",
        keep: int = 0,
    ) -> None:
        self.out = out
        self._runs = runs
        self._histories = histories
        self.select = check_select(select)
        self.keep = keep  # the K of an ensemble: member models kept in runs/ (0: none)

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, out: Path, identity: Mapping[str, Any], pool: str, classes: Sequence[str], *,
        resume: bool = False, overwrite: bool = False, derived: Sequence[str] = (), select: str = "val_loss",
        keep: int = 0,
    ) -> Iterator[Ledger]:
        """Hold ``out``'s lock and start a new ledger, or continue one with ``resume``.

        ``identity`` is the options a resume must match (JSON-ready), ``pool`` a fingerprint of
        the crops the runs split, and ``derived`` the other files of a training (plots), removed
        when it starts again. An existing training is never replaced without ``overwrite``.
        ``select`` is the validation metric that ranks runs; with ``keep`` K >= 2 the models of the
        K best runs stay in runs/. When the block ends normally, .work/ is removed.
        """
        check_select(select)
        with locked(out / FOLDER_LOCK, str(out)):
            ledger = cls._start(out, identity, pool, classes, resume, overwrite, derived)
            ledger.select, ledger.keep = select, keep
            if resume:
                ledger._recover_promotion()
                ledger._prune_members()
            yield ledger
            shutil.rmtree(out / WORK, ignore_errors=True)

    @classmethod
    def _start(
        cls, out: Path, identity: Mapping[str, Any], pool: str, classes: Sequence[str],
        resume: bool, overwrite: bool, derived: Sequence[str],
    ) -> Ledger:
        info = {"config": dict(identity), "pool": pool, "classes": list(classes)}
        remove_stale_temp_files(out, "*", recursive=True)  # left by killed writes; only dead writers' files go
        existing = [name for name in _PROTECTED if (out / name).exists()]
        if existing and not (resume or overwrite):
            raise UsageError(
                f"{out} already holds a training ({', '.join(existing)}); pass --resume to continue it "
                "or --overwrite to replace it"
            )
        if resume and (out / TRAIN_INFO).exists():
            _check_same_training(out, _read_json(out / TRAIN_INFO), info)
            runs = _read_ledger(out / LEDGER)
            ledger = cls(out, runs, _read_histories(out / HISTORIES, {r.run for r in runs}))
            logger.info("%s: resuming after %d finished run(s)", out, len(runs))
            return ledger
        if resume and existing:
            raise UsageError(
                f"{out} holds {', '.join(existing)} but no {TRAIN_INFO} to resume from; "
                "pass --overwrite to start again"
            )
        # A fresh start. The previous best.keras/best.json stay until the first new run replaces them.
        for name in (*_LEDGER_FILES, *derived):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / WORK, ignore_errors=True)
        shutil.rmtree(out / RUNS_DIR, ignore_errors=True)
        atomic_write_text(out / TRAIN_INFO, json.dumps(info, indent=2) + "\n")
        return cls(out, [], [])

    @property
    def done(self) -> tuple[RunRecord, ...]:
        """The committed runs, in run order."""
        return tuple(self._runs)

    @property
    def next_run(self) -> int:
        """The number of the run to commit next."""
        return len(self._runs)

    @property
    def histories(self) -> tuple[dict[str, Any], ...]:
        """One ``{"run", "seed", "history"}`` entry per committed run, as histories.jsonl holds them."""
        return tuple(self._histories)

    @property
    def best(self) -> RunRecord | None:
        """The best committed run by :func:`choose_best` on ``select``; None before the first commit."""
        return choose_best(self._runs, self.select) if self._runs else None

    @property
    def ranked(self) -> list[RunRecord]:
        """The committed runs, best first by ``select``."""
        return rank_runs(self._runs, self.select)

    def member_path(self, run: int) -> Path:
        """Where the model of run ``run`` is kept while it is among the ``keep`` best: runs/run_<k>.keras."""
        return self.out / RUNS_DIR / f"run_{run}.keras"

    @property
    def members(self) -> list[RunRecord]:
        """The runs whose models runs/ keeps: the ``keep`` best committed runs, best first."""
        return self.ranked[: self.keep] if self.keep >= 2 else []

    def best_info(self) -> dict[str, Any]:
        """best.json as it is on disk."""
        return _read_json(self.out / BEST_INFO)

    def commit(self, run: FinishedRun, info: Mapping[str, Any]) -> bool:
        """Record a finished run; if it beats the best, make it best.keras with ``info`` as best.json.

        Order: candidate model saved under .work/, then histories, then runs.csv (the commit
        point), then the promotion. A kill before the commit loses only this run. The ledger
        adds the model's sha256 to ``info``. Returns whether the run became the best.
        """
        record = run.record
        if record.run != self.next_run:
            raise ValueError(f"run {record.run} committed where run {self.next_run} comes next")
        if info.get("run") != record.run:  # a resume matches a cut promotion to its run by this
            raise ValueError(f"best.json of run {record.run} names run {info.get('run')!r}")
        runs = [*self._runs, record]
        is_best = choose_best(runs, self.select) is record
        work = self.out / WORK
        if self.keep >= 2 and record in rank_runs(runs, self.select)[: self.keep]:
            work.mkdir(exist_ok=True)
            save_model(run.model, work / _MEMBER_MODEL)
            self.member_path(record.run).parent.mkdir(exist_ok=True)
            os.replace(work / _MEMBER_MODEL, self.member_path(record.run))
        if is_best:
            work.mkdir(exist_ok=True)
            save_model(run.model, work / _CANDIDATE_MODEL)
            info = {**info, "model_sha256": file_sha256(work / _CANDIDATE_MODEL)}  # ties best.json to its model
            atomic_write_text(work / _CANDIDATE_INFO, json.dumps(info, indent=2) + "\n")
        histories = [*self._histories, {"run": record.run, "seed": record.seed, "history": dict(run.history)}]
        atomic_write_text(self.out / HISTORIES, "".join(json.dumps(h) + "\n" for h in histories))
        atomic_write_text(self.out / LEDGER, _format_ledger(runs))
        self._runs, self._histories = runs, histories
        if is_best:
            self._promote()
        self._prune_members()
        return is_best

    def _prune_members(self) -> None:
        """Delete the member models of runs that are not (or no longer) among the ``keep`` best."""
        folder = self.out / RUNS_DIR
        if not folder.is_dir():
            return
        wanted = {self.member_path(r.run).name for r in self.members}
        for path in folder.iterdir():
            if path.name not in wanted:
                path.unlink(missing_ok=True)

    def _promote(self) -> None:
        work = self.out / WORK
        if (work / _CANDIDATE_MODEL).exists():
            os.replace(work / _CANDIDATE_MODEL, self.out / BEST_MODEL)
        os.replace(work / _CANDIDATE_INFO, self.out / BEST_INFO)

    def _recover_promotion(self) -> None:
        """Finish a promotion a kill interrupted, or drop a candidate whose run never committed."""
        candidate = self.out / WORK / _CANDIDATE_INFO
        if candidate.exists() and self._runs:
            run = _read_json(candidate).get("run")
            if run == choose_best(self._runs, self.select).run and run in {r.run for r in self._runs}:
                logger.warning("%s: finishing the promotion of run %s interrupted by a kill", self.out, run)
                self._promote()
        shutil.rmtree(self.out / WORK, ignore_errors=True)


def _check_same_training(out: Path, previous: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    old, new = {**_OLDER_DEFAULTS, **previous.get("config", {})}, current["config"]
    if any(key in new for key in _SELECTION_KEYS) and not any(key in old for key in _SELECTION_KEYS):
        raise UsageError(
            f"{out} was trained by an older toonvision that kept each run's last epoch and re-split the test "
            "split per run, so its runs cannot be continued or compared with new ones; pass --overwrite to "
            "start again"
        )
    differ = [f"{key}={old.get(key)!r} (now {value!r})" for key, value in new.items() if old.get(key) != value]
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


def save_model(model: keras.Model | bytes, path: Path) -> None:
    """Write ``model`` (a Keras model or a saved .keras file's bytes) to ``path`` and fsync it."""
    try:
        if isinstance(model, bytes):
            path.write_bytes(model)
        else:
            model.save(path)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise TrainingError(
            f"{path}: cannot save the model ({exc.strerror or exc}); free space or fix permissions"
        ) from None


__all__ = [
    "HISTORIES", "LEDGER", "LEDGER_COLUMNS", "RUNS_DIR", "SELECT_METRICS", "TRAIN_INFO", "WORK", "FinishedRun",
    "Ledger", "RunRecord", "check_select", "choose_best", "describe", "higher_is_better", "make_folder",
    "rank_runs", "recorded_config", "save_model",
]
