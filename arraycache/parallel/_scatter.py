"""Arrays scattered to a dask cluster: the registry that sends each content once, and how
tasks receive them (see ``_dask`` for the backend).

The registry (one per client, keyed by content digest) follows the rules of the local
sharing pool (``_pinned``, ``_pool``) with futures instead of files: an entry is *pinned* while a
call that uses it runs; after the calls it stays as long as the array it came from (its
owner: the array owning the data, sent whole) lives; all entries together stay under
``max_shared_bytes`` (``'auto'``: a quarter of the smallest worker memory limit, since
every worker may end up with a copy), least recently used first.  An entry that goes
is released on the cluster (``Future.release``: the scheduler forgets the data once no
task needs it).  Keys are ``arraycache-array-<digest>-<nonce>``: a nonce, so that a key
released and scattered again never races with its own release.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from ..hashing import _array_header, remember_digest
from ._pinned import Limit, PinnedCopies
from ._pool import AUTO_FRACTION

__all__ = [
    "Entry", "Registry", "Shipped", "receiving", "registry_of", "scattered_array",
    "scattered_object",
]


# --- what travels, and how tasks receive it -------------------------------------------------


class Shipped:
    """A scattered array as the cluster stores it.

    Wrapped so that dask moves it with pickle (protocol 5, zero-copy buffers), which
    keeps the dtype exactly (dask's own array serializer drops dtype metadata).
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self) -> tuple:
        return Shipped, (self.array,)


try:  # so that the scheduler and workers account for its real size
    from dask.sizeof import sizeof as _sizeof

    @_sizeof.register(Shipped)
    def _sizeof_shipped(shipped: Shipped) -> int:
        return int(shipped.array.nbytes)

except ImportError:  # pragma: no cover - only without dask, where nothing is scattered
    pass


_received = threading.local()


@contextlib.contextmanager
def receiving(data: dict[str, Any]):
    """Worker side: while a batch runs, its scattered data (dask resolved the futures)."""
    previous = getattr(_received, "data", None)
    _received.data = data
    try:
        yield
    finally:
        _received.data = previous


def scattered_array(key: str, digest: str, header: bytes, mode: str | None) -> np.ndarray:
    """Worker side: the scattered array ``key`` of the running batch, as ``mode`` asks."""
    arr = _received.data[key].array
    if mode != "r":
        return np.array(arr, order="K")  # private and writable, like loky's loaded copies
    view = arr.view()
    view.flags.writeable = False
    # The digest holds for this array only if it hashes with the sender's header (dtype
    # code, shape, order): numpy's pickle may turn np.longlong into np.int64, say.
    if _array_header(view) == header:
        remember_digest(view, digest)
    return view


def scattered_object(key: str) -> Any:
    """Worker side: an object of ``scatter=``, shared by the tasks of this worker."""
    return _received.data[key]


# --- the registry of scattered arrays --------------------------------------------------------


@dataclass(eq=False)
class Entry:
    """One scattered array, named by the digest of its content."""

    digest: str
    key: str
    future: Any
    nbytes: int
    pins: int = 0
    owners: set[int] = field(default_factory=set)


class Registry(PinnedCopies[Entry]):
    """Digest -> scattered array on one client's cluster, least recently used first:
    the rules of ``_pinned`` with futures instead of files."""

    _BOUND_TTL = 10.0  # seconds a measured 'auto' bound is reused

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client
        self._auto: tuple[float, int] | None = None

    def acquire(
        self, digest: str, arr: np.ndarray, limit: Limit, broadcast: bool = False
    ) -> Entry:
        """The scattered copy of ``arr`` (content ``digest``), scattered if missing, pinned."""
        def scatter() -> Entry:
            self._shrink(limit, incoming=arr.nbytes, measure=True)
            return self._scatter(digest, arr, broadcast)

        # One lost (its workers died) or cancelled (client restarted) is sent again.
        return self._acquire(digest, arr, scatter,
                             lambda entry: entry.future.status == "finished")

    def keys(self) -> list[str]:
        """Cluster keys of the scattered arrays, least recently used first."""
        with self._locked():
            return [entry.key for entry in self._items.values()]

    def _scatter(self, digest: str, arr: np.ndarray, broadcast: bool) -> Entry:
        key = f"arraycache-array-{digest}-{uuid.uuid4().hex[:8]}"
        plain = arr.view(np.ndarray) if isinstance(arr, np.memmap) else arr
        future = self.client.scatter({key: Shipped(plain)}, hash=False, broadcast=broadcast)[key]
        return Entry(digest, key, future, arr.nbytes)

    def _dispose(self, entry: Entry) -> None:
        # Thread-safe (it goes through the client's event loop); the scheduler forgets
        # the data once no task needs it.
        with contextlib.suppress(Exception):
            entry.future.release()

    def _bound(self, limit: Limit, measure: bool) -> int | None:
        """The bound ``limit`` sets; 'auto' is measured (a scheduler call) only if
        ``measure``: a release may run in any thread, the client's event loop included."""
        if limit != "auto":
            return limit  # type: ignore[return-value]
        now = time.monotonic()
        if measure and (self._auto is None or now - self._auto[0] > self._BOUND_TTL):
            self._auto = (now, int(AUTO_FRACTION * self._smallest_worker_memory()))
        return None if self._auto is None else self._auto[1]

    def _smallest_worker_memory(self) -> int:
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
            limits = [w.get("memory_limit") or 0 for w in workers]
        except Exception:
            limits = []
        limits = [n for n in limits if n > 0]
        if limits:
            return min(limits)
        try:  # no limits set (or not known): this machine's memory as the guess
            return psutil.virtual_memory().total
        except Exception:
            return 0


# client -> its registry; closed clients are dropped when the next one is looked up.
_REGISTRIES: dict[int, Registry] = {}
_REGISTRIES_LOCK = threading.Lock()


def registry_of(client: Any) -> Registry:
    """The registry of arrays scattered through ``client`` by this process."""
    with _REGISTRIES_LOCK:
        for key, registry in list(_REGISTRIES.items()):
            if registry.client.status in ("closing", "closed"):
                del _REGISTRIES[key]
        registry = _REGISTRIES.get(id(client))
        if registry is None or registry.client is not client:
            registry = _REGISTRIES[id(client)] = Registry(client)
        return registry
