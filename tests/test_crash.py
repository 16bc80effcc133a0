"""Faults injected into real processes: kills, a second process, a full disk, read-only folders.

Every command runs as a real ``toonvision`` subprocess through ``DRIVER``, which kills (or
pauses) it at one exact point of its file work: before or after a rename, half-way through
writing a file, at the n-th hard link. Exact points keep the tests deterministic: no sleeps,
no hoping a timer lands inside a 2 ms window. After each kill the command is run again and the
folders must equal those of an uninterrupted run, and no byte the user had before may be gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from toonvision.errors import ModelFileError, PoolLockedError, ToonVisionError
from toonvision.extract import ExtractOptions, extract
from toonvision.fsutil import atomic_write_bytes
from toonvision.layout import Layout
from toonvision.split import check_split_dirs, file_names, load_split, run_split
from toonvision.tasks import get_task

from helpers import (
    run_unprivileged,
    skip_unless_ci,
    write_colour_pool,
    write_pool,
    write_screenshot,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, flock and tmpfs")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
LOCK = ".toonvision.lock"

DRIVER = r'''
"""toonvision's CLI, killed (or paused) at the nth file operation whose path matches a pattern."""
import os, pathlib, re, signal, sys

action, point, pattern, nth = sys.argv[1], sys.argv[2], re.compile(sys.argv[3]), int(sys.argv[4])
seen = 0

def reached(path):
    global seen
    if pattern.search(os.fsdecode(path)):
        seen += 1
        return seen == nth
    return False

def fault(half_written=None):
    if action == "pause":  # stop here; the test kills the process or lets it go on
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    if half_written is not None:  # as if the kill came while the data was reaching the disk
        os.truncate(half_written, os.stat(half_written).st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)

def around(name, after=False):
    real = getattr(os, name)
    def wrapper(src, dst, *args, **kwargs):
        hit = reached(dst)
        if hit and not after:
            fault()
        result = real(src, dst, *args, **kwargs)
        if hit and after:
            fault()
        return result
    setattr(os, name, wrapper)

if point == "before-rename":
    around("replace")
elif point == "after-rename":
    around("replace", after=True)
elif point == "link":
    around("link")
elif point == "write":  # an atomic write's temp file (or a model file) is complete, not yet renamed
    real_fsync = os.fsync
    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        if reached(path):
            fault(path if action == "kill" else None)
        return real_fsync(fd)
    os.fsync = fsync
