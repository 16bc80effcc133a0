"""Crop every labelled object out of its screenshot into the pool.

    img/raw/screenshots/            (or --screenshots DIR; any depth)
    ├── street/shot1.png            image, opened by content whatever its extension
    └── street/shot1.xml            labelImg VOC XML, paired by stem in the same folder
                 │
                 ▼
    img/unsorted/
    ├── manifest.csv                one row per crop (toonvision.manifest)
    ├── cog/cog_bb_flunky_0.png     <group>/<label>_<index>.png, lossless
    └── toon/toon_cat_0.png

Same object, duplicates, conflicts: an object is known by its screenshot (path under the
screenshots root and content: file bytes or decoded pixels), its box and its label; one already
in the pool is not cropped again. A screenshot with the same content as another one in the pool
under another name is a duplicate: reported (a warning), its objects kept, and grouped with it
by ``split`` (when the other name is no longer there, neither read now nor in processed/, it is
taken as the same screenshot renamed: its crops are this file's, so nothing is cropped again,
and deleting a copy then re-running extract retires the copy's crops). An object whose label
differs from that of a pooled object at the same content and box, of another file or of the
same XML, is a **label conflict**: both crops are kept and the conflict is an error naming both
files (exit status 1; with ``--move`` the screenshot stays for fixing). The pool follows the
XML: when a screenshot (same path under the screenshots root, same content) is extracted again,
its crops whose object was relabelled, moved or deleted in the XML are retired in the manifest
(``status``, ``replaced_by``; the file stays on disk) and the new objects are cropped with fresh
indices.

Crash safety: crops are written to ``unsorted/.staging/`` first, then the manifest is
replaced atomically (new rows, retired rows and filled-in hashes in the same write), then the
staged crops are renamed into place. A kill before the manifest commit leaves staged files that
the next run deletes and redoes; a kill after it leaves staged files that the next run renames
into place. Either way the pool ends as an uninterrupted run would leave it. Indices come from
the manifest, whose rows are never removed, so they only grow.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from toonvision.constants import (
    MANIFEST_COMMIT_EVERY,
    PARALLEL_MIN_SCREENSHOTS,
    PIL_IMAGE_SUFFIXES,
    PNG_COMPRESS_LEVEL,
    XML_SUFFIX,
)
from toonvision.dedup import phash
from toonvision.errors import (
    AnnotationError,
    ImageError,
    ToonVisionError,
    UsageError,
    write_error,
)
from toonvision.fsutil import die_with_parent, remove_stale_temp_files
from toonvision.images import decode_image, read_image_bytes
from toonvision.labels import group_of, normalise_label, read_classes_file
from toonvision.layout import Layout
from toonvision.locks import locked
from toonvision.manifest import RETIRED, CropRecord, load_manifest, save_manifest
from toonvision.problems import (
    Problem,
    Severity,
    has_errors,
    printable_path,
    without_source,
)
from toonvision.voc import WarningKind, load_annotation

logger = logging.getLogger(__name__)

WARNING = Severity.WARNING
_PER_OBJECT = frozenset({WarningKind.NO_BOX, WarningKind.BAD_BOX})  # _cut_object reports these, per object
_KEPT = "the pool is intact, with every crop committed before the failure; run the command again to add the rest"


@dataclass(frozen=True)
class Screenshot:
    """An image and its XML, paired by stem; ``relative`` is the image's path under the root."""

    image: Path
    xml: Path
    relative: str


@dataclass(frozen=True)
class Discovery:
    screenshots: tuple[Screenshot, ...]
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class Crop:
    """One object cut out of a screenshot, encoded as PNG (``png`` is None when only checking)."""

    obj: int
    label: str
    box: tuple[int, int, int, int]
    png: bytes | None
    sha256: str
    phash: str = ""

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


@dataclass(frozen=True)
class ScreenshotCrops:
    """Everything read from one screenshot: its crops and its problems."""

    screenshot: Screenshot
    source_sha256: str
    crops: tuple[Crop, ...]
    problems: tuple[Problem, ...]
    pixels_sha256: str = ""  # of the decoded pixels: equal for a screenshot saved again without change
    phash: str = ""  # perceptual hash (toonvision.dedup), for near-duplicates

    @property
    def has_errors(self) -> bool:
        return has_errors(self.problems)


