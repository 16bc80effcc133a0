"""The crop pool's manifest: one row per crop, the pool's source of truth.

``img/unsorted/manifest.csv`` columns: crop (path relative to the pool), label, group,
index, source (screenshot path relative to the screenshots root), xmin, ymin, xmax, ymax,
width, height, source_sha256 (the screenshot file's bytes), crop_sha256, then
pixels_sha256 (the screenshot's decoded pixels), source_phash and crop_phash (perceptual
hashes, ``toonvision.dedup``), status (``active`` or ``retired``) and replaced_by. The last five
are optional when reading: a manifest written before them loads with empty hashes (the next
``extract`` fills them in) and every crop active. Rows are never removed, so per-label indices
only grow even after crops are deleted or retired (a retired crop's object changed or left its
XML; ``replaced_by`` names the crop that took its place). It is always replaced whole, atomically.
:func:`load_pool` is how split, train, compare and report read the pool: the manifest's
active crops whose files are still there.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from toonvision.errors import PoolError
from toonvision.fsutil import atomic_write_text
from toonvision.layout import Layout

logger = logging.getLogger(__name__)

COLUMNS = (
    "crop", "label", "group", "index", "source",
    "xmin", "ymin", "xmax", "ymax", "width", "height",
    "source_sha256", "crop_sha256",
    "pixels_sha256", "source_phash", "crop_phash", "status", "replaced_by",
)
REQUIRED_COLUMNS = COLUMNS[:13]  # a manifest of an older extract has only these
ACTIVE = "active"
RETIRED = "retired"
STATUSES = (ACTIVE, RETIRED)
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
    pixels_sha256: str = ""
    source_phash: str = ""
    crop_phash: str = ""
    status: str = ACTIVE
    replaced_by: str = ""

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    @property
    def dedup_key(self) -> tuple[str, int, int, int, int]:
        """Same screenshot content and same box: the same object (its label may still differ)."""
        return (self.source_sha256, *self.box)

    @property
    def active(self) -> bool:
        """False once re-extraction retired it (its object changed or left the XML)."""
        return self.status != RETIRED


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
    missing = set(REQUIRED_COLUMNS) - set(header)
    if missing:
        raise PoolError(
            f"{path}: manifest lacks columns {sorted(missing)}; "
            "move it aside and run `toonvision extract` again"
        )
    positions = [header.index(name) if name in header else -1 for name in COLUMNS]
    is_int = [name in _INT_COLUMNS for name in COLUMNS]
    defaults = [f.default for f in fields(CropRecord)]
    check_status = "status" in header
    records = []
    for line, row in enumerate(rows, start=2):
        try:
            values = [
                defaults[k] if i < 0 else int(row[i]) if numeric else row[i]
                for k, (i, numeric) in enumerate(zip(positions, is_int, strict=True))
            ]
        except (IndexError, ValueError):
            raise PoolError(
                f"{path}: line {line} is damaged; "
                "move the manifest aside and run `toonvision extract` again"
            ) from None
        record = CropRecord(*values)
        if check_status and record.status not in STATUSES:
            raise PoolError(
                f"{path}: line {line} has status {record.status!r}, not one of {', '.join(STATUSES)}; "
                "fix that row or move the manifest aside and run `toonvision extract` again"
            )
        records.append(record)
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


_F = TypeVar("_F", bound=Callable[..., Any])


def without_gc(function: _F) -> _F:
    """Pause Python's cycle collector while ``function`` makes its ~10^5 acyclic objects.

    Each of its passes walks the whole heap; at 100,000 crops they cost a fifth to a third of
    the time (bench/bench_split.py). Reference counting still frees everything as usual.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]


def is_safe_relative(path: str) -> bool:
    """A relative POSIX path that stays below its root (no '..', no absolute, no empty parts)."""
    if not path or "\\" in path or "\x00" in path or path.startswith("/"):
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts)


@without_gc
def load_pool(layout: Layout) -> tuple[list[CropRecord], tuple[str, ...]]:
    """The manifest's active crops whose files are in the pool, and the active crops listed but gone.

    Crops deleted by hand (a bad crop removed from ``img/unsorted``) stay in the manifest,
    whose rows are never removed; they are left out of splits and reports. Retired crops
    (their object was relabelled or removed in its XML, see ``extract``) are left out silently.
    """
    if not layout.manifest.is_file():
        raise PoolError(f"no crop pool at {layout.pool}: run `toonvision extract` first")
    records = load_manifest(layout.manifest)
    if not records:
        raise PoolError(f"the crop pool {layout.pool} is empty: run `toonvision extract` first")
    present: dict[str, set[str]] = {}
    kept, missing = [], []
    for record in records:
        if not record.active:
            continue
        if not is_safe_relative(record.crop):
            raise PoolError(
                f"{layout.manifest}: crop path {record.crop!r} points outside the pool; fix that row "
                "or move the manifest aside and run `toonvision extract` again"
            )
        folder, _, name = record.crop.rpartition("/")
        if folder not in present:
            present[folder] = _file_names(layout.pool / folder)
        (kept if name in present[folder] else missing).append(record)
    if missing:
        logger.warning(
            "%d crop%s listed in %s %s no longer in the pool (deleted?), e.g. %s; left out",
            len(missing), "" if len(missing) == 1 else "s", layout.manifest,
            "is" if len(missing) == 1 else "are", missing[0].crop,
        )
    if not kept:
        raise PoolError(f"none of the crops listed in {layout.manifest} is in the pool; "
                        "run `toonvision extract` again")
    return kept, tuple(r.crop for r in missing)


def _file_names(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()
