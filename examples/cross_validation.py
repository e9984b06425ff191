"""Cross-validation in parallel over one big feature matrix, shared with the workers.

1. A parameter grid x folds loop written with ``arraycache.Parallel``: ridge regression
   for a few ``alpha`` values on each fold of X.  X comes from a cached loader
   (``Memory(mmap_mode="r")``): the hit is an ``np.memmap`` over the cache file, and the
   workers get a reference to that file, not a copy.  Then the same loop over an
   in-memory copy of X: it is written once into the sharing folder (/dev/shm) and every
   task of both calls maps that one copy.
2. The same kind of search with scikit-learn, over X in memory: ``GridSearchCV(n_jobs=2)``
   then ``cross_val_score`` of the best pipeline, on joblib's default 'loky' backend, then
   on the 'arraycache' backend (registered with joblib by ``import arraycache``), then
   also with ``Pipeline(memory=arraycache.Memory(...))`` so that the PCA fitted on a fold
   is computed once and loaded for the other candidates.  joblib writes X for
   each of its calls; arraycache writes it once for all of them (the copy lives as long
   as X does).  (A memory-mapped X goes by reference with both.)

"written" is what this process passed to write(2) during the calls (files, pipes to the
workers; from psutil): it shows whether and how often X was copied for the workers.
The Pipeline's cache entries are written by the workers, and by the final refit here.

Run:  python examples/cross_validation.py [gigabytes]    (default 0.5; 0.02 for a smoke run)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import psutil
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline

import arraycache

COLUMNS = 100
FOLDS = 4
ALPHAS = [0.1, 10.0, 1000.0, 1e5]


def written_mb() -> float:
    return psutil.Process().io_counters().write_chars / 1e6


def fold(k: int, rows: int) -> slice:
    """Rows of fold ``k``: a contiguous slab, so a task's view of X copies nothing."""
    return slice(k * rows // FOLDS, (k + 1) * rows // FOLDS)


def fold_stats(X: np.ndarray, y_k: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """X_k'X_k and X_k'y_k of one fold (the sufficient statistics of least squares)."""
    X_k = X[fold(k, len(X))]
    return X_k.T @ X_k, X_k.T @ y_k


def fold_score(X: np.ndarray, y_k: np.ndarray, gram: np.ndarray, xty: np.ndarray,
               alpha: float, k: int) -> float:
    """Ridge fitted on the other folds (their statistics), R^2 on fold ``k``."""
    coef = np.linalg.solve(gram + alpha * np.eye(len(gram)), xty)
    residual = y_k - X[fold(k, len(X))] @ coef
    return 1.0 - residual.var() / y_k.var()


def grid_by_folds(X: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Best alpha by mean R^2 over the folds: (alpha, seconds, MB written)."""
    rows = len(X)
    before, start = written_mb(), time.perf_counter()
    with arraycache.Parallel(n_jobs=2) as parallel:
        stats = parallel(
            arraycache.delayed(fold_stats)(X, y[fold(k, rows)], k) for k in range(FOLDS)
        )
        gram = sum(s[0] for s in stats)
        xty = sum(s[1] for s in stats)
        scores = parallel(
            arraycache.delayed(fold_score)(
                X, y[fold(k, rows)], gram - stats[k][0], xty - stats[k][1], alpha, k
            )
            for alpha in ALPHAS
            for k in range(FOLDS)
        )
    seconds, mb = time.perf_counter() - start, written_mb() - before
    means = np.reshape(scores, (len(ALPHAS), FOLDS)).mean(axis=1)
    return ALPHAS[int(np.argmax(means))], seconds, mb


def make_features(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stands for an expensive feature extraction: (rows x 100) float64 features driven by
    10 hidden factors (what PCA finds), and a target that depends on those factors."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((rows, 10))
    X = factors @ rng.standard_normal((10, COLUMNS))
    X += rng.standard_normal((rows, COLUMNS))
    y = factors @ rng.standard_normal(10) + rng.standard_normal(rows)
    return X, y


def folder_mb(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def main(gigabytes: float) -> None:
    rows = max(int(gigabytes * 1e9 / (COLUMNS * 8)), 4000)
    with tempfile.TemporaryDirectory(prefix="arraycache-cv-") as location:
        memory = arraycache.Memory(location, mmap_mode="r", verbose=0)
        load = memory.cache(make_features)
        start = time.perf_counter()
        load(rows)
        computed = time.perf_counter() - start
        start = time.perf_counter()
        X, y = load(rows)
        hit_ms = (time.perf_counter() - start) * 1e3
        print(f"X: {type(X).__name__} {X.shape} {X.dtype}, {X.nbytes / 1e6:.0f} MB; computed "
              f"and stored in {computed:.2f} s, the cache hit maps it in {hit_ms:.1f} ms")

        print(f"1. {len(ALPHAS)} alphas x {FOLDS} folds with arraycache.Parallel(n_jobs=2), "
              f"{FOLDS + len(ALPHAS) * FOLDS} tasks in 2 calls")
        arraycache.Parallel(n_jobs=2)(arraycache.delayed(abs)(i) for i in range(4))  # start
        alpha, seconds, mb = grid_by_folds(X, y)
        print(f"   X memory-mapped (the cache hit): {seconds:.2f} s, best alpha {alpha:g}; "
              f"written {mb:.1f} MB: X passed by reference to its cache file")
        X_mem = np.array(X)
        alpha, seconds, mb = grid_by_folds(X_mem, y)
        print(f"   X in memory (a copy):            {seconds:.2f} s, best alpha {alpha:g}; "
              f"written {mb:.1f} MB: X written once for both calls")
        del X_mem  # its copy in the sharing folder goes with it

        X_mem = np.array(X)
        print(f"2. GridSearchCV(n_jobs=2) ({len(ALPHAS)} candidates x {FOLDS} folds of PCA + "
              "ridge), then cross_val_score of the best, over X in memory")
        runs = [
            ("loky", None, "joblib's loky backend"),
            ("arraycache", None, "the 'arraycache' backend"),
            ("arraycache", f"{location}/pipeline",
             "'arraycache' + Pipeline(memory=arraycache.Memory)"),
        ]
        for backend, cache, label in runs:
            steps = [("pca", PCA(10)), ("ridge", Ridge())]
            pipe = Pipeline(steps, memory=cache and arraycache.Memory(cache, verbose=0))
            with joblib.parallel_config(backend=backend):
                # Not timed: workers start and import scikit-learn.
                GridSearchCV(Ridge(), {"alpha": [1, 2]}, cv=2, n_jobs=2).fit(X[:99], y[:99])
            before, start = written_mb(), time.perf_counter()
            with joblib.parallel_config(backend=backend):
                search = GridSearchCV(pipe, {"ridge__alpha": ALPHAS}, cv=KFold(FOLDS), n_jobs=2)
                search.fit(X_mem, y)
                scores = cross_val_score(search.best_estimator_, X_mem, y, cv=KFold(FOLDS),
                                         n_jobs=2)
            seconds, mb = time.perf_counter() - start, written_mb() - before
            stored = f"; the Pipeline's cache holds {folder_mb(cache):.1f} MB" if cache else ""
            print(f"   {label:50s}: {seconds:6.2f} s, best alpha "
                  f"{search.best_params_['ridge__alpha']:g}, R^2 {scores.mean():.4f}; "
                  f"written {mb:.1f} MB{stored}")
        del X_mem
        del X, y  # release the memory maps before the cache folder goes


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)
