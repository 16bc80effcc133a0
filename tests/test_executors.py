"""Runs on a Ray cluster equal local runs; a killed worker is retried; a killed driver resumes.

One local Ray cluster bound to 127.0.0.1 (2 CPUs, no dashboard) serves the whole module; its
workers import TensorFlow once and are reused by every test.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
keras = pytest.importorskip("keras")

from test_crash import finish, killed, start  # noqa: E402

from toonvision.compare import COMPARE_CSV, CompareConfig, compare  # noqa: E402
from toonvision.errors import TrainingError, UsageError  # noqa: E402
from toonvision.executors import (  # noqa: E402
    ExecutorOptions,
    Outcome,
    RayExecutor,
    RunOrder,
    RunSite,
    open_executor,
)
from toonvision.fsutil import file_sha256  # noqa: E402
from toonvision.ledger import BEST_INFO, BEST_MODEL, HISTORIES, LEDGER  # noqa: E402
from toonvision.train import TrainConfig, train  # noqa: E402

from helpers import write_colour_pool  # noqa: E402

TINY = dict(image_size=(48, 44), batch_size=4, epochs=1, seed=5)  # 20 crops: 12/4/4; 44: the models' minimum
POOL = {"cog_bb_a": 10, "toon_cat": 10}
RUNS = 3
_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-host mode, every service on 127.0.0.1


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray cluster on 127.0.0.1 for this module; its address (the CLI joins it via RAY_ADDRESS)."""
    import ray._private.ray_constants as constants

    before, os.environ[_LOOPBACK] = os.environ.get(_LOOPBACK), "0"
    constants.ENABLE_RAY_CLUSTER = False  # read at import time; ray was imported above
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="ERROR")
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:")
    try:
        yield address
    finally:
        ray.shutdown()
        constants.ENABLE_RAY_CLUSTER = True
        if before is None:
            os.environ.pop(_LOOPBACK, None)
        else:
            os.environ[_LOOPBACK] = before


@pytest.fixture(scope="module")
def local_training(tmp_path_factory):
    """The reference: the same 3-run training, here, one run at a time."""
    layout, _ = write_colour_pool(tmp_path_factory.mktemp("local") / "img", POOL)
    result = train(layout, TrainConfig(task="binary", runs=RUNS, **TINY))
    return layout.task_models("binary"), result


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / LEDGER).open()))


def histories(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / HISTORIES).read_text().splitlines()]


def assert_same_training(out: Path, reference: Path) -> None:
    """Same runs, seeds, histories' shape, chosen run and its split; metrics equal up to float noise."""
    got, want = rows(out), rows(reference)
    assert [(r["run"], r["seed"], r["epochs"]) for r in got] == [(r["run"], r["seed"], r["epochs"]) for r in want]
    for a, b in zip(got, want, strict=True):
        for metric in ("train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy"):
            assert float(a[metric]) == pytest.approx(float(b[metric]), abs=1e-4), (a["run"], metric)
    assert [(h["run"], h["seed"], sorted(h["history"])) for h in histories(out)] == \
        [(h["run"], h["seed"], sorted(h["history"])) for h in histories(reference)]
    info, expected = json.loads((out / BEST_INFO).read_text()), json.loads((reference / BEST_INFO).read_text())
    for key in ("run", "seed", "split", "classes", "image_size", "model"):
        assert info[key] == expected[key], key
    assert info["model_sha256"] == file_sha256(out / BEST_MODEL)
    keras.models.load_model(out / BEST_MODEL)


def ray_executor(**options) -> RayExecutor:
    return RayExecutor(ExecutorOptions(name="ray", **options))


# -- train and compare on Ray equal local runs ----------------------------------------------------


def test_a_training_on_ray_equals_a_local_one(cluster, local_training, tmp_path):
    reference, local = local_training
    layout, _ = write_colour_pool(tmp_path / "img", POOL)
    result = train(layout, TrainConfig(task="binary", runs=RUNS, **TINY), executor=ray_executor())
    assert_same_training(layout.task_models("binary"), reference)
    assert (result.best.run, result.best.seed) == (local.best.run, local.best.seed)
    assert result.split_dir.is_dir()


