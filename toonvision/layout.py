"""Where every file lives, derived from two roots (``--img-dir`` and ``--models-dir``).

    img/
    ├── raw/screenshots/   labelImg screenshots with their VOC XML (input; any depth)
    ├── raw/processed/     screenshots moved here by ``extract --move``
    ├── unsorted/          the crop pool: <group>/<label>_<index>.png + manifest.csv
    └── data/<task>/       splits: {train,validate,test}/<class>/ + split.csv
    models/<task>/         best.keras, best.json, runs.csv, histories.jsonl, plots
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validate", "test")


@dataclass(frozen=True)
class Layout:
    """The project's folder layout; every stage receives one instead of reading globals."""

    img_dir: Path
    models_dir: Path

    @classmethod
    def from_dirs(cls, img_dir: str | Path = "img", models_dir: str | Path = "models") -> "Layout":
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
