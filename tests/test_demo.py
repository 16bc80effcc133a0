"""``toonvision demo``: the whole pipeline in a folder of its own, which it never takes from the user."""

from __future__ import annotations

from toonvision.cli import main
from toonvision.demo import MARKER, DemoConfig, run_demo

from helpers import cli, tree

TINY = dict(screenshots=20, runs=1, epochs=1, tasks=("binary",), image_size=(48, 44))


def test_demo_refuses_a_folder_it_did_not_make_and_leaves_it_byte_for_byte(tmp_path):
    root = tmp_path / "mine"
    (root / "img" / "unsorted").mkdir(parents=True)
    (root / "img" / "unsorted" / "manifest.csv").write_text("crop,label\ncog/cog_bb_a_0.png,cog_bb_a\n")
    (root / "notes.txt").write_bytes(b"hours of labelling\n")
    before = tree(root)
    result = cli("demo", "--root", root, expect=2)
    assert "was not made by `toonvision demo`" in result.output and "Traceback" not in result.output
    assert tree(root) == before and not (root / MARKER).exists()
    assert sorted(p.name for p in root.rglob("*")) == ["img", "manifest.csv", "notes.txt", "unsorted"]


def test_demo_runs_every_stage_and_a_rerun_reuses_its_screenshots_and_pool(tmp_path):
    root = tmp_path / "demo"
    made_steps = list(run_demo(DemoConfig(root=root, **TINY)))
    steps = [step.stage for step in made_steps]
    assert steps == ["synth", "extract", "balance-report", "split binary", "train binary", "evaluate binary",
                     "report binary", "done"]
    done = made_steps[-1].text
    assert f"report {root / 'models' / 'binary' / 'report.html'}" in done
    assert (root / "models" / "binary" / "report.html").is_file()
    assert f"predict {root}/models/binary {root}/img/data/binary/test" in done
    own = done.splitlines()[-1]
    assert own.startswith("your own data: put labelImg screenshots + XML in img/raw/screenshots")
    assert "`toonvision extract`" in own and "`toonvision train --task label --runs 3`" in own
    assert (root / MARKER).exists()
    assert (root / "models" / "binary" / "best.keras").is_file()
    assert (root / "models" / "binary" / "evaluation" / "evaluation.json").is_file()
    made = {name: data for name, data in tree(root / "img").items() if name.startswith(("raw/", "unsorted/"))}

    again = run_demo(DemoConfig(root=root, **TINY))  # its own folder: accepted
    synth, extract = next(again), next(again)
    again.close()
    assert (synth.stage, extract.stage) == ("synth", "extract")
    now = {name: data for name, data in tree(root / "img").items() if name.startswith(("raw/", "unsorted/"))}
    assert now == made  # the same screenshots and pool, nothing added


def test_demo_help_shows_the_measured_defaults_and_the_model_and_size_options():
    text = " ".join(cli("demo", "--help").output.split())  # help wraps at 80 columns
    config = DemoConfig()
    for option, default in (("--screenshots", config.screenshots), ("--runs", config.runs),
                            ("--epochs", config.epochs), ("--model", config.model),
                            ("--image-size", f"{config.image_size.height}x{config.image_size.width}")):
        assert option in text and f"default: {default}" in text
    with main.commands["demo"].make_context("demo", []) as ctx:  # what a bare `toonvision demo` runs with
        assert (ctx.params["model"], ctx.params["image_size"]) == (config.model, config.image_size)
