"""compare: every model trains on the same split for run k, and the comparison is drawn and tabled."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from toonvision import compare as compare_module  # noqa: E402
from toonvision.cli import main  # noqa: E402
from toonvision.compare import CompareConfig, compare, mean_curves, split_digest  # noqa: E402
from toonvision.errors import UsageError  # noqa: E402
from toonvision.ledger import FinishedRun, RunRecord  # noqa: E402

from helpers import write_colour_pool  # noqa: E402


def fake_run(seen):
    """Stands in for training: records (model, k, plan) and returns metrics that depend on the split."""

    def run(layout, config, plan, k, weights):
        seen.append((config.model, k, plan))
        accuracy = 0.5 + 0.1 * k + (0.05 if config.model == "optimized" else 0.0)
        record = RunRecord(k, config.seed + k, config.epochs, 0.6, accuracy, 0.7, accuracy, 0.8, accuracy, 0.01)
        history = {"accuracy": [0.5, accuracy], "val_accuracy": [0.4, accuracy], "loss": [0.9, 0.6],
                   "val_loss": [1.0, None]}
        return FinishedRun(record, history, b"", plan)

    return run


def test_run_k_of_every_model_uses_the_same_split(tmp_path, monkeypatch):
    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "toon_cat": 6})
    seen = []
    monkeypatch.setattr(compare_module, "train_run", fake_run(seen))
    config = CompareConfig(task="binary", models=("baseline", "optimized"), runs=3, epochs=2, seed=11,
                           image_size=(48, 44), batch_size=4)

    result = compare(layout, config)

    assert [(m, k) for m, k, _ in seen] == [(m, k) for k in range(3) for m in ("baseline", "optimized")]
    plans = {(m, k): plan for m, k, plan in seen}
    for k in range(3):
        assert plans["baseline", k].assignments == plans["optimized", k].assignments
        assert plans["baseline", k].seed == 11 + k
    assert plans["baseline", 0].assignments != plans["baseline", 1].assignments  # a re-split per run
    tests = {frozenset(a.crop for a in plan.files("test")) for plan in plans.values()}
    assert len(tests) == 1  # one fixed test split for every run of every model
    digests = {(r.model, r.record.run): r.split for r in result.runs}
    assert digests["baseline", 0] == digests["optimized", 0] == split_digest(plans["baseline", 0])
    assert digests["baseline", 1] != digests["baseline", 0]

    out = layout.task_models("binary") / "compare"
    assert {p.name for p in result.files} == {
        "compare.json", "compare_runs.csv", "compare_histories.jsonl", "compare_curves.png", "compare_boxplots.png"}
    saved = json.loads((out / "compare.json").read_text())
    assert saved["statistics"]["optimized"]["test_accuracy"]["median"] == pytest.approx(0.65)
    assert saved["statistics"]["baseline"]["test_accuracy"]["mean"] == pytest.approx(0.6)
    assert len(saved["runs"]) == 6 and saved["config"]["seed"] == 11
    assert len((out / "compare_runs.csv").read_text().splitlines()) == 7
    table = result.table()
    assert "baseline" in table and "optimized" in table and "0.6500" in table
    assert not list(out.glob("*.tmp"))


def test_compare_trains_for_real(tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "toon_cat": 6})
    config = CompareConfig(task="binary", models=("optimized",), runs=1, epochs=1, seed=2,
                           image_size=(48, 44), batch_size=4)
    result = compare(layout, config, out=tmp_path / "cmp")
    (run,) = result.runs
    assert run.model == "optimized" and math.isfinite(run.record.test_loss)
    assert len(run.history["loss"]) == 1
    assert (tmp_path / "cmp" / "compare_boxplots.png").is_file()
    assert not (layout.task_models("binary") / "best.keras").exists()  # compare keeps no model


def test_mean_curves_average_each_epoch_over_runs():
    histories = [
        {"accuracy": [0.5, 0.7], "loss": [1.0, None]},
        {"accuracy": [0.7, 0.9, 1.0], "loss": [0.8, 0.6]},
    ]
    curves = mean_curves(histories)
    assert curves["accuracy"] == pytest.approx([0.6, 0.8, 1.0])
    assert curves["loss"] == pytest.approx([0.9, 0.6])  # a diverged epoch (None) is left out
    assert "val_loss" not in curves


@pytest.mark.parametrize(
    "models, message",
    [((), "at least one"), (("baseline", "baseline"), "twice"), (("vgg",), "unknown model")],
)
def test_bad_model_lists_are_usage_errors(models, message):
    with pytest.raises(UsageError, match=message):
        CompareConfig(task="binary", models=models)


@pytest.mark.parametrize(
    "argv, models",
    [
        (["--models", "baseline", "optimized"], ("baseline", "optimized")),
        (["--models", "baseline,mobilenetv2", "--runs", "3"], ("baseline", "mobilenetv2")),
        (["--models", "optimized", "--models", "baseline"], ("optimized", "baseline")),
        ([], ("baseline", "optimized")),
    ],
)
def test_cli_reads_a_list_of_models(tmp_path, monkeypatch, argv, models):
    captured = {}

    def fake_compare(layout, config, out=None, progress=False, executor=None):
        captured["config"] = config
        return compare_module.CompareResult(config, ("a", "b"), (), tmp_path)

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    result = CliRunner().invoke(main, ["compare", "--task", "binary", *argv, "--ratio", "0.6", "0.2", "0.2"])
    assert result.exit_code == 0, result.output
    assert captured["config"].models == models
    assert captured["config"].ratios == (0.6, 0.2, 0.2)


def test_cli_refuses_an_unknown_model():
    result = CliRunner().invoke(main, ["compare", "--task", "binary", "--models", "baseline", "vgg"])
    assert result.exit_code == 2 and "vgg" in result.output


# -- the reference model -----------------------------------------------------------------------------


def test_compare_with_the_reference_writes_its_rows_beside_the_networks(tmp_path, monkeypatch):
    import csv

    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 8, "cog_lb_b": 8, "toon_cat": 8})
    seen = []
    monkeypatch.setattr(compare_module, "train_run", fake_run(seen))
    config = CompareConfig(task="label", models=("reference", "baseline"), runs=2, epochs=2, seed=4, batch_size=4)
    assert config.image_size == "auto"  # the generic task's default

    result = compare(layout, config, out=tmp_path / "cmp")

    assert [m for m, _, _ in seen] == ["baseline", "baseline"]  # the reference never goes through train_run
    assert result.config.image_size == (48, 48) and seen[0][2].seed == 4  # auto: 48x40 crops, baseline's floor
    assert [(r.model, r.record.run) for r in result.runs] == [("reference", 0), ("baseline", 0),
                                                               ("reference", 1), ("baseline", 1)]
    reference = [r for r in result.runs if r.model == "reference"]
    assert [r.split for r in reference] == [r.split for r in result.runs if r.model == "baseline"]
    assert all(r.history == {} and r.record.test_accuracy == 1.0 for r in reference)
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare_runs.csv").open()))
    assert [row["model"] for row in rows] == ["reference", "baseline", "reference", "baseline"]
    assert [row["epochs"] for row in rows] == ["n/a", "2", "n/a", "2"]
    assert float(rows[0]["test_macro_f1"]) == 1.0 and float(rows[2]["val_macro_f1"]) == 1.0
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["config"]["models"] == ["reference", "baseline"] and saved["config"]["image_size"] == [48, 48]
    assert saved["runs"][0]["epochs"] is None and saved["runs"][0]["test_macro_f1"] == 1.0
    assert saved["statistics"]["reference"]["test_macro_f1"]["median"] == 1.0
    assert saved["statistics"]["reference"]["test_accuracy"]["mean"] == 1.0
    histories = [json.loads(line) for line in (tmp_path / "cmp" / "compare_histories.jsonl").read_text().splitlines()]
    assert histories[0] == {"model": "reference", "run": 0, "seed": 4, "history": {}}
    assert "reference" in result.table() and "test macro-F1" in result.table()


def test_compare_scores_a_real_network_with_macro_f1_too(tmp_path):
    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "toon_cat": 6})
    config = CompareConfig(task="binary", models=("reference", "baseline"), runs=1, epochs=1, seed=2,
                           image_size=(48, 44), resize="pad", batch_size=4)
    result = compare(layout, config, out=tmp_path / "cmp")
    reference, baseline = result.runs
    assert reference.metric("test_macro_f1") == 1.0
    assert 0.0 <= baseline.metric("test_macro_f1") <= 1.0 and 0.0 <= baseline.metric("val_macro_f1") <= 1.0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["config"]["resize"] == "pad"


def test_the_cli_takes_the_reference_as_a_model(tmp_path, monkeypatch):
    captured = {}

    def fake_compare(layout, config, out=None, progress=False, executor=None):
        captured["config"] = config
        return compare_module.CompareResult(config, ("a", "b"), (), tmp_path)

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    result = CliRunner().invoke(main, ["compare", "--task", "label", "--models", "reference", "baseline",
                                       "--resize", "pad"])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.models, config.image_size, config.resize) == (("reference", "baseline"), "auto", "pad")
    assert CompareConfig(task="binary", models=("reference",)).networks == ()


def test_resplit_test_draws_the_test_split_again_per_run(tmp_path, monkeypatch):
    layout, _ = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "toon_cat": 6})
    seen = []
    monkeypatch.setattr(compare_module, "train_run", fake_run(seen))
    config = CompareConfig(task="binary", models=("baseline",), runs=3, epochs=1, seed=11, image_size=(48, 44),
                           batch_size=4, resplit_test=True, class_weight="none", select="val_macro_f1")
    compare(layout, config)
    assert len({frozenset(a.crop for a in plan.files("test")) for _, _, plan in seen}) == 3
    trained = config.train_config("baseline")
    assert (trained.resplit_test, trained.class_weight, trained.select) == (True, "none", "val_macro_f1")
