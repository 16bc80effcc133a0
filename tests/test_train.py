"""Repeated training: honest selection, independent runs, crash-safe outputs, clear errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from toonvision.errors import (  # noqa: E402
    ImageError,
    PoolError,
    SplitError,
    TrainingError,
    UsageError,
)
from toonvision.fsutil import file_sha256  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.ledger import (  # noqa: E402
    BEST_INFO,
    BEST_MODEL,
    HISTORIES,
    LEDGER,
    TRAIN_INFO,
    RunRecord,
    choose_best,
)
from toonvision.split import load_split, plan_from_dict  # noqa: E402
from toonvision.train import TrainConfig, train  # noqa: E402

from helpers import write_colour_pool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=(48, 44), batch_size=4, epochs=1, seed=5)  # 20 crops: 12/4/4, whole batches


def ledger(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


BINARY_POOL = {"cog_bb_a": 10, "toon_cat": 10}


@pytest.fixture
def binary_pool(tmp_path):
    return write_colour_pool(tmp_path / "img", BINARY_POOL)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 3-run training, shared by the tests that inspect one (TF runs are slow)."""
    import toonvision.train

    layout, records = write_colour_pool(tmp_path_factory.mktemp("trained") / "img", BINARY_POOL)
    built, real_build = [], toonvision.train.build_model
    toonvision.train.build_model = lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]
    try:
        result = train(layout, TrainConfig(task="binary", runs=3, ensemble=2,
                                           tensorboard=layout.img_dir.parent / "tb", **TINY))
    finally:
        toonvision.train.build_model = real_build
    return layout, records, result, built


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runs": 0}, "--runs"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"model": "vgg"}, "unknown model"),
        ({"ratios": (0.5, 0.5)}, "three numbers"),
        ({"ratios": (0.5, 0.3, 0.3)}, "summing to 1"),
        ({"resume": True, "overwrite": True}, "contradict"),
        ({"seed": -1}, "--seed"),
        ({"fine_tune": True}, "--fine-tune needs a model with a pretrained base \\(mobilenetv2\\)"),
        ({"model": "mobilenetv2", "fine_tune": True, "fine_tune_epochs": 0}, "--fine-tune-epochs"),
        ({"class_weight": "inverse"}, "--class-weight must be one of balanced, none"),
        ({"select": "test_accuracy"}, "--select must be one of"),
        ({"patience": 0}, "--patience"),
        ({"ensemble": 1}, "--ensemble must be 0"),
        ({"ensemble": 3, "runs": 2}, "pass --runs 3"),
        ({"ensemble": 2, "runs": 2, "resplit_test": True}, "leave out --resplit-test"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(task="binary", **kwargs)


def test_augmentation_defaults_to_the_model():
    assert TrainConfig(task="binary", model="optimized").augmented
    assert not TrainConfig(task="binary", model="baseline").augmented
    assert TrainConfig(task="binary", model="baseline", augment=True).augmented


# -- training --------------------------------------------------------------------------------


def test_runs_are_independent_and_the_best_is_kept(trained):
    layout, records, result, built = trained
    out = layout.task_models("binary")
    rows = ledger(out / LEDGER)
    assert [(r["run"], r["seed"], r["epochs"]) for r in rows] == [("0", "5", "1"), ("1", "6", "1"), ("2", "7", "1")]
    assert result.best == choose_best(result.runs)
    # fresh model and optimizer per run: each optimizer counted only its own run's steps
    built = built[:3]  # (one more is built only to draw the architecture)
    assert len({id(m) for m in built}) == len({id(m.optimizer) for m in built}) == 3
    steps = [int(m.optimizer.iterations.numpy()) for m in built]
    assert steps[0] == steps[1] == steps[2] > 0

    info = json.loads((out / BEST_INFO).read_text())
    assert info["classes"] == ["cog", "toon"] and info["display_names"] == {"cog": "Cog", "toon": "Toon"}
    assert (info["task"], info["model"], info["image_size"]) == ("binary", "baseline", [48, 44])
    assert (info["run"], info["seed"]) == (result.best.run, result.best.seed)
    assert info["metrics"]["test"]["accuracy"] == result.best.test_accuracy
    assert set(info["versions"]) == {"toonvision", "tensorflow", "keras"}
    assert info["model_sha256"] == file_sha256(out / "best.keras")  # best.json names its model file
    # every run re-split the pool; the chosen run's split is what img/data/ now holds
    histories = [json.loads(line) for line in (out / HISTORIES).read_text().splitlines()]
    assert [h["run"] for h in histories] == [0, 1, 2] and len(histories[0]["history"]["val_loss"]) == 1
    plan = plan_from_dict(info["split"])
    on_disk = load_split(layout.task_data("binary"))
    assert on_disk.assignments == plan.assignments and on_disk.seed == result.best.seed
    from toonvision.split import plan_split
    from toonvision.tasks import get_task

    splits = [plan_split(records, get_task("binary"), (0.6, 0.2, 0.2), s).assignments for s in (5, 6, 7)]
    assert len(set(splits)) == 3
    assert {p.name for p in result.plots} == {"training_curves.png", "test_metrics.png", "architecture.png"}
    summary = result.summary()
    assert f"run {result.best.run} (seed {result.best.seed})" in summary and "median" in summary


def test_train_commits_what_its_runs_produce_and_keeps_the_run_best_on_validation(binary_pool, monkeypatch):
    """Runs with preset losses (validation 0.5, 0.2, 0.9; test would pick run 2) and tiny real models."""
    import toonvision.train
    from toonvision.ledger import FinishedRun

    val_losses, test_losses = (0.5, 0.2, 0.9), (0.4, 0.8, 0.01)

    def fake_run(layout, config, plan, k, weights):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.set_weights([np.full((2, 1), k + 1.0, "float32"), np.full((1,), k + 1.0, "float32")])
        record = RunRecord(k, config.seed + k, config.epochs, 0.4, 0.8, val_losses[k], 0.9, test_losses[k], 0.5, 1.0)
        return FinishedRun(record, {"loss": [0.4], "val_loss": [val_losses[k]]}, model, plan)

    layout, _ = binary_pool
    monkeypatch.setattr(toonvision.train, "train_run", fake_run)
    result = train(layout, TrainConfig(task="binary", runs=3, **TINY))
    out = layout.task_models("binary")
    info = json.loads((out / BEST_INFO).read_text())
    assert result.best.run == info["run"] == 1 and info["seed"] == 6
    assert info["metrics"]["validate"]["loss"] == 0.2 and info["model_sha256"] == file_sha256(out / BEST_MODEL)
    saved = keras.saving.load_model(out / BEST_MODEL, compile=False).get_weights()
    assert len(saved) == 2 and all((w == 2.0).all() for w in saved)  # run 1's weights, not run 2's (last)
    assert load_split(layout.task_data("binary")).seed == 6  # the chosen run's split is the one on disk
    assert [r["val_loss"] for r in ledger(out / LEDGER)] == ["0.5", "0.2", "0.9"]


def preset_runs(val: dict[str, tuple[float, ...]], plans: list | None = None):
    """A train_run stand-in: run k gets the preset validation metrics ``val[name][k]``, a model of weights k+1."""
    from toonvision.ledger import FinishedRun

    def fake_run(layout, config, plan, k, weights):
        if plans is not None:
            plans.append(plan)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.set_weights([np.full((2, 1), k + 1.0, "float32"), np.full((1,), k + 1.0, "float32")])
        record = RunRecord(k, config.seed + k, config.epochs, 0.4, 0.8, val["val_loss"][k], val["val_accuracy"][k],
                           0.5, 0.5, 1.0, val["val_macro_f1"][k], 0.5, 1)
        return FinishedRun(record, {"loss": [0.4], "val_loss": [val["val_loss"][k]]}, model, plan)

    return fake_run


@pytest.mark.parametrize("select, chosen", [("val_loss", 0), ("val_accuracy", 1), ("val_macro_f1", 2)])
def test_the_selection_metric_chooses_the_run_it_names(binary_pool, monkeypatch, select, chosen):
    import toonvision.train

    val = {"val_loss": (0.2, 0.3, 0.4), "val_accuracy": (0.8, 0.95, 0.9), "val_macro_f1": (0.6, 0.7, 0.9)}
    layout, _ = binary_pool
    monkeypatch.setattr(toonvision.train, "train_run", preset_runs(val))
    result = train(layout, TrainConfig(task="binary", runs=3, select=select, **TINY))
    out = layout.task_models("binary")
    info = json.loads((out / BEST_INFO).read_text())
    assert result.best.run == info["run"] == chosen and info["select"] == select
    assert json.loads((out / TRAIN_INFO).read_text())["config"]["select"] == select
    assert all((w == chosen + 1.0).all() for w in keras.saving.load_model(out / BEST_MODEL).get_weights())
    rows = ledger(out / LEDGER)
    assert [float(r["val_macro_f1"]) for r in rows] == [0.6, 0.7, 0.9] and "test_macro_f1" in rows[0]
    with pytest.raises(UsageError, match="select="):  # a resume must keep the metric the runs were chosen by
        other = next(m for m in ("val_loss", "val_accuracy") if m != select)
        train(layout, TrainConfig(task="binary", runs=3, select=other, resume=True, **TINY))


def test_the_test_split_is_drawn_once_and_resplit_test_draws_it_per_run(binary_pool, monkeypatch):
    import toonvision.train
    from toonvision.split import plan_test_split
    from toonvision.tasks import get_task

    layout, records = binary_pool
    val = {"val_loss": (0.3, 0.2, 0.4), "val_accuracy": (0.9,) * 3, "val_macro_f1": (0.9,) * 3}
    plans: list = []
    monkeypatch.setattr(toonvision.train, "train_run", preset_runs(val, plans))
    train(layout, TrainConfig(task="binary", runs=3, **TINY))
    tests = [frozenset(a.crop for a in p.files("test")) for p in plans]
    fixed = plan_test_split(records, get_task("binary"), (0.6, 0.2, 0.2), TINY["seed"])
    assert tests == [fixed] * 3  # the same test crops for every run, drawn with the training seed
    assert len({tuple(p.files("train")) for p in plans}) == 3  # train/validate re-split per run
    info = json.loads((layout.task_models("binary") / BEST_INFO).read_text())
    assert info["run"] == 1 and info["test_split"] == {"fixed": True, "seed": TINY["seed"]}
    recorded = plan_from_dict(info["split"])  # best.json records the run's full split: evaluate scores its test
    assert recorded.assignments == plans[1].assignments

    plans.clear()
    train(layout, TrainConfig(task="binary", runs=3, resplit_test=True, overwrite=True, **TINY))
    assert len({frozenset(a.crop for a in p.files("test")) for p in plans}) == 3


def test_class_weights_reach_keras_and_change_the_loss_through_each_class_s_samples_only(tmp_path, monkeypatch):
    """With a frozen model (learning rate 0) the training loss is sum(w[y] * loss_i) / n over the train split."""
    import dataclasses

    import toonvision.train
    from toonvision import datasets
    from toonvision.split import plan_split
    from toonvision.tasks import get_task
    from toonvision.train import class_weights, probabilities, split_labels, train_run

    layout, records = write_colour_pool(tmp_path / "img", {"cog_bb_a": 15, "toon_cat": 5})
    real_build = toonvision.train.build_model

    def frozen(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.optimizer.learning_rate.assign(0.0)
        return model

    monkeypatch.setattr(toonvision.train, "build_model", frozen)
    config = TrainConfig(task="binary", dropout=0.0, **{**TINY, "batch_size": 64})  # one batch: the whole split
    plan = plan_split(records, get_task("binary"), config.ratios, 5)
    loss = {}
    for mode in ("none", "balanced"):
        finished = train_run(layout, dataclasses.replace(config, class_weight=mode), plan, 0, None)
        loss[mode] = finished.history["loss"][0]
    rare_only = {0: 1.0, 1: 3.0}  # toon is the rare class: weighted 3x, cog unchanged
    monkeypatch.setattr(toonvision.train, "class_weights", lambda plan, mode: rare_only)
    loss["rare"] = train_run(layout, config, plan, 0, None).history["loss"][0]

    train_ds = datasets.from_plan(plan, layout.pool, "train", image_size=config.image_size, batch_size=64)
    y = split_labels(plan, layout.pool, train_ds)
    p = np.clip(probabilities(finished.model, train_ds)[:, 1], 1e-7, 1 - 1e-7)
    per_crop = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    balanced = class_weights(plan, "balanced")
    assert balanced[1] > 1.0 > balanced[0]
    assert balanced[0] * (y == 0).sum() == pytest.approx(balanced[1] * (y == 1).sum())  # each class weighs alike
    assert loss["none"] == pytest.approx(per_crop.mean(), rel=1e-4)
    assert loss["balanced"] == pytest.approx((np.where(y == 1, balanced[1], balanced[0]) * per_crop).mean(), rel=1e-4)
    # the rare-class-only weight changes the loss by exactly its crops' share: 2 * sum(rare losses) / n
    assert loss["rare"] - loss["none"] == pytest.approx(2 * per_crop[y == 1].sum() / len(y), rel=1e-3)


def test_the_best_epoch_is_kept_and_patience_stops_a_run_early():
    from toonvision.train import best_epoch_callback

    def fit(values, callback, epochs):
        """Fit a tiny model with the validation metric of each epoch overwritten by ``values``."""
        preset, snapshots = iter(values), []

        class Preset(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs["val_loss"] = next(preset)

        class Snapshot(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                snapshots.append(self.model.get_weights())

        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        x = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
        history = model.fit(x, x[:, :1] * 3, validation_data=(x, x[:, :1]), epochs=epochs, verbose=0,
                            callbacks=[Preset(), callback, Snapshot()])
        return model, history.history, snapshots

    def same(a, b):
        return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))

    # no early stop: epoch 1 (0.2) is restored at the end although the run went on
    keeper = best_epoch_callback("val_loss")
    model, history, snapshots = fit([0.5, 0.2, 0.9, 0.7], keeper, 4)
    assert keeper.best_epoch == 1 and history["val_loss"] == [0.5, 0.2, 0.9, 0.7]
    assert same(model.get_weights(), snapshots[1]) and not same(model.get_weights(), snapshots[3])
    # patience 2: two epochs without a better value stop the run; the history stays complete up to there
    keeper = best_epoch_callback("val_loss", patience=2)
    model, history, snapshots = fit([0.5, 0.2, 0.9, 0.7, 0.1, 0.05], keeper, 6)
    assert len(history["loss"]) == 4 and keeper.best_epoch == 1 and same(model.get_weights(), snapshots[1])
    # macro-F1 (higher is better), evaluated by the callback and recorded in the history
    scores = iter([0.3, 0.8, 0.6])
    keeper = best_epoch_callback("val_macro_f1", macro_f1_of=lambda m: next(scores))
    model, history, snapshots = fit([0.1, 0.9, 0.2], keeper, 3)
    assert history["val_macro_f1"] == [0.3, 0.8, 0.6] and keeper.best_epoch == 1
    assert same(model.get_weights(), snapshots[1])
    # an equal macro-F1 with a lower validation loss is better (the tie-break of run selection)
    scores = iter([0.5, 0.8, 0.8, 0.8])
    keeper = best_epoch_callback("val_macro_f1", patience=2, macro_f1_of=lambda m: next(scores))
    model, history, snapshots = fit([0.9, 0.6, 0.4, 0.5], keeper, 4)
    assert keeper.best_epoch == 2 and len(history["loss"]) == 4 and same(model.get_weights(), snapshots[2])


def test_the_ensemble_is_the_mean_of_its_members_and_loads_in_evaluate_and_predict(trained, tmp_path):
    from toonvision.evaluate import evaluate
    from toonvision.layout import ENSEMBLE_INFO, ENSEMBLE_MODEL
    from toonvision.ledger import RUNS_DIR, rank_runs
    from toonvision.predict import predict
    from toonvision.split import plan_test_split
    from toonvision.tasks import get_task

    layout, records, result, _ = trained
    out = layout.task_models("binary")
    info = json.loads((out / ENSEMBLE_INFO).read_text())
    top = [r.run for r in rank_runs(result.runs, result.select)[:2]]
    assert info["members"] == top and info["model_sha256"] == file_sha256(out / ENSEMBLE_MODEL)
    assert sorted(p.name for p in (out / RUNS_DIR).iterdir()) == sorted(f"run_{k}.keras" for k in top)
    ensemble = keras.saving.load_model(out / ENSEMBLE_MODEL, compile=False, safe_mode=True)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in ensemble.layers)
    members = [keras.saving.load_model(out / RUNS_DIR / f"run_{k}.keras", compile=False) for k in top]
    x = np.random.default_rng(1).uniform(0, 255, (5, 48, 44, 3)).astype("float32")
    mean = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    assert not np.allclose(members[0].predict(x, verbose=0), members[1].predict(x, verbose=0))
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), mean, atol=1e-6)

    scored = evaluate(layout, out / ENSEMBLE_MODEL, out=tmp_path / "evaluation", plots=False)
    fixed = plan_test_split(records, get_task("binary"), (0.6, 0.2, 0.2), TINY["seed"])
    assert {Path(p.file).relative_to(layout.pool).as_posix() for p in scored.predictions} == fixed
    assert scored.metrics.accuracy == pytest.approx(info["metrics"]["test"]["accuracy"])
    assert scored.loss == pytest.approx(info["metrics"]["test"]["loss"], abs=1e-5)
    best = json.loads((out / BEST_INFO).read_text())
    assert best["ensemble"]["members"] == top and best["ensemble"]["test"] == info["metrics"]["test"]
    crop = layout.pool / records[0].crop
    predicted = predict(out / ENSEMBLE_MODEL, [crop]).predictions[0]
    by_hand = np.mean([predict(out / RUNS_DIR / f"run_{k}.keras", [crop], classes="cog,toon").predictions[0]
                       .probabilities for k in top], axis=0)
    np.testing.assert_allclose(predicted.probabilities, by_hand, atol=1e-6)
    assert "ensemble of runs" in result.summary()
    from toonvision.explain import explain

    explained = explain(out / ENSEMBLE_MODEL, [crop])  # Grad-CAM through a member nested in the ensemble
    assert explained.layer.startswith(f"run_{top[-1]}/") and explained.out == out / "explain_ensemble"
    np.testing.assert_allclose(explained.explanations[0].probabilities, predicted.probabilities, atol=1e-5)


