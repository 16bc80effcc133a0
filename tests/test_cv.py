"""``toonvision cv``: grouped, stratified folds over train+validate, out-of-fold probabilities from models
that never trained on the crop, and a killed cross-validation that resumes by fold."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from toonvision.cv import CV_LEDGER, _set_test_aside, assign_folds
from toonvision.dedup import screenshot_groups
from toonvision.layout import Layout
from toonvision.manifest import CropRecord, load_pool
from toonvision.tasks import get_task
from toonvision.train import TrainConfig, resolve_image_size

from helpers import SIZE, cli, extract_pool, grouped_shots, keras_spy, run_killed

CV = ["cv", "--task", "binary", "--folds", "3", "--epochs", "1", "--image-size", SIZE, "--batch-size", "8",
      "--seed", "3"]


def _base(layout: Layout) -> list:
    return ["--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q"]


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Layout:
    """A real extracted pool: screenshots of 2 to 6 crops of two classes (so groups matter)."""
    return extract_pool(tmp_path_factory.mktemp("cv") / "img", grouped_shots(6))


def _records(n_shots: int = 60) -> list[CropRecord]:
    """Records of n screenshots of 1 to 4 crops, classes mixed within screenshots; shots 3k and 3k+1 identical."""
    records = []
    for s in range(n_shots):
        content = f"shot{s - s % 3 if s % 3 == 1 else s}"  # every third pair shares its pixels: one group
        for j in range(1 + s % 4):
            label = ("cog_bb_a", "toon_cat", "cog_lb_b")[(s + j) % 3]
            records.append(CropRecord(f"{label.split('_')[0]}/{s}_{j}.png", label, label.split("_")[0], j,
                                      f"s{s}.png", j, 0, j + 8, 8, 8, 8, f"file-{s}", f"crop-{s}-{j}",
                                      pixels_sha256=content))
    return records


def test_folds_are_grouped_stratified_and_cover_every_non_test_crop_once():
    records = _records()
    task = get_task("label")
    config = TrainConfig(task="label", seed=4)
    base = _set_test_aside(records, task, config)
    pool = [a for a in base.assignments if a.split != "test"]
    pooled = {a.crop for a in pool}
    fold_of = assign_folds(pool, [r for r in records if r.crop in pooled], 4, seed=4)

    assert sorted(fold_of) == sorted(pooled)  # every crop of train+validate once, no test crop
    assert not set(fold_of) & {a.crop for a in base.files("test")}
    groups = screenshot_groups(records).group_of
    folds_of_group = defaultdict(set)
    for crop, fold in fold_of.items():
        folds_of_group[groups[crop]].add(fold)
    assert all(len(f) == 1 for f in folds_of_group.values())  # a screenshot (or its pixel twin) is one fold
    assert any(len({groups[r.crop] for r in records if r.pixels_sha256 == c}) == 1 and
               len({r.source for r in records if r.pixels_sha256 == c}) == 2
               for c in {r.pixels_sha256 for r in records})  # the twins really were merged
    cls_of = {a.crop: a.cls for a in pool}
    per_class = Counter(cls_of.values())
    for k in range(4):
        counts = Counter(cls_of[c] for c, f in fold_of.items() if f == k)
        for cls, n in per_class.items():
            assert abs(counts[cls] - n / 4) <= 4, (k, cls, counts, per_class)  # stratified within a group's size
    again = assign_folds(list(reversed(pool)), records, 4, seed=4)
    assert again == fold_of  # input order does not matter


def test_out_of_fold_probabilities_come_from_models_that_never_trained_on_the_crop(pool, tmp_path):
    layout = Layout.from_dirs(pool.img_dir, tmp_path / "models")
    with keras_spy() as runs:
        cli(*_base(layout), *CV)
    out = layout.task_models("binary") / "cv"
    folds = {row["crop"]: int(row["fold"]) for row in _rows(out / "folds.csv")}
    oof = _rows(out / "oof.csv")
    assert len(runs) == 3
    records, _ = load_pool(layout)
    test = {a.crop for a in _set_test_aside(records, get_task("binary"), TrainConfig(task="binary", seed=3))
            .files("test")}
    assert test and not test & set(folds)
    assert sorted(r["crop"] for r in oof) == sorted([*folds, *test])  # every crop once, the set-aside ones too
    assert {r["crop"] for r in oof if r["fold"] == "test"} == test  # predicted by the fold models, trained on by none
    pool_root = Path(layout.pool)
    for k, run in enumerate(runs):
        held = {c for c, f in folds.items() if f == k}
        seen = {Path(p).relative_to(pool_root).as_posix() for p in run.train.file_paths + run.validate.file_paths}
        assert held and seen and not held & seen, f"fold {k} trained or validated on its held-out crops"
        assert {Path(p).relative_to(pool_root).as_posix() for p in run.test.file_paths} == held
        assert len(seen) + len(held) == len(folds)  # the rest of train+validate, no test crop
    for run in runs:
        assert not test & {Path(p).relative_to(pool_root).as_posix()
                           for p in run.train.file_paths + run.validate.file_paths}
    for row in oof:
        p = np.array([float(row["p_cog"]), float(row["p_toon"])])
        assert abs(p.sum() - 1) < 1e-6 and row["predicted"] == ("cog", "toon")[int(p.argmax())]
        assert row["fold"] == str(folds.get(row["crop"], "test"))
    info = json.loads((out / "cv.json").read_text())
    assert len(info["per_fold"]) == 3 and info["options"]["folds"] == 3
    assert info["mean"]["macro_f1"] == pytest.approx(np.mean([f["macro_f1"] for f in info["per_fold"]]))
    assert set(info["per_class_f1"]) == {"cog", "toon"}
    assert (out / "cv_metrics.png").read_bytes().startswith(b"\x89PNG")


def test_cv_takes_trains_image_size_auto_class_weight_and_selection(pool, tmp_path):
    """cv trains its folds as train would: --image-size auto from the crops, the weighting and metric asked."""
    layout = Layout.from_dirs(pool.img_dir, tmp_path / "models")
    options = ["cv", "--task", "binary", "--folds", "2", "--epochs", "1", "--image-size", "auto", "--batch-size", "8",
               "--seed", "3", "--class-weight", "none", "--select", "val_loss", "--patience", "2", "--resize", "pad"]
    with keras_spy() as runs:
        cli(*_base(layout), *options)
        cli(*_base(layout), "audit", *options[1:], "--out", tmp_path / "audit")  # finds this cv: no fold retrained
    records, _ = load_pool(layout)
    auto = resolve_image_size(TrainConfig(task="binary", image_size="auto"), records, get_task("binary")).image_size
    info = json.loads((layout.task_models("binary") / "cv" / "cv.json").read_text())
    assert tuple(info["options"]["image_size"]) == tuple(auto)
    assert (info["options"]["class_weight"], info["options"]["select"], info["options"]["resize"]) == (
        "none", "val_loss", "pad")
    assert len(runs) == 2 and all(run.fit_kwargs["class_weight"] is None for run in runs)
    assert all(tuple(run.train.element_spec[0].shape[1:3]) == tuple(auto) for run in runs)


def test_a_killed_cv_resumes_by_fold_without_redoing_the_finished_one(pool, tmp_path):
    layout = Layout.from_dirs(tmp_path / "img", tmp_path / "models")
    shutil.copytree(pool.img_dir / "unsorted", layout.pool)
    run_killed([*_base(layout), *CV], "fit", "fit", nth=2)  # fold 1's training starts: fold 0 is committed
    out = layout.task_models("binary") / "cv"
    ledger = json.loads((out / CV_LEDGER).read_text())
    assert [f["fold"] for f in ledger["done"]] == [0]
    assert not (out / "cv.json").exists()

    refused = cli(*_base(layout), *CV, "--epochs", "2", "--resume", expect=2)
    assert "--resume needs the same options" in refused.output
    assert cli(*_base(layout), *CV, expect=2).exit_code == 2  # neither --resume nor --overwrite: refused

    with keras_spy() as runs:
        cli(*_base(layout), *CV, "--resume")
    assert len(runs) == 2  # folds 1 and 2 only
    fold0 = dict(zip(ledger["done"][0]["crops"], ledger["done"][0]["probabilities"], strict=True))
    oof = {r["crop"]: r for r in _rows(out / "oof.csv")}
    for crop, p in fold0.items():
        assert [float(oof[crop]["p_cog"]), float(oof[crop]["p_toon"])] == pytest.approx(p, abs=1e-12)
    assert [f["fold"] for f in json.loads((out / "cv.json").read_text())["per_fold"]] == [0, 1, 2]


def _header(pool: str = "p1", epochs: int = 1) -> dict:
    return {"version": 1, "config": {"task": "binary", "epochs": epochs, "folds": 3}, "pool": pool,
            "classes": ["cog", "toon"], "test_set_aside": 2, "folds": {"cog/a.png": 0}}


def test_the_fold_ledger_refuses_another_pool_or_options_and_never_replaces_silently(tmp_path):
    from toonvision.cv import FoldResult, _ledger_text, _start
    from toonvision.errors import UsageError

    done = [FoldResult(0, 3, 1.5, ("cog/a.png",), ((0.25, 0.75),), ("toon/t.png",), ((0.5, 0.5),))]
    (tmp_path / CV_LEDGER).write_text(_ledger_text(_header(), done))
    assert _start(tmp_path, _header(), resume=True, overwrite=False) == done  # round trip of a committed fold
    with pytest.raises(UsageError, match="changed since this cross-validation started"):
        _start(tmp_path, _header(pool="p2"), resume=True, overwrite=False)
    with pytest.raises(UsageError, match="epochs=1 \\(now 2\\)"):
        _start(tmp_path, _header(epochs=2), resume=True, overwrite=False)
    with pytest.raises(UsageError, match="--resume to continue it or --overwrite"):
        _start(tmp_path, _header(), resume=False, overwrite=False)
    assert json.loads((tmp_path / CV_LEDGER).read_text())["done"][0]["fold"] == 0  # refusals changed nothing
    assert _start(tmp_path, _header(pool="p2"), resume=False, overwrite=True) == []
    assert json.loads((tmp_path / CV_LEDGER).read_text())["done"] == []


def test_a_class_in_fewer_screenshot_groups_than_folds_is_a_split_error_naming_it():
    from toonvision.errors import SplitError
    from toonvision.split import Assignment

    records = [r for r in _records(30) if r.label != "cog_lb_b" or r.source in ("s2.png", "s5.png")]
    cls = {"cog_bb_a": "cog_bb_a", "toon_cat": "toon_cat", "cog_lb_b": "cog_lb_b"}
    assignments = [Assignment(r.crop, r.label, cls[r.label], "train", r.source) for r in records]
    assert sorted(assign_folds(assignments, records, 2, seed=1)) == sorted(a.crop for a in assignments)  # 2 fit
    with pytest.raises(SplitError, match="cog_lb_b in fold"):
        assign_folds(assignments, records, 3, seed=1)
