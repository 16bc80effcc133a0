"""predict: preprocessing as training decodes, one row per object of a screenshot, problems not crashes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from toonvision.decode import model_input  # noqa: E402
from toonvision.errors import UsageError  # noqa: E402
from toonvision.predict import format_predictions, predict  # noqa: E402

from colour_models import COLOURS, SIZE, colour_image, colour_model  # noqa: E402
from helpers import voc_xml  # noqa: E402


def test_predict_preprocesses_exactly_as_training_decodes(tmp_path):
    from toonvision import decode
    from toonvision.images import load_image

    path = tmp_path / "crop.png"
    noise = np.random.default_rng(1).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    ours = model_input([load_image(path)], SIZE)[0]
    training = decode.resize(decode.decode_file(str(path)), SIZE).numpy()
    assert ours.dtype == np.float32 and ours.shape == (*SIZE, 3)
    assert np.array_equal(ours, training)


def test_predict_on_a_screenshot_returns_one_row_per_object_with_its_box(tmp_path):
    shot = np.full((48, 64, 3), 128, dtype=np.uint8)
    boxes = [("red", (2, 2, 14, 20), "red"), ("green", (20, 5, 34, 30), "green"), ("red", (40, 10, 60, 40), "blue")]
    for _label, (x0, y0, x1, y1), colour in boxes:
        shot[y0:y1, x0:x1] = COLOURS[colour]
    Image.fromarray(shot).save(tmp_path / "shot.png")
    (tmp_path / "shot.xml").write_text(voc_xml("shot.png", [(label, box) for label, box, _ in boxes]))
    colour_image("blue").save(tmp_path / "crop.png")
    model_file = tmp_path / "m.keras"
    colour_model(("blue", "green", "red")).save(model_file)

    result = predict(model_file, [tmp_path / "shot.png", tmp_path / "crop.png"], classes="blue,green,red")

    rows = [(p.obj, p.box, p.label, p.predicted) for p in result.predictions]
    assert rows == [
        (0, (2, 2, 14, 20), "red", "red"), (1, (20, 5, 34, 30), "green", "green"), (2, (40, 10, 60, 40), "red", "blue"),
        (None, None, None, "blue"),
    ]
    assert result.exit_code == 0
    csv_text = result.format("csv").splitlines()
    assert csv_text[0].split(",")[:9] == [
        "file",
        "object",
        "xmin",
        "ymin",
        "xmax",
        "ymax",
        "label",
        "predicted",
        "confidence",
    ]
    assert len(csv_text) == 5
    data = json.loads(result.format("json"))
    assert data["predictions"][2]["box"] == [40, 10, 60, 40]
    assert set(data["predictions"][0]["probabilities"]) == {"blue", "green", "red"}
    assert "shot.png" in result.format("table")
    by_xml = predict(model_file, [tmp_path / "shot.xml", tmp_path / "shot.png"], classes="blue,green,red")
    assert [p.box for p in by_xml.predictions] == [b for _, b, _ in boxes]  # the XML names its screenshot, once


def test_predict_folder_of_real_screenshots_and_a_bad_file(tmp_path, samples):
    model_file = tmp_path / "m.keras"
    colour_model(("blue", "green", "red")).save(model_file)
    folder = tmp_path / "in"
    shutil.copytree(samples, folder)
    (folder / "broken.png").write_bytes(b"not an image")
    result = predict(model_file, [folder], classes="blue,green,red")
    objects = sum(xml.read_text().count("<object>") for xml in samples.glob("*.xml"))
    assert len([p for p in result.predictions if p.obj is not None]) == objects
    assert any("broken.png" in p.file for p in result.problems)
    assert result.exit_code == 1


def test_format_predictions_rejects_unknown_formats():
    with pytest.raises(UsageError, match="--format"):
        format_predictions([], ("a", "b"), "xml")
