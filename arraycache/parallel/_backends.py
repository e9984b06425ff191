"""Backends: where batches of tasks run (inline, in threads, in worker processes).

A backend only runs callables and hands back ``concurrent.futures.Future`` objects;
dispatch, batching, ordering and array sharing live in ``_dispatch``/``_sharing``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import warnings
from collections.abc import Callable
from typing import Any

from ._batching import AutoBatchSize
from ._config import (
    BACKENDS,
    cpu_count,
    effective_n_jobs,
    in_worker_thread,
    nesting_limit,
    reset_thread_state,
)
from ._loky import LOKY_CONTEXT, get_reusable_executor

__all__ = [
    "LokyBackend",
    "MultiprocessingBackend",
    "ParallelBackend",
    "SequentialBackend",
    "ThreadingBackend",
]

# Thread pools of BLAS/OpenMP libraries in worker processes are limited to
# cpu_count() // n_jobs threads, as joblib does, to avoid oversubscription.
_THREAD_LIMIT_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_WORKER_OPTIONS = ("initializer", "initargs")


class ParallelBackend:
    """Interface of a backend; subclass it to register your own.

    Attributes
    ----------
    uses_processes : bool
        Tasks run in other processes of this machine: arguments and results are
        pickled by arraycache and large arrays are shared through files.
    supports_sharedmem : bool
        Tasks see the caller's memory (``require='sharedmem'`` is satisfied).
    supports_timeout : bool
        ``Parallel(timeout=...)`` is applied.
    supports_inner_max_num_threads : bool
        ``parallel_config(inner_max_num_threads=...)`` is applied.
    reports_running : bool
        ``Future.running()`` is true only once a worker has started the batch (it
        then times the batch for ``timeout``).
    shared_workers : bool
        Its workers serve every ``Parallel`` of the process (loky's reusable pool):
        :meth:`abort` would stop the tasks of other calls too.
    default_n_jobs : int
        Workers used when neither ``Parallel`` nor ``parallel_config`` sets ``n_jobs``.
    kept_by_config : bool
        ``parallel_config(backend=name, ...)`` makes one instance and every ``Parallel``
        of the block uses it (as joblib does), instead of a fresh one each.
    """

    uses_processes = False
    supports_sharedmem = True
    supports_timeout = True
    supports_inner_max_num_threads = False
    reports_running = False
    shared_workers = False
    default_n_jobs = 1
    kept_by_config = False
    #: Name shown in verbose messages.
    name = "backend"

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.n_jobs = 1

    def effective_n_jobs(self, n_jobs: int) -> int:
        """Number of workers that ``n_jobs`` means for this backend (see ``effective_n_jobs``)."""
        return effective_n_jobs(n_jobs)

    def configure(self, n_jobs: int, **options: Any) -> int:
        """Get ready to run tasks on ``n_jobs`` workers; return the number of workers.

        ``options`` are the extra keyword arguments of ``Parallel`` (``initializer``,
        ``initargs``, ...); a backend that takes none refuses them.
        """
        if options:
            raise TypeError(f"backend {self.name} takes no options; got {sorted(options)}")
        self.n_jobs = n_jobs
        return n_jobs

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """Start ``fn(*args)`` and return its future."""
        raise NotImplementedError

    def call_channel(
        self, max_nbytes: int | None, mmap_mode: str | None, max_shared_bytes: Any,
        timeout: float | None,
    ) -> Any:
        """How one call sends its batches, for a backend that ships them its own way.

        None (the default): batches go through :meth:`submit`.  Otherwise an object
        with ``send(first, tasks, nesting_limit) -> concurrent.futures.Future`` (whose
        result is what ``_pickling.run_batch_in_worker`` returns) and ``close(abort)``,
        made for each call with the call's ``Parallel`` settings.
        """
        return None

    def batch_sizer(self) -> Any:
        """The rule for ``batch_size='auto'``: an object with ``size`` and ``record()``."""
        return AutoBatchSize()

    def start_call(self) -> None:
        """Called when a ``Parallel`` call starts dispatching."""

    def stop_call(self) -> None:
        """Called when a ``Parallel`` call ends (before :meth:`stop`, if that is called)."""

    def retrieval_context(self) -> contextlib.AbstractContextManager:
        """Context entered while the call waits for and hands out results."""
        return contextlib.nullcontext()

    def abort(self) -> None:
        """Stop what is still running as soon as possible (after an error or interrupt)."""

    def cancelled(self) -> None:
        """Called after queued futures were cancelled (a chance to purge them)."""

    def stop(self) -> None:
        """Release resources at the end of a call or of a ``with Parallel(...)`` block."""


def _worker_options(
    backend: Any, options: dict[str, Any], allowed: tuple[str, ...] = _WORKER_OPTIONS
) -> dict[str, Any]:
    """``initializer``/``initargs`` (and ``allowed`` extras): the call's, else the backend's."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"backend {backend.name} does not take {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(map(repr, allowed))}"
        )
    merged = {"initializer": backend.initializer, "initargs": backend.initargs, **options}
    if merged["initializer"] is not None and not callable(merged["initializer"]):
        raise TypeError(f"initializer must be callable, not {merged['initializer']!r}")
    merged["initargs"] = tuple(merged["initargs"])
    return merged


