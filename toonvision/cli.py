"""The ``toonvision`` command: parse options, call one library function, print its result.

Exit codes: 0 ok, 1 failure (some files had errors, or a stage failed), 2 usage error.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from toonvision.constants import (
    AUTO_SIZE_TASKS,
    CLASS_WEIGHT_MODES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS_WEIGHT,
    DEFAULT_COMPARE_MODELS,
    DEFAULT_COMPARE_RUNS,
    DEFAULT_COMPARE_SEED,
    DEFAULT_CV_SEED,
    DEFAULT_EPOCHS,
    DEFAULT_EVALUATION_SPLIT,
    DEFAULT_FOLDS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_BLOCKS,
    DEFAULT_MODEL,
    DEFAULT_PATIENCE,
    DEFAULT_RATIOS,
    DEFAULT_RESIZE,
    DEFAULT_RUNS,
    DEFAULT_SELECT,
    DEFAULT_SYNTH_COUNT,
    DEFAULT_SYNTH_SEED,
    DEFAULT_SYNTH_SIZE,
    DEFAULT_TOON_SHARE,
    DEFAULT_TUNE_ALGORITHM,
    DEFAULT_TUNE_EPOCHS,
    DEFAULT_TUNE_SEED,
    DEFAULT_TUNE_TRIALS,
    DEFAULT_WEIGHTS,
    DEFAULT_WORST,
    EXPORT_FORMATS,
    GENERIC_MODEL,
    HW,
    IMAGE_SIZE_AUTO,
    PREDICTION_FORMATS,
    RESIZE_MODES,
    SELECT_METRICS,
    TUNE_ALGORITHMS,
    TUNE_OBJECTIVES,
    default_image_size,
    parse_hw,
)
from toonvision.demo import MIN_SCREENSHOTS, DemoConfig, run_demo
from toonvision.errors import ToonVisionError, UsageError
from toonvision.executors import (
    CROP_SOURCES,
    DEFAULT_ADDRESS,
    EXECUTORS,
    ExecutorOptions,
    open_executor,
)
from toonvision.layout import (
    BEST_INFO,
    BEST_MODEL,
    COMPARE_DIR,
    DEFAULT_IMG_DIR,
    DEFAULT_MODELS_DIR,
    EVALUATION_DIR,
    EXPLAIN_DIR,
    POOL_REPORT,
    REPORTS_DIR,
    SPLITS,
    Layout,
)
from toonvision.modelreport import REPORT_HTML
from toonvision.models import DEFAULT_FINE_TUNE_EPOCHS, MODEL_NAMES
from toonvision.reference import REFERENCE_MODEL
from toonvision.tasks import BUILTIN_TASKS, CONFIG_NAME

logger = logging.getLogger("toonvision")

_RATIOS_TEXT = " ".join(f"{r:g}" for r in DEFAULT_RATIOS)  # 0.6 0.2 0.2
_DEMO = DemoConfig()  # the demo's defaults


class _Context:
    """What every sub-command receives: the layout and how much to show."""

    def __init__(self, layout: Layout, quiet: bool, verbose: bool) -> None:
        self.layout = layout
        self.quiet = quiet
        self.verbose = verbose

    @property
    def progress(self) -> bool:
        """tqdm bars only on a terminal and never with --quiet."""
        return not self.quiet and sys.stderr.isatty()


def _reports_errors(command):
    """Turn the project's exceptions into a one-line message and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ToonVisionError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to continue", err=True)
            sys.exit(130)

    return wrapper


def _configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("toonvision")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = True  # the root logger has no handler in the CLI; tests capture through it


# -- global options: before the command or after it -------------------------------------------

_GLOBAL_NAMES = ("img_dir", "models_dir", "quiet", "verbose")
_GLOBAL_HELP = {
    "img_dir": "Data root: raw/screenshots, unsorted (the pool), data (splits).",
    "models_dir": "Where trained models and their reports go.",
    "quiet": "Only errors; no progress bars.",
    "verbose": "Debug logging and Keras' per-epoch output.",
}


def _global_params(after_command: bool) -> list[click.Parameter]:
    """The group's options; every command gets a copy (defaults None: "as given before the command")."""
    folder = click.Path(file_okay=False, path_type=Path)

    def folder_option(flag: str, name: str, default: str) -> click.Option:
        if after_command:
            return click.Option([flag], type=folder, help=f"{_GLOBAL_HELP[name]} [default: {default}]")
        return click.Option([flag], type=folder, default=Path(default), show_default=True, help=_GLOBAL_HELP[name])

    return [
        folder_option("--img-dir", "img_dir", DEFAULT_IMG_DIR),
        folder_option("--models-dir", "models_dir", DEFAULT_MODELS_DIR),
        click.Option(["-q", "--quiet"], is_flag=True, help=_GLOBAL_HELP["quiet"]),
        click.Option(["-v", "--verbose"], is_flag=True, help=_GLOBAL_HELP["verbose"]),
    ]


