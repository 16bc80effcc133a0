"""The decoded-crop cache: what it holds equals a fresh decode, in memory and on disk, and survives kills."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from toonvision import cache as cache_module  # noqa: E402
from toonvision.cache import (  # noqa: E402
    DISK_FOLDER,
    INDEX,
    CropCache,
    cache_budget,
    crop_cache,
    forget_shared,
)
from toonvision.datasets import from_directory, from_plan  # noqa: E402
from toonvision.decode import decode_file, resize  # noqa: E402
from toonvision.errors import UsageError  # noqa: E402
from toonvision.split import plan_split, write_split  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402

from helpers import write_colour_pool  # noqa: E402


@pytest.fixture
def pool(tmp_path):
    """A 3-class pool of 40x48 crops, a 16-bit PNG and a palette PNG among them."""
    layout, records = write_colour_pool(tmp_path / "img", {"cog_bb_a": 6, "cog_lb_b": 6, "cog_cb_c": 6})
    odd = [layout.pool / records[0].crop, layout.pool / records[7].crop]
    pixels = np.asarray(Image.open(odd[0]).convert("RGB"), dtype=np.uint16) * 257
    Image.fromarray(pixels[..., 0].astype("<u2")).save(odd[0])  # grey 16-bit: decoded to 8-bit RGB
    Image.open(odd[1]).convert("P", palette=Image.ADAPTIVE).save(odd[1])
    forget_shared()
    yield layout, records
    forget_shared()


@pytest.fixture(params=["memory", "disk"])
def kind(request):
    return request.param


def make_cache(kind, layout):
    return CropCache() if kind == "memory" else CropCache(layout.cache / DISK_FOLDER)


def paths_of(layout, records):
    return [str(layout.pool / r.crop) for r in records]


def fresh(path):
    return decode_file(tf.constant(path)).numpy()


def test_cached_pixels_equal_a_fresh_decode(pool, kind):
    layout, records = pool
    cache = make_cache(kind, layout)
    paths = paths_of(layout, records)
    keys = cache.ensure(paths)
    assert len(cache) == len(set(keys)) == len(paths)
    for path, key in zip(paths, keys, strict=True):
        image = cache.read(key)
        assert image.dtype == np.uint8 and image.shape == (48, 40, 3)
        np.testing.assert_array_equal(image, fresh(path))


@pytest.mark.parametrize("size", [(48, 44), (20, 16), (97, 61)])  # up, down and odd factors
def test_training_batches_equal_keras_loader_bit_for_bit(pool, kind, size):
    layout, records = pool
    plan = plan_split(records, get_task("suit"), (0.6, 0.2, 0.2), seed=4)
    task_dir = write_split(plan, layout)
    cache = make_cache(kind, layout)
    for split in ("train", "test"):
        expected = np.concatenate([x for x, _ in from_directory(task_dir / split, plan.classes, size)])
        dataset = from_plan(plan, layout.pool, split, size, cache=cache)
        got = np.concatenate([x for x, _ in dataset])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
        single = resize(decode_file(tf.constant(dataset.file_paths[0])), size).numpy()
        np.testing.assert_array_equal(got[0], single)


def test_shared_cache_decodes_each_crop_once_per_process(pool, monkeypatch):
    layout, records = pool
    decoded = []
    real = cache_module.decode_files
    monkeypatch.setattr(cache_module, "decode_files", lambda paths: decoded.extend(paths) or real(paths))
    paths = paths_of(layout, records)
    first = crop_cache(layout.cache, paths[:10])
    again = crop_cache(layout.cache, paths)  # 8 more crops: only those are decoded
    assert again is first and not again.on_disk
    assert crop_cache(layout.cache, paths[3:]) is first
    assert sorted(decoded) == sorted(paths)
    assert not layout.cache.exists()  # within the budget nothing is written


def test_identical_files_are_stored_once(pool):
    layout, records = pool
    paths = paths_of(layout, records)
    copy = layout.pool / "cog" / "copy.png"
    shutil.copyfile(paths[2], copy)
    cache = CropCache()
    keys = cache.ensure([paths[2], str(copy)])
    assert keys[0] == keys[1] and len(cache) == 1


def test_a_changed_file_is_decoded_again(pool):
    layout, records = pool
    path = paths_of(layout, records)[3]
    cache = crop_cache(layout.cache, [path])
    (old,) = cache.ensure([path])
    Image.new("RGB", (9, 5), (1, 2, 3)).save(path)
    (new,) = crop_cache(layout.cache, [path]).ensure([path])
    assert new != old
    np.testing.assert_array_equal(crop_cache(layout.cache, [path]).read(new), np.full((5, 9, 3), (1, 2, 3)))


def test_past_the_budget_the_pool_is_cached_on_disk_and_reused_by_another_process(pool, monkeypatch):
    layout, records = pool
    paths = paths_of(layout, records)
    cache = crop_cache(layout.cache, paths, budget=48 * 40 * 3 * 5)  # room for 5 of 18 crops
    assert cache.on_disk and cache.nbytes == 18 * 48 * 40 * 3
    folder = layout.cache / DISK_FOLDER
    index = json.loads((folder / INDEX).read_text())
    assert len(index["crops"]) == 18 and index["size"] == cache.nbytes
    # a new process: nothing to decode, the same pixels
    monkeypatch.setattr(cache_module, "decode_files", lambda paths: pytest.fail(f"decoded {paths}"))
    forget_shared()
    again = crop_cache(layout.cache, paths, budget="10k")
    for path, key in zip(paths, again.ensure(paths), strict=True):
        np.testing.assert_array_equal(again.read(key), fresh(path))


@pytest.mark.parametrize("image_size, on_disk", [((48, 40), False), ((24, 20), True)])
def test_crops_larger_than_the_model_input_go_to_disk(pool, image_size, on_disk):
    """RAM holds decoded crops only while they are no larger than the images the model sees."""
    layout, records = pool
    paths = paths_of(layout, records)
    cache = crop_cache(layout.cache, paths, image_size=image_size)  # crops are 48x40; default budget 2 GiB
    assert cache.on_disk is on_disk


def test_a_killed_append_leaves_the_disk_cache_intact(pool):
    layout, records = pool
    paths = paths_of(layout, records)
    folder = layout.cache / DISK_FOLDER
    cache = CropCache(folder)
    cache.ensure(paths[:6])
    committed = (folder / INDEX).read_bytes()
    pixels = next(folder.glob("pixels-*.u8"))
    with open(pixels, "ab") as handle:  # what a writer killed before its commit leaves behind
        handle.write(os.urandom(5000))
    reopened = CropCache(folder)
    assert (folder / INDEX).read_bytes() == committed and len(reopened) == 6
    keys = reopened.ensure(paths)  # the next append overwrites the uncommitted tail
    assert pixels.stat().st_size == reopened.nbytes == 18 * 48 * 40 * 3
    for path, key in zip(paths, keys, strict=True):
        np.testing.assert_array_equal(CropCache(folder).read(key), fresh(path))


@pytest.mark.parametrize("damage", ["garbage", "format", "truncated pixels"])
def test_a_damaged_disk_cache_is_rebuilt(pool, damage):
    layout, records = pool
    paths = paths_of(layout, records)
    folder = layout.cache / DISK_FOLDER
    CropCache(folder).ensure(paths)
    if damage == "garbage":
        (folder / INDEX).write_text("{not json")
    elif damage == "format":
        index = json.loads((folder / INDEX).read_text())
        (folder / INDEX).write_text(json.dumps({**index, "format": 0}))
    else:
        next(folder.glob("pixels-*.u8")).write_bytes(b"")
    cache = CropCache(folder)
    assert len(cache) == 0
    for path, key in zip(paths, cache.ensure(paths), strict=True):
        np.testing.assert_array_equal(cache.read(key), fresh(path))
    assert len(list(folder.glob("pixels-*.u8"))) == 1


def test_a_dataset_keeps_reading_while_the_cache_grows(pool, kind):
    layout, records = pool
    plan = plan_split(records[:12], get_task("suit"), (0.5, 0.5), seed=0)
    cache = make_cache(kind, layout)
    dataset = from_plan(plan, layout.pool, "train", (48, 40), cache=cache)
    before = np.concatenate([x for x, _ in dataset])
    cache.ensure(paths_of(layout, records))  # grows (a new buffer in memory, an append on disk)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in dataset]), before)


@pytest.mark.parametrize(
    "value, expected",
    [(None, 2 * 1024**3), ("", 2 * 1024**3), (0, 0), ("0", 0), ("1500", 1500), ("512M", 512 * 1024**2),
     ("2G", 2 * 1024**3), ("1.5g", int(1.5 * 1024**3)), ("64 MiB", 64 * 1024**2), ("10k", 10240)],
)
def test_cache_budget_sizes(value, expected, monkeypatch):
    monkeypatch.delenv("TOONVISION_CACHE_BUDGET", raising=False)
    assert cache_budget(value) == expected


def test_cache_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("TOONVISION_CACHE_BUDGET", "256M")
    assert cache_budget() == 256 * 1024**2
    assert cache_budget("1G") == 1024**3  # an explicit value wins
    monkeypatch.setenv("TOONVISION_CACHE_BUDGET", "lots")
    with pytest.raises(UsageError, match=r"\$TOONVISION_CACHE_BUDGET must be a size such as 2G.*'lots'"):
        cache_budget()


@pytest.mark.parametrize("value", [-1, "-5M", "2 apples"])
def test_bad_cache_budgets_are_usage_errors(value):
    with pytest.raises(UsageError, match="cache budget"):
        cache_budget(value)


def test_a_dropped_dataset_releases_its_pixels(pool):
    """TensorFlow keeps numpy_function callbacks forever; they must not keep the pixels alive."""
    import gc
    import weakref

    layout, records = pool
    plan = plan_split(records, get_task("suit"), (0.5, 0.5), seed=0)
    cache = CropCache()
    iterator = iter(from_plan(plan, layout.pool, "train", (48, 40), batch_size=3, cache=cache))
    buffer = weakref.ref(cache._buffer)
    del cache
    gc.collect()
    assert sum(len(x) for x, _ in iterator) == len(plan.files("train"))  # the iterator holds its dataset
    del iterator
    gc.collect()
    assert buffer() is None
