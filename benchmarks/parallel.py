"""Parallel: a large array shared with 64 tasks, large results, and many tiny tasks.

Every run uses ``lib.Parallel(n_jobs=2)`` (the loky process backend by default) and
records, besides the wall time of the timed call, the peak memory of the worker
processes and of the parent (see ``common.MemorySampler``).

- ``parallel-1G-fresh``: first call in the process (worker start-up included) over an
  in-memory array;
- ``parallel-1G-second``: the same array in a second call (the first one is not timed);
- ``parallel-1G-cached``: an array returned by a hit of the library's own cache with
  ``mmap_mode='r'`` (workers already started);
- ``parallel-100MB-results``: 8 tasks each returning ~100 MB (scaled with --size: size/10.7);
  the parent then sums them (extra ``touch_s``);
- ``parallel-10k-tiny``: 10,000 tasks returning an int (workers already started).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import BIG, GIB, MemorySampler, Workload, random_array, timed, warm_memory

N_TASKS = 64
N_JOBS = 2

_DATA: dict[str, np.ndarray] = {}


def part_sum(x: np.ndarray, i: int, n: int) -> float:
    """Sum of the i-th of n contiguous slabs of x.

    Each task touches only its slab. A strided task (``x[i::n].sum()``) touches every page
    of x in every task, so each of the 64 tasks page-faults the whole mapping again: that
    cost (2-13 s per call at 1 GiB on the 2-core VM, very noisy) hid the sharing cost.
    """
    start, stop = i * len(x) // n, (i + 1) * len(x) // n
    return float(x[start:stop].sum())


def make_block(i: int, n: int) -> np.ndarray:
    """An array of n float64 filled with i."""
    return np.full(n, float(i))


def tiny(i: int) -> int:
    return i * 2


def produce(key: str) -> np.ndarray:
    """The cached function of ``parallel-1G-cached``."""
    return _DATA[key]


def _share(lib, x: np.ndarray) -> list[float]:
    return lib.Parallel(n_jobs=N_JOBS)(lib.delayed(part_sum)(x, i, N_TASKS) for i in range(N_TASKS))


def _start_workers(lib) -> None:
    lib.Parallel(n_jobs=N_JOBS)(lib.delayed(tiny)(i) for i in range(2 * N_JOBS))


def _measure(call, size: int) -> dict:
    warm_memory(size)
    with MemorySampler() as sampler:
        seconds, result = timed(call)
    return {"time": seconds, **sampler.summary()}, result


def _check(sums: list[float], x: np.ndarray) -> None:
    if not np.isclose(sum(sums), float(x.sum())):
        raise AssertionError("the parallel sums do not add up to x.sum()")


def fresh(lib, size: int, tmp: Path) -> dict:
    x = random_array(size)
    out, sums = _measure(lambda: _share(lib, x), size)
    _check(sums, x)
    return out


def second(lib, size: int, tmp: Path) -> dict:
    x = random_array(size)
    _share(lib, x)
    out, sums = _measure(lambda: _share(lib, x), size)
    _check(sums, x)
    return out


def cached(lib, size: int, tmp: Path) -> dict:
    _DATA[BIG] = random_array(size)
    func = lib.Memory(str(tmp / "cache"), mmap_mode="r", verbose=0).cache(produce)
    func(BIG)
    del _DATA[BIG]
    x = func(BIG)
    _start_workers(lib)
    out, sums = _measure(lambda: _share(lib, x), size)
    _check(sums, x)
    out["is_memmap"] = float(isinstance(x, np.memmap))
    return out


def big_results(lib, size: int, tmp: Path) -> dict:
    n = max(int(100e6 * size / GIB) // 8, 1)
    _start_workers(lib)
    out, blocks = _measure(
        lambda: lib.Parallel(n_jobs=N_JOBS)(lib.delayed(make_block)(i, n) for i in range(8)),
        8 * n * 8,
    )
    touch, total = timed(lambda: sum(float(b.sum()) for b in blocks))
    if total != n * sum(range(8)):
        raise AssertionError("wrong results")
    out["touch_s"] = touch
    return out


def tiny_tasks(lib, size: int, tmp: Path) -> dict:
    _start_workers(lib)
    out, result = _measure(
        lambda: lib.Parallel(n_jobs=N_JOBS)(lib.delayed(tiny)(i) for i in range(10_000)),
        64 << 20,
    )
    if result != [2 * i for i in range(10_000)]:
        raise AssertionError("wrong results")
    return out


WORKLOADS = [
    Workload("parallel-1G-fresh", fresh, "parallel", notes="64 tasks, first call"),
    Workload("parallel-1G-second", second, "parallel", notes="64 tasks, second call"),
    Workload("parallel-1G-cached", cached, "parallel", notes="64 tasks over a cached memmap"),
    Workload("parallel-100MB-results", big_results, "parallel", notes="8 x ~100 MB results"),
    Workload("parallel-10k-tiny", tiny_tasks, "parallel", fixed_size=0, notes="10,000 tiny tasks"),
]