@dataclass(frozen=True)
class _GlobalOptions:
    """The global options as given before the command; the command merges its own and starts up."""

    img_dir: Path = Path(DEFAULT_IMG_DIR)
    models_dir: Path = Path(DEFAULT_MODELS_DIR)
    quiet: bool = False
    verbose: bool = False

    def merged(self, after: dict[str, Any]) -> _GlobalOptions:
        """A folder given after the command wins; a flag is on when given in either place."""
        return _GlobalOptions(
            self.img_dir if after["img_dir"] is None else after["img_dir"],
            self.models_dir if after["models_dir"] is None else after["models_dir"],
            self.quiet or after["quiet"], self.verbose or after["verbose"],
        )

    def start(self) -> _Context:
        """Logging set up once, from the merged options, and the context every command receives."""
        _configure_logging(self.quiet, self.verbose)
        if not self.verbose:  # TensorFlow's C++ start-up chatter (set before it is imported); --verbose shows it
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        return _Context(Layout.from_dirs(self.img_dir, self.models_dir), self.quiet, self.verbose)


class _Command(click.Command):
    """A command that takes the global options after its name too, and lists them apart in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        clash = set(_GLOBAL_NAMES) & {p.name for p in self.params}
        if clash:
            raise TypeError(f"command {self.name!r} defines global option(s) {sorted(clash)} itself")
        self.params.extend(_global_params(after_command=True))

    def invoke(self, ctx: click.Context) -> Any:
        after = {name: ctx.params.pop(name) for name in _GLOBAL_NAMES}
        before = ctx.find_object(_GlobalOptions) or _GlobalOptions()
        ctx.obj = before.merged(after).start()
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own, shared = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                (shared if param.name in _GLOBAL_NAMES else own).append(record)
        for title, records in (("Options", own), ("Global options (here or before the command)", shared)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


class _Group(click.Group):
    """The ``toonvision`` group: every command is a :class:`_Command`, so each takes the global options."""

    command_class = _Command

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, _Command):
            raise TypeError(f"command {cmd.name!r} must be a _Command (or subclass) to take the global options")
        super().add_command(cmd, name)


@click.group(cls=_Group, params=_global_params(after_command=False),
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="toonvision")
@click.pass_context
def main(ctx: click.Context, img_dir: Path, models_dir: Path, quiet: bool, verbose: bool) -> None:
    """ToonVision: labelImg screenshots in, Keras image classifiers out.

    The global options may also follow the command (toonvision extract --quiet); a folder given in
    both places is the one after the command.
    """
    ctx.obj = _GlobalOptions(img_dir, models_dir, quiet, verbose)


pass_context = click.make_pass_decorator(_Context)


def _echo_problems(ctx: _Context, problems) -> None:
    """Errors always; warnings unless --quiet."""
    for problem in problems:
        if problem.is_error or not ctx.quiet:
            click.echo(f"{problem.severity}: {problem.line()}", err=True)


@main.command()
@click.option("--screenshots", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of screenshots + XML (default: <img-dir>/raw/screenshots).")
@click.option("--classes", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="labelImg predefined_classes.txt; labels not in it are reported.")
@click.option("--strict", is_flag=True, help="With --classes: stop before writing if any label is unknown.")
@click.option("--move", is_flag=True, help="Move each fully extracted screenshot and XML to raw/processed/.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default: 2 when there are many screenshots).")
@pass_context
@_reports_errors
def extract(ctx: _Context, screenshots: Path | None, classes: Path | None, strict: bool, move: bool,
            workers: int | None) -> None:
    """Crop every labelled object into the pool img/unsorted/<group>/<label>_<index>.png."""
    from toonvision import extract as stage

    options = stage.ExtractOptions(screenshots, classes, strict, move, workers)
    result = stage.extract(ctx.layout, options, progress=ctx.progress)
    _echo_problems(ctx, result.problems)
    if not ctx.quiet:
        click.echo(result.summary())
    sys.exit(result.exit_code)


@main.command()
@click.option("--screenshots", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of screenshots + XML (default: <img-dir>/raw/screenshots).")
@click.option("--classes", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="labelImg predefined_classes.txt; labels not in it are reported.")
@pass_context
@_reports_errors
def validate(ctx: _Context, screenshots: Path | None, classes: Path | None) -> None:
    """Check screenshots and annotations without writing anything; exit 1 on errors."""
    from toonvision import extract as stage

    result = stage.validate(screenshots or ctx.layout.screenshots, classes, progress=ctx.progress)
    for problem in result.problems:
        click.echo(problem.line())
    click.echo(result.summary())
    sys.exit(result.exit_code)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class MultiValueCommand(_Command):
    """A command whose listed options take several values: ``--ratio 0.6 0.2 0.2``.

    click options take a fixed number of values, so the values after each option in
    ``multi_value_options`` are joined into one (with its separator) before parsing, and
    the option's callback splits and checks them.
    """

    multi_value_options: dict[str, str] = {"--ratio": " "}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        joined, i = [], 0
        while i < len(args):
            arg = args[i]
            joined.append(arg)
            i += 1
            if arg == "--":
                joined.extend(args[i:])
                break
            if arg in self.multi_value_options:
                values = []
                while i < len(args) and (_is_number(args[i]) or not args[i].startswith("-")):
                    values.append(args[i])
                    i += 1
                joined.append(self.multi_value_options[arg].join(values))
        return super().parse_args(ctx, joined)


def _parse_ratio(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...]:
    from toonvision.split import (
        check_ratios,  # stage modules load when a command needs them: start-up time
    )

    if value is None:
        return tuple(DEFAULT_RATIOS)
    parts = value.replace(",", " ").split()
    if not parts:
        raise click.BadParameter(f"expected 2 or 3 numbers after --ratio, e.g. --ratio {_RATIOS_TEXT}")
    if not all(_is_number(part) for part in parts):
        raise click.BadParameter(f"expected 2 or 3 numbers summing to 1, e.g. {_RATIOS_TEXT}; got {value!r}")
    try:
        return check_ratios(float(part) for part in parts)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


ratio_option = click.option(
    "--ratio", callback=_parse_ratio, metavar="TRAIN VALIDATE [TEST]",
    help=f"Shares of each class per split, summing to 1 (2 numbers: no test split). [default: {_RATIOS_TEXT}]",
)
no_group_option = click.option(
    "--no-group", is_flag=True,
    help="Let crops of one screenshot go to different splits (leaks near-duplicates into test).",
)
min_per_class_option = click.option(
    "--min-per-class", type=click.IntRange(min=1), metavar="K",
    help="Leave out classes with fewer than K crops (a class needs one crop per split).",
)
config_option = click.option(
    "--config", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help=f"Custom tasks ([tasks.NAME] pattern = ...). [default: ./{CONFIG_NAME} if present]",
)
task_option = click.option(
    "--task", "task_name", required=True, help=f"{', '.join(BUILTIN_TASKS)}, or a task of {CONFIG_NAME}.",
)
_EXECUTOR_OPTIONS = (
    click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                 help="Where runs execute: here one at a time, or as Ray tasks (pip install 'toonvision[ray]')."),
    click.option("--address", default=DEFAULT_ADDRESS, show_default=True, metavar="auto|local|HOST:PORT",
                 help="Ray cluster: auto joins $RAY_ADDRESS, else starts one on 127.0.0.1 for this command."),
    click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                 help="Ray: CPUs each run requests (and TensorFlow's thread count)."),
    click.option("--gpus-per-run", type=click.FloatRange(min=0), default=0.0, show_default=True,
                 help="Ray: GPUs each run requests; a fraction packs runs on one GPU (0.25: four)."),
    click.option("--crops", "crop_source", type=click.Choice(CROP_SOURCES), default="store", show_default=True,
                 help="Ray: ship the crops through the object store, or read img/ at the same path (shared storage)."),
)


def executor_options(command):
    """--executor, --address, --cpus-per-run, --gpus-per-run and --crops (train, compare)."""
    for option in reversed(_EXECUTOR_OPTIONS):
        command = option(command)
    return command


def _run_on(executor: str, address: str, cpus_per_run: float, gpus_per_run: float, crop_source: str):
    """The executor the options ask for, as a context manager (Ray is imported only for --executor ray)."""
    return open_executor(ExecutorOptions(executor, address, cpus_per_run, gpus_per_run, crop_source))


def _task(name: str, config: Path | None):
    from toonvision.tasks import find_config, get_task

    return get_task(name, find_config(config))


@main.command(cls=MultiValueCommand)
@task_option
@ratio_option
@click.option("--seed", type=click.IntRange(min=0), help="Repeat a split exactly. [default: chosen and printed]")
@no_group_option
@min_per_class_option
@config_option
@pass_context
@_reports_errors
def split(ctx: _Context, task_name: str, ratio: tuple[float, ...], seed: int | None, no_group: bool,
          min_per_class: int | None, config: Path | None) -> None:
    """Stratify the pool into img/data/<task>/{train,validate,test}/<class>/ (hard links, swapped in whole)."""
    from toonvision import split as stage

    result = stage.run_split(ctx.layout, _task(task_name, config), ratio, seed,
                             group=not no_group, min_per_class=min_per_class)
    if not ctx.quiet:
        click.echo(result.summary())


@main.command("balance-report")
@click.option("--task", "task_name", help="Also count the classes of this task (and its split, if any).")
@click.option("--target", type=click.IntRange(min=1), metavar="N",
              help="Crops wanted per label and class. [default: the largest]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help=f"Folder for balance.json and the figures. [default: <img-dir>/{REPORTS_DIR}/<task or "
                   f"{POOL_REPORT}>/]")
@config_option
@pass_context
@_reports_errors
def balance_report(ctx: _Context, task_name: str | None, target: int | None, out: Path | None,
                   config: Path | None) -> None:
    """Crops per label and per class, with split counts, deficits, figures and balance.json."""
    from toonvision import report as stage

    task = _task(task_name, config) if task_name else None
    report = stage.balance_report(ctx.layout, task, target)
    out = out or ctx.layout.report_dir(task_name)
    paths = stage.write_balance_report(report, out)
    if not ctx.quiet:
        click.echo(report.table())
        click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}")


def _parse_hw(value: str) -> HW:
    """Every size option is HEIGHTxWIDTH, read by the one parser."""
    try:
        return parse_hw(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_image_size(ctx: click.Context, param: click.Parameter, value: str | None) -> HW | str:
    """HEIGHTxWIDTH or auto; not given: the task's default (--task is required, so it is parsed first)."""
    if value is None:
        return default_image_size(ctx.params.get("task_name") or "")
    return IMAGE_SIZE_AUTO if value.strip().lower() == IMAGE_SIZE_AUTO else _parse_hw(value)


