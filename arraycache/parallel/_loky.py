"""loky, imported without taking the 'loky' start method away from joblib's copy of it.

Each copy of loky (the package, and the one vendored in ``joblib.externals``) registers
its context under the name 'loky' in multiprocessing, and the last import wins: the
other copy's executors then start their workers with the wrong copy, connected to the
wrong resource tracker (joblib's memmapped arguments then leak until exit, with
warnings).  So if joblib's copy was imported first, it keeps the name, and arraycache
hands its own context to loky explicitly (:data:`LOKY_CONTEXT`).  Every import of loky
in arraycache goes through this module.
"""

from __future__ import annotations

import multiprocessing.context

__all__ = [
    "LOKY_CONTEXT",
    "ShutdownExecutorError",
    "TerminatedWorkerError",
    "get_reusable_executor",
    "loky",
]

_NAMES = ("loky", "loky_init_main")
_registry = multiprocessing.context._concrete_contexts
_before = {name: _registry[name] for name in _NAMES if name in _registry}

import loky  # noqa: E402
from loky import get_reusable_executor  # noqa: E402
from loky.backend.context import ctx_loky  # noqa: E402
from loky.process_executor import ShutdownExecutorError, TerminatedWorkerError  # noqa: E402

_registry.update(_before)

#: This copy's start method, for ``get_reusable_executor(context=...)``.
LOKY_CONTEXT = ctx_loky
