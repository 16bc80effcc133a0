"""Tasks: which class each pool label belongs to, or that it is left out.

Built-in tasks (ToonVision labels are ``cog_<suit>_<name>`` and ``toon_<animal>``)::

    binary   cog_bb_flunky -> cog      toon_cat -> toon
    suit     cog_bb_flunky -> bb       toon_cat -> (left out)
    name     cog_bb_flunky -> flunky   toon_cat -> (left out)
    animal   cog_bb_flunky -> (out)    toon_cat -> cat
    label    every label is its own class (any labelImg dataset: RBC, banana, ...)

Custom tasks come from a ``toonvision.toml``; the whole label must match the pattern and
its named group ``cls`` is the class::

    [tasks.mask]
    pattern = "(?P<cls>with_mask|without_mask)"
    description = "mask or no mask"          # optional
    display = { with_mask = "Mask" }         # optional names for reports
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from toonvision.constants import SUITS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib
from toonvision.errors import UsageError

CONFIG_NAME = "toonvision.toml"
TASK_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CONFIG_KEYS = ("pattern", "description", "display")


@dataclass(frozen=True)
class Task:
    """A named mapping from pool labels to classes; labels that do not match are left out."""

    name: str
    description: str
    pattern: str = r"(?P<cls>.+)"
    display: tuple[tuple[str, str], ...] = ()
    one_label_per_class: bool = False
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not TASK_NAME_PATTERN.match(self.name):
            raise UsageError(
                f"task name {self.name!r} is not allowed; use lowercase letters, digits, "
                "'_' and '-' (it becomes a folder name)"
            )
        try:
            regex = re.compile(self.pattern)
        except re.error as exc:
            raise UsageError(f"task {self.name!r}: pattern {self.pattern!r} is not a regex ({exc})") from None
        if "cls" not in regex.groupindex:
            raise UsageError(
                f"task {self.name!r}: pattern {self.pattern!r} has no named group `cls`; "
                "write the class part as (?P<cls>...)"
            )
        object.__setattr__(self, "_regex", regex)

    def class_of(self, label: str) -> str | None:
        """The class of ``label`` in this task, or None when the task leaves it out."""
        match = self._regex.fullmatch(label)
        if match is None:
            return None
        return match.group("cls") or None

    def display_name(self, cls: str) -> str:
        """A readable name for reports (``bb`` -> ``Bossbot``); the class itself otherwise."""
        return dict(self.display).get(cls, cls)


BUILTIN_TASKS: Mapping[str, Task] = {
    task.name: task
    for task in (
        Task("binary", "Cog or Toon", r"(?P<cls>cog|toon)_.+",
             display=(("cog", "Cog"), ("toon", "Toon"))),
        Task("suit", "the suit of a Cog (Toons left out)", r"cog_(?P<cls>bb|lb|cb|sb)_.+",
             display=tuple(SUITS.items())),
        Task("name", "the name of a Cog (Toons left out)", r"cog_(?:bb|lb|cb|sb)_(?P<cls>.+)",
             one_label_per_class=True),
        Task("animal", "the animal of a Toon (Cogs left out)", r"toon_(?P<cls>.+)"),
        Task("label", "every label is its own class", r"(?P<cls>.+)", one_label_per_class=True),
    )
}


def find_config(explicit: Path | None, cwd: Path | None = None) -> Path | None:
    """The task config to use: ``--config`` when given, else ``./toonvision.toml`` if present."""
    if explicit is not None:
        return Path(explicit)
    candidate = (cwd or Path.cwd()) / CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_custom_tasks(config: Path | None) -> dict[str, Task]:
    """The ``[tasks.NAME]`` tables of ``config`` as tasks; no config means none."""
    if config is None:
        return {}
    config = Path(config)
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{config}: cannot read the task config ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{config}: not valid TOML ({exc}); fix the file or pass another --config") from None
    tables = data.get("tasks", {})
    if not isinstance(tables, dict):
        raise UsageError(f"{config}: `tasks` must be a table of [tasks.NAME] sections")
    return {name: _task_from_table(config, name, table) for name, table in tables.items()}


def _task_from_table(config: Path, name: str, table: object) -> Task:
    where = f"{config}: [tasks.{name}]"
    if name in BUILTIN_TASKS:
        raise UsageError(f"{where} redefines the built-in task {name!r}; give it another name")
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table with a `pattern` key")
    unknown = sorted(set(table) - set(_CONFIG_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown keys {unknown}; allowed: {', '.join(_CONFIG_KEYS)}")
    pattern = table.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise UsageError(f'{where} needs pattern = "<regex with a named group (?P<cls>...)>"')
    description = table.get("description", f"custom task from {config.name}")
    display = table.get("display", {})
    if not isinstance(description, str) or not isinstance(display, dict) or not all(
        isinstance(v, str) for v in display.values()
    ):
        raise UsageError(f"{where}: `description` must be a string and `display` a table of strings")
    try:
        return Task(name, description, pattern, display=tuple(sorted(display.items())))
    except UsageError as exc:
        raise UsageError(f"{config}: {exc}") from None


def known_tasks(config: Path | None = None) -> tuple[str, ...]:
    """Names of the built-in tasks, then the config's tasks in alphabetical order."""
    return (*BUILTIN_TASKS, *sorted(load_custom_tasks(config)))


def get_task(name: str, config: Path | None = None) -> Task:
    """The task called ``name``: built-in, or defined in ``config``."""
    custom = load_custom_tasks(config)  # read even for a built-in, so a broken config is reported
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if name in custom:
        return custom[name]
    where = f" (config: {config})" if config is not None else f" (no {CONFIG_NAME} found)"
    raise UsageError(
        f"unknown task {name!r}; known tasks: {', '.join(known_tasks(config))}{where}"
    )
