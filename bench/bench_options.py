"""Benchmark the per-run cost of train's options: best-epoch keeping, validation macro-F1, the ensemble.

    python3 bench/bench_options.py [--screenshots 150] [--task suit] [--runs 3] [--epochs 8]
                                   [--image-size 132x44] [--ensemble 3] [--workdir DIR]

Synthesises screenshots and extracts them (``toonvision.synth``, ``toonvision.extract``), then
trains once, in this one process, with ``toonvision.train.train`` at its defaults (``--select
val_macro_f1``, best-epoch restore, class weights) plus ``--ensemble K`` (issue 13). The parts
each option adds are timed where they run, by wrapping them:

1. best-epoch keeping: ``best_epoch_callback``'s epoch-end and train-end hooks, less the
   macro-F1 below (copying the weights of each better epoch, restoring the best one);
2. validation macro-F1 per epoch (what ``--select val_macro_f1`` costs over ``val_loss``):
   predicting the validation split once per epoch;
3. ensemble members: saving each run that is among the K best to ``runs/run_<k>.keras``;
4. the ensemble itself: loading the members, building, scoring and saving ``ensemble.keras``,
   once per training.

Each is printed as seconds and as a fraction of the mean run (the runs' own ``seconds`` in
``runs.csv``, which include 1-3).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import toonvision.ledger as ledger_module  # noqa: E402
import toonvision.train as train_module  # noqa: E402
from toonvision.extract import ExtractOptions, extract  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.ledger import LEDGER  # noqa: E402
from toonvision.synth import SynthConfig, synthesize  # noqa: E402
from toonvision.train import TrainConfig, train  # noqa: E402

SEED = 0
MODEL = "baseline"


class Clock:
    """Seconds spent in each named part, summed over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def timed(self, name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)
        return wrapper


def instrument(clock: Clock) -> None:
    """Wrap the parts the options add, where train calls them (module globals, looked up per call)."""
    keep_epochs = train_module.best_epoch_callback

    def timed_callback(select, patience=None, macro_f1_of=None):
        callback = keep_epochs(select, patience, clock.timed("val_macro_f1", macro_f1_of) if macro_f1_of else None)
        epoch_end, train_end = callback.on_epoch_end, callback.on_train_end

        def on_epoch_end(epoch, logs=None):
            before = clock.seconds["val_macro_f1"]
            start = time.perf_counter()
            epoch_end(epoch, logs)
            clock.seconds["keep"] += time.perf_counter() - start - (clock.seconds["val_macro_f1"] - before)

        callback.on_epoch_end, callback.on_train_end = on_epoch_end, clock.timed("keep", train_end)
        return callback

    train_module.best_epoch_callback = timed_callback
    train_module._save_ensemble = clock.timed("ensemble", train_module._save_ensemble)
    save = ledger_module.save_model

    def timed_save(model, path):
        if path.name == ledger_module._MEMBER_MODEL:
            with clock.part("members"):
                return save(model, path)
        return save(model, path)

    ledger_module.save_model = timed_save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=int, default=150)
    parser.add_argument("--task", default="suit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", default="132x44", help="HEIGHTxWIDTH")
    parser.add_argument("--ensemble", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep the pool here (default: a temp folder)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.image_size.lower().split("x"))

    import keras
    import tensorflow as tf

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toonvision-bench-options-"))
    try:
        layout = Layout.from_dirs(workdir / "img", workdir / "models")
        if not layout.pool.is_dir():
            synthesize(layout.screenshots, SynthConfig(count=args.screenshots, seed=SEED))
            extract(layout, ExtractOptions())
        print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}, TensorFlow {tf.__version__}, Keras {keras.__version__}")
        clock = Clock()
        instrument(clock)
        config = TrainConfig(task=args.task, model=MODEL, runs=args.runs, epochs=args.epochs, image_size=size,
                             ensemble=args.ensemble, seed=SEED, overwrite=True)
        start = time.perf_counter()
        train(layout, config)
        total = time.perf_counter() - start
        rows = list(csv.DictReader((layout.task_models(args.task) / LEDGER).open()))
        run_s = sum(float(r["seconds"]) for r in rows) / len(rows)
        epochs = sum(int(r["epochs"]) for r in rows)
        print(f"# {args.task}, {MODEL} at {size[0]}x{size[1]}, {len(rows)} runs, {epochs} epochs in all "
              f"(patience {config.patience}), ensemble of {args.ensemble}; training took {total:.1f} s, "
              f"a run {run_s:.1f} s on average")
        parts = (
            ("best-epoch keeping (copy + restore weights)", "keep", len(rows)),
            ("validation macro-F1 each epoch (--select val_macro_f1)", "val_macro_f1", len(rows)),
            ("ensemble member saves (runs/run_<k>.keras)", "members", len(rows)),
            ("ensemble build, score and save (once per training)", "ensemble", len(rows)),
        )
        for label, name, per in parts:
            seconds = clock.seconds[name]
            print(f"{label}: {seconds:.2f} s in {clock.calls[name]} calls, {seconds / per:.3f} s per run "
                  f"= {seconds / per / run_s:.3f} of a run")
        print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
