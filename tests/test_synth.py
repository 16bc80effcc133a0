"""synth draws labelled street screenshots: deterministic, labelImg-exact, learnable, safe to re-run."""

from __future__ import annotations

import io
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toonvision.cli import main
from toonvision.errors import UsageError
from toonvision.labels import read_classes_file
from toonvision.synth import (
    LABELS, SynthConfig, encode_png, plan_scene, render_scene, scene_name, synthesize,
    with_weights,
)
from toonvision.voc import load_annotation

REPO = Path(__file__).resolve().parents[1]
SMALL = SynthConfig(count=4, seed=3, size=(320, 240))


def png_bytes(config: SynthConfig, index: int) -> bytes:
    return encode_png(render_scene(config, index).image)


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_the_labels_are_the_43_of_the_original_classes_file(samples):
    assert LABELS == read_classes_file(samples / "predefined_classes.txt")


def test_same_seed_same_bytes_and_other_seeds_differ():
    first = [png_bytes(SMALL, i) for i in range(3)]
    assert first == [png_bytes(SMALL, i) for i in range(3)]
    assert len(set(first)) == 3, "every scene of a seed is a different street"
    other = SynthConfig(count=4, seed=4, size=(320, 240))
    assert all(png_bytes(other, i) != first[i] for i in range(3))


def test_encode_png_is_lossless():
    image = render_scene(SMALL, 0).image
    with Image.open(io.BytesIO(encode_png(image))) as decoded:
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_files_are_labelimg_xml_that_round_trips_without_warnings(tmp_path):
    result = synthesize(tmp_path / "shots", SMALL, workers=1)
    assert (result.written, result.present, result.screenshots) == (4, 0, 4)
    assert sorted(files(tmp_path / "shots")) == sorted(
        f"{scene_name(3, i)}{suffix}" for i in range(4) for suffix in (".png", ".xml"))
    objects = 0
    for i in range(4):
        png = tmp_path / "shots" / f"{scene_name(3, i)}.png"
        parsed = load_annotation(png.with_suffix(".xml"))
        assert parsed.warnings == ()
        expected = render_scene(SMALL, i).annotation
        assert parsed.annotation.objects == expected.objects
        assert parsed.annotation.filename == png.name and parsed.annotation.path == str(png)
        assert parsed.annotation.folder == "shots"
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (320, 240)
            assert (parsed.annotation.size.width, parsed.annotation.size.height, parsed.annotation.size.depth) == (
                320, 240, 3)
        objects += len(parsed.annotation.objects)
    assert objects == result.objects > 0
    xml = (tmp_path / "shots" / f"{scene_name(3, 0)}.xml").read_text()
    assert "\t<segmented>0</segmented>" in xml and "<pose>Unspecified</pose>" in xml
    assert "<database>Unknown</database>" in xml


def test_boxes_are_inside_the_image_and_clear_of_every_nametag():
    config = SynthConfig(seed=11, size=(320, 240), entities=(3, 8))
    checked = 0
    for i in range(12):
        scene = render_scene(config, i)
        pixels = np.asarray(scene.image.convert("L"))
        assert len(scene.nametags) >= len(scene.annotation.objects)
        for obj in scene.annotation.objects:
            xmin, ymin, xmax, ymax = obj.box.rounded()
            assert 0 <= xmin < xmax <= 320 and 0 <= ymin < ymax <= 240, obj
            assert (xmin, ymin, xmax, ymax) == (obj.box.xmin, obj.box.ymin, obj.box.xmax, obj.box.ymax)
            for tag in scene.nametags:
                disjoint = tag.xmax <= xmin or xmax <= tag.xmin or tag.ymax <= ymin or ymax <= tag.ymin
                assert disjoint, f"scene {i}: the box of {obj.name} holds a nametag"
            checked += 1
        for tag in scene.nametags:  # the tags are drawn where they are reported: light grey plates
            left, top, right, bottom = tag.rounded()
            assert 0 <= left < right <= 320 and 0 <= top < bottom <= 240
            assert np.median(pixels[top:bottom, left:right]) > 110
    assert checked >= 40


def sample_labels(config: SynthConfig, scenes: int) -> Counter:
    return Counter(label for i in range(scenes) for label in plan_scene(config, i).labels)


