"""Benchmark ``toonvision split`` on a synthetic pool: 100,000 crops split and linked in seconds.

    python3 bench/bench_split.py [--crops 100000] [--small 10000] [--task label] [--workdir DIR]

Builds a pool of tiny PNG files (hard links to a few real PNGs, so building it is quick) and a
manifest of crops from screenshots holding 1-8 crops each, with the 43 ToonVision labels at
uneven frequencies. Then, at two sizes, times: the whole command (read manifest, plan, link,
swap), the pure planner grouped and ungrouped, writing a fresh split, replacing an existing one,
and reading it back, each the fastest of --repeat runs. Prints one line per figure with the
time per crop at both sizes (their ratio near 1 means linear scaling), all measured in this one
process.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import io
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from toonvision.layout import Layout  # noqa: E402
from toonvision.manifest import CropRecord, load_pool, save_manifest  # noqa: E402
from toonvision.split import load_split, plan_split, run_split, write_split  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402

NAMES = {
    "bb": "flunky pencilpusher yesman micromanager downsizer headhunter corporateraider thebigcheese",
    "lb": "bottomfeeder bloodsucker doubletalker ambulancechaser backstabber spindoctor legaleagle bigwig",
    "cb": "shortchange pennypincher tightwad beancounter numbercruncher moneybags loanshark robberbaron",
    "sb": "coldcaller telemarketer namedropper gladhander movershaker twoface themingler mrhollywood",
}
ANIMALS = "bear cat crocodile deer dog duck horse monkey mouse pig rabbit".split()
LABELS = [f"cog_{suit}_{name}" for suit, names in NAMES.items() for name in names.split()] + [
    f"toon_{animal}" for animal in ANIMALS]
DISTINCT_PNGS = 64  # pool files are hard links to these (an inode allows ~65,000 links)


def synth_records(n: int, seed: int = 0) -> list[CropRecord]:
    """``n`` crops from screenshots of 1-8 crops, labels at uneven frequencies (top Cogs rare)."""
    rng = random.Random(seed)
    weights = [1 + 9 * rng.random() for _ in LABELS]
    records: list[CropRecord] = []
    index: dict[str, int] = {}
    shot = 0
    while len(records) < n:
        sha = f"{shot:064x}"
        for _ in range(min(rng.randint(1, 8), n - len(records))):
            label = rng.choices(LABELS, weights)[0]
            group = label.split("_")[0]
            i = index[label] = index.get(label, -1) + 1
            w, h = rng.randint(20, 200), rng.randint(60, 500)
            records.append(CropRecord(f"{group}/{label}_{i}.png", label, group, i, f"street/shot{shot}.png",
                                      0, 0, w, h, w, h, sha, f"{len(records):064x}"))
        shot += 1
    return records


def build_pool(img_dir: Path, records: list[CropRecord]) -> Layout:
    layout = Layout.from_dirs(img_dir, img_dir.parent / "models")
    sources = layout.img_dir / "png"
    sources.mkdir(parents=True)
    for k in range(DISTINCT_PNGS):
        buffer = io.BytesIO()
        Image.new("RGB", (20, 60), (k * 4, 100, 200 - k)).save(buffer, format="PNG")
        (sources / f"{k}.png").write_bytes(buffer.getvalue())
    for group in {r.group for r in records}:
        (layout.pool / group).mkdir(parents=True)
    pool = os.fspath(layout.pool)
    for n, record in enumerate(records):
        os.link(sources / f"{n % DISTINCT_PNGS}.png", f"{pool}/{record.crop}")
    save_manifest(layout.manifest, records)
    return layout


def best_of(repeat: int, function, *args, before=None, **kwargs) -> tuple[tuple[float, float], object]:
    """The fastest (wall, CPU) seconds of ``repeat`` calls, ``before`` untimed ahead of each.

    CPU time (this process, kernel included) is shown beside wall time because other
    processes on a shared machine slow the wall clock but not the work done.
    """
    wall = cpu = float("inf")
    result = None
    for _ in range(repeat):
        if before is not None:
            before()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return (wall, cpu), result


def measure(workdir: Path, n: int, task_name: str, repeat: int) -> dict[str, tuple[float, float]]:
    task = get_task(task_name)
    records = synth_records(n)
    layout = build_pool(workdir / f"pool{n}" / "img", records)
    task_dir = layout.task_data(task.name)
    ratios = (0.6, 0.2, 0.2)
    fresh = functools.partial(shutil.rmtree, task_dir, ignore_errors=True)
    seeds = iter(range(1000))
    times = {}
    times["command"], _ = best_of(repeat, run_split, layout, task, ratios, 1, min_per_class=3, before=fresh)
    times["load_pool"], (kept, _) = best_of(repeat, load_pool, layout)
    times["plan_grouped"], plan = best_of(repeat, plan_split, kept, task, ratios, 2, min_per_class=3)
    times["plan_ungrouped"], _ = best_of(repeat, plan_split, kept, task, ratios, 2, group=False, min_per_class=3)
    times["write_fresh"], _ = best_of(repeat, write_split, plan, layout, before=fresh)
    plans = [plan_split(kept, task, ratios, seed, min_per_class=3) for seed in (3, 4)]
    times["write_replace"], _ = best_of(repeat, lambda: write_split(plans[next(seeds) % 2], layout))
    times["load_split"], _ = best_of(repeat, load_split, task_dir)
    shutil.rmtree(layout.img_dir.parent)
    return times


FIGURES = [
    ("command", "toonvision split (read manifest, plan, link, swap)"),
    ("load_pool", "read manifest + check pool files"),
    ("plan_grouped", "plan_split, grouped by screenshot"),
    ("plan_ungrouped", "plan_split, --no-group"),
    ("write_fresh", "write_split, new task folder"),
    ("write_replace", "write_split, replacing a split"),
    ("load_split", "load_split (read split.csv back)"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000, help="the 1x size for the linearity ratio")
    parser.add_argument("--task", default="label", help="task to split (label: 43 classes)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the synthetic pools go (temp)")
    parser.add_argument("--repeat", type=int, default=3, help="report the fastest of this many runs")
    args = parser.parse_args(argv)
    logging.getLogger("toonvision").setLevel(logging.ERROR)  # no "class left out" lines at small sizes

    workdir = Path(tempfile.mkdtemp(prefix="toonvision-bench-split-", dir=args.workdir))
    try:
        small = measure(workdir, args.small, args.task, args.repeat)
        large = measure(workdir, args.crops, args.task, args.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"# bench_split {datetime.date.today()} {platform.node()} {platform.processor() or platform.machine()} "
          f"{os.cpu_count()} cpus, python {platform.python_version()}, task {args.task}, "
          f"fastest of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    wall, cpu = large["command"]
    verdict = "ok" if wall <= 10 else "over"
    print(f"split {args.crops} crops: {wall:.2f} s wall, {cpu:.2f} s cpu (target for 100000: <= 10 s wall: {verdict})")
    for key, what in FIGURES:
        (wall_small, _), (wall_large, cpu_large) = small[key], large[key]
        per_small = wall_small / args.small * 1e6
        per_large = wall_large / args.crops * 1e6
        print(f"{what}: {wall_large:.2f} s wall ({cpu_large:.2f} s cpu) for {args.crops}; per crop "
              f"{per_small:.1f} us at {args.small}, {per_large:.1f} us at {args.crops}; "
              f"ratio {per_large / per_small:.2f}")

if __name__ == "__main__":
    main()