def test_tensorboard_logs_are_written_per_run(trained):
    import tensorflow as tf

    layout, _, _, _ = trained
    board = layout.img_dir.parent / "tb"
    assert sorted(p.name for p in board.iterdir()) == ["run_0", "run_1", "run_2"]
    for k in range(3):
        events = sorted((board / f"run_{k}").rglob("events.out.tfevents.*"))
        assert events, f"no event file for run {k}"
        tags = {v.tag for f in events for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value}
        assert "epoch_loss" in tags and "epoch_accuracy" in tags


def test_multiclass_training_uses_a_softmax_head_and_augmentation(tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 8, "cog_lb_b": 8, "cog_cb_c": 8})
    result = train(layout, TrainConfig(task="suit", model="optimized", runs=1, **{**TINY, "epochs": 2}))
    info = json.loads((layout.task_models("suit") / BEST_INFO).read_text())
    assert info["classes"] == ["bb", "cb", "lb"] and info["augment"] is True and info["dropout"] == 0.5
    model = keras.models.load_model(layout.task_models("suit") / BEST_MODEL)
    assert model.output_shape == (None, 3)
    assert len(result.runs) == 1


def test_a_mixed_precision_training_is_recorded_and_reloads(binary_pool):
    from toonvision.evaluate import evaluate

    layout, _ = binary_pool
    train(layout, TrainConfig(task="binary", runs=1, mixed_precision=True, **TINY))
    out = layout.task_models("binary")
    assert json.loads((out / BEST_INFO).read_text())["mixed_precision"] is True
    assert json.loads((out / TRAIN_INFO).read_text())["config"]["mixed_precision"] is True
    result = evaluate(layout, task="binary", plots=False)
    assert all(0.0 <= p.confidence <= 1.0 for p in result.predictions)
    with pytest.raises(UsageError, match="mixed_precision=True \\(now False\\)"):
        train(layout, TrainConfig(task="binary", runs=2, resume=True, **TINY))


