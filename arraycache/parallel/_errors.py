"""Errors raised by the parallel runner, so that callers can catch them by name."""

from __future__ import annotations

import multiprocessing
import pickle

from ._loky import TerminatedWorkerError

__all__ = [
    "BackendParameterError",
    "ParallelTimeoutError",
    "RemoteTaskError",
    "TaskPicklingError",
    "WorkerDiedError",
]


class WorkerDiedError(TerminatedWorkerError):
    """A worker process died (killed by the OS, a segfault, ``os._exit``) while running tasks.

    Subclasses loky's ``TerminatedWorkerError`` (itself a ``BrokenProcessPool``), so code
    written for joblib that catches those still works.
    """


class TaskPicklingError(pickle.PicklingError, TypeError):
    """A task (its function or one of its arguments) cannot be sent to a worker process."""


class RemoteTaskError(RuntimeError):
    """A task failed in a worker and its exception could not be sent back as itself."""


class ParallelTimeoutError(multiprocessing.TimeoutError, TimeoutError):
    """A batch of tasks ran longer than ``Parallel(timeout=...)``.

    ``except multiprocessing.TimeoutError`` catches it, as it catches joblib's timeout,
    and so does ``except TimeoutError`` (the built-in, which Python makes a subclass of
    ``OSError``: a handler of ``OSError`` catches it too).
    """


class BackendParameterError(ValueError, AssertionError):
    """A backend parameter that the chosen backend does not take.

    Also an ``AssertionError``, which is what joblib raises for an
    ``inner_max_num_threads`` its backend does not support.
    """
