"""The ``'dask'`` backend: batches run on a ``distributed`` cluster, large arrays scattered once.

Batches travel as the bytes arraycache pickles itself (see ``_pickling``), and run in
the workers through the same entry point as loky's (:func:`run_batch_in_worker`), so
exceptions keep their type and remote traceback, and cached functions called in tasks
hash and hit as they would in the caller.  What differs is how large arrays travel:

- an array argument above ``max_nbytes`` is scattered to the cluster
  (``client.scatter``, ``hash=False``), under a key made of its content digest (the
  one ``arraycache.hashing`` computes: O(1) for cache hits) and a nonce, and the
  pickled task holds only that key; the batch lists the futures it uses, so dask
  delivers the data to the worker that runs it (moving it between workers itself);
- the scattered data is kept in a registry of this process, one per client, keyed by
  digest, so the same content is sent once per session, not once per task or call; it
  lives as the local sharing pool's copies do (see ``_scatter``): pinned while a call
  uses it, then as long as the array it came from, under ``max_shared_bytes``;
- in the worker a scattered array is handed to tasks read-only with ``mmap_mode='r'``
  (the default; it carries its digest, so hashing it is O(1)) and as a private copy
  otherwise; results come back pickled (workers may be on other machines: no files).

``timeout`` counts from when a worker starts the batch: the batch logs an event that
the client receives (only when a timeout is set).  A task that has started cannot be
interrupted by dask: after a timeout or an error the call returns at once, the tasks
not started are cancelled and those running finish unseen.  A worker that dies is
handled by dask (its tasks are retried on other workers); a task that kills
``distributed.scheduler.allowed-failures`` + 1 workers fails with
:class:`WorkerDiedError`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import importlib.util
import inspect
import os
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..funcinfo import _MAIN_SCRIPT
from ..hashing import _array_header, array_digest
from ._backends import ParallelBackend
from ._config import UNSET
from ._errors import WorkerDiedError
from ._pickling import Task, dumps_batch, run_batch_in_worker
from ._pool import check_limit, get_max_shared_bytes
from ._scatter import Entry, receiving, registry_of, scattered_array, scattered_object
from ._sharing import ResultSpec

__all__ = ["DaskBackend", "make_dask_backend", "run_scattered_batch"]

_INSTALL = (
    "backend 'dask' runs tasks on a dask.distributed cluster, and dask.distributed is not "
    "installed. Please install dask and distributed: pip install 'arraycache[dask]'"
)
_NO_CLIENT = (
    "backend 'dask' needs a dask.distributed Client: create one first\n\n"
    "    from dask.distributed import Client\n"
    "    client = Client()            # a local cluster\n"
    "    client = Client('scheduler-address:8786')\n\n"
    "or pass one: parallel_config(backend='dask', client=client), or "
    "parallel_config(backend='dask', scheduler_host='scheduler-address:8786')"
)


def make_dask_backend(**kwargs: Any) -> DaskBackend:
    """The factory registered as ``'dask'``: a clear error when distributed is missing."""
    if importlib.util.find_spec("distributed") is None:
        raise ValueError(_INSTALL)
    return DaskBackend(**kwargs)


def run_scattered_batch(
    payload: bytes, data: dict[str, Any], topic: str | None, main_script: str | None = None
) -> bytes:
    """Entry point of a batch on a dask worker: :func:`run_batch_in_worker` with the
    scattered data of the batch at hand (dask resolved ``data``'s futures).

    ``main_script`` is the caller's (see ``funcinfo``): functions of a script, rebuilt
    here by value, then get the caller's cache entries.  It is the process's
    environment: a worker serving two scripts at once could mix them up.
    """
    if main_script is not None and os.environ.get(_MAIN_SCRIPT) != main_script:
        os.environ[_MAIN_SCRIPT] = main_script
    if topic is not None:
        _announce_start(topic)
    with receiving(data):
        return run_batch_in_worker(payload)


def _announce_start(topic: str) -> None:
    # For timeouts counted from the start: a missed event only means the batch is not
    # timed, never that it times out early.
    with contextlib.suppress(Exception):
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(topic, str(worker.get_current_task()))


# --- start events, for timeouts --------------------------------------------------------------

# client id -> {batch key: its concurrent future, not started yet}
_WAITING: dict[str, dict[str, cf.Future]] = {}
_WAITING_LOCK = threading.Lock()


def _started_topic(client: Any) -> str:
    """The event topic on which this client's timed batches announce their start."""
    topic = f"arraycache-started-{client.id}"
    with _WAITING_LOCK:
        if client.id not in _WAITING:
            waiting: dict[str, cf.Future] = {}
            _WAITING[client.id] = waiting

            def on_event(event: tuple, waiting: dict = waiting) -> None:
                future = waiting.pop(event[1], None)
                if future is not None:
                    # Already finished (its result overtook the event): nothing to do.
                    with contextlib.suppress(RuntimeError):
                        future.set_running_or_notify_cancel()

            client.subscribe_topic(topic, on_event)
    return topic


# --- the backend -----------------------------------------------------------------------------


def _settle(future: cf.Future, value: Any = None, error: BaseException | None = None) -> None:
    with contextlib.suppress(cf.InvalidStateError):  # cancelled by the caller meanwhile
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _explain(exc: BaseException) -> BaseException:
    """The exception to raise in the caller for a batch that dask itself failed."""
    if type(exc).__name__ == "KilledWorker":
        error = WorkerDiedError(
            f"KilledWorker: {exc} (dask gives up on a task once it has killed "
            "distributed.scheduler.allowed-failures + 1 workers)"
        )
        error.__cause__ = exc
        return error
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("arraycache"):
        exc.add_note("arraycache must be installed on the dask workers too")
    return exc


def _task_name(tasks: list[Task]) -> str:
    func = tasks[0][0]
    name = getattr(func, "__name__", None) or type(func).__name__
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "task"


class DaskBackend(ParallelBackend):
    """Runs batches on a ``dask.distributed`` cluster (``backend='dask'``).

    Parameters are those of joblib's dask backend.

    Parameters
    ----------
    scheduler_host : str, optional
        Address of a scheduler to connect a new client to (``'tcp://host:8786'``).
    scatter : list or tuple, optional
        Objects to send to every worker now and to keep there as long as this backend
        lives; tasks that receive them get the workers' copy.  Arrays are also sent
        once per content without it (see the module docs); an object is matched by
        identity, so changes made to it later are not seen by the workers (as with
        joblib).  Objects of builtin container types (list, dict, ...) are not
        matched: they go with each task.
    client : distributed.Client, optional
        The client to use; by default the current one (``distributed.get_client()``).
    loop : optional
        Event loop for the client made from ``scheduler_host``.
    wait_for_workers_timeout : float, default 10
        Seconds to wait for a first worker when the cluster has none (0: do not wait).
    **submit_kwargs
        Passed to ``client.submit`` for every batch (``resources``, ``workers``,
        ``priority``, ``retries``, ...).

    Raises
    ------
    ValueError
        If no client is given and there is no current one.
    TypeError
        For a ``scatter`` that is not a list or tuple, or an unknown submit option.
    """

    name = "DaskDistributedBackend"
    uses_processes = False
    supports_sharedmem = False
    supports_timeout = True
    reports_running = True
    kept_by_config = True
    default_n_jobs = -1

    def __init__(
        self,
        scheduler_host: str | None = None,
        scatter: list | tuple | None = None,
        client: Any = None,
        loop: Any = None,
        wait_for_workers_timeout: float = 10,
        **submit_kwargs: Any,
    ) -> None:
        super().__init__()
        import distributed

        if client is None:
            if scheduler_host:
                client = distributed.Client(scheduler_host, loop=loop, set_as_default=False)
            else:
                try:
                    client = distributed.get_client()
                except ValueError as exc:
                    raise ValueError(_NO_CLIENT) from exc
        elif not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, not {client!r}")
        self.client = client
        if scatter is not None and not isinstance(scatter, (list, tuple)):
            raise TypeError(f"scatter must be a list or a tuple, not {type(scatter).__name__}")
        allowed = set(inspect.signature(distributed.Client.submit).parameters)
        unknown = sorted(set(submit_kwargs) - (allowed - {"self", "func", "args", "key", "pure"}))
        if unknown:
            raise TypeError(
                f"backend 'dask': unknown option(s) {', '.join(map(repr, unknown))}; options "
                "other than scheduler_host, scatter, client, loop and wait_for_workers_timeout "
                "go to client.submit"
            )
        self.wait_for_workers_timeout = wait_for_workers_timeout
        self.submit_kwargs = submit_kwargs
        self._objects: dict[int, tuple[Any, tuple, str, Any]] = {}
        if scatter:
            self._scatter_up_front(list(scatter))

    def _scatter_up_front(self, objects: list) -> None:
        registry = registry_of(self.client)
        pinned: list[Entry] = []
        for obj in objects:
            if isinstance(obj, np.ndarray) and not obj.dtype.hasobject and obj.size:
                pinned.append(registry.acquire(array_digest(obj), obj, None, broadcast=True))
            elif id(obj) not in self._objects:
                key = f"arraycache-object-{type(obj).__name__}-{uuid.uuid4().hex}"
                future = self.client.scatter({key: obj}, hash=False, broadcast=True)[key]
                self._objects[id(obj)] = (obj, (scattered_object, (key,)), key, future)
        if pinned:
            # Arrays of scatter= stay as long as this backend (then the usual rules apply).
            weakref.finalize(self, registry.release, pinned, get_max_shared_bytes())

    def effective_n_jobs(self, n_jobs: int) -> int:
        """Threads of the cluster's workers, whatever ``n_jobs`` (as joblib's dask backend)."""
        if n_jobs == 0:
            raise ValueError(
                "n_jobs == 0 in Parallel has no meaning; use a positive number, or -1 for "
                "all CPUs"
            )
        total = sum(self.client.nthreads().values())
        if total or not self.wait_for_workers_timeout:
            return total
        try:
            self.client.wait_for_workers(1, timeout=self.wait_for_workers_timeout)
        except TimeoutError as exc:
            raise TimeoutError(
                f"DaskDistributedBackend has no worker after {self.wait_for_workers_timeout} "
                "seconds. Make sure that workers are started and can connect to the "
                "scheduler, or wait longer with parallel_config(backend='dask', "
                f"wait_for_workers_timeout={max(10, 2 * self.wait_for_workers_timeout)})"
            ) from exc
        return sum(self.client.nthreads().values())

    def call_channel(
        self, max_nbytes: int | None, mmap_mode: str | None, max_shared_bytes: Any,
        timeout: float | None,
    ) -> DaskChannel:
        return DaskChannel(self, max_nbytes, mmap_mode, max_shared_bytes, timeout)

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        # Parallel sends batches through call_channel(); this is for other callers.
        future: cf.Future = cf.Future()
        dask_future = self.client.submit(fn, *args, pure=False, **self.submit_kwargs)
        dask_future.add_done_callback(functools.partial(_collect, future))
        return future

    def retrieval_context(self) -> contextlib.AbstractContextManager:
        return _seceded()


def _collect(future: cf.Future, dask_future: Any) -> None:
    """Done callback of a dask future (in dask's callback thread): settle ``future``."""
    status = dask_future.status
    try:
        if status == "finished":
            _settle(future, dask_future.result())
        elif status == "error":
            _settle(future, error=_explain(dask_future.exception()))
        else:
            _settle(future, error=RuntimeError(
                f"the dask task {dask_future.key!r} was {status} by the cluster (the client "
                "lost its scheduler, the cluster was restarted, or another client cancelled "
                "it)"
            ))
    except BaseException as exc:  # the result could not be fetched (connection lost)
        _settle(future, error=exc)


@contextlib.contextmanager
def _seceded():
    """In a dask worker, leave its thread pool while waiting (nested calls cannot deadlock)."""
    from distributed import rejoin, secede
    from distributed.utils import thread_state

    in_worker = hasattr(thread_state, "execution_state")
    if in_worker:
        secede()
    try:
        yield
    finally:
        if in_worker:
            rejoin()


class DaskChannel:
    """Sends the batches of one ``Parallel`` call to the cluster, with scattered arrays.

    Parameters
    ----------
    backend : DaskBackend
    max_nbytes, mmap_mode
        As the ``Parallel`` parameters: arrays above ``max_nbytes`` are scattered.
    max_shared_bytes
        Bound on the registry (see the module docs); ``UNSET``: the process-wide value.
    timeout : float or None
        With a timeout, batches announce their start.
    """

    def __init__(self, backend: DaskBackend, max_nbytes: int | None, mmap_mode: str | None,
                 max_shared_bytes: Any, timeout: float | None) -> None:
        self.client = backend.client
        self._submit_kwargs = backend.submit_kwargs
        self._objects = backend._objects
        self._max_nbytes = max_nbytes
        # Scattered copies are shared by every task of a worker: read-only or copied.
        self._mode = "r" if mmap_mode == "r" else None
        self._limit = (
            get_max_shared_bytes() if max_shared_bytes is UNSET else check_limit(max_shared_bytes)
        )
        self._spec = ResultSpec(None, mmap_mode, None, {}, same_host=False)
        self._registry = registry_of(self.client)
        self._memo: dict[int, tuple[weakref.ref, Entry, tuple]] = {}
        self._pinned: list[Entry] = []
        self._batch: dict[str, Any] = {}
        self._futures: dict[str, Any] = {}
        self._main_script = os.environ.get(_MAIN_SCRIPT)
        self._topic = _started_topic(self.client) if timeout is not None else None
        self._waiting = _WAITING.get(self.client.id) if self._topic is not None else None

    def _reference(self, arr: np.ndarray) -> tuple | None:
        if self._max_nbytes is None or arr.nbytes <= self._max_nbytes:
            return None
        if arr.dtype.hasobject or arr.size == 0:
            return None
        known = self._memo.get(id(arr))
        if known is not None and known[0]() is arr:
            entry, reduced = known[1], known[2]
        else:
            digest = array_digest(arr)
            entry = self._registry.acquire(digest, arr, self._limit)
            self._pinned.append(entry)
            reduced = (scattered_array, (entry.key, digest, _array_header(arr), self._mode))
            self._memo[id(arr)] = (weakref.ref(arr), entry, reduced)
        self._batch[entry.key] = entry.future
        return reduced

    def _object(self, obj: Any) -> tuple | None:
        known = self._objects.get(id(obj))
        if known is None or known[0] is not obj:
            return None
        _, reduced, key, future = known
        self._batch[key] = future
        return reduced

    def send(self, first: int, tasks: list[Task], nesting: int) -> cf.Future:
        """Submit a batch; its future's result is the worker's payload (``loads_results``).

        Raises
        ------
        TaskPicklingError
            Naming the task and the argument that cannot be pickled.
        """
        try:
            payload = dumps_batch(
                tasks, first, self._reference, self._spec, nesting,
                objects=self._object if self._objects else None,
            )
            data = self._batch
        finally:
            self._batch = {}
        key = f"arraycache-{_task_name(tasks)}-{uuid.uuid4().hex}"
        future: cf.Future = cf.Future()
        if self._waiting is not None:
            self._waiting[key] = future
        else:
            future.set_running_or_notify_cancel()
        try:
            dask_future = self.client.submit(
                run_scattered_batch, payload, data, self._topic, self._main_script, key=key,
                pure=False, **self._submit_kwargs,
            )
        except BaseException:
            if self._waiting is not None:
                self._waiting.pop(key, None)
            raise
        self._futures[key] = dask_future
        future.add_done_callback(functools.partial(self._done, key))
        dask_future.add_done_callback(functools.partial(_collect, future))
        return future

    def _done(self, key: str, future: cf.Future) -> None:
        if self._waiting is not None:
            self._waiting.pop(key, None)
        dask_future = self._futures.pop(key, None)
        if future.cancelled() and dask_future is not None:
            self._cancel([dask_future])

    def _cancel(self, futures: list) -> None:
        # Asynchronous: this may run in any thread, the event loop's included.  A task
        # already running on a worker runs to its end (dask cannot interrupt it).
        with contextlib.suppress(Exception):
            self.client.loop.add_callback(self.client.cancel, futures, asynchronous=True)

    def close(self, abort: bool) -> None:
        """Cancel what is left (all of it if ``abort``) and unpin the scattered arrays."""
        futures = list(self._futures.values())
        self._futures.clear()
        if futures:
            self._cancel(futures)
        pinned, self._pinned = self._pinned, []
        self._memo.clear()
        if pinned:
            self._registry.release(pinned, self._limit)
