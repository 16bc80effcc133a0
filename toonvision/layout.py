"""Where every file lives, derived from two roots (``--img-dir`` and ``--models-dir``).

    img/
    ├── raw/screenshots/   labelImg screenshots with their VOC XML (input; any depth)
    ├── raw/processed/     screenshots moved here by ``extract --move``
    ├── unsorted/          the crop pool: <group>/<label>_<index>.png + manifest.csv
    ├── data/<task>/       splits: {train,validate,test}/<class>/ + split.csv
    └── reports/<task>/    balance-report tables and figures (reports/pool/ without a task)
    models/<task>/         best.keras, best.json, runs.csv, histories.jsonl, plots, ensemble.keras/.json
    ├── evaluation/        evaluate on the test split (evaluation_<split>/ for the others)
    ├── compare/           compare's runs, statistics and figures
    └── tune/              tune's trials, best_hparams.json and keras-tuner project
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toonvision.constants import DEFAULT_EVALUATION_SPLIT

SPLITS = ("train", "validate", "test")
DEFAULT_IMG_DIR = "img"
DEFAULT_MODELS_DIR = "models"
BEST_MODEL = "best.keras"  # the chosen run's model in models/<task>/
BEST_INFO = "best.json"  # its classes, image size, split and metrics, beside it
ENSEMBLE_MODEL = "ensemble.keras"  # train --ensemble K: the mean of the K best runs' outputs, one model
ENSEMBLE_INFO = "ensemble.json"  # its classes, members, the fixed test split and its metrics (best.json's format)
EVALUATION_DIR = "evaluation"
COMPARE_DIR = "compare"
TUNE_DIR = "tune"
EXPLAIN_DIR = "explain"
REPORTS_DIR = "reports"
POOL_REPORT = "pool"  # the report folder of the whole pool (no task)


def evaluation_dir_name(split: str) -> str:
    """``evaluation`` for the test split, ``evaluation_<split>`` for the others."""
    return EVALUATION_DIR if split == "test" else f"{EVALUATION_DIR}_{split}"


@dataclass(frozen=True)
class Layout:
    """The project's folder layout; every stage receives one instead of reading globals."""

    img_dir: Path
    models_dir: Path

    @classmethod
    def from_dirs(cls, img_dir: str | Path = DEFAULT_IMG_DIR, models_dir: str | Path = DEFAULT_MODELS_DIR) -> Layout:
        return cls(Path(img_dir).absolute(), Path(models_dir).absolute())

    @property
    def screenshots(self) -> Path:
        return self.img_dir / "raw" / "screenshots"

    @property
    def processed(self) -> Path:
        return self.img_dir / "raw" / "processed"

    @property
    def pool(self) -> Path:
        return self.img_dir / "unsorted"

    @property
    def manifest(self) -> Path:
        return self.pool / "manifest.csv"

    @property
    def staging(self) -> Path:
        """Crops written but not yet committed to the manifest (see ``extract``)."""
        return self.pool / ".staging"

    @property
    def lock_file(self) -> Path:
        return self.img_dir / ".toonvision.lock"

    @property
    def data(self) -> Path:
        return self.img_dir / "data"

    @property
    def cache(self) -> Path:
        """Decoded-crop caches, keyed by content; safe to delete at any time."""
        return self.img_dir / ".cache"

    def task_data(self, task: str) -> Path:
        return self.data / task

    def split_dir(self, task: str, split: str) -> Path:
        return self.data / task / split

    def task_models(self, task: str) -> Path:
        return self.models_dir / task

    def best_model(self, task: str) -> Path:
        return self.task_models(task) / BEST_MODEL

    def best_info(self, task: str) -> Path:
        return self.task_models(task) / BEST_INFO

    def evaluation_dir(self, task: str, split: str = DEFAULT_EVALUATION_SPLIT) -> Path:
        """Where ``evaluate`` writes for the task's model: ``models/<task>/evaluation[_<split>]/``."""
        return self.task_models(task) / evaluation_dir_name(split)

    def compare_dir(self, task: str) -> Path:
        return self.task_models(task) / COMPARE_DIR

    def tune_dir(self, task: str) -> Path:
        return self.task_models(task) / TUNE_DIR

    @property
    def reports(self) -> Path:
        return self.img_dir / REPORTS_DIR

    def report_dir(self, task: str | None) -> Path:
        """``img/reports/<task>/``, or ``img/reports/pool/`` without a task: beside the data, outside splits."""
        return self.reports / (task if task is not None else POOL_REPORT)
