"""evaluate and predict: honest metrics on the model's own split, predictions aligned with files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import keras

from conftest import voc_xml  # noqa: E402
from toonvision.cli import main  # noqa: E402
from toonvision.errors import ModelFileError, PoolError, UsageError  # noqa: E402
from toonvision.evaluate import (  # noqa: E402
    classification_metrics,
    confusion_matrix,
    decide,
    evaluate,
    format_predictions,
    load_model,
    log_loss,
    open_model,
    predict,
    preprocess,
    row_normalise,
    worst_mistakes,
)
from toonvision.layout import Layout  # noqa: E402
from toonvision.manifest import CropRecord, save_manifest  # noqa: E402
from toonvision.split import Assignment, SplitPlan, plan_to_dict, write_split  # noqa: E402

SIZE = (24, 16)  # the models' input: height, width
CROP = (20, 30)  # the crops on disk: width, height (resized to SIZE, as in training)
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
CHANNEL = {"red": 0, "green": 1, "blue": 2}


# -- helpers shared with test_explain and test_compare ------------------------------------------


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


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_equal_a_hand_computed_confusion_matrix():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 2, 0, 1]
    # actual 0: predicted 0,0,1,2; actual 1: 1,1; actual 2: 2,0,1
    expected = [[2, 1, 1], [0, 2, 0], [1, 1, 1]]
    assert confusion_matrix(y_true, y_pred, 3).tolist() == expected
    m = classification_metrics(y_true, y_pred, ("a", "b", "c"))
    assert m.confusion == tuple(map(tuple, expected))
    assert m.accuracy == pytest.approx(5 / 9)
    # precision: TP / column sum (3, 4, 2); recall: TP / row sum (4, 2, 3)
    precision, recall = [2 / 3, 2 / 4, 1 / 2], [2 / 4, 2 / 2, 1 / 3]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert [s.precision for s in m.per_class] == pytest.approx(precision)
    assert [s.recall for s in m.per_class] == pytest.approx(recall)
    assert [s.f1 for s in m.per_class] == pytest.approx(f1)  # 4/7, 2/3, 2/5
    assert [s.support for s in m.per_class] == [4, 2, 3]
    assert (m.macro.precision, m.macro.recall, m.macro.f1) == pytest.approx((5 / 9, 11 / 18, np.mean(f1)))
    weights = np.array([4, 2, 3]) / 9
    assert m.weighted.precision == pytest.approx(31 / 54)
    assert m.weighted.recall == pytest.approx(m.accuracy)  # always so
    assert m.weighted.f1 == pytest.approx(float(np.dot(f1, weights)))
    assert m.macro.support == m.weighted.support == 9
    table = m.table({"a": "Apple"})
    assert "a (Apple)" in table and "macro avg" in table and "weighted avg" in table


@pytest.mark.parametrize(
    "y_true, y_pred, classes, precision, recall, f1",
    [
        # class b never predicted: precision 0 (no division by zero), F1 0
        ([0, 1, 1], [0, 0, 0], ("a", "b"), [1 / 3, 0.0], [1.0, 0.0], [0.5, 0.0]),
        # perfect
        ([0, 1, 2], [0, 1, 2], ("a", "b", "c"), [1.0] * 3, [1.0] * 3, [1.0] * 3),
    ],
)
def test_per_class_scores_edge_cases(y_true, y_pred, classes, precision, recall, f1):
    m = classification_metrics(y_true, y_pred, classes)
    assert [s.precision for s in m.per_class] == pytest.approx(precision)
    assert [s.recall for s in m.per_class] == pytest.approx(recall)
    assert [s.f1 for s in m.per_class] == pytest.approx(f1)


def test_row_normalise_and_worst_mistakes():
    assert row_normalise([[2, 2], [0, 0]]).tolist() == [[0.5, 0.5], [0.0, 0.0]]
    # wrong: indices 1 (0.9), 2 (0.6), 4 (0.9): most confident first, ties in file order
    assert worst_mistakes([0, 0, 1, 1, 0], [0, 1, 0, 1, 1], [0.99, 0.9, 0.6, 0.8, 0.9], 10) == [1, 4, 2]
    assert worst_mistakes([0, 0], [1, 1], [0.5, 0.7], 1) == [1]


def test_binary_decision_and_loss_match_keras():
    p = np.array([0.2, 0.5, 0.5000001, 0.9, 1.0], dtype="float32")
    probabilities = np.stack([1 - p, p], axis=1)
    indices, confidence = decide(probabilities)
    assert indices.tolist() == (p > 0.5).astype(int).tolist()  # Keras' BinaryAccuracy threshold
    assert confidence.tolist() == pytest.approx(np.maximum(p, 1 - p).tolist())
    y = np.array([0, 1, 1, 0, 1])
    keras_loss = float(keras.losses.BinaryCrossentropy()(y.reshape(-1, 1).astype("float32"), p.reshape(-1, 1)))
    assert log_loss(y, probabilities) == pytest.approx(keras_loss, rel=1e-5)


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


# -- predict ------------------------------------------------------------------------------------


def test_predict_preprocesses_exactly_as_training_decodes(tmp_path):
    import tensorflow as tf

    from toonvision import datasets
    from toonvision.images import load_image

    path = tmp_path / "crop.png"
    noise = np.random.default_rng(1).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    ours = preprocess([load_image(path)], SIZE)[0]
    training = datasets.decode_crop(tf.constant(str(path)), SIZE).numpy()
    assert ours.dtype == np.float32 and ours.shape == (*SIZE, 3)
    assert np.array_equal(ours, training)


def test_predict_on_a_screenshot_returns_one_row_per_object_with_its_box(tmp_path):
    shot = np.full((48, 64, 3), 128, dtype=np.uint8)
    boxes = [("red", (2, 2, 14, 20), "red"), ("green", (20, 5, 34, 30), "green"), ("red", (40, 10, 60, 40), "blue")]
    for _label, (x0, y0, x1, y1), colour in boxes:
        shot[y0:y1, x0:x1] = COLOURS[colour]
    Image.fromarray(shot).save(tmp_path / "shot.png")
    (tmp_path / "shot.xml").write_text(voc_xml("shot.png", [(label, box) for label, box, _ in boxes]))
    colour_image("blue").save(tmp_path / "crop.png")
    model_file = tmp_path / "m.keras"
    colour_model(("blue", "green", "red")).save(model_file)

    result = predict(model_file, [tmp_path / "shot.png", tmp_path / "crop.png"], classes="blue,green,red")

    rows = [(p.obj, p.box, p.label, p.predicted) for p in result.predictions]
    assert rows == [
        (0, (2, 2, 14, 20), "red", "red"), (1, (20, 5, 34, 30), "green", "green"), (2, (40, 10, 60, 40), "red", "blue"),
        (None, None, None, "blue"),
    ]
    assert result.exit_code == 0
    csv_text = result.format("csv").splitlines()
    assert csv_text[0].split(",")[:9] == ["file", "object", "xmin", "ymin", "xmax", "ymax", "label", "predicted", "confidence"]
    assert len(csv_text) == 5
    data = json.loads(result.format("json"))
    assert data["predictions"][2]["box"] == [40, 10, 60, 40]
    assert set(data["predictions"][0]["probabilities"]) == {"blue", "green", "red"}
    assert "shot.png" in result.format("table")
    by_xml = predict(model_file, [tmp_path / "shot.xml", tmp_path / "shot.png"], classes="blue,green,red")
    assert [p.box for p in by_xml.predictions] == [b for _, b, _ in boxes]  # the XML names its screenshot, once


def test_predict_folder_of_real_screenshots_and_a_bad_file(tmp_path, samples):
    model_file = tmp_path / "m.keras"
    colour_model(("blue", "green", "red")).save(model_file)
    folder = tmp_path / "in"
    shutil.copytree(samples, folder)
    (folder / "broken.png").write_bytes(b"not an image")
    result = predict(model_file, [folder], classes="blue,green,red")
    objects = sum(xml.read_text().count("<object>") for xml in samples.glob("*.xml"))
    assert len([p for p in result.predictions if p.obj is not None]) == objects
    assert any("broken.png" in p.file for p in result.problems)
    assert result.exit_code == 1


# -- model files ----------------------------------------------------------------------------------


def test_hdf5_model_renamed_keras_loads_and_predicts(tmp_path):
    model = keras.Sequential([
        keras.Input((*SIZE, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="softmax"),
    ])
    model.save(tmp_path / "x.h5")
    legacy = tmp_path / "toonvision_suit.keras"  # the original project's habit
    (tmp_path / "x.h5").rename(legacy)
    assert legacy.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"

    loaded = open_model(legacy, classes="bb,lb,cb,sb")
    assert loaded.info.legacy and loaded.info.image_size == SIZE and loaded.info.classes == ("bb", "lb", "cb", "sb")
    images = preprocess([colour_image("red"), colour_image("blue")], SIZE)
    assert np.allclose(loaded.probabilities(images), model.predict(images, verbose=0), atol=1e-6)
    colour_image("red").save(tmp_path / "c.png")
    assert len(predict(legacy, [tmp_path / "c.png"], classes="bb,lb,cb,sb").predictions) == 1

    with pytest.raises(UsageError, match="--classes"):
        open_model(legacy)
    with pytest.raises(ModelFileError, match="4 output units but 3 classes"):
        open_model(legacy, classes="a,b,c")


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


def test_a_lambda_layer_is_refused_unless_unsafe(tmp_path):
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x)).save(tmp_path / "lam.keras")
    with pytest.raises(ModelFileError, match="--unsafe"):
        load_model(tmp_path / "lam.keras")
    assert load_model(tmp_path / "lam.keras", unsafe=True).output_shape == (None, 1)
    colour_image("red").save(tmp_path / "c.png")
    refused = CliRunner().invoke(main, ["predict", str(tmp_path / "lam.keras"), str(tmp_path / "c.png"),
                                        "--classes", "a,b"])
    assert refused.exit_code == 1 and "--unsafe" in refused.output and "Traceback" not in refused.output
    allowed = CliRunner().invoke(main, ["predict", str(tmp_path / "lam.keras"), str(tmp_path / "c.png"),
                                        "--classes", "a,b", "--unsafe", "--format", "csv"])
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such model file"),
        (lambda p: p.write_bytes(b"hello, not a model"), "not a Keras model"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated zip"), "cannot load"),
    ],
)
def test_bad_model_files_are_clear_errors(tmp_path, make, message):
    path = tmp_path / "best.keras"
    make(path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_model_and_best_json_that_disagree_are_refused(tmp_path):
    layout, content = colour_pool(tmp_path / "img", TWO)
    plan = hand_plan(TWO, content)
    best = save_best(layout, colour_model(("blue", "green", "red")), plan)  # 3 outputs, 2 classes
    with pytest.raises(ModelFileError, match="3 output units but 2 classes"):
        open_model(best)
    with pytest.raises(UsageError, match="disagrees"):
        open_model(best, classes="red,green")


def test_format_predictions_rejects_unknown_formats():
    with pytest.raises(UsageError, match="--format"):
        format_predictions([], ("a", "b"), "xml")


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
