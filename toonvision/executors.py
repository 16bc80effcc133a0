"""Where independent runs execute: here, one at a time (``local``), or as Ray tasks (``ray``).

``train``, ``compare`` (and later ``cv`` and ``tune``) plan their runs in the driver and hand
them to an executor; ``Executor.map_runs(fn, jobs, site)`` calls ``fn(site, job)`` once per job
and yields an :class:`Outcome` per job as it completes (any order with Ray). The caller commits
results itself, in run order (:class:`RunOrder`), so nothing but the driver ever writes to
models/. What a Ray run gets::

    driver                                       Ray worker (any node)
    ├── plans splits and seeds                   ├── RunSite.layout(): the crops, from
    ├── RunSite: the crops, either               │   ├── store:  <tmp>/toonvision-ray/<digest>/img/unsorted/
    │   ├── store:  their PNG bytes, put once    │   │           (written once per node: temp + rename)
    │   │           in the object store          │   └── shared: the driver's img/ at the same path
    │   └── shared: img/'s path (shared storage) ├── fn(site, job): the one run function
    └── commits results in run order             └── returns metrics, history, the model as .keras bytes

Faults: a worker that dies mid-run is retried by Ray (``max_retries`` system failures); a run
that raises or dies past its retries comes back as a failed Outcome and the other runs go on;
closing the iterator (Ctrl-C, an error in the caller) cancels the runs still outstanding. The
driver writes nothing here, so a driver killed at any moment leaves only what the ledger committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from toonvision.errors import ToonVisionError, TrainingError, UsageError
from toonvision.layout import Layout

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
CROP_SOURCES = ("store", "shared")  # how Ray workers get the crops: the object store, or img/ on shared storage
DEFAULT_ADDRESS = "auto"
MAX_RETRIES = 3  # Ray retries of a run whose worker died (a run that raises is not retried)
CANCEL_ATTEMPTS = 6  # a cancelled run Ray restarted anyway is cancelled again, this many times in all
CANCEL_WAIT_S = 10.0  # how long each cancel waits for the runs to stop
_LOCAL_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds every service to 127.0.0.1 (its single-host mode)
_POOLS = "toonvision-ray"  # under the worker node's temp folder: the crops of shipped pools, by digest

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """The result of job ``index``, or the error that ended it for good (``value`` is then None)."""

    index: int
    value: R | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExecutorOptions:
    """The command line's --executor, --address, --cpus-per-run, --gpus-per-run and --crops."""

    name: str = "local"
    address: str = DEFAULT_ADDRESS
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    crops: str = "store"
    max_retries: int = MAX_RETRIES

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.name!r}")
        if self.crops not in CROP_SOURCES:
            raise UsageError(f"--crops must be one of {', '.join(CROP_SOURCES)}, got {self.crops!r}")
        if not self.cpus_per_run > 0:
            raise UsageError(f"--cpus-per-run must be > 0, got {self.cpus_per_run}")
        if not self.gpus_per_run >= 0:
            raise UsageError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise UsageError(f"--gpus-per-run above 1 must be a whole number (Ray's rule), got {self.gpus_per_run}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise UsageError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")


@dataclass(frozen=True)
class RunSite:
    """Where a run finds the crops: the driver's layout, or the pool's PNG bytes in Ray's object store.

    ``remote`` runs return their model as .keras bytes (:func:`portable`).
    """

    layout_here: Layout | None = None  # local, or shared storage: the driver's folders
    crops: Any = field(default=None, repr=False)  # store: an ObjectRef to {relative crop path: PNG bytes}
    digest: str = ""
    remote: bool = False

    def layout(self) -> Layout:
        """The folders to train from on this machine (store: the shipped crops, written once per node)."""
        if self.layout_here is not None:
            return self.layout_here
        return Layout.from_dirs(_materialize(self.crops, self.digest) / "img", Path(tempfile.gettempdir()) / _POOLS)


class Executor(Protocol):
    """Runs independent jobs; yields each one's :class:`Outcome` as it completes."""

    remote: bool

    def site(self, layout: Layout, crops: Sequence[Path]) -> RunSite: ...

    def map_runs(self, fn: Callable[[RunSite, J], R], jobs: Iterable[J], site: RunSite) -> Iterator[Outcome[R]]: ...


class LocalExecutor:
    """Runs one job at a time in this process, lazily and in order; a failing run stops the command."""

    remote = False

    def site(self, layout: Layout, crops: Sequence[Path]) -> RunSite:
        return RunSite(layout_here=layout)

    def map_runs(self, fn: Callable[[RunSite, J], R], jobs: Iterable[J], site: RunSite) -> Iterator[Outcome[R]]:
        for index, job in enumerate(jobs):
            yield Outcome(index, fn(site, job))


