"""Backend registry, ``parallel_config`` and the CPU/job-count helpers.

The active configuration is a stack kept in a ``threading.local``: a configuration
set in one thread does not leak into others, as in joblib.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._loky import loky

__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "UNSET",
    "active_config",
    "check_hints",
    "cpu_count",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "register_parallel_backend",
]

#: Name -> factory called with the backend keyword arguments; filled by ``_backends``.
BACKENDS: dict[str, Callable[..., Any]] = {}
_DEFAULT_BACKEND = ["loky"]

#: Values used when neither ``Parallel(...)`` nor ``parallel_config`` sets a parameter.
DEFAULTS: dict[str, Any] = {
    "n_jobs": None,
    "verbose": 0,
    "temp_folder": None,
    "max_nbytes": "1M",
    "mmap_mode": "r",
    "prefer": None,
    "require": None,
    "progress": False,
}

_state = threading.local()


def _stack() -> list[dict[str, Any]]:
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    return stack


def nesting_limit() -> int | None:
    """Jobs allowed to a Parallel running inside a task of another, or None at top level."""
    return getattr(_state, "nested_n_jobs", None)


def set_nesting_limit(n_jobs: int | None) -> int | None:
    """Set the nesting limit of this thread and return the previous one."""
    previous = getattr(_state, "nested_n_jobs", None)
    _state.nested_n_jobs = n_jobs
    return previous


def reset_thread_state() -> None:
    """Forget this thread's configuration and nesting (in a worker forked from a caller)."""
    _state.__dict__.clear()


def in_worker_thread() -> bool:
    """True inside a task running in a thread of a ``Parallel`` call (not the main thread)."""
    main = threading.main_thread()
    return nesting_limit() is not None and threading.current_thread() is not main


def active_config() -> dict[str, Any]:
    """Merged configuration: defaults, then ``parallel_config`` blocks, innermost last."""
    config = dict(DEFAULTS, backend=None, backend_kwargs={})
    for layer in _stack():
        config.update(layer)
    return config


def cpu_count(only_physical_cores: bool = False) -> int:
    """Number of CPUs this process may use.

    Parameters
    ----------
    only_physical_cores : bool, default False
        Count physical cores only (no hyper-threads) when that can be known.

    Returns
    -------
    int
        CPUs usable by this process, honouring affinity masks and cgroup quotas
        (through ``loky.cpu_count``).
    """
    return loky.cpu_count(only_physical_cores=only_physical_cores)


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """Number of workers that ``n_jobs`` means on this machine.

    Parameters
    ----------
    n_jobs : int or None, default -1
        ``None`` means the active ``parallel_config`` value, else 1; ``-1`` all CPUs;
        ``-2`` all but one, and so on (never fewer than 1); a positive value itself.
        Inside a task of another ``Parallel`` the result is capped to avoid
        oversubscription.

    Returns
    -------
    int
        The number of workers, at least 1.

    Raises
    ------
    ValueError
        If ``n_jobs`` is 0.
    """
    if n_jobs is None:
        n_jobs = active_config()["n_jobs"]
        if n_jobs is None:
            n_jobs = 1
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError(
            "n_jobs == 0 in Parallel has no meaning; use a positive number, or -1 for all CPUs"
        )
    if n_jobs < 0:
        n_jobs = max(cpu_count() + 1 + n_jobs, 1)
    limit = nesting_limit()
    if limit is not None:
        n_jobs = min(n_jobs, limit)
    return n_jobs


