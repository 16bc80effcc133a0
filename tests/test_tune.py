"""The tune stage: trials recorded, the best chosen on validation, resume after a kill, test never searched."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("keras_tuner")

from toonvision.errors import PoolError, SplitError, UsageError  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.models import Hyperparameters  # noqa: E402
from toonvision.split import plan_split  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402
from toonvision.train import TrainConfig, train  # noqa: E402
from toonvision.tune import (  # noqa: E402
    BEST_HPARAMS,
    PROJECT,
    TRIALS,
    TUNE_DIR,
    TUNE_INFO,
    TUNING_PLOT,
    TrialRow,
    TuneConfig,
    choose_best,
    tune,
)

from helpers import write_colour_pool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POOL = {"cog_bb_a": 10, "toon_cat": 10}  # 20 crops: test 4, the search 12 train / 4 validate
TINY = dict(task="binary", algorithm="random", max_trials=3, max_epochs=1, seed=5, image_size=(48, 48),
            batch_size=4)


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One uninterrupted 3-trial random search; every model.fit call's data recorded (TF runs are slow)."""
    layout, records = write_colour_pool(tmp_path_factory.mktemp("tune") / "img", POOL, size=(48, 48))
    fitted, real_fit = [], keras.Model.fit

    def spy(self, x=None, *args, **kwargs):
        fitted.append({"train": list(x.file_paths), "validate": list(kwargs["validation_data"].file_paths),
                       "epochs": kwargs.get("epochs")})
        return real_fit(self, x, *args, **kwargs)

    keras.Model.fit = spy
    try:
        result = tune(layout, TuneConfig(**TINY))
    finally:
        keras.Model.fit = real_fit
    return layout, records, result, fitted


# -- options and the space -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithm": "grid"}, "--algorithm"),
        ({"select": "test_accuracy"}, "--select"),
        ({"max_trials": 0}, "--max-trials"),
        ({"ratios": (0.8, 0.2)}, "three numbers"),
        ({"resume": True, "overwrite": True}, "contradict"),
        ({"image_size": (24, 24)}, "cannot fit a 24x24 image: 4 pooling blocks"),
        ({"image_size": (6, 60), "max_blocks": 2}, "at least 8x8"),
    ],
)
def test_bad_options_and_an_impossible_space_fail_before_any_search(kwargs, message):
    with pytest.raises(UsageError, match=message):
        TuneConfig(task="binary", **kwargs)


def test_the_space_fits_exactly_the_images_it_says():
    TuneConfig(task="binary", image_size=(32, 200), max_blocks=4)  # 32 px: the first pooling and 4 blocks
    with pytest.raises(UsageError, match="--max-blocks 3"):
        TuneConfig(task="binary", image_size=(31, 200), max_blocks=4)


def test_choose_best_follows_the_objective_and_breaks_ties_on_validation_then_by_order():
    def row(trial, value, status="COMPLETED", loss=0.5, accuracy=0.5):
        return TrialRow(trial, status, {}, value, {"val_loss": loss, "val_accuracy": accuracy}, 1, 1.0)

    trials = [row("0", 0.5), row("1", 0.2), row("2", 0.9), row("3", 0.2), row("4", None, "FAILED"),
              row("5", math.nan)]
    assert choose_best(trials, "val_loss").trial == "1"
    assert choose_best(trials, "val_macro_f1").trial == "2"
    assert choose_best([row("0", None, "FAILED")], "val_loss") is None
    tied = [row("0", 1.0, loss=0.3), row("1", 1.0, loss=0.1), row("2", 1.0, loss=0.1)]
    assert choose_best(tied, "val_macro_f1").trial == "1"  # the lower validation loss, then the earlier trial
    tied = [row("0", 0.3, accuracy=0.6), row("1", 0.3, accuracy=0.9)]
    assert choose_best(tied, "val_loss").trial == "1"  # the higher validation accuracy


# -- one search ----------------------------------------------------------------------------------


def test_every_trial_is_recorded(searched):
    layout, _, result, fitted = searched
    out = layout.task_models("binary") / TUNE_DIR
    table = rows(out / TRIALS)
    assert [r["trial"] for r in table] == [t.trial for t in result.trials] and len(table) == 3
    assert len(fitted) == 3 and all(f["epochs"] == 1 for f in fitted)  # one fresh fit per trial
    for r in table:
        assert r["status"] == "COMPLETED" and r["family"] == "cnn" and r["epochs"] == "1"
        assert float(r["seconds"]) > 0 and r["objective"] == r["val_loss"]
        assert 2 <= int(r["conv_blocks"]) <= 4 and r["filters"] in {"8", "16", "32"}
        assert 0 <= float(r["val_macro_f1"]) <= 1 and r["class_weight"] in {"none", "balanced"}
        assert r["dropout"] in {"0.0", "0.1", "0.2", "0.3", "0.4", "0.5"}
    assert (out / TUNING_PLOT).stat().st_size > 0 and (out / PROJECT / "oracle.json").is_file()
    assert json.loads((out / TUNE_INFO).read_text())["config"]["task"] == "binary"


