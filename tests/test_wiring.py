"""End to end: ``train`` and ``compare`` wire augmentation, validation, test and grouping as promised.

Each piece (augmentation, datasets, the planner) has unit tests of its own; these tests check what
Keras actually receives in real trainings, so a one-line slip in the wiring (no augmentation, the
test split as validation data, a grouping option that never reaches the planner) fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toonvision.layout import Layout
from toonvision.train import TrainConfig, train

from helpers import (
    IMAGE_SIZE,
    SIZE,
    batches,
    clean_images,
    cli,
    extract_pool,
    grouped_shots,
    keras_spy,
    manifest,
    matches,
)

SPLITS = ("train", "validate", "test")
TINY = dict(task="binary", epochs=1, seed=3, image_size=IMAGE_SIZE, batch_size=8)


def _pool(img_dir: Path) -> Layout:
    """12 screenshots of 2-6 crops each, plus dup000.png: shot000.png's exact bytes, boxed 1 px lower."""
    layout = extract_pool(img_dir, grouped_shots(6))
    shots = layout.screenshots
    shutil.copyfile(shots / "shot000.png", shots / "dup000.png")
    xml = (shots / "shot000.xml").read_text().replace("<ymin>4</ymin>", "<ymin>5</ymin>")
    (shots / "dup000.xml").write_text(xml.replace("<ymax>36</ymax>", "<ymax>37</ymax>").replace("shot000", "dup000"))
    cli("--img-dir", img_dir, "-q", "extract", "--workers", "1")
    return layout


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Layout:
    return _pool(tmp_path_factory.mktemp("wiring") / "img")


@pytest.fixture(scope="module")
def trained(pool):
    """A 3-run ``baseline`` and a 1-run ``optimized`` training of the pool, with what Keras was given."""
    out = {}
    for model, runs in (("baseline", 3), ("optimized", 1)):
        layout = Layout.from_dirs(pool.img_dir, pool.img_dir.parent / f"models-{model}")
        with keras_spy() as seen:
            train(layout, TrainConfig(model=model, runs=runs, **TINY))
        assert len(seen) == runs and all(r.validate is not None and r.test is not None for r in seen)
        out[model] = layout, seen
    return out


@pytest.fixture(scope="module")
def crops(pool):
    """Every crop of the pool: names (relative to the pool) and clean images in that order."""
    names = sorted(manifest(pool))
    return names, clean_images([pool.pool / n for n in names], IMAGE_SIZE)


def _plan(layout: Layout) -> dict[str, list[tuple[str, str]]]:
    """best.json's split: (crop, class) per split."""
    info = json.loads((layout.task_models("binary") / "best.json").read_text())
    columns = info["split"]["columns"]
    at = {c: columns.index(c) for c in ("crop", "class", "split")}
    plan = {s: [] for s in SPLITS}
    for row in info["split"]["assignments"]:
        plan[row[at["split"]]].append((row[at["crop"]], row[at["class"]]))
    return plan


def _crops_seen(dataset, crops) -> list[str]:
    """Which pool crop each image of one pass over a clean dataset is (fails on an image that is none)."""
    names, clean = crops
    images, _ = batches(dataset)
    found = matches(images, clean)
    assert None not in found, f"{found.count(None)} of {len(found)} images are not a clean crop of the pool"
    return [names[i] for i in found]


# -- 1. augmentation reaches training batches, and only them -------------------------------------


def test_optimized_training_batches_are_augmented_while_validate_and_test_batches_are_clean(trained, crops):
    layout, (run,) = trained["optimized"]
    plan = _plan(layout)
    names, clean = crops
    train_clean = clean[[names.index(c) for c, _ in plan["train"]]]
    for epoch in range(2):  # a fresh draw every epoch: no image ever equals its clean resize
        images, _ = batches(run.train)
        assert len(images) == len(plan["train"])
        assert matches(images, train_clean) == [None] * len(images), f"epoch {epoch}: unaugmented images"
    for split in ("validate", "test"):
        dataset = getattr(run, split)
        assert sorted(_crops_seen(dataset, crops)) == sorted(c for c, _ in plan[split])


def test_baseline_never_augments_training_batches(trained, crops):
    layout, runs = trained["baseline"]
    chosen = json.loads((layout.task_models("binary") / "best.json").read_text())["run"]
    plan = _plan(layout)
    assert sorted(_crops_seen(runs[chosen].train, crops)) == sorted(c for c, _ in plan["train"])
    for run in runs:  # every run, every split: clean images, each crop once
        for split in SPLITS:
            seen = _crops_seen(getattr(run, split), crops)
            assert len(seen) == len(set(seen))


@pytest.mark.parametrize("model", ["baseline", "optimized"])
def test_validate_and_test_batches_carry_the_labels_of_their_crops(trained, crops, model):
    layout, runs = trained[model]
    chosen = json.loads((layout.task_models("binary") / "best.json").read_text())
    classes, plan = chosen["classes"], _plan(layout)
    run = runs[chosen["run"]]
    names, clean = crops
    for split in ("validate", "test"):
        images, labels = batches(getattr(run, split))
        of = dict(plan[split])
        found = [names[i] for i in matches(images, clean)]
        assert [classes[int(v)] for v in labels] == [of[c] for c in found]


# -- 2. validation is validation: evaluate reproduces best.json ----------------------------------


