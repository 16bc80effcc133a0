"""Tasks map pool labels to classes; custom tasks come from toonvision.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from toonvision.errors import UsageError
from toonvision.tasks import BUILTIN_TASKS, Task, find_config, get_task, known_tasks

from helpers import SAMPLES, skip_unless_ci

PREDEFINED = SAMPLES / "predefined_classes.txt"


@pytest.mark.parametrize(
    "task, label, expected",
    [
        ("binary", "cog_bb_flunky", "cog"),
        ("binary", "toon_cat", "toon"),
        ("binary", "RBC", None),
        ("suit", "cog_lb_bigwig", "lb"),
        ("suit", "toon_cat", None),
        ("suit", "cog_xx_flunky", None),
        ("name", "cog_bb_thebigcheese", "thebigcheese"),
        ("name", "toon_cat", None),
        ("animal", "toon_horse", "horse"),
        ("animal", "cog_bb_flunky", None),
        ("label", "with_mask", "with_mask"),
        ("label", "cog_bb_flunky", "cog_bb_flunky"),
    ],
)
def test_builtin_class_of(task: str, label: str, expected: str | None) -> None:
    assert get_task(task).class_of(label) == expected


@pytest.mark.parametrize(
    "task, classes",
    [("binary", 2), ("suit", 4), ("name", 32), ("animal", 11), ("label", 43)],
)
def test_builtin_tasks_on_the_43_real_labels(task: str, classes: int) -> None:
    if not PREDEFINED.is_file():
        skip_unless_ci(f"{PREDEFINED} not found (the shared fixtures sit beside the repository)")
    labels = [line.strip() for line in PREDEFINED.read_text().splitlines()
              if line.strip() and not line.startswith("=")]
    assert len(labels) == 43
    mapped = [get_task(task).class_of(label) for label in labels]
    assert len({c for c in mapped if c is not None}) == classes


@pytest.mark.parametrize(
    "task, cls, shown",
    [("suit", "bb", "Bossbot"), ("suit", "sb", "Sellbot"), ("binary", "toon", "Toon"), ("name", "flunky", "flunky")],
)
def test_display_name(task: str, cls: str, shown: str) -> None:
    assert get_task(task).display_name(cls) == shown


def test_unknown_task_is_a_usage_error_listing_the_known_ones() -> None:
    with pytest.raises(UsageError) as info:
        get_task("suits")
    assert "suits" in str(info.value)
    for name in BUILTIN_TASKS:
        assert name in str(info.value)
    assert info.value.exit_code == 2


def test_custom_task_from_config(tmp_path: Path) -> None:
    config = tmp_path / "toonvision.toml"
    config.write_text(
        '[tasks.mask]\npattern = "(?P<cls>with_mask|without_mask)"\n'
        'display = { with_mask = "Mask" }\n'
        '[tasks.rank]\npattern = "cog_(?P<cls>bb|lb)_.+"\ndescription = "two suits"\n'
    )
    mask = get_task("mask", config)
    assert mask.class_of("with_mask") == "with_mask"
    assert mask.class_of("mask_weared_incorrect") is None  # the whole label must match
    assert mask.display_name("with_mask") == "Mask"
    assert get_task("rank", config).class_of("cog_lb_bigwig") == "lb"
    assert known_tasks(config) == ("binary", "suit", "name", "animal", "label", "mask", "rank")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[tasks.x]\npattern = "(cls)"\n', "named group"),
        ('[tasks.x]\npattern = "(?P<cls>"\n', "not a regex"),
        ("[tasks.x]\ndescription = 'no pattern'\n", "pattern"),
        ('[tasks.x]\npatern = "(?P<cls>.+)"\n', "unknown keys"),
        ('[tasks.suit]\npattern = "(?P<cls>.+)"\n', "built-in"),
        ('[tasks."Bad/Name"]\npattern = "(?P<cls>.+)"\n', "not allowed"),
        ("[tasks.x\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_usage_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "toonvision.toml"
    config.write_text(text)
    with pytest.raises(UsageError) as info:
        get_task("x", config)
    assert message in str(info.value)
    assert str(config) in str(info.value)


def test_config_is_found_in_the_working_directory_only_when_present(tmp_path: Path) -> None:
    assert find_config(None, cwd=tmp_path) is None
    (tmp_path / "toonvision.toml").write_text("")
    assert find_config(None, cwd=tmp_path) == tmp_path / "toonvision.toml"
    assert find_config(tmp_path / "other.toml", cwd=tmp_path) == tmp_path / "other.toml"


def test_tasks_are_small_comparable_values() -> None:
    assert Task("x", "d", "(?P<cls>.+)") == Task("x", "d", "(?P<cls>.+)")
    assert hash(get_task("suit")) == hash(get_task("suit"))
