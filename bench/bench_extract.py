"""Benchmark ``toonvision extract`` against a bare Pillow loop, on one core and two, at 1x and 10x.

    python3 bench/bench_extract.py [--screenshots 100] [--scale 10] [--rounds 3] [--profile] [--workdir DIR]

Synthesises screenshots with their labelImg XML (``toonvision.synth``), then measures in this
one process (issue 7, targets 4 and 7):

1. crops/s of ``extract`` with one worker / a bare loop that decodes each screenshot with
   Pillow, crops its boxes (parsed beforehand, not timed) and encodes and writes each crop as
   PNG with the same parameters (``PNG_COMPRESS_LEVEL``), in one process (target >= 0.8);
2. crops/s of ``extract`` with two worker processes / with one (target >= 1.6), and the same
   ratio for the bare loop, which shows what this machine gives two processes at the moment;
3. extraction time per screenshot and per crop at 1x and ``--scale`` x as many screenshots
   (linear scaling: a ratio near 1).

Every extraction writes a fresh pool; rounds interleave the contenders so outside load hits
them alike, and each figure is the median of the rounds with their range. ``--profile`` prints
where a one-worker extraction spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from toonvision.constants import PNG_COMPRESS_LEVEL  # noqa: E402
from toonvision.extract import ExtractOptions, discover, extract  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.synth import SynthConfig, synthesize  # noqa: E402
from toonvision.voc import load_annotation  # noqa: E402


def make_screenshots(folder: Path, count: int) -> list[tuple[str, list[tuple[int, int, int, int]]]]:
    """``count`` synthetic screenshots in ``folder``; returns (image path, boxes) for the bare loop."""
    synthesize(folder, SynthConfig(count=count, seed=0))
    jobs = []
    for shot in discover(folder).screenshots:
        annotation = load_annotation(shot.xml).annotation
        jobs.append((str(shot.image), [obj.box.rounded() for obj in annotation.objects if obj.box is not None]))
    return jobs


def bare_job(job: tuple[str, list[tuple[int, int, int, int]]], out: str) -> int:
    """Decode one screenshot, crop and encode its boxes, write the crops: the floor extract is held to."""
    path, boxes = job
    with open(path, "rb") as handle:
        image = Image.open(io.BytesIO(handle.read()))
        image.load()
    if image.mode != "RGB":
        image = image.convert("RGB")
    stem = Path(path).stem
    for i, box in enumerate(boxes):
        buffer = io.BytesIO()
        image.crop(box).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        with open(f"{out}/{stem}_{i}.png", "wb") as handle:
            handle.write(buffer.getvalue())
    return len(boxes)


def _bare_chunk(args: tuple[list, str]) -> int:
    jobs, out = args
    return sum(bare_job(job, out) for job in jobs)


def bare_loop(jobs, out: Path, workers: int) -> tuple[int, float]:
    """(crops, seconds) of the bare loop over ``jobs`` with ``workers`` processes."""
    out.mkdir(parents=True)
    start = time.perf_counter()
    if workers == 1:
        crops = _bare_chunk((jobs, str(out)))
    else:
        chunks = [(jobs[i::workers * 4], str(out)) for i in range(workers * 4)]
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            crops = sum(pool.map(_bare_chunk, chunks))
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return crops, seconds


def run_extract(screenshots: Path, img_dir: Path, workers: int | None) -> tuple[int, float]:
    """(crops, seconds) of ``extract`` into a fresh pool under ``img_dir``."""
    layout = Layout.from_dirs(img_dir, img_dir.parent / "models")
    start = time.perf_counter()
    result = extract(layout, ExtractOptions(screenshots=screenshots, workers=workers))
    seconds = time.perf_counter() - start
    shutil.rmtree(img_dir)
    return result.crops_written, seconds


def spread(values: list[float], digits: int = 2) -> str:
    return (f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}] "
            f"of {len(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=int, default=100)
    parser.add_argument("--scale", type=int, default=10, help="the large size, in multiples of --screenshots")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print where a one-worker extraction spends its time")
    parser.add_argument("--workdir", type=Path, help="keep the screenshots here (default: a temp folder)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toonvision-bench-extract-"))
    try:
        small, large = workdir / "shots-1x", workdir / f"shots-{args.scale}x"
        start = time.perf_counter()
        jobs = make_screenshots(small, args.screenshots)
        crops_per_shot = sum(len(b) for _, b in jobs) / len(jobs)
        print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; {len(jobs)} synthetic 800x600 screenshots, {crops_per_shot:.1f} crops each "
              f"(made in {time.perf_counter() - start:.1f} s); PNG compress level {PNG_COMPRESS_LEVEL}")
        bare_loop(jobs, workdir / "warm", 1)  # page cache and imports warm for everyone
        rates: dict[str, list[float]] = {"bare 1": [], "bare 2": [], "extract 1": [], "extract 2": []}
        for r in range(args.rounds):
            for name in rates:
                kind, workers = name.split()
                if kind == "bare":
                    crops, seconds = bare_loop(jobs, workdir / f"bare-{r}", int(workers))
                else:
                    crops, seconds = run_extract(small, workdir / f"img-{r}", int(workers))
                rates[name].append(crops / seconds)
        one = [e / b for e, b in zip(rates["extract 1"], rates["bare 1"], strict=True)]
        two = [e2 / e1 for e2, e1 in zip(rates["extract 2"], rates["extract 1"], strict=True)]
        bare_two = [b2 / b1 for b2, b1 in zip(rates["bare 2"], rates["bare 1"], strict=True)]
        print(f"4a extraction, one core: extract / bare Pillow loop crops/s = {spread(one)}   target >= 0.8 "
              f"({'PASS' if statistics.median(one) >= 0.8 else 'FAIL'})")
        print(f"4b extraction, two processes / one: extract {spread(two)}   target >= 1.6 "
              f"({'PASS' if statistics.median(two) >= 1.6 else 'FAIL'}); bare loop {spread(bare_two)}")
        print("  crops/s: " + "; ".join(f"{name} {spread(v, 0)}" for name, v in rates.items()))

        if args.profile:
            profile = cProfile.Profile()
            layout = Layout.from_dirs(workdir / "img-profile", workdir / "models")
            profile.runcall(extract, layout, ExtractOptions(screenshots=small, workers=1))
            shutil.rmtree(workdir / "img-profile")
            buffer = io.StringIO()
            pstats.Stats(profile, stream=buffer).sort_stats("cumtime").print_stats(30)
            print("  profile of extract, one worker (by own time):")
            print("\n".join("    " + line for line in buffer.getvalue().splitlines() if line.strip()))

        if args.scale > 1:
            start = time.perf_counter()
            make_screenshots(large, args.screenshots * args.scale)
            made = time.perf_counter() - start
            per: dict[str, list[tuple[float, float]]] = {"1x": [], f"{args.scale}x": []}
            for r in range(max(1, args.rounds - 1)):
                scales = (("1x", small, args.screenshots), (f"{args.scale}x", large, args.screenshots * args.scale))
                for name, folder, n in scales:
                    crops, seconds = run_extract(folder, workdir / f"img-scale-{r}", None)
                    per[name].append((1000 * seconds / n, 1000 * seconds / crops))
            shot_ratio = [b[0] / a[0] for a, b in zip(per["1x"], per[f"{args.scale}x"], strict=True)]
            print(
                f"7 extraction scale ({args.screenshots} and {args.screenshots * args.scale} screenshots, default "
                f"workers; the large set made in {made:.0f} s): ms per screenshot 1x "
                f"{spread([p[0] for p in per['1x']])}, {args.scale}x {spread([p[0] for p in per[f'{args.scale}x']])}; "
                f"ms per crop 1x {spread([p[1] for p in per['1x']])}, {args.scale}x "
                f"{spread([p[1] for p in per[f'{args.scale}x']])}; {args.scale}x / 1x per item {spread(shot_ratio)}"
            )
        print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