@dataclass(frozen=True)
class ExtractOptions:
    screenshots: Path | None = None
    classes: Path | None = None
    strict: bool = False
    move: bool = False
    workers: int | None = None  # None: both cores when there are many screenshots
    commit_every: int = MANIFEST_COMMIT_EVERY  # crops staged between manifest commits


@dataclass(frozen=True)
class ExtractResult:
    screenshots: int
    crops_written: int
    already_in_pool: int
    moved: int
    pool_size: int
    pool: Path
    problems: tuple[Problem, ...] = field(default=())
    retired: int = 0  # crops whose object was relabelled, moved or deleted in its XML
    conflicts: int = 0  # objects labelled otherwise than the pooled object at the same pixels and box
    duplicate_screenshots: int = 0  # screenshots with the content of another one in the pool

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.is_error)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is WARNING)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def skipped_by_reason(self) -> Counter:
        return Counter(p.reason for p in self.problems if p.obj is not None and p.reason)

    def summary(self) -> str:
        lines = [
            f"{self.screenshots} screenshots read, {self.crops_written} crops written, "
            f"{self.already_in_pool} already in the pool"
            + (f", {self.moved} screenshots moved to processed/" if self.moved else ""),
        ]
        if self.retired:
            lines.append(f"{self.retired} crops retired: their object was relabelled, moved or deleted in the XML "
                         "(manifest.csv status 'retired'; new crops were added for the new labels)")
        if self.conflicts:
            lines.append(f"{self.conflicts} label conflicts: identical pixels and box labelled differently in two "
                         "files; both crops kept: fix the wrong label in labelImg and run extract again")
        if self.duplicate_screenshots:
            lines.append(f"{self.duplicate_screenshots} screenshots identical to another one in the pool "
                         "(kept in one group by split; delete one if it is a copy)")
        skipped = self.skipped_by_reason()
        if skipped:
            lines.append("objects skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
        lines.append(f"{len(self.errors)} errors, {len(self.warnings)} warnings")
        lines.append(f"pool: {self.pool} ({self.pool_size} crops in the manifest)")
        return "\n".join(lines)


@dataclass(frozen=True)
class ValidationResult:
    screenshots: int
    objects: int
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.is_error)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def summary(self) -> str:
        warnings = len(self.problems) - len(self.errors)
        return (
            f"{self.screenshots} screenshots, {self.objects} objects checked: "
            f"{len(self.errors)} errors, {warnings} warnings"
        )


def extract(layout: Layout, options: ExtractOptions = ExtractOptions(), progress: bool = False) -> ExtractResult:
    """Crop every object of every screenshot into the pool; safe to kill and re-run."""
    root = _screenshots_root(layout, options)
    known_labels = read_classes_file(options.classes) if options.classes else None
    if options.strict and known_labels is None:
        raise UsageError("--strict needs --classes FILE (labelImg's predefined_classes.txt)")
    with locked(layout.lock_file, str(layout.img_dir)):
        try:
            if options.move:
                _finish_interrupted_moves(root, layout.processed)
            found = discover(root, exclude=(layout.pool, layout.data, layout.processed))
            if options.strict:
                _refuse_unknown_labels(found.screenshots, known_labels)
            return _extract_locked(layout, root, found, known_labels, options, list(found.problems), progress)
        except OSError as exc:
            _tidy_staging(layout)
            raise write_error(Path(exc.filename or layout.pool), exc, _KEPT) from exc
        except BaseException:
            _tidy_staging(layout)
            raise


def validate(root: Path, classes: Path | None = None, progress: bool = False) -> ValidationResult:
    """Run extract's checks on every screenshot and XML without writing anything."""
    known_labels = read_classes_file(classes) if classes else None
    found = discover(Path(root))
    problems = list(found.problems)
    objects = 0
    for result in _read_all(found.screenshots, known_labels, encode=False, workers=None, progress=progress):
        problems.extend(result.problems)
        objects += len(result.crops) + sum(1 for p in result.problems if p.obj is not None and p.reason)
    return ValidationResult(len(found.screenshots), objects, tuple(problems))