class RayExecutor:
    """Runs each job as one Ray task (``cpus_per_run``/``gpus_per_run`` resources, ``max_retries``)."""

    remote = True

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    def site(self, layout: Layout, crops: Sequence[Path]) -> RunSite:
        """A site for ``crops``: their bytes put once in the object store, or img/'s path with --crops shared."""
        if self.options.crops == "shared":
            return RunSite(layout_here=layout, remote=True)
        ray = _import_ray()
        pool = layout.pool
        blob = {}
        for path in crops:
            try:
                blob[Path(path).relative_to(pool).as_posix()] = Path(path).read_bytes()
            except OSError as exc:
                raise TrainingError(f"{path}: cannot be read to ship to the workers ({exc.strerror or exc})") from None
        digest = hashlib.sha256()
        for name in sorted(blob):
            digest.update(f"{name}\t{hashlib.sha256(blob[name]).hexdigest()}\n".encode())
        return RunSite(crops=ray.put(blob), digest=digest.hexdigest()[:24], remote=True)

    def map_runs(self, fn: Callable[[RunSite, J], R], jobs: Iterable[J], site: RunSite) -> Iterator[Outcome[R]]:
        ray = _import_ray()
        o = self.options
        task = ray.remote(_call).options(
            num_cpus=o.cpus_per_run, num_gpus=o.gpus_per_run, max_retries=o.max_retries, retry_exceptions=False,
        )
        site_ref = ray.put(site)
        pending = {task.remote(fn, site_ref, job, o.cpus_per_run, o.gpus_per_run): i for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        yield Outcome(index, ray.get(ref))
                    except ray.exceptions.RayTaskError as exc:  # the run raised: its own error, not Ray's wrapper
                        yield Outcome(index, error=_describe(exc.cause if exc.cause is not None else exc))
                    except ray.exceptions.RayError as exc:  # died past its retries: killed, out of memory, node lost
                        yield Outcome(index, error=_describe(exc))
        finally:
            if pending:
                _cancel(ray, list(pending))


def _cancel(ray: Any, refs: list[Any], attempts: int = CANCEL_ATTEMPTS, wait_s: float = CANCEL_WAIT_S) -> None:
    """Force-cancels ``refs`` and waits until each has stopped, cancelling again any Ray retried meanwhile.

    Ray can restart a task whose worker it has just killed for the cancel (ray-project/ray#54260),
    so one cancel may leave a run holding its CPUs; the wait confirms they are free.
    """
    logger.warning("cancelling %d outstanding run(s)", len(refs))
    remaining = refs
    for _ in range(attempts):
        for ref in remaining:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        _, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=wait_s, fetch_local=False)
        if not remaining:
            return
    logger.warning("%d run(s) still running after %d cancels; stop them with `ray stop` on their node",
                   len(remaining), attempts)


class RunOrder(Generic[R]):
    """Takes outcomes in any order, hands back results in job order from ``start``; remembers failures."""

    def __init__(self, start: int = 0) -> None:
        self.next = start
        self._waiting: dict[int, R] = {}
        self.failed: dict[int, str] = {}

    def add(self, outcome: Outcome[R]) -> list[R]:
        """The results that can be committed now that ``outcome`` arrived, in order."""
        if not outcome.ok:
            self.failed[outcome.index] = str(outcome.error)
            return []
        self._waiting[outcome.index] = outcome.value  # type: ignore[assignment]
        ready = []
        while self.next in self._waiting:
            ready.append(self._waiting.pop(self.next))
            self.next += 1
        return ready

    @property
    def waiting(self) -> list[int]:
        """Jobs that finished but wait behind a failed one (not committed)."""
        return sorted(self._waiting)


def failure_message(what: str, failed: dict[int, str], waiting: Sequence[int], label: Callable[[int], str]) -> str:
    """One message naming every failed run and its error, and the finished runs left uncommitted behind them."""
    errors = "; ".join(f"{label(i)}: {error}" for i, error in sorted(failed.items()))
    lines = [f"{what}: {len(failed)} run(s) failed: {errors}"]
    if waiting:
        lines.append(f"{len(waiting)} finished run(s) after the first failure were not committed "
                     f"({', '.join(label(i) for i in waiting)})")
    return "\n".join(lines)


