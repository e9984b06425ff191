"""Backends: where batches of tasks run (inline, in threads, in loky worker processes).

A backend only runs callables and hands back ``concurrent.futures.Future`` objects;
dispatch, batching, ordering and array sharing live in ``_parallel``/``_sharing``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable
from typing import Any

from ._config import BACKENDS, cpu_count

__all__ = ["LokyBackend", "ParallelBackend", "SequentialBackend", "ThreadingBackend"]

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


class ParallelBackend:
    """Interface of a backend; subclass it to register your own.

    Attributes
    ----------
    uses_processes : bool
        Tasks run in other processes: arguments and results are pickled and
        large arrays are shared through files.
    supports_sharedmem : bool
        Tasks see the caller's memory (``require='sharedmem'`` is satisfied).
    """

    uses_processes = False
    supports_sharedmem = True
    #: Name shown in verbose messages.
    name = "backend"

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.n_jobs = 1

    def configure(self, n_jobs: int) -> int:
        """Get ready to run tasks on ``n_jobs`` workers; return the number of workers."""
        self.n_jobs = n_jobs
        return n_jobs

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """Start ``fn(*args)`` and return its future."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop what is still running as soon as possible (after an error or interrupt)."""

    def cancelled(self) -> None:
        """Called after queued futures were cancelled (a chance to purge them)."""

    def stop(self) -> None:
        """Release resources at the end of a call or of a ``with Parallel(...)`` block."""


class SequentialBackend(ParallelBackend):
    """Runs each task inline, in the calling thread, when it is dispatched."""

    name = "SequentialBackend"

    def configure(self, n_jobs: int) -> int:
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
    """Runs tasks in a thread pool of this process; useful when tasks release the GIL."""

    name = "ThreadingBackend"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool: cf.ThreadPoolExecutor | None = None

    def configure(self, n_jobs: int) -> int:
        if self._pool is not None and self.n_jobs != n_jobs:
            self.stop()
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(n_jobs, thread_name_prefix="arraycache-parallel")
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


class LokyBackend(ParallelBackend):
    """Runs tasks in loky's reusable pool of worker processes.

    Workers outlive a call (they are reused by the next one and shut down after
    ``idle_worker_timeout`` seconds of idleness), as with joblib.
    """

    name = "LokyBackend"
    uses_processes = True
    supports_sharedmem = False

    def __init__(
        self,
        idle_worker_timeout: float = 300,
        inner_max_num_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.idle_worker_timeout = idle_worker_timeout
        self.inner_max_num_threads = inner_max_num_threads
        self._executor: Any = None

    def _worker_env(self, n_jobs: int) -> dict[str, str]:
        n_threads = self.inner_max_num_threads or max(cpu_count() // n_jobs, 1)
        env = {}
        for var in _THREAD_LIMIT_VARS:
            value = os.environ.get(var) if self.inner_max_num_threads is None else None
            env[var] = value if value is not None else str(n_threads)
        return env

    def configure(self, n_jobs: int) -> int:
        from loky import get_reusable_executor

        self.n_jobs = n_jobs
        # Arguments are pickled by arraycache itself (see _pickling), so the executor
        # needs no reducers and is the same object from call to call.
        self._executor = get_reusable_executor(
            max_workers=n_jobs,
            timeout=self.idle_worker_timeout,
            env=self._worker_env(n_jobs),
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


BACKENDS.update(
    sequential=SequentialBackend,
    threading=ThreadingBackend,
    loky=LokyBackend,
)