def test_the_best_trial_is_the_best_by_the_objective_on_validation(searched):
    layout, _, result, _ = searched
    out = layout.task_models("binary") / TUNE_DIR
    table = rows(out / TRIALS)
    assert len({r["objective"] for r in table}) == 3, "three distinct scores, or the check proves nothing"
    lowest = min(table, key=lambda r: float(r["val_loss"]))
    info = json.loads((out / BEST_HPARAMS).read_text())
    assert info["trial"] == lowest["trial"] == result.best.trial
    assert info["objective"] == {"name": "val_loss", "direction": "min", "value": float(lowest["val_loss"])}
    assert info["task"] == "binary" and info["classes"] == ["cog", "toon"] and info["image_size"] == [48, 48]
    assert info["split"]["seed"] == 5 and "keras_tuner" in info["versions"]
    assert f"--hparams {out / BEST_HPARAMS} --seed 5 --epochs 1 --image-size 48x48" in result.summary()
    for name, value in info["hyperparameters"].items():
        assert lowest[name] == (str(value).lower() if isinstance(value, bool) else repr(value)
                                if isinstance(value, float) else str(value))


def test_the_test_crops_never_reach_the_search(searched):
    layout, records, _, fitted = searched
    plan = plan_split(records, get_task("binary"), (0.6, 0.2, 0.2), 5)  # train --seed 5's test split
    test = {str(layout.pool / a.crop) for a in plan.files("test")}
    others = {str(layout.pool / a.crop) for a in plan.assignments} - test
    assert len(test) == 4
    for call in fitted:
        seen = set(call["train"]) | set(call["validate"])
        assert not seen & test
        assert seen == others and not set(call["train"]) & set(call["validate"])
    assert fitted[0]["train"] == fitted[1]["train"] == fitted[2]["train"]  # ONE split for the whole search


def test_an_existing_search_needs_resume_or_overwrite(searched):
    layout, _, result, _ = searched
    with pytest.raises(UsageError, match="already holds a search; pass --resume"):
        tune(layout, TuneConfig(**TINY))
    with pytest.raises(UsageError, match="max_epochs=1 \\(now 2\\)"):
        tune(layout, TuneConfig(**{**TINY, "max_epochs": 2, "resume": True}))
    again = tune(layout, TuneConfig(**{**TINY, "resume": True}))  # nothing left to run: the same result
    assert again.resumed == 3 and [t.trial for t in again.trials] == [t.trial for t in result.trials]


def test_a_search_folder_of_another_task_is_refused(tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", POOL, size=(48, 48))
    out = layout.task_models("binary") / TUNE_DIR
    out.mkdir(parents=True)
    (out / TUNE_INFO).write_text(json.dumps({"config": {"task": "suit"}}))
    with pytest.raises(UsageError, match="holds a search for task 'suit', not 'binary'"):
        tune(layout, TuneConfig(**{**TINY, "resume": True}))
    assert not (out / TRIALS).exists()


def test_an_empty_or_too_small_pool_is_named(tmp_path):
    with pytest.raises(PoolError, match="extract"):
        tune(Layout.from_dirs(tmp_path / "none", tmp_path / "models"), TuneConfig(**TINY))
    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 2, "toon_cat": 2}, size=(48, 48))
    with pytest.raises(SplitError, match="cannot give every class a crop in each split"):
        tune(layout, TuneConfig(**TINY))
    assert not layout.task_models("binary").exists()


# -- resume after a real kill ----------------------------------------------------------------------


def test_the_pretrained_family_comes_from_keras_cache_only_a_search_never_downloads(tmp_path, monkeypatch):
    import toonvision.models as models_module
    from toonvision.tune import _pretrained_weights

    def no_network(*args, **kwargs):
        raise AssertionError("tune tried to download weights")

    monkeypatch.setattr(models_module, "download_weights", no_network)
    monkeypatch.setattr(models_module, "_keras_cache_dirs", lambda: [tmp_path / "keras", tmp_path / "tmp-keras"])
    config = TuneConfig(**TINY)
    assert _pretrained_weights(config) is None  # not cached: the family is left out, nothing fetched
    cached = tmp_path / "tmp-keras" / "models" / models_module.mobilenet_weights_file_name((48, 48))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert _pretrained_weights(config) == str(cached)


