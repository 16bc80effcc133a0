"""The ledger: honest selection, promotion of the best run only, resume checks, repair of a cut promotion.

Finished runs are made by hand (tiny real Keras models with known weights, preset losses), so
what is under test is the ledger alone: which run it promotes and what it leaves alone.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras
import numpy as np
import pytest

import toonvision.ledger
from toonvision.errors import TrainingError, UsageError
from toonvision.fsutil import file_sha256
from toonvision.ledger import (
    BEST_INFO,
    BEST_MODEL,
    HISTORIES,
    LEDGER,
    LEDGER_COLUMNS,
    RUNS_DIR,
    TRAIN_INFO,
    WORK,
    FinishedRun,
    Ledger,
    RunRecord,
    choose_best,
    describe,
    rank_runs,
    save_model,
)
from toonvision.manifest import CropRecord
from toonvision.split import SplitPlan, plan_split
from toonvision.tasks import get_task

IDENTITY = {"task": "binary", "model": "baseline", "epochs": 1, "seed": 100}
CLASSES = ("cog", "toon")


def run(k, val_loss, val_accuracy, test_loss=0.5, test_accuracy=0.5):
    return RunRecord(k, 100 + k, 1, 0.4, 0.8, val_loss, val_accuracy, test_loss, test_accuracy, 1.0)


def tiny_model(value: float) -> keras.Model:
    """A real model whose every weight is ``value``, so the saved file tells which run it came from."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.set_weights([np.full((2, 1), value, "float32"), np.full((1,), value, "float32")])
    return model


def a_plan(seed: int) -> SplitPlan:
    records = [CropRecord(f"{label}/{label}_{i}.png", label, label, i, f"shot{label}{i}.png", 0, 0, 8, 8, 8, 8,
                          f"s{label}{i}", f"c{label}{i}") for label in ("cog_bb_a", "toon_cat") for i in range(5)]
    return plan_split(records, get_task("binary"), (0.6, 0.2, 0.2), seed)


def finished(k: int, val_loss: float, test_loss: float, model: keras.Model | bytes | None = None) -> FinishedRun:
    record = run(k, val_loss, 0.9, test_loss=test_loss, test_accuracy=1.0 - test_loss)
    history = {"loss": [0.4], "val_loss": [val_loss]}
    return FinishedRun(record, history, tiny_model(k + 1.0) if model is None else model, a_plan(100 + k))


def info_of(run: FinishedRun) -> dict:
    """What train's best.json would hold, reduced to what the ledger reads."""
    return {"task": "binary", "run": run.record.run, "seed": run.record.seed}


def weights(path: Path) -> list[np.ndarray]:
    return keras.saving.load_model(path, compile=False).get_weights()


def open_ledger(out: Path, **kwargs):
    return Ledger.open(out, IDENTITY, "pool-1", CLASSES, **kwargs)


# -- selection and promotion -------------------------------------------------------------------


def test_best_json_and_best_keras_are_the_run_best_on_validation_and_worse_runs_leave_them_alone(tmp_path):
    out = tmp_path / "binary"
    out.mkdir()
    # validation losses 0.5, 0.2, 0.9, 0.3; the test losses would choose run 3, then run 2
    runs = [finished(0, 0.5, 0.4), finished(1, 0.2, 0.8), finished(2, 0.9, 0.3), finished(3, 0.3, 0.01)]
    promoted, after_run_1 = [], None
    with open_ledger(out) as ledger:
        for r in runs:
            promoted.append(ledger.commit(r, info_of(r)))
            if r.record.run == 1:
                after_run_1 = ((out / BEST_MODEL).read_bytes(), (out / BEST_INFO).read_bytes())
        assert ledger.best.run == 1 and ledger.next_run == 4 and [r.run for r in ledger.done] == [0, 1, 2, 3]
    assert promoted == [True, True, False, False]
    info = json.loads((out / BEST_INFO).read_text())
    assert info["run"] == 1 and info["seed"] == 101
    assert info["model_sha256"] == file_sha256(out / BEST_MODEL)
    saved, expected = weights(out / BEST_MODEL), tiny_model(2.0).get_weights()
    assert len(saved) == len(expected) == 2
    assert all(np.array_equal(a, b) for a, b in zip(saved, expected, strict=True))
    # runs 2 and 3 (worse on validation; run 3 best on test) did not touch the promoted files
    assert ((out / BEST_MODEL).read_bytes(), (out / BEST_INFO).read_bytes()) == after_run_1
    assert [row.split(",")[0] for row in (out / LEDGER).read_text().splitlines()[1:]] == ["0", "1", "2", "3"]
    assert [json.loads(line)["run"] for line in (out / HISTORIES).read_text().splitlines()] == [0, 1, 2, 3]
    assert not (out / WORK).exists()


