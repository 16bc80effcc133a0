"""Benchmark training on the built-in synthetic data: augmentation cost, per-run overhead, throughput.

    python3 bench/bench_train.py [--screenshots 160] [--rounds 3] [--epochs 3] [--image-size 600x200]
                                 [--only augment,overhead,fullrun] [--workdir DIR]

Synthesises screenshots (``toonvision.synth``), extracts them into a crop pool
(``toonvision.extract``), splits the ``binary`` task, then measures in this one process, on
the same data (issue 7, targets 1-3):

1. ``augment``: training images/s of ``optimized`` with the fused augmentation of
   ``toonvision.augment`` / the same model and data without augmentation (target >= 0.85);
   the original's three Keras layers for reference. Each mode gets a fresh model and a warm-up
   epoch; then ``--rounds`` rounds time one epoch of every mode in turn, and the ratio of each
   round is reported (median and range), so a burst of outside load hits both modes alike. CPU
   milliseconds per image (all threads of this process) are printed beside: they barely move
   with outside load and show where the time goes.
2. ``overhead``: a run as ``toonvision train`` makes it (re-split, datasets from the process's
   decoded-crop cache, model build) from its start to its first training step, divided by a
   steady epoch (target <= 0.2); and the same for the original way: the split's files placed in
   folders and Keras' ``image_dataset_from_directory`` decoding every PNG every epoch.
3. ``fullrun``: images/s of a whole ``baseline`` run (``train.train_run``: re-split, datasets,
   fresh model, epochs with validation, test evaluation) / ``model.fit`` + ``evaluate`` of the
   same model on the same images already in memory as tensors, the ceiling (target >= 0.9).

Prints one line per figure.
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

from toonvision.augment import DEFAULT_AUGMENT  # noqa: E402
from toonvision.cache import crop_cache, forget_shared  # noqa: E402
from toonvision.datasets import from_plan  # noqa: E402
from toonvision.extract import ExtractOptions, extract  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.manifest import load_pool  # noqa: E402
from toonvision.models import build_model  # noqa: E402
from toonvision.split import plan_split, write_split  # noqa: E402
from toonvision.synth import SynthConfig, synthesize  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402

RATIOS = (0.6, 0.2, 0.2)
SEED = 0
MODEL = "optimized"
SECTIONS = ("augment", "overhead", "fullrun")


def build_pool(workdir: Path, screenshots: int) -> Layout:
    layout = Layout.from_dirs(workdir / "img", workdir / "models")
    synthesize(layout.screenshots, SynthConfig(count=screenshots, seed=SEED))
    extract(layout, ExtractOptions())
    return layout


def cache_for(layout: Layout, plan):
    return crop_cache(layout.cache, [str(layout.pool / a.crop) for a in plan.assignments])


def spread(values: list[float], digits: int = 2) -> str:
    """median [min-max] of n"""
    return (f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}] "
            f"of {len(values)}")


def timed_epoch(model, dataset, count: int, **fit) -> tuple[float, float]:
    """(images/s, CPU ms per image) of one epoch."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, **fit)
    return count / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / count


def pipeline_cost(dataset, count: int) -> float:
    """CPU ms per image of iterating the input pipeline alone (no model)."""
    cpu = time.process_time()
    for _ in dataset:
        pass
    return 1000 * (time.process_time() - cpu) / count


# -- 1: augmentation ----------------------------------------------------------------------------

