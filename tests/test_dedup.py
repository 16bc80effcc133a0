"""Duplicates: perceptual hashes, near pairs, clustering, duplicates.csv and leaks across splits."""

from __future__ import annotations

import csv
import dataclasses
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toonvision.dedup import (
    DUPLICATE_COLUMNS,
    NEAR_THRESHOLD,
    _pairs_brute_force,
    _pairs_multi_index,
    find_duplicates,
    format_duplicates_csv,
    hamming,
    leaks,
    near_pairs,
    phash,
    screenshot_groups,
    write_duplicates_csv,
)
from toonvision.extract import ExtractOptions, extract
from toonvision.layout import Layout
from toonvision.manifest import CropRecord
from toonvision.split import plan_split
from toonvision.synth import SynthConfig, plan_scene, render_plan
from toonvision.synth.scenery import _backdrop_width
from toonvision.tasks import get_task
from toonvision.voc import format_annotation

CONFIG = SynthConfig(count=8, seed=5, entities=(2, 4), toon_share=0.5)


def pan(plan, dx: int):
    """The same scene with the camera moved ``dx`` pixels: the backdrop and every entity shift."""
    new = min(max(plan.pan + dx, 0), _backdrop_width(plan.size.width) - plan.size.width)
    moved = new - plan.pan

    def shift(e):
        b, t = e.box, e.nametag
        return dataclasses.replace(e, box=(b[0] - moved, b[1], b[2] - moved, b[3]),
                                   nametag=(t[0] - moved, t[1], t[2] - moved, t[3]))

    return dataclasses.replace(plan, pan=new, entities=tuple(shift(e) for e in plan.entities))


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def write_frame(folder: Path, name: str, image: Image.Image, annotation) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{name}.png")
    (folder / f"{name}.xml").write_text(format_annotation(dataclasses.replace(annotation, filename=f"{name}.png")))


def frame_sequences(folder: Path, scenes: range) -> dict[str, int]:
    """Per scene: the frame, the camera panned 4 px, and a JPEG of the frame; returns file -> scene."""
    scene_of = {}
    for s in scenes:
        plan = plan_scene(CONFIG, s)
        first, panned = render_plan(plan), render_plan(pan(plan, 4))
        for name, image, annotation in ((f"s{s}_a", first.image, first.annotation),
                                        (f"s{s}_b", panned.image, panned.annotation),
                                        (f"s{s}_c", jpeg(first.image), first.annotation)):
            write_frame(folder, name, image, annotation)
            scene_of[f"{name}.png"] = s
    return scene_of


# --- hashes and pairs -------------------------------------------------------------------------


def test_phash_finds_near_duplicate_frames_and_not_unrelated_scenes():
    plans = [plan_scene(CONFIG, s) for s in range(4)]
    frames = [render_plan(p).image for p in plans]
    hashes = [phash(f) for f in frames]
    assert all(len(h) == 16 for h in hashes)
    for plan, frame, h in zip(plans, frames, hashes, strict=True):
        assert hamming(h, phash(render_plan(pan(plan, 4)).image)) <= NEAR_THRESHOLD
        assert hamming(h, phash(jpeg(frame))) <= NEAR_THRESHOLD
        assert hamming(h, phash(frame.resize((frame.width // 2, frame.height // 2)))) <= NEAR_THRESHOLD
    unrelated = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(unrelated) > NEAR_THRESHOLD


def test_multi_index_hashing_finds_exactly_the_pairs_of_brute_force():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, 4000, dtype=np.uint64)
    flips = np.array([sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 12)), replace=False))
                      for _ in range(1500)], dtype=np.uint64)
    values = np.concatenate([base, base[:1500] ^ flips, base[:200]])  # near, and exact copies
    for threshold in (0, 3, 8, 11):
        assert _pairs_multi_index(values, threshold) == _pairs_brute_force(values, threshold), threshold
    hexes = [f"{int(v):016x}" for v in values]
    hexes[5] = ""  # no hash: never paired
    pairs = near_pairs(hexes, 8)
    assert pairs == sorted(p for p in _pairs_brute_force(values, 8) if 5 not in p)
    assert all(i < j and hamming(hexes[i], hexes[j]) <= 8 for i, j in pairs) and len(pairs) > 1000


# --- the pool: find_duplicates, duplicates.csv, leaks ---------------------------------------------


@pytest.fixture(scope="module")
def frames_pool(tmp_path_factory):
    base = tmp_path_factory.mktemp("dedup")
    shots = base / "shots"
    scene_of = frame_sequences(shots, range(4))
    (shots / "copy_of_s0_a.png").write_bytes((shots / "s0_a.png").read_bytes())  # byte-identical, another name
    (shots / "copy_of_s0_a.xml").write_text((shots / "s0_a.xml").read_text())
    Image.open(shots / "s1_a.png").save(shots / "resaved_s1_a.png", compress_level=1)  # same pixels, other bytes
    (shots / "resaved_s1_a.xml").write_text((shots / "s1_a.xml").read_text())
    scene_of.update({"copy_of_s0_a.png": 0, "resaved_s1_a.png": 1})
    layout = Layout.from_dirs(base / "img")
    result = extract(layout, ExtractOptions(screenshots=shots, workers=1))
    assert result.duplicate_screenshots == 2 and result.exit_code == 0
    return layout, scene_of