def test_a_model_given_as_bytes_becomes_best_keras_byte_for_byte(tmp_path):
    out = tmp_path / "binary"
    out.mkdir()
    save_model(tiny_model(7.0), tmp_path / "worker.keras")
    data = (tmp_path / "worker.keras").read_bytes()
    with open_ledger(out) as ledger:
        ledger.commit(finished(0, 0.5, 0.5, model=data), {"run": 0})
    assert (out / BEST_MODEL).read_bytes() == data
    assert json.loads((out / BEST_INFO).read_text())["model_sha256"] == file_sha256(out / BEST_MODEL)


def test_runs_are_committed_in_order_with_a_best_json_of_their_own(tmp_path):
    with open_ledger(tmp_path) as ledger:
        with pytest.raises(ValueError, match="run 1 committed where run 0 comes next"):
            ledger.commit(finished(1, 0.5, 0.5), {"run": 1})
        with pytest.raises(ValueError, match="names run 3"):
            ledger.commit(finished(0, 0.5, 0.5), {"run": 3})
        assert ledger.next_run == 0 and ledger.best is None


@pytest.mark.parametrize(
    "runs, chosen",
    [
        # run 1 has by far the best test score but a worse validation loss: not chosen
        ([run(0, 0.30, 0.90, test_accuracy=0.70), run(1, 0.35, 0.95, test_loss=0.01, test_accuracy=1.0)], 0),
        # equal validation loss: higher validation accuracy wins
        ([run(0, 0.30, 0.80), run(1, 0.30, 0.90)], 1),
        # equal on both: the earlier run
        ([run(0, 0.30, 0.90), run(1, 0.30, 0.90)], 0),
        # a diverged run (NaN loss) never wins
        ([run(0, math.nan, 1.0), run(1, 2.0, 0.5)], 1),
        ([run(0, 0.7, 0.5)], 0),
    ],
)
def test_choose_best_reads_validation_only(runs, chosen):
    assert choose_best(runs).run == chosen


def scored(k, val_loss, val_accuracy, val_macro_f1, test_macro_f1=0.5):
    return RunRecord(k, 100 + k, 1, 0.4, 0.8, val_loss, val_accuracy, 0.5, 0.5, 1.0, val_macro_f1, test_macro_f1, 1)


# each metric prefers another run: val_loss run 0, val_accuracy run 1, val_macro_f1 run 2 (test would pick run 3)
THREE_WAYS = [scored(0, 0.20, 0.80, 0.60), scored(1, 0.30, 0.95, 0.70), scored(2, 0.40, 0.90, 0.90),
              scored(3, 0.50, 0.70, 0.50, test_macro_f1=1.0)]


@pytest.mark.parametrize("select, chosen, order", [
    ("val_loss", 0, [0, 1, 2, 3]), ("val_accuracy", 1, [1, 2, 0, 3]), ("val_macro_f1", 2, [2, 1, 0, 3]),
])
def test_the_selection_metric_chooses_the_run_it_names(select, chosen, order):
    assert choose_best(THREE_WAYS, select).run == chosen
    assert [r.run for r in rank_runs(THREE_WAYS, select)] == order


def test_selection_ties_go_to_the_lower_validation_loss_and_nan_ranks_last():
    runs = [scored(0, 0.4, 0.9, 0.8), scored(1, 0.3, 0.9, 0.8), scored(2, 0.1, 0.9, math.nan)]
    assert [r.run for r in rank_runs(runs, "val_macro_f1")] == [1, 0, 2]
    with pytest.raises(UsageError, match="--select must be one of"):
        choose_best(runs, "test_accuracy")


