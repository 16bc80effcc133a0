"""The crop pool's manifest: one row per crop, the pool's source of truth.

``img/unsorted/manifest.csv`` columns: crop (path relative to the pool), label, group,
index, source (screenshot path relative to the screenshots root), xmin, ymin, xmax, ymax,
width, height, source_sha256, crop_sha256. Rows are never removed, so per-label indices
only grow even after crops are deleted. It is always replaced whole, atomically.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields
from pathlib import Path

from toonvision.errors import PoolError
from toonvision.fsutil import atomic_write_text

COLUMNS = (
    "crop", "label", "group", "index", "source",
    "xmin", "ymin", "xmax", "ymax", "width", "height",
    "source_sha256", "crop_sha256",
)
_INT_COLUMNS = {"index", "xmin", "ymin", "xmax", "ymax", "width", "height"}


@dataclass(frozen=True)
class CropRecord:
    """One crop of the pool: where it is, what it shows, and where it came from."""

    crop: str
    label: str
    group: str
    index: int
    source: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    width: int
    height: int
    source_sha256: str
    crop_sha256: str

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    @property
    def dedup_key(self) -> tuple[str, int, int, int, int]:
        """Same screenshot content and same box: the same crop."""
        return (self.source_sha256, *self.box)


def load_manifest(path: Path) -> list[CropRecord]:
    """Read the manifest; a missing file is an empty pool."""
    path = Path(path)
    if not path.exists():
        return []
    return parse_manifest(path.read_text(encoding="utf-8"), path)


def parse_manifest(text: str, path: Path | str = "manifest.csv") -> list[CropRecord]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        return []
    missing = set(COLUMNS) - set(header)
    if missing:
        raise PoolError(
            f"{path}: manifest lacks columns {sorted(missing)}; "
            "move it aside and run `toonvision extract` again"
        )
    positions = [header.index(name) for name in COLUMNS]
    is_int = [name in _INT_COLUMNS for name in COLUMNS]
    records = []
    for line, row in enumerate(rows, start=2):
        try:
            values = [int(row[i]) if numeric else row[i] for i, numeric in zip(positions, is_int)]
        except (IndexError, ValueError):
            raise PoolError(
                f"{path}: line {line} is damaged; "
                "move the manifest aside and run `toonvision extract` again"
            ) from None
        records.append(CropRecord(*values))
    return records


def format_manifest(records: list[CropRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in records:
        writer.writerow([getattr(record, f.name) for f in fields(CropRecord)])
    return out.getvalue()


def save_manifest(path: Path, records: list[CropRecord]) -> None:
    """Replace the manifest atomically."""
    atomic_write_text(Path(path), format_manifest(records))
