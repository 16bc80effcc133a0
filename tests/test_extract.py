"""extract crops every object into the pool with growing per-label indices, safely."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toonvision.cli import main
from toonvision.errors import AnnotationError
from toonvision.extract import (
    ExtractOptions,
    Screenshot,
    discover,
    extract,
    read_screenshot,
    validate,
)
from toonvision.layout import Layout
from toonvision.locks import locked
from toonvision.manifest import load_manifest
from toonvision.problems import Severity

from helpers import noise_image, voc_xml, write_screenshot

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout.from_dirs(tmp_path / "img", tmp_path / "models")


def pool_state(layout: Layout) -> dict[str, str]:
    """Every pool file with its content hash, plus the manifest's text."""
    state = {
        path.relative_to(layout.pool).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in layout.pool.rglob("*") if path.is_file()
    }
    return state


def test_real_samples_give_seven_crops_with_the_xml_boxes(samples, tmp_path, layout):
    result = extract(layout, ExtractOptions(screenshots=samples))
    records = load_manifest(layout.manifest)
    assert result.exit_code == 0 and result.crops_written == 7
    assert sorted(r.group for r in records) == ["cog"] * 6 + ["toon"]
    flunkies = [r for r in records if r.label == "cog_bb_flunky"]
    assert [(r.index, r.box) for r in flunkies] == [(0, (568, 288, 597, 327)), (1, (616, 286, 642, 326))]
    assert {r.crop for r in records} >= {"cog/cog_bb_flunky_0.png", "cog/cog_bb_flunky_1.png", "toon/toon_dog_0.png"}
    for record in records:
        with Image.open(layout.pool / record.crop) as crop:
            assert crop.format == "PNG" and crop.size == (record.width, record.height)
            assert crop.size == (record.xmax - record.xmin, record.ymax - record.ymin)


def test_crop_pixels_equal_the_screenshot_region(tmp_path, layout):
    shots = tmp_path / "shots"
    image = write_screenshot(shots, "a", [("toon_cat", (3, 4, 20, 30))])
    extract(layout, ExtractOptions(screenshots=shots))
    crop = np.asarray(Image.open(layout.pool / "toon" / "toon_cat_0.png"))
    assert np.array_equal(crop, np.asarray(Image.open(image))[4:30, 3:20])


def test_rerun_adds_nothing_and_indices_never_reuse(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("toon_cat", (0, 0, 10, 10)), ("toon_cat", (10, 10, 30, 30))])
    extract(layout, ExtractOptions(screenshots=shots))
    again = extract(layout, ExtractOptions(screenshots=shots))
    assert (again.crops_written, again.already_in_pool) == (0, 2)
    (layout.pool / "toon" / "toon_cat_1.png").unlink()
    write_screenshot(shots, "b", [("toon_cat", (1, 1, 9, 9))], seed=1)
    extract(layout, ExtractOptions(screenshots=shots))
    assert [r.index for r in load_manifest(layout.manifest)] == [0, 1, 2]
    assert (layout.pool / "toon" / "toon_cat_2.png").exists()


def test_generic_labels_get_their_own_group(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "cells", [("RBC", (0, 0, 10, 10)), (" WBC ", (5, 5, 20, 20)), ("with_mask", (1, 1, 8, 8))])
    extract(layout, ExtractOptions(screenshots=shots))
    assert sorted(r.crop for r in load_manifest(layout.manifest)) == [
        "rbc/rbc_0.png", "wbc/wbc_0.png", "with_mask/with_mask_0.png"]


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "PNG"), (".PNG", "JPEG"), (".JPEG", "JPEG"), (".png", "BMP")])
def test_pairs_by_stem_and_opens_by_content(tmp_path, layout, suffix, fmt):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("toon_cat", (0, 0, 10, 10))], image_format=fmt, suffix=suffix)
    result = extract(layout, ExtractOptions(screenshots=shots))
    assert result.crops_written == 1 and result.exit_code == 0


def test_xml_filename_and_path_are_ignored(tmp_path, layout):
    shots = tmp_path / "shots"
    shots.mkdir()
    noise_image().save(shots / "real.png")
    (shots / "real.xml").write_text(voc_xml("something_else.jpg", [("toon_cat", (0, 0, 5, 5))]))
    assert extract(layout, ExtractOptions(screenshots=shots)).crops_written == 1


