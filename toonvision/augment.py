"""Training-time augmentation as one fused affine resample per image, in the input pipeline.

The original ``optimized`` model stacked three Keras layers (RandomFlip("horizontal"),
RandomRotation(0.075), RandomZoom(0.2)); each resampled the full 600x200 image, and the
result was then discarded by mistake. Here the three random transforms are composed into
one 3x3 matrix per image and applied with a single ``ImageProjectiveTransformV3`` call:
the same distribution of flips, angles and zooms as the Keras layers, one resample
instead of three, and only on training batches, so a saved model is pure inference.

The training pipeline goes one step further (:func:`augment_crop`): the loader's bilinear
resize from the decoded crop to the model's input is an affine map too, so it joins the
product. The transform op costs about 7x a bilinear resize per output pixel, so it runs at
the smaller of the crop's and the model's size (most crops are far smaller than 600x200) and
a bilinear resize brings the result to the model's size, with the matrices chosen so that
each output pixel samples exactly the point of the crop that resize-then-augment samples.
Augmented training costs about as much as plain training (bench/README.md).

Matrices follow TensorFlow's convention: they map an *output* pixel (x, y) to the input
point it samples. Applying flip F, then rotation R, then zoom Z therefore samples
``input(F @ R @ Z @ p)``, and resizing first (S) samples ``crop(S @ F @ R @ Z @ p)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from toonvision.constants import DEFAULT_RESIZE
from toonvision.decode import resize

if TYPE_CHECKING:
    import tensorflow as tf

FILL_MODES = ("reflect", "constant", "nearest", "wrap")
INTERPOLATIONS = ("bilinear", "nearest")


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of the random transforms, with the meaning of the Keras layers' arguments.

    ``rotation`` is a fraction of a full turn (RandomRotation(factor)); ``zoom`` a
    fraction of the size (RandomZoom(factor), same zoom on both axes); ``flip`` the
    probability of a horizontal flip (RandomFlip("horizontal") uses 0.5).
    """

    flip: float = 0.5
    rotation: float = 0.075
    zoom: float = 0.2
    fill_mode: str = "reflect"  # the Keras default for RandomRotation and RandomZoom
    # The Keras default, as in the original model.
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {self.flip}")
        if not 0.0 <= self.rotation <= 0.5:
            raise ValueError(f"rotation must be a fraction of a turn in [0, 0.5], got {self.rotation}")
        if not 0.0 <= self.zoom < 1.0:
            raise ValueError(f"zoom must be in [0, 1), got {self.zoom}")
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")


DEFAULT_AUGMENT = AugmentSpec()


def transform_matrices(
    flips: tf.Tensor, angles: tf.Tensor, zooms: tf.Tensor, height: int, width: int,
    source: tuple[tf.Tensor | int, tf.Tensor | int] | None = None,
) -> tf.Tensor:
    """Fuse per-image flip (bool), rotation (radians, counter-clockwise) and zoom into
    the (N, 8) projective rows that ``ImageProjectiveTransformV3`` takes.

    Rotation and zoom are about the image centre, exactly as Keras' RandomRotation and
    RandomZoom build theirs; a zoom factor above 1 shows more of the image (zooms out).
    With ``source`` (height, width of the input), the images are resized from that size
    to ``height`` x ``width`` first, as ``tf.image.resize`` does (bilinear, half-pixel centres).
    """
    import tensorflow as tf

    fused = augment_matrices(flips, angles, zooms, height, width)
    if source is not None:
        fused = resize_matrix(source, height, width) @ fused
    return tf.reshape(fused, [-1, 9])[:, :8]


def augment_matrices(
    flips: tf.Tensor, angles: tf.Tensor, zooms: tf.Tensor, height: int, width: int
) -> tf.Tensor:
    """The (N, 3, 3) flip @ rotation @ zoom maps of :func:`transform_matrices`, in pixels of a
    ``height`` x ``width`` image."""
    import tensorflow as tf

    flips = tf.cast(tf.reshape(flips, [-1]), tf.float32)
    angles = tf.cast(tf.reshape(angles, [-1]), tf.float32)
    zooms = tf.cast(tf.reshape(zooms, [-1]), tf.float32)
    cx = (float(width) - 1.0) / 2.0
    cy = (float(height) - 1.0) / 2.0
    zeros, ones = tf.zeros_like(angles), tf.ones_like(angles)

    def matrix(rows: list[list[tf.Tensor]]) -> tf.Tensor:
        return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)  # (N, 3, 3)

    sign = 1.0 - 2.0 * flips  # -1 where flipped: x_in = (w - 1) - x_out
    flip = matrix([[sign, zeros, flips * (width - 1.0)], [zeros, ones, zeros], [zeros, zeros, ones]])
    cos, sin = tf.cos(angles), tf.sin(angles)
    rotate = matrix([
        [cos, -sin, cx - cx * cos + cy * sin],
        [sin, cos, cy - cx * sin - cy * cos],
        [zeros, zeros, ones],
    ])
    zoom = matrix([
        [zooms, zeros, cx * (1.0 - zooms)],
        [zeros, zooms, cy * (1.0 - zooms)],
        [zeros, zeros, ones],
    ])
    return flip @ rotate @ zoom


def resize_matrix(
    source: tuple[tf.Tensor | int, tf.Tensor | int], height: tf.Tensor | int, width: tf.Tensor | int
) -> tf.Tensor:
    """The (3, 3) map from a pixel of the resized ``height`` x ``width`` image to the point of the
    ``source``-sized image that ``tf.image.resize`` samples for it: x_in = (x + 0.5) * w_in / w - 0.5."""
    import tensorflow as tf

    sy = tf.cast(source[0], tf.float32) / tf.cast(height, tf.float32)
    sx = tf.cast(source[1], tf.float32) / tf.cast(width, tf.float32)
    zero, one = tf.constant(0.0), tf.constant(1.0)
    return tf.stack([
        tf.stack([sx, zero, 0.5 * sx - 0.5]),
        tf.stack([zero, sy, 0.5 * sy - 0.5]),
        tf.stack([zero, zero, one]),
    ])