def test_default_frequencies_follow_the_original_dataset_within_4_standard_errors():
    counts = sample_labels(SynthConfig(seed=5, size=(320, 240)), 300)
    n = sum(counts.values())
    assert n >= 900
    expected = SynthConfig().probabilities()
    for label in LABELS:
        p = expected[label]
        assert abs(counts[label] - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1, label
    toons = sum(v for label, v in counts.items() if label.startswith("toon_"))
    original = 148 / (526 + 148)  # the original dataset: 526 Cogs, 148 Toons
    assert sum(p for label, p in expected.items() if label.startswith("toon_")) == pytest.approx(original, abs=0.002)
    assert abs(toons / n - original) < 0.04
    assert expected["toon_cat"] / expected["toon_horse"] == pytest.approx(3 / 0.35)  # README: cats 3, horses 0.35
    for suit in ("bb", "lb", "cb", "sb"):  # README: the top two Cogs of each suit have weight 0.3
        names = [label for label in LABELS if label.startswith(f"cog_{suit}_")]
        assert [expected[label] / expected[names[0]] for label in names] == pytest.approx([1] * 6 + [0.3] * 2)
    assert counts["toon_cat"] > 3 * counts["toon_horse"]
    for suit in ("bb", "lb", "cb", "sb"):
        names = [label for label in LABELS if label.startswith(f"cog_{suit}_")]
        assert max(counts[label] for label in names[6:]) < min(counts[label] for label in names[:6])


@pytest.mark.parametrize("overrides, toon_share, allowed", [
    ([("cog_lb_*", 0)], 0.2, lambda label: not label.startswith("cog_lb_")),
    ([("*", 0), ("toon_horse", 1)], 1.0, lambda label: label == "toon_horse"),
    ([], 0.0, lambda label: label.startswith("cog_")),
])
def test_weights_and_toon_share_choose_the_labels(overrides, toon_share, allowed):
    config = with_weights(SynthConfig(seed=2, size=(320, 240), toon_share=toon_share), overrides)
    counts = sample_labels(config, 40)
    assert counts and all(allowed(label) for label in counts)


@pytest.mark.parametrize("kwargs", [
    {"count": 0}, {"seed": -1}, {"size": (10, 10)}, {"size": (5000, 600)}, {"toon_share": 1.5},
    {"entities": (3, 2)}, {"weights": (("toon_unicorn", 1.0),)}, {"weights": (("toon_cat", -1.0),)},
    {"toon_share": 1.0, "weights": tuple((label, 0.0) for label in LABELS)},
])
def test_bad_settings_are_refused_with_a_reason(kwargs):
    with pytest.raises(UsageError, match="synth: "):
        SynthConfig(**kwargs)


def test_suits_differ_in_colour_and_cogs_from_toons():
    """What a model must learn is in the pixels: the suit colour at the torso tells the suit apart."""
    config = SynthConfig(seed=8, size=(320, 240), toon_share=0.25, entities=(3, 6))
    torsos: dict[str, list[np.ndarray]] = {}
    for i in range(25):
        scene = render_scene(config, i)
        pixels = np.asarray(scene.image, dtype=float)
        for obj in scene.annotation.objects:
            xmin, ymin, xmax, ymax = obj.box.rounded()
            w, h = xmax - xmin, ymax - ymin
            torso = pixels[ymin + int(0.45 * h):ymin + int(0.6 * h) + 1, xmin + int(0.35 * w):xmax - int(0.35 * w)]
            group = obj.name.split("_")[1] if obj.name.startswith("cog_") else "toon"
            torsos.setdefault(group, []).append(np.median(torso.reshape(-1, 3), axis=0))
    assert set(torsos) == {"bb", "lb", "cb", "sb", "toon"}
    means = {group: np.median(values, axis=0) for group, values in torsos.items()}
    for a, b in itertools.combinations(means, 2):
        assert np.linalg.norm(means[a] - means[b]) > 25, (a, b, means[a], means[b])


def test_a_rerun_leaves_identical_files_alone_and_completes_a_half_written_pair(tmp_path):
    out = tmp_path / "shots"
    synthesize(out, SMALL, workers=1)
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    (out / f"{scene_name(3, 2)}.xml").unlink()  # as if killed between the PNG and the XML
    (out / f".{scene_name(3, 1)}.png.x1y2.tmp").write_bytes(b"half")  # a killed atomic write
    result = synthesize(out, SMALL, workers=1)
    assert (result.written, result.present) == (1, 3)
    after = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert set(after) == set(before)
    assert all(after[name] == before[name] for name in after if not name.startswith(scene_name(3, 2)))


def test_files_that_differ_are_a_conflict_unless_overwrite(tmp_path):
    out = tmp_path / "shots"
    synthesize(out, SMALL, workers=1)
    (out / "mine.png").write_bytes(b"not synth's")
    before = files(out)
    bigger = SynthConfig(count=5, seed=3, size=(400, 300))
    with pytest.raises(UsageError, match="already exist and differ.*nothing was written.*--overwrite"):
        synthesize(out, bigger, workers=1)
    assert files(out) == before
    result = synthesize(out, bigger, overwrite=True, workers=1)
    assert (result.written, result.present) == (5, 0)
    with Image.open(out / f"{scene_name(3, 0)}.png") as image:
        assert image.size == (400, 300)
    assert (out / "mine.png").read_bytes() == b"not synth's"


def test_parallel_workers_write_the_same_files(tmp_path):
    config = SynthConfig(count=6, seed=1, size=(160, 120))
    synthesize(tmp_path / "a" / "shots", config, workers=1)
    synthesize(tmp_path / "b" / "shots", config, workers=2)
    one, two = files(tmp_path / "a" / "shots"), files(tmp_path / "b" / "shots")
    assert one.keys() == two.keys()
    for name in one:
        if name.endswith(".png"):
            assert one[name] == two[name], name
        else:  # the XML differs only in <path>
            assert one[name].replace(b"/a/", b"/b/") == two[name], name


KILLABLE = """
import sys
from pathlib import Path
from toonvision.synth import SynthConfig, synthesize
synthesize(Path(sys.argv[1]), SynthConfig(count=100, seed=9, size=(160, 120)), workers=1)
"""


def test_a_killed_synth_leaves_whole_files_and_a_rerun_finishes_the_job(tmp_path):
    out = tmp_path / "shots"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, str(out)], env=env)
    deadline = time.monotonic() + 60
    while process.poll() is None and len(list(out.glob("*.xml"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.002)
    interrupted = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert interrupted, "the kill must land while synth is running"
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            image.load()  # every PNG there is whole
    result = synthesize(out, SynthConfig(count=100, seed=9, size=(160, 120)), workers=1)
    assert result.present >= 5 and result.screenshots == 100
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{scene_name(9, i)}{suffix}" for i in range(100) for suffix in (".png", ".xml"))
    config = SynthConfig(count=100, seed=9, size=(160, 120))
    for i in (0, 4, 99):
        assert (out / f"{scene_name(9, i)}.png").read_bytes() == png_bytes(config, i)


def test_cli_writes_screenshots_and_prints_a_summary(tmp_path):
    runner = CliRunner()
    args = ["--img-dir", str(tmp_path / "img"), "synth", "--count", "3", "--seed", "7", "--size", "320x240",
            "--weight", "cog_*=0", "--toon-share", "1"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    shots = tmp_path / "img" / "raw" / "screenshots"
    assert len(list(shots.glob("synth_7_*.png"))) == len(list(shots.glob("synth_7_*.xml"))) == 3
    assert "3 screenshots" in result.output and "0 Cogs" in result.output and str(shots) in result.output
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "3 already there" in again.output


@pytest.mark.parametrize("args", [
    ["--size", "800"], ["--size", "800x"], ["--size", "axb"], ["--size", "800x600x3"], ["--size", "10x10"],
    ["--count", "0"], ["--weight", "toon_cat"], ["--weight", "toon_cat=-1"], ["--weight", "toon_unicorn=1"],
])
def test_cli_bad_options_exit_2_with_a_message(tmp_path, args):
    result = CliRunner().invoke(main, ["--img-dir", str(tmp_path / "img"), "synth", "--count", "2", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert not (tmp_path / "img" / "raw" / "screenshots").exists() or not any(
        (tmp_path / "img" / "raw" / "screenshots").iterdir())
