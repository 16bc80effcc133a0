"""One lock for every folder a command writes: an advisory ``flock`` that names its holder.

Who locks what (each with :func:`locked`)::

    img/.toonvision.lock      extract, split, train, compare: the pool and its splits
    models/<task>/.lock       train, compare: the task's runs and best model
    <evaluation>/.lock        evaluate: its output folder
    img/.cache/crops/.lock    the decoded-crop cache while it appends (waits instead of refusing)
    <synth output folder>/    synth: the folder itself, so no lock file is left behind

A second process is refused at once with PoolLockedError naming the holder's pid (written
into the lock file), unless it asked to wait. Crash safety: the kernel drops a lock when its
holder dies, so a kill never leaves a stale lock; the lock file stays behind (with the dead
holder's pid) and is harmless. Forked children (extract's and synth's workers) close their
copies of the held descriptors, so a killed holder's orphans cannot keep its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from toonvision.errors import PoolLockedError, write_error

BUSY = "another toonvision is working on {what}, pid {pid}; wait for it to finish and run the command again"

_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds
_FORK_HOOK = False


@contextlib.contextmanager
def locked(path: Path, what: str, *, wait: bool = False, message: str = BUSY) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file, created if missing, or a folder) for the block.

    Held elsewhere: with ``wait``, block until it is free; without, raise PoolLockedError with
    ``message`` (``{what}``: ``what``, the folder guarded; ``{pid}``: the holder's, "unknown" on a folder).
    """
    global _FORK_HOOK
    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_locks)
        _FORK_HOOK = True
    path = Path(path)
    try:
        if path.is_dir():
            fd = os.open(path, os.O_RDONLY)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(path, exc) from exc
    _HELD_LOCKS.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PoolLockedError(message.format(what=what, pid=_holder(fd))) from None
        with contextlib.suppress(OSError):  # the pid is only for the message; a full disk or a folder refuses it
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file, or "unknown"."""
    try:
        return os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
    except OSError:  # a folder has no content
        return "unknown"


def _forget_locks() -> None:
    """In a forked child: close the inherited lock descriptors (never unlock: the parent holds them)."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()