def test_a_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", POOL, size=(48, 48))
    command = [
        sys.executable, "-m", "toonvision", "--img-dir", str(layout.img_dir), "--models-dir", str(tmp_path / "m"),
        "-q", "tune", "--task", "binary", "--algorithm", "random", "--max-trials", "3", "--max-epochs", "1",
        "--seed", "5", "--image-size", "48x48", "--batch-size", "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    trials_csv = tmp_path / "m" / "binary" / TUNE_DIR / TRIALS
    deadline = time.monotonic() + 240
    while not (trials_csv.exists() and len(rows(trials_csv)) >= 1):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the first trial never finished"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    survived = rows(trials_csv)
    assert 1 <= len(survived) < 3, "the search ended before the kill; nothing was tested"

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    after = rows(trials_csv)
    assert [r["trial"] for r in after] == ["0", "1", "2"] and all(r["status"] == "COMPLETED" for r in after)
    assert after[: len(survived)] == survived  # finished trials kept as they were (their seconds too), not redone
    project = tmp_path / "m" / "binary" / TUNE_DIR / PROJECT
    assert sorted(p.name for p in project.glob("trial_*")) == ["trial_0", "trial_1", "trial_2"]


def test_a_search_cut_between_keras_tuners_two_writes_runs_that_trial_again(tmp_path, monkeypatch):
    """keras-tuner writes a new trial's trial.json, then oracle.json; a kill between the two loses no trial."""
    from keras_tuner.src.engine import oracle as oracle_module

    layout, _ = write_colour_pool(tmp_path / "img", POOL, size=(48, 48))
    real_save_trial = oracle_module.Oracle._save_trial

    def killed_after_trial_json(self, trial):
        real_save_trial(self, trial)
        if trial.trial_id == "1" and trial.status == "RUNNING":
            raise KeyboardInterrupt  # trial_1/trial.json says RUNNING; oracle.json does not know the trial yet

    monkeypatch.setattr(oracle_module.Oracle, "_save_trial", killed_after_trial_json)
    with pytest.raises(KeyboardInterrupt):
        tune(layout, TuneConfig(**TINY))
    monkeypatch.undo()
    out = layout.tune_dir("binary")
    assert [r["trial"] for r in rows(out / TRIALS)] == ["0"]

    tune(layout, TuneConfig(**TINY, resume=True))
    after = rows(out / TRIALS)
    assert [r["trial"] for r in after] == ["0", "1", "2"] and all(r["status"] == "COMPLETED" for r in after)


# -- train --hparams -------------------------------------------------------------------------------


def _conv_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def test_train_hparams_builds_the_model_the_file_describes(tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", POOL, size=(48, 48))
    spec = {"conv_blocks": 2, "filters": 8, "kernel_size": 5, "batch_norm": True, "dropout": 0.2,
            "learning_rate": 0.003, "lr_schedule": "exponential", "class_weight": "balanced", "augment": True}
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"task": "binary", "hyperparameters": spec}))
    config = TrainConfig(task="binary", runs=1, epochs=1, seed=5, image_size=(48, 48), batch_size=4, hparams=path)
    assert config.augmented  # augmentation follows the file
    result = train(layout, config)
    model = keras.models.load_model(result.output / "best.keras")
    convs = _conv_layers(model)
    assert [c.filters for c in convs] == [8, 16] and all(c.kernel_size == (5, 5) for c in convs)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 2
    assert model.get_layer("dropout").rate == pytest.approx(0.2)
    info = json.loads((result.output / "best.json").read_text())
    assert info["model"] == "tuned" and info["hparams"] == Hyperparameters.from_dict(spec).to_dict()
    assert info["augment"] is True and info["dropout"] == pytest.approx(0.2)
    recorded = json.loads((result.output / "train.json").read_text())["config"]
    assert recorded["hparams"]["conv_blocks"] == 2


def test_train_hparams_takes_the_file_tune_wrote(searched, tmp_path):
    layout, _, result, _ = searched
    config = TrainConfig(task="binary", runs=1, epochs=1, seed=5, image_size=(48, 48), batch_size=4,
                         hparams=result.output / BEST_HPARAMS)
    trained = train(Layout.from_dirs(layout.img_dir, tmp_path / "models"), config)
    model = keras.models.load_model(trained.output / "best.keras")
    assert len(_conv_layers(model)) == result.best.hyperparameters["conv_blocks"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"hyperparameters": {"conv_blocks": 0}}', "conv_blocks must be an integer >= 1"),
        ('{"hyperparameters": {"layers": 3}}', "unknown hyperparameter"),
        ("not json", "not a JSON file"),
    ],
)
def test_a_bad_hparams_file_is_a_usage_error(tmp_path, content, message):
    path = tmp_path / "h.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        TrainConfig(task="binary", hparams=path)
    path.write_text('{"conv_blocks": 4}')
    with pytest.raises(UsageError, match="leave out --model"):
        TrainConfig(task="binary", model="optimized", hparams=path)
    with pytest.raises(UsageError, match="at least 32x32 pixels, got 30x100"):
        TrainConfig(task="binary", hparams=path, image_size=(30, 100))
