"""Benchmark runs on Ray against runs here: runs/hour, Ray's per-run overhead, and how crops travel.

    python3 bench/bench_ray.py [--screenshots 60] [--runs 4] [--epochs 2] [--image-size 600x200]
                               [--workers 2] [--workdir DIR]

Synthesises screenshots, extracts them into a crop pool, then trains the ``binary`` task (the
default ``baseline`` model) twice with the same seeds (issue 16):

1. ``local``: ``train`` as the CLI runs it, one run at a time in this process (TensorFlow
   using every core).
2. ``ray``: the same training with ``--executor ray`` on a local cluster of ``--workers`` CPUs
   started here, one single-threaded worker per CPU (``--cpus-per-run 1``). The cluster's
   start is timed apart; each worker's first run pays its TensorFlow import, as in any command.

Printed: runs/hour of each and their ratio; Ray's overhead per run, i.e. worker time not spent
inside ``train_run`` (workers x wall - sum of the runs' own seconds, over runs), as a fraction
of a run; and its parts: an empty task's round trip, the model's .keras bytes (size, time to
save), and the crops shipped as PNG bytes (put + write + decode in a worker) against decoded
uint8 arrays (put + get) and against decoding from the shared img/ path.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from toonvision.cache import CropCache  # noqa: E402
from toonvision.executors import (  # noqa: E402
    ExecutorOptions,
    model_bytes,
    open_executor,
    start_local_cluster,
)
from toonvision.extract import ExtractOptions, extract  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.manifest import load_pool  # noqa: E402
from toonvision.models import build_model  # noqa: E402
from toonvision.synth import SynthConfig, synthesize  # noqa: E402
from toonvision.train import TrainConfig, train  # noqa: E402

SEED = 0


def build_pool(workdir: Path, screenshots: int) -> Layout:
    layout = Layout.from_dirs(workdir / "img", workdir / "models")
    synthesize(layout.screenshots, SynthConfig(count=screenshots, seed=SEED))
    extract(layout, ExtractOptions())
    return layout


def timed_training(layout: Layout, config: TrainConfig, executor=None) -> tuple[float, list[float]]:
    """(wall seconds, each run's own seconds) of one training."""
    start = time.perf_counter()
    result = train(layout, config, executor=executor)
    return time.perf_counter() - start, [r.seconds for r in result.runs]


def crop_shipping(ray, paths: list[Path]) -> dict[str, float]:
    """Seconds and MB to get the crops into a worker: PNG bytes (+ decode), decoded arrays, or a shared path."""
    from toonvision.decode import decode_files

    blob = {str(i): p.read_bytes() for i, p in enumerate(paths)}
    arrays = list(decode_files([str(p) for p in paths]))

    @ray.remote(num_cpus=1)
    def receive_png(ref_list) -> float:
        start = time.perf_counter()
        data = ray.get(ref_list[0])
        folder = Path(tempfile.mkdtemp(prefix="toonvision-bench-ray-"))
        try:
            files = []
            for name, content in data.items():
                (folder / f"{name}.png").write_bytes(content)
                files.append(folder / f"{name}.png")
            CropCache().ensure(files)
            return time.perf_counter() - start
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @ray.remote(num_cpus=1)
    def receive_arrays(ref_list) -> float:
        start = time.perf_counter()
        data = ray.get(ref_list[0])
        assert len(data) == len(paths)
        return time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def read_shared(files) -> float:
        start = time.perf_counter()
        CropCache().ensure(files)
        return time.perf_counter() - start

    out = {"png_mb": sum(map(len, blob.values())) / 2**20, "uint8_mb": sum(a.nbytes for a in arrays) / 2**20}
    start = time.perf_counter()
    ref = ray.put(blob)
    out["png_put"] = time.perf_counter() - start
    out["png_worker"] = statistics.median(ray.get([receive_png.remote([ref]) for _ in range(3)]))
    start = time.perf_counter()
    ref = ray.put(arrays)
    out["uint8_put"] = time.perf_counter() - start
    out["uint8_worker"] = statistics.median(ray.get([receive_arrays.remote([ref]) for _ in range(3)]))
    out["shared_worker"] = statistics.median(ray.get([read_shared.remote([str(p) for p in paths]) for _ in range(3)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=int, default=60)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", default="600x200", help="HEIGHTxWIDTH")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster (1 per worker)")
    parser.add_argument("--workdir", type=Path, help="keep the pool here (default: a temp folder)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.image_size.lower().split("x"))

    import keras
    import tensorflow as tf

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toonvision-bench-ray-"))
    try:
        layout = build_pool(workdir, args.screenshots) if not (workdir / "img" / "unsorted").is_dir() else \
            Layout.from_dirs(workdir / "img", workdir / "models")
        records, _ = load_pool(layout)
        print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}, TensorFlow {tf.__version__}, Keras {keras.__version__}")
        print(f"# pool: {len(records)} crops from {args.screenshots} synthetic screenshots; task binary, baseline "
              f"at {size[0]}x{size[1]}, {args.runs} runs x {args.epochs} epochs")
        config = TrainConfig(task="binary", runs=args.runs, epochs=args.epochs, seed=SEED, image_size=size,
                             overwrite=True)

        local_wall, local_runs = timed_training(Layout.from_dirs(layout.img_dir, workdir / "models-local"), config)
        print(f"local: {local_wall:.1f} s, {3600 * args.runs / local_wall:.0f} runs/hour; a run's own time "
              f"{statistics.median(local_runs):.1f} s (median)")

        start = time.perf_counter()
        start_local_cluster(num_cpus=args.workers)
        import ray
        print(f"ray: local cluster of {args.workers} CPUs started in {time.perf_counter() - start:.1f} s")
        with open_executor(ExecutorOptions(name="ray", cpus_per_run=1)) as executor:  # joins the cluster above
            ray_wall, ray_runs = timed_training(Layout.from_dirs(layout.img_dir, workdir / "models-ray"), config,
                                                executor)
            mean_run = statistics.mean(ray_runs)
            overhead = (args.workers * ray_wall - sum(ray_runs)) / args.runs
            print(f"ray: {ray_wall:.1f} s, {3600 * args.runs / ray_wall:.0f} runs/hour with {args.workers} "
                  f"single-threaded workers; a run's own time {statistics.median(ray_runs):.1f} s (median)")
            print(f"ratio ray/local runs/hour: {local_wall / ray_wall:.2f}")
            print(f"ray overhead per run (worker time outside train_run, incl. idle and TensorFlow import): "
                  f"{overhead:.1f} s = {overhead / mean_run:.2f} of a run")

            @ray.remote(num_cpus=1)
            def empty() -> int:
                return os.getpid()

            ray.get([empty.remote() for _ in range(args.workers)])
            trips = []
            for _ in range(20):
                start = time.perf_counter()
                ray.get(empty.remote())
                trips.append(time.perf_counter() - start)
            print(f"ray: empty task round trip {1000 * statistics.median(trips):.1f} ms (median of 20)")

            model = build_model("baseline", 2, size)
            start = time.perf_counter()
            data = model_bytes(model)
            print(f"model as .keras bytes: {len(data) / 2**20:.1f} MB, saved in {time.perf_counter() - start:.2f} s")

            ship = crop_shipping(ray, [layout.pool / r.crop for r in records])
            print(f"crops as PNG bytes: {ship['png_mb']:.1f} MB, put {ship['png_put']:.3f} s, worker get + write + "
                  f"decode {ship['png_worker']:.3f} s")
            print(f"crops as decoded uint8: {ship['uint8_mb']:.1f} MB, put {ship['uint8_put']:.3f} s, worker get "
                  f"{ship['uint8_worker']:.3f} s")
            print(f"crops read from the shared img/ path: worker decode {ship['shared_worker']:.3f} s")
        ray.shutdown()
        print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