def problems_of(result) -> list[str]:
    return [f"{p.severity}: {p.line()}" for p in result.problems]


def test_bad_inputs_are_reported_and_the_rest_processed(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "good", [("toon_cat", (0, 0, 10, 10))])
    write_screenshot(shots, "clip", [("toon_dog", (-5, -5, 100, 20))], seed=1)
    write_screenshot(shots, "zero", [("toon_dog", (70, 10, 90, 20)), ("toon_dog", (5, 5, 5, 9))], seed=2)
    write_screenshot(shots, "size", [("toon_pig", (0, 0, 5, 5))], seed=3, xml_size=(0, 0))
    write_screenshot(shots, "labels", [("../../etc/x", (0, 0, 5, 5)), ("a/b", (0, 0, 5, 5)),
                                       ("", (0, 0, 5, 5)), ("toon_cow", (0, 0, 5, 5))], seed=4)
    (shots / "truncated.png").write_bytes((shots / "good.png").read_bytes()[:60])
    (shots / "truncated.xml").write_text(voc_xml("truncated.png", [("toon_cat", (0, 0, 5, 5))]))
    (shots / "lonely.xml").write_text(voc_xml("lonely.png", []))
    noise_image().save(shots / "unlabelled.png")
    result = extract(layout, ExtractOptions(screenshots=shots))
    lines = "\n".join(problems_of(result))
    assert result.exit_code == 1
    assert "warning: " + str(shots / "clip.xml") + ": object 0: toon_dog: box (-5, -5, 100, 20) spills outside" in lines
    assert "object 0: toon_dog: box (70, 10, 90, 20) has no area" in lines
    assert "object 1: toon_dog: box (5, 5, 5, 9) has no area" in lines
    assert "<size> says 0x0 but the image is 64x48" in lines
    assert f"error: {shots / 'labels.xml'}: object 0: label '../../etc/x' may only hold" in lines
    assert f"{shots / 'labels.xml'}: object 1:" in lines and "object 2: empty label" in lines
    assert f"error: {shots / 'truncated.png'}: truncated or corrupt image" in lines
    assert f"error: {shots / 'lonely.xml'}: has no image" in lines
    assert f"warning: {shots / 'unlabelled.png'}: has no XML" in lines
    crops = sorted(r.crop for r in load_manifest(layout.manifest))
    assert crops == ["toon/toon_cat_0.png", "toon/toon_cow_0.png", "toon/toon_dog_0.png", "toon/toon_pig_0.png"]
    assert {p.name for p in layout.img_dir.rglob("*.png")} == {Path(c).name for c in crops}
    assert result.skipped_by_reason() == {"zero area": 2, "bad label": 3}


def test_box_warnings_of_the_xml_are_told_once_per_object_and_the_others_passed_on(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    noise_image().save(folder / "s.png")
    (folder / "s.xml").write_text(
        "<annotation><filename>s.png</filename><size><width>64</width></size>"
        "<object><name>toon_cat</name></object>"
        "<object><name>toon_dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>x</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    result = read_screenshot(Screenshot(folder / "s.png", folder / "s.xml", "s.png"))
    xml = str(folder / "s.xml")
    assert problems_of(result) == [
        f"warning: {xml}: <size> is incomplete; the image's own size is used",
        f"warning: {xml}: object 0: toon_cat: has no usable <bndbox>; skipped",
        f"warning: {xml}: object 1: toon_dog: has no usable <bndbox>; skipped",
    ]
    assert all(p.severity is Severity.WARNING for p in result.problems) and not result.has_errors


def test_decompression_bomb_is_one_files_error(tmp_path, layout):
    shots = tmp_path / "shots"
    Image.new("1", (20_000, 20_000)).save(shots / "bomb.png") if shots.mkdir() is None else None
    (shots / "bomb.xml").write_text(voc_xml("bomb.png", [("toon_cat", (0, 0, 5, 5))]))
    write_screenshot(shots, "good", [("toon_cat", (0, 0, 10, 10))])
    result = extract(layout, ExtractOptions(screenshots=shots))
    assert any("decompression bomb" in p.message for p in result.errors)
    assert result.crops_written == 1


def test_exif_rotated_screenshot_is_cropped_upright(tmp_path, layout):
    shots = tmp_path / "shots"
    shots.mkdir()
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 40, 10))  # red top half as stored; rotated 90 cw it is the right half
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(shots / "r.jpg", exif=exif.tobytes(), quality=95)
    (shots / "r.xml").write_text(voc_xml("r.jpg", [("toon_cat", (12, 0, 20, 40))], size=(20, 40)))
    result = extract(layout, ExtractOptions(screenshots=shots))
    assert result.exit_code == 0 and not result.warnings
    crop = np.asarray(Image.open(layout.pool / "toon" / "toon_cat_0.png"))
    assert crop.shape == (40, 8, 3) and crop[..., 0].mean() > 200