def discover(root: Path, exclude: Iterable[Path] = ()) -> Discovery:
    """Pair images and XML files by stem, folder by folder; report the unpaired.

    Folders in ``exclude`` (the pool, splits, processed/) are never read as screenshots,
    even when the screenshots root contains them.
    """
    root = Path(root)
    excluded = {Path(p).resolve() for p in exclude}
    if not root.is_dir():
        raise UsageError(
            f"{root}: no such folder; put labelImg screenshots and their XML there "
            "or pass --screenshots DIR"
        )
    real_root = root.resolve()
    screenshots: list[Screenshot] = []
    problems: list[Problem] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        folder_path = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (folder_path / d).resolve() not in excluded)
        for name in dirs:
            if (folder_path / name).is_symlink():
                problems.append(Problem(
                    str(folder_path / name), "is a symbolic link to a folder; not followed", severity=WARNING
                ))
            elif Path(name).suffix.lower() in PIL_IMAGE_SUFFIXES:
                problems.append(Problem(
                    str(folder_path / name), "is a folder named like an image; skipped", severity=WARNING
                ))
            elif not _is_utf8(name):
                problems.append(Problem(printable_path(folder_path / name), _NOT_UTF8, reason="bad name"))
        dirs[:] = [d for d in dirs if _is_utf8(d)]
        images: dict[str, list[Path]] = {}
        xmls: dict[str, Path] = {}
        for name in sorted(files):
            path = folder_path / name
            suffix = path.suffix.lower()
            if suffix not in PIL_IMAGE_SUFFIXES and suffix != XML_SUFFIX:
                continue
            if not _is_utf8(name):
                problems.append(Problem(printable_path(path), _NOT_UTF8, reason="bad name"))
                continue
            if path.is_symlink() and not _inside(path, real_root):
                problems.append(Problem(
                    str(path), "is a symbolic link to a file outside the screenshots folder; not followed",
                    severity=WARNING,
                ))
                continue
            if suffix == XML_SUFFIX:
                xmls[path.stem] = path
            else:
                images.setdefault(path.stem, []).append(path)
        for stem in sorted(set(images) | set(xmls)):
            candidates, xml = images.get(stem, []), xmls.get(stem)
            if xml is None:
                for image in candidates:
                    problems.append(Problem(
                        str(image), "has no XML beside it; label it in labelImg or remove it", severity=WARNING,
                        reason="no xml",
                    ))
            elif not candidates:
                problems.append(Problem(
                    str(xml), f"has no image named {stem}.<png|jpg|...> beside it", reason="no image"
                ))
            elif len(candidates) > 1:
                names = ", ".join(p.name for p in candidates)
                problems.append(Problem(
                    str(xml), f"matches several images ({names}); keep one of them", reason="ambiguous image"
                ))
            else:
                image = candidates[0]
                screenshots.append(Screenshot(image, xml, image.relative_to(root).as_posix()))
    return Discovery(tuple(screenshots), tuple(problems))


def read_screenshot(
    screenshot: Screenshot, known_labels: frozenset[str] | None = None, encode: bool = True
) -> ScreenshotCrops:
    """Read one screenshot and its XML, and cut out every usable object (pure but for reading)."""
    xml, image_path = str(screenshot.xml), str(screenshot.image)
    problems: list[Problem] = []
    try:
        parsed = load_annotation(screenshot.xml)
    except AnnotationError as exc:
        return ScreenshotCrops(screenshot, "", (), (Problem(xml, without_source(exc, xml), reason="bad xml"),))
    annotation = parsed.annotation
    for warning in parsed.warnings:
        if warning.kind not in _PER_OBJECT:
            problems.append(Problem(xml, without_source(warning.message, xml), severity=WARNING))
    try:
        data = read_image_bytes(screenshot.image)
        image = decode_image(data, image_path)
    except ImageError as exc:
        problems.append(Problem(image_path, without_source(exc, image_path), reason="bad image"))
        return ScreenshotCrops(screenshot, "", (), tuple(problems))
    width, height = image.size
    declared = annotation.size
    if declared is not None and (declared.width, declared.height) != (width, height):
        problems.append(Problem(
            xml, f"<size> says {declared.width}x{declared.height} but the image is {width}x{height}; "
            "using the image's size", severity=WARNING))
    crops = []
    for number, obj in enumerate(annotation.objects):
        crop = _cut_object(image, number, obj, xml, known_labels, encode, problems)
        if crop is not None:
            crops.append(crop)
    pixels = phash_ = ""
    if encode:
        pixels = hashlib.sha256(f"{image.mode} {width}x{height} ".encode() + image.tobytes()).hexdigest()
        phash_ = phash(image)
    return ScreenshotCrops(screenshot, hashlib.sha256(data).hexdigest(), tuple(crops), tuple(problems),
                           pixels, phash_)


