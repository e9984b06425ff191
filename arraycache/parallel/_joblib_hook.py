"""Registering the ``'arraycache'`` backend with joblib, without importing joblib.

``import arraycache`` must stay cheap (every worker process does it) and joblib is
optional, so the backend class (``_joblib_backend``, a subclass of joblib's classes) is
imported only once joblib is:

- joblib already imported when arraycache is: registered at once;
- otherwise a meta path finder waits for ``import joblib`` (``import sklearn`` does it):
  it lets the usual finders find joblib, and wraps the loader so that the registration
  runs right after joblib's ``__init__`` has executed; then it removes itself.  Until
  then it costs each new import one string comparison.

:func:`register_joblib_backend` does the same by hand.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = ["BACKEND_NAME", "install_joblib_hook", "register_joblib_backend"]

#: The name under which joblib knows the backend.
BACKEND_NAME = "arraycache"


def register_joblib_backend() -> None:
    """Register arraycache's backend with joblib as ``'arraycache'`` (imports joblib).

    Done automatically when joblib is imported before or after arraycache; call it
    yourself only if joblib was loaded some other way (e.g. its module object replaced).
    Then ``joblib.parallel_config(backend='arraycache')`` runs joblib's ``Parallel``
    calls, and so scikit-learn's ``n_jobs``, in arraycache's worker processes: arrays
    that live in a file (cache hits, ``np.load(..., mmap_mode='r')``) reach the workers
    with no copy, other large arrays are written once per content and reused by later
    tasks and calls, and large results come back through files.

    Raises
    ------
    ImportError
        If joblib is not installed.
    """
    try:
        import joblib
    except ImportError as exc:
        raise ImportError(
            "register_joblib_backend() registers a backend with joblib, which is not "
            "installed: pip install joblib"
        ) from exc
    from . import _joblib_backend  # registers the backend at the end of its first import

    backend = getattr(_joblib_backend, "ArraycacheBackend", None)
    # None while that import is still running (it imported joblib, which led here).
    if backend is not None:
        joblib.register_parallel_backend(BACKEND_NAME, backend)


def _register_after_import() -> None:
    # Runs inside ``import joblib``: a failure must not break that import.
    try:
        register_joblib_backend()
    except Exception as exc:
        warnings.warn(
            f"arraycache could not register its joblib backend {BACKEND_NAME!r}: "
            f"{type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisteringLoader:
    """Loads joblib with its own loader, then registers the backend."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # The module keeps its real loader (importlib.resources, reload and pkgutil read it).
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self.loader
        self.loader.exec_module(module)
        # Only after a successful import: a failed one may be retried through the hook.
        _uninstall()
        _register_after_import()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _JoblibImportHook:
    """Meta path finder that only acts on ``import joblib`` (see the module docstring)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "joblib":
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None  # not installed: the import fails as usual
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


_HOOK = _JoblibImportHook()


def _uninstall() -> None:
    while _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install_joblib_hook() -> None:
    """Register now if joblib is imported, else when it is (called by ``import arraycache``)."""
    if "joblib" in sys.modules:
        if sys.modules["joblib"] is not None:  # None: imports of joblib are blocked
            _register_after_import()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