class _Unset:
    """Marks a parameter left out (``None`` is a value: it resets to the default)."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()

#: joblib's names for the valid ``prefer`` and ``require`` values.
VALID_HINTS = ("processes", "threads", None)
VALID_CONSTRAINTS = ("sharedmem", None)


def check_hints(prefer: Any, require: Any) -> None:
    """Raise ValueError for an invalid ``prefer``/``require`` or an inconsistent pair."""
    if prefer is not UNSET and prefer not in VALID_HINTS:
        raise ValueError(
            f"prefer={prefer} is not a valid backend hint, expected one of {VALID_HINTS}"
        )
    if require is not UNSET and require not in VALID_CONSTRAINTS:
        raise ValueError(
            f"require={require} is not a valid backend constraint, "
            f"expected one of {VALID_CONSTRAINTS}"
        )
    if prefer == "processes" and require == "sharedmem":
        raise ValueError(
            "prefer == 'processes' and require == 'sharedmem' are inconsistent settings: "
            "worker processes do not share the caller's memory"
        )


class parallel_config:
    """Set defaults for the ``Parallel`` calls made inside a ``with`` block.

    Parameters
    ----------
    backend : str, backend instance or multiprocessing context, optional
        ``'loky'`` (processes, the default), ``'threading'``, ``'multiprocessing'``,
        ``'sequential'``, ``'dask'`` (a dask.distributed cluster: the current client, or
        ``client=...``), a name given to :func:`register_parallel_backend`, an
        instance (of :class:`ParallelBackend` or of a backend written for joblib), or
        a ``multiprocessing`` context (runs the multiprocessing backend with it).
    n_jobs, verbose, temp_folder, max_nbytes, mmap_mode, prefer, require, progress
        Defaults for the same-named :class:`Parallel` parameters.  A parameter left
        out keeps the value of an enclosing block; one given, even ``None``, replaces
        it (``n_jobs=None`` goes back to the default, 1).
    max_shared_bytes : int, str or None, default 'auto'
        Bound on the copies of in-memory arrays that ``Parallel`` keeps (in /dev/shm
        or the temp folder) so that a later call passing the same array does not write
        it again: ``'auto'`` is a quarter of the available memory, a size (``'2G'``)
        or a number of bytes sets it, ``0`` keeps nothing after a call (as joblib),
        None removes the bound.  Least recently used copies go first.  With
        ``backend='dask'`` it bounds the arrays kept scattered on the cluster (``'auto'``:
        a quarter of the smallest worker's memory limit).  Not a ``Parallel``
        parameter: a setting for a block of calls.
    inner_max_num_threads : int, optional
        Threads allowed to BLAS/OpenMP in each worker process (default:
        ``cpu_count() // n_jobs``); only with a backend that supports it ('loky').
    **backend_params
        Passed to the backend when ``backend`` is a name, e.g. ``initializer`` and
        ``initargs`` (run in each new worker) or loky's ``idle_worker_timeout``.

    Raises
    ------
    ValueError
        For an unknown backend name, invalid ``prefer``/``require``, or backend
        parameters without a backend name.
    BackendParameterError
        If the backend does not take ``inner_max_num_threads``.

    Notes
    -----
    The configuration applies from construction (as in joblib), so
    ``config = parallel_config(...)`` followed by ``config.unregister()`` works too.

    Examples
    --------
    >>> with parallel_config(backend="threading", n_jobs=2):
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """

    def __init__(
        self,
        backend: str | Any | None = None,
        *,
        n_jobs: int | None = UNSET,
        verbose: int | None = UNSET,
        temp_folder: str | None = UNSET,
        max_nbytes: int | str | None = UNSET,
        mmap_mode: str | None = UNSET,
        prefer: str | None = UNSET,
        require: str | None = UNSET,
        max_shared_bytes: int | str | None = UNSET,
        progress: bool | dict[str, Any] | None = UNSET,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        from ._progress import check_progress
        from ._resolve import check_backend_spec

        check_hints(prefer, require)
        layer: dict[str, Any] = {
            key: value
            for key, value in (
                ("n_jobs", n_jobs),
                ("verbose", verbose),
                ("temp_folder", temp_folder),
                ("max_nbytes", max_nbytes),
                ("mmap_mode", mmap_mode),
                ("prefer", prefer),
                ("require", require),
                ("max_shared_bytes", max_shared_bytes),
                ("progress", progress),
            )
            if value is not UNSET
        }
        if "progress" in layer:
            layer["progress"] = check_progress(layer["progress"])
        if "max_shared_bytes" in layer:
            layer["max_shared_bytes"] = _shared_bytes(layer["max_shared_bytes"])
        if backend is not None:
            layer["backend"], layer["backend_kwargs"] = check_backend_spec(
                backend, inner_max_num_threads, backend_params
            )
        elif inner_max_num_threads is not None or backend_params:
            raise ValueError(
                "inner_max_num_threads and other constructor parameters backend_params are "
                "only supported when backend is not None: name the backend they are for"
            )
        self._layer = layer
        # Like joblib, the configuration applies from construction, so that the
        # plain-call form ``parallel_config(...)`` followed by ``with`` works too.
        _stack().append(layer)

    def __enter__(self) -> dict[str, Any]:
        """The configuration in force inside the block (as joblib, a dict)."""
        return active_config()

    def __exit__(self, *exc_info: object) -> None:
        self.unregister()

    def unregister(self) -> None:
        """Undo this configuration (called by ``__exit__``)."""
        stack = _stack()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is self._layer:
                del stack[i]
                break


class parallel_backend(parallel_config):
    """Alias of :class:`parallel_config` taking the backend and ``n_jobs`` positionally.

    Kept for code written for joblib's ``parallel_backend(backend, n_jobs=-1, ...)``.
    """

    def __init__(
        self,
        backend: str | Any,
        n_jobs: int | None = -1,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        super().__init__(
            backend, n_jobs=n_jobs, inner_max_num_threads=inner_max_num_threads,
            **backend_params,
        )

    def __enter__(self) -> tuple[Any, int | None]:  # type: ignore[override]
        """``(backend, n_jobs)`` in force inside the block, as joblib's."""
        config = active_config()
        return config["backend"], config["n_jobs"]


def register_parallel_backend(
    name: str, factory: Callable[..., Any], make_default: bool = False
) -> None:
    """Make a backend available by name to ``Parallel`` and ``parallel_config``.

    Parameters
    ----------
    name : str
        The name to use as ``backend=name``.
    factory : callable
        Called with the backend keyword arguments of ``parallel_config``; returns an
        instance of :class:`arraycache.parallel.ParallelBackend` (``submit``,
        ``configure``, ``abort``, ``stop``), or of a backend written for joblib (a
        ``joblib.parallel.ParallelBackendBase`` subclass, such as ray's, joblib-spark's
        or joblib's own), which then runs through an adapter.
    make_default : bool, default False
        Also make it the default backend of this process.
    """
    BACKENDS[name] = factory
    if make_default:
        _DEFAULT_BACKEND[0] = name


def default_backend_name() -> str:
    """Name of the backend used when none is configured."""
    return _DEFAULT_BACKEND[0]


def _shared_bytes(value: Any) -> Any:
    """'auto', None, or a number of bytes, from a number or a size string like '2G'."""
    from ._pool import check_limit

    if isinstance(value, str) and value != "auto":
        from ..memory import parse_bytes

        value = parse_bytes(value)
    return check_limit(value)
