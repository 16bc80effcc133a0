"""export and runtimes: formats round-trip within 1e-4, predict on exports matches Keras, failures leave nothing."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from toonvision import runtimes  # noqa: E402
from toonvision.cli import main  # noqa: E402
from toonvision.constants import EXPORT_FORMATS  # noqa: E402
from toonvision.decode import model_input  # noqa: E402
from toonvision.errors import ExportError, ModelFileError, UsageError  # noqa: E402
from toonvision.explain import explain  # noqa: E402
from toonvision.export import export_model, synthetic_images  # noqa: E402
from toonvision.fsutil import file_sha256  # noqa: E402
from toonvision.modelfile import open_model  # noqa: E402
from toonvision.predict import predict  # noqa: E402
from toonvision.runtimes import export_info_path, export_sha256, open_runtime  # noqa: E402

from colour_models import (  # noqa: E402
    THREE,
    colour_image,
    colour_model,
    colour_pool,
    hand_plan,
    save_best,
)

TINY = (32, 32)
CLASSES = ("bb", "lb", "cb")


def tiny_model(units: int = 3, seed: int = 0, name: str = "tiny") -> keras.Model:
    """A small CNN taking 0..255 RGB at 32x32 (it rescales itself), with random but fixed weights."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*TINY, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def ensemble_model(units: int = 1) -> keras.Model:
    """Like train's ensemble.keras: one functional model averaging its members' outputs."""
    members = [tiny_model(units, seed=k, name=f"member_{k}") for k in range(2)]
    inputs = keras.Input((*TINY, 3), name="image")
    return keras.Model(inputs, keras.layers.Average()([m(inputs) for m in members]), name="ensemble")


