"""All workloads by name, in the order they run and print."""

from __future__ import annotations

from .common import Workload


def workloads() -> dict[str, Workload]:
    """Name -> Workload: references first, then storage (arrays, frames), hashing, parallel."""
    from . import dask_bench, frames, hashing, parallel, reference, sklearn, storage

    ordered = [*reference.WORKLOADS, *storage.WORKLOADS, *frames.WORKLOADS, *hashing.WORKLOADS,
               *parallel.WORKLOADS, *dask_bench.WORKLOADS, *sklearn.WORKLOADS]
    from . import notebook_memory  # peak memory of a notebook-like session
    ordered += notebook_memory.WORKLOADS
    from . import remote_bench  # S3 store and hits (arraycache only)
    ordered += remote_bench.WORKLOADS
    return {w.name: w for w in ordered}
