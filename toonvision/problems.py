"""Problems: what is wrong with one input file, reported and counted instead of raised.

An exception (``toonvision.errors``) stops a command; a ``Problem`` does not: extract,
validate, predict and explain collect one per bad file or object, print each as
``<severity>: <file>[: object <n>]: <message>`` and exit 1 if any is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Severity(str, Enum):
    """How bad a problem is: an error makes the command exit 1, a warning is only shown."""

    ERROR = "error"
    WARNING = "warning"

    def __str__(self) -> str:  # printed and compared as the bare word, as before it was an enum
        return self.value


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file or one object of it."""

    file: str
    message: str
    obj: int | None = None
    severity: Severity = Severity.ERROR
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def line(self) -> str:
        where = self.file if self.obj is None else f"{self.file}: object {self.obj}"
        return f"{where}: {self.message}"


def has_errors(problems: Iterable[Problem]) -> bool:
    """Whether any of ``problems`` is an error (the command then exits 1)."""
    return any(p.is_error for p in problems)


def without_source(message: object, source: str) -> str:
    """An error's text without its leading ``<source>: `` (a Problem names the file itself)."""
    text = str(message)
    prefix = f"{source}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def printable_path(path: Path) -> str:
    """A path with undecodable bytes written as \\xNN escapes, safe to print."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


__all__ = ["Problem", "Severity", "has_errors", "printable_path", "without_source"]