def _same(a: Any, b: Any) -> bool:
    """Equality of pool settings that never raises (initargs may hold arrays)."""
    if a is b:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return False


class SequentialBackend(ParallelBackend):
    """Runs each task inline, in the calling thread, when it is dispatched."""

    name = "SequentialBackend"
    supports_timeout = False

    def effective_n_jobs(self, n_jobs: int) -> int:
        effective_n_jobs(n_jobs)  # validates
        return 1

    def configure(self, n_jobs: int, **options: Any) -> int:
        # Like joblib: inline, worker options (an initializer) have no workers to go to.
        self.n_jobs = 1
        return 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            # KeyboardInterrupt/SystemExit included: the dispatcher re-raises them.
            future.set_exception(exc)
        return future


class ThreadingBackend(ParallelBackend):
    """Runs tasks in a thread pool of this process; useful when tasks release the GIL.

    ``initializer(*initargs)`` runs in each new thread of the pool.
    """

    name = "ThreadingBackend"
    reports_running = True

    def __init__(
        self,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        **kwargs: Any,
    ) -> None:
        # Other keyword arguments are kept and unused, as joblib's thread backend does.
        super().__init__(**kwargs)
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._key: tuple = ()

    def configure(self, n_jobs: int, **options: Any) -> int:
        opts = _worker_options(self, options)
        key = (n_jobs, opts["initializer"], opts["initargs"])
        if self._pool is not None and not _same(key, self._key):
            self.stop()
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(
                n_jobs, thread_name_prefix="arraycache-parallel", **opts
            )
            self._key = key
        self.n_jobs = n_jobs
        return n_jobs

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        assert self._pool is not None, "configure() first"
        return self._pool.submit(fn, *args)

    def abort(self) -> None:
        # Running threads cannot be interrupted; queued tasks are dropped.
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# Set in the worker processes of MultiprocessingBackend (by _start_worker).
_in_multiprocessing_worker = False


def _nested_process_pool(kind: str, n_jobs: int) -> int:
    """Workers for ``n_jobs``: 1, with joblib's warning, where a process pool must not start."""
    if n_jobs != 1:
        if kind == "Loky" and _in_multiprocessing_worker:
            # As joblib (whose multiprocessing workers cannot have children).
            warnings.warn(
                "Loky-backed parallel loops cannot be called in a multiprocessing, "
                "setting n_jobs=1",
                stacklevel=4,
            )
            return 1
        if in_worker_thread():
            # Forking from a thread that is not the main one can deadlock the child.
            warnings.warn(
                f"{kind}-backed parallel loops cannot be nested below threads, "
                "setting n_jobs=1",
                stacklevel=4,
            )
            return 1
        if kind == "Multiprocessing" and nesting_limit() is not None:
            warnings.warn(
                "Multiprocessing-backed parallel loops cannot be nested, setting n_jobs=1",
                stacklevel=4,
            )
            return 1
    return effective_n_jobs(n_jobs)


