"""arraycache: joblib's Memory and Parallel, built for large numpy arrays.

Cache entries are zarr v3 groups whose arrays load as ``np.memmap``; large
arguments are hashed block by block in threads; the parallel runner hands
large arrays to workers as memory-mapped files.
"""

from __future__ import annotations

from .exceptions import (
    CacheWarning,
    CodeNotCoveredWarning,
    DamagedEntryWarning,
    UnhashableArgumentError,
    UnstorableResultWarning,
    UntrustedEntryWarning,
    WrongArgumentsError,
)
from .hashing import hash
from .memorized import MemorizedFunc, MemorizedResult, NotMemorizedFunc, NotMemorizedResult
from .memory import Memory, expires_after
from .parallel import (
    Parallel,
    ParallelTimeoutError,
    SharedFileChangedError,
    SharingFallbackWarning,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from .parallel._joblib_hook import install_joblib_hook, register_joblib_backend

__version__ = "0.1.0"

__all__ = [
    "CacheWarning",
    "CodeNotCoveredWarning",
    "DamagedEntryWarning",
    "MemorizedFunc",
    "MemorizedResult",
    "Memory",
    "NotMemorizedFunc",
    "NotMemorizedResult",
    "Parallel",
    "ParallelTimeoutError",
    "SharedFileChangedError",
    "SharingFallbackWarning",
    "UnhashableArgumentError",
    "UnstorableResultWarning",
    "UntrustedEntryWarning",
    "WrongArgumentsError",
    "__version__",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "expires_after",
    "hash",
    "parallel_backend",
    "parallel_config",
    "register_joblib_backend",
    "register_parallel_backend",
]

# joblib's backend 'arraycache' (scikit-learn's n_jobs on arraycache's sharing): registered
# now if joblib is imported, else when it is; joblib is not imported here.
install_joblib_hook()
