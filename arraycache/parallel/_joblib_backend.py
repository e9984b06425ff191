"""joblib's ``'arraycache'`` backend: joblib's ``Parallel`` (and so scikit-learn's ``n_jobs``)
running on arraycache's workers and array sharing.

The reverse of ``_joblib_backends`` (which runs backends written for joblib under
arraycache's ``Parallel``).  Here joblib's ``Parallel`` does the dispatching, as
scikit-learn calls it (batches, ``pre_dispatch``, automatic batch sizes, timeouts,
progress messages), and this backend runs each batch the way arraycache's own loky
backend does: pickled in the caller with arraycache's array reducers (``_pickling``,
``_sharing``) and run in loky's reusable executor by arraycache's worker entry point.
So an array that lives in a file (a cache hit, ``np.load(..., mmap_mode='r')``) reaches
the workers with no byte written, another array above ``max_nbytes`` is written once
per content and reused by the later tasks and calls of a search (see ``_pool``), and
large results come back through files.

Parallel calls inside a task (an estimator's own ``n_jobs`` inside a search) run as in
joblib's loky backend: in threads at the first nesting level, inline below, with
BLAS/OpenMP pools limited to ``cpu_count() // n_jobs`` threads per worker; and, as
arraycache's own runner does, their thread count is capped to that same share so that
``n_jobs=-1`` inside a task does not oversubscribe the machine.

This module imports joblib, and registers the backend with it at the end of its first
import; it is imported only once joblib is (see ``_joblib_hook``).
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process
import multiprocessing
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from typing import Any

from joblib import parallel_config as joblib_parallel_config
from joblib import register_parallel_backend
from joblib.parallel import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
)

from ._backends import LokyBackend
from ._config import UNSET, _shared_bytes, active_config, cpu_count
from ._errors import WorkerDiedError
from ._folders import FOLDERS, call_folder_name, pick_root, shm_root
from ._joblib_hook import BACKEND_NAME
from ._loky import ShutdownExecutorError
from ._parallel import _to_bytes
from ._pickling import dumps_batch, loads_results, run_batch_in_worker
from ._sharing import CallSharing, ResultSpec

__all__ = ["ArraycacheBackend", "CappedThreadingBackend", "run_batch"]

_WORKER_OPTIONS = ("idle_worker_timeout", "initializer", "initargs")
_MMAP_MODES = ("r", "c", "r+", "w+", None)


def run_batch(nested: tuple[Any, int | None], payload: bytes) -> bytes:
    """Worker side: arraycache's batch entry point, inside joblib's nested configuration.

    ``nested`` is the (backend, n_jobs) that joblib ``Parallel`` calls made by the tasks
    use (what joblib's ``BatchedCalls`` sets around a batch).
    """
    backend, n_jobs = nested
    with joblib_parallel_config(backend=backend, n_jobs=n_jobs):
        return run_batch_in_worker(payload)


class CappedThreadingBackend(ThreadingBackend):
    """joblib's thread backend for calls inside a task, with at most ``max_n_jobs`` threads."""

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 max_n_jobs: int = 1, **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
                         **backend_kwargs)
        self.max_n_jobs = max_n_jobs

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return min(super().effective_n_jobs(n_jobs), self.max_n_jobs)


class _Call:
    """What a joblib ``Parallel`` call holds: its array sharing and its result folders."""

    def __init__(self, max_nbytes: int | None, mmap_mode: str | None, temp_folder: str | None,
                 max_shared_bytes: Any, nesting: int, nested: tuple[Any, int | None]) -> None:
        bound = {} if max_shared_bytes is UNSET else {"max_shared_bytes": max_shared_bytes}
        self.sharing = CallSharing(max_nbytes, mmap_mode, temp_folder, **bound)
        # Workers write large results into a call folder under each root they may use
        # (as arraycache's own calls do); the caller adopts the files it maps.
        if temp_folder is None:
            roots = [r for r in (shm_root(), tempfile.gettempdir()) if r is not None]
        else:
            roots = [pick_root(0, temp_folder)]
        name = call_folder_name()
        folders = {root: os.path.join(FOLDERS.reserve(root), name) for root in roots}
        self.roots = list(folders)
        self.folders = list(folders.values())
        self.spec = ResultSpec(max_nbytes, mmap_mode, temp_folder, folders)
        self.nesting = nesting
        self.nested = nested
        self.users = 0
        self._n_tasks = 0
        self._lock = threading.Lock()

    def first_index(self, n_tasks: int) -> int:
        """Index, in this call, of the first of the next ``n_tasks`` tasks."""
        with self._lock:
            first = self._n_tasks
            self._n_tasks += n_tasks
            return first

    def close(self) -> None:
        try:
            self.sharing.close()
        finally:
            for folder in self.folders:
                shutil.rmtree(folder, ignore_errors=True)
            roots, self.roots = self.roots, []
            for root in roots:
                FOLDERS.release(root)


