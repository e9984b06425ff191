"""scikit-learn's Pipeline with an arraycache Memory: fitted transformers are cached.

A grid search over the classifier's parameters refits the same scaler and PCA for
every candidate; with ``memory=`` those fits are computed once per fold and loaded
from the cache afterwards.

Run:  python examples/sklearn_pipeline.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import arraycache


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10_000, 300))
    y = (X[:, :5].sum(axis=1) + rng.standard_normal(10_000) > 0).astype(int)
    grid = {"clf__C": [0.01, 0.1, 1.0, 10.0]}

    with tempfile.TemporaryDirectory(prefix="arraycache-sklearn-") as location:
        for memory in (None, arraycache.Memory(location, verbose=0)):
            steps = [
                ("scale", StandardScaler()),
                ("pca", PCA(80, svd_solver="full")),
                ("clf", LogisticRegression()),
            ]
            pipe = Pipeline(steps, memory=memory)
            t0 = time.perf_counter()
            search = GridSearchCV(pipe, grid, cv=4).fit(X, y)
            label = "without a cache" if memory is None else "with arraycache.Memory"
            print(f"{label:24s}: {time.perf_counter() - t0:.2f} s, "
                  f"best C={search.best_params_['clf__C']}, score {search.best_score_:.3f}")


if __name__ == "__main__":
    main()
