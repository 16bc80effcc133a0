"""fsutil: atomic writes leave no temp file, and what killed writers left is cleaned, never a live writer's."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from toonvision.fsutil import atomic_write_text, build_folder, remove_stale_temp_files


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def names(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def touch(folder, *files):
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"half")


def test_atomic_write_leaves_only_the_file(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert names(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_text() == "{}\n"


def test_the_temp_files_of_one_file_whose_writer_is_gone(tmp_path, dead_pid):
    me = os.getpid()
    touch(tmp_path, f".index.json.{dead_pid}.ab_c1.tmp", f".index.json.{me}.x2.tmp",  # dead, alive (this process)
          ".index.json.k3jx.tmp",  # an older version's temp, without a pid
          f".index.json.bak.{dead_pid}.q.tmp", ".other.json.k3jx.tmp", "index.json")  # not index.json's temps
    remove_stale_temp_files(tmp_path / "index.json")
    assert names(tmp_path) == sorted([f".index.json.{me}.x2.tmp", f".index.json.bak.{dead_pid}.q.tmp",
                                      ".other.json.k3jx.tmp", "index.json"])


def test_a_name_with_glob_characters_is_taken_literally(tmp_path, dead_pid):
    touch(tmp_path, f".a[1]*?.csv.{dead_pid}.r.tmp", f".a1xy.csv.{dead_pid}.r.tmp")
    remove_stale_temp_files(tmp_path / "a[1]*?.csv")
    assert names(tmp_path) == [f".a1xy.csv.{dead_pid}.r.tmp"]


def test_every_temp_file_under_a_folder_whose_writer_is_gone(tmp_path, dead_pid):
    me = os.getpid()
    touch(tmp_path, f".runs.csv.{dead_pid}.a.tmp", f"work/.history.json.{dead_pid}.b.tmp",
          f"work/.best.keras.{me}.c.tmp", ".notes.k3jx.tmp", "runs.csv")  # a pid-less temp of no named file stays
    remove_stale_temp_files(tmp_path, "*")
    assert names(tmp_path) == sorted(["work", f"work/.history.json.{dead_pid}.b.tmp", f"work/.best.keras.{me}.c.tmp",
                                      ".notes.k3jx.tmp", "runs.csv"])
    remove_stale_temp_files(tmp_path, "*", recursive=True)
    assert names(tmp_path) == sorted(["work", f"work/.best.keras.{me}.c.tmp", ".notes.k3jx.tmp", "runs.csv"])


def test_any_writer_deletes_matching_temp_files_whatever_their_pid(tmp_path, dead_pid):
    """What synth does while its lock keeps every writer out of the folder."""
    me = os.getpid()
    touch(tmp_path, f".synth_1_000003.png.{me}.a.tmp", ".synth_1_000003.png.x1y2.tmp",
          f".synth_1_000004.xml.{dead_pid}.b.tmp", f".shot.png.{dead_pid}.c.tmp", "synth_1_000001.png")
    remove_stale_temp_files(tmp_path, "synth_*", any_writer=True)
    assert names(tmp_path) == sorted([f".shot.png.{dead_pid}.c.tmp", "synth_1_000001.png"])


def test_build_folders_whose_builder_is_gone(tmp_path, dead_pid):
    target = tmp_path / "label"
    mine = build_folder(target)
    assert mine.parent == tmp_path and mine.name.startswith(f".label.building-{os.getpid()}-")
    mine.mkdir()
    dead = tmp_path / f".label.building-{dead_pid}-0badc0de"
    touch(dead, "train/a/x.png")
    other = tmp_path / f".suit.building-{dead_pid}-0badc0de"
    other.mkdir()
    touch(tmp_path, f".label.building-{dead_pid}-0badf11e")  # a file, not a build folder
    remove_stale_temp_files(target)
    assert names(tmp_path) == sorted([mine.name, other.name, f".label.building-{dead_pid}-0badf11e"])


def test_glob_escape_is_enough_for_the_names_we_glob(tmp_path):
    """glob.escape replaced a hand-written copy: it brackets * ? [ the same way (no drive part on POSIX),
    and ] needs no escaping outside a bracket."""
    for name in ("a[1].png", "a[1].xml", "*?.png", "b].png", "a1.png"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(p.name for p in tmp_path.glob(f"{glob.escape('a[1]')}.*")) == ["a[1].png", "a[1].xml"]
    assert [p.name for p in tmp_path.glob(f"{glob.escape('*?')}.*")] == ["*?.png"]
    assert [p.name for p in tmp_path.glob(f"{glob.escape('b]')}.*")] == ["b].png"]
    assert glob.escape("x*y?z[w]") == "".join(f"[{c}]" if c in "*?[" else c for c in "x*y?z[w]")
