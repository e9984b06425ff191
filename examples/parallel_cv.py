"""Cross-validation in parallel over a cached, memory-mapped feature matrix.

The loader is cached with ``mmap_mode="r"``: its result comes back as an ``np.memmap``
over the cache file, and ``Parallel`` hands that file to the workers by reference, so
no copy of the matrix is written or pickled, however many folds run.

Run:  python examples/parallel_cv.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

import arraycache


def fold_error(X: np.ndarray, y: np.ndarray, fold: int, n_folds: int) -> float:
    """Least-squares fit on the other folds, mean squared error on this one."""
    test = np.arange(len(y)) % n_folds == fold
    coef, *_ = np.linalg.lstsq(X[~test], y[~test], rcond=None)
    return float(np.mean((X[test] @ coef - y[test]) ** 2))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="arraycache-cv-") as location:
        memory = arraycache.Memory(location, mmap_mode="r", verbose=0)

        @memory.cache
        def load_features(n_samples: int, n_features: int, seed: int = 0):
            """A stand-in for an expensive feature extraction."""
            rng = np.random.default_rng(seed)
            X = rng.standard_normal((n_samples, n_features))
            y = X @ rng.standard_normal(n_features) + 0.1 * rng.standard_normal(n_samples)
            return X, y

        X, y = load_features(200_000, 64)  # 100 MB, computed once, then memory-mapped
        print(f"X: {type(X).__name__} {X.shape}, {X.nbytes / 1e6:.0f} MB")

        t0 = time.perf_counter()
        with arraycache.Parallel(n_jobs=2) as parallel:
            errors = parallel(arraycache.delayed(fold_error)(X, y, k, 8) for k in range(8))
        print(f"8 folds on 2 workers: {time.perf_counter() - t0:.2f} s, "
              f"mean squared error {np.mean(errors):.4f}")
        del X, y  # release the memory maps before the folder goes


if __name__ == "__main__":
    main()
