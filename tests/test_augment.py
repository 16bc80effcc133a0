"""The fused flip/rotation/zoom means what Keras' three layers mean, and it really changes the input."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from toonvision.augment import (  # noqa: E402
    DEFAULT_AUGMENT,
    AugmentSpec,
    apply_transforms,
    augment_batch,
    augment_crop,
    augment_dataset,
    sample_parameters,
    transform_matrices,
)

HEIGHT, WIDTH = 60, 20


def smooth_image(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth, asymmetric RGB image in 0..255 (bilinear resampling of it is well behaved)."""
    yy, xx = np.mgrid[0:height, 0:width].astype("float32")
    return np.stack(
        [128 + 100 * np.sin(xx / 5 + yy / 9), 128 + 100 * np.cos(yy / 7), 255 * xx / width], axis=-1
    ).astype("float32")[None]


def keras_reference(image: np.ndarray, flip: bool, turn: float, zoom: float, fill_mode: str) -> np.ndarray:
    """RandomFlip, RandomRotation, RandomZoom applied one after another, their ranges pinned to one value."""
    out = tf.constant(image)
    if flip:
        layer = keras.layers.RandomFlip("horizontal")
        out = layer.transform_images(out, {"flips": tf.ones((len(image), 1, 1, 1), bool), "input_shape": out.shape})
    out = keras.layers.RandomRotation((turn, turn), fill_mode=fill_mode)(out, training=True)
    out = keras.layers.RandomZoom((zoom - 1, zoom - 1), fill_mode=fill_mode)(out, training=True)
    return np.asarray(out)


def fused(image: np.ndarray, flip: bool, turn: float, zoom: float, fill_mode: str) -> np.ndarray:
    n = len(image)
    matrices = transform_matrices(
        tf.constant([flip] * n), tf.constant([turn * 2 * math.pi] * n), tf.constant([zoom] * n), HEIGHT, WIDTH
    )
    return apply_transforms(tf.constant(image), matrices, fill_mode).numpy()


@pytest.mark.parametrize("fill_mode", ["reflect", "nearest", "constant"])
@pytest.mark.parametrize(
    "flip, turn, zoom",
    [
        (False, 0.05, 1.1),
        (True, -0.07, 0.85),
        (True, 0.075, 1.2),
        (False, -0.075, 0.8),
        (True, 0.0, 1.0),
    ],
)
def test_fused_transform_matches_the_keras_layers_applied_in_turn(flip, turn, zoom, fill_mode):
    image = smooth_image()
    reference = keras_reference(image, flip, turn, zoom, fill_mode)
    out = fused(image, flip, turn, zoom, fill_mode)
    difference = np.abs(reference - out)[0]
    # Where no stage sampled outside the image, one resample differs from three only by blur ...
    ones = np.ones_like(image)
    inside = (keras_reference(ones, flip, turn, zoom, "constant") > 0.999) & (
        fused(ones, flip, turn, zoom, "constant") > 0.999
    )
    assert inside[0].mean() > 0.4
    assert difference[inside[0]].mean() < 0.5
    # ... at the borders the layers fill twice, the fused transform once: small overall.
    assert difference.mean() < 0.05 * 255


def fused_from_crop(crop: np.ndarray, flip: bool, turn: float, zoom: float, fill_mode: str) -> np.ndarray:
    """What the training pipeline does: resize from the crop's size and augment, one resample."""
    matrices = transform_matrices(
        tf.constant([flip]), tf.constant([turn * 2 * math.pi]), tf.constant([zoom]), HEIGHT, WIDTH,
        source=crop.shape[1:3],
    )
    return apply_transforms(tf.constant(crop), matrices, fill_mode, (HEIGHT, WIDTH)).numpy()


def smooth_crop(height: int, width: int) -> np.ndarray:
    """:func:`smooth_image`'s picture drawn at another size (the same content, more or fewer pixels)."""
    yy, xx = np.mgrid[0:height, 0:width].astype("float32")
    yy, xx = (yy + 0.5) * HEIGHT / height - 0.5, (xx + 0.5) * WIDTH / width - 0.5
    return np.stack(
        [128 + 100 * np.sin(xx / 5 + yy / 9), 128 + 100 * np.cos(yy / 7), 255 * xx / WIDTH], axis=-1
    ).astype("float32")[None]