def _cut_object(image, number, obj, xml, known_labels, encode, problems) -> Crop | None:
    try:
        label = normalise_label(obj.name)
    except ValueError as exc:
        problems.append(Problem(xml, f"{exc}", number, reason="bad label"))
        return None
    if known_labels is not None and label not in known_labels:
        problems.append(Problem(xml, f"label {label!r} is not in the classes file", number, WARNING, "unknown label"))
    if obj.box is None:
        problems.append(Problem(xml, f"{label}: has no usable <bndbox>; skipped", number, WARNING, "no box"))
        return None
    width, height = image.size
    left, top, right, bottom = obj.box.rounded()
    clipped = (max(0, left), max(0, top), min(width, right), min(height, bottom))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        problems.append(Problem(xml, f"{label}: box {(left, top, right, bottom)} has no area inside the "
                                f"{width}x{height} image; skipped", number, WARNING, "zero area"))
        return None
    if clipped != (left, top, right, bottom):
        problems.append(Problem(xml, f"{label}: box {(left, top, right, bottom)} spills outside the "
                                f"{width}x{height} image; clipped to {clipped}", number, WARNING))
    if not encode:
        return Crop(number, label, clipped, None, "")
    buffer = io.BytesIO()
    region = image.crop(clipped)
    region.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    png = buffer.getvalue()
    return Crop(number, label, clipped, png, hashlib.sha256(png).hexdigest(), phash(region))


def _extract_locked(layout, root, found, known_labels, options, problems, progress) -> ExtractResult:
    _recover_staging(layout)
    records = load_manifest(layout.manifest)
    index = _PoolIndex(records)
    next_index = _next_indices(records, layout.pool)
    pending: list[CropRecord] = []
    moves: list[Screenshot] = []
    written = duplicates = moved = 0
    counts = Counter()
    conflict_pairs: set[frozenset[str]] = set()
    discovered = {screenshot.relative for screenshot in found.screenshots}
    dirty = False  # rows changed in place (retired, hashes filled in): the manifest must be saved
    folders = _Folders()

    def commit() -> None:
        nonlocal written, moved, dirty
        if pending or dirty:
            save_manifest(layout.manifest, records)
            dirty = False
        if pending:
            for record in pending:
                os.replace(layout.staging / record.crop, folders.ready(layout.pool / record.crop))
            written += len(pending)
            pending.clear()
        for screenshot in moves:
            moved += _move_to_processed(screenshot, root, layout.processed, problems)
        moves.clear()

    results = _read_all(found.screenshots, known_labels, encode=True, workers=options.workers, progress=progress)
    for result in results:
        problems.extend(result.problems)
        if not result.source_sha256:  # the XML or the image could not be read: nothing to compare
            continue
        dirty |= index.fill_hashes(result)
        here, xml = result.screenshot.relative, str(result.screenshot.xml)
        twins = index.other_sources(result)
        present = [t for t in twins if _still_there(t, discovered, layout.processed)]
        mine = {here, *(t for t in twins if t not in present)}  # a twin that is gone: this file, renamed
        if present:
            counts["duplicate screenshots"] += 1
            problems.append(Problem(
                str(result.screenshot.image), f"has the same pixels as {present[0]}, already in the pool"
                + (f" (and {len(present) - 1} more)" if len(present) > 1 else "")
                + "; the objects of both are kept and split keeps them in one group: delete one if it is a copy",
                severity=WARNING))
        if len(mine) > 1:
            logger.info("%s: the same pixels as %s, which is gone: taken as that screenshot under a new name",
                        result.screenshot.image, ", ".join(sorted(mine - {here})))
        matched: dict[int, int] = {}  # pool row -> the object of this XML that is it
        replacement: dict[tuple[int, int, int, int], str] = {}  # box -> the crop added there in this run
        for crop in result.crops:
            own = [k for k in index.at(result, crop.box)
                   if records[k].label == crop.label and records[k].source in mine]
            if own:  # already in the pool, from this screenshot (or from it under its old name)
                k = min(own, key=lambda k: (records[k].source != here, k))
                if k in matched:
                    problems.append(Problem(xml, f"{crop.label}: repeats object {matched[k]} (same box and label); "
                                            "cropped once", crop.obj, WARNING))
                matched.setdefault(k, crop.obj)
                duplicates += 1
                continue
            record = _stage_crop(layout, result, crop, next_index, folders)
            records.append(record)
            pending.append(record)
            index.add(len(records) - 1)
            matched[len(records) - 1] = crop.obj
            replacement[crop.box] = record.crop
        conflicted = _report_conflicts(result, records, index, matched, mine, conflict_pairs, problems)
        for k in index.rows_of(result, mine):
            if k not in matched:  # its object was relabelled, moved or deleted in the XML
                old = records[k]
                records[k] = replace(old, status=RETIRED, replaced_by=replacement.get(old.box, ""))
                index.remove(k)
                counts["retired"] += 1
                dirty = True
                logger.info("%s: %s retired (%s)", xml, old.crop, f"replaced by {replacement[old.box]}"
                            if old.box in replacement else "its object is no longer in the XML")
        if options.move and not result.has_errors and not conflicted:
            moves.append(result.screenshot)
        if len(pending) >= options.commit_every:
            commit()
    commit()
    _remove_empty_dirs(layout.staging)
    return ExtractResult(
        screenshots=len(found.screenshots), crops_written=written, already_in_pool=duplicates,
        moved=moved, pool_size=len(records), pool=layout.pool, problems=tuple(problems),
        retired=counts["retired"], conflicts=len(conflict_pairs), duplicate_screenshots=counts["duplicate screenshots"],
    )


