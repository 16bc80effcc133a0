"""Grad-CAM: heatmaps the image's size, in [0, 1], one per class, also through a nested MobileNetV2 base."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toonvision.cli import main  # noqa: E402
from toonvision.decode import model_input  # noqa: E402
from toonvision.errors import UsageError  # noqa: E402
from toonvision.explain import (  # noqa: E402
    explain,
    find_conv_layer,
    find_layer,
    gradcam,
    image_heatmap,
    resize_heatmap,
)
from toonvision.modelfile import LoadedModel, ModelInfo  # noqa: E402
from toonvision.models import build_model  # noqa: E402

from colour_models import COLOURS, SIZE, colour_image, colour_model  # noqa: E402
from helpers import voc_xml  # noqa: E402


def loaded(model, classes, size=SIZE) -> LoadedModel:
    return LoadedModel(model, ModelInfo(Path("model.keras"), tuple(classes), size))


def half_and_half(left: str, right: str, size=(20, 30)) -> Image.Image:
    """``left`` colour on the left half, ``right`` on the right; ``size`` is (width, height)."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 2] = COLOURS[left]
    pixels[:, size[0] // 2 :] = COLOURS[right]
    return Image.fromarray(pixels)


@pytest.mark.parametrize("classes", [("blue", "green", "red"), ("green", "red")], ids=["softmax", "sigmoid"])
def test_heatmaps_have_the_image_size_values_in_0_1_and_point_at_each_class(classes):
    image = half_and_half("red", "green", size=(20, 30))
    model = loaded(colour_model(classes), classes)
    e = gradcam(model, image)

    assert len(e.heatmaps) == len(classes)
    for heatmap in e.heatmaps:
        assert heatmap.shape == (30, 20)
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    red, green = e.heatmaps[classes.index("red")], e.heatmaps[classes.index("green")]
    assert not np.allclose(red, green)
    assert red[:, :8].mean() > 0.9 > 0.3 > red[:, 12:].mean()  # red is on the left
    assert green[:, 12:].mean() > 0.9 > 0.3 > green[:, :8].mean()
    assert np.allclose(e.probabilities, model.probabilities(model_input([image], SIZE))[0], atol=1e-6)


def test_last_convolution_is_found_inside_a_nested_mobilenetv2_base():
    model = build_model("mobilenetv2", 3, (64, 64), weights=None, seed=0)
    path = find_conv_layer(model)
    assert len(path) == 2 and path[1] == "Conv_1"  # (the MobileNetV2 base, its last convolution)
    assert find_layer(model, "Conv_1") == path
    e = gradcam(loaded(model, ("a", "b", "c"), (64, 64)), colour_image("red", size=(40, 50)), path)
    assert [h.shape for h in e.heatmaps] == [(50, 40)] * 3
    assert all(0.0 <= h.min() and h.max() <= 1.0 for h in e.heatmaps)


def test_project_baseline_model_and_layer_choice():
    model = build_model("baseline", 2, (48, 48), weights=None, seed=0)
    assert find_conv_layer(model) == ("conv_3",)
    e = gradcam(loaded(model, ("a", "b"), (48, 48)), colour_image("blue", size=(30, 60)), find_layer(model, "conv_2"))
    assert [h.shape for h in e.heatmaps] == [(60, 30)] * 2
    with pytest.raises(UsageError, match="conv_1"):  # the message lists the layers to choose from
        find_layer(model, "no_such_layer")
    with pytest.raises(UsageError, match="Grad-CAM needs"):
        find_layer(model, "head")


def test_model_without_convolution_is_a_clear_error():
    inputs = keras.Input((*SIZE, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(UsageError, match="--layer"):
        find_conv_layer(keras.Model(inputs, outputs))


def test_resize_heatmap_keeps_values_in_range():
    cam = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    resized = resize_heatmap(cam, (7, 3))
    assert resized.shape == (7, 3) and resized.min() >= 0 and resized.max() <= 1


def test_a_padded_models_heatmap_covers_the_image_not_the_bands():
    """A model trained with --resize pad sees a tall crop between zero bands: the overlay keeps the part over it."""
    cam = np.zeros((32, 32), np.float32)
    cam[:, 10:20] = 1.0  # hot exactly where a 60x20 crop lies in a padded 32x32 input (columns 10..19)
    over_image = image_heatmap(cam, (60, 20), (32, 32), "pad")
    assert over_image.shape == (60, 20) and over_image.min() > 0.99  # the whole crop is hot
    stretched = image_heatmap(cam, (60, 20), (32, 32), "stretch")
    assert stretched[:, :5].max() < 0.01 and stretched[:, 8:12].min() > 0.99  # stretched: only the middle


def test_gradcam_feeds_a_padded_model_padded_input():
    classes = ("green", "red")
    model = colour_model(classes)
    image = colour_image("red", size=(8, 40))  # 5:1 into 24x16: a 24x4 strip between zero bands
    info = ModelInfo(Path("model.keras"), classes, SIZE, resize="pad")
    e = gradcam(LoadedModel(model, info), image)
    expected = LoadedModel(model, info).probabilities(model_input([image], SIZE, "pad"))[0]
    assert np.allclose(e.probabilities, expected, atol=1e-6)
    stretched = LoadedModel(model, info).probabilities(model_input([image], SIZE))[0]
    assert not np.allclose(e.probabilities, stretched, atol=1e-3)
    assert e.heatmaps[0].shape == (40, 8)


def test_explain_writes_one_png_per_image_and_per_screenshot_object(tmp_path):
    model_file = tmp_path / "m.keras"
    colour_model(("blue", "green", "red")).save(model_file)
    half_and_half("red", "blue").save(tmp_path / "crop.png")
    shot = np.full((48, 64, 3), 100, dtype=np.uint8)
    shot[5:40, 5:25] = COLOURS["green"]
    Image.fromarray(shot).save(tmp_path / "shot.png")
    (tmp_path / "shot.xml").write_text(voc_xml("shot.png", [("toon_cat", (5, 5, 25, 40))]))
    out = tmp_path / "explained"

    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(model_file),
            str(tmp_path / "crop.png"),
            str(tmp_path / "shot.png"),
            "--classes",
            "blue,green,red",
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["crop_gradcam.png", "shot_obj0_toon_cat_gradcam.png"]
    with Image.open(out / "crop_gradcam.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert "layer conv" in result.output


def test_explain_library_call_reports_unreadable_images(tmp_path):
    model_file = tmp_path / "m.keras"
    colour_model(("green", "red")).save(model_file)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    colour_image("red").save(tmp_path / "ok.png")
    result = explain(model_file, [tmp_path / "bad.png", tmp_path / "ok.png"], classes="green,red", save=False)
    assert [Path(e.file).name for e in result.explanations] == ["ok.png"]
    assert result.explanations[0].predicted == "red"
    assert result.exit_code == 1 and "bad.png" in result.problems[0].file
