"""All workloads by name, in the order they run and print."""

from __future__ import annotations

from .common import Workload


def workloads() -> dict[str, Workload]:
    """Name -> Workload: references first, then storage (arrays, frames), hashing, parallel."""
    from . import frames, hashing, parallel, reference, sklearn, storage

    ordered = [*reference.WORKLOADS, *storage.WORKLOADS, *frames.WORKLOADS, *hashing.WORKLOADS,
               *parallel.WORKLOADS, *sklearn.WORKLOADS]
    return {w.name: w for w in ordered}
