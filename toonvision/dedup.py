"""Exact and near-duplicate screenshots and crops: perceptual hashes, clustering, leaks.

    img/unsorted/manifest.csv       pixels_sha256, source_phash, crop_phash per crop (extract)
                 │
                 ▼  find_duplicates (reads the manifest only, writes nothing)
    DuplicateReport ──write_duplicates_csv──▶ duplicates.csv    cluster,kind,source,crop
                    ──leaks(report, plan)──▶  pairs that straddle the splits of img/data/<task>/

A screenshot's perceptual hash is a 64-bit pHash (the DCT hash of ``imagehash.phash``, on
Pillow and NumPy): grey, 32x32 Lanczos, 2-D DCT-II, the 8x8 lowest frequencies against their
median. ``extract`` computes it once per screenshot and per crop and keeps it in the manifest, so
a re-split costs no image reading. Two screenshots whose hashes differ in at most
``NEAR_THRESHOLD`` bits are near-duplicates (the same scene a frame apart, recompressed, resized
or slightly shifted); the threshold was chosen by ``bench/measure_dedup.py`` on synthetic frame
sequences (README, "Duplicates and near-duplicates"). Near pairs are found by multi-index
hashing (three chunks of 21-22 bits; a pair within ``t`` bits has a chunk within ``t // 3`` bits),
so 100,000 hashes take 0.6 s of CPU instead of comparing all 5 billion pairs, and are
joined by union-find.

Pure but for :func:`find_duplicates` (reads the manifest) and :func:`write_duplicates_csv`
(one atomic write).
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from toonvision.fsutil import atomic_write_text
from toonvision.layout import Layout
from toonvision.manifest import CropRecord, load_pool
from toonvision.tasks import Task

if TYPE_CHECKING:  # only for type hints: split imports this module
    from toonvision.split import SplitPlan

logger = logging.getLogger(__name__)

HASH_BITS = 64
HASH_HEX = HASH_BITS // 4
NEAR_THRESHOLD = 8  # screenshots, bits of 64: TPR 0.969, FPR 0.00002 (bench/measure_dedup.py, 70 scenes)
CROP_NEAR_THRESHOLD = 2  # crops: stricter (TPR 0.82, FPR 0 of 1.5 million pairs), as two Cogs of a kind look alike
DUPLICATES_CSV = "duplicates.csv"
DUPLICATE_COLUMNS = ("cluster", "kind", "source", "crop")
EXACT = "exact"
NEAR = "near"
_DCT_SIZE = 32
_LOW = 8
_CHUNK_BITS = (22, 21, 21)  # multi-index hashing: the 64 bits in 3 chunks
_BRUTE_FORCE_MAX = 3000  # below this many hashes every pair is compared (faster than indexing)
_BLOCK = 256


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    return np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))


_DCT = _dct_matrix(_DCT_SIZE)[:_LOW]  # only the lowest frequencies are kept


def phash(image: Image.Image) -> str:
    """The 64-bit perceptual hash of an image as 16 hex digits (``imagehash.phash``'s algorithm)."""
    grey = image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    low = _DCT @ np.asarray(grey, dtype=np.float64) @ _DCT.T
    bits = (low > np.median(low)).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{HASH_HEX}x}"