def test_classes_file_reports_and_strict_writes_nothing(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("toon_cat", (0, 0, 9, 9)), ("toon_cow", (9, 9, 19, 19))])
    classes = tmp_path / "classes.txt"
    classes.write_text("====TOONS====\ntoon_cat\n")
    with pytest.raises(AnnotationError, match="toon_cow"):
        extract(layout, ExtractOptions(screenshots=shots, classes=classes, strict=True))
    assert not layout.pool.exists()
    result = extract(layout, ExtractOptions(screenshots=shots, classes=classes))
    assert result.crops_written == 2 and "not in the classes file" in "\n".join(problems_of(result))


def test_move_keeps_subfolders_and_happens_after_the_commit(tmp_path, layout):
    write_screenshot(layout.screenshots / "street", "a", [("toon_cat", (0, 0, 9, 9))])
    write_screenshot(layout.screenshots / "street", "bad", [("a/b", (0, 0, 9, 9))], seed=2)
    result = extract(layout, ExtractOptions(move=True))
    assert result.moved == 1
    assert (layout.processed / "street" / "a.png").exists() and (layout.processed / "street" / "a.xml").exists()
    assert (layout.screenshots / "street" / "bad.png").exists(), "a screenshot with errors stays for fixing"
    assert len(load_manifest(layout.manifest)) == 1


def many_screenshots(folder: Path, count: int) -> None:
    for i in range(count):
        write_screenshot(folder / f"street{i % 3}", f"shot{i:03d}", [
            ("toon_cat", (0, 0, 20, 20)), (f"cog_bb_{'flunky' if i % 2 else 'yesman'}", (10, 5, 40, 45)),
            ("toon_cat", (30, 10, 60, 40))], seed=i)


def test_parallel_and_serial_pools_are_identical(tmp_path):
    many_screenshots(tmp_path / "shots", 24)
    serial = Layout.from_dirs(tmp_path / "serial")
    parallel = Layout.from_dirs(tmp_path / "parallel")
    extract(serial, ExtractOptions(screenshots=tmp_path / "shots", workers=1))
    extract(parallel, ExtractOptions(screenshots=tmp_path / "shots", workers=2))
    assert pool_state(serial) == pool_state(parallel)
    assert len(load_manifest(serial.manifest)) == 72


KILLABLE = """
import sys
from pathlib import Path
from toonvision.extract import ExtractOptions, extract
from toonvision.layout import Layout
extract(Layout.from_dirs(sys.argv[1]), ExtractOptions(screenshots=Path(sys.argv[2]), workers=1, commit_every=5))
"""


def _kill_when(command: list[str], ready, env: dict) -> bool:
    """Start ``command``, SIGKILL it as soon as ``ready()`` holds; True if it was still running."""
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    interrupted = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return interrupted


