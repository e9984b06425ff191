"""Backends written for joblib, run by arraycache's ``Parallel`` through an adapter.

joblib's backend interface (``joblib.parallel.ParallelBackendBase``: ``configure(n_jobs,
parallel, ...)``, ``submit(func, callback)``, ``retrieve_result_callback(out)``,
``effective_n_jobs``, ``terminate``, ``abort_everything``, ...) is what ray's
``register_ray()``, joblib-spark and joblib's own backends implement.  The adapter
drives such a backend the way joblib's ``Parallel`` does, and hands arraycache's
dispatcher ``concurrent.futures.Future`` objects.  Tasks go to these backends as plain
callables that the backend pickles its own way (its workers may be on other
machines), so arraycache's file sharing of arrays is not used with them.

joblib is never imported here: its classes are recognised by their shape.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import multiprocessing
import queue
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from ._backends import ParallelBackend
from ._config import nesting_limit

__all__ = [
    "JoblibBackendAdapter",
    "is_joblib_backend",
    "joblib_registered",
]


def is_joblib_backend(obj: Any) -> bool:
    """True for an instance of a backend written for joblib (not for one of ours)."""
    if isinstance(obj, (ParallelBackend, type)):
        return False
    if any(cls.__name__ == "ParallelBackendBase" for cls in type(obj).__mro__):
        return True
    return (
        callable(getattr(obj, "configure", None))
        and callable(getattr(obj, "effective_n_jobs", None))
        and (callable(getattr(obj, "submit", None)) or callable(getattr(obj, "apply_async", None)))
    )


def joblib_registered(name: str) -> Callable[..., Any] | None:
    """The factory joblib knows as ``name``, if joblib is already imported (never imports it).

    Includes joblib's lazily registered backends (``EXTERNAL_BACKENDS``), registered
    the way joblib does on first use.
    """
    module = sys.modules.get("joblib.parallel")
    if module is None:
        return None
    backends = getattr(module, "BACKENDS", {})
    register = getattr(module, "EXTERNAL_BACKENDS", {}).get(name)
    if name not in backends and register is not None:
        register()
    return backends.get(name)


def _is_class(obj: Any, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(obj).__mro__)


class _ParallelView:
    """What a joblib backend reads of the joblib ``Parallel`` that drives it."""

    def __init__(self, n_jobs: int, verbose: int, backend_kwargs: dict[str, Any]) -> None:
        self.n_jobs = n_jobs
        self.verbose = verbose
        self._backend_kwargs = backend_kwargs
        self._id = uuid.uuid4().hex

    def _print(self, msg: str) -> None:
        if self.verbose:
            stream = sys.stderr if self.verbose < 50 else sys.stdout
            stream.write(f"[Parallel(n_jobs={self.n_jobs})]: {msg}\n")


def _settle(future: cf.Future, value: Any = None, error: BaseException | None = None) -> None:
    with contextlib.suppress(cf.InvalidStateError):  # already settled or cancelled
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _retrieve_in_order(backend: Any, jobs: queue.SimpleQueue) -> None:
    """For backends without result callbacks: get each job's result, in order, as joblib."""
    while (item := jobs.get()) is not None:
        future, job = item
        retrieve = getattr(backend, "retrieve_result", None)
        try:
            value = retrieve(job) if retrieve is not None else job.get()
        except BaseException as exc:
            _settle(future, error=exc)
        else:
            _settle(future, value)


class _BeforePickling:
    """A task that calls ``hook`` when it is pickled, then travels as the bare task.

    joblib's loky backend writes large arguments into a folder of the *current*
    context of its executor's folder manager, and cleans the folder of the context of
    the ``Parallel`` call at its end; joblib's ``Parallel`` sets that context as each
    batch is pickled.  Done the same way here, or the files outlive the call.
    """

    def __init__(self, call: functools.partial, hook: Callable[[], None]) -> None:
        self.call = call
        self.hook = hook

    def __call__(self) -> Any:
        return self.call()

    def __reduce__(self) -> Any:
        self.hook()
        return self.call.__reduce__()


class _JoblibBatchSize:
    """``batch_size='auto'`` as the joblib backend decides it."""

    def __init__(self, adapter: JoblibBackendAdapter) -> None:
        self._adapter = adapter

    @property
    def size(self) -> int:
        compute = getattr(self._adapter.backend, "compute_batch_size", None)
        return max(1, int(compute())) if compute is not None else 1

    def record(self, batch_size: int, duration: float) -> None:
        completed = getattr(self._adapter.backend, "batch_completed", None)
        if completed is not None:
            completed(batch_size, duration)


