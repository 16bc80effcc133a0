"""Benchmark predict's runtimes: crops/s of Keras, ONNX Runtime, LiteRT and a SavedModel on the same model and crops.

    python3 bench/bench_export.py [--model baseline] [--image-size 600x200] [--classes 4] [--crops 64]
                                  [--batch-size 32] [--rounds 5] [--workdir DIR]

Builds the project's model (random weights: speed does not depend on them), saves it as
best.keras with its best.json, exports it with ``toonvision.export`` (each export checked against
Keras as usual), then in this one process, on the same preprocessed crops (synthetic, at the
model's size after a resize), times ``probabilities`` of every runtime in turn, ``--batch-size`` crops a call,
for ``--rounds`` rounds. Prints crops/s per runtime and each export's crops/s / Keras' (median
and range over rounds, so a burst of outside load hits both sides of a ratio alike), and the
preprocessing (``model_batch``) rate for scale.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from toonvision.constants import DEFAULT_IMAGE_SIZE, parse_hw  # noqa: E402
from toonvision.export import export_model, synthetic_images  # noqa: E402
from toonvision.fsutil import file_sha256  # noqa: E402
from toonvision.runtimes import model_batch, open_runtime  # noqa: E402

RUNTIMES = ("keras", "onnx", "litert", "savedmodel")


def spread(values: list[float], digits: int = 2) -> str:
    """median [min-max] of n"""
    return (f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}] "
            f"of {len(values)}")


def make_model(folder: Path, name: str, classes: int, size: tuple[int, int]) -> Path:
    from toonvision.models import build_model

    model = build_model(name, classes, size, seed=0, weights=None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "best.keras"
    model.save(path)
    names = [f"c{k}" for k in range(classes)]
    record = {"task": "bench", "classes": names, "image_size": list(size), "model_sha256": file_sha256(path)}
    (folder / "best.json").write_text(json.dumps(record))
    return path


def crops_per_second(runtime, batch, batch_size: int) -> float:
    start = time.perf_counter()
    for begin in range(0, len(batch), batch_size):
        runtime.probabilities(batch[begin : begin + batch_size])
    return len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="baseline", help="baseline, optimized or mobilenetv2 (random weights)")
    parser.add_argument("--image-size", default=DEFAULT_IMAGE_SIZE.as_text(), help="HEIGHTxWIDTH")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    size = tuple(parse_hw(args.image_size))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        import keras
        import onnxruntime
        import tensorflow as tf

        source = make_model(work / "models" / "bench", args.model, args.classes, size)
        paths = {"keras": source}
        for fmt in RUNTIMES[1:]:
            result = export_model(None, source, fmt)
            paths[fmt] = result.path
            print(f"# exported {fmt} in {result.seconds:.1f} s, largest difference from Keras "
                  f"{result.max_difference:.2g}")
        runtimes = {name: open_runtime(path) for name, path in paths.items()}
        arrays = synthetic_images((size[0] * 2 // 3, size[1] * 2 // 3), args.crops, seed=1)  # resized on the way
        info = runtimes["keras"].info
        start = time.perf_counter()
        batch = model_batch(arrays, info)
        preprocess = len(arrays) / (time.perf_counter() - start)
        print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; TensorFlow {tf.__version__}, Keras {keras.__version__}, onnxruntime "
              f"{onnxruntime.__version__}, LiteRT {getattr(runtimes['litert'], 'source', '?')}")
        print(f"# {args.model} at {size[0]}x{size[1]}, {args.classes} classes, {args.crops} crops in batches of "
              f"{args.batch_size}, {args.rounds} rounds")
        for runtime in runtimes.values():  # warm-up: tracing, allocation, both batch sizes
            crops_per_second(runtime, batch, args.batch_size)
        rates: dict[str, list[float]] = {name: [] for name in runtimes}
        for _ in range(args.rounds):
            for name, runtime in runtimes.items():
                rates[name].append(crops_per_second(runtime, batch, args.batch_size))
        for name in runtimes:
            print(f"{name:<11} crops/s {spread(rates[name], 1)}")
        for name in RUNTIMES[1:]:
            ratios = [a / b for a, b in zip(rates[name], rates["keras"], strict=True)]
            print(f"{name} / keras crops/s = {spread(ratios)}")
        print(f"preprocessing (decode.model_input at {size[0]}x{size[1]}) crops/s {preprocess:.0f}; "
              f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
