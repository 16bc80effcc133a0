"""Benchmark repeated training on a GPU: runs per hour of ``train --task binary`` with mixed precision.

    python3 bench/bench_gpu.py [--screenshots 160] [--runs 20] [--epochs 25] [--workdir DIR]

Synthesises screenshots, extracts them into a pool, then times ``toonvision train --task binary
--runs N --epochs E`` (``optimized`` at 600x200) twice in this one process: with
``--mixed-precision`` and without, and prints runs per hour and their ratio (issue 7). It needs
a GPU and says so without one; nothing else in the project does.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=int, default=160)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise SystemExit("bench_gpu: no GPU visible to TensorFlow; this benchmark measures GPU training only")
    from toonvision.extract import ExtractOptions, extract
    from toonvision.layout import Layout
    from toonvision.synth import SynthConfig, synthesize
    from toonvision.train import TrainConfig, train

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toonvision-bench-gpu-"))
    try:
        layout = Layout.from_dirs(workdir / "img", workdir / "models")
        synthesize(layout.screenshots, SynthConfig(count=args.screenshots, seed=0))
        extract(layout, ExtractOptions())
        names = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
        print(f"# {datetime.date.today()} {names}, TensorFlow {tf.__version__}; binary task, optimized 600x200, "
              f"{args.runs} runs x {args.epochs} epochs")
        per_hour = {}
        for mixed in (True, False):
            start = time.perf_counter()
            train(layout, TrainConfig(task="binary", model="optimized", runs=args.runs, epochs=args.epochs, seed=0,
                                      mixed_precision=mixed, overwrite=True))
            seconds = time.perf_counter() - start
            per_hour[mixed] = args.runs * 3600 / seconds
            print(f"{'mixed precision' if mixed else 'float32'}: {seconds:.0f} s, {per_hour[mixed]:.0f} runs/hour")
        print(f"runs/hour mixed precision / float32 = {per_hour[True] / per_hour[False]:.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
