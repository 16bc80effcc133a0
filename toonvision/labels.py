"""Labels become file names, so they are normalised and checked before any path is built.

ToonVision labels are ``cog_<bb|lb|cb|sb>_<name>`` and ``toon_<animal>``; any other
dataset's labels (``RBC``, ``with_mask``, ``banana``) are accepted as they are.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from toonvision.constants import LABEL_PATTERN, MAX_LABEL_LENGTH, TOONVISION_GROUPS
from toonvision.errors import UsageError


def normalise_label(raw: str) -> str:
    """Strip and lowercase a label; raise ValueError with the reason when it cannot be a file name."""
    text = raw.strip()
    label = text.lower()
    if not label:
        raise ValueError("empty label")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"label is {len(label)} characters long (at most {MAX_LABEL_LENGTH})")
    if not text.isascii():  # checked before lower(): the Kelvin sign lowercases to ASCII 'k'
        names = [f"U+{ord(c):04X} {unicodedata.name(c, '')}".rstrip() for c in dict.fromkeys(text) if not c.isascii()]
        odd = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"label {raw!r} holds non-ASCII characters ({odd}) that may look like a-z but are not; "
            "retype it in labelImg with a-z, 0-9, '_' and '-'"
        )
    if not LABEL_PATTERN.fullmatch(label) or label in (".", ".."):
        raise ValueError(
            f"label {raw!r} may only hold a-z, 0-9, '_' and '-' (no spaces, path separators, "
            "dots or other characters); rename it in labelImg"
        )
    return label


def group_of(label: str) -> str:
    """The pool folder of a label: ``cog``/``toon`` for ToonVision labels, else the label."""
    head = label.split("_", 1)[0]
    return head if head in TOONVISION_GROUPS and "_" in label else label


def read_classes_file(path: Path) -> tuple[str, ...]:
    """Read labelImg's predefined_classes.txt (``====`` lines are section headers)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the classes file ({exc})") from None
    labels = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("===="):
            continue
        try:
            labels.append(normalise_label(text))
        except ValueError as exc:
            raise UsageError(f"{path}: line {number}: {exc}") from None
    return tuple(labels)


def shown_class(cls: str, display: str) -> str:
    """A class as tables and figures show it: ``cls``, or ``cls (Display name)`` when they differ."""
    return cls if display == cls else f"{cls} ({display})"
