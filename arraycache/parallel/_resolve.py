"""From what a user names as a backend to a backend object.

A name (ours, registered, or in joblib's registry when joblib is loaded), an instance
(of :class:`ParallelBackend` or of a backend written for joblib), or a
``multiprocessing`` context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._backends import BUILTIN_BACKENDS, MultiprocessingBackend, ParallelBackend
from ._config import BACKENDS
from ._errors import BackendParameterError
from ._joblib_backends import JoblibBackendAdapter, is_joblib_backend, joblib_registered

__all__ = ["check_backend_spec", "make_backend"]

_OURS = BUILTIN_BACKENDS


def _is_mp_context(obj: Any) -> bool:
    # joblib's test: a multiprocessing context has Pool and Lock.
    return hasattr(obj, "Pool") and hasattr(obj, "Lock") and hasattr(obj, "get_start_method")


def _factory(name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` (here, else in joblib's registry when loaded)."""
    factory = BACKENDS.get(name)
    if factory is not None:
        return factory
    factory = joblib_registered(name)
    if factory is not None:
        return factory
    raise ValueError(
        f"Invalid backend: unknown backend {name!r}, expected one of {sorted(BACKENDS)}"
    )


def check_backend_spec(
    backend: Any, inner_max_num_threads: int | None, params: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Validate a ``parallel_config`` backend; return what to keep: (spec, kwargs).

    Our own backends are kept by name (each ``Parallel`` makes a fresh one, so that two
    of them never share a pool); a backend written for joblib, or one of ours that says
    so (``kept_by_config``: 'dask', whose ``scatter=`` is sent once), is made once, as
    joblib does, and kept as an instance.
    """
    if isinstance(backend, str):
        if inner_max_num_threads is not None:
            params = {**params, "inner_max_num_threads": inner_max_num_threads}
        made = _call_factory(_factory(backend), backend, params)
        if isinstance(made, ParallelBackend) and not made.kept_by_config:
            return backend, params
        return made, {}
    if params:
        raise ValueError(
            "Constructor parameters backend_params are only supported when backend is a "
            f"string; got {sorted(params)} with {backend!r}"
        )
    if isinstance(backend, type):
        raise TypeError(
            f"backend must be a name, a backend instance or a multiprocessing context, not "
            f"the class {backend.__qualname__} (pass an instance)"
        )
    if not (
        isinstance(backend, ParallelBackend) or is_joblib_backend(backend)
        or _is_mp_context(backend)
    ):
        raise TypeError(
            f"backend must be a name, a backend instance or a multiprocessing context, "
            f"not {backend!r}"
        )
    if inner_max_num_threads is not None:
        _set_inner_threads(backend, inner_max_num_threads)
    return backend, {}


def _set_inner_threads(backend: Any, n: int) -> None:
    if not getattr(backend, "supports_inner_max_num_threads", False):
        name = getattr(backend, "name", None) or type(backend).__name__
        if isinstance(backend, type):
            name = backend.name
        elif _is_mp_context(backend):
            name = MultiprocessingBackend.name
        raise BackendParameterError(
            f"{name} does not accept setting the inner_max_num_threads argument "
            "(only process backends that limit their workers' threads do, such as 'loky')"
        )
    backend.inner_max_num_threads = n


def _call_factory(factory: Callable[..., Any], name: str, params: dict[str, Any]) -> Any:
    params = dict(params)
    inner = params.pop("inner_max_num_threads", None)
    if factory in _OURS:
        if inner is not None:
            if not factory.supports_inner_max_num_threads:
                _set_inner_threads(factory, inner)  # raises, naming the backend
            params["inner_max_num_threads"] = inner
        try:
            return factory(**params)
        except TypeError as exc:
            raise TypeError(f"backend {name!r}: {exc}") from None
    made = factory(**params)
    if inner is not None:
        # joblib's way: an attribute of the backend, if it supports it.
        _set_inner_threads(made, inner)
    return made


def make_backend(spec: Any, kwargs: dict[str, Any], settings: dict[str, Any]) -> ParallelBackend:
    """A backend for one ``Parallel`` from a name, an instance or a multiprocessing context.

    ``settings`` are the ``Parallel`` parameters a joblib backend's ``configure`` gets
    (``max_nbytes``, ``temp_folder``, ``mmap_mode``, ``prefer``, ``require``,
    ``verbose``).
    """
    if isinstance(spec, str):
        spec = _call_factory(_factory(spec), spec, kwargs)
    if isinstance(spec, ParallelBackend):
        return spec
    if _is_mp_context(spec):
        return MultiprocessingBackend(context=spec)
    if is_joblib_backend(spec):
        return JoblibBackendAdapter(spec, settings)
    raise TypeError(
        f"backend must be a name, a backend instance or a multiprocessing context, not {spec!r}"
    )
