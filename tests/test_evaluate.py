"""evaluate: honest metrics on the model's own split, predictions aligned with files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toonvision.cli import main  # noqa: E402
from toonvision.errors import PoolError, UsageError  # noqa: E402
from toonvision.evaluate import evaluate  # noqa: E402
from toonvision.split import Assignment, SplitPlan, write_split  # noqa: E402

from colour_models import (  # noqa: E402
    SIZE,
    THREE,
    TWO,
    colour_model,
    colour_pool,
    hand_plan,
    save_best,
)

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
    from toonvision.train import TrainConfig, train

    from helpers import write_colour_pool

    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "toon_cat": 6})
    train(layout, TrainConfig(task="binary", runs=1, epochs=1, seed=3, image_size=(48, 44), batch_size=4))
    best = json.loads((layout.task_models("binary") / "best.json").read_text())

    result = evaluate(layout, task="binary", plots=False)

    assert result.metrics.total == len([a for a in best["split"]["assignments"] if a[3] == "test"])
    assert result.metrics.accuracy == pytest.approx(best["metrics"]["test"]["accuracy"], abs=1e-6)
    assert result.loss == pytest.approx(best["metrics"]["test"]["loss"], rel=1e-4, abs=1e-6)
