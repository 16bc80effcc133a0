"""balance-report: counts per label and class equal the manifest's, with splits, deficits and figures."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from toonvision.cli import main
from toonvision.errors import PoolError, UsageError
from toonvision.layout import Layout
from toonvision.manifest import load_manifest
from toonvision.report import balance_report, default_report_dir, write_balance_report
from toonvision.split import run_split
from toonvision.tasks import get_task

POOL = {"cog_bb_flunky": 6, "cog_bb_yesman": 2, "cog_lb_bigwig": 5, "toon_cat": 4, "toon_horse": 1}


def test_label_counts_equal_the_manifest(make_pool) -> None:
    layout, _ = make_pool(POOL)
    report = balance_report(layout)
    manifest = Counter(r.label for r in load_manifest(layout.manifest))
    assert {row.name: row.count for row in report.labels} == manifest
    assert report.total == sum(manifest.values()) == 18
    assert [row.name for row in report.labels] == sorted(manifest)
    assert sum(row.share for row in report.labels) == pytest.approx(1.0)
    assert report.label_target == 6  # default: the largest label
    assert {row.name: row.deficit for row in report.labels}["toon_horse"] == 5
    assert report.classes == () and report.split_names == ()
    assert sorted(report.widths) == sorted(r.width for r in load_manifest(layout.manifest))


def test_class_rows_follow_the_task_and_its_split(make_pool) -> None:
    layout, records = make_pool(POOL)
    result = run_split(layout, get_task("suit"), (0.6, 0.2, 0.2), seed=4, min_per_class=3)
    report = balance_report(layout, get_task("suit"), target=10)
    assert [(row.name, row.display, row.count) for row in report.classes] == [
        ("bb", "Bossbot", 8), ("lb", "Lawbot", 5)]
    assert report.split_names == ("train", "validate", "test") and report.split_seed == 4
    counts = result.plan.counts()
    for row in report.classes:
        assert row.splits == tuple(counts[row.name, s] for s in result.plan.splits)
        assert row.deficit == 10 - row.count
    labels = {row.name: row for row in report.labels}
    assert labels["toon_cat"].cls is None and labels["toon_cat"].splits is None
    assert labels["cog_bb_flunky"].cls == "bb" and sum(labels["cog_bb_flunky"].splits) == 6
    task_crops = [r for r in records if r.label.startswith("cog_")]
    assert sorted(report.heights) == sorted(r.height for r in task_crops)


def test_deleted_crops_are_not_counted(make_pool) -> None:
    layout, records = make_pool(POOL)
    (layout.pool / records[0].crop).unlink()
    report = balance_report(layout)
    assert report.missing == 1 and report.total == 17
    assert "1 listed crops are missing" in report.table()


def test_no_pool_says_run_extract_first(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="run `toonvision extract` first"):
        balance_report(Layout.from_dirs(tmp_path / "img"))


def test_bad_target_is_a_usage_error(make_pool) -> None:
    layout, _ = make_pool(POOL)
    with pytest.raises(UsageError, match="--target"):
        balance_report(layout, None, 0)


def test_table_shows_every_label_with_count_share_and_deficit(make_pool) -> None:
    layout, _ = make_pool(POOL)
    run_split(layout, get_task("suit"), (0.6, 0.2, 0.2), seed=1, min_per_class=3)
    table = balance_report(layout, get_task("suit")).table()
    assert "cog_bb_flunky  bb" in table
    assert "bb (Bossbot)" in table and "split with seed 1" in table
    assert "toon_horse" in table and "deficit" in table
    assert "crop size: width median" in table


def test_written_report_matches_the_numbers_and_draws_every_figure(make_pool, tmp_path: Path) -> None:
    layout, _ = make_pool(POOL)
    run_split(layout, get_task("suit"), (0.6, 0.2, 0.2), seed=1, min_per_class=3)
    report = balance_report(layout, get_task("suit"))
    paths = write_balance_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["balance.json", "label_counts.png", "class_counts.png",
                                       "split_counts.png", "crop_sizes.png"]
    for path in paths:
        assert path.stat().st_size > 0
    data = json.loads((tmp_path / "out" / "balance.json").read_text())
    assert {row["name"]: row["count"] for row in data["labels"]} == POOL
    assert data["classes"][0]["splits"] == list(report.classes[0].splits)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_cli_balance_report_writes_beside_the_data_by_default(make_pool) -> None:
    layout, _ = make_pool(POOL)
    result = CliRunner().invoke(main, ["--img-dir", str(layout.img_dir), "balance-report", "--task", "animal"])
    assert result.exit_code == 0, result.output
    out = default_report_dir(layout, get_task("animal"))
    assert out == layout.img_dir / "reports" / "animal"
    assert (out / "balance.json").is_file() and "not split yet" in result.output


def test_cli_balance_report_without_a_pool_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--img-dir", str(tmp_path / "img"), "balance-report"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: no crop pool at {tmp_path / 'img' / 'unsorted'}: run `toonvision extract` first"]


def test_an_imbalanced_task_is_named_with_what_training_does_about_it(make_pool) -> None:
    from toonvision.report import IMBALANCE_RATIO

    layout, _ = make_pool({"cog_bb_a": 12, "toon_cat": 4, "cog_lb_b": 5})
    report = balance_report(layout, get_task("binary"))  # 17 cogs, 4 toons: 4.25x
    assert report.imbalance_ratio == pytest.approx(17 / 4) and report.imbalanced and IMBALANCE_RATIO == 3.0
    assert report.class_weights() == pytest.approx({"cog": 21 / 34, "toon": 21 / 8})
    note = report.imbalance_note()
    assert "IMBALANCED" in note and "4.2x" in note and "toon 2.62" in note and note in report.table()
    assert json.loads(json.dumps(report.to_dict()))["imbalance"]["imbalanced"] is True
    balanced = balance_report(layout, get_task("suit"))  # 12 bb, 5 lb: 2.4x
    assert not balanced.imbalanced and "balanced enough" in balanced.imbalance_note()
    assert balance_report(layout).imbalance_note() is None and balance_report(layout).to_dict()["imbalance"] is None