@pytest.mark.parametrize("crop_size", [(37, 13), (60, 20), (131, 47)])  # up, same, down
@pytest.mark.parametrize("flip, turn, zoom", [(False, 0.0, 1.0), (True, 0.06, 0.85), (False, -0.075, 1.2)])
def test_resize_and_augmentation_fused_match_keras_resize_then_the_layers(crop_size, flip, turn, zoom):
    crop = smooth_crop(*crop_size)
    resized = tf.image.resize(crop, (HEIGHT, WIDTH), method="bilinear").numpy()
    out = fused_from_crop(crop, flip, turn, zoom, "reflect")
    if (flip, turn, zoom) == (False, 0.0, 1.0):  # no augmentation: exactly Keras' resize
        np.testing.assert_allclose(out, resized, atol=1e-3)
        return
    reference = keras_reference(resized, flip, turn, zoom, "reflect")
    difference = np.abs(out - reference)[0]
    # The same geometry: where nothing was sampled outside the image, one resample from the
    # crop differs from Keras' resize-then-transform only by a little blur ...
    inside = (keras_reference(np.ones_like(resized), flip, turn, zoom, "constant") > 0.999) & (
        fused_from_crop(np.ones_like(crop), flip, turn, zoom, "constant") > 0.999
    )
    assert inside[0].mean() > 0.4
    assert difference[inside[0]].mean() < 0.5
    # ... and at the borders the layers fill twice, the fused transform once: small overall.
    assert difference.mean() < 0.05 * 255


@pytest.mark.parametrize("crop_size", [(37, 13), (60, 20), (131, 47), (37, 47)])  # up, same, down, mixed
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_augment_crop_samples_the_crop_where_one_fused_resample_would(crop_size, seed):
    """It resamples at the smaller size, then resizes: the same geometry as one resample from the crop."""
    crop = smooth_crop(*crop_size)
    seed = tf.constant([seed, 17], tf.int64)
    flips, angles, zooms = sample_parameters(seed, 1)
    matrices = transform_matrices(flips, angles, zooms, HEIGHT, WIDTH, source=crop_size)
    direct = apply_transforms(tf.constant(crop), matrices, "reflect", (HEIGHT, WIDTH)).numpy()[0]
    ours = augment_crop(crop[0], seed, (HEIGHT, WIDTH)).numpy()
    if crop_size[0] >= HEIGHT and crop_size[1] >= WIDTH:  # resampled at the output's size: the same pixels
        np.testing.assert_allclose(ours, direct, atol=1e-2)
    else:  # resampled at the crop's size, then resized: a little blur, no shift
        assert np.abs(ours - direct).mean() < 1.0  # of 255; a wrong geometry was 1.3-50 off


def test_augment_crop_draws_from_its_seed():
    crop = smooth_image(41, 17)[0].astype("uint8")
    seed = tf.constant([3, 4], tf.int64)
    first = augment_crop(crop, seed, (HEIGHT, WIDTH)).numpy()
    assert first.shape == (HEIGHT, WIDTH, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, augment_crop(crop, seed, (HEIGHT, WIDTH)).numpy())
    assert not np.array_equal(first, augment_crop(crop, tf.constant([3, 5], tf.int64), (HEIGHT, WIDTH)).numpy())


def test_identity_parameters_leave_the_image_unchanged():
    image = smooth_image()
    np.testing.assert_allclose(fused(image, False, 0.0, 1.0, "reflect"), image, atol=1e-3)


def test_flip_alone_mirrors_the_image_exactly():
    image = smooth_image()
    np.testing.assert_allclose(fused(image, True, 0.0, 1.0, "reflect"), image[:, :, ::-1], atol=1e-3)


