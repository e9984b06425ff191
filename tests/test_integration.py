"""Stories across modules: cached loaders feeding parallel loops, scikit-learn, benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

import arraycache

from .conftest import shared_files

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("no_leftover_workers")


def fold_score(X, y, fold, n_folds):
    """A stand-in for fitting on one cross-validation fold: returns where X lives too."""
    test = np.arange(len(y)) % n_folds == fold
    centroid = X[~test].mean(axis=0)
    score = float(((X[test] - centroid) ** 2).sum())
    return score, type(X).__name__, str(getattr(X, "filename", None))


def test_cached_loader_feeds_parallel_folds_without_copies(tmp_path):
    memory = arraycache.Memory(tmp_path / "cache", mmap_mode="r", verbose=0)

    @memory.cache
    def load(n_rows):
        return np.random.default_rng(0).random((n_rows, 64))

    X = load(20_000)  # 10 MB, above max_nbytes: would be written if it were not a file
    y = np.zeros(len(X))
    assert isinstance(X, np.memmap)
    before = shared_files()
    out = arraycache.Parallel(n_jobs=2)(
        arraycache.delayed(fold_score)(X, y, k, 5) for k in range(5)
    )
    expected = [fold_score(np.asarray(X).copy(), y, k, 5)[0] for k in range(5)]
    assert [score for score, _, _ in out] == pytest.approx(expected)
    # Workers mapped the cache file itself, and nothing was written for X.
    assert {(kind, name) for _, kind, name in out} == {("memmap", X.filename)}
    assert shared_files() == before


def cached_step(location, x):
    memory = arraycache.Memory(location, verbose=0)
    return memory.cache(np.sqrt)(x)


def test_workers_share_one_memory(tmp_path):
    location = tmp_path / "cache"
    data = [np.full(1000, float(i * i)) for i in range(6)]
    first = arraycache.Parallel(n_jobs=2)(
        arraycache.delayed(cached_step)(location, d) for d in data + data
    )
    for got, d in zip(first, data + data, strict=True):
        np.testing.assert_array_equal(got, np.sqrt(d))
    cached = arraycache.Memory(location, verbose=0).cache(np.sqrt)
    assert all(cached.check_call_in_cache(d) for d in data)
    entries = [p for p in (location / "numpy").rglob("zarr.json") if (p.parent / "a0").is_dir()]
    assert len(entries) == len(data)  # one entry per distinct argument


def test_sklearn_pipeline_memory_and_grid_search(tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import Pipeline
    rng = np.random.default_rng(1)
    X = rng.random((600, 30))
    y = (X[:, 0] + 0.1 * rng.random(600) > 0.55).astype(int)
    memory = arraycache.Memory(tmp_path / "cache", verbose=0)
    fits = CountingScaler.fits
    fits.clear()

    def make():
        return Pipeline(
            [("scale", CountingScaler()), ("pca", PCA(5)), ("clf", LogisticRegression())],
            memory=memory,
        )

    reference = Pipeline(
        [("scale", StandardScaler()), ("pca", PCA(5)), ("clf", LogisticRegression())]
    )
    first = cross_val_score(make(), X, y, cv=3)
    n_fits = len(fits)
    second = cross_val_score(make(), X, y, cv=3)
    np.testing.assert_allclose(first, cross_val_score(reference, X, y, cv=3))
    np.testing.assert_array_equal(first, second)
    assert n_fits == 3 and len(fits) == n_fits  # the second run reused the cached scalers


class CountingScaler(StandardScaler):
    """A scaler that counts its fits (module level: cached results must pickle)."""

    fits: list[int] = []

    def fit(self, X, y=None, sample_weight=None):
        self.fits.append(1)
        return super().fit(X, y, sample_weight)


@pytest.mark.slow
def test_benchmark_command_runs_small(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--vs", "joblib", "--size", "8M", "--repeats", "1",
         "--only", "^(hash-contiguous|hit-mmap|store-1G)$", "--no-references",
         "--tmp", str(tmp_path), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for workload in ("hash-contiguous", "hit-mmap", "store-1G"):
        assert workload in proc.stdout
    assert "error" not in proc.stdout.lower()
    assert out.stat().st_size > 0
