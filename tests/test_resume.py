"""``train --resume`` in full: a killed training resumes to exactly what an uninterrupted one gives,
and every way a resume cannot continue is refused with a message, leaving the training as it was."""

from __future__ import annotations

import json
import shutil

import pytest

from toonvision.layout import Layout
from toonvision.train import TrainConfig, train

from helpers import (
    IMAGE_SIZE,
    SIZE,
    assert_same_weights,
    best_json,
    cli,
    extract_pool,
    grouped_shots,
    ledger_rows,
    run_killed,
    tree,
    write_shots,
)

TRAIN = ["--task", "binary", "--epochs", "1", "--image-size", SIZE, "--batch-size", "8"]
CONFIG = dict(task="binary", epochs=1, image_size=IMAGE_SIZE, batch_size=8)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Layout:
    """An uninterrupted 3-run training (seed 5) of a pool of 2-6 crops per screenshot."""
    layout = extract_pool(tmp_path_factory.mktemp("clean") / "img", grouped_shots(5))
    train(layout, TrainConfig(runs=3, seed=5, **CONFIG))
    return layout


@pytest.fixture(scope="module")
def one_run(clean, tmp_path_factory) -> Layout:
    """The same pool trained for 1 run (seed 5): a training to resume, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("one")
    shutil.copytree(clean.img_dir / "unsorted", root / "img" / "unsorted")
    shutil.copytree(clean.screenshots, root / "img" / "raw" / "screenshots")
    layout = Layout.from_dirs(root / "img", root / "models")
    train(layout, TrainConfig(runs=1, seed=5, **CONFIG))
    return layout


def _copy(layout: Layout, to) -> Layout:
    shutil.copytree(layout.img_dir.parent, to)
    return Layout.from_dirs(to / "img", to / "models")


def _assert_same_training(layout: Layout, clean: Layout) -> None:
    out, ref = layout.task_models("binary"), clean.task_models("binary")
    assert ledger_rows(out / "runs.csv") == ledger_rows(ref / "runs.csv")  # every column but seconds
    assert best_json(out / "best.json") == best_json(ref / "best.json")  # all but the time stamp and file hash
    assert_same_weights(out / "best.keras", ref / "best.keras")
    assert (out / "histories.jsonl").read_text() == (ref / "histories.jsonl").read_text()
    split_csv = (layout.task_data("binary") / "split.csv", clean.task_data("binary") / "split.csv")
    assert split_csv[0].read_text() == split_csv[1].read_text()
    assert not (out / ".work").exists()
    assert not [p for p in out.rglob("*.tmp")]


def _base(layout: Layout) -> list:
    return ["--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q"]


def test_a_training_killed_right_after_run_0_commits_resumes_to_the_uninterrupted_result(clean, tmp_path):
    layout = Layout.from_dirs(tmp_path / "img", tmp_path / "models")
    shutil.copytree(clean.img_dir / "unsorted", layout.pool)
    run_killed([*_base(layout), "train", *TRAIN, "--runs", "3", "--seed", "5"],
               "after-rename", r"/binary/runs\.csv$", nth=1)
    out = layout.task_models("binary")
    assert [r["run"] for r in ledger_rows(out / "runs.csv")] == ["0"], "the kill did not land right after run 0"
    assert not (out / "best.keras").exists()  # run 0 was committed, its promotion cut short

    cli(*_base(layout), "train", *TRAIN, "--runs", "3", "--resume")  # no --seed: the training's own is kept

    _assert_same_training(layout, clean)


def test_resume_may_grow_runs_and_without_a_seed_keeps_the_trainings_seeds(clean, one_run, tmp_path):
    layout = _copy(one_run, tmp_path / "grow")
    result = train(layout, TrainConfig(runs=3, resume=True, **CONFIG))  # seed=None: train.json's seed 5
    assert result.resumed == 1 and [r.seed for r in result.runs] == [5, 6, 7]
    _assert_same_training(layout, clean)


def _files(layout: Layout) -> dict[str, bytes]:
    """models/binary/ but its lock file (which holds the pid of the last process that took it)."""
    return {name: data for name, data in tree(layout.task_models("binary")).items() if name != ".lock"}


def _refused(layout: Layout, code: int, message: str) -> None:
    """A resume of ``layout`` to 2 runs fails with ``message`` and changes no file of the training."""
    before = _files(layout)
    result = cli(*_base(layout), "train", *TRAIN, "--runs", "2", "--resume", expect=None)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    assert _files(layout) == before


def test_resume_is_refused_after_the_pool_changed(one_run, tmp_path):
    layout = _copy(one_run, tmp_path / "changed")
    write_shots(layout.screenshots, [["cog_bb_a", "toon_cat"]], seed=99, prefix="new")
    cli("--img-dir", layout.img_dir, "-q", "extract", "--workers", "1")
    _refused(layout, 2, "the pool's crops for task 'binary' changed since this training started")


def test_resume_is_refused_with_a_damaged_ledger(one_run, tmp_path):
    layout = _copy(one_run, tmp_path / "damaged")
    (layout.task_models("binary") / "runs.csv").write_text("run,seed\n0,not a number\n")
    _refused(layout, 1, "the ledger is damaged; pass --overwrite")


def test_resume_is_refused_without_train_json(one_run, tmp_path):
    layout = _copy(one_run, tmp_path / "no-train-json")
    (layout.task_models("binary") / "train.json").unlink()
    _refused(layout, 2, "but no train.json to resume from; pass --overwrite")


def test_resume_is_refused_when_an_option_changed(one_run, tmp_path):
    layout = _copy(one_run, tmp_path / "options")
    out = layout.task_models("binary")
    before = _files(layout)
    result = cli(*_base(layout), "train", *TRAIN, "--runs", "2", "--resume", "--model", "optimized", expect=2)
    assert "model='baseline' (now 'optimized')" in result.output and _files(layout) == before
    assert json.loads((out / "train.json").read_text())["config"]["model"] == "baseline"
