"""Benchmark the memory of training: peak RSS against TensorFlow's idle footprint, RAM and disk cache.

    python3 bench/bench_memory.py [--screenshots 160] [--big 20000] [--big-size 96x64] [--workdir DIR]

Each figure is the peak resident set (``VmHWM`` of /proc/self/status) of a fresh child process,
so one measurement cannot inflate the next (issue 7, target 6):

1. TensorFlow's idle footprint: TensorFlow and Keras imported, the model built and compiled,
   and trained for one step on one in-memory batch (the fixed cost of training at all);
2. a ``toonvision train`` run (``optimized``, 600x200, 2 epochs) on the synthetic pool: its
   peak against idle + 1.5 x the uint8 size of the run's images at the model's input size
   (the original held them as float32 arrays, 4x that);
3. the same training on ``--big`` synthetic crops at a small image size, where the decoded
   crops are larger than the model's images and go to the disk cache by themselves; then at
   a larger size, once with the default budget (RAM) and once with a RAM budget smaller than
   the pool (``img/.cache`` on disk): the disk run's peak stays near idle.

The big pool is made through the product: synthetic screenshots whose XML is given extra
objects (each true box again, shifted a few pixels) until they hold ``--big`` crops, then
``toonvision extract``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MB = 1024 * 1024
SEED = 0


def peak_rss() -> int:
    """This process's peak resident set, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- children ----------------------------------------------------------------------------------

def child_idle(size: tuple[int, int], batch: int) -> dict:
    import numpy as np

    from toonvision.models import build_model
    from toonvision.train import free_large_buffers_eagerly

    free_large_buffers_eagerly()  # as a training run does, so both are measured with one allocator setting
    model = build_model("optimized", 2, size, seed=SEED)
    after_build = peak_rss()
    x = np.zeros((batch, *size, 3), "float32")
    y = np.zeros((batch, 1), "float32")
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    return {"built": after_build, "peak": peak_rss()}


def child_train(img_dir: str, size: tuple[int, int], epochs: int, budget: str | None) -> dict:
    from toonvision.cache import crop_cache, forget_shared
    from toonvision.layout import Layout
    from toonvision.train import TrainConfig, train

    layout = Layout.from_dirs(img_dir, Path(img_dir).parent / f"models-{os.getpid()}")
    start = time.perf_counter()
    result = train(layout, TrainConfig(task="binary", model="optimized", runs=1, epochs=epochs, seed=SEED,
                                       image_size=size, cache_budget=budget, overwrite=True))
    seconds = time.perf_counter() - start
    # where the run's crops were: asking again returns the same cache, with nothing to decode
    on_disk = crop_cache(layout.cache, task_paths(layout), budget, size).on_disk
    forget_shared()
    shutil.rmtree(layout.models_dir, ignore_errors=True)
    return {"peak": peak_rss(), "seconds": seconds, "on_disk": on_disk, "runs": len(result.runs)}


def run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- pools ---------------------------------------------------------------------------------------

def standard_pool(workdir: Path, screenshots: int):
    from toonvision.extract import ExtractOptions, extract
    from toonvision.layout import Layout
    from toonvision.synth import SynthConfig, synthesize

    layout = Layout.from_dirs(workdir / "img", workdir / "models")
    if not layout.manifest.is_file():
        synthesize(layout.screenshots, SynthConfig(count=screenshots, seed=SEED))
        extract(layout, ExtractOptions())
    return layout