def test_existing_training_needs_resume_or_overwrite(binary_pool):
    layout, _ = binary_pool
    train(layout, TrainConfig(task="binary", runs=1, **TINY))
    before = (layout.task_models("binary") / BEST_MODEL).read_bytes()
    with pytest.raises(UsageError, match="--resume.*--overwrite"):
        train(layout, TrainConfig(task="binary", runs=1, **TINY))
    assert (layout.task_models("binary") / BEST_MODEL).read_bytes() == before
    with pytest.raises(UsageError, match="epochs=1 \\(now 2\\)"):
        train(layout, TrainConfig(task="binary", runs=2, resume=True, **{**TINY, "epochs": 2}))
    # resume with every run done: nothing retrained
    again = train(layout, TrainConfig(task="binary", runs=1, resume=True, **TINY))
    assert again.resumed == 1 and len(again.runs) == 1
    # overwrite starts a new ledger
    fresh = train(layout, TrainConfig(task="binary", runs=1, overwrite=True, **{**TINY, "seed": 9}))
    assert [r.seed for r in fresh.runs] == [9]
    assert [r["seed"] for r in ledger(layout.task_models("binary") / LEDGER)] == ["9"]


def test_resume_after_a_real_kill_matches_an_uninterrupted_training(tmp_path, trained):
    layout, _ = write_colour_pool(tmp_path / "img", BINARY_POOL)
    killed = tmp_path / "killed"
    command = [
        sys.executable, "-m", "toonvision", "--img-dir", str(layout.img_dir), "--models-dir", str(killed), "-q",
        "train", "--task", "binary", "--runs", "3", "--epochs", "1", "--seed", "5",
        "--image-size", "48x44", "--batch-size", "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs_csv = killed / "binary" / LEDGER
    deadline = time.monotonic() + 180
    while not (runs_csv.exists() and len(ledger(runs_csv)) >= 1):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the first run never finished"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    survived = ledger(runs_csv)
    assert process.returncode == -signal.SIGKILL and 1 <= len(survived) < 3, "the kill must land mid-training"

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    after = ledger(runs_csv)
    clean = ledger(trained[0].task_models("binary") / LEDGER)  # the same pool, trained without a kill
    key = lambda rows: [(r["run"], r["seed"], r["epochs"]) for r in rows]  # noqa: E731
    assert key(after) == key(clean) == [("0", "5", "1"), ("1", "6", "1"), ("2", "7", "1")]
    assert after[: len(survived)] == survived  # finished runs were kept, not redone
    info = json.loads((killed / "binary" / BEST_INFO).read_text())
    assert info["run"] == choose_best([RunRecord.from_row(r) for r in after]).run
    histories = (killed / "binary" / HISTORIES).read_text().splitlines()
    assert [json.loads(line)["run"] for line in histories] == [0, 1, 2]
    assert not (killed / "binary" / ".work").exists()


# -- bad input -------------------------------------------------------------------------------


def test_an_empty_pool_says_to_extract_first_and_writes_nothing(tmp_path):
    layout = Layout.from_dirs(tmp_path / "img", tmp_path / "models")
    with pytest.raises(PoolError, match="extract"):
        train(layout, TrainConfig(task="binary", **TINY))
    assert not layout.task_models("binary").exists()


def test_a_task_with_one_class_is_refused_before_any_write(tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "cog_bb_b": 6})
    with pytest.raises(SplitError, match="fewer than 2 classes"):
        train(layout, TrainConfig(task="binary", **TINY))
    assert not layout.task_models("binary").exists()


