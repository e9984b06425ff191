"""A cached result far larger than a hit could afford to read, used through memmaps.

The first run computes a (rows x 256) float32 matrix and stores it; every later call
is a hit that maps the stored file (``mmap_mode="r"``) in about a millisecond,
whatever its size.  Slicing reads only the pages it touches, and a block-by-block
reduction streams the file through the page cache without ever holding it: the
process's own memory (psutil's resident minus shared file pages, i.e. its anonymous
memory) stays a small fraction of the matrix.  The mapped file pages are the kernel's
page cache: reclaimable, and shared with any other process mapping the same entry.

Run:  python examples/mmap_loading.py [gigabytes]     (default 2; e.g. 0.05 for a smoke run)
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import psutil

import arraycache

COLUMNS = 256


def own_mb() -> float:
    """Anonymous resident memory: what the process holds beyond mapped file pages."""
    info = psutil.Process().memory_info()
    return (info.rss - info.shared) / 1e6


def main(gigabytes: float) -> None:
    rows = max(int(gigabytes * 1e9 / (COLUMNS * 4)), 1000)
    with tempfile.TemporaryDirectory(prefix="arraycache-mmap-") as location:
        memory = arraycache.Memory(location, mmap_mode="r", verbose=0)

        @memory.cache
        def simulate(rows: int, seed: int = 0) -> np.ndarray:
            """Stands for an expensive computation with a big result (written in slabs,
            so the example itself never needs the whole matrix in memory twice)."""
            out = np.lib.format.open_memmap(f"{location}/scratch.npy", mode="w+",
                                            dtype=np.float32, shape=(rows, COLUMNS))
            rng = np.random.default_rng(seed)
            for start in range(0, rows, 65536):
                block = out[start : start + 65536]
                block[:] = rng.standard_normal(block.shape, dtype=np.float32)
            return out

        t0 = time.perf_counter()
        simulate(rows)
        print(f"first call (computed and stored): {time.perf_counter() - t0:.2f} s, "
              f"{rows * COLUMNS * 4 / 1e9:.2f} GB")

        before = own_mb()
        t0 = time.perf_counter()
        x = simulate(rows)
        hit_ms = (time.perf_counter() - t0) * 1e3
        print(f"hit: {hit_ms:.2f} ms -> {type(x).__name__} {x.shape} {x.dtype}")

        t0 = time.perf_counter()
        rows_sample = np.asarray(x[rows // 2 : rows // 2 + 1000]).mean()
        print(f"slice of 1000 rows from the middle: mean {rows_sample:+.4f}, "
              f"{(time.perf_counter() - t0) * 1e3:.2f} ms")

        t0 = time.perf_counter()
        column_sums = np.zeros(COLUMNS, dtype=np.float64)
        for start in range(0, rows, 65536):
            column_sums += x[start : start + 65536].sum(axis=0, dtype=np.float64)
        print(f"block sums over all rows: {time.perf_counter() - t0:.2f} s, "
              f"mean of column means {column_sums.mean() / rows:+.5f}")
        print(f"own memory: {own_mb() - before:+.0f} MB after reading "
              f"{x.nbytes / 1e6:.0f} MB through the map")
        del x


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
