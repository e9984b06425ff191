"""Physical references, measured in the same run as the comparisons.

- ``mem-pass``: one pass over memory, ``a.sum()`` on the working size;
- ``raw-write``: ``np.save`` of the working size to the benchmark disk, then ``fsync``
  (the time without the fsync is an extra);
- ``raw-read``: ``np.load`` of the same bytes just written, so from the page cache
  (nothing is dropped from the page cache: no root games).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .common import Workload, random_array, timed, warm_memory


def mem_pass(lib: object, size: int, tmp: Path) -> dict:
    a = random_array(size)
    a.sum()
    warm_memory(size)
    seconds, _ = timed(a.sum)
    return {"time": seconds, "gb_per_s": size / seconds / 1e9}


def _save(a: np.ndarray, path: Path, sync: bool) -> None:
    with open(path, "wb") as f:
        np.save(f, a)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def raw_write(lib: object, size: int, tmp: Path) -> dict:
    a = random_array(size)
    warm_memory(size)
    nosync, _ = timed(lambda: _save(a, tmp / "nosync.npy", sync=False))
    os.unlink(tmp / "nosync.npy")
    warm_memory(size)
    seconds, _ = timed(lambda: _save(a, tmp / "raw.npy", sync=True))
    return {"time": seconds, "gb_per_s": size / seconds / 1e9, "no_fsync_s": nosync}


def raw_read(lib: object, size: int, tmp: Path) -> dict:
    _save(random_array(size), tmp / "raw.npy", sync=True)
    np.load(tmp / "raw.npy").sum()  # make sure every page is in the page cache
    warm_memory(size)
    seconds, _ = timed(lambda: np.load(tmp / "raw.npy"))
    return {"time": seconds, "gb_per_s": size / seconds / 1e9}


WORKLOADS = [
    Workload("mem-pass", mem_pass, "reference", notes="a.sum() over the working size"),
    Workload("raw-write", raw_write, "reference", notes="np.save + fsync, same disk"),
    Workload("raw-read", raw_read, "reference", notes="np.load from the page cache"),
]
