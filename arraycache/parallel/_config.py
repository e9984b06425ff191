"""Backend registry, ``parallel_config`` and the CPU/job-count helpers.

The active configuration is a stack kept in a ``threading.local``: a configuration
set in one thread does not leak into others, as in joblib.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import loky

__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "active_config",
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
        raise ValueError("n_jobs == 0 has no meaning; use a positive number or -1")
    if n_jobs < 0:
        n_jobs = max(cpu_count() + 1 + n_jobs, 1)
    limit = nesting_limit()
    if limit is not None:
        n_jobs = min(n_jobs, limit)
    return n_jobs


class parallel_config:
    """Set defaults for the ``Parallel`` calls made inside a ``with`` block.

    Parameters
    ----------
    backend : str or backend instance, optional
        ``'loky'`` (processes, the default), ``'threading'``, ``'sequential'`` or a
        name given to :func:`register_parallel_backend`.
    n_jobs, verbose, temp_folder, max_nbytes, mmap_mode, prefer, require
        Defaults for the same-named :class:`Parallel` parameters.
    inner_max_num_threads : int, optional
        Threads allowed to BLAS/OpenMP in each worker process (default:
        ``cpu_count() // n_jobs``).
    **backend_params
        Passed to the backend factory.

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
        n_jobs: int | None = None,
        verbose: int | None = None,
        temp_folder: str | None = None,
        max_nbytes: int | str | None = "default",
        mmap_mode: str | None = "default",
        prefer: str | None = None,
        require: str | None = None,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        if isinstance(backend, str) and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")
        if prefer not in (None, "processes", "threads"):
            raise ValueError(f"prefer must be None, 'processes' or 'threads', not {prefer!r}")
        if require not in (None, "sharedmem"):
            raise ValueError(f"require must be None or 'sharedmem', not {require!r}")
        layer: dict[str, Any] = {}
        for key, value, unset in (
            ("backend", backend, None),
            ("n_jobs", n_jobs, None),
            ("verbose", verbose, None),
            ("temp_folder", temp_folder, None),
            ("max_nbytes", max_nbytes, "default"),
            ("mmap_mode", mmap_mode, "default"),
            ("prefer", prefer, None),
            ("require", require, None),
        ):
            if value is not unset:
                layer[key] = value
        if inner_max_num_threads is not None:
            backend_params["inner_max_num_threads"] = inner_max_num_threads
        if backend_params:
            layer["backend_kwargs"] = backend_params
        self._layer = layer
        # Like joblib, the configuration applies from construction, so that the
        # plain-call form ``parallel_config(...)`` followed by ``with`` works too.
        _stack().append(layer)
        self._entered = False

    def __enter__(self) -> parallel_config:
        self._entered = True
        return self

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

    def __init__(self, backend: str | Any, n_jobs: int = -1, **kwargs: Any) -> None:
        super().__init__(backend, n_jobs=n_jobs, **kwargs)


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
        ``configure``, ``abort``, ``stop``).
    make_default : bool, default False
        Also make it the default backend of this process.
    """
    BACKENDS[name] = factory
    if make_default:
        _DEFAULT_BACKEND[0] = name


def default_backend_name() -> str:
    """Name of the backend used when none is configured."""
    return _DEFAULT_BACKEND[0]
