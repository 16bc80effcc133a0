"""Decoded crops, kept once per pool: in this process's memory, or on disk past a RAM budget.

Every training run re-splits the pool but trains on the same crops, so each crop is decoded
once, exactly as Keras' loader decodes it (``toonvision.decode.decode_files``: 3 channels,
uint8), and its pixels are kept **at the crop's own size, as uint8**, keyed by the SHA-256 of
the crop file. The datasets resize them to the model's input every epoch with
``toonvision.decode.resize`` (Keras' bilinear ``tf.image.resize``), so a run trains on exactly,
bit for bit, what ``from_directory`` and ``evaluate`` feed the model, at any ``--image-size``
and ``--resize`` (one cache serves every size and mode: its keys need neither, as nothing it holds
has been resized).

Why not cache the resized image: as float32 it is 4x the uint8 size (the original's 1.2 GB
for 862 crops); rounded to uint8 it is no longer what evaluation feeds (up to 0.5 off); as
float16 it is 2x and still not exact. Crops are usually smaller than the model's input (the
synthetic pool: 16,600 pixels on average against 120,000 at 600x200), so the native-size
cache is also 7x smaller; the price is one resize per image per epoch (about 1.3 ms of one
core at 600x200, measured in bench/bench_train.py).

Where the pixels live::

    decoded bytes of the crops asked for <= budget   one uint8 buffer in RAM, shared by every run of
      (TOONVISION_CACHE_BUDGET, default 2 GiB,       this process on this pool (``crop_cache``)
      and no more than the same crops as uint8
      images at the model's input size)
    more than the budget                             img/.cache/crops/ on disk, shared by processes:
                                                     ├── pixels-<token>.u8   pixels, appended
                                                     ├── index.json          sha -> offset, size
                                                     └── .lock               held while appending (locks.locked)

The disk cache is append-only: new pixels are written past the committed end and fsynced, then
``index.json`` is replaced atomically, so a kill at any moment leaves the previous cache intact
(the uncommitted tail is overwritten by the next append). It is read with ``pread`` rather than
a memory map, so the pixels stay in the kernel's page cache and out of the process's resident
memory. It holds derived data only: delete the folder at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import struct
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from toonvision.constants import CACHE_BUDGET_ENV, DEFAULT_CACHE_BUDGET, FOLDER_LOCK
from toonvision.decode import decode_files, decoder_version
from toonvision.errors import ImageError, UsageError, write_error
from toonvision.fsutil import atomic_write_text, remove_stale_temp_files
from toonvision.locks import locked

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the stored pixels would change meaning
DISK_FOLDER = "crops"
INDEX = "index.json"
LOCK = FOLDER_LOCK
DECODE_CHUNK = 512  # crops decoded and appended at a time (bounds memory while filling the disk cache)
_HASH_THREADS = 4
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

Reader = Callable[[np.ndarray], np.ndarray]


def cache_budget(value: int | str | None = None) -> int:
    """Bytes of decoded pixels kept in RAM: ``value``, else ``$TOONVISION_CACHE_BUDGET``, else 2 GiB.

    Accepts bytes or a size with a binary unit ("512M", "2G"); 0 keeps every pool on disk.
    """
    where = "cache budget"
    if value is None:
        value = os.environ.get(CACHE_BUDGET_ENV)
        where = f"${CACHE_BUDGET_ENV}"
    if value is None or value == "":
        return DEFAULT_CACHE_BUDGET
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"{where} must be >= 0 bytes, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
    if not match:
        raise UsageError(f"{where} must be a size such as 2G, 512M or 0 (bytes), got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class CropCache:
    """Decoded uint8 RGB pixels of crops at their own size, keyed by the SHA-256 of the file.

    ``CropCache()`` lives in memory; ``CropCache(folder)`` reads and appends the disk cache
    in ``folder``. ``ensure`` decodes what is missing; ``locate`` and ``reader`` feed a
    tf.data pipeline (see ``toonvision.datasets.from_plan``).
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._entries: dict[str, tuple[int, int, int]] = {}  # key -> (offset, height, width)
        self._buffer = np.zeros(0, np.uint8)  # in memory: pixels[0:_used]
        self._used = 0
        self._file: _PixelFile | None = None  # on disk
        if self.folder is not None:
            self._load_index()

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    @property
    def nbytes(self) -> int:
        """Bytes of pixels held (in memory, or committed on disk)."""
        return self._used

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def ensure(self, paths: Sequence[str | Path]) -> list[str]:
        """Decode the crops of ``paths`` that are not cached yet; their keys, in order.

        An unreadable or undecodable crop raises ImageError naming it; nothing is cached then.
        """
        keys = [key for key, _ in identify(paths)]
        if all(key in self._entries for key in keys):
            return keys
        if self.folder is None:
            self._fill(paths, keys)
            return keys
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with locked(self.folder / LOCK, str(self.folder), wait=True):  # appends are short: wait, not refuse
                self._load_index()  # another process may have appended since
                if self._file is None:
                    self._start_disk_file()
                self._fill(paths, keys)
        except OSError as exc:
            raise write_error(self.folder, exc) from exc
        return keys

    def locate(self, keys: Sequence[str]) -> np.ndarray:
        """(n, 3) int64 rows of (offset, height, width) for cached ``keys``."""
        try:
            return np.array([self._entries[key] for key in keys], dtype=np.int64).reshape(-1, 3)
        except KeyError as exc:
            raise KeyError(f"crop {exc.args[0]} is not in the cache; call ensure() first") from None

    def reader(self) -> Reader:
        """A function from a ``locate`` row to that crop's (height, width, 3) uint8 pixels.

        It is bound to the storage as it is now, so a dataset built from it keeps working
        while the cache grows. A dataset must hold it (see :func:`weak_reader`).
        """
        if self._file is not None:
            return self._file
        return _MemoryReader(self._buffer)

    def read(self, key: str) -> np.ndarray:
        """One cached crop's pixels (for tests and tools)."""
        return self.reader()(self.locate([key])[0])

    # -- filling ---------------------------------------------------------------------------

    def _fill(self, paths: Sequence[str | Path], keys: Sequence[str]) -> None:
        todo: dict[str, str] = {}
        for path, key in zip(paths, keys, strict=True):
            if key not in self._entries and key not in todo:
                todo[key] = str(path)
        if not todo:
            return
        logger.info("decoding %d crop(s) into the %s cache", len(todo), "disk" if self.folder else "memory")
        if self._file is None:
            estimates = dict(identify(list(todo.values())))
            self._reserve(self._used + sum(estimates.values()))
        items = list(todo.items())
        for start in range(0, len(items), DECODE_CHUNK):
            chunk = items[start:start + DECODE_CHUNK]
            images = list(decode_files([path for _, path in chunk]))
            self._append([key for key, _ in chunk], images)

    def _append(self, keys: Sequence[str], images: Sequence[np.ndarray]) -> None:
        sizes = [image.size for image in images]
        total = sum(sizes)
        start = self._used
        if self._file is None:
            if start + total > self._buffer.size:
                self._reserve(max(start + total, int(self._buffer.size * 1.5)))
            offset = start
            for image in images:
                self._buffer[offset:offset + image.size] = image.reshape(-1)
                offset += image.size
        else:
            self._file.write_at(start, images)
        offset = start
        for key, image, size in zip(keys, images, sizes, strict=True):
            self._entries[key] = (offset, int(image.shape[0]), int(image.shape[1]))
            offset += size
        self._used = start + total
        if self._file is not None:
            self._save_index()

    def _reserve(self, size: int) -> None:
        """Grow the in-memory buffer to ``size`` bytes; readers handed out earlier keep the old one."""
        if size > self._buffer.size:
            grown = np.empty(size, np.uint8)
            grown[:self._used] = self._buffer[:self._used]
            self._buffer = grown

    def missing_bytes(self, paths: Sequence[str | Path]) -> int:
        """Estimated decoded bytes of the crops of ``paths`` not cached yet (from the file headers)."""
        seen: set[str] = set()
        total = 0
        for key, estimate in identify(paths):
            if key not in self._entries and key not in seen:
                seen.add(key)
                total += estimate
        return total

    # -- the disk index ----------------------------------------------------------------------

    def _load_index(self) -> None:
        assert self.folder is not None
        index = _read_index(self.folder / INDEX)
        if index is None:
            self._entries, self._used, self._file = {}, 0, None
            return
        name, size, entries = index
        if self._file is None or self._file.path.name != name:
            self._file = _PixelFile(self.folder / name)
        self._entries, self._used = entries, size

    def _save_index(self) -> None:
        assert self.folder is not None and self._file is not None
        index = {
            "format": CACHE_FORMAT,
            "decoder": decoder_version(),
            "pixels": self._file.path.name,
            "size": self._used,
            "crops": {key: list(entry) for key, entry in self._entries.items()},
        }
        try:
            self._file.sync()
            atomic_write_text(self.folder / INDEX, json.dumps(index, separators=(",", ":")) + "\n")
        except OSError as exc:
            raise write_error(self.folder / INDEX, exc) from exc

    def _start_disk_file(self) -> None:
        """Begin a new, empty pixel file (the index is missing, damaged or from another version)."""
        assert self.folder is not None
        remove_stale_temp_files(self.folder / INDEX)
        for old in self.folder.glob("pixels-*.u8"):
            old.unlink(missing_ok=True)  # readers that opened it keep their open handle
        self._file = _PixelFile(self.folder / f"pixels-{secrets.token_hex(6)}.u8")
        self._entries, self._used = {}, 0


