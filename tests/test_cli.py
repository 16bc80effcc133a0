"""The CLI's shared conventions: every default and choice is the library's, every size is HEIGHTxWIDTH."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from toonvision import constants, layout
from toonvision.cli import main
from toonvision.constants import DEFAULT_IMAGE_SIZE, DEFAULT_SYNTH_SIZE, HW, parse_hw
from toonvision.demo import DemoConfig
from toonvision.layout import Layout
from toonvision.tasks import BUILTIN_TASKS, CONFIG_NAME


def parsed(command: str, *args: str) -> dict[str, Any]:
    """The values ``toonvision <command> <args>`` would run with (defaults filled in, callbacks run)."""
    cmd = main.commands[command]
    with cmd.make_context(command, list(args)) as ctx:
        return dict(ctx.params)


# --- one size convention, one parser -----------------------------------------------------------


@pytest.mark.parametrize("text, size", [("600x200", (600, 200)), ("48X44", (48, 44)), (" 32 × 64 ", (32, 64))])
def test_sizes_are_height_by_width(text: str, size: tuple[int, int]) -> None:
    hw = parse_hw(text)
    assert isinstance(hw, HW) and hw == size and (hw.height, hw.width) == size
    height, width = hw  # tuple code keeps working
    assert hw.as_text() == f"{height}x{width}"


@pytest.mark.parametrize("text", ["600by200", "600", "600x", "x200", "0x200", "600x0", "-6x2", "6x2x3", "600x²", ""])
def test_bad_sizes_name_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected HEIGHTxWIDTH in pixels, e\.g\. 600x200"):
        parse_hw(text)


@pytest.mark.parametrize("command", ["train", "compare"])
def test_image_size_option_gives_an_hw(command: str) -> None:
    assert parsed(command, "--task", "binary")["image_size"] == DEFAULT_IMAGE_SIZE
    size = parsed(command, "--task", "binary", "--image-size", "64x48")["image_size"]
    assert isinstance(size, HW) and size == HW(height=64, width=48)


@pytest.mark.parametrize("command", ["train", "compare"])
def test_image_size_auto_and_resize_modes(command: str) -> None:
    assert parsed(command, "--task", "label")["image_size"] == "auto"  # the generic task's default
    assert parsed(command, "--task", "binary", "--image-size", "AUTO")["image_size"] == "auto"
    assert parsed(command, "--task", "label", "--image-size", "64x48")["image_size"] == HW(64, 48)
    assert parsed(command, "--task", "label")["resize"] == "stretch"
    assert parsed(command, "--task", "label", "--resize", "pad")["resize"] == "pad"
    result = CliRunner().invoke(main, [command, "--task", "label", "--resize", "crop"])
    assert result.exit_code == 2 and "'crop' is not one of 'stretch', 'pad'" in result.output


def test_synth_size_is_height_by_width_too() -> None:
    assert parsed("synth")["size"] == DEFAULT_SYNTH_SIZE == HW(height=600, width=800)
    assert parsed("synth", "--size", "240x320")["size"] == HW(240, 320)


@pytest.mark.parametrize("args", [["train", "--task", "binary", "--image-size", "600x²"],
                                  ["synth", "--size", "10x10"], ["synth", "--size", "600x5000"]])
def test_bad_sizes_on_the_command_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, ["--img-dir", str(tmp_path / "img"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and ("HEIGHTxWIDTH" in result.output)


# --- defaults and choices come from the library --------------------------------------------------


def test_train_defaults_are_train_configs() -> None:
    from toonvision.train import TrainConfig

    config, params = TrainConfig(task="binary"), parsed("train", "--task", "binary")
    from_cli = TrainConfig(task="binary", model=params["model"], image_size=params["image_size"])
    assert (from_cli.model, params["runs"], params["epochs"], params["ratio"], from_cli.image_size,
            params["batch_size"], params["weights"]) == (
        config.model, config.runs, config.epochs, config.ratios, config.image_size, config.batch_size, config.weights)
    # the model and size follow the task: the original network at 600x200 for ToonVision, smallres on auto elsewhere
    assert (config.model, TrainConfig(task="label").model) == ("baseline", "smallres")
    assert (params["class_weight"], params["select"], params["patience"], params["resplit_test"],
            params["ensemble"] or 0, params["tensorboard"]) == (
        config.class_weight, config.select, config.patience, config.resplit_test, config.ensemble, config.tensorboard)


def test_compare_defaults_are_compare_configs() -> None:
    from toonvision.compare import CompareConfig

    config, params = CompareConfig(task="binary"), parsed("compare", "--task", "binary")
    assert (params["models"], params["runs"], params["epochs"], params["seed"], params["ratio"],
            params["image_size"], params["batch_size"], params["weights"]) == (
        config.models, config.runs, config.epochs, config.seed, config.ratios, config.image_size,
        config.batch_size, config.weights)
    assert (params["class_weight"], params["select"], params["patience"], params["resplit_test"]) == (
        config.class_weight, config.select, config.patience, config.resplit_test)


def test_synth_defaults_are_synth_configs() -> None:
    from toonvision.synth import SynthConfig

    config, params = SynthConfig(), parsed("synth")
    assert (params["count"], params["seed"], params["size"]) == (config.count, config.seed, config.size)
    assert constants.DEFAULT_TOON_SHARE == config.toon_share


def test_evaluate_and_predict_defaults_are_the_functions_defaults() -> None:
    from toonvision import evaluate

    defaults = {name: p.default for name, p in inspect.signature(evaluate.evaluate).parameters.items()}
    params = parsed("evaluate")
    assert (params["split"], params["worst"], params["batch_size"]) == (
        defaults["split"], defaults["worst"], defaults["batch_size"])
    split = next(p for p in main.commands["evaluate"].params if p.name == "split")
    assert tuple(split.type.choices) == layout.SPLITS
    fmt = next(p for p in main.commands["predict"].params if p.name == "fmt")
    assert tuple(fmt.type.choices) == constants.PREDICTION_FORMATS
    assert fmt.default == "table"


def test_demo_defaults_are_demo_configs() -> None:
    config, params = DemoConfig(), parsed("demo")
    assert (params["root"], params["screenshots"], params["runs"], params["epochs"], params["seed"]) == (
        config.root, config.screenshots, config.runs, config.epochs, config.seed)


@pytest.mark.parametrize("command", ["split", "train", "compare"])
def test_task_help_lists_the_builtin_tasks(command: str) -> None:
    task = next(p for p in main.commands[command].params if p.name == "task_name")
    assert task.help == f"{', '.join(BUILTIN_TASKS)}, or a task of {CONFIG_NAME}."
    assert task.help == "binary, suit, name, animal, label, or a task of toonvision.toml."


def test_help_texts_show_the_library_defaults() -> None:
    def shown(command: str) -> str:
        return " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())

    train = shown("train")
    assert "[default: 600x200]" in train and "[default: 0.6 0.2 0.2]" in train
    synth = shown("synth")
    assert "--size HxW" in synth and "[default: 600x800]" in synth and "[default: 0.22, as in" in synth
    compare = shown("compare")
    assert "baseline optimized" in compare and "models/<task>/compare/" in compare


def test_shared_defaults_and_names_are_defined_once() -> None:
    """Defaults and artifact names live in constants.py and layout.py; other modules import them, never copy them."""
    package = Path(constants.__file__).parent
    sources = {path: path.read_text(encoding="utf-8") for path in package.rglob("*.py")
               if path.name not in ("constants.py", "layout.py")}
    names = ("BEST_MODEL", "BEST_INFO", "DEFAULT_WORST", "FORMATS", "PREDICTION_FORMATS", "DEFAULT_MODELS",
             "DEFAULT_COMPARE_RUNS", "COMPARE_DIR", "EXPLAIN_DIR", "EVALUATION_DIR", "IMAGE_SUFFIXES",
             "DEFAULT_TOON_SHARE", "DEFAULT_IMAGE_SIZE", "DEFAULT_RATIOS")
    copies = [f"{path.relative_to(package)}: {name}" for path, text in sources.items() for name in names
              if re.search(rf"^{name}\s*=", text, re.MULTILINE)]
    assert copies == []
    assert set(constants.KERAS_IMAGE_SUFFIXES) < set(constants.PIL_IMAGE_SUFFIXES)


# --- global options before or after the command -----------------------------------------------------

GLOBAL_FLAGS = ("--img-dir", "--models-dir", "--quiet", "--verbose")


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("quiet", [True, False])
def test_global_options_after_the_command_behave_as_before_it(tmp_path: Path, quiet: bool) -> None:
    from helpers import write_screenshot

    img = tmp_path / "img"
    flags = ["--quiet"] if quiet else []
    outcomes = []
    for args in (["--img-dir", str(img), *flags, "extract"], ["extract", "--img-dir", str(img), *flags]):
        shutil.rmtree(img, ignore_errors=True)
        shots = img / "raw" / "screenshots"
        write_screenshot(shots, "a", [("toon_cat", (0, 0, 20, 20)), ("cog_bb_flunky", (10, 10, 40, 40))])
        write_screenshot(shots, "b", [("toon_dog", (5, 5, 30, 30)), ("a/b", (0, 0, 9, 9))], seed=1)
        result = CliRunner().invoke(main, args)
        outcomes.append((result.exit_code, result.output, files_under(img)))
    assert outcomes[0] == outcomes[1]
    exit_code, output, files = outcomes[0]
    assert exit_code == 1 and "error:" in output and "unsorted/manifest.csv" in files  # one bad label
    assert ("crops" in output) is not quiet  # the summary only without --quiet


def test_img_dir_after_train_reaches_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import toonvision.train

    seen = []

    class Done:
        def summary(self) -> str:
            return "trained"

    def fake_train(layout, options, progress=False, executor=None):
        seen.append((layout, options))
        return Done()

    monkeypatch.setattr(toonvision.train, "train", fake_train)
    before, after = tmp_path / "before", tmp_path / "after"

    result = CliRunner().invoke(main, ["train", "--task", "binary", "--img-dir", str(after), "-v"])
    assert result.exit_code == 0, result.output
    layout, options = seen[-1]
    assert layout == Layout.from_dirs(after, layout.models_dir) and layout.models_dir == Path("models").absolute()
    assert options.verbose is True

    result = CliRunner().invoke(main, ["--img-dir", str(before), "--models-dir", str(before / "m"), "train",
                                       "--task", "binary", "--img-dir", str(after), "--quiet"])
    assert result.exit_code == 0 and result.output == ""  # --quiet after the command: no summary
    layout, options = seen[-1]
    assert layout == Layout.from_dirs(after, before / "m")  # the one after the command wins, the others stay
    assert options.verbose is False

    result = CliRunner().invoke(main, ["--img-dir", str(before), "train", "--task", "binary"])
    assert result.exit_code == 0 and result.output == "trained\n"
    assert seen[-1][0] == Layout.from_dirs(before, "models")


def test_quiet_and_verbose_after_the_command_set_the_log_level() -> None:
    import logging

    for args, level in ((["validate", "--screenshots", "nowhere", "-q"], logging.ERROR),
                        (["validate", "--screenshots", "nowhere", "--verbose"], logging.DEBUG),
                        (["-v", "validate", "--screenshots", "nowhere"], logging.DEBUG),
                        (["validate", "--screenshots", "nowhere"], logging.WARNING)):
        CliRunner().invoke(main, args)
        assert logging.getLogger("toonvision").level == level, args


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_takes_the_global_options_and_lists_them(command: str) -> None:
    shown = CliRunner().invoke(main, [command, "--help"]).output
    assert "Global options (here or before the command):" in shown
    assert all(flag in shown for flag in GLOBAL_FLAGS), shown
    assert "[default: img]" in " ".join(shown.split()) and "[default: models]" in " ".join(shown.split())
    params = {p.name for p in main.commands[command].params}
    assert {"img_dir", "models_dir", "quiet", "verbose"} <= params


def test_the_group_refuses_a_command_without_the_global_options() -> None:
    import click

    with pytest.raises(TypeError, match="global options"):
        main.add_command(click.Command("plain", callback=lambda: None))
