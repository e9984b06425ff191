"""Hashing: ``lib.hash`` of large arrays, and cache hits whose cost is hashing an argument.

- ``hash-contiguous``: a C-contiguous float64 array of the working size;
- ``hash-strided``: ``b[:, ::2]`` of an array twice the working size (the view is the size);
- ``hash-memmap``: an ``np.memmap`` (mode 'r') of a file just written (page cache);
- ``hash-cached-memmap``: the array returned by a hit of the library's own cache with
  ``mmap_mode='r'``;
- ``hit-big-arg``: hit of a cached function whose argument is the large array;
- ``pipeline-2-steps``: ``step2(step1(key))``, both cached with ``mmap_mode='r'``, both
  hits; step1 returns the large array;
- ``small-hits-10k``: 10,000 hits of a cached function with an int and a short string;
- ``first-hit-helpers``: the first hit of a function that calls 20 helpers and a class of
  a user module, through a new ``Memory``: what a new process or notebook kernel pays to
  learn the code (arraycache walks the helpers' bytecode; joblib reads the source);
- ``hits-helpers-10k``: 10,000 later hits of it (arraycache re-checks the helpers by
  identity at each call).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import BIG, Workload, random_array, timed, warm_memory

_DATA: dict[str, np.ndarray] = {}


def step1(key: str) -> np.ndarray:
    """Returns the large array registered under ``key``."""
    return _DATA[key]


def step2(a: np.ndarray) -> float:
    """A cheap reduction of a large array."""
    return float(a[::4096].sum())


def small(i: int, name: str) -> int:
    """A cached function with small arguments."""
    return i * 2 + len(name)


def _time_hash(lib, x: np.ndarray, size: int) -> dict:
    warm_memory(size)
    seconds, _ = timed(lambda: lib.hash(x))
    return {"time": seconds, "gb_per_s": size / seconds / 1e9}


def hash_contiguous(lib, size: int, tmp: Path) -> dict:
    return _time_hash(lib, random_array(size), size)


def hash_strided(lib, size: int, tmp: Path) -> dict:
    cols = 512
    rows = max(size // (8 * cols), 1)
    b = random_array(2 * rows * cols * 8).reshape(rows, 2 * cols)
    return _time_hash(lib, b[:, ::2], size)


def hash_memmap(lib, size: int, tmp: Path) -> dict:
    path = tmp / "data.bin"
    a = random_array(size)
    a.tofile(path)
    m = np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)
    del a
    result = _time_hash(lib, m, size)
    del m
    return result


def hash_cached_memmap(lib, size: int, tmp: Path) -> dict:
    _DATA[BIG] = random_array(size)
    func = lib.Memory(str(tmp / "cache"), mmap_mode="r", verbose=0).cache(step1)
    func(BIG)
    del _DATA[BIG]
    x = func(BIG)
    result = _time_hash(lib, x, size)
    result["again_s"] = timed(lambda: lib.hash(x))[0]
    result["is_memmap"] = float(isinstance(x, np.memmap))
    return result


def hit_big_arg(lib, size: int, tmp: Path) -> dict:
    x = random_array(size)
    func = lib.Memory(str(tmp / "cache"), verbose=0).cache(step2)
    func(x)
    warm_memory(size)
    seconds, _ = timed(lambda: func(x))
    return {"time": seconds}


def pipeline_2_steps(lib, size: int, tmp: Path) -> dict:
    _DATA[BIG] = random_array(size)
    memory = lib.Memory(str(tmp / "cache"), mmap_mode="r", verbose=0)
    s1, s2 = memory.cache(step1), memory.cache(step2)
    s2(s1(BIG))
    del _DATA[BIG]
    warm_memory(size)
    seconds, _ = timed(lambda: s2(s1(BIG)))
    return {"time": seconds}


def small_hits_10k(lib, size: int, tmp: Path) -> dict:
    func = lib.Memory(str(tmp / "cache"), verbose=0).cache(small)
    args = [(i, f"name-{i}") for i in range(100)]
    for i, name in args:
        func(i, name)

    def hits() -> None:
        for _ in range(100):
            for i, name in args:
                func(i, name)

    warm_memory(64 << 20)
    seconds, _ = timed(hits)
    return {"time": seconds, "per_hit_us": seconds / 10_000 * 1e6}


_HELPERS = "\n".join(
    [f"def helper{i}(x):\n    return x + {i} + SCALE\n" for i in range(20)]
    + ["SCALE = 3", "class Model:", "    def apply(self, x):", "        return x * 2",
       "def features(x):",
       "    return Model().apply(" + " + ".join(f"helper{i}(x)" for i in range(20)) + ")"]
)


def _helper_module(tmp: Path):
    import importlib
    import sys

    (tmp / "bench_helpers.py").write_text(_HELPERS)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("bench_helpers")


def first_hit_helpers(lib, size: int, tmp: Path) -> dict:
    module = _helper_module(tmp)
    lib.Memory(str(tmp / "cache"), verbose=0).cache(module.features)(1)
    warm_memory(64 << 20)
    seconds, _ = timed(lambda: lib.Memory(str(tmp / "cache"), verbose=0).cache(
        module.features)(1))
    return {"time": seconds}


def hits_helpers_10k(lib, size: int, tmp: Path) -> dict:
    module = _helper_module(tmp)
    func = lib.Memory(str(tmp / "cache"), verbose=0).cache(module.features)
    func(1)

    def hits() -> None:
        for _ in range(10_000):
            func(1)

    warm_memory(64 << 20)
    seconds, _ = timed(hits)
    return {"time": seconds, "per_hit_us": seconds / 10_000 * 1e6}


WORKLOADS = [
    Workload("hash-contiguous", hash_contiguous, "hashing", notes="lib.hash(a), C-contiguous"),
    Workload("hash-strided", hash_strided, "hashing", notes="lib.hash(b[:, ::2])"),
    Workload("hash-memmap", hash_memmap, "hashing", notes="lib.hash(np.memmap(file))"),
    Workload(
        "hash-cached-memmap",
        hash_cached_memmap,
        "hashing",
        notes="lib.hash of the result of a hit with mmap_mode='r'",
    ),
    Workload("hit-big-arg", hit_big_arg, "hashing", notes="hit, the argument is the array"),
    Workload("pipeline-2-steps", pipeline_2_steps, "hashing", notes="step2(step1(k)), both hits"),
    Workload("small-hits-10k", small_hits_10k, "hashing", fixed_size=0, notes="10,000 small hits"),
    Workload("first-hit-helpers", first_hit_helpers, "hashing", fixed_size=0,
             notes="first hit, new Memory, function calling 20 user helpers"),
    Workload("hits-helpers-10k", hits_helpers_10k, "hashing", fixed_size=0,
             notes="10,000 hits of that function"),
]