image_size_option = click.option(
    "--image-size", callback=_parse_image_size, metavar="HxW|auto",
    help=f"Input height x width in pixels, or {IMAGE_SIZE_AUTO}: the task's median crop size in multiples of 16, "
         f"the longer side at most 128 (--task label defaults to {IMAGE_SIZE_AUTO}). "
         f"[default: {DEFAULT_IMAGE_SIZE.as_text()}]",
)
resize_option = click.option(
    "--resize", type=click.Choice(RESIZE_MODES), default=DEFAULT_RESIZE, show_default=True,
    help="stretch: every crop fills the input; pad: aspect ratio kept, zero bands (Keras' pad_to_aspect_ratio).",
)
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
)
class_weight_option = click.option(
    "--class-weight", type=click.Choice(CLASS_WEIGHT_MODES), default=DEFAULT_CLASS_WEIGHT, show_default=True,
    help="balanced: weight each class by the inverse of its share of the run's train split (rare classes count "
         "more); none: every crop alike.",
)
select_option = click.option(
    "--select", type=click.Choice(SELECT_METRICS), default=DEFAULT_SELECT, show_default=True,
    help="Validation metric that picks the run and, within each run, the epoch whose weights are kept.",
)
patience_option = click.option(
    "--patience", type=click.IntRange(min=1), default=DEFAULT_PATIENCE, metavar="N",
    help="Stop a run after N epochs without a better --select value (the best epoch is kept either way). "
         + ("[default: never]" if DEFAULT_PATIENCE is None else f"[default: {DEFAULT_PATIENCE}]"),
)
resplit_test_option = click.option(
    "--resplit-test", is_flag=True,
    help="Re-split the test split per run too (default: one test split per training, the same crops for every run).",
)
model_option = click.option(
    "--model", type=click.Choice(MODEL_NAMES),
    help=f"optimized adds augmentation, dropout and learning-rate decay to baseline. [default: "
         f"{GENERIC_MODEL} for {', '.join(AUTO_SIZE_TASKS)}, {DEFAULT_MODEL} for the ToonVision tasks]",
)
hparams_option = click.option(
    "--hparams", type=click.Path(dir_okay=False, exists=True, path_type=Path), metavar="FILE",
    help="Train the model tune found (models/<task>/tune/best_hparams.json) instead of --model.",
)
weights_option = click.option(
    "--weights", default=DEFAULT_WEIGHTS, show_default=True, metavar="imagenet|none|PATH",
    help="mobilenetv2 only: ImageNet weights from Keras' cache (downloaded into it when missing), "
         "none (from scratch) or a weights file.",
)


