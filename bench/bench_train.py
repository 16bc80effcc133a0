"""Benchmark a training run on the built-in synthetic data: throughput and per-run overhead.

    python3 bench/bench_train.py [--screenshots 160] [--epochs 3] [--image-size 600x200] [--workdir DIR]

Synthesises screenshots (``toonvision.synth``), extracts them into a crop pool, splits the
``binary`` task, then measures in this one process, on the same data:

1. training images/s of ``optimized`` without augmentation, with the fused augmentation of
   ``toonvision.augment`` (the product), and with the original's three Keras preprocessing
   layers applied to each batch (for reference); each after a warm-up epoch, so the cache is
   full and the step functions are traced, with the modes' epochs interleaved and the best
   epoch of each kept (robust to load from other processes);
2. the time a run spends before its first training step (re-split, dataset build, model build,
   fit set-up), as a fraction of one steady epoch; and how much longer the first epoch is than
   a steady one (decoding every crop once, filling the cache, tracing).

Prints one line per figure.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from toonvision.augment import DEFAULT_AUGMENT  # noqa: E402
from toonvision.datasets import from_plan  # noqa: E402
from toonvision.extract import ExtractOptions, extract  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.models import build_model  # noqa: E402
from toonvision.split import load_pool, plan_split  # noqa: E402
from toonvision.synth import SynthConfig, synthesize  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402

RATIOS = (0.6, 0.2, 0.2)
SEED = 0
MODEL = "optimized"


def build_pool(workdir: Path, screenshots: int) -> Layout:
    layout = Layout.from_dirs(workdir / "img", workdir / "models")
    synthesize(layout.screenshots, SynthConfig(count=screenshots, seed=SEED))
    extract(layout, ExtractOptions())
    return layout


def training_setup(layout, plan, size, batch, mode):
    """A fresh model and its training dataset for one augmentation mode, warmed up by one epoch."""
    import keras

    augment = DEFAULT_AUGMENT if mode == "fused" else None
    dataset = from_plan(plan, layout.pool, "train", size, batch, shuffle=True, seed=SEED, augment=augment)
    count = len(dataset.file_paths)
    if mode == "keras-layers":
        import tensorflow as tf

        layers = keras.Sequential([
            keras.layers.RandomFlip("horizontal", seed=1),
            keras.layers.RandomRotation(0.075, seed=2),
            keras.layers.RandomZoom(0.2, seed=3),
        ])
        dataset = dataset.map(lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    steps = -(-count // batch)
    model = build_model(MODEL, len(plan.classes), size, seed=SEED, steps_per_epoch=steps)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # fills the cache, traces the step
    return model, dataset, count


def throughput(layout, plan, size, batch, rounds, modes) -> tuple[dict[str, float], dict[str, float]]:
    """Training and pipeline-only images/s per mode: timed in turn (A, B, C, A, B, C, ...), best of ``rounds``.

    Interleaving and taking the best epoch keep a burst of load on a shared machine from
    landing on one mode only.
    """
    setups = {mode: training_setup(layout, plan, size, batch, mode) for mode in modes}
    pipelines = pipeline_throughput(setups, rounds)
    best = dict.fromkeys(modes, 0.0)
    for _ in range(rounds):
        for mode, (model, dataset, count) in setups.items():
            start = time.perf_counter()
            model.fit(dataset, epochs=1, verbose=0, shuffle=False)
            best[mode] = max(best[mode], count / (time.perf_counter() - start))
    return best, pipelines


def pipeline_throughput(setups, rounds) -> dict[str, float]:
    """Images/s of the input pipelines alone (no model): the cost of augmentation by itself."""
    best = dict.fromkeys(setups, 0.0)
    for _ in range(rounds):
        for mode, (_, dataset, count) in setups.items():
            start = time.perf_counter()
            for _ in dataset:
                pass
            best[mode] = max(best[mode], count / (time.perf_counter() - start))
    return best


def run_overhead(layout, records, task, size, batch) -> tuple[float, float, float]:
    """A run as ``train`` does it; returns (s before the first step, first epoch s, steady epoch s)."""
    import keras

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.first_step = None
            self.epochs: list[tuple[float, float]] = []

        def on_train_batch_begin(self, batch, logs=None):
            if self.first_step is None:
                self.first_step = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append((time.perf_counter(), 0.0))

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1] = (self.epochs[-1][0], time.perf_counter())

    keras.backend.clear_session()
    start = time.perf_counter()
    seed = SEED + 1
    keras.utils.set_random_seed(seed)
    plan = plan_split(records, task, RATIOS, seed)
    train_ds = from_plan(plan, layout.pool, "train", size, batch, shuffle=True, seed=seed, augment=DEFAULT_AUGMENT)
    val_ds = from_plan(plan, layout.pool, "validate", size, batch)
    steps = -(-len(train_ds.file_paths) // batch)
    model = build_model(MODEL, len(plan.classes), size, seed=seed, steps_per_epoch=steps)
    clock = Clock()
    model.fit(train_ds, validation_data=val_ds, epochs=3, verbose=0, shuffle=False, callbacks=[clock])
    first = clock.epochs[0][1] - clock.epochs[0][0]
    steady = min(end - begin for begin, end in clock.epochs[1:])
    return clock.first_step - start, first, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per mode (best one counts)")
    parser.add_argument("--image-size", default="600x200", help="HEIGHTxWIDTH")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, help="keep the pool here (default: a temp folder)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.image_size.lower().split("x"))

    import keras
    import tensorflow as tf

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toonvision-bench-train-"))
    try:
        start = time.perf_counter()
        layout = build_pool(workdir, args.screenshots)
        records, _ = load_pool(layout)
        task = get_task("binary")
        plan = plan_split(records, task, RATIOS, SEED)
        n_train = len(plan.files("train"))
        print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.system()}, "
              f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices "
              f"{[d.device_type for d in tf.config.list_physical_devices()]}")
        print(f"# pool: {len(records)} crops from {args.screenshots} synthetic screenshots "
              f"(built in {time.perf_counter() - start:.1f} s); task binary, {n_train} training crops, "
              f"{MODEL} at {size[0]}x{size[1]}, batch {args.batch_size}")

        figures, pipelines = throughput(layout, plan, size, args.batch_size, args.epochs, ("none", "fused", "keras-layers"))
        print(f"input pipeline alone, images/s: none {pipelines['none']:.1f}, fused augmentation "
              f"{pipelines['fused']:.1f}, 3 Keras layers {pipelines['keras-layers']:.1f}   "
              f"(fused / Keras layers {pipelines['fused'] / pipelines['keras-layers']:.2f})")
        base = figures["none"]
        print(f"training images/s, no augmentation:            {base:8.1f}")
        print(f"training images/s, fused augmentation:         {figures['fused']:8.1f}"
              f"   ratio to none {figures['fused'] / base:.2f}")
        print(f"training images/s, 3 Keras layers (original):  {figures['keras-layers']:8.1f}"
              f"   ratio to none {figures['keras-layers'] / base:.2f}")

        before, first, steady = run_overhead(layout, records, task, size, args.batch_size)
        print(f"run start -> first training step:              {before:8.2f} s"
              f"   fraction of a steady epoch ({steady:.2f} s) {before / steady:.2f}")
        print(f"first epoch (decode + cache + tracing):         {first:8.2f} s"
              f"   extra over a steady epoch {(first - steady) / steady:.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
