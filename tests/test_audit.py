"""``toonvision audit``: label-issue suspects ranked from cv's out-of-fold probabilities (an injected flip
comes out on top), duplicates, and leaks of the current split, in the files the HTML report reads."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from toonvision.audit import LABEL_ISSUE_COLUMNS
from toonvision.layout import Layout
from toonvision.modelreport import DUPLICATE_COLUMNS
from toonvision.modelreport import LABEL_ISSUE_COLUMNS as REPORT_COLUMNS

from helpers import SIZE, cli, extract_pool, grouped_shots, keras_spy, manifest

AUDIT = ["audit", "--task", "binary", "--folds", "3", "--epochs", "3", "--image-size", SIZE, "--batch-size", "8"]


def _base(layout: Layout) -> list:
    return ["--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q"]


def _flip(layout: Layout, shot: str, old: str, new: str) -> None:
    """Relabel the first ``old`` object of ``shot``'s XML as ``new`` (a labelling mistake) and extract again."""
    xml = layout.screenshots / f"{shot}.xml"
    text = xml.read_text()
    assert f"<name>{old}</name>" in text
    xml.write_text(text.replace(f"<name>{old}</name>", f"<name>{new}</name>", 1))
    cli("--img-dir", layout.img_dir, "-q", "extract", "--workers", "1")


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Layout, str]:
    """An easy colour pool (cog and toon blocks) with one toon relabelled as a cog, a copied screenshot,
    a crop-by-crop split, and an audit; returns the layout and the flipped crop."""
    root = tmp_path_factory.mktemp("audit")
    layout = extract_pool(root / "img", grouped_shots(8))
    shutil.copy(layout.screenshots / "shot001.png", layout.screenshots / "copy001.png")
    shutil.copy(layout.screenshots / "shot001.xml", layout.screenshots / "copy001.xml")
    toons = [row for row in manifest(layout).values() if row["source"] == "shot004.png" and row["label"] == "toon_cat"]
    box = min((int(row["xmin"]), row["ymin"], row["xmax"], row["ymax"]) for row in toons)  # the first in the XML
    _flip(layout, "shot004", "toon_cat", "cog_bb_a")
    [flipped] = [c for c, row in manifest(layout).items() if row["source"] == "shot004.png" and row["status"] ==
                 "active" and (int(row["xmin"]), row["ymin"], row["xmax"], row["ymax"]) == box]
    assert manifest(layout)[flipped]["label"] == "cog_bb_a"
    layout = Layout.from_dirs(layout.img_dir, root / "models")
    cli(*_base(layout), "split", "--task", "binary", "--no-group", "--seed", "1")
    cli(*_base(layout), *AUDIT)
    return layout, flipped


def _issues(layout: Layout) -> list[dict[str, str]]:
    path = layout.report_dir("binary") / "audit" / "label_issues.csv"
    with path.open() as handle:
        assert next(csv.reader(handle)) == list(LABEL_ISSUE_COLUMNS) == list(REPORT_COLUMNS)
    return list(csv.DictReader(path.open()))


def test_label_issues_have_the_exact_columns_and_rank_an_injected_flip_near_the_top(audited):
    layout, flipped = audited
    issues = _issues(layout)
    assert issues, "no suspect at all"
    assert flipped in [row["crop"] for row in issues[:2]], issues[:4]
    scores = [float(row["score"]) for row in issues]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert float(issues[[row["crop"] for row in issues].index(flipped)]["score"]) > 0.5  # confidently contradicted
    rows = manifest(layout)
    top = issues[[row["crop"] for row in issues].index(flipped)]
    assert (top["label"], top["suggested"], top["source"]) == ("cog_bb_a", "toon", "shot004.png")
    assert [top[k] for k in ("xmin", "ymin", "xmax", "ymax")] == [rows[flipped][k] for k in ("xmin", "ymin", "xmax",
                                                                                           "ymax")]


def test_the_audit_writes_duplicates_leaks_and_a_gallery_the_report_reads(audited):
    layout, _ = audited
    folder = layout.report_dir("binary") / "audit"
    with (folder / "duplicates.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(DUPLICATE_COLUMNS)
    assert {"shot001.png", "copy001.png"} <= {r[2] for r in rows[1:] if r[1] == "exact"}
    info = json.loads((folder / "audit.json").read_text())
    assert info["counts"]["exact_screenshot_clusters"] >= 1
    assert info["thresholds"]["screenshot_bits"] >= 1
    assert info["leaks"], "a crop-by-crop split of a copied screenshot must leak"
    assert info["counts"]["leaks"] == len(info["leaks"])
    assert (folder / "label_issues.png").read_bytes().startswith(b"\x89PNG")
    from toonvision.modelreport import _audit

    summary = _audit(folder, notes := [])
    assert summary is not None and summary.label_issues is not None and summary.leaks is not None, notes


def test_a_second_audit_reuses_the_cross_validation_and_out_writes_elsewhere(audited, tmp_path):
    layout, _ = audited
    with keras_spy() as runs:
        result = cli(*_base(layout)[:-1], *AUDIT, "--out", tmp_path / "elsewhere")
    assert runs == []  # cv.json of these options and this pool exists: no fold retrained
    assert "label-issue suspect" in result.output
    assert (Path(tmp_path) / "elsewhere" / "label_issues.csv").read_text() == (
        layout.report_dir("binary") / "audit" / "label_issues.csv").read_text()


def test_the_ranking_puts_contradicted_labels_first_with_scores_in_0_1():
    import numpy as np

    from toonvision.audit import rank_label_issues

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    probabilities = np.full((90, 3), 0.05)
    probabilities[np.arange(90), labels] = 0.9
    probabilities += rng.uniform(0, 0.05, probabilities.shape)
    flipped = [3, 40, 77]
    labels[flipped] = (labels[flipped] + 1) % 3  # the given label is one the models do not believe
    ranked, scores = rank_label_issues(labels, probabilities)
    assert sorted(ranked[:3].tolist()) == flipped and len(ranked) == 3
    assert scores.shape == (90,) and ((scores >= 0) & (scores <= 1)).all()
    assert scores[flipped].min() > 0.8 > scores[np.setdiff1d(np.arange(90), flipped)].max()
