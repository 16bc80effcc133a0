"""The CLI's shared conventions: every default and choice is the library's, every size is HEIGHTxWIDTH."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from toonvision import constants, layout
from toonvision.cli import main
from toonvision.constants import DEFAULT_IMAGE_SIZE, DEFAULT_SYNTH_SIZE, HW, parse_hw
from toonvision.demo import DemoConfig
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
    assert (params["model"], params["runs"], params["epochs"], params["ratio"], params["image_size"],
            params["batch_size"], params["weights"]) == (
        config.model, config.runs, config.epochs, config.ratios, config.image_size, config.batch_size, config.weights)
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