class JoblibBackendAdapter(ParallelBackend):
    """Runs a joblib backend (an instance of a ``ParallelBackendBase`` subclass).

    Parameters
    ----------
    backend
        The joblib backend instance.
    settings : dict
        ``Parallel`` parameters that joblib passes to ``configure``: ``max_nbytes``
        (bytes), ``temp_folder``, ``mmap_mode``, ``prefer``, ``require``, ``verbose``.
    """

    def __init__(self, backend: Any, settings: dict[str, Any]) -> None:
        super().__init__()
        self._settings = settings
        self._configured: int | None = None
        self._n_workers = 1
        self._view: _ParallelView | None = None
        self._jobs: queue.SimpleQueue | None = None
        self._use(backend)
        if getattr(backend, "nesting_level", None) is None:
            with contextlib.suppress(AttributeError):
                backend.nesting_level = 0 if nesting_limit() is None else 1

    def _use(self, backend: Any) -> None:
        self.backend = backend
        self.name = type(backend).__name__
        self.supports_sharedmem = bool(getattr(backend, "supports_sharedmem", False))
        self.supports_timeout = bool(getattr(backend, "supports_timeout", False))
        self.supports_inner_max_num_threads = bool(
            getattr(backend, "supports_inner_max_num_threads", False)
        )
        self.default_n_jobs = getattr(backend, "default_n_jobs", 1)

    def effective_n_jobs(self, n_jobs: int) -> int:
        return self.backend.effective_n_jobs(n_jobs)

    def configure(self, n_jobs: int, **options: Any) -> int:
        if self._configured == n_jobs:
            return self._n_workers
        verbose = self._settings.get("verbose", 0)
        kwargs = {
            **{k: v for k, v in self._settings.items() if k != "verbose"},
            "verbose": max(0, verbose - 50),
            "context": multiprocessing.get_context(),
            **options,
        }
        view = self._view = _ParallelView(n_jobs, verbose, kwargs)
        try:
            n_workers = self.backend.configure(n_jobs=n_jobs, parallel=view, **kwargs)
        except Exception as exc:
            fallback = getattr(exc, "backend", None)
            if type(exc).__name__ != "FallbackToBackend" or fallback is None:
                raise
            self._use(fallback)
            if _is_class(fallback, "SequentialBackend"):
                return 1  # the caller runs the tasks inline
            return self.configure(n_jobs, **options)
        self._configured, self._n_workers = n_jobs, n_workers
        return n_workers

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        # Running from now on: the task may be running somewhere we cannot cancel it.
        future.set_running_or_notify_cancel()
        call: Any = functools.partial(fn, *args)
        backend = self.backend
        if hasattr(getattr(backend, "_workers", None), "_temp_folder_manager"):
            call = _BeforePickling(call, self._set_folder_context)
        submit = getattr(backend, "submit", None) or backend.apply_async
        if getattr(backend, "supports_retrieve_callback", False):

            def callback(out: Any) -> None:
                try:
                    value = backend.retrieve_result_callback(out)
                except BaseException as exc:
                    _settle(future, error=exc)
                else:
                    _settle(future, value)

            submit(call, callback=callback)
        else:
            # A result callback may run before the result can be read (multiprocessing
            # calls it first): read results in a thread of our own, in order.
            job = submit(call, callback=_ignore)
            if self._jobs is None:
                self._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=_retrieve_in_order, args=(backend, self._jobs), daemon=True,
                    name="arraycache-joblib-results",
                ).start()
            self._jobs.put((future, job))
        return future

    def _set_folder_context(self) -> None:
        workers = getattr(self.backend, "_workers", None)
        manager = getattr(workers, "_temp_folder_manager", None)
        if manager is not None and self._view is not None:
            manager.set_current_context(self._view._id)

    def batch_sizer(self) -> _JoblibBatchSize:
        return _JoblibBatchSize(self)

    def start_call(self) -> None:
        start = getattr(self.backend, "start_call", None)
        if start is not None:
            start()

    def stop_call(self) -> None:
        stop = getattr(self.backend, "stop_call", None)
        if stop is not None:
            stop()

    def retrieval_context(self) -> contextlib.AbstractContextManager:
        context = getattr(self.backend, "retrieval_context", None)
        return context() if context is not None else contextlib.nullcontext()

    def _end_retrieval(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None

    def abort(self) -> None:
        abort = getattr(self.backend, "abort_everything", None)
        if abort is not None:
            abort(ensure_ready=False)
        self._configured = None
        self._end_retrieval()

    def stop(self) -> None:
        terminate = getattr(self.backend, "terminate", None)
        if terminate is not None and self._configured is not None:
            terminate()
        self._configured = None
        self._end_retrieval()


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None
