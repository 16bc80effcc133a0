"""Model builders: the original architecture, the heads, fresh optimizers, offline weights."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from toonvision.errors import TrainingError, UsageError  # noqa: E402
from toonvision.models import (  # noqa: E402
    MODEL_NAMES,
    Hyperparameters,
    balanced_class_weight,
    build_from_hparams,
    build_model,
    default_dropout,
    get_model_spec,
    mobilenet_weights_file_name,
    resolve_mobilenet_weights,
)

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
    assert isinstance(model.optimizer.learning_rate, keras.optimizers.schedules.LearningRateSchedule) or hasattr(
        model.optimizer, "_learning_rate"
    )
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.ExponentialDecay)
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
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, base.weights))


def test_imagenet_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("toonvision.models._keras_cache_dirs", lambda: [tmp_path / "keras"])
    with pytest.raises(TrainingError, match="--weights none"):
        build_model("mobilenetv2", 2, (64, 64), weights="imagenet")


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
    ],
)
def test_bad_arguments_are_usage_errors(name, classes, size, message):
    with pytest.raises(UsageError, match=message):
        build_model(name, classes, size, weights=None)


def test_model_names():
    assert MODEL_NAMES == ("baseline", "optimized", "mobilenetv2")


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


def test_balanced_class_weight_gives_every_class_the_same_total():
    weights = balanced_class_weight([30, 10, 20])
    assert weights == pytest.approx({0: 60 / 90, 1: 60 / 30, 2: 60 / 60})
    assert {i: n * weights[i] for i, n in enumerate([30, 10, 20])} == pytest.approx({0: 20, 1: 20, 2: 20})
