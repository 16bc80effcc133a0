"""The one preprocessing of every image a model sees: decoded and resized exactly as Keras' loader does.

Keras' ``image_dataset_from_directory`` reads a file, decodes it with ``tf.image.decode_image``
(3 channels, uint8, first frame) and resizes it to float32 0..255: by default with
``tf.image.resize`` (bilinear, half-pixel centres, no antialiasing, no aspect ratio kept), and
with ``pad_to_aspect_ratio=True`` with ``tf.image.resize_with_pad`` (the same resize to the
largest size that fits, aspect ratio kept, then centred in zero bands). Training, evaluation,
prediction and Grad-CAM all go through the functions below, so "the same preprocessing as
training" holds by construction::

    crop file          --decode_file-->  (h, w, 3) uint8  --resize(mode)-->  (H, W, 3) float32 0..255
    crop files         --decode_files--> uint8 arrays, several at once (the decoded-crop cache)
    PIL images, arrays --model_input-->  (n, H, W, 3) float32, the model's input batch
    crop sizes         --auto_image_size--> (H, W) for --image-size auto

``mode`` is ``stretch`` (every crop fills H x W) or ``pad`` (aspect kept); a model's mode is
recorded in best.json beside its image size. Nothing is written; a file that does not decode
is named in an ImageError (TensorFlow's own errors do not name it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toonvision.constants import (
    AUTO_SIZE_MAX_SIDE,
    AUTO_SIZE_MULTIPLE,
    DEFAULT_RESIZE,
    HW,
    RESIZE_MODES,
)
from toonvision.errors import ImageError, UsageError

if TYPE_CHECKING:
    import tensorflow as tf
    from PIL import Image


def decode_file(path: str | tf.Tensor) -> tf.Tensor:
    """One image file as (height, width, 3) uint8, exactly the first step of Keras' loader."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    return tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def decode_files(paths: Sequence[str]) -> Iterator[np.ndarray]:
    """Decode image files as :func:`decode_file` does, several at once, in order.

    A file that does not decode raises ImageError naming it.
    """
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    if not paths:
        return
    dataset = tf.data.Dataset.from_tensor_slices(list(paths)).map(decode_file, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        yield from dataset.as_numpy_iterator()
    except (tf.errors.OpError, ValueError):
        bad = find_undecodable(paths)
        if bad is not None:
            raise bad from None
        raise ImageError(f"cannot decode the crops starting at {paths[0]}; check the files") from None


def find_undecodable(paths: Iterable[str | Path]) -> ImageError | None:
    """The first file that does not decode, as an ImageError naming it; None if all decode.

    TensorFlow's decode errors do not name the file, so after one this finds the culprit.
    """
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    for path in paths:
        try:
            decode_file(str(path))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError) as exc:
            reason = _tf_reason(exc.message) or type(exc).__name__
            return ImageError(
                f"{path}: cannot be decoded as an image ({reason}); remove it from the pool "
                "or re-export it, then run `toonvision extract` again"
            )
    return None


def decoder_version() -> str:
    """What :func:`decode_file` is, for caches of decoded pixels to tell when theirs are stale."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    return f"tf.io.decode_image rgb uint8, tensorflow {'.'.join(tf.__version__.split('.')[:2])}"


def resize(
    image: tf.Tensor | np.ndarray, image_size: tuple[int, int], method: str = "bilinear", mode: str = DEFAULT_RESIZE
) -> tf.Tensor:
    """An image (h, w, c) or a batch (n, h, w, c) resized to float32 ``image_size`` (height, width)
    as Keras' loader resizes: ``tf.image.resize`` (no antialiasing); ``mode="pad"`` keeps the aspect
    ratio as ``tf.image.resize_with_pad`` does (what ``pad_to_aspect_ratio=True`` calls), zero bands."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    check_resize_mode(mode)
    height, width = (int(v) for v in image_size)
    if mode == "pad":
        resized = _resize_with_pad(tf.convert_to_tensor(image), height, width, method)
    else:
        resized = tf.image.resize(image, (height, width), method=method)
    resized = tf.cast(resized, tf.float32)  # "nearest" keeps the input's dtype
    resized.set_shape(resized.shape[:-3].concatenate((height, width, 3)))
    return resized


