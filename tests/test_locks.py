"""locks: a second process is refused naming the holder (or waits), a killed holder never blocks, forks let go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from toonvision.errors import PoolLockedError
from toonvision.locks import _HELD_LOCKS, locked

from helpers import run_unprivileged

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and fork")

HOLD = """
import sys, time
from toonvision.locks import locked
with locked(sys.argv[1], "the folder"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_elsewhere(lock_file):
    """Another process holding ``lock_file``; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_is_refused_with_what_and_the_holders_pid(tmp_path):
    lock_file = tmp_path / "img" / ".toonvision.lock"
    with locked(lock_file, str(tmp_path / "img")):
        assert lock_file.read_text() == str(os.getpid())
        message = (f"another toonvision is working on {tmp_path / 'img'}, pid {os.getpid()}; "
                   "wait for it to finish and run the command again")
        with pytest.raises(PoolLockedError) as refused:
            with locked(lock_file, str(tmp_path / "img")):
                pytest.fail("two holders at once")
        assert str(refused.value) == message
    with locked(lock_file, "img"):
        pass  # released locks are reusable


def test_another_process_is_refused_while_held_and_may_take_it_after(tmp_path):
    lock_file = tmp_path / ".lock"
    holder = hold_elsewhere(lock_file)
    try:
        with pytest.raises(PoolLockedError, match=f"the folder, pid {holder.pid};"):
            with locked(lock_file, "the folder"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert lock_file.read_text() == str(holder.pid)  # the dead holder's pid stays behind, harmless
    with locked(lock_file, "the folder"):  # the kernel freed it when the holder died
        assert lock_file.read_text() == str(os.getpid())


def test_wait_blocks_until_the_holder_lets_go(tmp_path):
    lock_file = tmp_path / ".lock"
    holder = hold_elsewhere(lock_file)
    entered = threading.Event()

    def wait_for_it() -> None:
        with locked(lock_file, "the cache", wait=True):
            entered.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    try:
        assert not entered.wait(0.5), "wait=True must block while another process holds the lock"
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait()
    waiter.join(10)
    assert entered.is_set()


def test_a_folder_is_locked_itself_with_a_message_of_its_own(tmp_path):
    """What synth does: lock its output folder (no lock file left behind), its own message."""
    folder = tmp_path / "shots"
    folder.mkdir()
    message = "another toonvision synth is writing to {what}; wait for it to finish and run the command again"
    with locked(folder, str(folder), message=message):
        with pytest.raises(PoolLockedError) as refused:
            with locked(folder, str(folder), message=message):
                pass
        assert str(refused.value) == (f"another toonvision synth is writing to {folder}; wait for it to finish "
                                      "and run the command again")
        with pytest.raises(PoolLockedError, match=f"working on {folder}, pid unknown;"):
            with locked(folder, str(folder)):
                pass
    assert list(folder.iterdir()) == []


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    lock_file = tmp_path / ".lock"
    read, write = os.pipe()
    with locked(lock_file, "the folder"):
        held = set(_HELD_LOCKS)
        child = os.fork()
        if child == 0:  # the child: its copies are closed, then it outlives the parent's block
            os.write(write, b"1" if not _HELD_LOCKS and all(_closed(fd) for fd in held) else b"0")
            time.sleep(3)
            os._exit(0)
        assert os.read(read, 1) == b"1"
    try:
        with locked(lock_file, "the folder"):  # free although the child still lives
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read)
        os.close(write)


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_an_unwritable_folder_names_the_lock_file(tmp_path):
    """Run where folder modes bind (as root: with the capabilities that ignore them dropped)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    probe = (
        "import sys\nfrom toonvision.errors import ToonVisionError\nfrom toonvision.locks import locked\n"
        f"try:\n    with locked({str(folder / '.lock')!r}, 'ro'):\n        pass\n"
        "except ToonVisionError as exc:\n    print(exc)\n    sys.exit(3)\n"
    )
    try:
        code, output = run_unprivileged(["-c", probe])
    finally:
        folder.chmod(0o700)
    assert code == 3, output
    assert f"{folder / '.lock'}: cannot write (the folder is not writable" in output