def big_pool(workdir: Path, crops: int):
    """``crops`` crops from synthetic screenshots whose XML lists each true box several times, shifted."""
    from toonvision.extract import ExtractOptions, discover, extract
    from toonvision.layout import Layout
    from toonvision.synth import SynthConfig, synthesize
    from toonvision.voc import Box, VocObject, format_annotation, load_annotation

    layout = Layout.from_dirs(workdir / "img-big", workdir / "models")
    if layout.manifest.is_file():
        return layout
    shots = max(1, crops // 70)
    synthesize(layout.screenshots, SynthConfig(count=shots, seed=SEED))
    found = discover(layout.screenshots).screenshots
    objects = sum(len(load_annotation(s.xml).annotation.objects) for s in found)
    copies = -(-crops // objects)
    rng = random.Random(SEED)
    for shot in found:
        annotation = load_annotation(shot.xml).annotation
        extra = []
        for obj in annotation.objects:
            b = obj.box
            for _ in range(copies - 1):
                dx, dy, dw, dh = (rng.randint(-6, 6) for _ in range(4))
                box = Box(max(0, b.xmin + dx), max(0, b.ymin + dy),
                          min(799, b.xmax + dx + dw), min(599, b.ymax + dy + dh))
                extra.append(VocObject(obj.name, box))
        more = dataclasses.replace(annotation, objects=annotation.objects + tuple(extra))
        shot.xml.write_text(format_annotation(more))
    extract(layout, ExtractOptions())
    return layout


def task_paths(layout) -> list[str]:
    """The crops of the binary task, the ones its training reads."""
    from toonvision.manifest import load_pool
    from toonvision.tasks import get_task

    records, _ = load_pool(layout)
    task = get_task("binary")
    return [str(layout.pool / r.crop) for r in records if task.class_of(r.label) is not None]


def image_bytes(layout, size: tuple[int, int]) -> tuple[int, int, int]:
    """(crops of the binary task, uint8 bytes at the model's input size, uint8 bytes decoded at their own size)."""
    from toonvision.cache import identify

    paths = task_paths(layout)
    native = sum(estimate for _, estimate in identify(paths))
    return len(paths), len(paths) * size[0] * size[1] * 3, native


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--screenshots", type=int, default=160)
    parser.add_argument("--image-size", default="600x200")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--big", type=int, default=20000, help="crops of the big pool (0: skip)")
    parser.add_argument("--big-size", default="96x64", help="image size of the big pool's training")
    parser.add_argument("--roomy-size", default="192x128", help="an image size at which the big pool fits RAM")
    parser.add_argument("--big-budget", default="64M", help="RAM budget smaller than the big pool")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "idle":
            out = child_idle(parse_size(rest[0]), int(rest[1]))
        else:
            out = child_train(rest[0], parse_size(rest[1]), int(rest[2]), None if rest[3] == "default" else rest[3])
        print(json.dumps(out))
        return

    size, big_size = parse_size(args.image_size), parse_size(args.big_size)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toonvision-bench-memory-"))
    try:
        import tensorflow as tf

        print(
            f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // MB} MiB RAM, TensorFlow {tf.__version__}"
        )
        layout = standard_pool(workdir, args.screenshots)
        n, at_size, native = image_bytes(layout, size)
        idle = run_child("idle", args.image_size, "32")
        run = run_child("train", str(layout.img_dir), args.image_size, str(args.epochs), "default")
        bound = idle["peak"] + 1.5 * at_size
        print(
            f"6a training memory ({n} crops, optimized {size[0]}x{size[1]}, {args.epochs} epochs): peak RSS "
            f"{run['peak'] / MB:.0f} MiB; bound idle {idle['peak'] / MB:.0f} + 1.5 x {at_size / MB:.0f} MiB of uint8 "
            f"images = {bound / MB:.0f} MiB   ({'PASS' if run['peak'] <= bound else 'FAIL'})"
        )
        print(
            f"  TensorFlow + model built, no step: {idle['built'] / MB:.0f} MiB; the run's decoded crops at their own "
            f"size {native / MB:.0f} MiB (cached in RAM); the original's float32 arrays would be "
            f"{4 * at_size / MB:.0f} MiB; over idle: {(run['peak'] - idle['peak']) / MB:.0f} MiB"
        )
        if args.big:
            start = time.perf_counter()
            big = big_pool(workdir, args.big)
            made = time.perf_counter() - start
            n_big, at_big, native_big = image_bytes(big, big_size)
            idle_big = run_child("idle", args.big_size, "32")
            auto = run_child("train", str(big.img_dir), args.big_size, "1", "default")
            bound_big = idle_big["peak"] + 1.5 * at_big
            print(
                f"6b big pool ({n_big} crops, made in {made:.0f} s; decoded {native_big / MB:.0f} MiB at their own "
                f"size, {at_big / MB:.0f} MiB at {big_size[0]}x{big_size[1]}; optimized, 1 epoch): peak RSS "
                f"{auto['peak'] / MB:.0f} MiB ({auto['seconds']:.0f} s, cache on "
                f"{'disk' if auto['on_disk'] else 'RAM'}); bound idle {idle_big['peak'] / MB:.0f} + 1.5 x "
                f"{at_big / MB:.0f} MiB = {bound_big / MB:.0f} MiB   "
                f"({'PASS' if auto['peak'] <= bound_big else 'FAIL'})"
            )
            roomy = parse_size(args.roomy_size)
            _, at_roomy, _ = image_bytes(big, roomy)
            in_ram = run_child("train", str(big.img_dir), args.roomy_size, "1", "default")
            on_disk = run_child("train", str(big.img_dir), args.roomy_size, "1", args.big_budget)
            print(
                f"6c the same pool at {roomy[0]}x{roomy[1]} ({at_roomy / MB:.0f} MiB of uint8 images), 1 epoch: "
                f"default budget -> cache in {'disk' if in_ram['on_disk'] else 'RAM'}, peak "
                f"{in_ram['peak'] / MB:.0f} MiB ({in_ram['seconds']:.0f} s); budget {args.big_budget} -> cache on "
                f"{'disk' if on_disk['on_disk'] else 'RAM'}, peak {on_disk['peak'] / MB:.0f} MiB "
                f"({on_disk['seconds']:.0f} s)"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