def test_undecodable_crop_is_named_and_nothing_is_kept(binary_pool):
    layout, records = binary_pool
    bad = layout.pool / records[3].crop
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageError, match=str(bad)):
        train(layout, TrainConfig(task="binary", **TINY))
    out = layout.task_models("binary")
    assert not (out / BEST_MODEL).exists() and not (out / LEDGER).exists()


def test_an_unwritable_models_folder_is_a_message_naming_the_fix(binary_pool, tmp_path):
    layout, _ = binary_pool
    blocker = tmp_path / "models-file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot write there"):
        train(Layout.from_dirs(layout.img_dir, blocker), TrainConfig(task="binary", **TINY))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--runs", "0"], "--runs"),
        (["--image-size", "600by200"], "HEIGHTxWIDTH"),
        (["--resume", "--overwrite"], "contradict"),
        (["--model", "vgg"], "vgg"),
    ],
)
def test_cli_usage_errors_exit_2_without_traceback(tmp_path, args, message):
    from click.testing import CliRunner

    from toonvision.cli import main

    result = CliRunner().invoke(
        main,
        ["--img-dir", str(tmp_path / "img"), "--models-dir", str(tmp_path / "m"), "train", "--task", "binary", *args],
    )
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_fine_tune_trains_a_second_phase_on_the_top_of_the_base_only(binary_pool):
    """Phase 1: the head on a frozen base; phase 2: block_16 and Conv_1 too, at a tenth of the rate."""
    import toonvision.train

    layout, _records = binary_pool
    built, real_build = [], toonvision.train.build_model

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append((model, {w.path: w.numpy().copy() for w in model.weights}))
        return model

    toonvision.train.build_model = build
    try:
        train(
            layout,
            TrainConfig(
                task="binary",
                model="mobilenetv2",
                weights=None,
                fine_tune=True,
                fine_tune_epochs=1,
                **{**TINY, "image_size": (32, 32)},
            ),
        )
    finally:
        toonvision.train.build_model = real_build
    model, initial = built[0]
    changed = {w.path for w in model.weights if not np.array_equal(initial[w.path], w.numpy())}
    base = {w.path for w in model.layers[2].weights}
    top = ("block_16_expand/", "block_16_depthwise/", "block_16_project/", "Conv_1/")
    assert {p for p in changed & base} == {p for p in base if p.startswith(top)}  # only the top learned
    assert "head/kernel" in changed
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-4)
    out = layout.task_models("binary")
    history = json.loads((out / HISTORIES).read_text().splitlines()[0])["history"]
    assert len(history["loss"]) == len(history["val_loss"]) == 2  # 1 epoch + 1 fine-tuning epoch
    assert ledger(out / LEDGER)[0]["epochs"] == "2"
    info = json.loads((out / BEST_INFO).read_text())
    assert info["fine_tune"] == {
        "epochs": 1,
        "unfrozen_from": "block_16_expand",
        "learning_rate": pytest.approx(1e-4),
        "batch_norm": "frozen",
    }
    assert json.loads((out / TRAIN_INFO).read_text())["config"]["fine_tune"] == 1
    assert TrainConfig(task="binary").identity()["fine_tune"] == 0