def _report_conflicts(result, records, index, matched, mine, conflict_pairs, problems) -> bool:
    """A Problem (error) for each object whose box in identical pixels has another label in the pool.

    Rows of this screenshot that no object matched are about to be retired (a corrected label),
    so they are no conflict. Each pair of crops is reported once per run; True if any was found.
    """
    here, xml = result.screenshot.relative, str(result.screenshot.xml)
    found = False
    for crop in result.crops:
        rows = index.at(result, crop.box)
        k = next((r for r in rows if r in matched and records[r].label == crop.label), None)  # this object's row
        for other in rows:
            o = records[other]
            if o.label == crop.label or (o.source in mine and other not in matched):
                continue
            found = True
            pair = frozenset((records[k].crop if k is not None else f"{here}#{crop.obj}", o.crop))
            if pair in conflict_pairs:
                continue
            conflict_pairs.add(pair)
            where = f"object {matched[other]} of this file" if o.source in mine else o.source
            problems.append(Problem(
                xml, f"label conflict: {crop.label} here, but {o.label} in {where} for the same box of identical "
                f"pixels (crop {o.crop}); both crops are kept: fix the wrong label in labelImg and run extract again",
                crop.obj))
    return found


def _still_there(source: str, discovered: set[str], processed: Path) -> bool:
    """Whether a pooled screenshot is still a file of its own (read in this run, or moved to processed/)."""
    return source in discovered or (processed / source).is_file()


