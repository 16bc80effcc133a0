"""Crash-safe file operations: atomic writes, directory swaps, and the cleaning of what killed writers left.

Every write of user-visible data goes through here so that a kill at any moment
leaves either the old file or the new one, never a half-written mix. A killed writer
leaves a hidden temp file or build folder whose name holds its pid; the next run deletes
it with :func:`remove_stale_temp_files`. The locks live in :mod:`toonvision.locks`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from toonvision.errors import write_error

logger = logging.getLogger(__name__)

_FILE_MODE: int | None = None  # read from the umask on first use, not at import

_OLD_SUFFIX = ".old"
_BUILD_MARK = ".building-"

# what killed writers leave: .<name>.<pid>.<random>.tmp (atomic_write_bytes) and
# .<name>.building-<pid>-<random> (build_folder); older versions wrote temps without the pid
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")
_BUILD = re.compile(rf"\.(?P<name>.+){re.escape(_BUILD_MARK)}(?P<pid>\d+)-.*")
_OLD_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]+\.tmp")



def _default_file_mode() -> int:
    """0666 less the umask, as open() would give; mkstemp alone makes files private (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    global _FILE_MODE
    if _FILE_MODE is None:
        _FILE_MODE = _default_file_mode()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise


def _temp_prefix(path: Path) -> str:
    """Temp files of ``path`` are ``.<name>.<writer pid>.<random>.tmp``, beside it."""
    return f".{path.name[:80]}."


def remove_stale_temp_files(
    path: Path, names: str | None = None, *, recursive: bool = False, any_writer: bool = False
) -> None:
    """Delete the temp files and build folders that killed writers of ``path`` left beside it.

    With ``names`` (a glob over the written files' names, "*" for all), ``path`` is a folder and
    the leftovers of every matching file in it are meant; ``recursive`` looks in sub-folders too.
    Only leftovers whose writer process is gone are deleted, so this is safe without a lock; a temp
    file without a pid (older versions) goes only when its file is named. ``any_writer`` deletes
    them whatever their pid, for a caller whose lock keeps every writer out (synth).
    """
    path = Path(path)
    folder, pattern, named = (path.parent, path.name[:80], True) if names is None else (path, names, False)
    if not folder.is_dir():
        return
    where = f".{glob.escape(pattern) if named else pattern}.*"  # both kinds begin ".<name>."
    for stale in list(folder.rglob(where) if recursive else folder.glob(where)):
        leftover = _leftover(stale)
        if leftover is None or not (leftover[0] == pattern if named else fnmatch.fnmatchcase(leftover[0], pattern)):
            continue
        pid = leftover[1]
        if any_writer or (pid is None and named) or (pid is not None and not pid_alive(pid)):
            with contextlib.suppress(OSError):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
                logger.debug("%s: removed what an interrupted write left", stale)


def _leftover(path: Path) -> tuple[str, int | None] | None:
    """(the name being written, the writer's pid or None) when ``path`` is a temp file or build folder."""
    kind = _BUILD if path.is_dir() and not path.is_symlink() else _TEMP
    match = kind.fullmatch(path.name)
    if match is not None:
        return match["name"], int(match["pid"])
    match = None if kind is _BUILD else _OLD_TEMP.fullmatch(path.name)
    return (match["name"], None) if match is not None else None


def build_folder(target: Path) -> Path:
    """A fresh hidden name beside ``target`` for a folder to build and then swap in (see swap_directory)."""
    target = Path(target)
    return target.with_name(f".{target.name}{_BUILD_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this one counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def swap_directory(new: Path, target: Path) -> None:
    """Replace ``target`` with the fully built ``new`` folder beside it.

    ``target`` is renamed aside, ``new`` renamed into place, then the old one removed.
    A kill between the renames is repaired by :func:`recover_swap`.
    """
    new, target = Path(new), Path(target)
    old = target.with_name(target.name + _OLD_SUFFIX)
    recover_swap(target)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(target: Path) -> None:
    """Finish or roll back a :func:`swap_directory` that was interrupted."""
    target = Path(target)
    old = target.with_name(target.name + _OLD_SUFFIX)
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, target)
        logger.warning("%s: restored the previous folder after an interrupted swap", target)


def die_with_parent(parent: int) -> None:
    """Pool initializer: exit when the parent dies, instead of holding its locks and waiting
    forever for work (Linux; elsewhere only a parent already gone is noticed)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # killed before the call above took effect
        os._exit(1)