elif point == "write-bytes":  # Path.write_bytes: extract's staged crops
    real_write_bytes = pathlib.Path.write_bytes
    def write_bytes(self, data):
        if reached(self):
            if action == "kill":
                real_write_bytes(self, data[: len(data) // 2])
            fault()
        return real_write_bytes(self, data)
    pathlib.Path.write_bytes = write_bytes

if "COMMIT_EVERY" in os.environ:  # several manifest commits in a small batch
    import toonvision.constants
    toonvision.constants.MANIFEST_COMMIT_EVERY = int(os.environ["COMMIT_EVERY"])
from toonvision.cli import main
main(sys.argv[5:], prog_name="toonvision")
'''


# -- helpers ---------------------------------------------------------------------------------


def start(args: list[str], fault: tuple[str, str, str, int] | None = None, **env: str) -> subprocess.Popen:
    """``toonvision ARGS`` in a subprocess; ``fault`` is (kill|pause, point, path regex, nth)."""
    action, point, pattern, nth = fault or ("none", "none", "^$", 0)
    command = [sys.executable, "-c", DRIVER, action, point, pattern, str(nth), *map(str, args)]
    return subprocess.Popen(command, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Wait for the process; its exit status and everything it printed."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def killed(process: subprocess.Popen, timeout: float = 300) -> None:
    code, output = finish(process, timeout)
    assert code == -signal.SIGKILL, f"expected a kill at the fault point, got exit {code}:\n{output}"


def wait_stopped(process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process has paused itself at its fault point (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while _state(process.pid) != "T":
        if process.poll() is not None:
            raise AssertionError(f"exited ({process.returncode}) before the pause:\n{finish(process)[1]}")
        assert time.monotonic() < deadline, "never reached the pause point"
        time.sleep(0.005)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash; lock files (they hold a pid) and the
    decoded-crop cache (safe to delete at any time) left out."""
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (LOCK, ".lock") and ".cache" not in p.relative_to(root).parts}


def assert_nothing_lost(before: dict[str, str], after: dict[str, str], root: Path, grows: str = "") -> None:
    """Every file the user had is still somewhere under ``root`` (moved at most), byte for byte.

    ``grows`` names a file that may only be appended to (the manifest: rows are never removed).
    """
    lost = Counter(h for p, h in before.items() if p != grows) - Counter(after.values())
    assert not lost, f"{sum(lost.values())} files lost: {[p for p, h in before.items() if h in lost]}"


def temp_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tmp"))


def many_shots(folder: Path, count: int, start_at: int = 0) -> None:
    for i in range(start_at, start_at + count):
        write_screenshot(folder, f"shot{i:03d}", [
            ("toon_cat", (0, 0, 20, 20)), (f"cog_bb_{'flunky' if i % 2 else 'yesman'}", (10, 5, 40, 45)),
            ("toon_dog", (30, 10, 60, 40))], seed=i)


# -- extract: killed at every stage of its commit protocol -------------------------------------


@pytest.fixture(scope="module")
def extract_case(tmp_path_factory):
    """img/ with a pool from earlier screenshots (moved to processed/) and 10 new ones; and the
    img/ an uninterrupted ``extract --move`` makes of it."""
    base = tmp_path_factory.mktemp("extract")
    before = Layout.from_dirs(base / "before" / "img")
    many_shots(before.screenshots, 4)
    extract(before, ExtractOptions(move=True, workers=1))
    many_shots(before.screenshots, 10, start_at=4)
    clean = Layout.from_dirs(base / "clean" / "img")
    shutil.copytree(before.img_dir, clean.img_dir)
    extract(clean, ExtractOptions(move=True, workers=1))
    return before, tree(clean.img_dir)


EXTRACT_KILLS = {
    "early: lock taken, nothing written": ("pause", "write-bytes", r"/\.staging/", 1),
    "a crop half-written to staging": ("kill", "write-bytes", r"/\.staging/", 6),
    "the manifest half-written": ("kill", "write", r"/\.manifest\.csv\.", 2),
    "manifest committed, crops not yet renamed": ("kill", "after-rename", r"/manifest\.csv$", 2),
    "between two crop renames": ("kill", "before-rename", r"/unsorted/(toon|cog)/", 7),
    "a screenshot's XML moved, its image not": ("kill", "after-rename", r"/raw/processed/", 3),
}


@pytest.mark.parametrize("point", EXTRACT_KILLS)
def test_killed_extract_loses_nothing_and_reruns_to_the_clean_state(extract_case, tmp_path, point):
    before, clean = extract_case
    layout = Layout.from_dirs(tmp_path / "img")
    shutil.copytree(before.img_dir, layout.img_dir)
    had = tree(layout.img_dir)
    fault = EXTRACT_KILLS[point]
    process = start(["--img-dir", layout.img_dir, "extract", "--move", "--workers", "1"], fault, COMMIT_EVERY="4")
    if fault[0] == "pause":
        wait_stopped(process)
        process.kill()
    killed(process)

    after = tree(layout.img_dir)
    assert_nothing_lost(had, after, layout.img_dir, grows="unsorted/manifest.csv")
    manifest = (layout.manifest).read_text()
    assert manifest.startswith((before.manifest).read_text())  # rows are only ever appended
    extract(layout, ExtractOptions(move=True, workers=1))
    assert tree(layout.img_dir) == clean
    assert not layout.staging.exists() and not temp_files(layout.img_dir)


@pytest.fixture(scope="module")
def relabel_case(tmp_path_factory):
    """img/ with a pool of 12 screenshots whose XML then had labels corrected (6 objects) and one
    object deleted; and the img/ an uninterrupted ``extract`` makes of it (old crops retired)."""
    from helpers import voc_xml

    base = tmp_path_factory.mktemp("relabel")
    before = Layout.from_dirs(base / "before" / "img")
    many_shots(before.screenshots, 12)
    extract(before, ExtractOptions(workers=1))
    for i in range(6):
        cog = "cog_lb_bigwig" if i < 3 else f"cog_bb_{'flunky' if i % 2 else 'yesman'}"
        objects = [("toon_cat", (0, 0, 20, 20)), (cog, (10, 5, 40, 45))]
        objects += [("toon_pig", (30, 10, 60, 40))] if i else []  # shot000 loses its toon_dog
        (before.screenshots / f"shot{i:03d}.xml").write_text(voc_xml(f"shot{i:03d}.png", objects))
    clean = Layout.from_dirs(base / "clean" / "img")
    shutil.copytree(before.img_dir, clean.img_dir)
    result = extract(clean, ExtractOptions(workers=1))
    assert (result.retired, result.crops_written) == (9, 8)
    return before, tree(clean.img_dir)


RELABEL_KILLS = {
    "the manifest with retired rows half-written": ("kill", "write", r"/\.manifest\.csv\.", 1),
    "retired rows committed, new crops not yet renamed": ("kill", "after-rename", r"/manifest\.csv$", 1),
    "between two renames of new crops": ("kill", "before-rename", r"/unsorted/(toon|cog)/", 3),
}


@pytest.mark.parametrize("point", RELABEL_KILLS)
def test_killed_extract_of_corrected_labels_reruns_to_the_clean_state(relabel_case, tmp_path, point):
    before, clean = relabel_case
    layout = Layout.from_dirs(tmp_path / "img")
    shutil.copytree(before.img_dir, layout.img_dir)
    had = tree(layout.img_dir)
    killed(start(["--img-dir", layout.img_dir, "extract", "--workers", "1"], RELABEL_KILLS[point], COMMIT_EVERY="4"))
    assert_nothing_lost(had, tree(layout.img_dir), layout.img_dir, grows="unsorted/manifest.csv")
    extract(layout, ExtractOptions(workers=1))
    assert tree(layout.img_dir) == clean
    assert not layout.staging.exists() and not temp_files(layout.img_dir)


# -- split: old split or new, never a mix ------------------------------------------------------

SPLIT_POOL = {"cog_bb_a": 12, "cog_lb_b": 12, "toon_cat": 12, "toon_dog": 12}


@pytest.fixture(scope="module")
def split_case(tmp_path_factory):
    """A pool with a `label` split (seed 1) and a `binary` split; and the img/ after `split --seed 2`."""
    base = tmp_path_factory.mktemp("split")
    layout, _ = write_pool(base / "before" / "img", SPLIT_POOL)
    run_split(layout, get_task("label"), (0.6, 0.2, 0.2), seed=1)
    run_split(layout, get_task("binary"), (0.6, 0.2, 0.2), seed=1)
    clean = Layout.from_dirs(base / "clean" / "img")
    shutil.copytree(layout.img_dir, clean.img_dir)
    run_split(clean, get_task("label"), (0.6, 0.2, 0.2), seed=2)
    return layout, tree(clean.img_dir)


SPLIT_KILLS = {
    "first link of the new split": ("kill", "link", r"/\.label\.building-", 1),
    "half the links made": ("kill", "link", r"/\.label\.building-", 24),
    "split.csv half-written": ("kill", "write", r"/\.split\.csv\.", 1),
    "old split renamed aside, new one not in place": ("kill", "after-rename", r"/data/label\.old$", 1),
    "new split in place, old one not yet deleted": ("kill", "after-rename", r"/data/label$", 1),
}


@pytest.mark.parametrize("point", SPLIT_KILLS)
def test_killed_resplit_leaves_the_old_split_or_the_new_one(split_case, tmp_path, point):
    before, clean = split_case
    layout = Layout.from_dirs(tmp_path / "img")
    shutil.copytree(before.img_dir, layout.img_dir)
    had = tree(layout.img_dir)
    killed(start(["--img-dir", layout.img_dir, "split", "--task", "label", "--seed", "2"], SPLIT_KILLS[point]))

    task_dir = layout.task_data("label")
    plan = load_split(task_dir)  # as the next command reads it: an interrupted swap is finished first
    assert plan.seed in (1, 2)
    on_disk = {p.relative_to(task_dir).as_posix(): sha(p) for p in task_dir.rglob("*.png")}
    assert set(on_disk) == set(file_names(plan))  # every file of that split, and nothing else
    pairs = zip(file_names(plan), plan.assignments, strict=True)
    assert all(on_disk[rel] == sha(layout.pool / a.crop) for rel, a in pairs)
    check_split_dirs(task_dir, plan.classes)
    now = tree(layout.img_dir)
    assert {p: h for p, h in now.items() if not p.startswith("data/")} == {
        p: h for p, h in had.items() if not p.startswith("data/")
    }  # the pool is never touched
    assert {p: h for p, h in now.items() if p.startswith("data/binary/")} == {
        p: h for p, h in had.items() if p.startswith("data/binary/")
    }  # nor another task's split

    run_split(layout, get_task("label"), (0.6, 0.2, 0.2), seed=2)
    assert tree(layout.img_dir) == clean
    assert sorted(p.name for p in layout.data.iterdir()) == ["binary", "label"]  # no .old, no half-built


# -- train and evaluate: the model, the ledger and the evaluation survive a kill -----------------

TRAIN_ARGS = [
    "--task",
    "binary",
    "--runs",
    "1",
    "--epochs",
    "1",
    "--seed",
    "5",
    "--image-size",
    "48x44",
    "--batch-size",
    "4",
]
TRAIN_KILLS = {
    "runs.csv half-written (the run's commit)": ("kill", "write", r"/\.runs\.csv\.", 1),
    "best.keras promoted, best.json not yet": ("kill", "after-rename", r"/binary/best\.keras$", 1),
}
EVALUATE_KILLS = {
    "evaluation.json written, predictions.csv half-written": ("kill", "write", r"/\.predictions\.csv\.", 1),
}


@pytest.fixture(scope="module")
def tf_case(tmp_path_factory):
    """One pool trained twice (an earlier training with seed 9, then ``--overwrite --seed 5``) and
    evaluated; plus the TF commands killed at the points above. They run while this process
    trains (each costs a TensorFlow start-up)."""
    from toonvision.evaluate import evaluate
    from toonvision.train import TrainConfig, train

    base = tmp_path_factory.mktemp("tf")
    tiny = dict(runs=1, image_size=(48, 44), batch_size=4, epochs=1)
    before, _ = write_colour_pool(base / "before" / "img", {"cog_bb_a": 10, "toon_cat": 10})
    train(before, TrainConfig(task="binary", seed=9, **tiny))
    runs = {}

    def launch(kills, template: Layout, args: list[str]) -> None:
        for n, (point, fault) in enumerate(kills.items()):
            root = base / f"{args[0]}{n}"
            shutil.copytree(template.img_dir.parent, root)
            layout = Layout.from_dirs(root / "img", root / "models")
            runs[point] = (
                layout,
                start(["--img-dir", layout.img_dir, "--models-dir", layout.models_dir, "-q", *args], fault),
            )

    launch(TRAIN_KILLS, before, ["train", *TRAIN_ARGS, "--overwrite"])
    clean = Layout.from_dirs(base / "clean" / "img", base / "clean" / "models")
    shutil.copytree(before.img_dir.parent, clean.img_dir.parent)
    train(clean, TrainConfig(task="binary", seed=5, overwrite=True, **tiny))
    evaluated = Layout.from_dirs(base / "evaluated" / "img", base / "evaluated" / "models")
    shutil.copytree(clean.img_dir.parent, evaluated.img_dir.parent)
    evaluate(evaluated, task="binary")
    launch(EVALUATE_KILLS, evaluated, ["evaluate", "--task", "binary"])
    for _, process in runs.values():
        killed(process)
    return before, clean, evaluated, {point: layout for point, (layout, _) in runs.items()}


def _ledger(layout: Layout) -> list[dict]:
    import csv

    rows = list(csv.DictReader((layout.task_models("binary") / "runs.csv").open()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _best_json(layout: Layout) -> dict:
    info = json.loads((layout.task_models("binary") / "best.json").read_text())
    info.pop("created")
    info.pop("model_sha256")  # a .keras archive holds save times; the weights are compared instead
    return info


def _weights(path: Path) -> list:
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()


@pytest.mark.parametrize("point", TRAIN_KILLS)
def test_killed_training_resumes_to_the_clean_state(tf_case, point):
    from toonvision.train import TrainConfig, train

    before, clean, _, layouts = tf_case
    layout = layouts[point]
    out, old = layout.task_models("binary"), before.task_models("binary")
    if point.startswith("runs.csv"):  # not committed: the previous model is kept whole until replaced
        assert sha(out / "best.keras") == sha(old / "best.keras")
        assert sha(out / "best.json") == sha(old / "best.json")
    else:  # the run is committed; best.json is the earlier one until --resume finishes the promotion
        from toonvision.modelfile import open_model

        assert len(_ledger(layout)) == 1
        assert sha(out / "best.json") == sha(old / "best.json")
        with pytest.raises(ModelFileError, match="not the model best.json describes.*--resume"):
            open_model(out)  # the new model with the old model's classes and split: refused
    assert tree(layout.img_dir) == tree(before.img_dir)  # the pool and earlier splits untouched

    train(layout, TrainConfig(task="binary", seed=5, resume=True, runs=1, image_size=(48, 44), batch_size=4, epochs=1))
    assert _ledger(layout) == _ledger(clean)
    assert _best_json(layout) == _best_json(clean)
    resumed, uninterrupted = _weights(out / "best.keras"), _weights(clean.task_models("binary") / "best.keras")
    assert len(resumed) == len(uninterrupted) > 0
    assert all((a == b).all() for a, b in zip(resumed, uninterrupted, strict=True))
    assert tree(layout.img_dir) == tree(clean.img_dir)  # the chosen run's split, as without the kill
    assert not (out / ".work").exists()
    assert temp_files(layout.models_dir) == []


def _evaluation(layout: Layout) -> tuple[dict, str]:
    folder = layout.task_models("binary") / "evaluation"
    info = json.loads((folder / "evaluation.json").read_text())
    info.pop("created")
    root = str(layout.img_dir.parent)
    return (
        json.loads(json.dumps(info).replace(root, "ROOT")),
        (folder / "predictions.csv").read_text().replace(root, "ROOT"),
    )


@pytest.mark.parametrize("point", EVALUATE_KILLS)
def test_killed_evaluation_reruns_to_identical_outputs(tf_case, point):
    from toonvision.evaluate import evaluate

    _, _, evaluated, layouts = tf_case
    layout = layouts[point]
    folder, old = layout.task_models("binary") / "evaluation", evaluated.task_models("binary") / "evaluation"
    assert sha(folder / "predictions.csv") == sha(old / "predictions.csv")  # the previous one, whole
    assert tree(layout.img_dir) == tree(evaluated.img_dir)

    evaluate(layout, task="binary")
    assert _evaluation(layout) == _evaluation(evaluated)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in old.iterdir() if not p.name.startswith(".")
    )


def test_rerun_evaluation_leaves_no_temp_files(tf_case):
    _, _, _, layouts = tf_case
    assert all(not temp_files(layouts[point].task_models("binary")) for point in EVALUATE_KILLS)


def test_a_second_evaluation_into_the_same_folder_is_told_who_holds_it(tf_case):
    from toonvision.evaluate import evaluate
    from toonvision.locks import locked

    _, _, evaluated, _ = tf_case
    folder = evaluated.task_models("binary") / "evaluation"
    before = tree(folder)
    with locked(folder / ".lock", str(folder)):
        with pytest.raises(PoolLockedError, match=f"another toonvision is working on {folder}, pid {os.getpid()}"):
            evaluate(evaluated, task="binary")
    assert tree(folder) == before


def test_a_second_training_of_the_task_is_told_who_holds_it(tf_case, tmp_path):
    from toonvision.locks import locked
    from toonvision.train import TrainConfig, train

    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 10, "toon_cat": 10})
    out = layout.task_models("binary")
    with locked(out / ".lock", str(out)):
        with pytest.raises(PoolLockedError, match=f"another toonvision is working on {out}, pid {os.getpid()}"):
            train(layout, TrainConfig(task="binary", seed=5, runs=1, image_size=(48, 44), batch_size=4, epochs=1))
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# -- two processes at once --------------------------------------------------------------------


@pytest.fixture
def busy_img(tmp_path):
    """img/ with a pool and 10 screenshots not yet extracted, and the img/ one extract makes of it."""
    layout = Layout.from_dirs(tmp_path / "img")
    many_shots(layout.screenshots, 6)
    extract(layout, ExtractOptions(workers=1))
    many_shots(layout.screenshots, 10, start_at=6)
    clean = Layout.from_dirs(tmp_path / "clean" / "img")
    shutil.copytree(layout.img_dir, clean.img_dir)
    extract(clean, ExtractOptions(workers=1))
    return layout, tree(clean.img_dir)


HOLDERS = {
    "extract": (["extract", "--workers", "1"], ("pause", "write-bytes", r"/\.staging/", 1)),
    "split": (["split", "--task", "label", "--seed", "1"], ("pause", "link", r"/\.label\.building-", 1)),
}
SECOND = {"extract": ["extract", "--workers", "1"], "split": ["split", "--task", "label", "--seed", "1"]}


@pytest.mark.parametrize("first, second", [("extract", "extract"), ("split", "extract"), ("extract", "split")])
def test_a_second_process_is_refused_with_the_holders_pid_and_runs_after_it(busy_img, first, second):
    layout, _ = busy_img
    args, pause = HOLDERS[first]
    holder = start(["--img-dir", layout.img_dir, *args], pause)
    try:
        wait_stopped(holder)  # inside its work, holding the lock
        while_held = tree(layout.img_dir)
        code, output = finish(start(["--img-dir", layout.img_dir, *SECOND[second]]))
        assert code == 1, output
        assert output.strip() == (
            f"error: another toonvision is working on {layout.img_dir}, pid {holder.pid}; "
            "wait for it to finish and run the command again"
        )
        assert tree(layout.img_dir) == while_held  # the refused process wrote nothing
    finally:
        holder.send_signal(signal.SIGCONT)
    code, output = finish(holder)
    assert code == 0, output
    code, output = finish(start(["--img-dir", layout.img_dir, *SECOND[second]]))
    assert code == 0, output
    extract(layout, ExtractOptions(workers=1))  # whatever ran, the pool ends whole
    assert {p: h for p, h in tree(layout.img_dir).items() if not p.startswith("data/")} == busy_img[1]


def test_a_killed_lock_holder_never_blocks_the_next_run(busy_img):
    """SIGKILL a parallel extract (2 forked workers) while it holds the lock: the kernel frees the
    lock at once, the workers exit with it, and the next extract finishes the pool."""
    layout, clean = busy_img
    holder = start(
        ["--img-dir", layout.img_dir, "extract", "--workers", "2"], ("pause", "write-bytes", r"/\.staging/", 2)
    )
    workers: list[int] = []
    try:
        wait_stopped(holder)
        workers = _children(holder.pid)
        assert workers, "extract should have started its worker processes"
        holder.kill()
        killed(holder)
        assert (layout.img_dir / LOCK).read_text() == str(holder.pid)  # the dead holder's pid stays behind
        deadline = time.monotonic() + 10
        while any(_state(pid) not in ("?", "Z") for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(_state(pid) in ("?", "Z") for pid in workers), "orphaned workers outlived extract"
        code, output = finish(start(["--img-dir", layout.img_dir, "extract", "--workers", "2"]))
        assert code == 0, output
        assert tree(layout.img_dir) == clean
    finally:
        for pid in workers:  # only if the test failed: never leave our own processes behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- a full disk and read-only folders ----------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root or CAP_SYS_ADMIN); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mount.returncode != 0:
        skip_unless_ci(f"cannot mount a tmpfs here ({mount.stderr.decode().strip() or 'not root'})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; returns the file to delete to free them again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (1 << 16, 4096):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * chunk)
    return filler


def read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


@pytest.fixture
def permissions_apply(tmp_path):
    """Skip where a folder's mode does not stop this user's writes (root that cannot drop capabilities)."""
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    code, _ = run_unprivileged(["-c", f"open({str(probe / 'x')!r}, 'w')"])
    probe.chmod(0o755)
    if code == 0:
        skip_unless_ci("folder permissions do not stop writes for this user")


def _disk_case(root: Path) -> Layout:
    """img/ under ``root``: a pool of 6 screenshots with a `label` split (seed 1), and 4 more to extract."""
    layout = Layout.from_dirs(root / "img")
    many_shots(layout.screenshots, 6)
    extract(layout, ExtractOptions(workers=1))
    run_split(layout, get_task("label"), (0.5, 0.25, 0.25), seed=1)
    many_shots(layout.screenshots, 4, start_at=6)
    return layout


COMMANDS = {
    "extract": ["extract", "--workers", "1"],
    "split": ["split", "--task", "label", "--ratio", "0.5", "0.25", "0.25", "--seed", "2"],
}


def _rerun(layout: Layout, command: str) -> None:
    if command == "extract":
        extract(layout, ExtractOptions(workers=1))
    else:
        run_split(layout, get_task("label"), (0.5, 0.25, 0.25), seed=2)


@pytest.mark.parametrize("command, names", [("extract", "/img/unsorted"), ("split", "/img/data/label")])
def test_a_full_disk_stops_with_a_message_and_changes_nothing(small_disk, tmp_path, command, names):
    layout = _disk_case(small_disk)
    clean = Layout.from_dirs(tmp_path / "clean" / "img")
    shutil.copytree(layout.img_dir, clean.img_dir)
    _rerun(clean, command)
    filler = fill(small_disk)
    had = tree(layout.img_dir)
    code, output = finish(start(["--img-dir", layout.img_dir, *COMMANDS[command]]))
    assert code == 1 and "Traceback" not in output, output
    assert names in output and "cannot write (the disk is full; free some space and run the command again)" in output
    assert tree(layout.img_dir) == had  # nothing half-written, nothing staged, the old split whole
    assert not temp_files(layout.img_dir) and not layout.staging.exists()
    assert sorted(p.name for p in layout.data.iterdir()) == ["label"]
    filler.unlink()
    _rerun(layout, command)
    assert tree(layout.img_dir) == tree(clean.img_dir)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_disk_stops_with_a_message_and_changes_nothing(small_disk, command):
    layout = _disk_case(small_disk)
    had = tree(layout.img_dir)
    read_only(small_disk)
    code, output = finish(start(["--img-dir", layout.img_dir, *COMMANDS[command]]))
    assert code == 1 and "Traceback" not in output, output
    assert f"{layout.img_dir / LOCK}: cannot write (the folder is not writable" in output
    assert tree(layout.img_dir) == had


@pytest.mark.parametrize("command, folder", [("extract", "unsorted"), ("split", "data")])
def test_a_read_only_folder_stops_with_a_message_and_changes_nothing(tmp_path, permissions_apply, command, folder):
    layout = _disk_case(tmp_path)
    had = tree(layout.img_dir)
    (layout.img_dir / folder).chmod(0o555)
    try:
        code, output = run_unprivileged(["-m", "toonvision", "--img-dir", layout.img_dir, *COMMANDS[command]])
    finally:
        (layout.img_dir / folder).chmod(0o755)
    assert code == 1 and "Traceback" not in output, output
    assert f"{layout.img_dir / folder}" in output and "the folder is not writable; fix its permissions" in output
    assert tree(layout.img_dir) == had
    _rerun(layout, command)  # and once writable again, the command works


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_atomic_write_keeps_the_old_file_when_the_disk_refuses(small_disk, fault):
    target = small_disk / "models" / "best.json"
    atomic_write_bytes(target, b"the old file")
    if fault == "full":
        fill(small_disk)
        hint = "the disk is full"
    else:
        read_only(small_disk)
        hint = "the folder is not writable"
    with pytest.raises(ToonVisionError, match=f"{target}: cannot write \\({hint}.*nothing was changed"):
        atomic_write_bytes(target, os.urandom(3 << 20))
    assert target.read_bytes() == b"the old file"
    assert sorted(p.name for p in target.parent.iterdir()) == ["best.json"]
