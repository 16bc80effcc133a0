"""``toonvision demo``: the whole pipeline on built-in synthetic data, in a folder of its own.

    toonvision-demo/                 (--root; made fresh, never a folder with your data)
    ├── .toonvision-demo             marker: only folders with it are reused
    ├── img/raw/screenshots/         synthetic street scenes + labelImg XML
    ├── img/unsorted/                the crop pool
    ├── img/data/<task>/             the split of each task's chosen run
    ├── img/reports/pool/            balance-report tables and figures
    └── models/<task>/               best.keras, best.json, runs.csv, plots, evaluation/, report.html

Re-running reuses what is already there (synth and extract add nothing new) and retrains.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toonvision.constants import DEFAULT_MODEL, DEFAULT_RATIOS, HW
from toonvision.errors import UsageError
from toonvision.layout import Layout
from toonvision.modelreport import REPORT_HTML, make_report

MARKER = ".toonvision-demo"
MIN_SCREENSHOTS = 20  # fewer may leave a suit out


@dataclass(frozen=True)
class DemoConfig:
    """What the demo makes and trains; the CLI's defaults are these."""

    # Chosen by measurement (README, `toonvision demo`): 132x44 has a twentieth of the pixels of 600x200, so
    # 300 screenshots and 3 runs of 20 epochs took about 65 CPU seconds and ended at 0.99 binary and 0.98 suit
    # test accuracy (seeds 0 and 1); 150 screenshots and 2 runs of 4 epochs at 600x200 ended at 0.73 suit.
    root: Path = Path("toonvision-demo")
    screenshots: int = 300
    seed: int = 0
    runs: int = 3
    epochs: int = 20
    tasks: tuple[str, ...] = ("binary", "suit")
    model: str = DEFAULT_MODEL
    image_size: HW = HW(132, 44)  # 3:1 like 600x200; the smallest side the baseline takes is 44

    def __post_init__(self) -> None:
        if self.screenshots < MIN_SCREENSHOTS:
            raise UsageError(f"--screenshots must be at least {MIN_SCREENSHOTS} so every suit appears, "
                             f"got {self.screenshots}")
        if self.runs < 1 or self.epochs < 1:
            raise UsageError("--runs and --epochs must be at least 1")


@dataclass(frozen=True)
class DemoStep:
    """One finished stage: its name and what it printed."""

    stage: str
    text: str


def demo_layout(root: Path) -> Layout:
    root = Path(root)
    return Layout.from_dirs(root / "img", root / "models")


def run_demo(config: DemoConfig, progress: bool = False) -> Iterator[DemoStep]:
    """Synthesise, extract, balance-report, split, train, evaluate, report; yield each stage's summary as it ends."""
    from toonvision import evaluate, extract, report, split, synth, tasks, train

    layout = _prepare(config.root)
    made = synth.synthesize(
        layout.screenshots, synth.SynthConfig(count=config.screenshots, seed=config.seed), progress=progress
    )
    yield DemoStep("synth", made.summary())
    extracted = extract.extract(layout, extract.ExtractOptions(), progress=progress)
    yield DemoStep("extract", extracted.summary())
    balance = report.balance_report(layout, None)
    written = report.write_balance_report(balance, layout.report_dir(None))
    yield DemoStep("balance-report", f"{balance.table()}\nfigures: {_folders(written)}")
    for name in config.tasks:
        task = tasks.get_task(name)
        made_split = split.run_split(layout, task, DEFAULT_RATIOS, seed=config.seed)
        yield DemoStep(f"split {name}", made_split.summary())
        trained = train.train(layout, train.TrainConfig(
            task=name, model=config.model, runs=config.runs, epochs=config.epochs, seed=config.seed,
            image_size=config.image_size, overwrite=True,
        ), progress=progress)
        yield DemoStep(f"train {name}", trained.summary())
        scored = evaluate.evaluate(layout, layout.task_models(name))
        yield DemoStep(f"evaluate {name}", scored.summary())
        yield DemoStep(f"report {name}", f"wrote {make_report(layout, layout.task_models(name))}")
    yield DemoStep("done", _where(layout, config))


def _prepare(root: Path) -> Layout:
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise UsageError(
            f"{root} exists and was not made by `toonvision demo`; the demo never writes into a folder "
            "that may hold your data. Pass --root with a new folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).touch()
    return demo_layout(root)


def _folders(paths: list[Path]) -> str:
    return ", ".join(sorted({str(p.parent) for p in paths})) or "none"


def _where(layout: Layout, config: DemoConfig) -> str:
    lines = [f"everything is under {Path(config.root).absolute()}:"]
    lines.append(f"  screenshots   {layout.screenshots}")
    lines.append(f"  crop pool     {layout.pool}")
    for name in config.tasks:
        lines.append(f"  {name:<13} model {layout.best_model(name)}, plots and runs.csv in "
                     f"{layout.task_models(name)}, evaluation in {layout.evaluation_dir(name)}")
        lines.append(f"  {'':<13} report {layout.task_models(name) / REPORT_HTML} (open it in a browser)")
    root, task = config.root, config.tasks[-1]
    lines.append(f"try: toonvision --img-dir {root}/img --models-dir {root}/models predict {root}/models/{task} "
                 f"{root}/img/data/{task}/test")
    lines.append("your own data: put labelImg screenshots + XML in img/raw/screenshots, then `toonvision extract` "
                 "and `toonvision train --task label --runs 3` (one class per label)")
    return "\n".join(lines)
