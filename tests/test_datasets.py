"""Datasets: explicit class order, file order kept, decode once, plan and folders read the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toonvision.augment import DEFAULT_AUGMENT  # noqa: E402
from toonvision.cache import CropCache  # noqa: E402
from toonvision.datasets import (  # noqa: E402
    from_directory,
    from_plan,
    label_mode_for,
    list_split_files,
)
from toonvision.errors import ImageError, SplitError, UsageError  # noqa: E402
from toonvision.split import plan_split, write_split  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402

from helpers import write_colour_pool  # noqa: E402

SIZE = (48, 44)


@pytest.fixture
def pool(tmp_path):
    layout, records = write_colour_pool(tmp_path / "img", {"cog_bb_a": 10, "cog_lb_b": 10, "cog_cb_c": 10})
    plan = plan_split(records, get_task("suit"), (0.6, 0.2, 0.2), seed=1)
    return layout, plan


def batches(dataset):
    xs, ys = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("classes, mode", [(2, "binary"), (3, "int"), (4, "int")])
def test_label_mode_follows_the_head(classes, mode):
    assert label_mode_for(classes) == mode


def test_from_directory_uses_the_given_class_order_and_keeps_file_order(pool):
    layout, plan = pool
    task_dir = write_split(plan, layout)
    classes = ["lb", "cb", "bb"]  # not alphabetical: labels must follow this order, never inferred
    dataset = from_directory(task_dir / "test", classes, SIZE, batch_size=4)
    assert dataset.class_names == classes
    images, labels = batches(dataset)
    assert images.shape == (len(dataset.file_paths), *SIZE, 3) and images.dtype == np.float32
    folders = [path.split("/")[-2] for path in dataset.file_paths]
    assert [classes[i] for i in labels] == folders
    assert labels.tolist() == sorted(labels.tolist())  # file order: class by class


def test_from_directory_binary_labels_are_float_columns(tmp_path):
    layout, records = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "toon_cat": 6})
    task_dir = write_split(plan_split(records, get_task("binary"), (0.5, 0.5), seed=0), layout)
    _, labels = batches(from_directory(task_dir / "train", ["cog", "toon"], SIZE))
    assert labels.dtype == np.float32 and labels.shape == (6, 1)


def test_from_plan_reads_exactly_what_from_directory_reads(pool):
    layout, plan = pool
    task_dir = write_split(plan, layout)
    for split in ("train", "validate", "test"):
        images_dir, labels_dir = batches(from_directory(task_dir / split, plan.classes, SIZE))
        images_plan, labels_plan = batches(from_plan(plan, layout.pool, split, SIZE))
        np.testing.assert_array_equal(labels_plan, labels_dir)
        np.testing.assert_array_equal(images_plan, images_dir)


def test_crops_are_decoded_once_not_every_epoch(pool):
    layout, plan = pool
    dataset = from_plan(plan, layout.pool, "train", SIZE, batch_size=4, shuffle=True, seed=3)
    first, _ = batches(dataset)
    for path in dataset.file_paths:  # the files are gone: a second epoch must come from the cache
        Path(path).unlink()
    second, _ = batches(dataset)
    assert sorted(map(bytes, first)) == sorted(map(bytes, second))


def test_runs_sharing_a_cache_decode_each_crop_once(pool, monkeypatch):
    import toonvision.cache

    layout, plan = pool
    decoded = []
    real = toonvision.cache.decode_files
    monkeypatch.setattr(toonvision.cache, "decode_files", lambda paths: decoded.extend(paths) or real(paths))
    cache = CropCache()
    reference = {}
    for seed in (1, 2, 3):  # three runs, three re-splits of the same pool
        replan = plan_split(plan_records(layout), get_task("suit"), (0.6, 0.2, 0.2), seed=seed)
        for split in ("train", "validate", "test"):
            images, _ = batches(from_plan(replan, layout.pool, split, SIZE, cache=cache))
            for path, image in zip(
                from_plan(replan, layout.pool, split, SIZE, cache=cache).file_paths, images, strict=True
            ):
                assert np.array_equal(reference.setdefault(path, image), image)
    assert sorted(decoded) == sorted(set(decoded)) and len(decoded) == 30


def plan_records(layout):
    from toonvision.manifest import load_manifest

    return load_manifest(layout.manifest)


def test_shuffle_is_seeded_and_changes_every_epoch(pool):
    layout, plan = pool
    make = lambda seed: from_plan(plan, layout.pool, "train", SIZE, batch_size=4, shuffle=True, seed=seed)  # noqa: E731
    dataset = make(3)
    epoch1, epoch2 = batches(dataset)[1], batches(dataset)[1]
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist())
    assert epoch1.tolist() != epoch2.tolist()
    assert batches(make(3))[1].tolist() == epoch1.tolist()


def test_augmentation_changes_the_training_input(pool):
    layout, plan = pool
    plain = from_plan(plan, layout.pool, "train", SIZE, batch_size=4, shuffle=True, seed=3)
    augmented = from_plan(plan, layout.pool, "train", SIZE, batch_size=4, shuffle=True, seed=3, augment=DEFAULT_AUGMENT)
    x_plain, y_plain = batches(plain)
    x_aug, y_aug = batches(augmented)
    np.testing.assert_array_equal(y_plain, y_aug)  # same order, same labels ...
    assert np.abs(x_plain - x_aug).mean() > 1.0  # ... different pixels


def test_augmentation_is_reproducible_and_new_every_epoch(pool):
    layout, plan = pool
    def make():
        return from_plan(
            plan,
            layout.pool,
            "train",
            SIZE,
            batch_size=4,
            shuffle=True,
            seed=3,
            augment=DEFAULT_AUGMENT,
        )
    dataset = make()
    epoch1, epoch2 = batches(dataset)[0], batches(dataset)[0]
    assert not np.array_equal(epoch1, epoch2)
    np.testing.assert_array_equal(batches(make())[0], epoch1)


def test_missing_class_folder_is_named(pool):
    layout, plan = pool
    task_dir = write_split(plan, layout)
    with pytest.raises(SplitError, match=r"test/sb: class folder missing"):
        from_directory(task_dir / "test", ["bb", "sb"], SIZE)


def test_empty_class_folder_is_named(pool):
    layout, plan = pool
    task_dir = write_split(plan, layout)
    for file in (task_dir / "test" / "cb").iterdir():
        file.unlink()
    with pytest.raises(SplitError, match=r"test/cb: no images"):
        list_split_files(task_dir / "test", plan.classes)


def test_missing_split_folder_is_named(tmp_path):
    with pytest.raises(SplitError, match="no such folder"):
        from_directory(tmp_path / "nowhere", ["a", "b"], SIZE)


def test_split_without_a_class_is_an_error(pool):
    layout, plan = pool
    from dataclasses import replace

    thinned = replace(plan, assignments=tuple(a for a in plan.assignments if not (a.cls == "cb" and a.split == "test")))
    with pytest.raises(SplitError, match="no crops of class cb"):
        from_plan(thinned, layout.pool, "test", SIZE)


def test_an_undecodable_crop_is_named(pool):
    layout, plan = pool
    bad = layout.pool / plan.files("test")[0].crop
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageError, match=f"{bad}: cannot be decoded as an image \\(Invalid PNG"):
        from_plan(plan, layout.pool, "test", SIZE)


def test_a_missing_crop_is_named(pool):
    layout, plan = pool
    gone = layout.pool / plan.files("validate")[0].crop
    gone.unlink()
    with pytest.raises(ImageError, match=f"{gone}: cannot be read"):
        from_plan(plan, layout.pool, "validate", SIZE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shuffle": True}, "needs a seed"),
        ({"batch_size": 0}, "batch size"),
        ({"image_size": (0, 10)}, "image size"),
    ],
)
def test_bad_dataset_arguments_are_usage_errors(pool, kwargs, message):
    layout, plan = pool
    with pytest.raises(UsageError, match=message):
        from_plan(plan, layout.pool, "train", **{"image_size": SIZE, **kwargs})


# -- --resize pad ---------------------------------------------------------------------------------------


@pytest.fixture
def tall_pool(tmp_path):
    """Crops 48 high and 12 wide: 4:1, far from the 48x44 input."""
    layout, records = write_colour_pool(tmp_path / "img", {"cog_bb_a": 5, "toon_cat": 5}, size=(12, 48))
    return layout, plan_split(records, get_task("binary"), (0.6, 0.2, 0.2), seed=1)


def test_pad_keeps_the_aspect_ratio_in_training_as_in_prediction(tall_pool):
    from PIL import Image

    from toonvision.decode import content_box, model_input

    layout, plan = tall_pool
    cache = CropCache()
    dataset = from_plan(plan, layout.pool, "train", SIZE, cache=cache, resize="pad")
    padded, _ = batches(dataset)
    top, left, height, width = content_box((48, 12), SIZE, "pad")
    assert (top, left, height, width) == (0, 16, 48, 12)  # the crop at its own 4:1, not stretched to 48:44
    assert (padded[:, :, :left] == 0).all() and (padded[:, :, left + width :] == 0).all()
    assert (padded[:, :, left : left + width].max(axis=-1) > 0).all()
    # prediction (decode.model_input of the PNG files) feeds the very same pixels
    predicted = model_input([Image.open(path) for path in dataset.file_paths], SIZE, "pad")
    np.testing.assert_array_equal(padded, predicted)
    # the same cache serves a stretched dataset: it holds crops before any resize, whatever the mode
    stretched, _ = batches(from_plan(plan, layout.pool, "train", SIZE, cache=cache))
    assert (stretched[:, :, :left].max(axis=-1) > 0).all()
    np.testing.assert_array_equal(stretched, model_input([Image.open(p) for p in dataset.file_paths], SIZE))


def test_pad_reads_the_same_from_the_plan_and_the_split_folders(tall_pool):
    layout, plan = tall_pool
    task_dir = write_split(plan, layout)
    for split in ("train", "test"):
        from_dir, _ = batches(from_directory(task_dir / split, plan.classes, SIZE, resize="pad"))
        np.testing.assert_array_equal(batches(from_plan(plan, layout.pool, split, SIZE, resize="pad"))[0], from_dir)


def test_padded_augmentation_transforms_the_padded_image(tall_pool):
    from toonvision.augment import AugmentSpec

    layout, plan = tall_pool
    padded, _ = batches(from_plan(plan, layout.pool, "train", SIZE, resize="pad"))
    still = AugmentSpec(flip=0.0, rotation=0.0, zoom=0.0)
    same = from_plan(plan, layout.pool, "train", SIZE, seed=2, augment=still, resize="pad")
    np.testing.assert_allclose(batches(same)[0], padded, atol=1e-3)  # no transform: exactly the padded input
    flipped = from_plan(plan, layout.pool, "train", SIZE, seed=2, augment=AugmentSpec(1.0, 0.0, 0.0), resize="pad")
    np.testing.assert_allclose(batches(flipped)[0], padded[:, :, ::-1], atol=1e-3)  # the bands flip with it