def hamming(a: str, b: str) -> int:
    """How many bits two hex hashes differ in."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def near_pairs(hashes: Sequence[str], threshold: int) -> list[tuple[int, int]]:
    """Every pair ``(i, j)``, ``i < j``, of hashes at most ``threshold`` bits apart (empty hashes never pair)."""
    known = [i for i, h in enumerate(hashes) if h]
    if len(known) < 2:
        return []
    values = np.array([int(hashes[i], 16) for i in known], dtype=np.uint64)
    if len(values) <= _BRUTE_FORCE_MAX or threshold // len(_CHUNK_BITS) > 2:
        found = _pairs_brute_force(values, threshold)
    else:
        found = _pairs_multi_index(values, threshold)
    index = np.array(known)
    return sorted((int(index[i]), int(index[j])) for i, j in found)


def _pairs_brute_force(values: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    for start in range(0, len(values), _BLOCK):
        block = values[start:start + _BLOCK]
        distance = np.bitwise_count(block[:, None] ^ values[None, start:])
        rows, cols = np.nonzero(distance <= threshold)
        for i, j in zip(rows + start, cols + start, strict=True):
            if i < j:
                found.add((int(i), int(j)))
    return found


def _pairs_multi_index(values: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    """Multi-index hashing: a pair within ``t`` bits has one of the 3 chunks (21-22 bits) within
    ``t // 3`` bits of each other; those candidates are looked up per chunk, then checked in full."""
    radius = threshold // len(_CHUNK_BITS)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    shift = 0
    for width in _CHUNK_BITS:
        chunk = ((values >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int32)
        shift += width
        order = np.argsort(chunk, kind="stable")
        counts = np.bincount(chunk, minlength=1 << width).astype(np.int32)
        occupied = counts > 0  # an eighth of the counts' size: the probes stay in cache
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        for r in range(radius + 1):
            for bits in itertools.combinations(range(width), r):
                query = chunk ^ np.int32(sum(1 << b for b in bits))
                who = np.flatnonzero(occupied[query])
                if not len(who):
                    continue
                n = counts[query[who]]
                left = np.repeat(who, n)
                offsets = np.arange(len(left)) - np.repeat(np.cumsum(n) - n, n)
                right = order[np.repeat(starts[query[who]], n) + offsets]
                keep = left < right
                left, right = left[keep], right[keep]
                close = np.bitwise_count(values[left] ^ values[right]) <= threshold
                found_i.append(left[close])
                found_j.append(right[close])
    if not found_i:
        return set()
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    return set(zip(i.tolist(), j.tolist(), strict=True))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class _Screenshot:
    """One screenshot of the pool: its path, its content key, its hash and its crops."""

    source: str
    file_sha256: str
    content: str  # pixels_sha256, or the file's sha256 for rows of an older extract
    phash: str
    crops: tuple[str, ...]


def _screenshots(records: Iterable[CropRecord]) -> list[_Screenshot]:
    """The pool's screenshots (source path and file content), in a stable order."""
    crops: dict[tuple[str, str], list[str]] = defaultdict(list)
    info: dict[tuple[str, str], tuple[str, str]] = {}
    for r in records:
        key = (r.source or r.crop, r.source_sha256)
        crops[key].append(r.crop)
        content, phash_ = info.get(key, ("", ""))
        info[key] = (content or r.pixels_sha256, phash_ or r.source_phash)
    out = []
    for key in sorted(crops):
        content, phash_ = info[key]
        out.append(_Screenshot(key[0], key[1], content or f"file:{key[1] or key[0]}", phash_,
                               tuple(sorted(crops[key]))))
    return out


@dataclass(frozen=True)
class ScreenshotGroups:
    """The split group of every crop: screenshots of equal content or near-duplicate hashes share one."""

    group_of: Mapping[str, str] = field(repr=False)  # crop -> group key
    screenshots: int  # distinct screenshots (path and content)
    merged: int  # screenshots in a group with another screenshot of other content (near-duplicates)
    near_groups: int  # groups that hold such near-duplicates
    unhashed: int  # screenshots without a perceptual hash (rows of an older extract)


def screenshot_groups(records: Sequence[CropRecord], threshold: int | None = NEAR_THRESHOLD) -> ScreenshotGroups:
    """Group crops for ``split``: same screenshot content (bytes or pixels) or, unless ``threshold``
    is None, perceptual hashes at most ``threshold`` bits apart. Group keys are stable strings."""
    shots = _screenshots(records)
    uf = _UnionFind(len(shots))
    by_content: dict[str, int] = {}
    by_file: dict[str, int] = {}
    for k, shot in enumerate(shots):
        for table, key in ((by_content, shot.content), (by_file, shot.file_sha256)):
            if key:
                uf.union(k, table.setdefault(key, k))
    exact_root = [uf.find(k) for k in range(len(shots))]
    if threshold is not None:
        for i, j in near_pairs([s.phash for s in shots], threshold):
            uf.union(i, j)
    roots = [uf.find(k) for k in range(len(shots))]
    members: dict[int, set[int]] = defaultdict(set)
    for k, root in enumerate(roots):
        members[root].add(exact_root[k])
    merged = sum(1 for k, root in enumerate(roots) if len(members[root]) > 1)
    near_groups = sum(1 for exact in members.values() if len(exact) > 1)
    group_of = {}
    for k, shot in enumerate(shots):
        key = shots[roots[k]].content
        for crop in shot.crops:
            group_of[crop] = key
    return ScreenshotGroups(group_of, len(shots), merged, near_groups, sum(1 for s in shots if not s.phash))


@dataclass(frozen=True)
class DuplicateRow:
    """One line of ``duplicates.csv``: a member of a cluster (``crop`` empty for a whole screenshot)."""

    cluster: int
    kind: str
    source: str
    crop: str = ""


@dataclass(frozen=True)
class NearPair:
    """Two near-duplicates (or exact copies): screenshots (their crops listed) or single crops."""

    kind: str
    level: str  # "screenshot" or "crop"
    first: str  # source path, or crop path
    second: str
    distance: int
    first_crops: tuple[str, ...] = ()
    second_crops: tuple[str, ...] = ()


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`find_duplicates` found; ``rows`` are ``duplicates.csv``, ``pairs`` feed :func:`leaks`."""

    rows: tuple[DuplicateRow, ...]
    pairs: tuple[NearPair, ...]
    screenshots: int
    crops: int
    threshold: int
    crop_threshold: int
    unhashed_screenshots: int = 0
    unhashed_crops: int = 0

    def thresholds(self) -> dict[str, object]:
        """The hash and thresholds used (for ``audit.json``)."""
        return {"hash": f"pHash, {HASH_BITS} bits", "screenshot_bits": self.threshold, "crop_bits": self.crop_threshold}

    def counts(self) -> dict[str, int]:
        clusters = {(r.cluster, r.kind, r.crop != "") for r in self.rows}
        return {
            "screenshots": self.screenshots,
            "crops": self.crops,
            "exact_screenshot_clusters": sum(1 for _, k, c in clusters if k == EXACT and not c),
            "near_screenshot_clusters": sum(1 for _, k, c in clusters if k == NEAR and not c),
            "exact_crop_clusters": sum(1 for _, k, c in clusters if k == EXACT and c),
            "near_crop_clusters": sum(1 for _, k, c in clusters if k == NEAR and c),
            "unhashed_screenshots": self.unhashed_screenshots,
            "unhashed_crops": self.unhashed_crops,
        }


def find_duplicates(
    layout: Layout,
    task: Task | None = None,
    threshold: int = NEAR_THRESHOLD,
    crop_threshold: int = CROP_NEAR_THRESHOLD,
) -> DuplicateReport:
    """The pool's (or one task's) exact and near-duplicate screenshots and crops; writes nothing."""
    records, _missing = load_pool(layout)
    if task is not None:
        records = [r for r in records if task.class_of(r.label) is not None]
    return duplicates_of(records, threshold, crop_threshold)


def duplicates_of(
    records: Sequence[CropRecord], threshold: int = NEAR_THRESHOLD, crop_threshold: int = CROP_NEAR_THRESHOLD
) -> DuplicateReport:
    """:func:`find_duplicates` on records in memory (pure)."""
    shots = _screenshots(records)
    rows: list[DuplicateRow] = []
    pairs: list[NearPair] = []
    cluster = 0
    # exact: screenshots (other paths or other files) with the same pixels
    by_content: dict[str, list[int]] = defaultdict(list)
    for k, shot in enumerate(shots):
        by_content[shot.content].append(k)
    for content in sorted(by_content, key=lambda c: shots[by_content[c][0]].source):
        members = by_content[content]
        if len(members) < 2:
            continue
        cluster += 1
        rows.extend(DuplicateRow(cluster, EXACT, shots[k].source) for k in members)
        pairs.extend(NearPair(EXACT, "screenshot", shots[a].source, shots[b].source, 0, shots[a].crops,
                              shots[b].crops) for a, b in itertools.combinations(members, 2))
    # near: distinct contents whose hashes are close; one representative per content
    firsts = [members[0] for members in by_content.values()]
    firsts.sort()
    near = near_pairs([shots[k].phash for k in firsts], threshold)
    uf = _UnionFind(len(firsts))
    for i, j in near:
        uf.union(i, j)
        a, b = shots[firsts[i]], shots[firsts[j]]
        for x in by_content[a.content]:
            for y in by_content[b.content]:
                pairs.append(NearPair(NEAR, "screenshot", shots[x].source, shots[y].source,
                                      hamming(a.phash, b.phash), shots[x].crops, shots[y].crops))
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(len(firsts)):
        components[uf.find(i)].append(i)
    shot_group = {}
    for root, members in sorted(components.items()):
        for i in members:
            for k in by_content[shots[firsts[i]].content]:
                shot_group[k] = root
        if len(members) < 2:
            continue
        cluster += 1
        rows.extend(DuplicateRow(cluster, NEAR, shots[k].source)
                    for i in members for k in by_content[shots[firsts[i]].content])
    # crops: near-duplicate crops of screenshots that are not already one group
    group_of_crop = {crop: shot_group[k] for k, shot in enumerate(shots) for crop in shot.crops}
    source_of = {r.crop: r.source for r in records}
    crop_list = sorted(records, key=lambda r: r.crop)
    crop_pairs = []
    for i, j in near_pairs([r.crop_phash for r in crop_list], crop_threshold):
        a, b = crop_list[i], crop_list[j]
        if group_of_crop[a.crop] != group_of_crop[b.crop]:
            crop_pairs.append((i, j))
    cuf = _UnionFind(len(crop_list))
    for i, j in crop_pairs:
        cuf.union(i, j)
        a, b = crop_list[i], crop_list[j]
        kind = EXACT if a.crop_sha256 and a.crop_sha256 == b.crop_sha256 else NEAR
        pairs.append(NearPair(kind, "crop", a.crop, b.crop, hamming(a.crop_phash, b.crop_phash)))
    crop_components: dict[int, list[int]] = defaultdict(list)
    for i in sorted({k for pair in crop_pairs for k in pair}):
        crop_components[cuf.find(i)].append(i)
    for _root, members in sorted(crop_components.items()):
        cluster += 1
        shas = {crop_list[i].crop_sha256 for i in members}
        kind = EXACT if len(shas) == 1 and "" not in shas else NEAR
        rows.extend(DuplicateRow(cluster, kind, source_of[crop_list[i].crop], crop_list[i].crop) for i in members)
    return DuplicateReport(
        tuple(rows), tuple(pairs), len(shots), len(records), threshold, crop_threshold,
        sum(1 for s in shots if not s.phash), sum(1 for r in records if not r.crop_phash),
    )


def format_duplicates_csv(report: DuplicateReport) -> str:
    """``duplicates.csv``: ``cluster,kind,source,crop``, one row per member (crop empty for a screenshot)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(DUPLICATE_COLUMNS)
    writer.writerows((r.cluster, r.kind, r.source, r.crop) for r in report.rows)
    return out.getvalue()


