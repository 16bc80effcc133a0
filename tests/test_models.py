"""Model builders: the original architecture, the heads, fresh optimizers, ImageNet weights, fine-tuning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from toonvision.errors import TrainingError, UsageError  # noqa: E402
from toonvision.models import (  # noqa: E402
    LEARNING_RATE,
    MOBILENET_WEIGHTS_ORIGIN,
    MODEL_NAMES,
    Hyperparameters,
    build_from_hparams,
    build_model,
    default_dropout,
    get_model_spec,
    mobilenet_weights_file_name,
    resolve_mobilenet_weights,
    unfreeze_top,
)

REPO = Path(__file__).resolve().parents[1]
UNROUTABLE = "http://127.0.0.1:9/"  # the discard port: refused at once, so a download fails as offline would

SMALL = (48, 44)


def colour_batch(num_classes: int, per_class: int = 12, size=SMALL, seed: int = 0):
    """Images 0..255 whose class is their colour (plus noise): an easy, learnable set."""
    rng = np.random.default_rng(seed)
    colours = np.array([(220, 40, 40), (40, 70, 220), (40, 190, 60), (230, 200, 40)])[:num_classes]
    labels = np.repeat(np.arange(num_classes), per_class)
    images = colours[labels][:, None, None, :] + rng.integers(-40, 41, (len(labels), *size, 3))
    y = labels.astype("float32")[:, None] if num_classes == 2 else labels.astype("int32")
    return np.clip(images, 0, 255).astype("float32"), y


def test_baseline_is_the_original_network_with_25537_parameters():
    model = build_model("baseline", 2, (600, 200))
    assert model.count_params() == 25_537
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer", "Rescaling", "MaxPooling2D",
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
        "Flatten", "Dense",
    ]
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [16, 32, 32]


@pytest.mark.parametrize(
    "classes, units, activation, loss",
    [
        (2, 1, "sigmoid", "binary_crossentropy"),
        (4, 4, "softmax", "sparse_categorical_crossentropy"),
    ],
)
def test_head_and_loss_follow_the_number_of_classes(classes, units, activation, loss):
    model = build_model("baseline", classes, SMALL)
    head = model.layers[-1]
    assert head.units == units
    assert head.activation.__name__ == activation
    assert model.loss == loss


@pytest.mark.parametrize(
    "name, classes, expected",
    [("optimized", 2, 0.9), ("optimized", 4, 0.5), ("mobilenetv2", 2, 0.5), ("baseline", 2, None)],
)
def test_dropout_defaults(name, classes, expected):
    assert default_dropout(name, classes) == expected


def test_optimized_adds_dropout_and_learning_rate_decay_but_no_augmentation_layers():
    model = build_model("optimized", 2, (600, 200))
    dropout = model.get_layer("dropout")
    assert dropout.rate == 0.9
    assert model.layers[-2] is dropout
    decaying = build_model("optimized", 2, (48, 44), seed=0, steps_per_epoch=2)
    initial = float(decaying.optimizer.learning_rate)
    x, y = colour_batch(2, per_class=4, size=(48, 44))
    decaying.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 8 images: 2 steps, one epoch
    assert int(decaying.optimizer.iterations.numpy()) == 2
    assert float(decaying.optimizer.learning_rate) == pytest.approx(0.94 * initial, rel=1e-6)  # x0.94 per epoch
    # augmentation lives in the input pipeline, so the saved model is pure inference
    assert not any(type(layer).__name__.startswith("Random") for layer in model.layers)
    assert get_model_spec("optimized").augment and not get_model_spec("baseline").augment


def test_every_build_gets_a_fresh_optimizer_and_seeded_weights():
    a = build_model("baseline", 2, SMALL, seed=1)
    x, y = colour_batch(2, per_class=4)
    a.fit(x, y, epochs=1, batch_size=4, verbose=0)
    b = build_model("baseline", 2, SMALL, seed=1)
    c = build_model("baseline", 2, SMALL, seed=2)
    assert a.optimizer is not b.optimizer
    assert int(a.optimizer.iterations.numpy()) == 2
    assert int(b.optimizer.iterations.numpy()) == 0
    first = lambda m: m.get_layer("conv_1").get_weights()[0]  # noqa: E731
    assert not np.array_equal(first(a), first(b))  # a trained, b is fresh
    assert np.array_equal(first(b), first(build_model("baseline", 2, SMALL, seed=1)))
    assert not np.array_equal(first(b), first(c))


@pytest.mark.parametrize("classes", [2, 3])
def test_loss_goes_down_on_an_easy_set(classes):
    x, y = colour_batch(classes)
    model = build_model("baseline", classes, SMALL, seed=0)
    history = model.fit(x, y, epochs=4, batch_size=8, verbose=0, shuffle=True)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert "accuracy" in history.history


def test_mixed_precision_computes_in_float16_with_a_float32_head_and_scaled_loss():
    x, y = colour_batch(2)
    model = build_model("optimized", 2, SMALL, seed=0, mixed_precision=True)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert (conv.compute_dtype, conv.variable_dtype) == ("float16", "float32")
    assert model.get_layer("head").compute_dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.predict(x, verbose=0).dtype == np.float32
    plain = build_model("optimized", 2, SMALL, seed=0)
    assert next(layer for layer in plain.layers if isinstance(layer, keras.layers.Conv2D)).compute_dtype == "float32"


def test_mobilenetv2_builds_and_trains_a_step_without_pretrained_weights():
    model = build_model("mobilenetv2", 2, (32, 32), weights=None, seed=0)
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert not base.trainable
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"batch_norm", "dense", "head"}
    x, y = colour_batch(2, per_class=4, size=(32, 32))
    before = [w.numpy().copy() for w in base.weights]
    model.run_eagerly = True  # tracing MobileNetV2 into a graph costs ~10 s; one eager step shows the wiring
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, base.weights, strict=True))


def _base(model):
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def write_legacy_weights(path: Path, size=(32, 32), seed: int = 99) -> list[np.ndarray]:
    """A no-top MobileNetV2 weights file in the HDF5 layout Keras downloads, made here: its weights."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(*size, 3), include_top=False, weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, base)
    return [w.numpy().copy() for w in base.weights]


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache and no network: every download goes to a refused local port."""
    home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr("toonvision.models.MOBILENET_WEIGHTS_ORIGIN", UNROUTABLE)
    monkeypatch.setattr("toonvision.models._keras_cache_dirs", lambda: [home])  # not this machine's /tmp/.keras
    return home


def test_the_weights_origin_is_the_one_keras_downloads_from():
    from keras.src.applications import mobilenet_v2

    assert MOBILENET_WEIGHTS_ORIGIN == mobilenet_v2.BASE_WEIGHT_PATH


def test_imagenet_weights_are_loaded_from_the_keras_cache_without_network(keras_home):
    saved = write_legacy_weights(keras_home / "models" / mobilenet_weights_file_name((32, 32)))
    model = build_model("mobilenetv2", 2, (32, 32), weights="imagenet", seed=0)
    loaded = [w.numpy() for w in _base(model).weights]
    assert len(loaded) == len(saved)
    assert all(np.array_equal(a, b) for a, b in zip(saved, loaded, strict=True))
    fresh = build_model("mobilenetv2", 2, (32, 32), weights=None, seed=0)
    assert not np.array_equal(_base(fresh).weights[0].numpy(), saved[0])  # the file, not the seed, gave them


def test_offline_imagenet_weights_say_which_file_from_where_and_where_to_put_it(keras_home):
    name = mobilenet_weights_file_name((64, 64))
    with pytest.raises(TrainingError) as caught:
        build_model("mobilenetv2", 2, (64, 64), weights="imagenet")
    message = str(caught.value)
    assert name in message
    assert UNROUTABLE + name in message
    assert str(keras_home / "models") in message
    assert "--weights none" in message and "--weights PATH" in message
    assert list((keras_home / "models").iterdir()) == []  # nothing half-downloaded is left to be taken for weights


def test_missing_imagenet_weights_are_downloaded_into_the_keras_cache(keras_home, tmp_path, monkeypatch):
    name = mobilenet_weights_file_name((32, 32))
    saved = write_legacy_weights(tmp_path / "server" / name)
    monkeypatch.setattr("toonvision.models.MOBILENET_WEIGHTS_ORIGIN", (tmp_path / "server").as_uri() + "/")
    path = resolve_mobilenet_weights("imagenet", (32, 32))
    assert path == str(keras_home / "models" / name)
    assert [p.name for p in (keras_home / "models").iterdir()] == [name]  # the temporary name is gone
    model = build_model("mobilenetv2", 2, (32, 32), weights=path, seed=0)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(saved, _base(model).weights, strict=True))


def test_imagenet_weights_are_found_in_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("toonvision.models._keras_cache_dirs", lambda: [tmp_path])
    cached = tmp_path / "models" / mobilenet_weights_file_name((600, 200))
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert cached.name.endswith("_224_no_top.h5")
    assert resolve_mobilenet_weights("imagenet", (600, 200)) == str(cached)
    assert mobilenet_weights_file_name((128, 128)).endswith("_128_no_top.h5")


@pytest.mark.parametrize(
    "weights, expected",
    [(None, None), ("none", None), ("None", None)],
)
def test_weights_none_means_from_scratch(weights, expected):
    assert resolve_mobilenet_weights(weights, (32, 32)) is expected


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(TrainingError, match="no-such.h5"):
        resolve_mobilenet_weights(tmp_path / "no-such.h5", (32, 32))


@pytest.mark.parametrize(
    "name, classes, size, message",
    [
        ("resnet", 2, SMALL, "unknown model"),
        ("baseline", 1, SMALL, "at least 2 classes"),
        ("baseline", 2, (43, 100), "at least 44x44"),
        ("mobilenetv2", 2, (31, 64), "at least 32x32"),
        ("smallres", 2, (64, 7), "at least 8x8"),
    ],
)
def test_bad_arguments_are_usage_errors(name, classes, size, message):
    with pytest.raises(UsageError, match=message):
        build_model(name, classes, size, weights=None)


def test_the_cli_offers_exactly_the_four_models():
    assert MODEL_NAMES == ("baseline", "optimized", "smallres", "mobilenetv2")


@pytest.mark.parametrize(
    "name, classes, size, params, dropout",
    [("baseline", 2, (600, 200), 25_537, None), ("optimized", 2, (600, 200), 25_537, 0.9),
     ("optimized", 4, (64, 64), 14_852, 0.5), ("mobilenetv2", 3, (64, 48), 2_304_195, 0.5)],
)
def test_the_registry_builds_the_same_models_as_before(name, classes, size, params, dropout):
    model = build_model(name, classes, size, weights=None, seed=0)
    assert model.count_params() == params
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == ([] if dropout is None else [dropout])
    assert model.layers[-2].name == ("dropout" if dropout is not None else "flatten")
    decays = isinstance(getattr(model.optimizer, "_learning_rate", None), keras.optimizers.schedules.ExponentialDecay)
    assert decays == get_model_spec(name).lr_decay == (name == "optimized")


# -- smallres ----------------------------------------------------------------------------------


def test_smallres_is_residual_with_batch_norm_global_pooling_and_no_strided_convolutions():
    model = build_model("smallres", 4, (64, 64), seed=0)
    assert model.count_params() == 309_220
    assert build_model("smallres", 4, (600, 200), seed=0).count_params() == 309_220  # global pooling: any size
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[:2] == ["InputLayer", "Rescaling"] and model.layers[1].scale == pytest.approx(1 / 255)
    assert kinds.count("Add") == 3 and kinds.count("MaxPooling2D") == 3
    assert kinds.count("BatchNormalization") == kinds.count("Conv2D") == 9
    # moving statistics that keep up with a few hundred steps (Keras' 0.99 left validation at chance)
    assert {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    assert kinds[-3:] == ["GlobalAveragePooling2D", "Dropout", "Dense"]
    # the oneDNN trap: strided convolutions aborted training on some CPUs, so only pooling downsamples
    assert all(layer.strides == (1, 1) for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert default_dropout("smallres", 2) == default_dropout("smallres", 4) == 0.3


@pytest.mark.parametrize("classes", [2, 3])
def test_smallres_loss_goes_down_on_an_easy_set(classes):
    x, y = colour_batch(classes, size=(32, 32))
    model = build_model("smallres", classes, (32, 32), seed=0, steps_per_epoch=3)
    losses = model.fit(x, y, epochs=4, batch_size=8, verbose=0, shuffle=True).history["loss"]
    assert losses[-1] < losses[0]


def test_smallres_trains_in_a_clean_environment():
    """TensorFlow's defaults (oneDNN on): what a user's shell has, not this test run's settings."""
    script = (
        "import numpy as np\n"
        "from toonvision.models import build_model\n"
        "x = np.random.default_rng(0).uniform(0, 255, (16, 40, 24, 3)).astype('float32')\n"
        "y = np.arange(16) % 3\n"
        "model = build_model('smallres', 3, (40, 24), seed=0)\n"
        "history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)\n"
        "assert np.isfinite(history.history['loss']).all()\n"
        "print('trained', int(model.optimizer.iterations.numpy()))\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained 2" in done.stdout


# -- fine-tuning -------------------------------------------------------------------------------


def test_fine_tuning_unfreezes_exactly_the_last_block_and_lowers_the_learning_rate():
    model = build_model("mobilenetv2", 3, (32, 32), weights=None, seed=0)
    base = _base(model)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(LEARNING_RATE)
    unfrozen = unfreeze_top(model)
    assert unfrozen == ("block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1")
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == set(unfrozen)
    assert all(not layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert {w.path.split("/")[0] for w in model.trainable_weights} >= {"batch_norm", "dense", "head"}
    assert model.optimizer.learning_rate.numpy() == pytest.approx(LEARNING_RATE / 10)
    assert int(model.optimizer.iterations.numpy()) == 0  # a fresh optimizer for the second phase
    assert model.loss == "sparse_categorical_crossentropy"


def test_only_models_with_a_pretrained_base_can_be_fine_tuned():
    with pytest.raises(UsageError, match="no pretrained base"):
        unfreeze_top(build_model("baseline", 2, SMALL))


# -- tuned models (toonvision.tune, train --hparams) -----------------------------------------------


def test_build_from_hparams_builds_the_cnn_it_describes_and_it_learns():
    spec = Hyperparameters(conv_blocks=3, filters=8, kernel_size=3, batch_norm=True, dropout=0.3,
                           learning_rate=3e-3, lr_schedule="exponential")
    model = build_from_hparams(spec, 3, SMALL, seed=0, steps_per_epoch=2)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16, 32] and all(not c.use_bias for c in convs)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 3
    assert model.get_layer("dropout").rate == pytest.approx(0.3) and model.output_shape == (None, 3)
    x, y = colour_batch(3)
    before = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, epochs=8, batch_size=12, verbose=0)
    assert model.evaluate(x, y, verbose=0)[0] < before


def test_build_from_hparams_refuses_an_image_its_blocks_cannot_take():
    build_from_hparams({"conv_blocks": 4}, 2, (32, 32))
    with pytest.raises(UsageError, match="4 pooling blocks need images of at least 32x32"):
        build_from_hparams({"conv_blocks": 4}, 2, (31, 64))


def test_hyperparameters_are_validated_and_keep_only_what_their_family_uses():
    assert set(Hyperparameters().to_dict()) == {"family", "conv_blocks", "filters", "kernel_size", "batch_norm",
                                                "dropout", "learning_rate", "lr_schedule", "class_weight", "augment"}
    assert "fine_tune" in Hyperparameters(family="pretrained").to_dict()
    for bad in ({"dropout": 1.0}, {"lr_schedule": "cosine"}, {"batch_norm": 1}, {"filters": True}):
        with pytest.raises(UsageError):
            Hyperparameters.from_dict(bad)