def keras_layers_dataset(dataset):
    """The original's three preprocessing layers applied to each batch of ``dataset``."""
    import keras
    import tensorflow as tf

    layers = keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=1),
        keras.layers.RandomRotation(0.075, seed=2),
        keras.layers.RandomZoom(0.2, seed=3),
    ])
    return dataset.map(lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def bench_augment(layout, plan, size, batch, rounds) -> None:
    cache = cache_for(layout, plan)
    modes = {}
    for mode in ("none", "fused", "keras-layers"):
        augment = DEFAULT_AUGMENT if mode == "fused" else None
        dataset = from_plan(
            plan, layout.pool, "train", size, batch, shuffle=True, seed=SEED, augment=augment, cache=cache
        )
        count = len(dataset.file_paths)
        if mode == "keras-layers":
            dataset = keras_layers_dataset(dataset)
        model = build_model(MODEL, len(plan.classes), size, seed=SEED, steps_per_epoch=-(-count // batch))
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # traces the step, warms the pipeline
        modes[mode] = (model, dataset, count)
    speed = {mode: [] for mode in modes}
    cpu = {mode: [] for mode in modes}
    alone = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, (model, dataset, count) in modes.items():
            rate, ms = timed_epoch(model, dataset, count)
            speed[mode].append(rate)
            cpu[mode].append(ms)
            alone[mode].append(pipeline_cost(dataset, count))
    ratios = [f / n for f, n in zip(speed["fused"], speed["none"], strict=True)]
    original = [k / n for k, n in zip(speed["keras-layers"], speed["none"], strict=True)]
    print(
        f"1 augmentation overhead: training images/s with / without augmentation = {spread(ratios)}   "
        f"target >= 0.85 ({'PASS' if statistics.median(ratios) >= 0.85 else 'FAIL'})"
    )
    print(
        f"  images/s: none {spread(speed['none'], 1)}; fused {spread(speed['fused'], 1)}; "
        f"3 Keras layers (original) {spread(speed['keras-layers'], 1)}, ratio to none {spread(original)}"
    )
    for name, values in (("CPU ms per training image", cpu), ("CPU ms per image, input pipeline alone", alone)):
        print(f"  {name}: " + "; ".join(f"{mode} {spread(v, 1)}" for mode, v in values.items()))
    cpu_ratio = [n / f for n, f in zip(cpu["none"], cpu["fused"], strict=True)]
    bound = [(c - p) / (c - p + a) for c, p, a in zip(cpu["none"], alone["none"], alone["fused"], strict=True)]
    print(
        f"  CPU per image none / fused {spread(cpu_ratio)}; CPU-bound estimate "
        f"(network CPU / (network + its pipeline CPU)) {spread(bound)}"
    )


# -- 2: per-run overhead ------------------------------------------------------------------------


def _clock():
    import keras

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.first_step: float | None = None
            self.epochs: list[list[float]] = []

        def on_train_batch_begin(self, batch, logs=None):
            if self.first_step is None:
                self.first_step = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append([time.perf_counter(), 0.0])

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1][1] = time.perf_counter()

    return Clock()


def run_new_way(layout, records, task, size, batch, seed, epochs):
    """A run as train does it; (s before the first step, first epoch s, steady epoch s)."""
    import keras

    keras.backend.clear_session()
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    plan = plan_split(records, task, RATIOS, seed)
    cache = cache_for(layout, plan)
    train_ds = from_plan(
        plan, layout.pool, "train", size, batch, shuffle=True, seed=seed, augment=DEFAULT_AUGMENT, cache=cache
    )
    val_ds = from_plan(plan, layout.pool, "validate", size, batch, cache=cache)
    model = build_model(
        MODEL, len(plan.classes), size, seed=seed, steps_per_epoch=-(-len(train_ds.file_paths) // batch)
    )
    clock = _clock()
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[clock])
    return _overhead(clock, start)


def run_original_way(layout, records, task, size, batch, seed, epochs):
    """The original: the split's files placed in folders, every PNG decoded every epoch."""
    import keras
    import tensorflow as tf

    from toonvision.augment import augment_dataset

    keras.backend.clear_session()
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    plan = plan_split(records, task, RATIOS, seed)
    task_dir = write_split(plan, layout, layout.data / "bench-original")
    common = dict(
        labels="inferred",
        label_mode="binary",
        class_names=list(plan.classes),
        image_size=size,
        batch_size=batch,
        interpolation="bilinear",
        verbose=False,
    )
    train_ds = keras.utils.image_dataset_from_directory(task_dir / "train", shuffle=True, seed=seed, **common)
    train_ds = augment_dataset(train_ds, seed=seed, spec=DEFAULT_AUGMENT).prefetch(tf.data.AUTOTUNE)
    val_ds = keras.utils.image_dataset_from_directory(task_dir / "validate", shuffle=False, **common)
    count = sum(1 for _ in (task_dir / "train").rglob("*.png"))
    model = build_model(MODEL, len(plan.classes), size, seed=seed, steps_per_epoch=-(-count // batch))
    clock = _clock()
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[clock])
    return _overhead(clock, start)


def _overhead(clock, start):
    first = clock.epochs[0][1] - clock.epochs[0][0]
    steady = statistics.median(end - begin for begin, end in clock.epochs[1:])
    return clock.first_step - start, first, steady


def bench_overhead(layout, records, task, size, batch, rounds, epochs) -> None:
    plan = plan_split(records, task, RATIOS, SEED)
    forget_shared()  # an earlier figure of this process filled the cache
    start = time.perf_counter()
    cache_for(layout, plan)  # what `train` does once, before run 0
    decode = time.perf_counter() - start
    new, old = [], []
    for r in range(rounds):
        new.append(run_new_way(layout, records, task, size, batch, SEED + 1 + r, epochs))
        old.append(run_original_way(layout, records, task, size, batch, SEED + 1 + r, epochs))
    frac_new = [b / s for b, _, s in new]
    frac_old = [b / s for b, _, s in old]
    print(
        f"2 per-run overhead: run start -> first training step / steady epoch = {spread(frac_new, 3)}   "
        f"target <= 0.2 ({'PASS' if statistics.median(frac_new) <= 0.2 else 'FAIL'}); "
        f"original way {spread(frac_old, 3)}"
    )
    print(
        f"  seconds before the first step: cached {spread([b for b, _, _ in new])}, "
        f"original {spread([b for b, _, _ in old])}; steady epoch s: cached {spread([s for _, _, s in new], 1)}, "
        f"original (decoding every epoch) {spread([s for _, _, s in old], 1)}"
    )
    print(
        f"  first epoch's extra time over a steady one (tracing; decoding too in the original): "
        f"cached {spread([(f - s) / s for _, f, s in new])}, original {spread([(f - s) / s for _, f, s in old])}"
    )
    print(f"  decoding the task's {len(plan.assignments)} crops into the cache, once per process: {decode:.2f} s")


# -- 3: a full run against the in-memory ceiling -----------------------------------------------


def bench_fullrun(layout, records, task, size, batch, rounds, epochs) -> None:
    import numpy as np
    import tensorflow as tf

    from toonvision.train import TrainConfig, train_run

    config = TrainConfig(task="binary", model="baseline", epochs=epochs, seed=SEED, image_size=size, batch_size=batch)
    plan = plan_split(records, task, RATIOS, SEED)
    cache = cache_for(layout, plan)
    tensors = {}
    for split in ("train", "validate", "test"):
        xs, ys = zip(*from_plan(plan, layout.pool, split, size, batch, cache=cache).as_numpy_iterator(), strict=True)
        tensors[split] = (tf.constant(np.concatenate(xs)), tf.constant(np.concatenate(ys)))
    n_train = int(tensors["train"][0].shape[0])
    run_rates, ceiling_rates = [], []
    for _ in range(rounds):
        finished = train_run(layout, config, plan, 0, None)
        run_rates.append(epochs * n_train / finished.record.seconds)
        del finished
        import keras

        keras.backend.clear_session()
        keras.utils.set_random_seed(SEED)
        start = time.perf_counter()
        model = build_model("baseline", len(plan.classes), size, seed=SEED)
        model.fit(
            *tensors["train"],
            batch_size=batch,
            epochs=epochs,
            validation_data=tensors["validate"],
            shuffle=True,
            verbose=0,
        )
        model.evaluate(*tensors["test"], batch_size=batch, verbose=0)
        ceiling_rates.append(epochs * n_train / (time.perf_counter() - start))
    ratios = [r / c for r, c in zip(run_rates, ceiling_rates, strict=True)]
    print(
        f"3 training throughput: full run / model.fit on in-memory tensors = {spread(ratios)}   "
        f"target >= 0.9 ({'PASS' if statistics.median(ratios) >= 0.9 else 'FAIL'})"
    )
    print(
        f"  images/s ({epochs} epochs of {n_train} crops, baseline, with validation and test): "
        f"full run {spread(run_rates, 1)}, in-memory ceiling {spread(ceiling_rates, 1)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each timed figure")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of a timed run (overhead, fullrun)")
    parser.add_argument("--image-size", default="600x200", help="HEIGHTxWIDTH")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--workdir", type=Path, help="keep the pool here (default: a temp folder)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.image_size.lower().split("x"))
    sections = [s.strip() for s in args.only.split(",") if s.strip()]

    import keras
    import tensorflow as tf

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toonvision-bench-train-"))
    try:
        start = time.perf_counter()
        layout = (
            build_pool(workdir, args.screenshots)
            if not (workdir / "img" / "unsorted").is_dir()
            else Layout.from_dirs(workdir / "img", workdir / "models")
        )
        records, _ = load_pool(layout)
        task = get_task("binary")
        plan = plan_split(records, task, RATIOS, SEED)
        print(
            f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}, TensorFlow {tf.__version__}, Keras {keras.__version__}, devices "
            f"{[d.device_type for d in tf.config.list_physical_devices()]}"
        )
        print(
            f"# pool: {len(records)} crops from {args.screenshots} synthetic screenshots "
            f"(ready in {time.perf_counter() - start:.1f} s); task binary, {len(plan.files('train'))} training "
            f"crops, {MODEL} at {size[0]}x{size[1]}, batch {args.batch_size}"
        )
        if "augment" in sections:
            bench_augment(layout, plan, size, args.batch_size, args.rounds)
        if "overhead" in sections:
            bench_overhead(layout, records, task, size, args.batch_size, args.rounds, args.epochs)
        if "fullrun" in sections:
            bench_fullrun(layout, records, task, size, args.batch_size, args.rounds, args.epochs)
        print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
