"""Splitting the pool: stratified, group-aware, reproducible, and swapped in whole."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from toonvision import split as split_module
from toonvision.cli import main
from toonvision.errors import PoolError, PoolLockedError, SplitError, UsageError
from toonvision.locks import locked
from toonvision.manifest import CropRecord
from toonvision.split import (
    SplitPlan,
    check_split_dirs,
    file_names,
    load_split,
    plan_from_dict,
    plan_split,
    plan_test_split,
    plan_to_dict,
    run_split,
    write_split,
)
from toonvision.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
LABEL = get_task("label")
SUIT = get_task("suit")


def records(spec: list[tuple[str, str]]) -> list[CropRecord]:
    """In-memory records from (label, source) pairs: the planner needs no disk."""
    out = []
    for n, (label, source) in enumerate(spec):
        out.append(CropRecord(f"{label.split('_')[0]}/{label}_{n}.png", label, label.split("_")[0], n, source,
                              0, 0, 10, 10, 10, 10, f"sha-{source}", f"c{n}"))
    return out


def one_per_source(counts: dict[str, int]) -> list[CropRecord]:
    return records([(label, f"{label}-{i}") for label, n in counts.items() for i in range(n)])


def screenshots(n_shots: int, labels: list[str], seed: int = 0, most: int = 6) -> list[CropRecord]:
    """Screenshots holding 1..most crops of mixed labels, like real street scenes."""
    rng = random.Random(seed)
    return records([(rng.choice(labels), f"shot{s}") for s in range(n_shots) for _ in range(rng.randint(1, most))])


def per_class_split(plan: SplitPlan) -> dict[str, list[int]]:
    counts = plan.counts()
    return {cls: [counts[cls, s] for s in plan.splits] for cls in plan.classes}


# --- rounding and stratification ---------------------------------------------------------------


@pytest.mark.parametrize(
    "n, ratios, expected",
    [
        (10, (0.6, 0.2, 0.2), [6, 2, 2]),
        (100, (0.6, 0.2, 0.2), [60, 20, 20]),
        (9, (0.7, 0.3), [6, 3]),  # 6.3 / 2.7: the larger remainder wins
        (11, (0.5, 0.3, 0.2), [6, 3, 2]),  # 5.5 / 3.3 / 2.2
        (3, (0.6, 0.2, 0.2), [1, 1, 1]),  # at least one in each split
        (4, (0.8, 0.1, 0.1), [2, 1, 1]),  # 3.2 / 0.4 / 0.4 -> one taken from train
        (2, (0.5, 0.5), [1, 1]),
    ],
)
def test_largest_remainder_counts(n: int, ratios: tuple[float, ...], expected: list[int]) -> None:
    plan = plan_split(one_per_source({"a": n, "b": 10}), LABEL, ratios, seed=1, group=False)
    assert per_class_split(plan)["a"] == expected


@pytest.mark.parametrize("ratios", [(0.6, 0.2, 0.2), (0.7, 0.3), (0.8, 0.1, 0.1), (0.34, 0.33, 0.33)])
@pytest.mark.parametrize("group", [False, True])
def test_every_class_gets_its_rounded_share_and_one_crop_per_split(ratios, group) -> None:
    sizes = {f"c{n:02d}": n for n in range(3, 41)}
    plan = plan_split(one_per_source(sizes), LABEL, ratios, seed=5, group=group)
    for cls, counts in per_class_split(plan).items():
        n = sizes[cls]
        exact = [n * r for r in ratios]
        assert sum(counts) == n
        assert all(c >= 1 for c in counts)
        if all(q >= 1 for q in exact):  # no minimum-one correction needed: plain largest remainder
            assert all(math.floor(q + 1e-9) <= c <= math.ceil(q - 1e-9) for c, q in zip(counts, exact, strict=True))
            assert sum(c - math.floor(q + 1e-9) for c, q in zip(counts, exact, strict=True)) == n - sum(
                math.floor(q + 1e-9) for q in exact)


def test_plan_lists_every_task_crop_once_and_leaves_out_other_labels() -> None:
    recs = one_per_source({"cog_bb_a": 5, "cog_lb_b": 5, "toon_cat": 7})
    plan = plan_split(recs, SUIT, (0.6, 0.2, 0.2), seed=1)
    assert plan.classes == ("bb", "lb")
    assert sorted(a.crop for a in plan.assignments) == sorted(r.crop for r in recs if r.label.startswith("cog"))
    assert plan.splits == ("train", "validate", "test")
    assert sum(len(plan.files(s)) for s in plan.splits) == 10
    assert plan.achieved_ratios()["bb"] == (0.6, 0.2, 0.2)


# --- groups ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "suit", "label"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_screenshot_straddles_splits_and_every_class_is_everywhere(task: str, seed: int) -> None:
    labels = ["cog_bb_a", "cog_lb_b", "cog_cb_c", "cog_sb_d", "toon_cat", "toon_dog"]
    plan = plan_split(screenshots(300, labels, seed), get_task(task), (0.6, 0.2, 0.2), seed=seed)
    splits_of_source = defaultdict(set)
    for a in plan.assignments:
        splits_of_source[a.source].add(a.split)
    assert all(len(s) == 1 for s in splits_of_source.values())
    counts = plan.counts()
    assert all(counts[cls, s] >= 1 for cls in plan.classes for s in plan.splits)
    for cls, achieved in plan.achieved_ratios().items():  # whole screenshots still land close to the ratios
        assert all(abs(a - r) < 0.05 for a, r in zip(achieved, plan.ratios, strict=True)), (cls, achieved)


def test_a_class_in_few_screenshots_still_reaches_every_split() -> None:
    # "rare" appears in exactly 3 screenshots, each shared with a common class
    spec = [("cog_bb_a", f"s{i}") for i in range(60)] + [("cog_lb_rare", f"s{i}") for i in (0, 1, 2)]
    spec += [("cog_lb_rare", "s0")] * 4
    plan = plan_split(records(spec), LABEL, (0.6, 0.2, 0.2), seed=3)
    assert all(n >= 1 for n in per_class_split(plan)["cog_lb_rare"])


def test_too_few_screenshots_for_a_class_names_it_and_suggests_no_group() -> None:
    spec = [("a", f"s{i}") for i in range(10)] + [("b", "x")] * 4 + [("b", "y")] * 3
    with pytest.raises(SplitError, match=r"b has 7 crops from only 2 screenshots.*--no-group"):
        plan_split(records(spec), LABEL, (0.6, 0.2, 0.2), seed=1)
    plan = plan_split(records(spec), LABEL, (0.6, 0.2, 0.2), seed=1, group=False)
    assert per_class_split(plan)["b"] in ([4, 2, 1], [4, 1, 2])  # 4.2/1.4/1.4: the tied remainder goes to one


# --- reproducibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("group", [True, False])
def test_same_seed_same_split_whatever_the_record_order(group: bool) -> None:
    recs = screenshots(200, ["a", "b", "c"], seed=4)
    shuffled = list(recs)
    random.Random(9).shuffle(shuffled)
    assert plan_split(recs, LABEL, (0.6, 0.2, 0.2), 7, group) == plan_split(shuffled, LABEL, (0.6, 0.2, 0.2), 7, group)


@pytest.mark.parametrize("group", [True, False])
def test_different_seeds_different_splits(group: bool) -> None:
    recs = screenshots(200, ["a", "b", "c"], seed=4)
    plans = [plan_split(recs, LABEL, (0.6, 0.2, 0.2), seed, group) for seed in range(5)]
    assert len({p.assignments for p in plans}) == 5


# --- a fixed test split ------------------------------------------------------------------------


@pytest.mark.parametrize("group", [True, False])
def test_a_fixed_test_split_is_the_same_for_every_re_split_and_no_test_crop_ever_moves(group: bool) -> None:
    recs = screenshots(200, ["a", "b", "c"], seed=4)
    test = plan_test_split(recs, LABEL, (0.6, 0.2, 0.2), 7, group=group)
    assert test == {a.crop for a in plan_split(recs, LABEL, (0.6, 0.2, 0.2), 7, group).files("test")}
    plans = [plan_split(recs, LABEL, (0.6, 0.2, 0.2), seed, group, fixed_test=test) for seed in range(7, 12)]
    assert all({a.crop for a in p.files("test")} == test for p in plans)  # identical test split in every run
    assert len({tuple(p.files("train")) for p in plans}) == 5  # train/validate are re-split per run
    for p in plans:
        assert p.ratios == (0.6, 0.2, 0.2) and len(p.assignments) == len(recs)
        counts = p.counts()
        assert all(counts[cls, s] >= 1 for cls in p.classes for s in p.splits)
        for cls, achieved in p.achieved_ratios().items():  # train/validate still 3:1 of what test left
            assert abs(achieved[0] - 0.6) < 0.06 and abs(achieved[1] - 0.2) < 0.06, (cls, achieved)
        if group:
            splits_of_source = defaultdict(set)
            for a in p.assignments:
                splits_of_source[a.source].add(a.split)
            assert all(len(v) == 1 for v in splits_of_source.values())
    # without a fixed test split (--resplit-test), the test split moves with the seed
    resplit = [{a.crop for a in plan_split(recs, LABEL, (0.6, 0.2, 0.2), seed, group).files("test")}
               for seed in range(7, 12)]
    assert len({frozenset(t) for t in resplit}) == 5


def test_a_fixed_test_split_that_does_not_fit_the_pool_is_refused() -> None:
    recs = screenshots(100, ["a", "b", "c"], seed=1)
    test = plan_test_split(recs, LABEL, (0.6, 0.2, 0.2), 3)
    with pytest.raises(SplitError, match="not crops of task label"):
        plan_split(recs, LABEL, (0.6, 0.2, 0.2), 4, fixed_test=test | {"x/unknown.png"})
    with pytest.raises(SplitError, match="no crop of class a"):
        plan_split(recs, LABEL, (0.6, 0.2, 0.2), 4, fixed_test={c for c in test if not c.startswith("a/")})
    per_shot = Counter(r.source for r in recs)
    one = min(r.crop for r in recs if r.crop in test and per_shot[r.source] > 1)
    with pytest.raises(SplitError, match="only some crops of screenshot"):
        plan_split(recs, LABEL, (0.6, 0.2, 0.2), 4, fixed_test=test - {one})
    with pytest.raises(UsageError, match="three ratios"):
        plan_test_split(recs, LABEL, (0.8, 0.2), 3)


def test_planning_uses_no_global_random_state() -> None:
    recs = screenshots(50, ["a", "b", "c"])
    state = random.getstate()
    plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1)
    assert random.getstate() == state


# --- small classes and bad options -------------------------------------------------------------


def test_tiny_classes_are_an_error_naming_them_and_the_fix() -> None:
    recs = one_per_source({"big": 20, "toon_horse": 2, "solo": 1})
    with pytest.raises(SplitError) as info:
        plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1)
    message = str(info.value)
    assert "toon_horse has 2 crops" in message and "solo has 1 crop" in message
    assert "--min-per-class 3" in message


def test_min_per_class_leaves_tiny_classes_out_with_a_warning(caplog) -> None:
    recs = one_per_source({"big": 20, "other": 9, "toon_horse": 2})
    with caplog.at_level(logging.WARNING, logger="toonvision.split"):
        plan = plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1, min_per_class=3)
    assert plan.classes == ("big", "other")
    assert plan.excluded == (("toon_horse", 2),)
    assert "toon_horse" in caplog.text and "2 crops" in caplog.text
    assert not any(a.label == "toon_horse" for a in plan.assignments)


def test_two_ratios_need_two_crops_per_class() -> None:
    plan = plan_split(one_per_source({"a": 2, "b": 2}), LABEL, (0.7, 0.3), 1)
    assert plan.splits == ("train", "validate")
    assert per_class_split(plan) == {"a": [1, 1], "b": [1, 1]}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"a": 10}, "fewer than 2 classes"),
        ({"toon_cat": 10, "toon_dog": 10}, "no crop of the pool belongs to task suit"),
    ],
)
def test_tasks_without_two_classes_are_refused(spec, message) -> None:
    with pytest.raises(SplitError, match=message):
        plan_split(one_per_source(spec), SUIT if "toon_cat" in spec else LABEL, (0.6, 0.2, 0.2), 1)


@pytest.mark.parametrize(
    "ratios",
    [(0.5, 0.6), (1.0,), (0.25, 0.25, 0.25, 0.25), (0.8, 0.2, 0.0), (-0.2, 0.6, 0.6), (float("nan"), 0.5, 0.5)],
)
def test_bad_ratios_are_usage_errors(ratios) -> None:
    with pytest.raises(UsageError, match="2 or 3 positive numbers summing to 1"):
        plan_split(one_per_source({"a": 5, "b": 5}), LABEL, ratios, 1)


def test_two_labels_becoming_one_name_class_are_refused() -> None:
    recs = one_per_source({"cog_bb_twin": 5, "cog_lb_twin": 5, "cog_cb_other": 5})
    with pytest.raises(SplitError, match="cog_bb_twin, cog_lb_twin all become class 'twin'"):
        plan_split(recs, get_task("name"), (0.6, 0.2, 0.2), 1)


# --- writing, reading back ---------------------------------------------------------------------


def test_write_split_makes_hard_linked_class_folders_and_records_the_plan(make_pool) -> None:
    layout, recs = make_pool({"cog_bb_a": 6, "cog_lb_b": 5, "toon_cat": 4})
    plan = plan_split(recs, SUIT, (0.6, 0.2, 0.2), seed=2)
    task_dir = write_split(plan, layout)
    assert task_dir == layout.task_data("suit")
    for split in plan.splits:
        assert sorted(p.name for p in (task_dir / split).iterdir()) == ["bb", "lb"]
    for a, rel in zip(plan.assignments, file_names(plan), strict=True):
        linked, original = task_dir / rel, layout.pool / a.crop
        assert rel.startswith(f"{a.split}/{a.cls}/")
        assert os.path.samefile(linked, original)  # a hard link: no copy, and the pool keeps its file
    rows = (task_dir / "split.csv").read_text().splitlines()
    assert rows[0] == "crop,label,class,split,file,source,source_sha256,seed"
    assert len(rows) == 1 + len(plan.assignments)
    assert json.loads((task_dir / "split.json").read_text())["classes"] == ["bb", "lb"]
    assert load_split(task_dir) == plan
    check_split_dirs(task_dir, plan.classes)
    assert all((layout.pool / r.crop).exists() for r in recs)


def test_a_plan_round_trips_through_json_unchanged(make_pool) -> None:
    _, recs = make_pool({"a": 4, "b": 5})
    plan = plan_split(recs, LABEL, (0.7, 0.3), seed=8, group=False)
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan


@pytest.mark.parametrize("crop", ["../../etc/passwd", "/etc/passwd", "a/../../b.png"])
def test_a_plan_from_a_file_cannot_point_outside_the_pool(crop: str) -> None:
    plan = plan_split(one_per_source({"a": 3, "b": 3}), LABEL, (0.6, 0.2, 0.2), 1)
    data = plan_to_dict(plan)
    data["assignments"][0][0] = crop
    with pytest.raises(SplitError, match="outside the pool"):
        plan_from_dict(data, "best.json")


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "split.json").write_text("{not json"),
        lambda d: (d / "split.csv").write_text("crop,label\nx,y\n"),
        lambda d: (d / "split.csv").write_text((d / "split.csv").read_text() + "cog/short_row.png,a\n"),
        lambda d: (d / "split.json").unlink(),
    ],
)
def test_a_damaged_split_is_a_split_error_saying_to_split_again(make_pool, damage) -> None:
    layout, recs = make_pool({"a": 3, "b": 3})
    task_dir = write_split(plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1), layout)
    damage(task_dir)
    with pytest.raises(SplitError, match="run `toonvision split --task label` again"):
        load_split(task_dir)


def test_resplit_replaces_the_old_split_whole(make_pool) -> None:
    layout, recs = make_pool({"a": 10, "b": 10})
    first = write_split(plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1), layout)
    (first / "train" / "a" / "stray.png").write_bytes(b"x")
    second = plan_split(recs, LABEL, (0.5, 0.5), 2)
    write_split(second, layout)
    on_disk = {p.relative_to(first).as_posix() for p in first.rglob("*.png")}
    assert on_disk == set(file_names(second))
    assert sorted(p.name for p in layout.data.iterdir()) == ["label"]  # no temp or .old folder left


def test_missing_pool_file_is_a_pool_error_and_the_old_split_stays(make_pool) -> None:
    layout, recs = make_pool({"a": 5, "b": 5})
    old = plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1)
    write_split(old, layout)
    (layout.pool / recs[0].crop).unlink()
    with pytest.raises(PoolError, match=recs[0].crop.split("/")[-1]):
        write_split(plan_split(recs, LABEL, (0.6, 0.2, 0.2), 2), layout)
    assert load_split(layout.task_data("label")) == old
    assert sorted(p.name for p in layout.data.iterdir()) == ["label"]


def test_copies_where_hard_links_are_impossible(make_pool, monkeypatch) -> None:
    layout, recs = make_pool({"a": 3, "b": 3})

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(split_module.os, "link", no_links)
    plan = plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1)
    task_dir = write_split(plan, layout)
    for a, rel in zip(plan.assignments, file_names(plan), strict=True):
        assert (task_dir / rel).read_bytes() == (layout.pool / a.crop).read_bytes()
        assert not os.path.samefile(task_dir / rel, layout.pool / a.crop)


def test_same_file_name_from_two_pool_folders_gets_distinct_names() -> None:
    recs = [CropRecord(f"{folder}/x_0.png", "x", folder, 0, f"s{i}", 0, 0, 1, 1, 1, 1, f"h{i}", "c")
            for i, folder in enumerate(("p", "q", "r"))] + one_per_source({"y": 3})
    plan = plan_split(recs, get_task("label"), (0.6, 0.2, 0.2), 1, group=False)
    names = file_names(plan)
    assert len(set(names)) == len(names)


def test_check_split_dirs_catches_a_missing_or_extra_class_folder(make_pool) -> None:
    layout, recs = make_pool({"a": 3, "b": 3})
    task_dir = write_split(plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1), layout)
    (task_dir / "test" / "c").mkdir()
    with pytest.raises(SplitError, match=r"unexpected folders \['c'\]"):
        check_split_dirs(task_dir, ("a", "b"))
    with pytest.raises(SplitError, match=r"train: missing class folders \['c', 'z'\]"):
        check_split_dirs(task_dir, ("a", "b", "c", "z"))


def test_no_pool_says_run_extract_first(tmp_path: Path) -> None:
    from toonvision.layout import Layout

    layout = Layout.from_dirs(tmp_path / "img")
    with pytest.raises(PoolError, match="run `toonvision extract` first"):
        run_split(layout, SUIT, (0.6, 0.2, 0.2), 1)
    assert not (tmp_path / "img").exists()  # nothing created on the way


def test_split_waits_for_nobody_and_reports_the_lock_holder(make_pool) -> None:
    layout, _ = make_pool({"a": 3, "b": 3})
    with locked(layout.lock_file, "img"):
        with pytest.raises(PoolLockedError, match=f"pid {os.getpid()}"):
            run_split(layout, LABEL, (0.6, 0.2, 0.2), 1)


# --- crash safety ------------------------------------------------------------------------------

_KILLED_WRITER = """
import sys
from toonvision.layout import Layout
from toonvision.manifest import load_pool
from toonvision.split import plan_split, write_split
from toonvision.tasks import get_task
layout = Layout.from_dirs(sys.argv[1])
records, _ = load_pool(layout)
plan = plan_split(records, get_task("label"), (0.6, 0.2, 0.2), int(sys.argv[2]))
print("ready", flush=True)
write_split(plan, layout)
print("done", flush=True)
"""


def test_a_kill_during_resplit_leaves_the_old_split_or_the_new_one(make_pool) -> None:
    layout, recs = make_pool({f"label{i}": 100 for i in range(6)})
    pool_before = sorted(p.relative_to(layout.pool).as_posix() for p in layout.pool.rglob("*.png"))
    task_dir = write_split(plan_split(recs, LABEL, (0.6, 0.2, 0.2), 0), layout)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    outcomes, mid_write = Counter(), 0
    for attempt, delay in enumerate([0.0, 0.005, 0.02, 0.05, 0.15]):
        before = load_split(task_dir)
        seed = attempt + 1
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(layout.img_dir), str(seed)],
                                env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_write += proc.returncode == -signal.SIGKILL and "done" not in proc.stdout.read()
        proc.stdout.close()

        after = load_split(task_dir)  # as the next command sees it (an interrupted swap is finished)
        assert after.seed in (before.seed, seed)
        assert after == (before if after.seed == before.seed else plan_split(recs, LABEL, (0.6, 0.2, 0.2), seed))
        on_disk = {p.relative_to(task_dir).as_posix() for p in task_dir.rglob("*.png")}
        assert on_disk == set(file_names(after))
        check_split_dirs(task_dir, after.classes)
        outcomes["new" if after.seed == seed else "old"] += 1
    assert mid_write >= 1, "no kill landed while the split was being written"
    assert sorted(p.relative_to(layout.pool).as_posix() for p in layout.pool.rglob("*.png")) == pool_before
    write_split(plan_split(recs, LABEL, (0.6, 0.2, 0.2), 99), layout)  # the next run cleans up
    assert sorted(p.name for p in layout.data.iterdir()) == ["label"], outcomes


def test_a_kill_between_the_swap_renames_is_rolled_back_by_the_next_reader(make_pool) -> None:
    layout, recs = make_pool({"a": 3, "b": 3})
    plan = plan_split(recs, LABEL, (0.6, 0.2, 0.2), 1)
    task_dir = write_split(plan, layout)
    task_dir.rename(task_dir.with_name("label.old"))  # the state right after the first rename
    assert load_split(task_dir) == plan
    assert not task_dir.with_name("label.old").exists()


# --- Keras reads the folders -------------------------------------------------------------------


def test_keras_reads_every_split_with_the_same_class_names(make_pool) -> None:
    import tensorflow as tf
    layout, recs = make_pool({"cog_bb_a": 4, "cog_lb_b": 5, "cog_sb_c": 3, "toon_cat": 3})
    result = run_split(layout, SUIT, (0.6, 0.2, 0.2), seed=3)
    index = {cls: i for i, cls in enumerate(result.plan.classes)}
    for split in result.plan.splits:
        dataset = tf.keras.utils.image_dataset_from_directory(
            result.path / split, image_size=(8, 8), batch_size=64, shuffle=False, verbose=False)
        assert dataset.class_names == ["bb", "lb", "sb"]
        labels = [int(y) for _, batch in dataset for y in batch]
        assert Counter(labels) == Counter(index[a.cls] for a in result.plan.files(split))


# --- command line ------------------------------------------------------------------------------


def test_cli_split_prints_the_table_and_the_chosen_seed(make_pool, tmp_path: Path) -> None:
    layout, _ = make_pool({"cog_bb_a": 5, "cog_lb_b": 5})
    result = CliRunner().invoke(main, ["--img-dir", str(layout.img_dir), "split", "--task", "suit",
                                       "--ratio", "0.6", "0.2", "0.2"])
    assert result.exit_code == 0, result.output
    assert "bb (Bossbot)" in result.output and "was chosen at random; pass --seed" in result.output
    seed = load_split(layout.task_data("suit")).seed
    assert f"--seed {seed}" in result.output


@pytest.mark.parametrize(
    "ratio, message",
    [(["0.5", "0.6"], "summing to 1"), (["0.6", "abc"], "expected 2 or 3 numbers"), ([], "expected 2 or 3"),
     (["0.2", "0.2", "0.2", "0.4"], "summing to 1")],
)
def test_cli_bad_ratio_is_a_usage_error(make_pool, ratio: list[str], message: str) -> None:
    layout, _ = make_pool({"a": 3, "b": 3})
    result = CliRunner().invoke(main, ["--img-dir", str(layout.img_dir), "split", "--task", "label",
                                       "--ratio", *ratio])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--task", "nope"], 2, "known tasks: binary, suit, name, animal, label"),
        (["--task", "label", "--seed", "-1"], 2, "--seed"),
        (["--task", "label", "--ratio", "0.5", "0.5", "--no-group", "--seed", "4"], 0, "not grouped"),
        (["--task", "label", "--min-per-class", "3"], 0, "left out by --min-per-class: c (2)"),
        (["--task", "label"], 1, "c has 2 crops"),
    ],
)
def test_split_options_reach_the_planner_or_exit_with_a_message(make_pool, args: list[str], code: int,
                                                                message: str) -> None:
    layout, _ = make_pool({"a": 3, "b": 4, "c": 2})
    result = CliRunner().invoke(main, ["--img-dir", str(layout.img_dir), "split", *args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# --- recorded plans: refactoring the planner must not change a single assignment ----------------


def _scene_pool(n_shots: int, weights: dict[str, int], seed: int, most: int, copies: int = 0) -> list[CropRecord]:
    """Screenshots of 1..most crops drawn with ``weights``; with ``copies``, every ``copies``-th
    screenshot shares its content hash with another (the same scene saved twice)."""
    rng = random.Random(seed)
    labels, w = list(weights), list(weights.values())
    out = []
    for s in range(n_shots):
        sha = f"sha{s % (n_shots - n_shots // copies)}" if copies else f"sha{s}"
        for _ in range(rng.randint(1, most)):
            label = rng.choices(labels, w)[0]
            n = len(out)
            out.append(CropRecord(f"{label.split('_')[0]}/{label}_{n}.png", label, label.split("_")[0], n,
                                  f"shot{s}.png", 0, 0, 10, 10, 10, 10, sha, f"c{n}"))
    return out


_SIX = {"cog_bb_a": 1, "cog_lb_b": 1, "cog_cb_c": 1, "cog_sb_d": 1, "toon_cat": 1, "toon_dog": 1}
_SKEWED = {"cog_bb_a": 60, "cog_lb_b": 15, "cog_cb_c": 6, "cog_sb_d": 2, "toon_cat": 30, "toon_horse": 1}
_RARE = [("cog_bb_a", f"s{i}") for i in range(60)] + [("cog_lb_rare", f"s{i}") for i in (0, 1, 2)]
_RARE += [("cog_lb_rare", "s0")] * 4
_RECORDED_POOLS = {  # name: (records, task, ratios, seeds, min_per_class)
    "scenes-label": (lambda: _scene_pool(300, _SIX, 0, 6), "label", (0.6, 0.2, 0.2), (0, 1, 2), None),
    "scenes-suit-copies": (lambda: _scene_pool(250, _SIX, 1, 6, copies=5), "suit", (0.6, 0.2, 0.2), (3, 4), None),
    "skewed-label": (lambda: _scene_pool(400, _SKEWED, 2, 8), "label", (0.6, 0.2, 0.2), (0, 9), None),
    "skewed-min-per-class": (lambda: _scene_pool(120, _SKEWED, 3, 4), "label", (0.6, 0.2, 0.2), (5, 6), 12),
    "two-ratios": (lambda: _scene_pool(150, _SIX, 4, 5), "binary", (0.7, 0.3), (0, 1), None),
    "uneven-ratios": (lambda: _scene_pool(200, _SKEWED, 5, 6), "suit", (0.8, 0.1, 0.1), (2, 8), 4),
    "thirds": (lambda: _scene_pool(90, _SIX, 6, 3), "animal", (0.34, 0.33, 0.33), (1,), None),
    "rare-class": (lambda: records(_RARE), "label", (0.6, 0.2, 0.2), (3, 4, 5), None),
    "one-per-source": (lambda: one_per_source({f"c{n:02d}": n for n in range(3, 30)}), "label", (0.6, 0.2, 0.2),
                       (5,), None),
    "large": (lambda: _scene_pool(3000, _SKEWED, 7, 6), "label", (0.6, 0.2, 0.2), (0, 1), 3),
    # few crowded screenshots: the improvement passes and the every-class-everywhere moves have work to do
    "crowded-six": (lambda: _scene_pool(30, _SIX, 1, 20), "label", (0.6, 0.2, 0.2), (1, 2), None),
    "crowded-skewed": (lambda: _scene_pool(30, _SKEWED, 0, 20), "label", (0.6, 0.2, 0.2), (2,), 3),
    "crowded-ensure": (lambda: _scene_pool(40, _SKEWED, 3, 15), "label", (0.6, 0.2, 0.2), (0, 1, 2), 3),
    "crowded-ensure-suit": (lambda: _scene_pool(60, _SKEWED, 0, 12), "suit", (0.6, 0.2, 0.2), (0, 2), None),
}
_RECORDED_DIGESTS = {  # recorded from the closure-based planner before it became _GroupAssigner
    "tangled/17": "f7eb4c6408611239",
    "tangled/25": "2dc3fdae73a410e5",
    "tangled/27": "59f4d0413bdd37d0",
    "tangled/29": "eb5b3c8ae8c272f4",
    "tangled/35": "bfa14ca59fe9d2a4",
    "tangled/74": "18510456c2285c1c",
    "tangled/81": "2dbe91a5efb3c9b2",
    "tangled/103": "b6c551802d063a50",
    "tangled/116": "0fab620527f2753f",
    "tangled/141": "1adb99cd28d4756a",
    "tangled/65": "class b cannot have a crop in every split",
    "tangled/88": "class c cannot have a crop in every split",
    "tangled/109": "class a cannot have a crop in every split",
    "scenes-label/0/grouped": "91026745c4e3a63d",
    "scenes-label/0/ungrouped": "3a368bebc14a12c0",
    "scenes-label/1/grouped": "305f6b1f82364625",
    "scenes-label/1/ungrouped": "fdb79486c7e5e2ac",
    "scenes-label/2/grouped": "daae381d00bd82ea",
    "scenes-label/2/ungrouped": "b0877b2918d9c6e2",
    "scenes-suit-copies/3/grouped": "ff0b435cf85b991b",
    "scenes-suit-copies/3/ungrouped": "897c6e5beb2bdfcf",
    "scenes-suit-copies/4/grouped": "4e3ae659a430f72d",
    "scenes-suit-copies/4/ungrouped": "be3f5f06c3789910",
    "skewed-label/0/grouped": "40a2457670d080b9",
    "skewed-label/0/ungrouped": "15e74c9e20af8233",
    "skewed-label/9/grouped": "f8100654656cf176",
    "skewed-label/9/ungrouped": "fe677d74f2a2f5f2",
    "skewed-min-per-class/5/grouped": "94d768dc9dd6b51a",
    "skewed-min-per-class/5/ungrouped": "0976520d8cd38f5d",
    "skewed-min-per-class/6/grouped": "8c6192ec155f8a67",
    "skewed-min-per-class/6/ungrouped": "411791c0117e37c8",
    "two-ratios/0/grouped": "7e77b0a1b434d4cc",
    "two-ratios/0/ungrouped": "4ee957dd5c19b69f",
    "two-ratios/1/grouped": "82449d2db093238e",
    "two-ratios/1/ungrouped": "c8c2a65be42c12d2",
    "uneven-ratios/2/grouped": "32c09715d1818d62",
    "uneven-ratios/2/ungrouped": "c7c531bede1a4136",
    "uneven-ratios/8/grouped": "85541e4f332bfa40",
    "uneven-ratios/8/ungrouped": "e766a74722a153fb",
    "thirds/1/grouped": "f5c2d738941be488",
    "thirds/1/ungrouped": "f7f4b82ad4e15402",
    "rare-class/3/grouped": "051eaff78b4418e0",
    "rare-class/3/ungrouped": "252796c18e8809e0",
    "rare-class/4/grouped": "3e714201299f4f91",
    "rare-class/4/ungrouped": "fa2d2f1eeb121fb8",
    "rare-class/5/grouped": "0104de193c0b39ba",
    "rare-class/5/ungrouped": "e44680fd06aa8411",
    "one-per-source/5/grouped": "0896d94cdab6fa6e",
    "one-per-source/5/ungrouped": "a843eaa77a6b6d5b",
    "large/0/grouped": "48cfe7d66e749770",
    "large/0/ungrouped": "ed3580ae5115bd58",
    "large/1/grouped": "674ff212aa2e5eb7",
    "large/1/ungrouped": "989933497121530a",
    "crowded-six/1/grouped": "9ae0b1dab24e9718",
    "crowded-six/1/ungrouped": "8660f099625133bb",
    "crowded-six/2/grouped": "8cca7a4b5eccde53",
    "crowded-six/2/ungrouped": "84790fa6fcd23dbe",
    "crowded-skewed/2/grouped": "c963023155b284c1",
    "crowded-skewed/2/ungrouped": "d267bf07e380a294",
    "crowded-ensure/0/grouped": "a749c36de9228e3e",
    "crowded-ensure/0/ungrouped": "7be8a8cd5fe417c3",
    "crowded-ensure/1/grouped": "2794ee17a7a6f656",
    "crowded-ensure/1/ungrouped": "821f4cad643f9188",
    "crowded-ensure/2/grouped": "ab0ebe4dc6a7ad6d",
    "crowded-ensure/2/ungrouped": "8adde4d2c22283de",
    "crowded-ensure-suit/0/grouped": "7ead595dff632b4a",
    "crowded-ensure-suit/0/ungrouped": "a15b4c976f9e7ed8",
    "crowded-ensure-suit/2/grouped": "ec2ba21be8be4379",
    "crowded-ensure-suit/2/ungrouped": "9d25638cb728b2cc",
}


def _plan_digest(plan: SplitPlan) -> str:
    text = json.dumps([plan.classes, plan.excluded, [(a.crop, a.cls, a.split) for a in plan.assignments]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tangled_pool(seed: int) -> list[CropRecord]:
    """3 to 7 screenshots each holding 1..3 of the labels a-d: some cannot be split whole."""
    rng = random.Random(seed)
    spec = []
    for s in range(rng.randint(3, 7)):
        for label in rng.sample("abcd", rng.randint(1, 3)):
            spec += [(label, f"s{s}")] * rng.randint(1, 3)
    return records(spec)


def _recorded_plans() -> dict[str, str]:
    out = {}
    for pool_seed in (17, 25, 27, 29, 35, 74, 81, 103, 116, 141, 65, 88, 109):  # the last 3: a class cannot split
        try:
            plan = plan_split(_tangled_pool(pool_seed), LABEL, (0.6, 0.2, 0.2), pool_seed % 5)
            out[f"tangled/{pool_seed}"] = _plan_digest(plan)
        except SplitError as exc:
            out[f"tangled/{pool_seed}"] = str(exc)[:41]  # "class b cannot have a crop in every split"
    for name, (make, task, ratios, seeds, min_per_class) in _RECORDED_POOLS.items():
        recs = make()
        for seed in seeds:
            for group in (True, False):
                plan = plan_split(recs, get_task(task), ratios, seed, group=group, min_per_class=min_per_class)
                out[f"{name}/{seed}/{'grouped' if group else 'ungrouped'}"] = _plan_digest(plan)
    return out


def test_plans_are_the_recorded_ones() -> None:
    assert _recorded_plans() == _RECORDED_DIGESTS


# --- near-duplicate screenshots are one group (issue 15) --------------------------------------------


def test_near_duplicate_frames_never_straddle_splits_after_split(tmp_path):
    from test_dedup import frame_sequences

    from toonvision.extract import ExtractOptions, extract
    from toonvision.layout import Layout

    scene_of = frame_sequences(tmp_path / "shots", range(4))  # 3 frames per scene: panned 4 px, and a JPEG
    layout = Layout.from_dirs(tmp_path / "img")
    extract(layout, ExtractOptions(screenshots=tmp_path / "shots", workers=1))
    for seed in range(4):
        result = run_split(layout, get_task("binary"), (0.5, 0.5), seed=seed)
        splits: dict[int, set[str]] = defaultdict(set)
        for a in result.plan.assignments:
            splits[scene_of[a.source]].add(a.split)
        assert all(len(s) == 1 for s in splits.values()), (seed, dict(splits))
        assert result.plan.near_merged == 12
        assert "12 screenshots merged into near-duplicate groups" in result.summary()
        assert load_split(layout.task_data("binary")).near_merged == 12
    loose = run_split(layout, get_task("binary"), (0.5, 0.5), seed=0, group=False)  # --no-group: crop by crop
    assert loose.plan.near_merged == 0 and "merged" not in loose.summary()
    by_scene: dict[int, set[str]] = defaultdict(set)
    for a in loose.plan.assignments:
        by_scene[scene_of[a.source]].add(a.split)
    assert any(len(s) > 1 for s in by_scene.values())