def sample_parameters(
    seed: tf.Tensor, batch: tf.Tensor | int, spec: AugmentSpec = DEFAULT_AUGMENT
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Draw (flips, angles in radians, zooms) for ``batch`` images from a stateless seed."""
    import tensorflow as tf

    flip_seed, angle_seed, zoom_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    shape = tf.reshape(tf.cast(batch, tf.int32), [1])
    flips = tf.random.stateless_uniform(shape, flip_seed) < spec.flip
    turn = spec.rotation * 2.0 * math.pi
    angles = tf.random.stateless_uniform(shape, angle_seed, minval=-turn, maxval=turn)
    zooms = tf.random.stateless_uniform(shape, zoom_seed, minval=1.0 - spec.zoom, maxval=1.0 + spec.zoom)
    return flips, angles, zooms


def apply_transforms(
    images: tf.Tensor, transforms: tf.Tensor, fill_mode: str = "reflect",
    output_size: tuple[int, int] | None = None, interpolation: str = "bilinear",
) -> tf.Tensor:
    """Resample a (N, H, W, C) batch once (bilinearly by default) with one row of ``transforms``
    per image; float32 out, of ``output_size`` (height, width) or the input's size."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if output_size is None:
        shape, static = tf.shape(images)[1:3], images.shape
    else:
        shape = tf.constant([int(v) for v in output_size], tf.int32)
        static = (images.shape[0], *(int(v) for v in output_size), images.shape[-1])
    return tf.ensure_shape(_resample(images, transforms, shape, fill_mode, interpolation), static)


def _resample(
    images: tf.Tensor, transforms: tf.Tensor, shape: tf.Tensor, fill_mode: str, interpolation: str
) -> tf.Tensor:
    """``ImageProjectiveTransformV3`` of a float32 batch to ``shape`` (height, width; may be dynamic)."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.cast(transforms, tf.float32),
        output_shape=shape,
        fill_value=tf.constant(0.0, tf.float32),
        interpolation=interpolation.upper(),
        fill_mode=fill_mode.upper(),
    )


def augment_batch(images: tf.Tensor, seed: tf.Tensor, spec: AugmentSpec = DEFAULT_AUGMENT) -> tf.Tensor:
    """Randomly flip, rotate and zoom every image of a float batch, reproducibly from ``seed``."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("augment_batch needs images with a static height and width")
    flips, angles, zooms = sample_parameters(seed, tf.shape(images)[0], spec)
    matrices = transform_matrices(flips, angles, zooms, height, width)
    return apply_transforms(images, matrices, spec.fill_mode, interpolation=spec.interpolation)


def augment_crop(
    image: tf.Tensor, seed: tf.Tensor, image_size: tuple[int, int], spec: AugmentSpec = DEFAULT_AUGMENT,
    mode: str = DEFAULT_RESIZE,
) -> tf.Tensor:
    """One decoded crop (h, w, 3) resized to ``image_size`` and randomly flipped, rotated and
    zoomed; float32, reproducible from ``seed``.

    The geometry is exactly Keras' resize followed by the three layers (each output pixel
    samples the same point of the crop), but the flip/rotation/zoom is resampled at the
    smaller of the crop's and the output's size, then resized: the transform op costs about
    7x a bilinear resize per pixel, and most crops are far smaller than the model's input.
    With ``mode="pad"`` the crop is first padded as :func:`toonvision.decode.resize` pads it
    and the transform runs on that at the output size: the zero bands are part of the image
    the layers would see, which no fused map of the crop alone can reproduce.
    """
    import tensorflow as tf

    height, width = (int(v) for v in image_size)
    flips, angles, zooms = sample_parameters(seed, 1, spec)
    if mode == "pad":
        padded = resize(tf.reshape(image, [1, tf.shape(image)[0], tf.shape(image)[1], 3]), (height, width),
                        mode="pad")
        matrix = augment_matrices(flips, angles, zooms, height, width)
        return _resample(padded, tf.reshape(matrix, [1, 9])[:, :8], tf.constant([height, width], tf.int32),
                         spec.fill_mode, spec.interpolation)[0]
    shape = tf.shape(image)
    mid_height, mid_width = tf.minimum(shape[0], height), tf.minimum(shape[1], width)
    # mid pixel -> output point -> flip/rotate/zoom -> crop point
    matrix = (resize_matrix((shape[0], shape[1]), height, width)
              @ augment_matrices(flips, angles, zooms, height, width)[0]
              @ resize_matrix((height, width), mid_height, mid_width))
    images = tf.reshape(image, [1, shape[0], shape[1], 3])
    mid = _resample(tf.cast(images, tf.float32), tf.reshape(matrix, [1, 9])[:, :8],
                    tf.stack([mid_height, mid_width]), spec.fill_mode, spec.interpolation)
    return resize(mid, (height, width), method="nearest" if spec.interpolation == "nearest" else "bilinear")[0]


def augment_dataset(dataset: tf.data.Dataset, seed: int, spec: AugmentSpec = DEFAULT_AUGMENT) -> tf.data.Dataset:
    """Augment a batched ``(images, labels)`` dataset; different draws every epoch, same for the same seed.

    Each batch takes its own stateless seed from ``tf.data.Dataset.random``, re-randomised on
    every pass over the data, so augmentation does not depend on thread timing.
    """
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds)).map(
        lambda batch, batch_seed: (augment_batch(batch[0], batch_seed, spec), batch[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