@main.command(cls=MultiValueCommand)
@task_option
@click.option("--runs", type=click.IntRange(min=1), default=DEFAULT_RUNS, show_default=True,
              help="Independent runs, each on its own re-split of the pool (seed + run).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True)
@model_option
@click.option("--seed", type=click.IntRange(min=0),
              help="Seed of run 0 (run k uses seed + k). [default: chosen and printed; --resume keeps it]")
@ratio_option
@image_size_option
@resize_option
@batch_size_option
@weights_option
@click.option("--fine-tune", is_flag=True,
              help="mobilenetv2: after the head has trained on the frozen base, unfreeze the base's last block "
                   "and train --fine-tune-epochs more at a tenth of the learning rate.")
@click.option("--fine-tune-epochs", type=click.IntRange(min=1), default=DEFAULT_FINE_TUNE_EPOCHS, show_default=True,
              help="Epochs of the --fine-tune phase.")
@click.option("--resume", is_flag=True, help="Continue an interrupted training in models/<task>/.")
@click.option("--overwrite", is_flag=True, help="Replace the training in models/<task>/.")
@click.option("--mixed-precision", is_flag=True,
              help="Compute in float16 (float32 weights and head): faster on recent GPUs, slower on CPUs.")
@class_weight_option
@select_option
@patience_option
@resplit_test_option
@click.option("--ensemble", type=click.IntRange(min=2), metavar="K",
              help="Also save models/<task>/ensemble.keras: one model averaging the K best runs' probabilities.")
@click.option("--tensorboard", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write Keras' TensorBoard logs of run k to DIR/run_<k> (tensorboard --logdir DIR).")
@hparams_option
@no_group_option
@min_per_class_option
@config_option
@executor_options
@pass_context
@_reports_errors
def train(ctx: _Context, task_name: str, runs: int, epochs: int, model: str, seed: int | None,
          ratio: tuple[float, ...], image_size: HW | str, resize: str, batch_size: int, weights: str,
          fine_tune: bool, fine_tune_epochs: int, resume: bool, overwrite: bool, mixed_precision: bool,
          class_weight: str, select: str, patience: int | None, resplit_test: bool, ensemble: int | None,
          tensorboard: Path | None, hparams: Path | None,
          no_group: bool, min_per_class: int | None, config: Path | None, executor: str, address: str,
          cpus_per_run: float, gpus_per_run: float, crop_source: str) -> None:
    """Train over repeated re-splits of the pool; keep the run best on validation in models/<task>/."""
    _quiet_tensorflow(ctx)
    from toonvision import train as stage
    from toonvision.tasks import find_config

    options = stage.TrainConfig(
        task=task_name, model=model, runs=runs, epochs=epochs, seed=seed, ratios=ratio,
        image_size=image_size, resize=resize, batch_size=batch_size, group=not no_group, min_per_class=min_per_class,
        weights=None if weights.lower() == "none" else weights, task_config=find_config(config),
        resume=resume, overwrite=overwrite, verbose=ctx.verbose, mixed_precision=mixed_precision,
        fine_tune=fine_tune, fine_tune_epochs=fine_tune_epochs,
        class_weight=class_weight, select=select, patience=patience, resplit_test=resplit_test,
        ensemble=ensemble or 0, tensorboard=tensorboard,
        hparams=hparams,
    )
    with _run_on(executor, address, cpus_per_run, gpus_per_run, crop_source) as runner:
        result = stage.train(ctx.layout, options, progress=ctx.progress, executor=runner)
    if not ctx.quiet:
        click.echo(result.summary())


@main.command(cls=MultiValueCommand)
@task_option
@click.option("--algorithm", type=click.Choice(TUNE_ALGORITHMS), default=DEFAULT_TUNE_ALGORITHM,
              show_default=True, help="keras-tuner's search: Hyperband, random search or Bayesian optimisation.")
@click.option("--max-trials", type=click.IntRange(min=1), default=DEFAULT_TUNE_TRIALS, show_default=True,
              help="Trials (configurations trained) at most; a --resume may raise it.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=DEFAULT_TUNE_EPOCHS, show_default=True,
              help="Epochs per trial (Hyperband: of its longest trials).")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_TUNE_SEED, show_default=True,
              help="Seed of the split (the test split train --seed sets aside) and of the search.")
@click.option("--select", type=click.Choice(TUNE_OBJECTIVES), default=TUNE_OBJECTIVES[0],
              show_default=True, help="The validation metric the search optimises.")
@click.option("--max-blocks", type=click.IntRange(min=2), default=DEFAULT_MAX_BLOCKS, show_default=True,
              help="Most conv blocks a CNN of the space has (each halves the image).")
@ratio_option
@image_size_option
@batch_size_option
@weights_option
@click.option("--resume", is_flag=True, help="Continue an interrupted search in models/<task>/tune/.")
@click.option("--overwrite", is_flag=True, help="Start the search in models/<task>/tune/ again.")
@no_group_option
@min_per_class_option
@config_option
@pass_context
@_reports_errors
def tune(ctx: _Context, task_name: str, algorithm: str, max_trials: int, max_epochs: int, seed: int, select: str,
         max_blocks: int, ratio: tuple[float, ...], image_size: HW, batch_size: int, weights: str, resume: bool,
         overwrite: bool, no_group: bool, min_per_class: int | None, config: Path | None) -> None:
    """Search architectures and hyperparameters (keras-tuner) on one train/validate split; test set aside."""
    _quiet_tensorflow(ctx)
    from toonvision import tune as stage
    from toonvision.tasks import find_config

    options = stage.TuneConfig(
        task=task_name, algorithm=algorithm, max_trials=max_trials, max_epochs=max_epochs, seed=seed, select=select,
        ratios=ratio, image_size=image_size, batch_size=batch_size, group=not no_group, min_per_class=min_per_class,
        max_blocks=max_blocks, weights=None if weights.lower() == "none" else weights, task_config=find_config(config),
        resume=resume, overwrite=overwrite, verbose=ctx.verbose,
    )
    result = stage.tune(ctx.layout, options, progress=ctx.progress)
    if not ctx.quiet:
        click.echo(result.summary())


def _cv_options(command):
    """The options cv and audit share with train: what every fold trains with, and K."""
    for option in reversed((
        task_option,
        click.option("--folds", type=click.IntRange(min=2), default=DEFAULT_FOLDS, show_default=True,
                     help="K: grouped, stratified folds over train+validate (the test split set aside as train does)."),
        click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True),
        model_option,
        click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_CV_SEED, show_default=True,
                     help="Seed of the test split and the folds (fold k trains with seed + k)."),
        ratio_option, image_size_option, resize_option, batch_size_option, weights_option,
        class_weight_option, select_option, patience_option,
        hparams_option,
        click.option("--fine-tune", is_flag=True, help="mobilenetv2: a second phase with the base's top unfrozen."),
        click.option("--fine-tune-epochs", type=click.IntRange(min=1), default=DEFAULT_FINE_TUNE_EPOCHS,
                     show_default=True),
        click.option("--mixed-precision", is_flag=True, help="Compute in float16 (recent GPUs)."),
        no_group_option, min_per_class_option, config_option,
    )):
        command = option(command)
    return command