class _PoolIndex:
    """The manifest's active rows by content and box, and by screenshot (path and content).

    A row is known under its screenshot file's sha256 and, once extract has seen it, its decoded
    pixels' sha256 too: a screenshot saved again without change has other bytes but the same pixels.
    """

    def __init__(self, records: list[CropRecord]) -> None:
        self.records = records
        self._at: dict[tuple[str, tuple[int, int, int, int]], list[int]] = defaultdict(list)
        self._content: dict[str, list[int]] = defaultdict(list)
        self._screenshot: dict[tuple[str, str], list[int]] = defaultdict(list)
        for k, record in enumerate(records):
            if record.active:
                self.add(k)

    @staticmethod
    def _keys(sha: str, pixels: str) -> list[str]:
        return [key for key in (f"file:{sha}" if sha else "", f"pixels:{pixels}" if pixels else "") if key]

    def add(self, k: int) -> None:
        r = self.records[k]
        for key in self._keys(r.source_sha256, r.pixels_sha256):
            self._at[key, r.box].append(k)
            self._content[key].append(k)
        self._screenshot[r.source, r.source_sha256].append(k)

    def remove(self, k: int) -> None:
        r = self.records[k]
        for key in self._keys(r.source_sha256, r.pixels_sha256):
            self._at[key, r.box].remove(k)
            self._content[key].remove(k)
        self._screenshot[r.source, r.source_sha256].remove(k)

    def at(self, result: ScreenshotCrops, box: tuple[int, int, int, int]) -> list[int]:
        """Active rows of the same screenshot content and box, in manifest order."""
        rows: set[int] = set()
        for key in self._keys(result.source_sha256, result.pixels_sha256):
            rows.update(self._at.get((key, box), ()))
        return sorted(rows)

    def rows_of(self, result: ScreenshotCrops, sources: set[str]) -> list[int]:
        """Active rows cut from this screenshot: its content, under its path or one of ``sources``."""
        rows = set(self._screenshot.get((result.screenshot.relative, result.source_sha256), ()))
        for key in self._keys(result.source_sha256, result.pixels_sha256):
            rows.update(k for k in self._content.get(key, ()) if self.records[k].source in sources)
        return sorted(rows)

    def other_sources(self, result: ScreenshotCrops) -> list[str]:
        """Paths of pooled screenshots with this content under another name."""
        here = result.screenshot.relative
        sources = {self.records[k].source for key in self._keys(result.source_sha256, result.pixels_sha256)
                   for k in self._content.get(key, ())}
        return sorted(sources - {here})

    def fill_hashes(self, result: ScreenshotCrops) -> bool:
        """Give rows of this screenshot's content from an older extract their pixel and perceptual hashes."""
        changed = False
        by_box = {crop.box: crop.phash for crop in result.crops}
        for k in list(self._content.get(f"file:{result.source_sha256}", ())):
            r = self.records[k]
            if r.pixels_sha256 and r.source_phash and r.crop_phash:
                continue
            self.remove(k)
            self.records[k] = replace(r, pixels_sha256=r.pixels_sha256 or result.pixels_sha256,
                                      source_phash=r.source_phash or result.phash,
                                      crop_phash=r.crop_phash or by_box.get(r.box, ""))
            self.add(k)
            changed = True
        return changed


class _Folders:
    """Creates each folder a file goes into once per run, not once per file."""

    def __init__(self) -> None:
        self._made: set[Path] = set()

    def ready(self, file: Path) -> Path:
        if file.parent not in self._made:
            file.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(file.parent)
        return file


def _stage_crop(
    layout: Layout, result: ScreenshotCrops, crop: Crop, next_index: Counter, folders: _Folders
) -> CropRecord:
    index = next_index[crop.label]
    next_index[crop.label] = index + 1
    group = group_of(crop.label)
    relative = f"{group}/{crop.label}_{index}.png"
    folders.ready(layout.staging / relative).write_bytes(crop.png)
    return CropRecord(
        crop=relative, label=crop.label, group=group, index=index,
        source=result.screenshot.relative, xmin=crop.box[0], ymin=crop.box[1], xmax=crop.box[2],
        ymax=crop.box[3], width=crop.width, height=crop.height,
        source_sha256=result.source_sha256, crop_sha256=crop.sha256,
        pixels_sha256=result.pixels_sha256, source_phash=result.phash, crop_phash=crop.phash,
    )