def _died(exc: BaseException) -> WorkerDiedError:
    return WorkerDiedError(
        "a worker process died while running a batch of tasks: killed by a signal or by "
        "the OS (often for using too much memory; see `dmesg`), or crashed (e.g. a "
        f"segfault in compiled code).\n({type(exc).__name__}: {exc})"
    )


class ArraycacheBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend running batches in arraycache's workers, with arrays shared as files.

    Registered with joblib as ``'arraycache'`` when both are imported::

        with joblib.parallel_config(backend="arraycache", n_jobs=2):
            GridSearchCV(estimator, grid).fit(X, y)

    Parameters
    ----------
    nesting_level : int, optional
        Set by joblib.
    inner_max_num_threads : int, optional
        Threads allowed to BLAS/OpenMP in each worker (default ``cpu_count() // n_jobs``).
    max_shared_bytes : int, str or None, optional
        Bound on the copies of in-memory arrays kept between calls so that the next call
        (the next fit of a search) does not write them again: a number of bytes, a size
        such as ``'2G'``, ``'auto'`` (a quarter of the available memory) or None (no
        bound); ``0`` keeps nothing after a call.  Default: the value set with
        ``arraycache.parallel_config(max_shared_bytes=...)``, else ``'auto'``.
    idle_worker_timeout : float, default 300
        Seconds an idle worker waits for tasks before it exits.
    initializer, initargs
        Called as ``initializer(*initargs)`` in each new worker.

    Notes
    -----
    joblib's ``max_nbytes``, ``mmap_mode`` and ``temp_folder`` mean what they mean for
    arraycache's ``Parallel`` (writable modes become copy-on-write for the copies
    arraycache writes, which every task and call shares).  Workers are loky's, started
    with arraycache's loky; joblib's ``context`` (multiprocessing start method) does not
    apply to them.  Parallel calls inside the tasks use joblib's thread backend, capped
    to ``cpu_count() // n_jobs`` threads.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, max_shared_bytes: Any = UNSET,
                 **backend_kwargs: Any) -> None:
        _check_options(backend_kwargs)
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
                         **backend_kwargs)
        self.max_shared_bytes = (
            UNSET if max_shared_bytes is UNSET else _shared_bytes(max_shared_bytes)
        )
        self.parallel: Any = None
        self._loky: LokyBackend | None = None
        self._n_workers = 1
        self._settings: tuple[int | None, str | None, str | None] = (1 << 20, "r", None)
        self._configured: dict[str, Any] | None = None
        self._call: _Call | None = None
        self._call_lock = threading.Lock()

    # --- how many workers ---------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs != 1 and multiprocessing.current_process().daemon:
            warnings.warn(
                "arraycache-backed parallel loops cannot be called in a daemonic process "
                "(a multiprocessing worker), setting n_jobs=1",
                stacklevel=3,
            )
            return 1
        if n_jobs != 1 and not (self.in_main_thread() or self.nesting_level == 0):
            # Starting processes from a thread that is not the main one can deadlock them.
            warnings.warn(
                "arraycache-backed parallel loops cannot be nested below threads, "
                "setting n_jobs=1",
                stacklevel=3,
            )
            return 1
        # Negative values, and the cap inside a task of arraycache's own Parallel.
        return LokyBackend().effective_n_jobs(n_jobs)

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, max_nbytes: int | str | None = "1M",
                  mmap_mode: str | None = "r", temp_folder: str | None = None,
                  verbose: int = 0, context: Any = None, **worker_options: Any) -> int:
        """Start (or reuse) the workers; return how many.

        Raises
        ------
        FallbackToBackend
            With joblib's sequential backend when one worker would be used.
        ValueError, TypeError
            For an invalid ``mmap_mode`` or an option the workers do not take.
        """
        n_workers = self.effective_n_jobs(n_jobs)
        if n_workers == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        if mmap_mode not in _MMAP_MODES:
            raise ValueError(f"mmap_mode must be 'r', 'c', 'r+', 'w+' or None, not {mmap_mode!r}")
        options = {**self.backend_kwargs, **worker_options}
        _check_options(options)
        loky = LokyBackend(inner_max_num_threads=self.inner_max_num_threads, **options)
        loky.configure(n_workers)
        self._loky = loky
        self._n_workers = n_workers
        self._settings = (_to_bytes(max_nbytes), mmap_mode, temp_folder)
        self.parallel = parallel
        self._configured = {
            "n_jobs": n_jobs, "parallel": parallel, "max_nbytes": max_nbytes,
            "mmap_mode": mmap_mode, "temp_folder": temp_folder, **worker_options,
        }
        return n_workers

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """Backend of the joblib calls made inside tasks: capped threads, then inline."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        share = max(1, cpu_count() // max(self._n_workers, 1))
        return CappedThreadingBackend(nesting_level=level, max_n_jobs=share), None

    # --- one call -----------------------------------------------------------------------------

    def _open_call(self) -> _Call:
        """The state of the running call, made if there is none (under ``_call_lock``)."""
        if self._call is None:
            max_nbytes, mmap_mode, temp_folder = self._settings
            shared = self.max_shared_bytes
            if shared is UNSET:
                shared = active_config().get("max_shared_bytes", UNSET)
            nesting = max(1, cpu_count() // max(self._n_workers, 1))
            self._call = _Call(max_nbytes, mmap_mode, temp_folder, shared, nesting,
                               self.get_nested_backend())
        return self._call

    def start_call(self) -> None:
        # Calls overlapping on this instance (a generator still open) share the state; it
        # goes when the last one stops.
        with self._call_lock:
            self._open_call().users += 1

    def stop_call(self) -> None:
        with self._call_lock:
            call = self._call
            if call is None:
                return
            call.users -= 1
            if call.users > 0:
                return
            self._call = None
        call.close()

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None
               ) -> cf.Future:
        """Pickle the batch ``func`` (arrays as file references) and run it in a worker.

        A batch that cannot be sent fails its future (with a message naming the task and
        the argument), as joblib's loky backend does, so the error reaches the caller
        however the batch was dispatched.
        """
        items = getattr(func, "items", None)
        whole = not isinstance(items, list)  # joblib's BatchedCalls, or any callable
        tasks = [(func, (), {})] if whole else items
        assert self._loky is not None, "configure() first"
        with self._call_lock:
            # Driven without start_call (not by joblib): the state lives until terminate.
            call = self._open_call()
        first = call.first_index(len(tasks))
        try:
            payload = dumps_batch(tasks, first, call.sharing.reference, call.spec, call.nesting)
            future = self._loky.submit(run_batch, call.nested, payload)
        except Exception as exc:
            future = cf.Future()
            future.set_running_or_notify_cancel()
            future.set_exception(exc)
        future.arraycache_batch = (first, whole)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    # joblib before 1.5 calls apply_async.
    apply_async = submit

    def retrieve_result_callback(self, out: cf.Future) -> Any:
        """The batch's results (a list, as joblib expects), or its exception raised."""
        first, whole = getattr(out, "arraycache_batch", (0, False))
        try:
            data = out.result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            if isinstance(exc, WorkerDiedError):
                raise
            raise _died(exc) from exc
        except ShutdownExecutorError as exc:
            raise RuntimeError(
                "the worker processes were shut down by another part of this program while "
                "this call was running (loky's executor shut down); the call cannot complete"
            ) from exc
        results, error, _duration = loads_results(data)
        if error is not None:
            position, exc, text = error
            if text and exc.__traceback__ is None:  # it crossed a process boundary
                exc.add_note(
                    f"\nThe exception above was raised in a worker, in task {first + position}:"
                    f"\n{text.rstrip()}"
                )
            raise exc
        return results[0] if whole else results

    # --- end ----------------------------------------------------------------------------------

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Kill the workers to stop what runs (as joblib's loky backend); maybe start anew."""
        if self._loky is not None:
            self._loky.abort()
            self._loky = None
        if ensure_ready and self._configured is not None:
            self.configure(**self._configured)

    def terminate(self) -> None:
        """End of a call (or of a ``with Parallel``): keep the workers, free the call's files."""
        with self._call_lock:
            if self._call is not None and self._call.users > 0:
                return  # another call still runs on this instance
            call, self._call = self._call, None
        if call is not None:
            call.close()
        if self._loky is not None:
            self._loky.stop()  # loky's reusable workers stay for the next call
            self._loky = None
        self.reset_batch_stats()


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_WORKER_OPTIONS))
    if "timeout" in unknown:
        raise ValueError(
            "backend 'arraycache' does not take 'timeout': use idle_worker_timeout for how "
            "long idle workers live, and Parallel(timeout=...) for how long tasks may run"
        )
    if unknown:
        raise TypeError(
            f"backend 'arraycache' does not take {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(map(repr, _WORKER_OPTIONS))}"
        )


register_parallel_backend(BACKEND_NAME, ArraycacheBackend)
