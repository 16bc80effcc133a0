"""modelfile: HDF5 told from .keras by content, Lambda layers refused, a model checked against its classes."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from toonvision.cli import main  # noqa: E402
from toonvision.decode import model_input  # noqa: E402
from toonvision.errors import ModelFileError, UsageError  # noqa: E402
from toonvision.modelfile import load_model, open_model  # noqa: E402
from toonvision.predict import predict  # noqa: E402

from colour_models import (  # noqa: E402
    SIZE,
    TWO,
    colour_image,
    colour_model,
    colour_pool,
    hand_plan,
    save_best,
)


def test_hdf5_model_renamed_keras_loads_and_predicts(tmp_path):
    model = keras.Sequential([
        keras.Input((*SIZE, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="softmax"),
    ])
    model.save(tmp_path / "x.h5")
    legacy = tmp_path / "toonvision_suit.keras"  # the original project's habit
    (tmp_path / "x.h5").rename(legacy)
    assert legacy.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"

    loaded = open_model(legacy, classes="bb,lb,cb,sb")
    assert loaded.info.legacy and loaded.info.image_size == SIZE and loaded.info.classes == ("bb", "lb", "cb", "sb")
    images = model_input([colour_image("red"), colour_image("blue")], SIZE)
    assert np.allclose(loaded.probabilities(images), model.predict(images, verbose=0), atol=1e-6)
    colour_image("red").save(tmp_path / "c.png")
    assert len(predict(legacy, [tmp_path / "c.png"], classes="bb,lb,cb,sb").predictions) == 1

    with pytest.raises(UsageError, match="--classes"):
        open_model(legacy)
    with pytest.raises(ModelFileError, match="4 output units but 3 classes"):
        open_model(legacy, classes="a,b,c")



def test_a_lambda_layer_is_refused_unless_unsafe(tmp_path):
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x)).save(tmp_path / "lam.keras")
    with pytest.raises(ModelFileError, match="--unsafe"):
        load_model(tmp_path / "lam.keras")
    assert load_model(tmp_path / "lam.keras", unsafe=True).output_shape == (None, 1)
    colour_image("red").save(tmp_path / "c.png")
    refused = CliRunner().invoke(main, ["predict", str(tmp_path / "lam.keras"), str(tmp_path / "c.png"),
                                        "--classes", "a,b"])
    assert refused.exit_code == 1 and "--unsafe" in refused.output and "Traceback" not in refused.output
    allowed = CliRunner().invoke(main, ["predict", str(tmp_path / "lam.keras"), str(tmp_path / "c.png"),
                                        "--classes", "a,b", "--unsafe", "--format", "csv"])
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such model file"),
        (lambda p: p.write_bytes(b"hello, not a model"), "not a Keras model"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated zip"), "cannot load"),
    ],
)
def test_bad_model_files_are_clear_errors(tmp_path, make, message):
    path = tmp_path / "best.keras"
    make(path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_model_and_best_json_that_disagree_are_refused(tmp_path):
    layout, content = colour_pool(tmp_path / "img", TWO)
    plan = hand_plan(TWO, content)
    best = save_best(layout, colour_model(("blue", "green", "red")), plan)  # 3 outputs, 2 classes
    with pytest.raises(ModelFileError, match="3 output units but 2 classes"):
        open_model(best)
    with pytest.raises(UsageError, match="disagrees"):
        open_model(best, classes="red,green")