@pytest.mark.parametrize("model", ["baseline", "optimized"])
def test_evaluate_on_validate_and_test_reproduces_the_metrics_in_best_json(trained, model, tmp_path):
    layout, _ = trained[model]
    best = json.loads((layout.task_models("binary") / "best.json").read_text())
    for split in ("validate", "test"):
        out = tmp_path / split
        cli("--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q",
            "evaluate", "--task", "binary", "--split", split, "--out", out)
        scored = json.loads((out / "evaluation.json").read_text())
        recorded = best["metrics"][split]
        assert scored["crops"] == len(_plan(layout)[split])
        assert scored["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-6), split
        assert scored["loss"] == pytest.approx(recorded["loss"], rel=1e-4, abs=1e-6), split


# -- 4. group-awareness through train and compare --------------------------------------------------


def _sources_by_split(run, crops, pool: Layout) -> dict[str, set[str]]:
    rows = manifest(pool)
    return {s: {rows[c]["source_sha256"] for c in _crops_seen(getattr(run, s), crops)} for s in SPLITS}


def _assert_grouped(runs, crops, pool: Layout) -> None:
    rows = manifest(pool)
    assert {r["source"] for r in rows.values()} >= {"shot000.png", "dup000.png"}
    for k, run in enumerate(runs):
        sources = _sources_by_split(run, crops, pool)
        for a, b in (("train", "validate"), ("train", "test"), ("validate", "test")):
            assert not sources[a] & sources[b], f"run {k}: a screenshot in both {a} and {b}"
        names = {s: {rows[c]["source"] for c in _crops_seen(getattr(run, s), crops)} for s in SPLITS}
        (home,) = [s for s in SPLITS if "shot000.png" in names[s]]
        assert "dup000.png" in names[home], f"run {k}: two copies of one screenshot in different splits"


def test_no_screenshot_spans_two_splits_in_any_training_run(trained, crops, pool):
    _, runs = trained["baseline"]
    _assert_grouped(runs, crops, pool)


def test_no_screenshot_spans_two_splits_in_any_comparison_run(crops, pool, tmp_path):
    with keras_spy() as runs:
        cli("--img-dir", pool.img_dir, "--models-dir", tmp_path / "models", "-q", "compare", "--task", "binary",
            "--models", "baseline", "--runs", "2", "--epochs", "1", "--seed", "3", "--image-size", SIZE,
            "--batch-size", "8")
    assert len(runs) == 2
    _assert_grouped(runs, crops, pool)


@pytest.mark.parametrize("command", ["train", "compare"])
def test_no_group_reaches_the_planner(crops, pool, tmp_path, command):
    extra = ["--models", "baseline"] if command == "compare" else []
    with keras_spy() as runs:
        cli("--img-dir", pool.img_dir, "--models-dir", tmp_path / "models", "-q", command, "--task", "binary",
            *extra, "--runs", "1", "--epochs", "1", "--seed", "3", "--image-size", SIZE, "--batch-size", "8",
            "--no-group")
    sources = _sources_by_split(runs[0], crops, pool)
    shared = (sources["train"] & sources["validate"]) | (sources["train"] & sources["test"])
    assert shared, "--no-group split no screenshot: the option did not reach the planner"


def test_min_per_class_reaches_the_planner_in_train_and_compare(tmp_path):
    shots = grouped_shots(4, ("cog_bb_a", "toon_cat")) + [["cog_sb_rare"], ["cog_sb_rare"], ["cog_sb_rare"]]
    layout = extract_pool(tmp_path / "img", shots)
    common = ["--task", "label", "--runs", "1", "--epochs", "1", "--seed", "3", "--image-size", SIZE,
              "--batch-size", "8", "--min-per-class", "4"]
    base = ["--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q"]
    with keras_spy() as runs:
        cli(*base, "train", *common)
        cli(*base, "compare", *common, "--models", "baseline")
    assert json.loads((layout.task_models("label") / "best.json").read_text())["classes"] == ["cog_bb_a", "toon_cat"]
    assert json.loads((layout.task_models("label") / "compare" / "compare.json").read_text())["classes"] == [
        "cog_bb_a", "toon_cat"]
    for run in runs:
        assert {int(v) for s in SPLITS for v in batches(getattr(run, s))[1]} == {0, 1}
    # without the option the rare class is trained on: the option is what left it out
    with keras_spy():
        cli(*base, "train", *common[:-2], "--overwrite")
    assert "cog_sb_rare" in json.loads((layout.task_models("label") / "best.json").read_text())["classes"]



# -- predict preprocesses as training does -----------------------------------------------------------


def test_predict_gives_the_probabilities_the_model_gives_the_batches_training_validated_on(trained, crops):
    import keras

    layout, runs = trained["optimized"]
    info = json.loads((layout.task_models("binary") / "best.json").read_text())
    run = runs[info["run"]]
    images, _ = batches(run.validate)  # what the training pipeline fed Keras
    names = _crops_seen(run.validate, crops)
    model = keras.saving.load_model(layout.task_models("binary") / "best.keras")
    expected = dict(zip([Path(n).name for n in names], model.predict(images, verbose=0)[:, 0], strict=True))

    result = cli("--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q", "predict",
                 layout.task_models("binary"), *[layout.pool / n for n in names], "--format", "json")
    rows = json.loads(result.stdout)["predictions"]
    assert len(rows) == len(expected)
    for row in rows:
        assert row["probabilities"]["toon"] == pytest.approx(expected[Path(row["file"]).name], abs=1e-5), row["file"]
