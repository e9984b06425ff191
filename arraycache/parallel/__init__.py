"""Parallel runner: joblib's ``Parallel``/``delayed``, with arrays shared through files.

Modules, one job each: ``_config`` (parallel_config, backend registry, CPU counts),
``_backends`` (sequential, threads, loky and multiprocessing processes),
``_joblib_backends`` (backends written for joblib, through an adapter), ``_resolve``
(from a backend name, instance or context to a backend), ``_batching`` (delayed, batch
sizes), ``_dispatch`` (one call: dispatch, collection, errors, cleanup), ``_timing``
(when a batch starts running, for timeouts), ``_loky`` (loky, imported without taking
joblib's copy's start method), ``_pickling`` (task/result pickling, the worker entry
point), ``_sharing`` (arrays as file references), ``_pool`` (the bounded pool of written
copies), ``_folders`` (private sharing folders and their lifetime), ``_progress`` (verbose
messages and progress bars), ``_parallel`` (the ``Parallel`` class), ``_dask`` (the
dask.distributed backend), ``_scatter`` (arrays scattered to a dask cluster once per
content), ``_joblib_backend`` (the ``'arraycache'`` backend registered
with joblib: scikit-learn's ``n_jobs`` on arraycache's workers and sharing) and
``_joblib_hook`` (registers it when joblib is imported, without importing joblib).
"""

from __future__ import annotations

from ._backends import (
    LokyBackend,
    MultiprocessingBackend,
    ParallelBackend,
    SequentialBackend,
    ThreadingBackend,
)
from ._batching import delayed
from ._config import (
    cpu_count,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from ._errors import (
    BackendParameterError,
    ParallelTimeoutError,
    RemoteTaskError,
    TaskPicklingError,
    WorkerDiedError,
)
from ._parallel import Parallel
from ._sharing import SharedFileChangedError, SharingFallbackWarning, register_mapped_file

__all__ = [
    "BackendParameterError",
    "LokyBackend",
    "MultiprocessingBackend",
    "Parallel",
    "ParallelBackend",
    "ParallelTimeoutError",
    "RemoteTaskError",
    "SequentialBackend",
    "SharedFileChangedError",
    "SharingFallbackWarning",
    "TaskPicklingError",
    "ThreadingBackend",
    "WorkerDiedError",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "register_mapped_file",
    "register_parallel_backend",
]
