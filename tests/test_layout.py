"""Where every file lives: the artifact names and folders come from Layout alone."""

from __future__ import annotations

from pathlib import Path

from toonvision.layout import BEST_INFO, BEST_MODEL, Layout, evaluation_dir_name


def test_artifact_paths(tmp_path: Path) -> None:
    layout = Layout.from_dirs(tmp_path / "img", tmp_path / "models")
    models = tmp_path / "models" / "suit"
    assert (BEST_MODEL, BEST_INFO) == ("best.keras", "best.json")
    assert layout.best_model("suit") == models / "best.keras"
    assert layout.best_info("suit") == models / "best.json"
    assert layout.evaluation_dir("suit") == models / "evaluation"
    assert layout.evaluation_dir("suit", "validate") == models / "evaluation_validate"
    assert layout.compare_dir("suit") == models / "compare"
    assert layout.report_dir("suit") == tmp_path / "img" / "reports" / "suit"
    assert layout.report_dir(None) == tmp_path / "img" / "reports" / "pool"
    assert [evaluation_dir_name(s) for s in ("train", "validate", "test")] == [
        "evaluation_train", "evaluation_validate", "evaluation"]


def test_default_roots_are_relative_to_the_working_directory() -> None:
    layout = Layout.from_dirs()
    assert (layout.img_dir, layout.models_dir) == (Path("img").absolute(), Path("models").absolute())