# -- the shared cache of this process ------------------------------------------------------

_SHARED: dict[str, CropCache] = {}  # cache folder -> this process's in-memory cache of that pool


def crop_cache(
    cache_dir: Path, paths: Sequence[str | Path], budget: int | str | None = None,
    image_size: tuple[int, int] | None = None,
) -> CropCache:
    """A cache holding every crop of ``paths`` decoded, decoding only what is missing.

    While the crops fit ``budget`` (see :func:`cache_budget`) this is the process's in-memory
    cache of the pool whose cache folder is ``cache_dir``, reused by every later call, so each
    crop is decoded once per process however many runs train on it. Past the budget it is the
    pool's disk cache in ``cache_dir/crops``, decoded once per pool. With ``image_size`` (the
    model's input) the budget is also capped at the uint8 size of the crops at that size: crops
    far larger than the model's input would cost more RAM than the images the model sees, so
    they go to disk, where the kernel's page cache holds them and can reclaim them.
    """
    budget = cache_budget(budget)
    if image_size is not None:
        budget = min(budget, len(paths) * int(image_size[0]) * int(image_size[1]) * 3)
    name = str(Path(cache_dir).absolute())
    memory = _SHARED.get(name)
    if memory is None or memory.nbytes + memory.missing_bytes(paths) > budget:
        memory = CropCache()  # one pool at a time: a process that moves on frees the last one
        _SHARED.clear()
        if memory.missing_bytes(paths) > budget:
            return disk_cache(cache_dir, paths)
        _SHARED[name] = memory
    memory.ensure(paths)
    return memory