def test_killed_extract_reruns_to_the_clean_state(tmp_path):
    shots = tmp_path / "shots"
    many_screenshots(shots, 80)
    clean = Layout.from_dirs(tmp_path / "clean")
    extract(clean, ExtractOptions(screenshots=shots, workers=1))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kill_points = {
        "first crop staged": lambda layout: layout.staging.exists(),
        "after a few commits": lambda layout: len(load_manifest(layout.manifest)) >= 30,
        "late": lambda layout: len(load_manifest(layout.manifest)) >= 180,
    }
    interrupted = 0
    for name, ready in kill_points.items():
        killed = Layout.from_dirs(tmp_path / name.replace(" ", "_"))
        command = [sys.executable, "-c", KILLABLE, str(killed.img_dir), str(shots)]
        interrupted += _kill_when(command, lambda ready=ready, killed=killed: ready(killed), env)
        extract(killed, ExtractOptions(screenshots=shots, workers=1))
        assert pool_state(killed) == pool_state(clean), f"killed when {name}"
    assert interrupted >= 2, "the kills must land while extract is running"


def test_a_second_process_is_told_who_holds_the_pool(tmp_path, layout):
    write_screenshot(tmp_path / "shots", "a", [("toon_cat", (0, 0, 9, 9))])
    with locked(layout.lock_file, str(layout.img_dir)):
        code = (f"import fcntl,os; fd=os.open({str(layout.lock_file)!r}, os.O_RDWR); "
                "fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)")
        assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0
    with locked(layout.lock_file, "img"):
        pass  # released locks are reusable: a crashed holder never blocks the next run
    with locked(layout.lock_file, str(layout.img_dir)):
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "toonvision",
                "--img-dir",
                str(layout.img_dir),
                "extract",
                "--screenshots",
                str(tmp_path / "shots"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    assert refused.returncode == 1, refused.stderr
    assert f"another toonvision is working on {layout.img_dir}, pid {os.getpid()}" in refused.stderr
    assert not layout.manifest.exists()


def test_symlinks_outside_the_root_are_not_followed(tmp_path):
    shots = tmp_path / "shots"
    outside = write_screenshot(tmp_path / "elsewhere", "secret", [("toon_cat", (0, 0, 9, 9))])
    shots.mkdir()
    (shots / "secret.png").symlink_to(outside)
    (shots / "secret.xml").symlink_to(outside.with_suffix(".xml"))
    found = discover(shots)
    assert found.screenshots == ()
    assert any("outside the screenshots folder" in p.message for p in found.problems)


def test_validate_lists_problems_and_exits_1(tmp_path):
    shots = tmp_path / "shots"
    write_screenshot(shots, "ok", [("toon_cat", (0, 0, 9, 9))])
    write_screenshot(shots, "bad", [("toon cat", (0, 0, 9, 9))])
    (shots / "evil.xml").write_text('<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation/>')
    noise_image().save(shots / "evil.png")
    runner = CliRunner()
    outcome = runner.invoke(main, ["--img-dir", str(tmp_path / "img"), "validate", "--screenshots", str(shots)])
    assert outcome.exit_code == 1, outcome.output
    assert f"{shots / 'bad.xml'}: object 0: label 'toon cat' may only hold" in outcome.output
    assert f"{shots / 'evil.xml'}: contains a DTD" in outcome.output
    assert "Traceback" not in outcome.output
    assert outcome.output.strip().endswith("3 objects checked: 2 errors, 0 warnings") or "2 errors" in outcome.output
    assert not (tmp_path / "img").exists()
    assert validate(shots).exit_code == 1


def test_cli_extract_exit_codes(tmp_path):
    shots = tmp_path / "shots"
    write_screenshot(shots, "ok", [("toon_cat", (0, 0, 9, 9))])
    runner = CliRunner()
    args = ["--img-dir", str(tmp_path / "img"), "extract", "--screenshots", str(shots)]
    assert runner.invoke(main, args).exit_code == 0
    write_screenshot(shots, "bad", [("a/b", (0, 0, 9, 9))])
    assert runner.invoke(main, args).exit_code == 1
    missing = runner.invoke(
        main, ["--img-dir", str(tmp_path / "img"), "extract", "--screenshots", str(tmp_path / "none")]
    )
    assert missing.exit_code == 2 and "no such folder" in missing.output


# --- duplicates, label conflicts and corrected labels (issue 15) ----------------------------------


def active(layout: Layout) -> list:
    return [r for r in load_manifest(layout.manifest) if r.active]


def test_identical_screenshots_with_different_labels_keep_both_objects_and_report_a_conflict(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("cog_bb_flunky", (0, 0, 20, 20)), ("toon_cat", (20, 20, 40, 40))])
    write_screenshot(shots, "b", [("cog_lb_bigwig", (0, 0, 20, 20)), ("toon_cat", (20, 20, 40, 40))])  # same pixels
    result = extract(layout, ExtractOptions(screenshots=shots))
    labels = sorted(r.label for r in active(layout))
    assert labels == ["cog_bb_flunky", "cog_lb_bigwig", "toon_cat", "toon_cat"], "every labelled object is kept"
    assert result.conflicts == 1 and result.exit_code == 1
    conflict = [p for p in result.errors if "label conflict" in p.message]
    assert len(conflict) == 1 and conflict[0].file == str(shots / "b.xml") and "a.png" in conflict[0].message
    assert "cog_bb_flunky" in conflict[0].message and conflict[0].obj == 0
    assert result.duplicate_screenshots == 1
    assert any("same pixels as a.png" in p.message for p in result.warnings)
    assert "1 label conflicts" in result.summary()
    again = extract(layout, ExtractOptions(screenshots=shots))
    assert again.crops_written == 0 and again.conflicts == 1 and again.exit_code == 1  # until it is fixed
    runner = CliRunner()
    outcome = runner.invoke(main, ["--img-dir", str(layout.img_dir), "extract", "--screenshots", str(shots)])
    assert outcome.exit_code == 1 and "label conflict" in outcome.output