def test_offline_imagenet_weights_stop_training_with_the_message_before_anything_is_written(
    binary_pool, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from toonvision.cli import main
    from toonvision.models import mobilenet_weights_file_name

    layout, _records = binary_pool
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("toonvision.models._keras_cache_dirs", lambda: [tmp_path / "keras"])
    monkeypatch.setattr("toonvision.models.MOBILENET_WEIGHTS_ORIGIN", "http://127.0.0.1:9/")  # refused: offline
    result = CliRunner().invoke(
        main,
        [
            "--img-dir",
            str(layout.img_dir),
            "--models-dir",
            str(layout.models_dir),
            "train",
            "--task",
            "binary",
            "--model",
            "mobilenetv2",
            "--image-size",
            "32x32",
            "--epochs",
            "1",
            "--seed",
            "5",
        ],
    )
    assert result.exit_code == 1
    assert mobilenet_weights_file_name((32, 32)) in result.output and "Traceback" not in result.output
    assert str(tmp_path / "keras" / "models") in result.output
    assert not layout.task_models("binary").exists()


# -- --image-size auto and --resize pad --------------------------------------------------------------


def test_the_image_size_defaults_to_the_task():
    from toonvision.constants import DEFAULT_IMAGE_SIZE

    assert TrainConfig(task="label").image_size == "auto"  # any labelImg data: from its crops
    assert TrainConfig(task="suit").image_size == DEFAULT_IMAGE_SIZE == (600, 200)  # ToonVision keeps 600x200
    assert TrainConfig(task="label", image_size=(64, 48)).image_size == (64, 48)
    assert TrainConfig(task="binary").resize == "stretch"
    with pytest.raises(UsageError, match="HEIGHTxWIDTH in pixels or auto"):
        TrainConfig(task="label", image_size="big")
    with pytest.raises(UsageError, match="--resize must be one of stretch, pad"):
        TrainConfig(task="label", resize="crop")
    with pytest.raises(UsageError, match="resolve_image_size"):
        TrainConfig(task="label").size  # noqa: B018


def test_auto_size_comes_from_the_crops_of_the_task_only(tmp_path):
    from toonvision.manifest import CropRecord
    from toonvision.tasks import get_task
    from toonvision.train import resolve_image_size

    def crop(label: str, height: int, width: int, i: int) -> CropRecord:
        return CropRecord(
            f"x/{label}_{i}.png",
            label,
            label.split("_")[0],
            i,
            f"s{i}.png",
            0,
            0,
            width,
            height,
            width,
            height,
            f"s{i}",
            f"c{label}{i}",
        )

    records = [crop("cog_bb_a", 90 + i, 60, i) for i in range(5)] + [crop("toon_cat", 400, 400, i) for i in range(9)]
    config = resolve_image_size(TrainConfig(task="suit", image_size="auto"), records, get_task("suit"))
    assert config.image_size == (64, 48)  # the Cogs' median 92 x 60 to a longer side of 64; no Toons in it
    assert resolve_image_size(TrainConfig(task="suit", image_size="auto"), records[::-1], get_task("suit")) == config
    everything = resolve_image_size(TrainConfig(task="label"), records, get_task("label"))
    assert everything.image_size == (64, 64)  # the median 400 x 400 capped at a longer side of 64
    fixed = TrainConfig(task="suit", image_size=(48, 44))
    assert resolve_image_size(fixed, records, get_task("suit")) is fixed


def test_a_padded_auto_sized_model_is_used_the_same_way_by_evaluate_and_predict(tmp_path):
    from PIL import Image

    from toonvision.decode import model_input
    from toonvision.evaluate import evaluate
    from toonvision.modelfile import open_model
    from toonvision.predict import predict

    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 10, "toon_cat": 10}, size=(20, 70))  # tall
    result = train(layout, TrainConfig(task="label", model="baseline", resize="pad", batch_size=4, epochs=1, seed=5))
    info = json.loads((result.output / BEST_INFO).read_text())
    assert (info["image_size"], info["resize"]) == ([64, 48], "pad")  # auto: 70 x 20 -> 64 x 16, floored at 44
    assert info["input"]["aspect"] == "kept, centred in zero bands"
    loaded = open_model(result.output)
    assert (loaded.info.image_size, loaded.info.resize) == ((64, 48), "pad")
    crops = sorted((layout.pool / "cog").glob("*.png"))[:3]
    padded = loaded.probabilities(model_input([Image.open(p) for p in crops], (64, 48), "pad"))
    stretched = loaded.probabilities(model_input([Image.open(p) for p in crops], (64, 48)))
    assert not np.allclose(padded, stretched, atol=1e-4)  # the two modes do feed the model different pixels
    got = predict(result.output, crops).predictions
    np.testing.assert_allclose([p.probabilities for p in got], padded, atol=1e-5)
    scored = evaluate(layout, result.output, plots=False)
    assert scored.loss == pytest.approx(result.best.test_loss, abs=1e-4)  # what training measured, padded
