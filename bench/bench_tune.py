"""Measure `toonvision tune` against `baseline` and `optimized`: test macro-F1 over the same re-splits.

    python3 bench/bench_tune.py [--screenshots 150] [--synth-seed 11] [--task suit] [--trials 6]
                                [--epochs 6] [--image-size 120x48] [--runs 3] [--seed 0] [--workdir DIR]

Synthesises screenshots (``synth --count N --seed 11``) and extracts them, then in one process:

1. searches with ``tune.tune`` (random search, ``--trials`` trials of ``--epochs`` epochs, objective
   val_macro_f1) on one train/validate split of the pool with the test split set aside, and times it;
2. trains ``baseline``, ``optimized`` and the tuned configuration (``best_hparams.json``) for
   ``--runs`` runs each, ``--epochs`` epochs, with ``train.train_run`` (fresh model and optimizer per
   run), and scores each run on the test split with macro-F1 (``toonvision.metrics``).

The re-splits are the ones ``train --seed S`` makes (``split.plan_test_split``): the test split
is the one the search set aside (seed S), and run k re-splits only the rest into train/validate
(seed S + k), the same for the three models, so no run tests on a crop the search saw. Every run
trains with ``train``'s defaults (class weights unless the tuned file says otherwise, the best
epoch by validation macro-F1 kept, patience 5).

Prints one line per figure and writes results.json in the work folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from toonvision import datasets  # noqa: E402
from toonvision.constants import parse_hw  # noqa: E402
from toonvision.extract import ExtractOptions, extract  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.manifest import load_pool  # noqa: E402
from toonvision.metrics import classification_metrics, decide  # noqa: E402
from toonvision.split import SplitPlan, plan_split  # noqa: E402
from toonvision.synth import SynthConfig, synthesize  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402
from toonvision.train import TrainConfig, train_run  # noqa: E402
from toonvision.tune import BEST_HPARAMS, TuneConfig, _set_test_aside, search_plan, tune  # noqa: E402


def fixed_test_plan(records, task, config: TuneConfig, k: int) -> SplitPlan:
    """Run k's split: the search's test split, and the rest re-split into train/validate with seed S + k."""
    rest, test = _set_test_aside(records, task, config)
    inner = search_plan(rest, task, dataclasses.replace(config, seed=config.seed + k))
    full = plan_split(records, task, tuple(config.ratios), config.seed, group=config.group)
    tests = tuple(a for a in full.assignments if a.split == "test")
    assert {a.crop for a in tests} == {r.crop for r in test}
    return SplitPlan(task.name, config.seed + k, tuple(config.ratios), config.group, inner.classes,
                     inner.assignments + tests)


def test_macro_f1(layout: Layout, model, plan: SplitPlan, image_size, batch_size: int) -> float:
    import numpy as np

    ds = datasets.from_plan(plan, layout.pool, "test", image_size=image_size, batch_size=batch_size)
    raw = np.asarray(model.predict(ds, verbose=0), dtype=np.float64)
    probabilities = np.concatenate([1 - raw, raw], axis=1) if raw.shape[1] == 1 else raw
    predicted, _ = decide(probabilities)
    truth = sorted(plan.classes.index(a.cls) for a in plan.files("test"))
    return classification_metrics(truth, predicted, plan.classes).macro.f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshots", type=int, default=150)
    parser.add_argument("--synth-seed", type=int, default=11)
    parser.add_argument("--task", default="suit")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", default="120x48")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    size = tuple(parse_hw(args.image_size))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tune-"))
    layout = Layout.from_dirs(work / "img", work / "models")
    if not layout.manifest.is_file():
        synthesize(layout.screenshots, SynthConfig(count=args.screenshots, seed=args.synth_seed))
        extract(layout, ExtractOptions())
    records, _ = load_pool(layout)
    task = get_task(args.task)

    config = TuneConfig(task=args.task, algorithm="random", max_trials=args.trials, max_epochs=args.epochs,
                        seed=args.seed, select="val_macro_f1", image_size=size, batch_size=args.batch_size,
                        overwrite=True)
    start = time.perf_counter()
    result = tune(layout, config)
    search_seconds = time.perf_counter() - start
    seconds = [t.seconds for t in result.trials if t.seconds is not None]
    print(f"search: {len(result.trials)} trials x {args.epochs} epochs at {args.image_size}, "
          f"{search_seconds:.0f} s in all, {statistics.mean(seconds):.1f} s per trial (mean; "
          f"{min(seconds):.1f}-{max(seconds):.1f})")
    print(f"best: trial {result.best.trial}, val macro-F1 {result.best.objective:.4f}, {result.best.hyperparameters}")

    hparams = result.output / BEST_HPARAMS
    models = {"baseline": {"model": "baseline"}, "optimized": {"model": "optimized"}, "tuned": {"hparams": hparams}}
    scores: dict[str, list[float]] = {name: [] for name in models}
    plans = [fixed_test_plan(records, task, config, k) for k in range(args.runs)]
    for name, options in models.items():
        train_config = TrainConfig(task=args.task, runs=args.runs, epochs=args.epochs, seed=args.seed, image_size=size,
                                   batch_size=args.batch_size, weights=None, **options)
        for k, plan in enumerate(plans):
            finished = train_run(layout, train_config, plan, k, None)
            scores[name].append(test_macro_f1(layout, finished.model, plan, size, args.batch_size))
        values = scores[name]
        print(f"{name:>9}: test macro-F1 mean {statistics.mean(values):.4f} (runs: "
              f"{', '.join(f'{v:.4f}' for v in values)})")
    (work / "results.json").write_text(json.dumps({
        "search_seconds": search_seconds, "trial_seconds": seconds, "best": dataclasses.asdict(result.best),
        "test_macro_f1": scores, "args": {k: str(v) for k, v in vars(args).items()},
    }, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