def _read_all(screenshots, known_labels, encode, workers, progress) -> Iterator[ScreenshotCrops]:
    """Read screenshots in order, in a process pool when there are enough of them."""
    from tqdm import tqdm

    labels = frozenset(known_labels) if known_labels is not None else None
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(screenshots) >= PARALLEL_MIN_SCREENSHOTS else 1
    bar = tqdm(total=len(screenshots), unit="screenshot", disable=not progress, leave=False)
    args = [(s, labels, encode) for s in screenshots]
    try:
        if workers <= 1:
            yield from _with_bar(map(_read_screenshot_args, args), bar)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                chunk = max(1, min(16, len(args) // (workers * 8)))
                yield from _with_bar(pool.map(_read_screenshot_args, args, chunksize=chunk), bar)
    finally:
        bar.close()


def _with_bar(results: Iterable[ScreenshotCrops], bar) -> Iterator[ScreenshotCrops]:
    for result in results:
        bar.update(1)
        yield result


def _read_screenshot_args(args) -> ScreenshotCrops:
    return read_screenshot(*args)


def _screenshots_root(layout: Layout, options: ExtractOptions) -> Path:
    return Path(options.screenshots) if options.screenshots else layout.screenshots


def _refuse_unknown_labels(screenshots: Iterable[Screenshot], known_labels: tuple[str, ...]) -> None:
    known = set(known_labels)
    unknown: list[str] = []
    for screenshot in screenshots:
        try:
            annotation = load_annotation(screenshot.xml).annotation
        except AnnotationError:
            continue
        for number, obj in enumerate(annotation.objects):
            label = obj.name.strip().lower()
            if label not in known:
                unknown.append(f"{screenshot.xml}: object {number}: {label!r}")
    if unknown:
        listing = "\n  ".join(unknown[:50]) + ("\n  ..." if len(unknown) > 50 else "")
        raise AnnotationError(
            f"{len(unknown)} objects have labels that are not in the classes file (--strict; nothing written):\n  "
            f"{listing}\nfix them in labelImg or add the labels to the classes file"
        )


def _next_indices(records: list[CropRecord], pool: Path) -> Counter:
    """One past the highest index ever used per label, in the manifest or on disk."""
    highest: Counter = Counter()
    for record in records:
        highest[record.label] = max(highest[record.label], record.index + 1)
    if pool.is_dir():
        for group in pool.iterdir():
            if not group.is_dir() or group.name.startswith("."):
                continue
            for path in group.glob("*.png"):
                label, _, index = path.stem.rpartition("_")
                if label and index.isdigit():
                    highest[label] = max(highest[label], int(index) + 1)
    return highest


def _recover_staging(layout: Layout) -> None:
    """Finish or undo the staging of an interrupted run (see the module docstring)."""
    remove_stale_temp_files(layout.manifest)
    if not layout.staging.is_dir():
        return
    committed = {record.crop for record in load_manifest(layout.manifest)}
    for staged in sorted(layout.staging.rglob("*")):
        if not staged.is_file():
            continue
        relative = staged.relative_to(layout.staging).as_posix()
        target = layout.pool / relative
        if relative in committed and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            logger.info("%s: finished an interrupted extraction", target)
        elif relative in committed:
            logger.warning("%s: staged crop left in place; %s already exists", staged, target)
        else:
            staged.unlink()
    _remove_empty_dirs(layout.staging)


def _tidy_staging(layout: Layout) -> None:
    """After a failure: commit what the manifest holds, delete the rest (frees a full disk)."""
    with contextlib.suppress(OSError, ToonVisionError):
        _recover_staging(layout)


def _remove_empty_dirs(folder: Path) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _move_to_processed(screenshot: Screenshot, root: Path, processed: Path, problems: list[Problem]) -> int:
    """Move a fully extracted screenshot and its XML under processed/, keeping subfolders."""
    moved = 0
    for source in (screenshot.xml, screenshot.image):
        target = processed / source.relative_to(root)
        if target.exists():
            problems.append(Problem(str(source), f"not moved: {target} already exists", severity=WARNING))
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        moved = 1
    return moved


def _finish_interrupted_moves(root: Path, processed: Path) -> None:
    """Move images whose XML already reached processed/ (a kill between the two renames)."""
    if not processed.is_dir():
        return
    for xml in processed.rglob("*" + XML_SUFFIX):
        folder = root / xml.parent.relative_to(processed)
        if (folder / xml.name).exists() or not folder.is_dir():
            continue
        for image in folder.glob(xml.stem + ".*"):
            target = xml.parent / image.name
            if image.suffix.lower() in PIL_IMAGE_SUFFIXES and image.is_file() and not target.exists():
                os.replace(image, target)
                logger.info("%s: finished an interrupted move to %s", image, target)


def _inside(path: Path, real_root: Path) -> bool:
    try:
        path.resolve().relative_to(real_root)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


_NOT_UTF8 = "name is not valid UTF-8 and cannot be recorded in the manifest; rename it (skipped)"


def _is_utf8(name: str) -> bool:
    """False for names the file system gave as undecodable bytes (surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = [
    "Crop", "Discovery", "ExtractOptions", "ExtractResult", "Screenshot",
    "ScreenshotCrops", "ValidationResult", "discover", "extract", "read_screenshot", "validate",
]