def _resize_with_pad(image: tf.Tensor, height: int, width: int, method: str) -> tf.Tensor:
    """``tf.image.resize_with_pad``'s arithmetic (float32, floors), but never a side of 0 pixels:
    TensorFlow's own fails on a crop thinner than one output pixel."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    shape = tf.shape(image)
    source = tf.cast(shape[-3:-1], tf.float32)
    target = tf.constant([height, width], tf.float32)
    ratio = tf.reduce_max(source / target)
    fitted = source / ratio
    inner = tf.maximum(tf.cast(tf.floor(fitted), tf.int32), 1)
    offset = tf.maximum(tf.cast(tf.floor((target - fitted) / 2), tf.int32), 0)
    resized = tf.image.resize(image, inner, method=method)
    return tf.image.pad_to_bounding_box(resized, offset[0], offset[1], height, width)


def content_box(source: tuple[int, int], image_size: tuple[int, int], mode: str = DEFAULT_RESIZE
                ) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the model input that holds the image of ``source`` (height, width)
    after :func:`resize`: the whole input when stretched, the part between the zero bands when padded."""
    check_resize_mode(mode)
    height, width = (int(v) for v in image_size)
    if mode == "stretch":
        return 0, 0, height, width
    src = np.asarray(source, np.float32)
    target = np.asarray((height, width), np.float32)
    fitted = src / np.max(src / target)  # float32, as TensorFlow computes it
    inner = np.maximum(np.floor(fitted).astype(np.int64), 1)
    offset = np.maximum(np.floor((target - fitted) / np.float32(2)).astype(np.int64), 0)
    return int(offset[0]), int(offset[1]), int(inner[0]), int(inner[1])


def check_resize_mode(mode: str) -> str:
    """``mode`` if it is a resize mode; a UsageError naming the modes otherwise."""
    if mode not in RESIZE_MODES:
        raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return mode


def model_input(
    images: Sequence[Image.Image | np.ndarray], image_size: tuple[int, int], mode: str = DEFAULT_RESIZE
) -> np.ndarray:
    """PIL images (any mode, made RGB) or (h, w, 3) uint8 arrays -> the model's float32 (n, h, w, 3)
    batch in 0..255, each resized by :func:`resize` exactly as the training crops are."""
    check_resize_mode(mode)
    if not images:
        return np.zeros((0, *image_size, 3), dtype=np.float32)
    arrays = [
        resize(np.asarray(image if isinstance(image, np.ndarray) else image.convert("RGB"), dtype=np.uint8),
               image_size, mode=mode).numpy()
        for image in images
    ]
    return np.stack(arrays).astype(np.float32)


def auto_image_size(
    sizes: Sequence[tuple[int, int]], min_side: int = 1,
    max_side: int = AUTO_SIZE_MAX_SIDE, multiple: int = AUTO_SIZE_MULTIPLE,
) -> HW:
    """``--image-size auto``: the median crop height and width, scaled down (aspect kept) so the longer
    side is at most ``max_side``, each rounded to a multiple of ``multiple``, no side under ``min_side``
    (the model's smallest input, rounded up to the multiple). The same crops always give the same size."""
    if not sizes:
        raise UsageError("--image-size auto needs crops to measure; the task has none in the pool")
    heights = np.asarray([int(h) for h, _ in sizes], np.float64)
    widths = np.asarray([int(w) for _, w in sizes], np.float64)
    height, width = float(np.median(heights)), float(np.median(widths))
    scale = min(1.0, max_side / max(height, width))
    floor = -(-max(int(min_side), 1) // multiple) * multiple

    def side(value: float) -> int:
        return max(floor, multiple, int(math.floor(value * scale / multiple + 0.5)) * multiple)

    return HW(side(height), side(width))


def _tf_reason(message: str | None) -> str:
    """TensorFlow's error text without its op-node wrapper: "Invalid PNG. Failed to initialize decoder"."""
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    line = re.sub(r"\{\{[^}]*\}\}\s*", "", line)
    line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line)
    return line.strip().rstrip(".")
