"""Errors raised by the parallel runner, so that callers can catch them by name."""

from __future__ import annotations

import pickle

from loky.process_executor import TerminatedWorkerError

__all__ = ["RemoteTaskError", "TaskPicklingError", "WorkerDiedError"]


class WorkerDiedError(TerminatedWorkerError):
    """A worker process died (killed by the OS, a segfault, ``os._exit``) while running tasks.

    Subclasses loky's ``TerminatedWorkerError`` (itself a ``BrokenProcessPool``), so code
    written for joblib that catches those still works.
    """


class TaskPicklingError(pickle.PicklingError, TypeError):
    """A task (its function or one of its arguments) cannot be sent to a worker process."""


class RemoteTaskError(RuntimeError):
    """A task failed in a worker and its exception could not be sent back as itself."""
