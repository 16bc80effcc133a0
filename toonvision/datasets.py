"""tf.data pipelines over a split, fed from decoded crops and resized exactly as Keras does.

Two sources, one decoding (Keras' ``image_dataset_from_directory``: read, decode to RGB,
bilinear resize to (height, width), stretched or, with ``resize="pad"``, aspect kept in zero
bands as ``pad_to_aspect_ratio=True`` does; float32 0..255; ``toonvision.decode`` does the same)::

    img/data/<task>/<split>/<class>/*.png  --from_directory-->  batches   (evaluate, predict)
    SplitPlan + pool + CropCache            --from_plan------->  batches   (every training run)

``from_plan`` reads the pool's crops where they are, so a run's re-split never copies or
links files; ``img/data/<task>/`` is written once, for the chosen run. Its crops come
decoded from a :class:`toonvision.cache.CropCache` (uint8 at the crop's own size, decoded
once per pool per process, or once per pool on disk), so no run decodes a PNG again. The
pipeline per epoch is: cached crop indices -> shuffle (training: the whole split, seeded,
a new order every epoch) -> read + bilinear resize, or with augmentation the fused resize +
flip/rotation/zoom of ``toonvision.augment.augment_crop`` (per image, in parallel) ->
batch -> prefetch. The resize (``toonvision.decode.resize``) is Keras' own op on the same
uint8 pixels, so every unaugmented batch equals what ``from_directory`` yields for the same
files, bit for bit; and no float32 copy of a split (4x the uint8 size) is ever held.
Labels follow the head: ``binary`` (float32, shape (1,)) for 2 classes, ``int`` otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toonvision.augment import AugmentSpec, augment_crop
from toonvision.cache import CropCache, Reader, weak_reader
from toonvision.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_RESIZE,
    KERAS_IMAGE_SUFFIXES,
)
from toonvision.decode import check_resize_mode
from toonvision.decode import resize as resize_image
from toonvision.errors import SplitError, UsageError

if TYPE_CHECKING:
    import tensorflow as tf

    from toonvision.split import SplitPlan

logger = logging.getLogger(__name__)

SHUFFLE_BATCHES = 8  # from_directory's per-epoch shuffle buffer, in batches (Keras' own choice)
PREFETCH_BATCHES = 1  # a float32 batch ready ahead of the model: overlaps input and training, bounded memory


def label_mode_for(num_classes: int) -> str:
    """``binary`` for a 2-class sigmoid head, ``int`` for a softmax head."""
    return "binary" if num_classes == 2 else "int"


def from_directory(
    split_dir: Path,
    classes: Sequence[str],
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shuffle: bool = False,
    seed: int | None = None,
    label_mode: str | None = None,
    resize: str = DEFAULT_RESIZE,
) -> tf.data.Dataset:
    """Batches of ``split_dir/<class>/*`` with ``classes`` as the label order (never inferred).

    ``resize="pad"`` keeps the aspect ratio (Keras' ``pad_to_aspect_ratio``), as
    :func:`toonvision.decode.resize` does.

    Without shuffling, batches come in file order and ``dataset.file_paths`` lists the files
    in that order (aligned with the predictions); ``dataset.class_names`` is ``classes``.
    """
    import keras

    classes = list(classes)
    _check_arguments(classes, image_size, batch_size, shuffle, seed)
    paths = list_split_files(Path(split_dir), classes)
    label_mode = label_mode or label_mode_for(len(classes))
    dataset = keras.utils.image_dataset_from_directory(
        str(split_dir),
        labels="inferred",
        label_mode=label_mode,
        class_names=classes,
        batch_size=None,
        image_size=tuple(image_size),
        shuffle=shuffle,
        seed=seed,
        interpolation="bilinear",
        pad_to_aspect_ratio=check_resize_mode(resize) == "pad",
        verbose=False,
    )
    file_paths = list(dataset.file_paths)
    if not shuffle and len(file_paths) != len(paths):  # Keras walks the same folders; a guard
        raise SplitError(f"{split_dir}: Keras found {len(file_paths)} images where {len(paths)} were listed")
    return _finish(dataset, len(file_paths), batch_size, shuffle, seed, file_paths, classes)


def from_plan(
    plan: SplitPlan,
    pool: Path,
    split: str,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shuffle: bool = False,
    seed: int | None = None,
    augment: AugmentSpec | None = None,
    cache: CropCache | None = None,
    resize: str = DEFAULT_RESIZE,
) -> tf.data.Dataset:
    """Batches of one split of ``plan``, read from the pool's crops, decoded as Keras does.

    ``cache`` (from :func:`toonvision.cache.crop_cache`) shares decoded crops between runs;
    without one, the split is decoded into a cache of its own. With ``shuffle`` the order is
    drawn from ``seed`` and changes every epoch; ``augment`` (training only) replaces the
    resize of each image by the fused resize + random flip/rotation/zoom of ``augment_crop``.
    ``resize`` is the mode of :func:`toonvision.decode.resize` (``pad`` keeps the aspect ratio).
    ``dataset.file_paths`` lists the split's files in plan order (class, then crop), the order of
    the batches when not shuffled.
    """
    import numpy as np
    import tensorflow as tf

    classes = list(plan.classes)
    _check_arguments(classes, image_size, batch_size, shuffle or augment is not None, seed)
    mode = check_resize_mode(resize)
    chosen = sorted(
        (a for a in plan.assignments if a.split == split),
        key=lambda a: (classes.index(a.cls), a.crop),
    )
    present = {a.cls for a in chosen}
    missing = [c for c in classes if c not in present]
    if missing:
        raise SplitError(
            f"the {split} split of task {plan.task!r} (seed {plan.seed}) has no crops of class "
            f"{', '.join(missing)}; label more crops of it or lower --min-per-class"
        )
    paths = [str(Path(pool) / a.crop) for a in chosen]
    labels = np.array([classes.index(a.cls) for a in chosen], dtype="int32")
    cache = cache if cache is not None else CropCache()
    where = cache.locate(cache.ensure(paths))
    pixels = cache.reader()
    read = weak_reader(pixels)
    size = tuple(int(v) for v in image_size)
    binary = label_mode_for(len(classes)) == "binary"

    def target(label: tf.Tensor) -> tf.Tensor:
        return tf.expand_dims(tf.cast(label, tf.float32), -1) if binary else label

    def load(row: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return resize_image(read_cached(read, row), size, mode=mode), target(label)

    def load_augmented(element: tuple[tf.Tensor, tf.Tensor], image_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        row, label = element
        return augment_crop(read_cached(read, row), image_seed, size, augment, mode), target(label)

    dataset = tf.data.Dataset.from_tensor_slices((where, labels))
    dataset._toonvision_pixels = pixels  # every dataset derived from this one keeps the pixels alive
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if augment is None:
        dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # every image its own stateless seed, re-drawn each epoch: reproducible whatever the thread timing
        seeds = tf.data.Dataset.random(seed=_derived_seed(seed, 1), rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(load_augmented, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size).prefetch(PREFETCH_BATCHES)
    dataset.file_paths = paths
    dataset.class_names = classes
    return dataset


def read_cached(read: Reader, row: tf.Tensor) -> tf.Tensor:
    """A cached crop (a ``CropCache.locate`` row): its (height, width, 3) uint8 pixels."""
    import tensorflow as tf

    image = tf.numpy_function(read, [row], tf.uint8, stateful=False)
    return tf.reshape(image, tf.stack([row[1], row[2], 3]))


def list_split_files(split_dir: Path, classes: Sequence[str]) -> list[Path]:
    """The image files of every class folder, in class order; an error naming a missing or empty folder."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise SplitError(f"{split_dir}: no such folder; run `toonvision split` for this task first")
    files: list[Path] = []
    for cls in classes:
        folder = split_dir / cls
        if not folder.is_dir():
            raise SplitError(
                f"{folder}: class folder missing (expected one per class: {', '.join(classes)}); "
                "run `toonvision split` again"
            )
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in KERAS_IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise SplitError(
                f"{folder}: no images (looked for {', '.join(KERAS_IMAGE_SUFFIXES)}); "
                "every class needs crops in every split: label more or run `toonvision split` again"
            )
        files.extend(found)
    return files


def _check_arguments(
    classes: Sequence[str], image_size: tuple[int, int], batch_size: int, shuffle: bool, seed: int | None
) -> None:
    if len(classes) < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise UsageError(f"class names must be unique, got {list(classes)}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise UsageError(f"image size must be (height, width) in pixels, got {tuple(image_size)}")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if shuffle and seed is None:
        raise UsageError("shuffling or augmenting needs a seed, so that a run can be reproduced")


def _finish(
    dataset: tf.data.Dataset,
    count: int,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    file_paths: list[str],
    classes: list[str],
) -> tf.data.Dataset:
    """(cache -> shuffle) -> batch -> prefetch, with the file list and class names attached.

    Only a shuffled dataset, iterated for several epochs, caches its decoded images; an
    ordered one is read once (evaluate, predict) and would only hold float32 copies.
    """
    if shuffle:
        dataset = dataset.cache()
        buffer = max(1, min(count, SHUFFLE_BATCHES * batch_size))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).prefetch(PREFETCH_BATCHES)
    dataset.file_paths = [str(p) for p in file_paths]
    dataset.class_names = list(classes)
    return dataset


def _derived_seed(seed: int | None, stream: int) -> int:
    """An independent seed for another random stream of the same run."""
    return ((seed or 0) * 1_000_003 + stream) % (2**31 - 1)
