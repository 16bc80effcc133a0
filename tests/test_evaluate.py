"""evaluate: honest metrics on the model's own split, predictions aligned with files.

The model, pool and split builders here are shared with test_modelfile, test_predict and test_explain.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

keras = pytest.importorskip("keras")

from toonvision.cli import main  # noqa: E402
from toonvision.errors import PoolError, UsageError  # noqa: E402
from toonvision.evaluate import evaluate  # noqa: E402
from toonvision.layout import Layout  # noqa: E402
from toonvision.manifest import CropRecord, save_manifest  # noqa: E402
from toonvision.split import Assignment, SplitPlan, plan_to_dict, write_split  # noqa: E402

SIZE = (24, 16)  # the models' input: height, width
CROP = (20, 30)  # the crops on disk: width, height (resized to SIZE, as in training)
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
CHANNEL = {"red": 0, "green": 1, "blue": 2}


# -- helpers shared with test_modelfile, test_predict and test_explain ---------------------------


def colour_image(colour: str, size: tuple[int, int] = CROP, seed: int = 0) -> Image.Image:
    """A crop of one colour with some noise; ``size`` is (width, height)."""
    noise = np.random.default_rng(seed).integers(-20, 21, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8), "RGB")


def colour_model(classes: tuple[str, ...], size: tuple[int, int] = SIZE) -> "keras.Model":
    """A fixed-weight classifier that names the dominant colour: right on every crop, by construction.

    1x1 convolution (identity) -> global average -> head that reads each class's channel.
    Binary: one sigmoid unit, P(classes[1]), like the project's binary models.
    """
    inputs = keras.Input((*size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    conv = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    binary = len(classes) == 2
    head = keras.layers.Dense(1 if binary else len(classes), activation="sigmoid" if binary else "softmax", name="head")
    outputs = head(x)
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3)])
    kernel = np.zeros((3, 1 if binary else len(classes)), dtype="float32")
    if binary:
        kernel[CHANNEL[classes[1]], 0], kernel[CHANNEL[classes[0]], 0] = 10.0, -10.0
    else:
        for j, cls in enumerate(classes):
            kernel[CHANNEL[cls], j] = 10.0
    head.set_weights([kernel, np.zeros(kernel.shape[1], dtype="float32")])
    if binary:
        model.compile(loss="binary_crossentropy", metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])
    else:
        model.compile(loss="sparse_categorical_crossentropy",
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


def colour_pool(img_dir: Path, crops: list[tuple[str, str, str]]) -> tuple[Layout, dict[str, str]]:
    """A pool of (label, split, content colour) crops named so the content can be told from the path."""
    layout = Layout.from_dirs(img_dir, img_dir.parent / "models")
    records, content = [], {}
    for n, (label, _split, colour) in enumerate(crops):
        crop = f"{label}/{label}_{n}_looks_{colour}.png"
        (layout.pool / label).mkdir(parents=True, exist_ok=True)
        colour_image(colour, seed=n).save(layout.pool / crop)
        records.append(CropRecord(crop, label, label, n, f"shot{n}.png", 0, 0, CROP[0], CROP[1], CROP[0], CROP[1],
                                  f"sha{n}", f"crop{n}"))
        content[crop] = colour
    save_manifest(layout.manifest, records)
    return layout, content


def hand_plan(crops: list[tuple[str, str, str]], content: dict[str, str], task: str = "label", seed: int = 7) -> SplitPlan:
    """The split the crops say, in the order split_plan uses (split, class, crop)."""
    by_label = {c.split("/")[0]: [] for c in content}
    for (label, split, _colour), crop in zip(crops, content):
        by_label[label].append(Assignment(crop, label, label, split, f"shot{crop}"))
    order = {"train": 0, "validate": 1, "test": 2}
    assignments = sorted((a for group in by_label.values() for a in group), key=lambda a: (order[a.split], a.cls, a.crop))
    return SplitPlan(task, seed, (0.5, 0.25, 0.25), True, tuple(sorted(by_label)), tuple(assignments))


def save_best(layout: Layout, model: "keras.Model", plan: SplitPlan, recorded: dict | None = None) -> Path:
    """models/<task>/best.keras + best.json as `toonvision train` writes them."""
    out = layout.task_models(plan.task)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "best.keras")
    info = {
        "task": plan.task, "classes": list(plan.classes), "display_names": {c: c.title() for c in plan.classes},
        "image_size": list(SIZE), "model": "colour", "run": 3, "seed": plan.seed, "split": plan_to_dict(plan),
        "metrics": {"test": recorded or {"loss": 0.0, "accuracy": 0.0}}, "epochs": 1, "batch_size": 4,
        "versions": {}, "weights": None, "created": "2024-01-01T00:00:00+00:00",
    }
    (out / "best.json").write_text(json.dumps(info))
    return out / "best.keras"


# Three classes; every class has crops that look like another class in the test split.
THREE = [
    ("red", "train", "red"), ("red", "validate", "red"), ("red", "test", "red"), ("red", "test", "green"),
    ("red", "test", "red"),
    ("green", "train", "green"), ("green", "validate", "green"), ("green", "test", "green"),
    ("green", "test", "blue"),
    ("blue", "train", "blue"), ("blue", "validate", "blue"), ("blue", "test", "blue"), ("blue", "test", "blue"),
    ("blue", "test", "red"),
]
TWO = [
    ("red", "train", "red"), ("red", "validate", "red"), ("red", "test", "green"), ("red", "test", "red"),
    ("green", "train", "green"), ("green", "validate", "green"), ("green", "test", "green"),
    ("green", "test", "red"), ("green", "test", "red"),
]




# -- evaluate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("crops", [THREE, TWO], ids=["multiclass", "binary"])
def test_evaluate_scores_the_split_in_best_json_with_predictions_aligned_to_files(tmp_path, crops):
    from toonvision import datasets

    layout, content = colour_pool(tmp_path / "img", crops)
    plan = hand_plan(crops, content)
    model = colour_model(plan.classes)
    test_ds = datasets.from_plan(plan, layout.pool, "test", image_size=SIZE, batch_size=2)
    keras_loss, keras_accuracy = model.evaluate(test_ds, verbose=0)
    save_best(layout, model, plan, {"loss": keras_loss, "accuracy": keras_accuracy})
    # a different split in img/data/label must not be what gets scored
    other = SplitPlan("label", 99, plan.ratios, True, plan.classes, tuple(
        Assignment(a.crop, a.label, a.cls, {"train": "test", "test": "train"}.get(a.split, a.split), a.source)
        for a in plan.assignments))
    write_split(other, layout)

    result = evaluate(layout, layout.task_models("label"), batch_size=2)

    tested = {str(layout.pool / a.crop) for a in plan.files("test")}
    assert {p.file for p in result.predictions} == tested
    for p in result.predictions:  # the model names the colour it sees: aligned iff right for every file
        crop = str(Path(p.file).relative_to(layout.pool))
        assert p.predicted == content[crop], p.file
        assert p.label == crop.split("/")[0]
    assert result.metrics.accuracy == pytest.approx(keras_accuracy, abs=1e-7)
    assert result.loss == pytest.approx(keras_loss, rel=1e-4)
    assert result.metrics.accuracy < 1  # the mislabelled crops count as mistakes
    out = layout.task_models("label") / "evaluation"
    assert {p.name for p in result.files} == {
        "evaluation.json", "predictions.csv", "confusion_matrix.png", "worst_predictions.png"}
    report = json.loads((out / "evaluation.json").read_text())
    assert report["accuracy"] == result.metrics.accuracy
    assert report["confusion_matrix"]["counts"] == [list(r) for r in result.metrics.confusion]
    assert set(report["per_class"]) == set(plan.classes)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["file"] for r in rows] == list(test_ds.file_paths)  # file order, as Keras reads it
    assert list(rows[0]) == ["file", "actual", "predicted", "confidence", *(f"p_{c}" for c in plan.classes)]
    assert "weighted avg" in result.summary()
    assert not list(out.glob("*.tmp"))


def test_evaluate_refuses_when_crops_of_the_models_split_are_gone(tmp_path):
    layout, content = colour_pool(tmp_path / "img", THREE)
    plan = hand_plan(THREE, content)
    save_best(layout, colour_model(plan.classes), plan)
    gone = plan.files("test")[0].crop
    (layout.pool / gone).unlink()
    with pytest.raises(PoolError, match=gone):
        evaluate(layout, task="label")
    # the validate split is still whole
    assert evaluate(layout, task="label", split="validate", plots=False).metrics.total == 3


def test_evaluate_cli_prints_the_report(tmp_path):
    layout, content = colour_pool(tmp_path / "img", THREE)
    plan = hand_plan(THREE, content)
    save_best(layout, colour_model(plan.classes), plan)
    result = CliRunner().invoke(main, ["--img-dir", str(layout.img_dir), "--models-dir", str(layout.models_dir),
                                       "evaluate", "--task", "label", "--out", str(tmp_path / "ev"), "--worst", "2"])
    assert result.exit_code == 0, result.output
    assert "red (Red)" in result.output and "macro avg" in result.output
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()



def test_a_model_without_best_json_is_scored_on_the_task_folder_with_a_warning(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("toonvision"), "propagate", True)  # a CLI test may have turned it off
    layout, content = colour_pool(tmp_path / "img", THREE)
    plan = hand_plan(THREE, content)
    write_split(plan, layout)
    legacy = tmp_path / "old.keras"
    colour_model(plan.classes).save(tmp_path / "old.h5")
    (tmp_path / "old.h5").rename(legacy)

    result = evaluate(layout, legacy, task="label", classes="blue,green,red", out=tmp_path / "ev", plots=False)

    assert result.metrics.total == len(plan.files("test"))
    assert sorted(p.predicted for p in result.predictions) == sorted(
        content[a.crop] for a in plan.files("test"))
    assert "may hold crops it was trained on" in caplog.text
    with pytest.raises(UsageError, match="class folders"):
        evaluate(layout, legacy, task="label", classes="blue,green,purple", out=tmp_path / "ev")
    with pytest.raises(UsageError, match="--task"):
        evaluate(layout, legacy, classes="blue,green,red")



# -- end to end with a real training ------------------------------------------------------------


def test_evaluate_a_trained_model_reproduces_its_recorded_test_metrics(tmp_path):
    from conftest import write_colour_pool

    from toonvision.train import TrainConfig, train

    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "toon_cat": 6})
    train(layout, TrainConfig(task="binary", runs=1, epochs=1, seed=3, image_size=(48, 44), batch_size=4))
    best = json.loads((layout.task_models("binary") / "best.json").read_text())

    result = evaluate(layout, task="binary", plots=False)

    assert result.metrics.total == len([a for a in best["split"]["assignments"] if a[3] == "test"])
    assert result.metrics.accuracy == pytest.approx(best["metrics"]["test"]["accuracy"], abs=1e-6)
    assert result.loss == pytest.approx(best["metrics"]["test"]["loss"], rel=1e-4, abs=1e-6)