def _cv_config(ctx: _Context, task_name: str, folds: int, epochs: int, model: str | None, seed: int,
               ratio: tuple[float, ...], image_size: HW | str, resize: str, batch_size: int, weights: str,
               class_weight: str, select: str, patience: int | None, hparams: Path | None, fine_tune: bool,
               fine_tune_epochs: int, mixed_precision: bool, no_group: bool, min_per_class: int | None,
               config: Path | None, resume: bool = False, overwrite: bool = False):
    from toonvision.cv import CVConfig
    from toonvision.tasks import find_config
    from toonvision.train import TrainConfig

    options = TrainConfig(
        task=task_name, model=model, epochs=epochs, seed=seed, ratios=ratio, image_size=image_size, resize=resize,
        batch_size=batch_size, group=not no_group, min_per_class=min_per_class,
        weights=None if weights.lower() == "none" else weights, task_config=find_config(config),
        verbose=ctx.verbose, mixed_precision=mixed_precision, fine_tune=fine_tune, fine_tune_epochs=fine_tune_epochs,
        class_weight=class_weight, select=select, patience=patience, hparams=hparams,
    )
    return CVConfig(options, folds, resume=resume, overwrite=overwrite)


@main.command("cv", cls=MultiValueCommand)
@_cv_options
@click.option("--resume", is_flag=True, help="Continue an interrupted cross-validation in models/<task>/cv/.")
@click.option("--overwrite", is_flag=True, help="Replace the cross-validation in models/<task>/cv/.")
@pass_context
@_reports_errors
def cv_command(ctx: _Context, resume: bool, overwrite: bool, **options: Any) -> None:
    """Grouped, stratified K-fold cross-validation: fold metrics and out-of-fold probabilities in models/<task>/cv/."""
    _quiet_tensorflow(ctx)
    from toonvision import cv as stage

    result = stage.cv(ctx.layout, _cv_config(ctx, resume=resume, overwrite=overwrite, **options),
                      progress=ctx.progress)
    if not ctx.quiet:
        click.echo(result.summary())