def test_a_copy_under_another_name_is_a_reported_duplicate_with_its_objects_kept(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("toon_cat", (0, 0, 20, 20))])
    noise_image().save(shots / "b.png", compress_level=1)  # other bytes, the same pixels
    (shots / "b.xml").write_text(voc_xml("b.png", [("toon_cat", (0, 0, 20, 20)), ("toon_dog", (30, 5, 50, 40))]))
    result = extract(layout, ExtractOptions(screenshots=shots))
    assert (result.crops_written, result.already_in_pool, result.exit_code) == (3, 0, 0)
    assert result.duplicate_screenshots == 1 and result.conflicts == 0
    assert any(p.file == str(shots / "b.png") and "same pixels as a.png" in p.message for p in result.warnings)
    rows = active(layout)
    assert len({r.pixels_sha256 for r in rows}) == 1 and len({r.source_sha256 for r in rows}) == 2  # one split group
    again = extract(layout, ExtractOptions(screenshots=shots))
    assert (again.crops_written, again.already_in_pool, again.duplicate_screenshots) == (0, 3, 2)


def test_a_renamed_screenshot_is_not_cropped_again_and_a_deleted_copy_leaves_the_pool(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("toon_cat", (0, 0, 20, 20))])
    extract(layout, ExtractOptions(screenshots=shots))
    (shots / "a.png").rename(shots / "renamed.png")
    (shots / "a.xml").rename(shots / "renamed.xml")
    result = extract(layout, ExtractOptions(screenshots=shots))
    assert (result.crops_written, result.already_in_pool, result.duplicate_screenshots) == (0, 1, 0)
    (shots / "renamed.xml").write_text(voc_xml("renamed.png", [("toon_dog", (0, 0, 20, 20))]))  # then relabelled
    relabelled = extract(layout, ExtractOptions(screenshots=shots))
    assert (relabelled.crops_written, relabelled.retired, relabelled.conflicts) == (1, 1, 0)
    assert [(r.label, r.source) for r in active(layout)] == [("toon_dog", "renamed.png")]
    # a copy labelled twice, then deleted: re-extracting the other retires the copy's crops
    (shots / "copy.png").write_bytes((shots / "renamed.png").read_bytes())
    (shots / "copy.xml").write_text((shots / "renamed.xml").read_text())
    assert extract(layout, ExtractOptions(screenshots=shots)).crops_written == 1
    assert len(active(layout)) == 2
    (shots / "copy.png").unlink()
    (shots / "copy.xml").unlink()
    dropped = extract(layout, ExtractOptions(screenshots=shots))
    assert (dropped.crops_written, dropped.retired) == (0, 1)
    assert [(r.label, r.source) for r in active(layout)] == [("toon_dog", "renamed.png")]