class LokyBackend(ParallelBackend):
    """Runs tasks in loky's reusable pool of worker processes.

    Workers outlive a call (they are reused by the next one and shut down after
    ``idle_worker_timeout`` seconds of idleness), as with joblib.  A call with
    another ``initializer``/``initargs`` than the pool's gets new workers.
    """

    name = "LokyBackend"
    uses_processes = True
    supports_sharedmem = False
    supports_inner_max_num_threads = True
    shared_workers = True

    def __init__(
        self,
        idle_worker_timeout: float = 300,
        inner_max_num_threads: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
    ) -> None:
        super().__init__()
        self.idle_worker_timeout = idle_worker_timeout
        self.inner_max_num_threads = inner_max_num_threads
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self._executor: Any = None

    def effective_n_jobs(self, n_jobs: int) -> int:
        return _nested_process_pool("Loky", n_jobs)

    def _worker_env(self, n_jobs: int) -> dict[str, str]:
        n_threads = self.inner_max_num_threads or max(cpu_count() // n_jobs, 1)
        env = {}
        for var in _THREAD_LIMIT_VARS:
            value = os.environ.get(var) if self.inner_max_num_threads is None else None
            env[var] = value if value is not None else str(n_threads)
        if "ENABLE_IPC" not in os.environ:
            # TBB schedulers of the workers coordinate instead of oversubscribing.
            env["ENABLE_IPC"] = "1"
        return env

    def configure(self, n_jobs: int, **options: Any) -> int:
        opts = _worker_options(self, options, (*_WORKER_OPTIONS, "idle_worker_timeout"))
        idle = opts.pop("idle_worker_timeout", self.idle_worker_timeout)
        self.n_jobs = n_jobs
        # Arguments are pickled by arraycache itself (see _pickling), so the executor
        # needs no reducers and is the same object from call to call; loky starts new
        # workers when the initializer, its arguments or the environment change.
        self._executor = get_reusable_executor(
            max_workers=n_jobs, timeout=idle, env=self._worker_env(n_jobs),
            context=LOKY_CONTEXT, **opts,
        )
        return n_jobs

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        assert self._executor is not None, "configure() first"
        return self._executor.submit(fn, *args)

    def abort(self) -> None:
        # A task that is running cannot be cancelled; killing the workers is the only
        # way to return promptly (joblib does the same).  The next call starts new ones.
        if self._executor is not None:
            self._executor.shutdown(wait=True, kill_workers=True)
            self._executor = None

    def cancelled(self) -> None:
        # loky drops cancelled work items only when it next looks at its queue; until
        # then a shutdown (at exit) fails on them with InvalidStateError.  A no-op task
        # makes it look now.
        if self._executor is not None:
            try:
                self._executor.submit(int)
            except RuntimeError:  # broken or shut down: nothing left to purge
                self._executor = None

    def stop(self) -> None:
        # Keep the workers for the next call; loky shuts them down when idle.
        self._executor = None


def _start_worker(initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    """First thing in a multiprocessing worker: drop what a fork copied, run the initializer."""
    global _in_multiprocessing_worker
    _in_multiprocessing_worker = True
    # A forked worker starts with the caller's thread state: its parallel_config blocks
    # and nesting limit belong to the caller, not to the tasks.
    reset_thread_state()
    if initializer is not None:
        initializer(*initargs)


class MultiprocessingBackend(ParallelBackend):
    """Runs tasks in a pool of ``multiprocessing`` worker processes, as joblib's backend.

    The pool lives for one call (or one ``with Parallel(...)`` block); the workers
    start with ``context`` (default: ``multiprocessing.get_context()``, i.e. fork on
    Linux), so functions defined in ``__main__`` need the fork start method.  Large
    arrays are shared through files exactly as with loky.  A worker that dies is
    reported (``WorkerDiedError``), not waited for.
    """

    name = "MultiprocessingBackend"
    uses_processes = True
    supports_sharedmem = False

    def __init__(
        self,
        context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
    ) -> None:
        super().__init__()
        if isinstance(context, str):
            context = multiprocessing.get_context(context)
        self.context = context
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._key: tuple = ()

    def effective_n_jobs(self, n_jobs: int) -> int:
        return _nested_process_pool("Multiprocessing", n_jobs)

    def configure(self, n_jobs: int, **options: Any) -> int:
        opts = _worker_options(self, options)
        context = self.context or multiprocessing.get_context()
        key = (n_jobs, context, opts["initializer"], opts["initargs"])
        # A pool whose worker died cannot take new tasks (``_broken``, set by CPython).
        if self._pool is not None and (
            getattr(self._pool, "_broken", False) or not _same(key, self._key)
        ):
            self.stop()
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                n_jobs,
                mp_context=context,
                initializer=_start_worker,
                initargs=(opts["initializer"], opts["initargs"]),
            )
            self._key = key
        self.n_jobs = n_jobs
        return n_jobs

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        assert self._pool is not None, "configure() first"
        return self._pool.submit(fn, *args)

    def abort(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # Running tasks cannot be cancelled: kill the workers, as joblib terminates its
        # Pool.  Python < 3.14 has no public way, hence the private process table.
        kill = getattr(pool, "kill_workers", None)
        if kill is not None:
            kill()
        else:
            processes = getattr(pool, "_processes", None) or {}
            for process in list(processes.values()):
                with contextlib.suppress(Exception):
                    process.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def dask_backend(**kwargs: Any) -> ParallelBackend:
    """The ``'dask'`` backend (``_dask``), imported on first use: dask is an optional extra."""
    from ._dask import make_dask_backend

    return make_dask_backend(**kwargs)


BACKENDS.update(
    sequential=SequentialBackend,
    threading=ThreadingBackend,
    loky=LokyBackend,
    multiprocessing=MultiprocessingBackend,
)
#: The backend classes of arraycache (their constructors take keyword options only).
BUILTIN_BACKENDS = frozenset(BACKENDS.values())
BACKENDS["dask"] = dask_backend
