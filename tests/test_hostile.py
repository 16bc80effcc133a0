"""Hostile files through a real `toonvision extract`: each gets a clear message naming it, the
rest of the batch is processed, no traceback is shown, and nothing outside img/ is read or written.

One batch holds every hostile input beside good screenshots; it is extracted once by a real
subprocess (as a user would run it) and each test below checks one promise about that run.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from toonvision.cli import main
from toonvision.constants import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_XML_BYTES
from toonvision.manifest import load_manifest

from helpers import noise_image, voc_xml, write_screenshot

REPO = Path(__file__).resolve().parents[1]
SECRET = b"TOP-SECRET-MARKER"
ONE_CAT = [("toon_cat", (0, 0, 10, 10))]


# ---------------------------------------------------------------- hostile file makers


def _png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb when large)."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _noise_png() -> bytes:
    buffer = io.BytesIO()
    noise_image().save(buffer, format="PNG")
    return buffer.getvalue()


def _gif(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen size
    return bytes(data)


def _xxe(outside: Path) -> str:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY x SYSTEM "file://{outside}/secret.txt">]>\n'
            "<annotation><filename>&x;</filename><object><name>&x;</name></object></annotation>")


def _billion_laughs() -> str:
    levels = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10)]
    return (f'<?xml version="1.0"?>\n<!DOCTYPE annotation [{"".join(levels)}]>\n'
            "<annotation><filename>&l9;</filename></annotation>")


def _parameter_entity(outside: Path) -> str:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY % p SYSTEM "file://{outside}/evil.dtd"> %p;]>\n'
        "<annotation/>"
    )


def _nesting(total_bytes: int) -> bytes:
    depth = (total_bytes - 27) // 7
    return b"<annotation>" + b"<a>" * depth + b"</a>" * depth + b"</annotation>"


def _xml_case(stem: str, make: Callable[[Path], str | bytes]) -> Callable[[Path, Path], None]:
    """A hostile XML beside a good image."""

    def build(shots: Path, outside: Path) -> None:
        content = make(outside)
        noise_image(seed=len(stem)).save(shots / f"{stem}.png")
        path = shots / f"{stem}.xml"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")

    return build


def _image_case(stem: str, data: bytes, suffix: str = ".png") -> Callable[[Path, Path], None]:
    """A hostile image beside a good XML."""

    def build(shots: Path, outside: Path) -> None:
        (shots / f"{stem}{suffix}").write_bytes(data)
        (shots / f"{stem}.xml").write_text(voc_xml(f"{stem}{suffix}", ONE_CAT))

    return build


def _huge_sparse(shots: Path, outside: Path) -> None:
    with open(shots / "huge.png", "wb") as handle:  # sparse: costs no disk, only a size
        handle.write(_png(8, 8))
        handle.truncate(MAX_IMAGE_BYTES + 1)
    (shots / "huge.xml").write_text(voc_xml("huge.png", ONE_CAT))


def _folder_named_like_an_image(shots: Path, outside: Path) -> None:
    (shots / "folder.png").mkdir()
    (shots / "folder.xml").write_text(voc_xml("folder.png", ONE_CAT))


def _symlinks_outside(shots: Path, outside: Path) -> None:
    (shots / "leak.png").symlink_to(outside / "secret.png")
    (shots / "leak.xml").symlink_to(outside / "secret.xml")


def _symlinked_folder(shots: Path, outside: Path) -> None:
    (shots / "linked").symlink_to(outside, target_is_directory=True)


def _broken_symlink(shots: Path, outside: Path) -> None:
    (shots / "broken.png").symlink_to(shots / "nowhere.png")
    (shots / "broken.xml").write_text(voc_xml("broken.png", ONE_CAT))


def _fifo_image(shots: Path, outside: Path) -> None:
    os.mkfifo(shots / "pipe.png")  # reading it would block forever
    (shots / "pipe.xml").write_text(voc_xml("pipe.png", ONE_CAT))


def _fifo_xml(shots: Path, outside: Path) -> None:
    noise_image(seed=7).save(shots / "pipexml.png")
    os.mkfifo(shots / "pipexml.xml")


def _not_utf8_name(shots: Path, outside: Path) -> None:
    write_screenshot(shots, "latin1", ONE_CAT, seed=8)
    folder = os.fsencode(shots)
    os.rename(shots / "latin1.png", folder + b"/caf\xe9.png")  # an old Windows zip's name
    os.rename(shots / "latin1.xml", folder + b"/caf\xe9.xml")


# Labels of one XML, objects 0..n-1, beside a good one that must still be extracted.
HOSTILE_LABELS = [
    ("dotdot", "../../outside/evil", "may only hold a-z, 0-9"),
    ("absolute", "/tmp/outside/evil", "may only hold a-z, 0-9"),
    ("backslashes", "..\\..\\evil", "may only hold a-z, 0-9"),
    ("dot dot alone", "..", "may only hold a-z, 0-9"),
    ("cyrillic a", "toon_c\u0430t", r"non-ASCII characters \(U\+0430 CYRILLIC SMALL LETTER A\)"),
    ("fullwidth", "\uff54\uff4f\uff4f\uff4e_cat", r"non-ASCII characters \(U\+FF54 FULLWIDTH LATIN SMALL LETTER T, "),
    ("kelvin sign", "toon_mon\u212aey", r"non-ASCII characters \(U\+212A KELVIN SIGN\)"),
    ("zero width space", "toon_cat\u200b", r"non-ASCII characters \(U\+200B ZERO WIDTH SPACE\)"),
    ("300 characters", "toon_" + "a" * 295, r"label is 300 characters long \(at most 100\)"),
    ("empty", "   ", "empty label"),
]


def _hostile_labels(shots: Path, outside: Path) -> None:
    objects = [(label, (0, 0, 8, 8)) for _, label, _ in HOSTILE_LABELS] + [("toon_cat", (0, 0, 12, 12))]
    write_screenshot(shots, "labels", objects, seed=9)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path, Path], None] | None  # None: built by another case
    line: str  # "<severity>: <file>: <message regex>", the file relative to the screenshots folder

    def pattern(self, shots: Path) -> str:
        severity, file, message = self.line.split(": ", 2)
        return re.escape(f"{severity}: {shots / file}: ") + message


CASES = [
    Case("external entity", _xml_case("xxe", _xxe), "error: xxe.xml: contains a DTD or entity declaration"),
    Case(
        "external entity, UTF-16",
        _xml_case("xxe16", lambda o: _xxe(o).replace('"1.0"?', '"1.0" encoding="utf-16"?').encode("utf-16")),
        "error: xxe16.xml: contains a DTD or entity declaration",
    ),
    Case("parameter entity", _xml_case("param", _parameter_entity), "error: param.xml: contains a DTD or entity"),
    Case(
        "billion laughs",
        _xml_case("laughs", lambda o: _billion_laughs()),
        "error: laughs.xml: contains a DTD or entity",
    ),
    Case(
        "billion laughs, UTF-16",
        _xml_case(
            "laughs16", lambda o: _billion_laughs().replace('"1.0"?', '"1.0" encoding="utf-16"?').encode("utf-16")
        ),
        "error: laughs16.xml: contains a DTD or entity declaration",
    ),
    Case(
        "10 MB of nesting",
        _xml_case("nest10mb", lambda o: _nesting(10 * 1024 * 1024)),
        rf"error: nest10mb.xml: \d+ bytes is larger than the {MAX_XML_BYTES}-byte limit",
    ),
    Case(
        "4 MB of nesting",
        _xml_case("nest4mb", lambda o: _nesting(4 * 1024 * 1024)),
        r"error: nest4mb.xml: not well-formed XML \(Excessive depth in document: 256",
    ),
    Case(
        "NUL byte in a label",
        _xml_case("nul", lambda o: voc_xml("nul.png", [("toon\0cat", (0, 0, 9, 9))])),
        r"error: nul.xml: not well-formed XML \(Invalid character: Char 0x0 out of allowed range",
    ),
    Case(
        "NUL character reference",
        _xml_case("nulref", lambda o: voc_xml("nulref.png", [("toon&#0;cat", (0, 0, 9, 9))])),
        r"error: nulref.xml: not well-formed XML \(xmlParseCharRef: invalid xmlChar value 0",
    ),
    Case("not XML at all", _xml_case("binary", lambda o: bytes(range(256))), "error: binary.xml: not well-formed XML"),
    Case(
        "decompression bomb PNG",
        _image_case("bomb", _png(30_000, 30_000)),
        r"error: bomb.png: decompression bomb \(more pixels than Pillow's safety limit\); refusing",
    ),
    Case(
        "decompression bomb GIF",
        _image_case("bombgif", _gif(65_535, 65_535), ".gif"),
        "error: bombgif.gif: decompression bomb",
    ),
    Case(
        "too many pixels",
        _image_case("big", _png(8_000, 7_000)),
        rf"error: big.png: 8000x7000 pixels exceeds the limit of {MAX_IMAGE_PIXELS} \(a decompression bomb",
    ),
    Case(
        "huge sparse file", _huge_sparse, rf"error: huge.png: \d+ bytes is larger than the {MAX_IMAGE_BYTES}-byte limit"
    ),
    Case(
        "truncated image",
        _image_case("truncated", _noise_png()[:600]),
        r"error: truncated.png: truncated or corrupt image",
    ),
    Case("zero bytes", _image_case("empty", b""), r"error: empty.png: file is empty \(0 bytes\)"),
    Case("not an image", _image_case("text", b"hello, I am text"), "error: text.png: not an image Pillow can read"),
    Case(
        "TIFF that broke Pillow (found by fuzz_image)",
        _image_case(
            "fuzzed", (REPO / "fuzz" / "regressions" / "image" / "tiff_strip_offsets_as_text.tif").read_bytes(), ".tif"
        ),
        r"error: fuzzed.tif: corrupt image \(Pillow failed with TypeError: ",
    ),
    Case(
        "folder named like an image",
        _folder_named_like_an_image,
        "warning: folder.png: is a folder named like an image; skipped",
    ),
    Case("XML beside that folder", None, r"error: folder.xml: has no image named folder\.<png\|jpg\|...> beside it"),
    Case(
        "symlink image outside",
        _symlinks_outside,
        "warning: leak.png: is a symbolic link to a file outside the screenshots folder; not followed",
    ),
    Case("symlink XML outside", None, "warning: leak.xml: is a symbolic link to a file outside the screenshots folder"),
    Case("symlink folder", _symlinked_folder, "warning: linked: is a symbolic link to a folder; not followed"),
    Case("broken symlink", _broken_symlink, r"error: broken.png: cannot read \(No such file or directory\)"),
    Case(
        "pipe named like an image", _fifo_image, r"error: pipe.png: is not a regular file \(a pipe, socket or device\)"
    ),
    Case("pipe named like an XML", _fifo_xml, r"error: pipexml.xml: is not a regular file"),
    Case("name not UTF-8", _not_utf8_name, "error: caf\\xe9.png: name is not valid UTF-8 and cannot be recorded"),
    *[
        Case(f"label: {name}", None if number else _hostile_labels, f"error: labels.xml: object {number}: .*{message}")
        for number, (name, _, message) in enumerate(HOSTILE_LABELS)
    ],
]


# ---------------------------------------------------------------- odd names that are fine

ODD_NAMES = {
    "255-byte name": "n" * 251 + ".png",
    "path over 300 characters": "/".join(["d" * 100, "e" * 100, "f" * 100, "shot.png"]),
    "look-alike file name": "t\u043e\u043en.png",  # Cyrillic o's: a file name, not a label
    "fullwidth file name": "\uff53\uff48\uff4f\uff54.png",
    "dot dot stem": "..png",
    "backslashes": "..\\..\\evil.png",
    "newline": "new\nline.png",
    "leading dash": "-rf.png",
}


def _good_screenshots(shots: Path, outside: Path) -> None:
    write_screenshot(shots, "good", [("toon_cat", (0, 0, 10, 10)), ("cog_bb_flunky", (5, 5, 30, 40))], seed=1)
    for seed, relative in enumerate(ODD_NAMES.values(), start=20):
        image = shots / relative
        write_screenshot(image.parent, image.stem, [("toon_dog", (1, 1, 11, 11))], seed=seed)
    # XML whose filename and path point outside: the image beside it is used, the outside one never read
    noise_image(seed=30).save(shots / "pointer.png")
    (shots / "pointer.xml").write_text(
        voc_xml("../../outside/secret.png", ONE_CAT).replace(
            "<path>C:\\raw\\../../outside/secret.png</path>", f"<path>{outside}/secret.png</path>"
        )
    )


def build_batch(root: Path) -> tuple[Path, Path, Path]:
    """img/raw/screenshots full of hostile files and good ones, and an outside/ folder with secrets."""
    outside, img = root / "outside", root / "img"
    shots = img / "raw" / "screenshots"
    shots.mkdir(parents=True)
    write_screenshot(outside, "secret", ONE_CAT, seed=99)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "evil.dtd").write_text(f'<!ENTITY leak "{SECRET.decode()}">')
    _good_screenshots(shots, outside)
    for case in CASES:
        if case.build is not None:
            case.build(shots, outside)
    return img, shots, outside


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed, pipes not opened) with its kind and content."""
    state: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                detail: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                detail = (
                    info.st_size,
                    info.st_mtime_ns if info.st_size > 1 << 20 else hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                )
            else:
                detail = None
            state[os.path.relpath(path, root)] = (kind, detail)
    return state


