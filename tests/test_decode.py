"""decode: files, PIL images and arrays become exactly what Keras' loader feeds a model, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from toonvision.datasets import from_directory  # noqa: E402
from toonvision.decode import (  # noqa: E402
    decode_file,
    decode_files,
    decoder_version,
    find_undecodable,
    model_input,
    resize,
)
from toonvision.errors import ImageError  # noqa: E402

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


def keras_batch(split_dir, size):
    dataset = from_directory(split_dir, CLASSES, size, batch_size=64)
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
