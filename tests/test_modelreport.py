"""toonvision report: one self-contained HTML page of a trained model, every figure inside it, nothing outside."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from toonvision import modelreport
from toonvision.cli import main
from toonvision.errors import ModelFileError, UsageError
from toonvision.layout import Layout
from toonvision.modelreport import (
    DUPLICATE_COLUMNS,
    LABEL_ISSUE_COLUMNS,
    REPORT_HTML,
    load_report,
    png_size,
    render_html,
    write_report,
)

POOL = {"cog_bb_a": 6, "toon_cat": 6}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HOSTILE = '<script>alert("x")</script>&"\''


class StrictHTML(HTMLParser):
    """Fails on an end tag that closes anything but the innermost open element; collects img/a attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        for name, value in attrs:
            if name in ("href", "src", "action", "srcset", "poster", "background"):
                self.links.append(value or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in VOID, f"<{tag}/> is not a void element"
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"</{tag}> closes a void element"
        assert self.stack, f"</{tag}> with nothing open"
        assert self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1]}> (open: {self.stack})"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> StrictHTML:
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed: {parser.stack}"
    return parser


def assert_self_contained(page: str) -> StrictHTML:
    """One page that parses, embeds its figures as PNG data: URIs, runs no script and points nowhere outside."""
    parsed = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    assert parsed.tags.count("html") == parsed.tags.count("body") == 1
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(parsed.tags)
    for image in parsed.images:
        src = image["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png_size(png) == (int(image["width"]), Image.open(io.BytesIO(png)).size[1])
    for link in parsed.links:
        assert link.startswith(("#", "data:")), f"a link out of the page: {link!r}"
    lowered = page.lower()
    for outside in ("http://", "https://", "file:", "url(", "@import", "@font-face", "src=\"/", "href=\"/"):
        assert outside not in lowered, outside
    return parsed


def cli(layout: Layout, *args: str):
    return CliRunner().invoke(main, ["--img-dir", str(layout.img_dir), "--models-dir", str(layout.models_dir), *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Layout:
    """A real tiny training (2 runs, 1 epoch), its evaluation and two Grad-CAM maps, all through the CLI."""
    pytest.importorskip("keras")
    from helpers import write_colour_pool

    layout, records = write_colour_pool(tmp_path_factory.mktemp("report") / "img", POOL)
    result = cli(layout, "train", "--task", "binary", "--runs", "2", "--epochs", "1", "--seed", "3",
                 "--image-size", "48x44", "--batch-size", "4", "--quiet")
    assert result.exit_code == 0, result.output
    folder = layout.task_models("binary")
    result = cli(layout, "evaluate", str(folder), "--quiet")
    assert result.exit_code == 0, result.output
    crops = [str(layout.pool / r.crop) for r in records[:1] + records[-1:]]
    result = cli(layout, "explain", str(folder), *crops, "--quiet")
    assert result.exit_code == 0, result.output
    return layout


def copy_model_folder(layout: Layout, dest: Path, *names: str) -> Path:
    dest.mkdir(parents=True)
    for name in names:
        source = layout.task_models("binary") / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
    return dest


# -- a real model --------------------------------------------------------------------------------


def test_report_of_a_trained_and_evaluated_model_is_one_self_contained_page(trained: Layout) -> None:
    folder = trained.task_models("binary")
    result = cli(trained, "report", str(folder))
    assert result.exit_code == 0, result.output
    path = folder / REPORT_HTML
    assert result.output.strip() == f"wrote {path}"
    page = path.read_text(encoding="utf-8")
    parsed = assert_self_contained(page)

    names = {image["alt"] for image in parsed.images}
    assert {"training_curves.png", "test_metrics.png", "confusion_matrix.png"} <= names
    assert sum(name.endswith("_gradcam.png") for name in names) == 2
    embedded = [f for f in ("worst_predictions.png",) if (folder / "evaluation" / f).exists()]
    assert set(embedded) <= names and len(parsed.images) == len(names) == 3 + 2 + len(embedded)

    best = json.loads((folder / "best.json").read_text())
    text = " ".join(" ".join(parsed.text).split())
    for split in ("train", "validate", "test"):
        assert f"{best['metrics'][split]['accuracy']:.4f}" in text
        assert f"{best['metrics'][split]['loss']:.4f}" in text
    assert f"test accuracy {best['metrics']['test']['accuracy']:.4f}" in text
    evaluation = json.loads((folder / "evaluation" / "evaluation.json").read_text())
    assert f"{evaluation['macro_avg']['f1']:.4f}" in text and "weighted avg" in text
    assert f"run {best['run']}" in text and best["versions"]["keras"] in text and "baseline" in text
    assert f"It was chosen on validation data ({best['selection']})" in text  # what chose it, not a fixed phrase

    runs = list(csv.DictReader((folder / "runs.csv").open()))
    assert len(runs) == 2 and page.count('<tr class="chosen">') == 1
    for run in runs:
        assert f"{float(run['test_accuracy']):.4f}" in text
    tests = sum(1 for row in best["split"]["assignments"] if row[3] == "test")
    assert f"test {tests}" in text  # the crops card counts the chosen run's split
    assert "run toonvision evaluate" not in text and "Data audit" not in text and "Ensemble" not in text


def test_out_writes_the_page_elsewhere_and_task_finds_the_folder(trained: Layout, tmp_path: Path) -> None:
    out = tmp_path / "pages" / "binary.html"
    result = cli(trained, "report", "--task", "binary", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output == "" and out.is_file()
    assert_self_contained(out.read_text(encoding="utf-8"))


def test_without_evaluation_the_page_says_how_to_get_one(trained: Layout, tmp_path: Path) -> None:
    folder = copy_model_folder(trained, tmp_path / "binary", "best.json", "runs.csv", "training_curves.png")
    page = write_report(load_report(trained, folder)).read_text(encoding="utf-8")
    parsed = assert_self_contained(page)
    text = " ".join(" ".join(parsed.text).split())
    assert f"run toonvision evaluate {folder}" in text
    assert [image["alt"] for image in parsed.images] == ["training_curves.png"]
    assert "Grad-CAM" not in text


def test_render_is_pure(trained: Layout) -> None:
    data = load_report(trained, trained.task_models("binary"))
    assert render_html(data) == render_html(data)
    with pytest.raises(AttributeError):
        data.task = "other"  # type: ignore[misc]


# -- sections of other stages' outputs, from small files in their formats -----------------------------


def write_png(path: Path, size: tuple[int, int] = (30, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 100, 50)).save(path)
    return path


def write_csv(path: Path, columns: tuple[str, ...], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def hand_model_folder(tmp_path: Path) -> tuple[Layout, Path]:
    """best.json as train writes it (a 2-class split of 4 crops), without any model file."""
    layout = Layout.from_dirs(tmp_path / "img", tmp_path / "models")
    folder = layout.task_models("binary")
    folder.mkdir(parents=True)
    assignments = [[f"cog/cog_bb_a_{i}.png", "cog_bb_a", "cog", s, f"shot{i}.png", f"sha{i}"]
                   for i, s in enumerate(("train", "validate", "test"))]
    assignments += [[f"toon/{HOSTILE}_{i}.png", HOSTILE, "toon", s, f"t{i}.png", f"tsha{i}"]
                    for i, s in enumerate(("train", "validate", "test"))]
    best = {
        "task": "binary", "classes": ["cog", "toon"], "display_names": {"cog": "Cog", "toon": "Toon"},
        "image_size": [48, 44], "model": "baseline", "run": 0, "seed": 9,
        "split": {"task": "binary", "seed": 9, "ratios": [0.6, 0.2, 0.2], "grouped": True,
                  "classes": ["cog", "toon"], "excluded": [], "columns": ["crop", "label", "class", "split",
                                                                          "source", "source_sha256"],
                  "assignments": assignments},
        "metrics": {"train": {"loss": 0.5, "accuracy": 0.75}, "validate": {"loss": 0.4, "accuracy": 0.8125},
                    "test": {"loss": 0.3, "accuracy": 0.90625}},
        "epochs": 1, "batch_size": 4, "weights": None, "versions": {"keras": "3.0"}, "created": "2026-01-01",
    }
    (folder / "best.json").write_text(json.dumps(best))
    return layout, folder


def test_audit_and_ensemble_sections_appear_once_their_files_exist(tmp_path: Path) -> None:
    layout, folder = hand_model_folder(tmp_path)
    before = render_html(load_report(layout, folder))
    assert "Data audit" not in before and "Ensemble" not in before

    audit = layout.report_dir("binary") / "audit"
    write_csv(audit / "label_issues.csv", LABEL_ISSUE_COLUMNS,
              [[f"toon/{HOSTILE}_0.png", HOSTILE, "cog", 0.97, "t0.png", 1, 2, 30, 40],
               ["cog/cog_bb_a_1.png", "cog_bb_a", "toon", 0.61, "shot1.png", 5, 6, 20, 30]])
    write_csv(audit / "duplicates.csv", DUPLICATE_COLUMNS,
              [[0, "exact", "shot1.png", ""], [0, "exact", "shot1_copy.png", ""],
               [1, "near", "shot2.png", "cog/cog_bb_a_2.png"], [1, "near", "shot3.png", "cog/cog_bb_a_0.png"]])
    write_png(audit / "label_issues.png", (90, 40))
    (audit / "audit.json").write_text(json.dumps({
        "counts": {"crops": 6, "label_issues": 2, "near_duplicate_pairs": 1}, "thresholds": {"hash": 6},
        "leaks": [{"a": "cog/cog_bb_a_2.png", "split_a": "test", "b": "cog/cog_bb_a_0.png", "split_b": "train"}],
    }))
    (folder / "ensemble.json").write_text(json.dumps({
        "members": [0, 2, 3], "metrics": {"test": {"loss": 0.25, "accuracy": 0.9375}}}))

    page = write_report(load_report(layout, folder)).read_text(encoding="utf-8")
    parsed = assert_self_contained(page)
    text = " ".join(" ".join(parsed.text).split())
    assert "Data audit" in text and "Label-issue suspects" in text and "Leaks in the current split" in text
    assert "1 exact cluster, 1 near cluster" in text and "shot1_copy.png" in text
    assert "0.9700" in text and "split_b" in text and "near_duplicate_pairs" in text
    assert "Ensemble" in text and "0.9375" in text and "0.9062" in text and "0, 2, 3" in text
    assert [image["alt"] for image in parsed.images] == ["label_issues.png"]
    assert "<script>" not in page and HOSTILE in text  # shown as text, never as markup


def test_files_that_cannot_be_read_become_notes_not_failures(tmp_path: Path) -> None:
    layout, folder = hand_model_folder(tmp_path)
    (folder / "training_curves.png").write_bytes(b"not a png")
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "evaluation.json").write_text("{broken")
    write_csv(layout.report_dir("binary") / "audit" / "label_issues.csv", ("crop", "label"), [["a", "b"]])
    data = load_report(layout, folder)
    parsed = assert_self_contained(render_html(data))
    text = " ".join(" ".join(parsed.text).split())
    assert len(data.notes) == 3 and all(str(folder) in n or "audit" in n for n in data.notes)
    assert "not a readable PNG" in text and "run toonvision evaluate" in text and "expected the columns" in text
    assert "Nothing in" in text  # the audit folder exists, but nothing in it could be read


def test_a_split_on_disk_is_used_without_one_in_best_json_and_a_different_one_is_noted(tmp_path: Path) -> None:
    layout, folder = hand_model_folder(tmp_path)
    data_dir = layout.task_data("binary")
    write_csv(data_dir / "split.csv", ("crop", "label", "class", "split", "file", "source", "source_sha256", "seed"),
              [["cog/x.png", "cog_bb_a", "cog", "train", "x.png", "s.png", "h", 4],
               ["toon/y.png", "toon_cat", "toon", "test", "y.png", "t.png", "h", 4]])
    data = load_report(layout, folder)
    assert data.split is not None and data.split.source.startswith("best.json")
    assert any("another split" in n for n in data.notes)

    info = json.loads((folder / "best.json").read_text())
    del info["split"]
    (folder / "best.json").write_text(json.dumps(info))
    data = load_report(layout, folder)
    assert data.split is not None and data.split.source == str(data_dir / "split.csv") and data.split.seed == 4
    assert [(c.cls, c.counts) for c in data.split.classes] == [("cog", (1, 0)), ("toon", (0, 1))]
    assert data.split.splits == ("train", "test") and not data.notes


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (None, "no best.json here; train first"),
    ("{not json", "damaged"),
    ('["a list"]', "not a best.json written by toonvision train"),
    ('{"task": "binary"}', "not a best.json written by toonvision train"),
])
def test_a_folder_without_a_readable_best_json_is_a_clear_error(tmp_path: Path, content: str | None,
                                                                message: str) -> None:
    layout = Layout.from_dirs(tmp_path / "img", tmp_path / "models")
    folder = layout.task_models("binary")
    folder.mkdir(parents=True)
    if content is not None:
        (folder / "best.json").write_text(content)
    with pytest.raises(ModelFileError, match=message):
        load_report(layout, folder)
    result = cli(layout, "report", str(folder))
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (folder / REPORT_HTML).exists()


@pytest.mark.parametrize("args, message", [
    (["report", "{tmp}/nowhere"], "no such folder"),
    (["report", "{tmp}/file.txt"], "not a folder"),
    (["report"], "or --task, not both"),
    (["report", "{tmp}", "--task", "binary"], "or --task, not both"),
    (["report", "{tmp}/models/binary", "--out", "{tmp}"], "is a directory"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    layout, _ = hand_model_folder(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    result = cli(layout, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_library_raises_usage_errors_too(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        modelreport.resolve_folder(tmp_path / "nowhere")
    layout, folder = hand_model_folder(tmp_path)
    with pytest.raises(UsageError, match="is a folder"):
        write_report(load_report(layout, folder), tmp_path)


def test_png_size_refuses_what_is_not_a_png() -> None:
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + bytes(30))


# -- the file names other stages write ----------------------------------------------------------------


def test_the_demo_names_each_tasks_report(tmp_path: Path) -> None:
    from toonvision import demo

    config = demo.DemoConfig(root=tmp_path / "tv")
    where = demo._where(demo.demo_layout(config.root), config)
    for task in config.tasks:
        assert str(demo.demo_layout(config.root).task_models(task) / REPORT_HTML) in where
