"""Every seed and every input the fuzzers found interesting or crashing is replayed here.

fuzz/corpus/<target>/ holds the hand-written seeds, fuzz/found/<target>/ the minimised inputs
that fuzzing runs found interesting, fuzz/regressions/<target>/ inputs that once crashed.
Each must be accepted or refused with the project's own error (see fuzz/targets.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from toonvision.errors import AnnotationError, ImageError
from toonvision.images import decode_image
from toonvision.labels import normalise_label
from toonvision.voc import parse_annotation

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
TARGETS = ("voc", "image", "label")


def _load_targets():
    spec = importlib.util.spec_from_file_location("fuzz_targets", FUZZ / "targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


targets = _load_targets()


def _inputs(target: str) -> list[Path]:
    folders = (FUZZ / "corpus" / target, FUZZ / "found" / target, FUZZ / "regressions" / target)
    return sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("target", TARGETS)
def test_every_saved_input_gives_success_or_the_projects_own_error(target):
    inputs = _inputs(target)
    assert inputs, f"no inputs for the {target} fuzzer under {FUZZ}"
    check = getattr(targets, f"check_{target}")
    failures = []
    for path in inputs:
        try:
            check(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - any escape is the finding to report
            failures.append(f"{path.relative_to(FUZZ)}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["labelimg_sample0.xml", "float_coordinates.xml", "no_size.xml",
                                  "verified_declared.xml", "utf16.xml"])
def test_seed_annotations_are_read_not_refused(name):
    parsed = parse_annotation((FUZZ / "corpus" / "voc" / name).read_bytes(), name)
    assert parsed.annotation.objects and all(o.box for o in parsed.annotation.objects)


def test_seed_images_all_decode():
    seeds = sorted(p for p in (FUZZ / "corpus" / "image").glob("*.*") if not p.name.startswith("hostile_"))
    assert len(seeds) >= 10
    for path in seeds:
        assert decode_image(path.read_bytes(), path.name).mode == "RGB", path.name


@pytest.mark.parametrize("target, error, message", [
    ("voc", AnnotationError, "contains a DTD or entity declaration"),
    ("image", ImageError, "decompression bomb"),
])
def test_hostile_seeds_are_refused_with_the_reason(target, error, message):
    read = {"voc": parse_annotation, "image": decode_image}[target]
    seeds = sorted((FUZZ / "corpus" / target).glob("hostile_*"))
    assert seeds
    for path in seeds:
        with pytest.raises(error, match=message):
            read(path.read_bytes(), path.name)


def test_look_alike_labels_are_refused():
    for raw in (
        "toon_c\u0430t",
        "\uff54\uff4f\uff4f\uff4e",
        "toon_mon\u212aey",
        targets.label_from_bytes(b"toon_\x8e"),
    ):
        with pytest.raises(ValueError, match="non-ASCII"):
            normalise_label(raw)