def disk_cache(cache_dir: Path, paths: Sequence[str | Path]) -> CropCache:
    """The pool's disk cache in ``cache_dir/crops``, with every crop of ``paths`` decoded into it."""
    cache = CropCache(Path(cache_dir) / DISK_FOLDER)
    cache.ensure(paths)
    return cache


def forget_shared() -> None:
    """Drop this process's in-memory caches (their memory is freed once no dataset uses them)."""
    _SHARED.clear()


# -- identifying -------------------------------------------------------------------------------

_IDENTITIES: dict[str, tuple[int, int, str, int]] = {}  # path -> (size, mtime_ns, key, decoded bytes)


def identify(paths: Sequence[str | Path]) -> list[tuple[str, int]]:
    """(content key, decoded bytes estimated from the header) of each file.

    The key is the SHA-256 of the file's bytes, so the cache never trusts a name or a
    manifest; a file is read again only when its size or modification time changed.
    """
    out: list[tuple[str, int]] = [("", 0)] * len(paths)
    stale: list[tuple[int, os.stat_result | None]] = []
    for i, path in enumerate(paths):
        try:
            info: os.stat_result | None = os.stat(path)
        except OSError:
            info = None
        known = _IDENTITIES.get(str(path))
        if info is not None and known is not None and known[:2] == (info.st_size, info.st_mtime_ns):
            out[i] = (known[2], known[3])
        else:
            stale.append((i, info))
    if stale:
        with ThreadPoolExecutor(min(_HASH_THREADS, len(stale))) as pool:
            found = list(pool.map(lambda item: _hash_file(str(paths[item[0]])), stale))
        for (i, info), (key, estimate) in zip(stale, found, strict=True):
            if info is not None:
                _IDENTITIES[str(paths[i])] = (info.st_size, info.st_mtime_ns, key, estimate)
            out[i] = (key, estimate)
    return out