@main.command(cls=MultiValueCommand)
@_cv_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help=f"Folder for the audit. [default: <img-dir>/{REPORTS_DIR}/<task>/audit/]")
@pass_context
@_reports_errors
def audit(ctx: _Context, out: Path | None, **options: Any) -> None:
    """Label-issue suspects (cleanlab on cv's out-of-fold probabilities), duplicates and leaks of the split."""
    _quiet_tensorflow(ctx)
    from toonvision import audit as stage

    result = stage.audit(ctx.layout, _cv_config(ctx, **options), out=out, progress=ctx.progress)
    if not ctx.quiet:
        click.echo(result.summary())


def _parse_synth_size(ctx: click.Context, param: click.Parameter, value: str) -> HW:
    from toonvision.synth import (  # loads with the command: start-up time
        MAX_SIZE,
        MIN_SIZE,
    )

    size = _parse_hw(value)
    if not (MIN_SIZE.height <= size.height <= MAX_SIZE.height and MIN_SIZE.width <= size.width <= MAX_SIZE.width):
        raise click.BadParameter(f"{size.as_text()} is outside {MIN_SIZE.as_text()} .. {MAX_SIZE.as_text()} "
                                 "(HEIGHTxWIDTH)")
    return size


def _parse_weights(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                   ) -> tuple[tuple[str, float], ...]:
    parsed = []
    for value in values:
        pattern, sep, weight = value.partition("=")
        if not sep or not pattern.strip() or not _is_number(weight) or float(weight) < 0:
            raise click.BadParameter(f"expected LABEL=WEIGHT with a weight of 0 or more, e.g. toon_horse=2 "
                                     f"or 'cog_lb_*=0'; got {value!r}")
        parsed.append((pattern.strip(), float(weight)))
    return tuple(parsed)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the PNG + XML pairs (default: <img-dir>/raw/screenshots, where extract reads).")
@click.option("--count", type=click.IntRange(min=1), default=DEFAULT_SYNTH_COUNT, show_default=True,
              help="Screenshots to make.")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_SYNTH_SEED, show_default=True,
              help="Same seed, same files; the seed is part of the file names.")
@click.option("--size", callback=_parse_synth_size, default=DEFAULT_SYNTH_SIZE.as_text(), show_default=True,
              metavar="HxW", help="Screenshot height x width in pixels (the same order as --image-size).")
@click.option("--toon-share", type=click.FloatRange(0, 1), metavar="FRACTION",
              help=f"Share of Toons among entities. [default: {DEFAULT_TOON_SHARE:.2f}, as in the original data]")
@click.option("--weight", "weights", multiple=True, callback=_parse_weights, metavar="LABEL=WEIGHT",
              help="Relative weight of labels within their group (Cogs or Toons); globs allowed, 'cog_lb_*=0' "
                   "leaves out Lawbots. Repeatable. Defaults follow the original data: the top two Cogs of each "
                   "suit rare, cats common, horses rare.")
@click.option("--overwrite", is_flag=True, help="Replace synth files of the same name that differ.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default: every core for 32+ screenshots).")
@pass_context
@_reports_errors
def synth(ctx: _Context, out: Path | None, count: int, seed: int, size: HW, toon_share: float | None,
          weights: tuple[tuple[str, float], ...], overwrite: bool, workers: int | None) -> None:
    """Draw synthetic ToonTown street screenshots with labelImg XML (demo and test data)."""
    from toonvision import synth as stage

    config = stage.SynthConfig(count=count, seed=seed, size=size,
                               toon_share=DEFAULT_TOON_SHARE if toon_share is None else toon_share)
    config = stage.with_weights(config, weights)
    result = stage.synthesize(out or ctx.layout.screenshots, config, overwrite=overwrite, workers=workers,
                              progress=ctx.progress)
    if not ctx.quiet:
        click.echo(result.summary())