def save_model(folder: Path, model: keras.Model, classes: tuple[str, ...], stem: str = "best") -> Path:
    """``<stem>.keras`` and ``<stem>.json`` as train writes them (classes, size, display names, hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.keras"
    model.save(path)
    record = {
        "task": "suit", "classes": list(classes), "display_names": {c: c.upper() for c in classes},
        "image_size": list(TINY), "model_sha256": file_sha256(path),
    }
    (folder / f"{stem}.json").write_text(json.dumps(record))
    return path


def crops(folder: Path, count: int = 5) -> Path:
    """``count`` noise crops of assorted sizes (resized to the model's size on the way in)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        pixels = np.random.default_rng(k).integers(0, 256, (30 + 3 * k, 20 + 5 * k, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"crop{k}.png")
    return folder


def leftovers(folder: Path) -> list[str]:
    """Hidden build folders or temp files an export left."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
@pytest.mark.parametrize("kind", ["tiny", "ensemble"])
def test_each_format_round_trips_within_tolerance_with_its_json(tmp_path, fmt, kind):
    if kind == "tiny":
        model, classes, stem = tiny_model(3), CLASSES, "best"
    else:
        model, classes, stem = ensemble_model(1), ("cog", "toon"), "ensemble"
    source = save_model(tmp_path / "models", model, classes, stem)

    result = export_model(None, source, fmt)

    assert result.path.exists() and result.info_path == export_info_path(result.path)
    assert result.max_difference <= 1e-4 and result.images == 8
    runtime = open_runtime(result.path)
    images = model_input(synthetic_images(TINY, 6, seed=5), TINY)
    expected = open_model(source).probabilities(images)
    got = runtime.probabilities(images)
    assert got.shape == (6, len(classes))
    assert np.max(np.abs(got - expected)) <= 1e-4
    record = json.loads(result.info_path.read_text())
    assert record["format"] == fmt and record["classes"] == list(classes)
    assert record["display_names"] == {c: c.upper() for c in classes}
    assert record["image_size"] == list(TINY) and record["resize"] == "stretch"
    assert record["source"]["sha256"] == file_sha256(source) and record["source"]["format"] == "keras"
    assert record["model_sha256"] == export_sha256(result.path)
    assert record["input"]["shape"] == [None, *TINY, 3] and record["input"]["name"] == runtime.input_name
    assert record["output"]["units"] == (1 if kind == "ensemble" else 3)
    assert {"toonvision", "tensorflow", "keras"} <= set(record["versions"])
    assert record["check"]["max_difference"] == result.max_difference
    assert runtime.info.classes == classes and runtime.info.image_size == TINY and runtime.info.task == "suit"
    assert leftovers(source.parent) == []


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_predict_on_an_export_matches_predict_on_the_keras_model(tmp_path, fmt):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)
    folder = crops(tmp_path / "crops")
    exported = export_model(None, source, fmt).path

    keras_rows = predict(source, [folder]).predictions
    export_rows = predict(exported, [folder]).predictions

    assert [(p.file, p.predicted) for p in export_rows] == [(p.file, p.predicted) for p in keras_rows]
    assert len(export_rows) == 5
    assert np.allclose([p.probabilities for p in export_rows], [p.probabilities for p in keras_rows], atol=1e-4)


def test_cli_exports_then_predicts_csv_with_the_export(tmp_path):
    source = save_model(tmp_path / "models", ensemble_model(1), ("cog", "toon"))
    folder = crops(tmp_path / "crops", 3)
    runner = CliRunner()
    done = runner.invoke(main, ["export", str(source.parent), "--format", "onnx"])
    assert done.exit_code == 0, done.output
    assert "checked on 8 synthetic images" in done.output
    onnx = source.with_suffix(".onnx")

    def rows(model: Path) -> list[dict[str, str]]:
        out = runner.invoke(main, ["predict", str(model), str(folder), "--format", "csv"])
        assert out.exit_code == 0, out.output
        return list(csv.DictReader(io.StringIO(out.output)))

    ours, theirs = rows(onnx), rows(source)
    assert [r["predicted"] for r in ours] == [r["predicted"] for r in theirs] and len(ours) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert abs(float(a["p_toon"]) - float(b["p_toon"])) <= 1e-4
        assert abs(float(a["p_cog"]) + float(a["p_toon"]) - 1) <= 1e-5


@pytest.mark.parametrize("fmt", ["onnx", "savedmodel"])
def test_a_failed_check_deletes_the_export_and_keeps_the_previous_one(tmp_path, monkeypatch, fmt):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)
    good = export_model(None, source, fmt)
    before = export_sha256(good.path), good.info_path.read_text()
    runtime = runtimes.RUNTIMES[fmt]
    real = runtime._raw
    monkeypatch.setattr(runtime, "_raw", lambda self, images: real(self, images) + 2e-3)

    with pytest.raises(ExportError, match=r"differ from Keras' by up to 0\.002"):
        export_model(None, source, fmt)
    assert (export_sha256(good.path), good.info_path.read_text()) == before

    fresh = tmp_path / "models" / ("other.onnx" if fmt == "onnx" else "other")
    result = CliRunner().invoke(main, ["export", str(source), "--format", fmt, "--out", str(fresh)])
    assert result.exit_code == 1 and "0.002" in result.output
    assert not fresh.exists() and not export_info_path(fresh).exists()
    assert leftovers(source.parent) == []


def test_a_missing_converter_or_runtime_names_the_package(tmp_path, monkeypatch):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)
    onnx = export_model(None, source, "onnx").path
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx now raises ImportError
    with pytest.raises(ExportError, match=r"tf2onnx.*pip install 'toonvision\[export\]'"):
        export_model(None, source, "onnx", out=tmp_path / "again.onnx")
    assert not (tmp_path / "again.onnx").exists()
    result = CliRunner().invoke(main, ["export", str(source), "--format", "onnx"])
    assert result.exit_code == 1 and "tf2onnx" in result.output and "toonvision[export]" in result.output

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match="onnxruntime"):
        predict(onnx, [crops(tmp_path / "crops", 1)])

    import tensorflow as tf

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.delattr(tf.lite, "Interpreter")
    with pytest.raises(ExportError, match="ai-edge-litert"):
        export_model(None, source, "litert")
    assert not source.with_suffix(".tflite").exists()


def test_litert_falls_back_to_tensorflows_interpreter(tmp_path, monkeypatch):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    result = export_model(None, source, "litert")
    assert json.loads(result.info_path.read_text())["check"]["runtime"] == "tf.lite"


def test_the_check_uses_the_models_split_crops_when_the_pool_has_them(tmp_path):
    layout, content = colour_pool(tmp_path / "img", THREE)
    best = save_best(layout, colour_model(("blue", "green", "red")), hand_plan(THREE, content))
    result = export_model(layout, best, "onnx")
    assert (result.images, result.images_from) == (8, "crops of the validate split and 5 synthetic images")
    assert json.loads(result.info_path.read_text())["check"]["from"] == result.images_from

    for crop in content:
        (layout.pool / crop).unlink()
    assert export_model(layout, best, "onnx").images_from == "synthetic images"


def test_a_2022_hdf5_model_exports_with_classes(tmp_path):
    model = keras.Sequential([
        keras.Input((*TINY, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="softmax"),
    ])
    model.save(tmp_path / "x.h5")
    legacy = tmp_path / "toonvision_suit.keras"  # the original project saved HDF5 under this name
    (tmp_path / "x.h5").rename(legacy)
    with pytest.raises(UsageError, match="--classes"):
        export_model(None, legacy, "litert")

    result = export_model(None, legacy, "litert", classes="bb,lb,cb,sb")

    assert result.path == tmp_path / "toonvision_suit.tflite"
    record = json.loads(result.info_path.read_text())
    assert record["classes"] == ["bb", "lb", "cb", "sb"] and record["source"]["format"] == "hdf5"
    folder = crops(tmp_path / "crops", 2)
    ours = predict(result.path, [folder]).predictions
    theirs = predict(legacy, [folder], classes="bb,lb,cb,sb").predictions
    assert np.allclose([p.probabilities for p in ours], [p.probabilities for p in theirs], atol=1e-4)


def test_an_export_without_its_json_needs_classes_and_a_foreign_one_is_refused(tmp_path):
    source = save_model(tmp_path / "a", tiny_model(3), CLASSES)
    onnx = export_model(None, source, "onnx").path
    other = export_model(None, save_model(tmp_path / "b", tiny_model(3, seed=4), CLASSES), "onnx").path
    folder = crops(tmp_path / "crops", 2)

    onnx.write_bytes(other.read_bytes())  # the JSON beside it describes another file
    with pytest.raises(ModelFileError, match="not the export best.onnx.json describes"):
        predict(onnx, [folder])

    export_info_path(onnx).unlink()
    with pytest.raises(UsageError, match="--classes"):
        predict(onnx, [folder])
    bare = predict(onnx, [folder], classes="x,y,z")
    assert bare.classes == ("x", "y", "z") and len(bare.predictions) == 2
    with pytest.raises(ModelFileError, match="3 output units but 2 classes"):
        predict(onnx, [folder], classes="x,y")


def test_explain_and_evaluate_refuse_an_export_with_a_clear_message(tmp_path):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)
    colour_image("red").save(tmp_path / "c.png")
    for fmt in ("onnx", "savedmodel"):
        exported = export_model(None, source, fmt).path
        with pytest.raises(ModelFileError, match="`toonvision predict` runs"):
            explain(exported, [tmp_path / "c.png"], save=False)
        result = CliRunner().invoke(main, ["explain", str(exported), str(tmp_path / "c.png")])
        assert result.exit_code == 1 and ".keras model it was exported from" in result.output


def test_out_must_suit_the_format_and_never_replaces_what_is_not_an_export(tmp_path):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)
    with pytest.raises(UsageError, match=r"ends with \.onnx"):
        export_model(None, source, "onnx", out=tmp_path / "model.bin")
    with pytest.raises(UsageError, match=r"ends with \.tflite"):
        export_model(None, source, "litert", out=tmp_path / "model.onnx")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a TensorFlow SavedModel export"):
        export_model(None, source, "savedmodel", out=tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="is the model being exported"):
        export_model(None, source, "savedmodel", out=source)


def test_a_killed_exports_build_folder_is_removed_by_the_next(tmp_path):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)
    stale = source.parent / ".best.tflite.building-999999999-dead"  # no such pid
    (stale / "best.tflite").mkdir(parents=True)
    export_model(None, source, "litert")
    assert leftovers(source.parent) == []


def test_a_mixed_precision_model_is_exported_as_its_float32_twin(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_model(3)
    finally:
        keras.config.set_dtype_policy("float32")
    source = save_model(tmp_path / "models", model, CLASSES)
    result = export_model(None, source, "litert")  # LiteRT's interpreter lacks float16 ops: it would not run
    check = json.loads(result.info_path.read_text())["check"]
    assert result.max_difference <= 1e-4 and 0 < check["float32_difference"] < 1e-2


def test_an_export_that_does_not_run_is_an_export_error_and_leaves_nothing(tmp_path, monkeypatch):
    source = save_model(tmp_path / "models", tiny_model(3), CLASSES)

    def broken(self, images):
        raise RuntimeError("Select TensorFlow op(s) are not supported by this interpreter")

    monkeypatch.setattr(runtimes.LiteRTRuntime, "_raw", broken)
    with pytest.raises(ExportError, match="does not run .Select TensorFlow op"):
        export_model(None, source, "litert")
    assert not source.with_suffix(".tflite").exists() and leftovers(source.parent) == []
