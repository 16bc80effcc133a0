"""Benchmark ``toonvision synth`` on one core: screenshots per second, and where the time goes.

    python3 bench/bench_synth.py [--count 200] [--size 800x600] [--workdir DIR]

The process is pinned to one CPU core. It times, in this one process: building the street
backdrops (once per process), planning scenes, rendering them, encoding the PNG (ours and
Pillow's at compress level 1, for the ratio), and the whole ``synthesize`` call writing PNG +
XML pairs atomically to disk, cold (fresh caches) and warm. Rates are per wall-clock second
and per CPU second of this process (the second is steadier on a busy machine).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toonvision import synth  # noqa: E402
from toonvision.constants import DEFAULT_SYNTH_SIZE, parse_hw  # noqa: E402


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def line(what: str, n: int, timer: Timer, unit: str = "screenshots") -> None:
    print(f"{what:<44} {n / timer.wall:8.1f} {unit}/s wall  {n / timer.cpu:8.1f} {unit}/s cpu"
          f"  ({1000 * timer.cpu / n:6.1f} ms cpu each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", default=DEFAULT_SYNTH_SIZE.as_text(), help="HEIGHTxWIDTH")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temp folder, removed after)")
    args = parser.parse_args()
    size = parse_hw(args.size)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    workdir = Path(tempfile.mkdtemp(prefix="bench_synth_", dir=args.workdir))
    print(f"python {platform.python_version()}, {platform.machine()}, one core; {args.count} screenshots of "
          f"{size.as_text()} (HxW) in {workdir}")
    try:
        config = synth.SynthConfig(count=args.count, seed=1, size=size)
        with Timer() as cold:
            cold_result = synth.synthesize(workdir / "cold", config, workers=1)
        line("synthesize, cold (backdrops built on the way)", args.count, cold)

        with Timer() as backdrops:
            synth._backdrop.cache_clear()
            for style in synth._STYLE_NAMES:
                for variant in range(synth._BACKGROUND_VARIANTS):
                    synth._backdrop(style, variant, synth._backdrop_width(size[0]), size[1], False)
        count = len(synth._STYLE_NAMES) * synth._BACKGROUND_VARIANTS
        line("  backdrops (once per process)", count, backdrops, "backdrops")

        with Timer() as plans:
            for i in range(args.count):
                synth.plan_scene(config, i)
        line("  plan_scene", args.count, plans)
        with Timer() as renders:
            images = [synth.render_scene(config, i).image for i in range(args.count)]
        line("  render_scene (plan + draw + camera)", args.count, renders)
        with Timer() as ours:
            encoded = [synth.encode_png(image) for image in images]
        line("  encode_png (Up filter, zlib level 1)", args.count, ours)
        with Timer() as pillow:
            for image in images:
                image.save(io.BytesIO(), "PNG", compress_level=1)
        line("  Pillow PNG, compress_level=1", args.count, pillow)

        with Timer() as warm:
            result = synth.synthesize(workdir / "warm", config, workers=1)
        line("synthesize, warm (render, encode, XML, fsync)", args.count, warm)
        with Timer() as rerun:
            synth.synthesize(workdir / "warm", config, workers=1)
        line("synthesize again (all already there: checked)", args.count, rerun)

        mean_png = sum(len(data) for data in encoded) / len(encoded)
        print(f"Pillow / ours PNG encode time: {pillow.cpu / ours.cpu:.2f}x; mean PNG {mean_png / 1024:.0f} KiB")
        print(f"objects: {result.objects} ({result.objects / args.count:.2f} per screenshot); "
              f"cold and warm runs agree: {cold_result.label_counts == result.label_counts}")
        print(result.summary())
        for label, n in result.label_counts:
            print(f"  {label:<26} {n}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
