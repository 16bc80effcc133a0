"""The one preprocessing of every image a model sees: decoded and resized exactly as Keras' loader does.

Keras' ``image_dataset_from_directory`` reads a file, decodes it with ``tf.image.decode_image``
(3 channels, uint8, first frame) and resizes it with ``tf.image.resize`` (bilinear, half-pixel
centres, no antialiasing, no aspect ratio kept) to float32 0..255. Training, evaluation,
prediction and Grad-CAM all go through the functions below, so "the same preprocessing as
training" holds by construction::

    crop file          --decode_file-->  (h, w, 3) uint8  --resize-->  (H, W, 3) float32 0..255
    crop files         --decode_files--> uint8 arrays, several at once (the decoded-crop cache)
    PIL images, arrays --model_input-->  (n, H, W, 3) float32, the model's input batch

Nothing is written; a file that does not decode is named in an ImageError (TensorFlow's own
errors do not name it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toonvision.errors import ImageError

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


def resize(image: tf.Tensor | np.ndarray, image_size: tuple[int, int], method: str = "bilinear") -> tf.Tensor:
    """An image (h, w, c) or a batch (n, h, w, c) resized to float32 ``image_size`` (height, width)
    as Keras' loader resizes: ``tf.image.resize``, no antialiasing, no aspect ratio kept."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    height, width = (int(v) for v in image_size)
    resized = tf.image.resize(image, (height, width), method=method)
    resized.set_shape(resized.shape[:-3].concatenate((height, width, 3)))
    return resized


def model_input(images: Sequence[Image.Image | np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """PIL images (any mode, made RGB) or (h, w, 3) uint8 arrays -> the model's float32 (n, h, w, 3)
    batch in 0..255, each resized by :func:`resize` exactly as the training crops are."""
    if not images:
        return np.zeros((0, *image_size, 3), dtype=np.float32)
    arrays = [
        resize(np.asarray(image if isinstance(image, np.ndarray) else image.convert("RGB"), dtype=np.uint8),
               image_size).numpy()
        for image in images
    ]
    return np.stack(arrays).astype(np.float32)


def _tf_reason(message: str | None) -> str:
    """TensorFlow's error text without its op-node wrapper: "Invalid PNG. Failed to initialize decoder"."""
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    line = re.sub(r"\{\{[^}]*\}\}\s*", "", line)
    line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line)
    return line.strip().rstrip(".")