def test_a_corrected_label_replaces_the_crop_on_re_extract(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("cog_bb_flunky", (0, 0, 20, 20)), ("toon_cat", (20, 20, 40, 40))])
    extract(layout, ExtractOptions(screenshots=shots))
    (shots / "a.xml").write_text(voc_xml("a.png", [("cog_lb_bigwig", (0, 0, 20, 20)), ("toon_cat", (20, 20, 40, 40))]))
    result = extract(layout, ExtractOptions(screenshots=shots))
    assert (result.crops_written, result.retired, result.conflicts, result.exit_code) == (1, 1, 0, 0)
    rows = {r.crop: r for r in load_manifest(layout.manifest)}
    old, new = rows["cog/cog_bb_flunky_0.png"], rows["cog/cog_lb_bigwig_0.png"]
    assert old.status == "retired" and old.replaced_by == new.crop and new.active
    assert (layout.pool / old.crop).exists(), "nothing is deleted: the old file stays, out of the active set"
    from toonvision.manifest import load_pool

    assert sorted(r.label for r in load_pool(layout)[0]) == ["cog_lb_bigwig", "toon_cat"]
    # corrected back: a fresh index, never the retired one's
    (shots / "a.xml").write_text(voc_xml("a.png", [("cog_bb_flunky", (0, 0, 20, 20)), ("toon_cat", (20, 20, 40, 40))]))
    back = extract(layout, ExtractOptions(screenshots=shots))
    assert (back.crops_written, back.retired) == (1, 1)
    assert sorted(r.crop for r in active(layout)) == ["cog/cog_bb_flunky_1.png", "toon/toon_cat_0.png"]
    assert extract(layout, ExtractOptions(screenshots=shots)).crops_written == 0  # converged
    (shots / "a.xml").write_text(voc_xml("a.png", [("toon_cat", (20, 20, 40, 40))]))  # an object deleted
    gone = extract(layout, ExtractOptions(screenshots=shots))
    assert gone.retired == 1 and [r.crop for r in active(layout)] == ["toon/toon_cat_0.png"]


def test_a_manifest_without_hashes_loads_and_gets_them_on_the_next_extract(tmp_path, layout):
    shots = tmp_path / "shots"
    write_screenshot(shots, "a", [("toon_cat", (0, 0, 20, 20))])
    extract(layout, ExtractOptions(screenshots=shots))
    lines = layout.manifest.read_text().splitlines()
    layout.manifest.write_text("\n".join(",".join(line.split(",")[:13]) for line in lines) + "\n")  # an old extract
    (old,) = load_manifest(layout.manifest)
    assert old.active and not old.source_phash and not old.pixels_sha256
    result = extract(layout, ExtractOptions(screenshots=shots))
    assert (result.crops_written, result.already_in_pool) == (0, 1)
    (filled,) = load_manifest(layout.manifest)
    assert len(filled.source_phash) == 16 and len(filled.crop_phash) == 16 and filled.pixels_sha256
    assert filled.crop == old.crop and filled.status == "active"


def test_two_labels_on_one_box_of_one_xml_are_a_conflict_and_the_screenshot_is_not_moved(tmp_path, layout):
    write_screenshot(
        layout.screenshots,
        "a",
        [
            ("toon_cat", (0, 0, 20, 20)),
            ("toon_dog", (0, 0, 20, 20)),
            ("toon_cat", (0, 0, 20, 20)),
            ("toon_pig", (30, 5, 50, 40)),
        ],
    )
    write_screenshot(layout.screenshots, "ok", [("toon_cat", (0, 0, 9, 9))], seed=5)
    result = extract(layout, ExtractOptions(move=True))
    assert sorted(r.label for r in active(layout)) == ["toon_cat", "toon_cat", "toon_dog", "toon_pig"]
    assert result.conflicts == 1 and result.exit_code == 1
    (conflict,) = [p for p in result.errors if "label conflict" in p.message]
    assert conflict.obj == 0 and "toon_dog in object 1 of this file" in conflict.message
    assert any(p.obj == 2 and "repeats object 0" in p.message for p in result.warnings)
    assert result.moved == 1 and (layout.screenshots / "a.png").exists(), "a conflicted screenshot stays for fixing"