def write_duplicates_csv(report: DuplicateReport, path: Path) -> Path:
    """Write ``duplicates.csv`` atomically; returns its path."""
    atomic_write_text(Path(path), format_duplicates_csv(report))
    return Path(path)


@dataclass(frozen=True)
class Leak:
    """A near-duplicate pair whose members sit in different splits."""

    kind: str
    level: str
    first: str
    second: str
    first_split: str
    second_split: str
    distance: int

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "level": self.level, "first": self.first, "second": self.second,
                "first_split": self.first_split, "second_split": self.second_split, "distance": self.distance}


def leaks(report: DuplicateReport, split: SplitPlan) -> list[Leak]:
    """Pairs of ``report`` with one member in one split and the other in another (for ``audit.json``).

    A screenshot's split is that of its crops in the plan; a screenshot whose crops were divided
    (``--no-group``) leaks with each split it is in.
    """
    split_of = {a.crop: a.split for a in split.assignments}
    found = []
    for pair in report.pairs:
        if pair.level == "crop":
            here, there = {split_of.get(pair.first)} - {None}, {split_of.get(pair.second)} - {None}
        else:
            here = {split_of[c] for c in pair.first_crops if c in split_of}
            there = {split_of[c] for c in pair.second_crops if c in split_of}
        for a, b in sorted((a, b) for a in here for b in there if a != b):
            found.append(Leak(pair.kind, pair.level, pair.first, pair.second, a, b, pair.distance))
    return found


__all__ = [
    "CROP_NEAR_THRESHOLD", "DUPLICATES_CSV", "DUPLICATE_COLUMNS", "EXACT", "HASH_BITS", "NEAR", "NEAR_THRESHOLD",
    "DuplicateReport", "DuplicateRow", "Leak", "NearPair", "ScreenshotGroups", "duplicates_of",
    "find_duplicates", "format_duplicates_csv", "hamming", "leaks", "near_pairs", "phash",
    "screenshot_groups", "write_duplicates_csv",
]