def test_sampled_parameters_cover_the_keras_ranges():
    flips, angles, zooms = (t.numpy() for t in sample_parameters(tf.constant([7, 11], tf.int64), 4000))
    assert abs(flips.mean() - 0.5) < 0.04
    turn = 0.075 * 2 * math.pi
    assert angles.min() >= -turn and angles.max() <= turn
    assert angles.min() < -0.9 * turn and angles.max() > 0.9 * turn
    assert zooms.min() >= 0.8 and zooms.max() <= 1.2
    assert zooms.min() < 0.82 and zooms.max() > 1.18


def keras_layers() -> keras.Sequential:
    """The original's three augmentation layers, seeded."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=3),
        keras.layers.RandomRotation(0.075, seed=4),
        keras.layers.RandomZoom(0.2, seed=5),
    ])


def test_random_augmentation_has_the_same_mean_image_as_the_keras_layers():
    """In distribution: the average of many augmented copies agrees with Keras' average."""
    image = np.repeat(smooth_image(), 256, axis=0)
    ours = augment_batch(image, tf.constant([1, 2], tf.int64)).numpy().mean(axis=0)
    theirs = np.asarray(keras_layers()(image, training=True)).mean(axis=0)
    assert np.abs(ours - theirs).mean() < 0.03 * 255


def test_augmented_crops_have_the_same_mean_image_as_keras_resize_then_the_layers():
    """In distribution, for the pipeline's fused resize + augmentation of a crop of another size."""
    crop = smooth_crop(41, 17)
    seeds = tf.random.experimental.stateless_split(tf.constant([8, 9], tf.int64), 256)
    ours = tf.map_fn(lambda seed: augment_crop(crop[0], seed, (HEIGHT, WIDTH)), seeds,
                     fn_output_signature=tf.float32).numpy().mean(axis=0)
    resized = np.repeat(tf.image.resize(crop, (HEIGHT, WIDTH)).numpy(), 256, axis=0)
    theirs = np.asarray(keras_layers()(resized, training=True)).mean(axis=0)
    assert np.abs(ours - theirs).mean() < 0.03 * 255


def test_augmented_batch_differs_from_its_input_and_is_reproducible():
    image = np.repeat(smooth_image(), 8, axis=0)
    seed = tf.constant([5, 6], tf.int64)
    first, again = augment_batch(image, seed).numpy(), augment_batch(image, seed).numpy()
    assert np.abs(first - image).mean() > 5.0
    np.testing.assert_array_equal(first, again)
    other = augment_batch(image, tf.constant([5, 7], tf.int64)).numpy()
    assert not np.array_equal(first, other)


def test_augmented_dataset_changes_every_epoch_and_keeps_labels():
    images = np.repeat(smooth_image(), 4, axis=0)
    labels = np.arange(4, dtype="int32")
    dataset = augment_dataset(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), seed=9)
    (epoch1, y1), = list(dataset.as_numpy_iterator())
    (epoch2, y2), = list(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(y1, labels)
    np.testing.assert_array_equal(y2, labels)
    assert np.abs(epoch1 - images).mean() > 5.0
    assert not np.array_equal(epoch1, epoch2)
    again = augment_dataset(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), seed=9)
    (repeat1, _), = list(again.as_numpy_iterator())
    np.testing.assert_array_equal(epoch1, repeat1)


@pytest.mark.parametrize(
    "kwargs",
    [{"flip": 1.5}, {"rotation": -0.1}, {"zoom": 1.0}, {"fill_mode": "mirror"}, {"interpolation": "cubic"}],
)
def test_spec_rejects_meaningless_ranges(kwargs):
    with pytest.raises(ValueError):
        AugmentSpec(**kwargs)


def test_default_spec_is_the_original_optimized_model():
    assert (DEFAULT_AUGMENT.flip, DEFAULT_AUGMENT.rotation, DEFAULT_AUGMENT.zoom) == (0.5, 0.075, 0.2)
    assert (DEFAULT_AUGMENT.fill_mode, DEFAULT_AUGMENT.interpolation) == ("reflect", "bilinear")