# -- evaluate, predict, explain, compare ---------------------------------------------------------

unsafe_option = click.option(
    "--unsafe", is_flag=True,
    help="Load models holding Python code (Lambda layers). That code runs on loading: only for files you trust.",
)
classes_option = click.option(
    "--classes", metavar="A,B,...",
    help=f"Class names in the model's output order, for a model without {BEST_INFO} (e.g. Keras 2 HDF5): "
         "bb,lb,cb,sb.",
)
model_argument = click.argument("model", type=click.Path(path_type=Path))


def _quiet_tensorflow(ctx: _Context) -> None:
    """Import TensorFlow with its C++ start-up chatter hidden (shown with --verbose).

    TensorFlow prints absl lines while its libraries load that no log level silences, so the
    process's stderr is pointed at /dev/null for the import only; Python errors still show.
    """
    if ctx.verbose or "tensorflow" in sys.modules:
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@main.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--task", "task_name", help=f"Task of a model without {BEST_INFO} (scored on img/data/<task>/). "
              f"Without MODEL: evaluate models/<task>/{BEST_MODEL}.")
@click.option("--split", type=click.Choice(SPLITS), default=DEFAULT_EVALUATION_SPLIT, show_default=True)
@classes_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for evaluation.json, predictions.csv and the figures. "
                   f"[default: {EVALUATION_DIR}/ beside the model, {EVALUATION_DIR}_<split>/ for another split]")
@click.option("--worst", type=click.IntRange(min=0), default=DEFAULT_WORST, show_default=True,
              help="Most confident mistakes to show in worst_predictions.png.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@unsafe_option
@pass_context
@_reports_errors
def evaluate(ctx: _Context, model: Path | None, task_name: str | None, split: str, classes: str | None,
             out: Path | None, worst: int, batch_size: int, unsafe: bool) -> None:
    """Score MODEL (best.keras or models/<task>/) on the split of the run that produced it."""
    _quiet_tensorflow(ctx)
    from toonvision import evaluate as stage

    result = stage.evaluate(ctx.layout, model, task=task_name, split=split, classes=classes, out=out,
                            unsafe=unsafe, batch_size=batch_size, worst=worst)
    if not ctx.quiet:
        click.echo(result.summary())


@main.command()
@model_argument
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(PREDICTION_FORMATS), default=PREDICTION_FORMATS[0],
              show_default=True)
@classes_option
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@unsafe_option
@pass_context
@_reports_errors
def predict(ctx: _Context, model: Path, paths: tuple[Path, ...], fmt: str, classes: str | None, batch_size: int,
            unsafe: bool) -> None:
    """Classify crops, folders of crops, or screenshots with VOC XML beside them (one row per object).

    MODEL is a .keras/.h5 model or models/<task>/, or an export (.onnx, .tflite, SavedModel folder)."""
    _quiet_tensorflow(ctx)
    from toonvision import predict as stage

    result = stage.predict(model, list(paths), classes=classes, unsafe=unsafe, batch_size=batch_size)
    _echo_problems(ctx, result.problems)
    if result.predictions:
        click.echo(result.format(fmt))
    sys.exit(result.exit_code)


@main.command()
@model_argument
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True,
              help="savedmodel: a TensorFlow SavedModel folder; onnx: for ONNX Runtime; litert: a .tflite file.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Where the export goes. [default: beside the model: best.onnx, best.tflite, best_saved_model/]")
@classes_option
@unsafe_option
@pass_context
@_reports_errors
def export(ctx: _Context, model: Path, fmt: str, out: Path | None, classes: str | None, unsafe: bool) -> None:
    """Export MODEL (preprocessing inside) with a JSON beside it, checked against Keras before it is kept."""
    _quiet_tensorflow(ctx)
    from toonvision import export as stage

    result = stage.export_model(ctx.layout, model, fmt, out=out, classes=classes, unsafe=unsafe)
    if not ctx.quiet:
        click.echo(result.summary())


@main.command()
@model_argument
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--layer", help="Layer for Grad-CAM (name, or outer/inner for a nested base). "
              "[default: the last convolutional layer]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help=f"Folder for the PNG overlays. [default: {EXPLAIN_DIR}/ beside the model]")
@classes_option
@unsafe_option
@pass_context
@_reports_errors
def explain(ctx: _Context, model: Path, images: tuple[Path, ...], layer: str | None, out: Path | None,
            classes: str | None, unsafe: bool) -> None:
    """Grad-CAM heatmaps over each image, one per class, saved as PNG overlays."""
    _quiet_tensorflow(ctx)
    from toonvision import explain as stage

    result = stage.explain(model, list(images), layer=layer, out=out, classes=classes, unsafe=unsafe)
    _echo_problems(ctx, result.problems)
    if not ctx.quiet:
        click.echo(result.summary())
    sys.exit(result.exit_code)


class _CompareCommand(MultiValueCommand):
    """``--models a b c`` as well as ``--models a,b`` or a repeated ``--models``; ``--ratio a b c``."""

    multi_value_options = {"--ratio": " ", "--models": ","}


