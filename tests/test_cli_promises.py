"""Promises the README makes about commands no other test ran: a killed comparison, model refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from toonvision.fsutil import recover_swap, remove_stale_temp_files

from helpers import SIZE, cli, extract_pool, grouped_shots, run_killed, tree

COMPARE = ["compare", "--task", "binary", "--models", "baseline", "--runs", "2", "--epochs", "1",
           "--image-size", SIZE, "--batch-size", "8"]


def _results(folder) -> dict[str, bytes]:
    """The comparison's result files (not the lock, nor a killed writer's hidden temp file)."""
    return {name: data for name, data in tree(folder).items() if not name.startswith(".")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A pool and a finished comparison of it (seed 1), copied by each test that kills another one."""
    root = tmp_path_factory.mktemp("compared")
    layout = extract_pool(root / "img", grouped_shots(4))
    cli("--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q", *COMPARE, "--seed", "1")
    return root


BUILT = r"/\.compare\.building-[^/]+/"  # compare writes its results here, then swaps the folder in


@pytest.mark.parametrize("point, pattern, nth", [
    ("fit", "fit", 2),  # while run 1 trains
    ("before-rename", BUILT + r"compare\.json$", 1),  # every run done, the first result about to land
    ("after-rename", BUILT + r"compare_runs\.csv$", 1),  # some new results written, not all
    ("after-rename", r"/binary/compare\.old$", 1),  # the old folder set aside, the new one not yet in
], ids=["during the second run", "before the first result is written", "between two result files",
        "between the two renames of the swap"])
def test_a_killed_comparison_leaves_the_previous_results_in_place(compared, tmp_path, point, pattern, nth):
    shutil.copytree(compared, tmp_path / "root")
    img, models = tmp_path / "root" / "img", tmp_path / "root" / "models"
    folder = models / "binary" / "compare"
    before = _results(folder)
    assert {"compare.json", "compare_runs.csv", "compare_histories.jsonl"} <= set(before)

    run_killed(["--img-dir", img, "--models-dir", models, "-q", *COMPARE, "--seed", "2"], point, pattern, nth)

    recover_swap(folder)  # what the next comparison into the folder does first
    remove_stale_temp_files(folder)
    assert _results(folder) == before
    assert not [p for p in folder.parent.iterdir() if ".building-" in p.name or p.name.endswith(".old")]


def _save(model, path):
    model.save(path)
    return path


@pytest.fixture
def crop(tmp_path):
    path = tmp_path / "crop.png"
    Image.fromarray(np.full((48, 44, 3), 128, np.uint8), "RGB").save(path)
    return path


def _two_outputs(keras):
    x = keras.Input((48, 44, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(x, [keras.layers.Dense(1, activation="sigmoid")(pooled),
                           keras.layers.Dense(1, activation="sigmoid")(pooled)])


def _head(keras, shape, units=1):
    x = keras.Input(shape)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(x, keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")(pooled))


@pytest.mark.parametrize("build, message", [
    (_two_outputs, "the model outputs (None, 1), (None, 1); a classifier outputs (batch, classes)"),
    (lambda keras: _head(keras, (48, 44, 1)), "toonvision feeds RGB images of a fixed size"),
    (lambda keras: _head(keras, (None, None, 3)), "toonvision feeds RGB images of a fixed size"),
    (lambda keras: _head(keras, (48, 44, 3), units=3), "the model has 3 output units but 2 classes were given"),
], ids=["two outputs", "grayscale input", "variable-size input", "3 units for 2 classes"])
def test_predict_refuses_a_model_toonvision_cannot_feed_or_read(tmp_path, crop, build, message):
    import keras

    model = _save(build(keras), tmp_path / "odd.keras")
    result = cli("predict", model, crop, "--classes", "a,b", expect=1)
    assert message in result.output and "Traceback" not in result.output
