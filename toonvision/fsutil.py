"""Crash-safe file operations: atomic writes and directory swaps (the locks live in toonvision.locks).

Every write of user-visible data goes through here so that a kill at any moment
leaves either the old file or the new one, never a half-written mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from toonvision.errors import write_error
from toonvision.locks import locked  # noqa: F401  (re-exported until evaluate.py imports it from locks)

logger = logging.getLogger(__name__)

_FILE_MODE: int | None = None  # read from the umask on first use, not at import

_OLD_SUFFIX = ".old"


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


def remove_stale_temp_files_in(folder: Path) -> None:
    """Delete every temp file (``.<name>.<pid>.<random>.tmp``) under ``folder`` whose writer is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for stale in folder.rglob(".*.tmp"):
        parts = stale.name.split(".")
        pid = parts[-3] if len(parts) >= 4 else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def remove_stale_temp_files(path: Path) -> None:
    """Delete temp files that a killed :func:`atomic_write_bytes` of ``path`` left behind.

    Only files whose writer process is gone are deleted, so this is safe without a lock.
    """
    path = Path(path)
    prefix = _temp_prefix(path)
    for stale in path.parent.glob(f"{glob_escape(prefix)}*.tmp"):
        pid = stale.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            stale.unlink()
            logger.debug("%s: removed a temp file left by an interrupted write", stale)


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


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


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