@contextlib.contextmanager
def open_executor(options: ExecutorOptions | None = None) -> Iterator[LocalExecutor | RayExecutor]:
    """The executor of ``options``; for Ray, connected for the block (a cluster it started is stopped after)."""
    options = options or ExecutorOptions()
    if options.name == "local":
        yield LocalExecutor()
        return
    ray = _import_ray(local=_on_loopback(options.address))
    started = False
    if not ray.is_initialized():
        _connect(ray, options.address)
        started = True
    try:
        yield RayExecutor(options)
    finally:
        if started:
            ray.shutdown()


def portable(finished: Any) -> Any:
    """A FinishedRun whose model is the bytes of its .keras file, to travel back to the driver."""
    return dataclasses.replace(finished, model=model_bytes(finished.model))


def model_bytes(model: keras.Model | bytes) -> bytes:
    """The bytes of ``model`` saved as a .keras file."""
    if isinstance(model, bytes):
        return model
    with tempfile.TemporaryDirectory(prefix="toonvision-model-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


# -- Ray ------------------------------------------------------------------------------------

def _starts_local(address: str) -> bool:
    return address == "local" or (address == DEFAULT_ADDRESS and not os.environ.get("RAY_ADDRESS"))


def _on_loopback(address: str) -> bool:
    """Whether the cluster is one on 127.0.0.1 (started here, or joined there): then this driver must be too."""
    if _starts_local(address):
        return True
    target = os.environ.get("RAY_ADDRESS", "") if address == DEFAULT_ADDRESS else address
    host = target.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost")


def _import_ray(local: bool = False) -> Any:
    """Ray, imported on first use (it takes a second and is an optional extra)."""
    if local:
        os.environ.setdefault(_LOCAL_ENV, "0")  # read when Ray is imported (and by the processes it starts)
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--executor ray needs Ray, which is not installed; install it with: pip install 'toonvision[ray]'"
        ) from None
    if local and os.environ.get(_LOCAL_ENV) == "0":
        import ray._private.ray_constants as constants  # imported before the variable was set

        constants.ENABLE_RAY_CLUSTER = False
    return ray


def _connect(ray: Any, address: str) -> None:
    """Join the cluster at ``address`` (auto: $RAY_ADDRESS), or start a local one bound to 127.0.0.1."""
    try:
        if _starts_local(address):
            start_local_cluster()
        else:
            ray.init(address=os.environ["RAY_ADDRESS"] if address == DEFAULT_ADDRESS else address,
                     log_to_driver=logger.isEnabledFor(logging.DEBUG), logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TrainingError(f"cannot reach a Ray cluster at {address!r}: {exc}") from None


def start_local_cluster(num_cpus: int | None = None) -> str:
    """Start a Ray cluster on this machine only (every service on 127.0.0.1, no dashboard); its address."""
    ray = _import_ray(local=True)
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=logger.isEnabledFor(logging.DEBUG), logging_level=logging.ERROR)
    return ray.get_runtime_context().gcs_address


def _call(fn: Callable[[RunSite, J], R], site: RunSite, job: J, cpus: float, gpus: float) -> R:
    """A Ray task: one run, with TensorFlow held to the task's CPUs (and sharing its GPU when a fraction)."""
    threads = str(max(1, int(cpus)))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)  # read when TensorFlow starts in this worker
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", threads)
    if 0 < gpus < 1:
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # packed runs must not each take the whole GPU
    return fn(site, job)


def _materialize(crops: Any, digest: str) -> Path:
    """The shipped crops under this node's temp folder (written once per node: temp folder + rename)."""
    root = Path(tempfile.gettempdir()) / _POOLS / digest
    if (root / "img").is_dir():
        return root
    ray = _import_ray()
    blob = ray.get(crops) if not isinstance(crops, dict) else crops
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root.parent))
    try:
        pool = staging / "img" / "unsorted"
        for name, data in blob.items():
            target = pool / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise TrainingError(f"a shipped crop has an unsafe path: {name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        root.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError, OSError):
            os.rename(staging / "img", root / "img")  # another worker of this node may have won: use its copy
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _describe(exc: BaseException) -> str:
    """An error for the driver's message: the project's message as it is, anything else with its type."""
    if isinstance(exc, ToonVisionError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


__all__ = [
    "CROP_SOURCES", "DEFAULT_ADDRESS", "EXECUTORS", "MAX_RETRIES", "Executor", "ExecutorOptions", "LocalExecutor",
    "Outcome", "RayExecutor", "RunOrder", "RunSite", "failure_message", "model_bytes", "open_executor", "portable",
    "start_local_cluster",
]