def test_the_ledger_promotes_by_its_selection_metric(tmp_path):
    models = [tiny_model(k + 1.0) for k in range(4)]
    with Ledger.open(tmp_path, IDENTITY, "pool-1", CLASSES, select="val_macro_f1") as ledger:
        for r, model in zip(THREE_WAYS, models, strict=True):
            ledger.commit(FinishedRun(r, {"loss": [0.4]}, model, a_plan(r.seed)), {"run": r.run})
        assert ledger.best.run == 2
    assert json.loads((tmp_path / BEST_INFO).read_text())["run"] == 2
    assert all((w == 3.0).all() for w in weights(tmp_path / BEST_MODEL))


def test_runs_keeps_exactly_the_models_of_the_k_best_runs(tmp_path):
    kept = []
    with Ledger.open(tmp_path, IDENTITY, "pool-1", CLASSES, select="val_macro_f1", keep=2) as ledger:
        for r in THREE_WAYS:
            ledger.commit(FinishedRun(r, {"loss": [0.4]}, tiny_model(r.run + 1.0), a_plan(r.seed)), {"run": r.run})
            kept.append(sorted(p.name for p in (tmp_path / RUNS_DIR).iterdir()))
        assert [r.run for r in ledger.members] == [2, 1]
    assert kept == [["run_0.keras"], ["run_0.keras", "run_1.keras"], ["run_1.keras", "run_2.keras"],
                    ["run_1.keras", "run_2.keras"]]
    assert all((w == 3.0).all() for w in weights(tmp_path / RUNS_DIR / "run_2.keras"))
    # a kill between a member's save and its commit leaves a stray model; the resume removes it
    save_model(tiny_model(9.0), tmp_path / RUNS_DIR / "run_4.keras")
    with Ledger.open(tmp_path, IDENTITY, "pool-1", CLASSES, select="val_macro_f1", keep=2, resume=True):
        pass
    assert sorted(p.name for p in (tmp_path / RUNS_DIR).iterdir()) == ["run_1.keras", "run_2.keras"]


def test_choose_best_ignores_test_metrics_entirely():
    runs = [run(0, 0.3, 0.9), run(1, 0.4, 0.9)]
    flipped = [run(0, 0.3, 0.9, 9.0, 0.0), run(1, 0.4, 0.9, 0.0, 1.0)]
    assert choose_best(runs).run == choose_best(flipped).run == 0


# -- resume --------------------------------------------------------------------------------------


def test_a_resume_continues_the_ledger_and_refuses_other_options_or_another_pool(tmp_path):
    with open_ledger(tmp_path) as ledger:
        for r in (finished(0, 0.5, 0.5), finished(1, 0.2, 0.5)):
            ledger.commit(r, info_of(r))
    with pytest.raises(UsageError, match="--resume to continue it or --overwrite"):
        with open_ledger(tmp_path):
            pass
    with pytest.raises(UsageError, match="epochs=1 \\(now 2\\)"):
        with Ledger.open(tmp_path, {**IDENTITY, "epochs": 2}, "pool-1", CLASSES, resume=True):
            pass
    with pytest.raises(UsageError, match="the pool's crops for task 'binary' changed"):
        with Ledger.open(tmp_path, IDENTITY, "pool-2", CLASSES, resume=True):
            pass
    with open_ledger(tmp_path, resume=True) as ledger:
        assert [r.run for r in ledger.done] == [0, 1] and ledger.best.run == 1 and ledger.next_run == 2
        assert [h["run"] for h in ledger.histories] == [0, 1]
    with open_ledger(tmp_path, overwrite=True) as ledger:
        assert ledger.next_run == 0
    assert not (tmp_path / LEDGER).exists() and (tmp_path / BEST_MODEL).exists()  # kept until a new best
    assert json.loads((tmp_path / TRAIN_INFO).read_text())["config"] == IDENTITY