def test_find_duplicates_reports_exact_and_near_screenshots_and_not_unrelated_ones(frames_pool, tmp_path):
    layout, scene_of = frames_pool
    report = find_duplicates(layout)
    by_cluster: dict[tuple[int, str], set[str]] = {}
    for row in report.rows:
        if not row.crop:
            by_cluster.setdefault((row.cluster, row.kind), set()).add(row.source)
    exact = sorted(sources for (_, kind), sources in by_cluster.items() if kind == "exact")
    assert exact == [{"copy_of_s0_a.png", "s0_a.png"}, {"resaved_s1_a.png", "s1_a.png"}]
    near = [sources for (_, kind), sources in by_cluster.items() if kind == "near"]
    assert len(near) == 4, near  # one per scene: never two scenes in one cluster
    for sources in near:
        assert len({scene_of[s] for s in sources}) == 1
        assert {f"s{scene_of[next(iter(sources))]}_{x}.png" for x in "abc"} <= sources
    path = write_duplicates_csv(report, tmp_path / "duplicates.csv")
    rows = list(csv.reader(path.open()))
    assert tuple(rows[0]) == DUPLICATE_COLUMNS == ("cluster", "kind", "source", "crop")
    assert {r[1] for r in rows[1:]} <= {"exact", "near"}
    assert path.read_text() == format_duplicates_csv(report)
    assert report.counts()["exact_screenshot_clusters"] == 2 and report.counts()["near_screenshot_clusters"] == 4
    assert report.thresholds()["screenshot_bits"] == NEAR_THRESHOLD


def test_leaks_are_the_near_pairs_that_straddle_splits(frames_pool):
    layout, scene_of = frames_pool
    from toonvision.manifest import load_pool

    records, _ = load_pool(layout)
    report = find_duplicates(layout, get_task("binary"))
    grouped = plan_split(records, get_task("binary"), (0.5, 0.5), seed=1)
    assert not [leak for leak in leaks(report, grouped) if leak.level == "screenshot"]
    loose = plan_split(records, get_task("binary"), (0.5, 0.5), seed=1, group=False)
    found = leaks(report, loose)
    assert found and all(leak.first_split != leak.second_split for leak in found)
    assert {leak.kind for leak in found} <= {"exact", "near"}
    assert all(set(leak.as_dict()) >= {"first", "second", "first_split", "second_split"} for leak in found)


# --- grouping for split (pure) ----------------------------------------------------------------------


def record(n: int, source: str, phash_: str, label: str = "toon_cat", pixels: str = "") -> CropRecord:
    return CropRecord(f"toon/{label}_{n}.png", label, "toon", n, source, 0, 0, 5, 5, 5, 5, f"sha-{source}",
                      f"c{n}", pixels, phash_, "")


def test_screenshot_groups_join_exact_and_near_screenshots_and_only_those():
    h = 0x0123456789ABCDEF
    recs = [
        record(0, "a.png", f"{h:016x}"),
        record(1, "b.png", f"{h ^ 0b1011:016x}"),  # 3 bits off: near a
        record(2, "c.png", f"{h ^ 0xFFFF0000:016x}"),  # 16 bits off: unrelated
        record(3, "d.png", f"{0xFEDCBA9876543210:016x}", pixels="p1"),
        record(4, "e.png", "", pixels="p1"),  # same pixels as d, no hash (an older extract)
        record(5, "f.png", ""),
    ]
    groups = screenshot_groups(recs)
    key = groups.group_of
    assert key[recs[0].crop] == key[recs[1].crop] != key[recs[2].crop]
    assert key[recs[3].crop] == key[recs[4].crop] != key[recs[5].crop]
    assert (groups.screenshots, groups.merged, groups.near_groups, groups.unhashed) == (6, 2, 1, 2)
    assert len(set(screenshot_groups(recs, threshold=None).group_of.values())) == 5


def test_near_duplicate_screenshots_never_straddle_splits():
    rng = random.Random(3)
    recs, scene_of = [], {}
    for scene in range(40):
        h = rng.getrandbits(64)
        for frame in range(rng.randint(1, 4)):
            noisy = h ^ sum(1 << b for b in rng.sample(range(64), rng.randint(0, NEAR_THRESHOLD // 2)))
            for _ in range(rng.randint(1, 3)):
                n = len(recs)
                label = rng.choice(["toon_cat", "toon_dog", "cog_bb_flunky"])
                recs.append(CropRecord(f"{label.split('_')[0]}/{label}_{n}.png", label, label.split("_")[0], n,
                                       f"scene{scene}_{frame}.png", 0, 0, 5, 5, 5, 5, f"sha{scene}_{frame}",
                                       f"c{n}", "", f"{noisy:016x}", ""))
                scene_of[recs[-1].crop] = scene
    for seed in range(5):
        plan = plan_split(recs, get_task("label"), (0.6, 0.2, 0.2), seed)
        splits: dict[int, set[str]] = {}
        for a in plan.assignments:
            splits.setdefault(scene_of[a.crop], set()).add(a.split)
        assert all(len(s) == 1 for s in splits.values()), seed
        assert plan.near_merged > 0