def _hash_file(path: str) -> tuple[str, int]:
    """SHA-256 of the file and its decoded size in bytes estimated from the header (0 if unknown)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(
            f"{path}: cannot be read ({exc.strerror or exc}); restore it or run `toonvision extract` again"
        ) from None
    return hashlib.sha256(data).hexdigest(), _decoded_bytes(data)


def _decoded_bytes(data: bytes) -> int:
    if data[:8] == _PNG_SIGNATURE and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width * height * 3
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            return image.width * image.height * 3
    except Exception:  # the decoder will name the file; the estimate only picks RAM or disk
        return 0


# -- storage -------------------------------------------------------------------------------------


class _WeakReader:
    """What ``tf.numpy_function`` keeps of a reader: a weak reference.

    TensorFlow never releases the Python functions of ``numpy_function`` (its registry only
    grows), so a reader it held strongly would keep the pixels of every finished dataset
    alive. The dataset holds the reader instead (as ``tf.data.Dataset.from_generator``
    holds its generator), and the reader dies with it.
    """

    def __init__(self, reader: Reader) -> None:
        self._reader = weakref.ref(reader)

    def __call__(self, where: np.ndarray) -> np.ndarray:
        reader = self._reader()
        if reader is None:
            raise RuntimeError("the decoded crops of this dataset were released; build the dataset again")
        return reader(where)


def weak_reader(reader: Reader) -> Reader:
    """A reader for ``tf.numpy_function`` that does not keep ``reader`` (and its pixels) alive."""
    return _WeakReader(reader)


class _MemoryReader:
    """Reads crops out of one in-memory buffer (a copy, so the batch does not pin the buffer)."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer = buffer

    def __call__(self, where: np.ndarray) -> np.ndarray:
        offset, height, width = (int(v) for v in where)
        return self.buffer[offset : offset + height * width * 3].reshape(height, width, 3).copy()


class _PixelFile:
    """The disk cache's pixel file: positioned reads and writes on one open descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def __call__(self, where: np.ndarray) -> np.ndarray:
        offset, height, width = (int(v) for v in where)
        size = height * width * 3
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise ImageError(
                f"{self.path}: the decoded-crop cache is truncated; delete {self.path.parent} and train again"
            )
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)

    def write_at(self, offset: int, images: Sequence[np.ndarray]) -> None:
        os.ftruncate(self.fd, offset)  # drop a tail that a killed writer never committed
        for image in images:
            data = np.ascontiguousarray(image, np.uint8).tobytes()
            written = 0
            while written < len(data):
                written += os.pwrite(self.fd, data[written:], offset + written)
            offset += len(data)

    def sync(self) -> None:
        os.fsync(self.fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


def _read_index(path: Path) -> tuple[str, int, dict[str, tuple[int, int, int]]] | None:
    """(pixel file name, committed size, entries), or None when missing, damaged or stale."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        name, size = index["pixels"], int(index["size"])
        entries = {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in index["crops"].items()}
        pixels = path.parent / name
        if (
            index.get("format") != CACHE_FORMAT
            or index.get("decoder") != decoder_version()
            or not re.fullmatch(r"pixels-[0-9a-f]+\.u8", name)
            or pixels.stat().st_size < size
        ):
            return None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        logger.warning("%s: decoded-crop cache index is damaged; starting the cache again", path)
        return None
    return name, size, entries