def test_a_damaged_ledger_is_refused_on_resume(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.commit(finished(0, 0.5, 0.5), {"run": 0})
    (tmp_path / LEDGER).write_text("run,seed\n0,x\n")
    with pytest.raises(TrainingError, match="the ledger is damaged"):
        with open_ledger(tmp_path, resume=True):
            pass


def test_a_resume_finishes_a_promotion_cut_between_its_two_renames(tmp_path, monkeypatch):
    real_replace = os.replace

    def cut(src, dst):
        if Path(dst).name == BEST_INFO:
            raise KeyboardInterrupt  # as if killed once best.keras is in place, best.json not yet
        real_replace(src, dst)

    with pytest.raises(KeyboardInterrupt), open_ledger(tmp_path) as ledger:
        ledger.commit(finished(0, 0.5, 0.5), {"run": 0})
        monkeypatch.setattr(toonvision.ledger.os, "replace", cut)
        ledger.commit(finished(1, 0.2, 0.5), {"run": 1})
    assert (tmp_path / WORK / "candidate.json").exists()  # the candidate waits for the resume
    monkeypatch.setattr(toonvision.ledger.os, "replace", real_replace)
    assert json.loads((tmp_path / BEST_INFO).read_text())["run"] == 0  # the old best.json, whole
    with open_ledger(tmp_path, resume=True) as ledger:
        assert ledger.best.run == 1
    info = json.loads((tmp_path / BEST_INFO).read_text())
    assert info["run"] == 1 and info["model_sha256"] == file_sha256(tmp_path / BEST_MODEL)
    assert not (tmp_path / WORK).exists()


# -- files and statistics ------------------------------------------------------------------------


def test_ledger_rows_round_trip_exactly():
    record = RunRecord(3, 8, 25, 0.1 + 0.2, 1 / 3, 0.123456789012345, 0.9, 0.5, 2 / 3, 12.5, 0.7 / 3, 0.1 + 0.7, 4)
    row = dict(zip(list(RunRecord.__dataclass_fields__), record.to_row(), strict=True))
    assert RunRecord.from_row(row) == record


def test_a_runs_csv_from_before_the_macro_f1_columns_still_reads():
    row = dict(zip(LEDGER_COLUMNS[:10], ["0", "5", "2", "0.1", "0.9", "0.2", "0.8", "0.3", "0.7", "1.5"], strict=True))
    record = RunRecord.from_row(row)
    assert (record.run, record.test_accuracy, record.best_epoch) == (0, 0.7, 0)
    assert math.isnan(record.val_macro_f1) and math.isnan(record.test_macro_f1)
    assert LEDGER_COLUMNS[10:] == ("val_macro_f1", "test_macro_f1", "best_epoch")


def test_a_resume_of_a_training_from_before_selection_options_is_refused_clearly(tmp_path):
    with open_ledger(tmp_path) as ledger:  # IDENTITY has no select/class_weight: an older training
        ledger.commit(finished(0, 0.5, 0.5), {"run": 0})
    new = {**IDENTITY, "select": "val_loss", "class_weight": "none", "patience": None, "resplit_test": True}
    with pytest.raises(UsageError, match="older toonvision.*--overwrite"):
        with Ledger.open(tmp_path, new, "pool-1", CLASSES, resume=True):
            pass


def test_saved_model_reloads_and_predicts_exactly(tmp_path):
    from toonvision.models import build_model

    model = build_model("optimized", 2, (48, 44), seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (6, 48, 44, 3)).astype("float32")
    model.fit(x, np.array([[0], [1]] * 3, "float32"), epochs=1, verbose=0)
    path = tmp_path / "best.keras"
    save_model(model, path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_describe_uses_the_population_std_and_zero_for_one_run():
    stats = describe([0.5, 1.0, 0.75, 0.75])
    assert stats == {"mean": 0.75, "median": 0.75, "std": pytest.approx(0.1767767), "min": 0.5, "max": 1.0}
    assert describe([0.3])["std"] == 0.0


def test_describe_ignores_diverged_runs():
    assert describe([0.5, 0.7, math.nan, 0.9]) == {
        "median": 0.7, "mean": pytest.approx(0.7), "std": pytest.approx(0.163299, rel=1e-4), "min": 0.5, "max": 0.9}
    assert describe([0.5, None, 0.7]) == describe([0.7, 0.5])
    assert math.isnan(describe([])["median"])