def _parse_models(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(n for value in values for n in value.replace(" ", ",").split(",") if n)
    known = (*MODEL_NAMES, REFERENCE_MODEL)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(f"unknown model {unknown[0]!r}; choose from {', '.join(known)}")
    return names or DEFAULT_COMPARE_MODELS


@main.command(cls=_CompareCommand)
@task_option
@click.option("--models", multiple=True, callback=_parse_models, metavar="NAME...",
              help=f"Models to compare, e.g. --models {REFERENCE_MODEL} {' '.join(DEFAULT_COMPARE_MODELS)} "
                   f"({REFERENCE_MODEL}: colour histograms + logistic regression, a trivial baseline to beat). "
                   f"[default: {' '.join(DEFAULT_COMPARE_MODELS)}]")
@click.option("--runs", type=click.IntRange(min=1), default=DEFAULT_COMPARE_RUNS, show_default=True,
              help="Shared re-splits: run k of every model uses split k (seed + k).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_COMPARE_SEED, show_default=True,
              help="Seed of run 0.")
@ratio_option
@image_size_option
@resize_option
@batch_size_option
@weights_option
@class_weight_option
@select_option
@patience_option
@resplit_test_option
@no_group_option
@min_per_class_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help=f"Folder for the comparison. [default: models/<task>/{COMPARE_DIR}/]")
@config_option
@executor_options
@pass_context
@_reports_errors
def compare(ctx: _Context, task_name: str, models: tuple[str, ...], runs: int, epochs: int, seed: int,
            ratio: tuple[float, ...], image_size: HW | str, resize: str, batch_size: int, weights: str,
            class_weight: str, select: str, patience: int | None, resplit_test: bool, no_group: bool,
            min_per_class: int | None, out: Path | None, config: Path | None, executor: str, address: str,
            cpus_per_run: float, gpus_per_run: float, crop_source: str) -> None:
    """Train several models on the same re-splits; plot their curves and test metrics side by side."""
    _quiet_tensorflow(ctx)
    from toonvision import compare as stage
    from toonvision.tasks import find_config

    options = stage.CompareConfig(
        task=task_name, models=models, runs=runs, epochs=epochs, seed=seed, ratios=ratio,
        image_size=image_size, resize=resize, batch_size=batch_size, group=not no_group, min_per_class=min_per_class,
        weights=None if weights.lower() == "none" else weights, task_config=find_config(config),
        verbose=ctx.verbose, class_weight=class_weight, select=select, patience=patience, resplit_test=resplit_test,
    )
    with _run_on(executor, address, cpus_per_run, gpus_per_run, crop_source) as runner:
        result = stage.compare(ctx.layout, options, out=out, progress=ctx.progress, executor=runner)
    if not ctx.quiet:
        click.echo(result.summary())


@main.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option("--task", "task_name", help="Report on models/<task>/ (instead of FOLDER).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help=f"The HTML file to write. [default: {REPORT_HTML} in the model's folder]")
@pass_context
@_reports_errors
def report(ctx: _Context, folder: Path | None, task_name: str | None, out: Path | None) -> None:
    """One self-contained HTML page of a trained model (FOLDER: models/<task>/): data, training, scores, mistakes."""
    from toonvision import modelreport as stage

    if (folder is None) == (task_name is None):
        raise UsageError("pass the model's folder (toonvision report models/suit/) or --task, not both")
    path = stage.make_report(ctx.layout, folder if folder is not None else ctx.layout.task_models(task_name), out)
    if not ctx.quiet:
        click.echo(f"wrote {path}")


def _parse_demo_image_size(ctx: click.Context, param: click.Parameter, value: str | None) -> HW:
    return _DEMO.image_size if value is None else _parse_hw(value)


@main.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=_DEMO.root,
              show_default=True, help="A fresh folder for the demo's data and models (never your img/).")
@click.option("--screenshots", type=click.IntRange(min=MIN_SCREENSHOTS), default=_DEMO.screenshots, show_default=True,
              help="Synthetic screenshots to render.")
@click.option("--runs", type=click.IntRange(min=1), default=_DEMO.runs, show_default=True,
              help="Training runs per task.")
@click.option("--epochs", type=click.IntRange(min=1), default=_DEMO.epochs, show_default=True, help="Epochs per run.")
@click.option("--seed", type=click.IntRange(min=0), default=_DEMO.seed, show_default=True,
              help="Seed of the screenshots, the splits and the runs.")
@click.option("--model", type=click.Choice(MODEL_NAMES), default=_DEMO.model, show_default=True)
@click.option("--image-size", callback=_parse_demo_image_size, metavar="HxW",
              help=f"Model input height x width in pixels. [default: {_DEMO.image_size.as_text()}]")
@pass_context
@_reports_errors
def demo(ctx: _Context, root: Path, screenshots: int, runs: int, epochs: int, seed: int, model: str,
         image_size: HW) -> None:
    """Run the whole pipeline on built-in synthetic data in a folder of its own."""
    _quiet_tensorflow(ctx)
    config = DemoConfig(root=root, screenshots=screenshots, seed=seed, runs=runs, epochs=epochs, model=model,
                        image_size=image_size)
    for step in run_demo(config, progress=ctx.progress):
        if not ctx.quiet or step.stage == "done":
            click.echo(f"== {step.stage}\n{step.text}\n")
