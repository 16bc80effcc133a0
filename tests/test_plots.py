"""Balance figures: each function draws what it is given into a readable, non-empty PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from toonvision import plots

LABELS = [f"cog_bb_label{i:02d}" for i in range(43)]


def assert_png(path: Path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image


def test_label_counts_grow_wide_enough_for_43_labels(tmp_path: Path) -> None:
    few = assert_png(plots.plot_label_counts(["a", "b"], [3, 5], tmp_path / "few.png", target=5))
    many = assert_png(plots.plot_label_counts(LABELS, list(range(43)), tmp_path / "many.png", target=60))
    assert many.width > 2 * few.width


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: plots.plot_label_counts(["bb", "lb"], [4, 2], p, xlabel="class"),
        lambda p: plots.plot_split_counts(["Bossbot", "Lawbot"], {"train": [3, 2], "validate": [1, 1],
                                                                  "test": [1, 0]}, p),
        lambda p: plots.plot_crop_sizes([10, 50, 120, 90], [30, 200, 400, 90], p, small=(100, 300)),
        lambda p: plots.plot_crop_sizes([12], [40], p),
    ],
)
def test_each_figure_is_written_atomically_and_returned(tmp_path: Path, draw) -> None:
    path = draw(tmp_path / "figure.png")
    assert path == tmp_path / "figure.png"
    assert_png(path)
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no temp file left behind


def test_tuning_plot_draws_trials_and_the_best_so_far_even_with_failed_trials(tmp_path: Path) -> None:
    assert_png(plots.plot_tuning([0.7, None, 0.4, float("nan"), 0.5], tmp_path / "t.png", name="val_loss",
                                 direction="min"))
    assert_png(plots.plot_tuning([], tmp_path / "empty.png", name="val_macro_f1", direction="max"))
    with pytest.raises(ValueError, match="direction"):
        plots.plot_tuning([0.1], tmp_path / "x.png", name="val_loss", direction="down")


def test_cv_fold_box_plots_and_the_label_issue_gallery_are_drawn(tmp_path: Path) -> None:
    import numpy as np

    assert_png(plots.plot_cv_folds([0.9, 0.95, float("nan")], [0.8, 0.85, 0.9], tmp_path / "cv.png", "label: 3 folds"))
    crops = [np.full((20, 10 + 5 * i, 3), 40 * i, dtype=np.uint8) for i in range(3)]
    gallery = assert_png(plots.plot_label_issues(crops, ["rbc", "wbc", "rbc"], ["wbc", "rbc", "platelets"],
                                                 [0.99, 0.8, 0.5], tmp_path / "issues.png"))
    assert gallery.width > 300
    with pytest.raises(ValueError):  # a caption for every crop, not a silently shorter gallery
        plots.plot_label_issues(crops, ["rbc"], ["wbc"], [0.9], tmp_path / "short.png")
