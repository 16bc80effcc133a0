"""decode: files, PIL images and arrays become exactly what Keras' loader feeds a model, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf  # noqa: E402
from PIL import Image

from toonvision.constants import AUTO_SIZE_MAX_SIDE  # noqa: E402
from toonvision.datasets import from_directory  # noqa: E402
from toonvision.decode import (  # noqa: E402
    auto_image_size,
    content_box,
    decode_file,
    decode_files,
    decoder_version,
    find_undecodable,
    model_input,
    resize,
)
from toonvision.errors import ImageError, UsageError  # noqa: E402

CLASSES = ("a", "b")


@pytest.fixture
def split_dir(tmp_path):
    """A split folder of noise crops, one per kind of PNG that decodes unusually, and a JPEG."""
    rng = np.random.default_rng(3)
    root = tmp_path / "test"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
    noise = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "a" / "0_rgb.png")
    Image.fromarray(noise).convert("P", palette=Image.ADAPTIVE).save(root / "a" / "1_palette.png")
    grey = rng.integers(0, 65536, (29, 41), dtype=np.uint16)
    Image.fromarray(grey.astype("<u2")).save(root / "a" / "2_grey16.png")
    Image.fromarray(rng.integers(0, 256, (50, 31, 3), dtype=np.uint8)).save(root / "b" / "3_rgb.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (12, 70, 3), dtype=np.uint8)).save(root / "b" / "4_wide.png")
    return root


def keras_batch(split_dir, size, resize="stretch"):
    dataset = from_directory(split_dir, CLASSES, size, batch_size=64, resize=resize)
    return list(dataset.file_paths), np.concatenate([x.numpy() for x, _ in dataset])


@pytest.mark.parametrize("size", [(48, 44), (20, 16), (97, 61)])  # up, down and odd factors
def test_decode_then_resize_equals_keras_loader_bit_for_bit(split_dir, size):
    paths, expected = keras_batch(split_dir, size)
    for path, image in zip(paths, expected, strict=True):
        ours = resize(decode_file(path), size).numpy()
        assert ours.dtype == np.float32 and ours.shape == (*size, 3)
        np.testing.assert_array_equal(ours, image)


def test_decode_files_equals_decode_file_in_order(split_dir):
    paths = sorted(str(p) for p in split_dir.rglob("*.*"))
    decoded = list(decode_files(paths))
    assert len(decoded) == len(paths)
    for path, image in zip(paths, decoded, strict=True):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        np.testing.assert_array_equal(image, decode_file(path).numpy())
    assert list(decode_files([])) == []


def test_resize_of_a_batch_equals_resize_of_each_image(split_dir):
    image = decode_file(str(split_dir / "a" / "0_rgb.png"))
    batch = resize(tf.stack([image, image[::-1]]), (20, 16))
    assert batch.shape == (2, 20, 16, 3)
    np.testing.assert_array_equal(batch[1].numpy(), resize(image[::-1], (20, 16)).numpy())


@pytest.mark.parametrize("size", [(48, 44), (97, 61)])
def test_model_input_of_pil_images_and_arrays_equals_keras_loader(split_dir, size):
    """What predict and Grad-CAM feed a model is what training fed it, for the PNG crops that extract
    writes (Pillow's JPEG decoder rounds differently from TensorFlow's; images.load_image handles alpha,
    EXIF and 16-bit before this)."""
    paths, expected = keras_batch(split_dir, size)
    rgb = [i for i, path in enumerate(paths) if path.endswith(("_rgb.png", "_wide.png", "_palette.png"))]
    assert len(rgb) == 3
    images = [Image.open(paths[i]) for i in rgb]
    ours = model_input(images, size)
    assert ours.dtype == np.float32 and ours.shape == (len(rgb), *size, 3)
    np.testing.assert_array_equal(ours, expected[rgb])
    arrays = model_input([np.asarray(image.convert("RGB")) for image in images], size)
    np.testing.assert_array_equal(arrays, expected[rgb])


def test_model_input_of_nothing_is_an_empty_batch():
    empty = model_input([], (24, 16))
    assert empty.dtype == np.float32 and empty.shape == (0, 24, 16, 3)


def test_an_undecodable_file_is_named(split_dir):
    bad = split_dir / "a" / "9_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [str(bad), *(str(p) for p in sorted(split_dir.rglob("*.*")) if p != bad)]
    error = find_undecodable(paths)
    assert isinstance(error, ImageError) and str(bad) in str(error)
    assert f"{bad}: cannot be decoded as an image (Invalid PNG" in str(error)
    assert find_undecodable(paths[1:]) is None
    with pytest.raises(ImageError, match=f"{bad}: cannot be decoded as an image"):
        list(decode_files(paths[1:3] + [str(bad)]))


def test_decoder_version_names_the_decoder_and_tensorflow():
    """The decoded-crop cache keys its index on this string: a change starts the disk cache again."""
    major_minor = ".".join(tf.__version__.split(".")[:2])
    assert decoder_version() == f"tf.io.decode_image rgb uint8, tensorflow {major_minor}"


# -- --resize pad: Keras' pad_to_aspect_ratio ---------------------------------------------------------


@pytest.mark.parametrize("size", [(48, 44), (20, 16), (97, 61)])
def test_pad_equals_keras_loader_with_pad_to_aspect_ratio_bit_for_bit(split_dir, size):
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        str(split_dir), labels="inferred", class_names=list(CLASSES), batch_size=None, image_size=size,
        shuffle=False, interpolation="bilinear", pad_to_aspect_ratio=True, verbose=False)
    images = [x.numpy() for x, _ in dataset]
    assert len(images) == len(dataset.file_paths) == 5
    for path, image in zip(dataset.file_paths, images, strict=True):
        np.testing.assert_array_equal(resize(decode_file(path), size, mode="pad").numpy(), image)
    _, ours = keras_batch(split_dir, size, resize="pad")  # from_directory passes the mode to Keras
    np.testing.assert_array_equal(ours, np.stack(images))


def test_pad_keeps_the_aspect_ratio_of_a_tall_crop_in_zero_bands():
    tall = np.full((60, 20, 3), 255, np.uint8)  # 3:1, into a square input
    padded = resize(tall, (32, 32), mode="pad").numpy()
    assert content_box((60, 20), (32, 32), "pad") == (0, 10, 32, 10)  # 32 rows x 10 columns: 3.2:1, not 1:1
    np.testing.assert_array_equal(padded[:, 10:20], 255.0)
    np.testing.assert_array_equal(padded[:, :10], 0.0)  # Keras pads with zeros
    np.testing.assert_array_equal(padded[:, 20:], 0.0)
    np.testing.assert_array_equal(resize(tall, (32, 32)).numpy(), 255.0)  # stretch fills the input
    assert content_box((60, 20), (32, 32), "stretch") == (0, 0, 32, 32)
    np.testing.assert_array_equal(model_input([Image.fromarray(tall)], (32, 32), "pad")[0], padded)


@pytest.mark.parametrize("source, size", [((37, 23), (48, 44)), ((12, 70), (20, 16)), ((50, 31), (97, 61)),
                                          ((7, 7), (16, 40)), ((1, 500), (32, 32))])
def test_content_box_is_where_the_padded_image_lies(source, size):
    image = np.full((*source, 3), 200, np.uint8)
    padded = resize(image, size, mode="pad").numpy()
    top, left, height, width = content_box(source, size, "pad")
    inside = np.zeros(size, bool)
    inside[top:top + height, left:left + width] = True
    assert height >= 1 and width >= 1  # a crop thinner than a pixel still shows (TensorFlow's own would fail)
    assert (padded[inside] > 0).all() and (padded[~inside] == 0).all()


def test_an_unknown_resize_mode_is_a_usage_error():
    with pytest.raises(UsageError, match="--resize must be one of stretch, pad"):
        resize(np.zeros((4, 4, 3), np.uint8), (8, 8), mode="crop")


# -- --image-size auto ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes, min_side, expected", [
    ([(40, 30)] * 3 + [(200, 10)], 1, (48, 32)),  # the median (40, 30) rounded to multiples of 16
    ([(100, 100), (110, 104), (300, 120)], 1, (112, 112)),  # medians 110 x 104; below the cap
    ([(600, 200), (580, 210), (620, 190)], 1, (128, 48)),  # 600 x 200 scaled to a longer side of 128: 128 x 42.7
    ([(20, 20), (22, 18)], 44, (48, 48)),  # floored at the model's smallest side, rounded up to the multiple
    ([(9, 9)], 1, (16, 16)),  # never under one multiple
])
def test_auto_size_follows_the_crop_sizes(sizes, min_side, expected):
    assert auto_image_size(sizes, min_side, max_side=128) == expected


def test_auto_size_keeps_the_longer_side_under_the_default_cap():
    assert AUTO_SIZE_MAX_SIDE == 64
    assert auto_image_size([(600, 200), (580, 210), (620, 190)]) == (64, 16)  # 64 x 21.3, to a multiple of 16
    assert auto_image_size([(110, 104)]) == (64, 64)


def test_auto_size_is_deterministic_for_a_pool():
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(20, 300, (501, 2))]
    chosen = auto_image_size(sizes, 44)
    assert all(v % 16 == 0 and 48 <= v <= 128 for v in chosen)
    assert all(auto_image_size([sizes[i] for i in rng.permutation(len(sizes))], 44) == chosen for _ in range(3))
    with pytest.raises(UsageError, match="no"):
        auto_image_size([], 44)