def test_a_comparison_on_ray_equals_a_local_one(cluster, tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", POOL)
    config = CompareConfig(task="binary", models=("baseline", "optimized"), runs=1, **TINY)
    here = compare(layout, config, out=tmp_path / "local")
    there = compare(layout, config, out=tmp_path / "ray", executor=ray_executor())
    assert [(r.model, r.split, r.record.run, r.record.seed) for r in there.runs] == \
        [(r.model, r.split, r.record.run, r.record.seed) for r in here.runs]
    for a, b in zip(there.runs, here.runs, strict=True):
        assert a.record.test_loss == pytest.approx(b.record.test_loss, abs=1e-4)
    head = [line.split(",")[:4] for line in (tmp_path / "ray" / COMPARE_CSV).read_text().splitlines()]
    assert head == [line.split(",")[:4] for line in (tmp_path / "local" / COMPARE_CSV).read_text().splitlines()]


# -- faults ----------------------------------------------------------------------------------------


def _announce(fn, folder: str, site, job):
    """Run ``fn`` after writing this worker's pid where the test waits for it (shipped to workers by value)."""
    Path(folder, f"run-{job.run}-{os.getpid()}").write_text(str(os.getpid()))
    return fn(site, job)


class AnnouncingExecutor(RayExecutor):
    """A RayExecutor whose tasks first write their worker's pid to ``folder``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(ExecutorOptions(name="ray"))
        self.folder = folder

    def map_runs(self, fn, jobs, site):
        return super().map_runs(functools.partial(_announce, fn, str(self.folder)), jobs, site)


def test_a_worker_killed_mid_run_is_retried(cluster, local_training, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    reference, _ = local_training
    layout, _ = write_colour_pool(tmp_path / "img", POOL)
    pids = tmp_path / "pids"
    pids.mkdir()
    victims: list[int] = []

    def kill_run_1() -> None:
        deadline = time.monotonic() + 240
        while not victims and time.monotonic() < deadline:
            found = sorted(pids.glob("run-1-*"))
            if found:
                victims.append(int(found[0].read_text()))
                os.kill(victims[0], signal.SIGKILL)  # the worker training run 1, found through the task itself
            time.sleep(0.02)

    killer = threading.Thread(target=kill_run_1, daemon=True)
    killer.start()
    train(layout, TrainConfig(task="binary", runs=RUNS, **TINY), executor=AnnouncingExecutor(pids))
    killer.join()
    assert victims, "run 1 never started"
    attempts = sorted(p.name for p in pids.glob("run-1-*"))
    assert len(attempts) == 2 and f"run-1-{victims[0]}" in attempts  # killed once, retried once on another worker
    assert [r["run"] for r in rows(layout.task_models("binary"))] == ["0", "1", "2"]  # complete, no duplicate
    assert_same_training(layout.task_models("binary"), reference)


def test_a_driver_killed_after_the_first_commit_resumes(cluster, local_training, tmp_path):
    reference, _ = local_training
    layout, _ = write_colour_pool(tmp_path / "img", POOL)
    out = layout.task_models("binary")
    args = ["--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "--quiet", "train", "--task", "binary",
            "--runs", RUNS, "--epochs", 1, "--seed", 5, "--image-size", "48x44", "--batch-size", 4,
            "--executor", "ray"]
    ray_env = {"RAY_ADDRESS": cluster, **{k: v for k, v in os.environ.items() if k == "RAY_AUTH_MODE"}}  # its token
    killed(start(args, ("kill", "after-rename", rf"{LEDGER}$", 1), **ray_env))
    assert [r["run"] for r in rows(out)] == ["0"]
    code, output = finish(start([*args, "--resume"], **ray_env))
    assert code == 0, output
    assert_same_training(out, reference)


# -- the parts -------------------------------------------------------------------------------------


def test_run_order_commits_in_order_and_holds_runs_behind_a_failure():
    order: RunOrder[str] = RunOrder(start=2)
    assert order.add(Outcome(3, "c")) == []
    assert order.add(Outcome(2, "b")) == ["b", "c"]
    assert order.add(Outcome(5, error="ImageError: bad crop")) == []
    assert order.add(Outcome(6, "g")) == []
    assert order.add(Outcome(4, "e")) == ["e"]
    assert (order.next, order.failed, order.waiting) == (5, {5: "ImageError: bad crop"}, [6])


def test_a_run_that_fails_for_good_is_named_and_the_others_go_on(cluster, tmp_path):
    def fails_on_1(site, job):
        if job == 1:
            raise TrainingError("run 1 ran out of memory")
        return job

    with open_executor(ExecutorOptions(name="ray")) as executor:
        outcomes = sorted(executor.map_runs(fails_on_1, range(3), RunSite(remote=True)), key=lambda o: o.index)
    assert [(o.index, o.value, o.error) for o in outcomes] == [
        (0, 0, None), (1, None, "run 1 ran out of memory"), (2, 2, None)]


def test_options_are_checked_and_a_missing_ray_is_explained(monkeypatch):
    with pytest.raises(UsageError, match="--gpus-per-run"):
        ExecutorOptions(name="ray", gpus_per_run=1.5)
    with pytest.raises(UsageError, match="--executor"):
        ExecutorOptions(name="dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'toonvision\[ray\]'"):
        with open_executor(ExecutorOptions(name="ray", address="local")):
            pass


def test_closing_the_runs_cancels_the_outstanding_tasks(cluster):
    """What Ctrl-C does (the train loop closes the iterator): the running tasks are cancelled, their CPUs freed."""

    def sleeps_unless_first(site, job):
        if job:
            time.sleep(600)
        return job

    outcomes = ray_executor().map_runs(sleeps_unless_first, range(3), RunSite(remote=True))
    assert next(outcomes).value == 0
    outcomes.close()
    quick = ray.remote(num_cpus=2)(lambda: "both CPUs are free again")
    assert ray.get(quick.remote(), timeout=180) == "both CPUs are free again"
