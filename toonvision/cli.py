"""The ``toonvision`` command: parse options, call one library function, print its result.

Exit codes: 0 ok, 1 failure (some files had errors, or a stage failed), 2 usage error.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from toonvision.errors import ToonVisionError
from toonvision.layout import Layout

logger = logging.getLogger("toonvision")


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
    root.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--img-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("img"),
              show_default=True, help="Data root: raw/screenshots, unsorted (the pool), data (splits).")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models"),
              show_default=True, help="Where trained models and their reports go.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and Keras' per-epoch output.")
@click.version_option(package_name="toonvision")
@click.pass_context
def main(ctx: click.Context, img_dir: Path, models_dir: Path, quiet: bool, verbose: bool) -> None:
    """ToonVision: labelImg screenshots in, Keras image classifiers out."""
    _configure_logging(quiet, verbose)
    ctx.obj = _Context(Layout.from_dirs(img_dir, models_dir), quiet, verbose)


pass_context = click.make_pass_decorator(_Context)


def _echo_problems(ctx: _Context, problems) -> None:
    """Errors always; warnings unless --quiet."""
    for problem in problems:
        if problem.severity == "error" or not ctx.quiet:
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
