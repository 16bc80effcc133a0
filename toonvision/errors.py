"""The project's exceptions. Each message names the file or value at fault and the fix.

    ToonVisionError
    ├── UsageError          bad option values or combinations (exit 2)
    ├── AnnotationError     a VOC XML file that cannot be read or trusted
    ├── ImageError          an image that cannot be opened, decoded or trusted
    ├── PoolError           the crop pool or its manifest is missing or inconsistent
    │   └── PoolLockedError another toonvision process holds the lock
    ├── SplitError          a split that cannot be made or read
    ├── TrainingError       a training run that cannot start or finish
    └── ModelFileError      a model file that cannot be loaded safely
        └── ExportError     an export that could not be made, or whose outputs differ from Keras'

``write_error`` turns a failed write (an OSError) into a ToonVisionError that names the path,
the fix and what was kept.
"""

from __future__ import annotations

import errno
from pathlib import Path


class ToonVisionError(Exception):
    """Base of every error the tool reports to the user as a message, not a traceback."""

    exit_code = 1


class UsageError(ToonVisionError):
    """Raised when options or arguments are invalid; the CLI exits with 2."""

    exit_code = 2


class AnnotationError(ToonVisionError):
    """Raised when a VOC XML file is malformed, hostile or names an unusable label."""


class ImageError(ToonVisionError):
    """Raised when an image is missing, truncated, corrupt or a decompression bomb."""


class PoolError(ToonVisionError):
    """Raised when the crop pool or its manifest is missing or inconsistent."""


class PoolLockedError(PoolError):
    """Raised when another toonvision process is working on the same img/ folder."""


class SplitError(ToonVisionError):
    """Raised when a task cannot be split (too few crops, missing classes, bad folders)."""


class TrainingError(ToonVisionError):
    """Raised when training cannot start or its outputs cannot be written."""


class ModelFileError(ToonVisionError):
    """Raised when a model file is missing, unsafe or does not fit the task."""


class ExportError(ModelFileError):
    """Raised when an export cannot be made or fails its check against the Keras model."""


def write_error(path: Path, exc: OSError, outcome: str = "nothing was changed") -> ToonVisionError:
    """Turn a failed write into a message that names the path, the fix and what was kept."""
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full; free some space and run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the folder is not writable; fix its permissions or choose another folder"
    else:
        hint = exc.strerror or str(exc)
    return ToonVisionError(f"{path}: cannot write ({hint}); {outcome}")
