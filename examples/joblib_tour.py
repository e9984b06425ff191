"""joblib's classic tutorial, run on arraycache with one import changed.

    import arraycache as joblib          # was: import joblib

Each part prints what it shows, with timings:

1. a cached expensive function: the first call computes, the second is instant;
2. the same work serially and with ``Parallel(n_jobs=2)``;
3. ``verbose=10`` progress messages;
4. a compressed cache of a large random array (size on disk and time);
5. a grid search whose cached data loader is called inside the ``Parallel`` workers
   (the loader runs once; every worker hits the cache and maps the data);
6. a pandas pipeline: load -> clean (cached) -> per-category statistics in parallel;
7. cached per-file batch processing in ``Parallel(verbose=5)``: the second pass over
   the files is all hits.

Run:  python examples/joblib_tour.py [scale]     (default 1.0; 0.05 for a smoke run)
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import arraycache as joblib  # the one changed line

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0


def slow_square(x: float) -> float:
    time.sleep(0.25 * min(SCALE, 1.0))
    return x**2


def fit_score(location: str, n_samples: int, alpha: float, fold: int) -> float:
    """Ridge regression on one fold; the data comes from the cached loader (a hit)."""
    memory = joblib.Memory(location, mmap_mode="r", verbose=0)
    X, y = memory.cache(load_dataset)(n_samples)
    test = np.arange(len(y)) % 4 == fold
    A = X[~test]
    coef = np.linalg.solve(A.T @ A + alpha * np.eye(A.shape[1]), A.T @ y[~test])
    return float(np.mean((X[test] @ coef - y[test]) ** 2))


def load_dataset(n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Stands for an expensive load (a download, a parse)."""
    time.sleep(0.5 * min(SCALE, 1.0))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, 40))
    return X, X @ rng.standard_normal(40) + rng.standard_normal(n_samples)


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    time.sleep(0.2 * min(SCALE, 1.0))
    frame = frame.dropna()
    return frame[frame["value"].between(-3, 3)].reset_index(drop=True)


def category_stats(frame: pd.DataFrame, category: str) -> tuple[str, int, float]:
    part = frame[frame["category"] == category]
    return category, len(part), float(part["value"].mean())


def process_file(path: str) -> float:
    """Cached in the workers: stands for decoding one file."""
    time.sleep(0.05 * min(SCALE, 1.0))
    return float(np.fromfile(path, dtype=np.float64).std())


def timed(label: str, func):
    t0 = time.perf_counter()
    out = func()
    print(f"{label}: {time.perf_counter() - t0:.3f} s")
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="arraycache-tour-") as location:
        memory = joblib.Memory(location, verbose=0)

        print("1. a cached expensive function")
        square = memory.cache(slow_square)
        timed("   first call (computes)", lambda: square(3.0))
        timed("   second call (cache hit)", lambda: square(3.0))

        print("2. serial vs Parallel(n_jobs=2), 8 tasks")
        joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(i) for i in range(2))  # start workers
        timed("   serial", lambda: [slow_square(i) for i in range(8)])
        timed("   Parallel(n_jobs=2)",
              lambda: joblib.Parallel(n_jobs=2)(joblib.delayed(slow_square)(i) for i in range(8)))

        print("3. verbose=10")
        joblib.Parallel(n_jobs=2, verbose=10)(joblib.delayed(math.sqrt)(i) for i in range(6))

        print("4. a compressed cache of a large random array")
        n = int(5_000_000 * SCALE)
        for compress in (False, 3):
            cached = joblib.Memory(f"{location}/c{compress}", compress=compress,
                                   verbose=0).cache(np.random.default_rng(0).integers)
            t0 = time.perf_counter()
            cached(0, 1000, n)
            seconds = time.perf_counter() - t0
            nbytes = sum(p.stat().st_size for p in Path(f"{location}/c{compress}").rglob("*")
                         if p.is_file() and ".arraycache" not in p.parts)
            print(f"   compress={compress}: stored {n * 8 / 1e6:.0f} MB as "
                  f"{nbytes / 1e6:.1f} MB in {seconds:.2f} s")

        print("5. a grid search whose cached loader runs in the workers")
        n_samples = int(200_000 * SCALE)
        loader = joblib.Memory(location, mmap_mode="r", verbose=0).cache(load_dataset)
        timed("   loader, first call", lambda: loader(n_samples))
        grid = [(alpha, fold) for alpha in (0.1, 1.0, 10.0) for fold in range(4)]
        scores = timed("   12 fits in Parallel(n_jobs=2)", lambda: joblib.Parallel(n_jobs=2)(
            joblib.delayed(fit_score)(location, n_samples, alpha, fold) for alpha, fold in grid))
        best = min(zip(scores, grid, strict=True))[1][0]
        stats = joblib.Memory(location).stats()["functions"]
        loads = next(v for k, v in stats.items() if k.endswith("load_dataset"))
        print(f"   best alpha {best}; loader: {loads['misses']} computation, "
              f"{loads['hits']} hits in the workers")

        print("6. pandas: load -> clean (cached) -> per-category stats in parallel")
        rng = np.random.default_rng(1)
        rows = int(1_000_000 * SCALE)
        raw = pd.DataFrame({"category": rng.choice(list("abcdef"), rows),
                            "value": rng.standard_normal(rows)})
        raw.loc[rng.integers(0, rows, rows // 100), "value"] = np.nan
        clean_cached = memory.cache(clean)
        frame = timed("   clean (computes)", lambda: clean_cached(raw))
        frame = timed("   clean again (hit)", lambda: clean_cached(raw))
        per_category = joblib.Parallel(n_jobs=2)(
            joblib.delayed(category_stats)(frame, c) for c in sorted(frame["category"].unique()))
        print("   " + ", ".join(f"{c}: {count} rows, mean {mean:+.3f}"
                                for c, count, mean in per_category))

        print("7. cached per-file batch processing, Parallel(verbose=5)")
        folder = Path(location) / "files"
        folder.mkdir()
        paths = []
        for i in range(12):
            path = folder / f"part{i}.bin"
            np.random.default_rng(i).standard_normal(int(100_000 * SCALE)).tofile(path)
            paths.append(str(path))
        process = memory.cache(process_file)
        for attempt in ("first pass", "second pass (all hits)"):
            timed(f"   {attempt}", lambda: joblib.Parallel(n_jobs=2, verbose=5)(
                joblib.delayed(process)(p) for p in paths))


if __name__ == "__main__":
    main()
