"""Writing a folder of scenes: workers, the folder lock, atomic PNG + XML pairs, re-runs that finish the job."""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from toonvision.constants import PIL_IMAGE_SUFFIXES, SUITS
from toonvision.errors import UsageError
from toonvision.fsutil import (
    atomic_write_bytes,
    die_with_parent,
    remove_stale_temp_files,
)
from toonvision.locks import locked
from toonvision.synth.config import NAME_PREFIX, SynthConfig, scene_name
from toonvision.synth.render import Scene, encode_png, render_scene
from toonvision.synth.specs import LABELS
from toonvision.voc import format_annotation

logger = logging.getLogger(__name__)

_BUSY = "another toonvision synth is writing to {what}; wait for it to finish and run the command again"
_T = TypeVar("_T")

PARALLEL_MIN_SCENES = 32  # below this, starting worker processes costs more than it saves
_WRITER_THREADS = 4  # fsync waits of several files overlap each other and the rendering
_WRITE_BACKLOG = 16  # rendered scenes waiting to be written, at most


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` did."""

    out_dir: Path
    written: int
    present: int  # already there with the same pixels; left untouched
    label_counts: tuple[tuple[str, int], ...]

    @property
    def screenshots(self) -> int:
        return self.written + self.present

    @property
    def objects(self) -> int:
        return sum(n for _, n in self.label_counts)

    def group_counts(self) -> dict[str, int]:
        """Objects per group and suit: ``cog``, ``toon``, ``cog_bb`` .. ``cog_sb``."""
        counts: dict[str, int] = {}
        for label, n in self.label_counts:
            keys = [label.split("_")[0]] + (["_".join(label.split("_")[:2])] if label.startswith("cog_") else [])
            for key in keys:
                counts[key] = counts.get(key, 0) + n
        return counts

    def summary(self) -> str:
        groups = self.group_counts()
        suits = ", ".join(f"{suit} {groups.get(f'cog_{suit}', 0)}" for suit in SUITS)
        done = f"{self.written} written" + (f", {self.present} already there" if self.present else "")
        return (f"synth: {self.screenshots} screenshots ({done}) with {self.objects} objects: "
                f"{groups.get('cog', 0)} Cogs ({suits}), {groups.get('toon', 0)} Toons; in {self.out_dir}")


def synthesize(out_dir: Path, config: SynthConfig, *, overwrite: bool = False, workers: int | None = None,
               progress: bool = False) -> SynthResult:
    """Write ``config.count`` screenshots with their XML into ``out_dir``; safe to kill and re-run.

    Files that are already there with the same pixels are left alone (a re-run finishes the
    job); a file of the same name with other pixels (another --size, other weights) is a
    conflict: nothing is written unless ``overwrite``. ``workers`` processes render in parallel
    (default: every core when there are many scenes); the files do not depend on it.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: is a file, not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    with locked(out_dir, str(out_dir), message=_BUSY):
        remove_stale_temp_files(out_dir, f"{NAME_PREFIX}_*", any_writer=True)  # the lock is ours: every temp is stale
        _warn_about_foreign_images(out_dir)
        return _synthesize(out_dir, config, overwrite, _workers(workers, config.count), progress)


def _synthesize(out_dir: Path, config: SynthConfig, overwrite: bool, workers: int, progress: bool) -> SynthResult:
    existing = [i for i in range(config.count) if any(_paths(out_dir, config.seed, i)[k].exists() for k in (0, 1))]
    fresh = sorted(set(range(config.count)) - set(existing))
    outcomes: dict[int, tuple[str, tuple[str, ...]]] = {}
    with _Runner(workers) as runner:
        with _progress(progress, len(existing), "checking") as bar:
            for index, outcome in runner.map(_check_scene, out_dir, config, existing):
                outcomes[index] = outcome
                bar.update(1)
        conflicts = [i for i, (status, _) in outcomes.items() if status == "conflict"]
        if conflicts and not overwrite:
            names = ", ".join(scene_name(config.seed, i) for i in conflicts[:3])
            more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
            raise UsageError(
                f"{out_dir}: {names}{more} (.png/.xml) already exist and differ from what this command "
                "makes (another --size, --weight or --toon-share?); nothing was written. Use --overwrite "
                "to replace them, or another --out"
            )
        incomplete = [i for i, (status, _) in outcomes.items() if status == "incomplete"]
        todo = sorted(fresh + conflicts + incomplete)
        # Rendering is CPU work; writing waits on fsync. Threads write while the next scenes render.
        with _progress(progress, len(todo), "synth") as bar, ThreadPoolExecutor(_WRITER_THREADS) as writers:
            pending: collections.deque[Future[None]] = collections.deque()
            for index, (png_data, xml_data, labels) in runner.map(_encode_scene, out_dir, config, todo):
                pending.append(writers.submit(_write_pair, *_paths(out_dir, config.seed, index), png_data, xml_data))
                while len(pending) > _WRITE_BACKLOG:
                    pending.popleft().result()  # raises the error of a failed write
                outcomes[index] = ("written", labels)
                bar.update(1)
            for future in pending:
                future.result()
    counts = {label: 0 for label in LABELS}
    for _, labels in outcomes.values():
        for label in labels:
            counts[label] += 1
    present = sum(1 for status, _ in outcomes.values() if status == "present")
    return SynthResult(out_dir, config.count - present, present,
                       tuple((label, n) for label, n in counts.items() if n))


def _paths(out_dir: Path, seed: int, index: int) -> tuple[Path, Path]:
    stem = scene_name(seed, index)
    return out_dir / f"{stem}.png", out_dir / f"{stem}.xml"


def _xml(scene: Scene, png: Path) -> bytes:
    annotation = dataclasses.replace(scene.annotation, folder=png.parent.name, path=str(png))
    return format_annotation(annotation).encode("utf-8")


def _check_scene(out_dir: Path, config: SynthConfig, index: int) -> tuple[str, tuple[str, ...]]:
    """Compare files already there with what scene ``index`` would be; writes nothing.

    ``present``: the PNG holds this scene's pixels and its XML is there; ``incomplete``: the same
    PNG without its XML (a run killed between the two writes); ``conflict``: anything else.
    """
    png, xml = _paths(out_dir, config.seed, index)
    scene = render_scene(config, index)
    labels = tuple(obj.name for obj in scene.annotation.objects)
    if not png.exists():
        return "conflict", labels
    try:
        with Image.open(png) as existing:
            same = existing.size == scene.image.size and np.array_equal(
                np.asarray(existing.convert("RGB")), np.asarray(scene.image))
    except (OSError, ValueError, Image.DecompressionBombError):
        same = False
    if not same:
        return "conflict", labels
    return ("present" if xml.exists() else "incomplete"), labels


def _encode_scene(out_dir: Path, config: SynthConfig, index: int) -> tuple[bytes, bytes, tuple[str, ...]]:
    """Scene ``index`` as PNG bytes, XML bytes and its labels (runs in a worker)."""
    png, _ = _paths(out_dir, config.seed, index)
    scene = render_scene(config, index)
    return encode_png(scene.image), _xml(scene, png), tuple(obj.name for obj in scene.annotation.objects)


def _write_pair(png: Path, xml: Path, png_data: bytes, xml_data: bytes) -> None:
    """The PNG first, then its XML: a kill in between leaves a PNG that the next run completes."""
    atomic_write_bytes(png, png_data)
    atomic_write_bytes(xml, xml_data)


def _warn_about_foreign_images(out_dir: Path) -> None:
    foreign = [path for path in out_dir.iterdir()
               if path.suffix.lower() in PIL_IMAGE_SUFFIXES and not path.name.startswith(NAME_PREFIX + "_")]
    if foreign:
        logger.warning("%s already holds %d screenshots that synth did not make (e.g. %s); the synthetic ones "
                       "are named %s_*.png and can be told apart", out_dir, len(foreign), foreign[0].name,
                       NAME_PREFIX)


def _workers(workers: int | None, count: int) -> int:
    if workers is not None:
        if workers < 1:
            raise UsageError(f"synth: workers is {workers}; use 1 or more")
        return min(workers, count)
    if count < PARALLEL_MIN_SCENES:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Runner:
    """Maps a scene function over indices, in order, in this process or in forked workers."""

    def __init__(self, workers: int) -> None:
        fork = "fork" in multiprocessing.get_all_start_methods()
        self._pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                          initializer=die_with_parent, initargs=(os.getpid(),))
                      if workers > 1 and fork else None)
        if self._pool is not None:
            self._pool.submit(int).result()  # fork the workers now, before a progress bar starts a thread

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def map(self, fn: Callable[[Path, SynthConfig, int], _T], out_dir: Path, config: SynthConfig,
            indices: Sequence[int]) -> Iterator[tuple[int, _T]]:
        if self._pool is None:
            for index in indices:
                yield index, fn(out_dir, config, index)
            return
        chunk = max(1, min(16, len(indices) // 32))
        results = self._pool.map(fn, [out_dir] * len(indices), [config] * len(indices), indices, chunksize=chunk)
        yield from zip(indices, results, strict=True)


def _progress(enabled: bool, total: int, what: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="shot", disable=not enabled or total == 0, leave=False)
