"""Memory storage: store (miss) and load (hit) of one large array result.

The cached function returns a module-level array looked up by a short string key, so a
miss costs "hash a short string + store" and a hit costs "hash a short string + load":
the array is generated before timing. Each sample first makes one call with a tiny
result (another key) so lazy imports and the per-function folder are not timed.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from .common import BIG, MIB, Workload, dir_size, random_array, smooth_array, timed, warm_memory

_DATA: dict[str, np.ndarray] = {}


def produce(key: str) -> np.ndarray:
    """The cached function: returns the array registered under ``key``."""
    return _DATA[key]


def _cached(lib, tmp: Path, **memory_kwargs):
    memory = lib.Memory(str(tmp / "cache"), verbose=0, **memory_kwargs)
    func = memory.cache(produce)
    _DATA["tiny"] = np.arange(10.0)
    func("tiny")
    return func


def _store(lib, size: int, tmp: Path, data: np.ndarray, compress) -> dict:
    _DATA[BIG] = data
    func = _cached(lib, tmp, compress=compress)
    before = dir_size(tmp / "cache")
    warm_memory(size)
    seconds, _ = timed(lambda: func(BIG))
    stored = dir_size(tmp / "cache") - before
    return {"time": seconds, "disk_ratio": stored / data.nbytes, "gb_per_s": size / seconds / 1e9}


def store(lib, size: int, tmp: Path) -> dict:
    return _store(lib, size, tmp, random_array(size), compress=False)


def store_compressed_random(lib, size: int, tmp: Path) -> dict:
    return _store(lib, size, tmp, random_array(size), compress=3)


def store_compressed_smooth(lib, size: int, tmp: Path) -> dict:
    return _store(lib, size, tmp, smooth_array(size), compress=3)


def hit_mmap(lib, size: int, tmp: Path) -> dict:
    _DATA[BIG] = random_array(size)
    func = _cached(lib, tmp, mmap_mode="r")
    func(BIG)
    del _DATA[BIG]
    warm_memory(size)
    seconds, result = timed(lambda: func(BIG))
    again = min(timed(lambda: func(BIG))[0] for _ in range(5))
    is_memmap = float(isinstance(result, np.memmap))
    return {"time": seconds, "best_of_5_s": again, "is_memmap": is_memmap}


def fill_cache(lib_name: str, size: int, tmp: str) -> None:
    """Store the big entry of ``hit-mmap-new-process`` (run in its own process)."""
    _DATA[BIG] = random_array(size)
    _cached(importlib.import_module(lib_name), Path(tmp), mmap_mode="r")(BIG)


def hit_mmap_new_process(lib, size: int, tmp: Path) -> dict:
    """First hit in a process that did not write the entry (a notebook after a restart)."""
    code = (
        "from benchmarks.storage import fill_cache; "
        f"fill_cache({lib.__name__!r}, {size}, {str(tmp)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    func = _cached(lib, tmp, mmap_mode="r")
    warm_memory(size)
    seconds, result = timed(lambda: func(BIG))  # a miss would raise: _DATA has no BIG here
    return {"time": seconds, "is_memmap": float(isinstance(result, np.memmap))}


def hit_nommap(lib, size: int, tmp: Path) -> dict:
    _DATA[BIG] = random_array(size)
    func = _cached(lib, tmp)
    func(BIG)
    del _DATA[BIG]
    warm_memory(size)
    seconds, result = timed(lambda: func(BIG))
    touch, _ = timed(result.sum)
    return {"time": seconds, "touch_s": touch, "total_s": seconds + touch}


WORKLOADS = [
    Workload("store-1G", store, "storage", notes="miss of an uncompressed array result"),
    Workload(
        "store-compressed-random",
        store_compressed_random,
        "storage",
        notes="miss with compress=3, uniform random float64",
    ),
    Workload(
        "store-compressed-smooth",
        store_compressed_smooth,
        "storage",
        notes="miss with compress=3, random walk of small ints as float64",
    ),
    Workload("hit-mmap", hit_mmap, "storage", notes="hit with mmap_mode='r'"),
    Workload("hit-mmap-1M", hit_mmap, "storage", fixed_size=MIB, notes="same at 1 MiB"),
    Workload(
        "hit-mmap-new-process",
        hit_mmap_new_process,
        "storage",
        notes="first mmap hit in a process that did not write the entry",
    ),
    Workload("hit-nommap", hit_nommap, "storage", notes="hit loading into memory; then .sum()"),
]