def changed(before: dict, after: dict) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def run_toonvision(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.run(
        [sys.executable, "-m", "toonvision", *args], cwd=cwd, env=env, capture_output=True, timeout=120
    )
    return subprocess.CompletedProcess(
        process.args,
        process.returncode,
        process.stdout.decode("utf-8", "backslashreplace"),
        process.stderr.decode("utf-8", "backslashreplace"),
    )


@dataclass(frozen=True)
class Run:
    root: Path
    img: Path
    shots: Path
    outside: Path
    result: subprocess.CompletedProcess
    changed: set[str]

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Run:
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs POSIX pipes and symbolic links")
    root = tmp_path_factory.mktemp("hostile")
    img, shots, outside = build_batch(root)
    before = snapshot(root)
    result = run_toonvision(root, "--img-dir", str(img), "extract")
    return Run(root, img, shots, outside, result, changed(before, snapshot(root)))


# ---------------------------------------------------------------- the promises


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_hostile_input_gets_a_clear_message_naming_it(extracted, case):
    assert re.search(case.pattern(extracted.shots), extracted.result.stderr), extracted.result.stderr


def test_the_rest_of_the_batch_is_extracted(extracted):
    records = load_manifest(extracted.img / "unsorted" / "manifest.csv")
    sources = sorted({record.source for record in records})
    assert sources == sorted(["good.png", "labels.png", "pointer.png", *ODD_NAMES.values()])
    labels = sorted(record.label for record in records if record.source == "labels.png")
    assert labels == ["toon_cat"], "only the one good object of labels.xml becomes a crop"
    assert extracted.result.returncode == 1, "errors in some files make the exit code 1"
    assert f"{len(records)} crops written" in extracted.result.stdout


def test_no_traceback_is_shown(extracted):
    assert "Traceback" not in extracted.output
    # an uncaught exception's last line, or a library's warnings.warn line naming its source file
    assert not re.search(r"^\w+(Error|Exception): |Warning: ", extracted.output, re.MULTILINE), extracted.output


def test_nothing_is_written_outside_the_pool(extracted):
    assert extracted.changed, "the run wrote the pool"
    lock = os.path.join("img", ".toonvision.lock")
    assert all(path.startswith(os.path.join("img", "unsorted")) or path == lock for path in extracted.changed), sorted(
        extracted.changed
    )


def test_every_file_written_lies_in_the_pool_with_a_safe_name(extracted):
    pool = (extracted.img / "unsorted").resolve()
    for path in pool.rglob("*"):
        assert path.resolve().is_relative_to(pool) and not path.is_symlink()
        assert path.is_dir() or re.fullmatch(r"[a-z0-9_-]+_\d+\.png|manifest\.csv", path.name), path


def test_files_outside_are_never_read(extracted):
    secret_sha = hashlib.sha256((extracted.outside / "secret.png").read_bytes()).hexdigest()
    records = load_manifest(extracted.img / "unsorted" / "manifest.csv")
    assert secret_sha not in {record.source_sha256 for record in records}
    pointer = next(record for record in records if record.source == "pointer.png")
    assert pointer.source_sha256 == hashlib.sha256((extracted.shots / "pointer.png").read_bytes()).hexdigest()
    pool_bytes = b"".join(p.read_bytes() for p in (extracted.img / "unsorted").rglob("*") if p.is_file())
    assert SECRET not in pool_bytes and SECRET.decode() not in extracted.output


def test_validate_reports_the_same_files_and_writes_nothing(extracted, tmp_path):
    before = snapshot(extracted.root)
    outcome = CliRunner().invoke(
        main, ["--img-dir", str(tmp_path / "img"), "validate", "--screenshots", str(extracted.shots)]
    )
    assert outcome.exit_code == 1 and isinstance(outcome.exception, SystemExit), outcome.exception
    assert f"{extracted.shots / 'pipe.png'}: is not a regular file" in outcome.output
    assert f"{extracted.shots / 'labels.xml'}: object 4: label 'toon_c\u0430t' holds non-ASCII" in outcome.output
    assert changed(before, snapshot(extracted.root)) == set() and not (tmp_path / "img").exists()


def test_move_takes_only_clean_screenshots_and_never_touches_outside(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs POSIX pipes and symbolic links")
    img, shots, outside = build_batch(tmp_path)
    before = snapshot(tmp_path)
    result = run_toonvision(tmp_path, "--img-dir", str(img), "extract", "--move")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    touched = changed(before, snapshot(tmp_path))
    assert all(path.split(os.sep)[0] == "img" for path in touched), sorted(touched)
    processed = img / "raw" / "processed"
    assert (processed / "good.png").is_file() and (processed / "pointer.xml").is_file()
    assert (processed / ODD_NAMES["path over 300 characters"]).is_file()
    for still_there in ("labels.png", "xxe.xml", "bomb.png", "leak.png", "pipe.png", "folder.png", "huge.png"):
        assert os.path.lexists(shots / still_there), f"{still_there} has errors and stays for fixing"
    assert (shots / "leak.png").is_symlink() and os.readlink(shots / "leak.png") == str(outside / "secret.png")
