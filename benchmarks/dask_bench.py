"""Parallel on a dask cluster: arraycache's dask backend against joblib's, side by side.

    python -m benchmarks.dask_bench [--size 256M] [--repeats 3] [--json out.json]
    python -m benchmarks --only dask-cv --size 256M    # the same workload, time only

Workload ``dask-cv``: a cross-validation as scikit-learn's ``cross_val_score`` runs it,
called for 3 ridge penalties in turn (3 ``Parallel`` calls of 5 folds each) on a fresh
``LocalCluster`` of 2 worker processes (1 thread each) started in the sample's process.
Every task gets ``X`` (``--size`` bytes, float64, 50 features), ``y`` and its fold's
train/test indices (the same index arrays in every call), fits ridge regression in closed
form on the train rows and returns the R^2 on the test rows.  Timed: the 3 calls (the
cluster start is not).  The libraries are used as written for them:
``joblib.parallel_config(backend='dask')`` and ``arraycache.parallel_config(backend='dask')``.

Bytes sent to the workers, counted in the same run:

- ``scattered``: data scattered by the client (``client.scatter``; dask's ``sizeof``);
- ``tasks``: the tasks' own arguments as pickled for ``client.submit`` (futures pickle as
  their key);
- ``peer``: copies between workers (the workers' ``transfer_incoming_log``), when a task
  runs on a worker that does not hold its data yet.

Every sample is a fresh subprocess (``benchmarks._worker``), libraries alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import MIB, Workload, format_size, parse_size, warm_memory

N_FEATURES = 50
N_FOLDS = 5
ALPHAS = (0.1, 1.0, 10.0)


def fit_and_score(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, alpha: float
) -> float:
    """Ridge regression fitted on ``train`` rows in closed form; R^2 on ``test`` rows."""
    Xt, yt = X[train], y[train]
    gram = Xt.T @ Xt + alpha * np.eye(X.shape[1])
    coef = np.linalg.solve(gram, Xt.T @ yt)
    residual = y[test] - X[test] @ coef
    centred = y[test] - y[test].mean()
    return float(1.0 - residual @ residual / (centred @ centred))


def make_data(nbytes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """X (nbytes of float64), y = X @ w + noise, and the folds' (train, test) indices."""
    rng = np.random.default_rng(seed)
    n = max(nbytes // (8 * N_FEATURES), 10 * N_FOLDS)
    X = rng.standard_normal((n, N_FEATURES))
    y = X @ rng.standard_normal(N_FEATURES) + 0.1 * rng.standard_normal(n)
    order = rng.permutation(n)
    bounds = np.linspace(0, n, N_FOLDS + 1).astype(int)
    folds = []
    for k in range(N_FOLDS):
        test = np.sort(order[bounds[k] : bounds[k + 1]])
        train = np.sort(np.concatenate([order[: bounds[k]], order[bounds[k + 1] :]]))
        folds.append((train, test))
    return X, y, folds


class _Counter:
    """Counts what the client sends: scattered data and pickled task arguments."""

    def __init__(self, client) -> None:
        import cloudpickle
        from dask.sizeof import sizeof

        self.scattered = 0
        self.tasks = 0
        scatter, submit = client.scatter, client.submit

        def counting_scatter(data, *args, **kwargs):
            values = data.values() if isinstance(data, dict) else (
                data if isinstance(data, (list, tuple)) else [data]
            )
            self.scattered += sum(sizeof(v) for v in values)
            return scatter(data, *args, **kwargs)

        def counting_submit(func, *args, **kwargs):
            options = ("key", "pure", "workers", "resources", "retries", "priority")
            payload = {k: v for k, v in kwargs.items() if k not in options}
            self.tasks += len(cloudpickle.dumps((func, args, payload)))
            return submit(func, *args, **kwargs)

        # Instance attributes: both libraries call client.scatter/client.submit.
        client.scatter, client.submit = counting_scatter, counting_submit


def _peer_bytes(client) -> int:
    def received(dask_worker) -> int:
        return sum(t["total"] for t in dask_worker.transfer_incoming_log)

    return sum(client.run(received).values())


def _cross_validate(lib, X, y, folds) -> list[list[float]]:
    with lib.parallel_config(backend="dask"):
        return [
            lib.Parallel()(
                lib.delayed(fit_and_score)(X, y, train, test, alpha) for train, test in folds
            )
            for alpha in ALPHAS
        ]


def cross_validation(lib, size: int, tmp: Path) -> dict:
    from distributed import Client, LocalCluster

    X, y, folds = make_data(size)
    # Three nbytes of X per worker at most (data, a copy of the train rows, a transfer).
    warm_memory(size, times=4)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            local_directory=str(tmp),
        ) as cluster,
        Client(cluster) as client,
    ):
        counter = _Counter(client)
        peer_before = _peer_bytes(client)
        start = time.perf_counter()
        scores = _cross_validate(lib, X, y, folds)
        seconds = time.perf_counter() - start
        peer = _peer_bytes(client) - peer_before
    expected = [[fit_and_score(X, y, tr, te, a) for tr, te in folds] for a in ALPHAS]
    if not np.allclose(scores, expected):
        raise AssertionError("wrong scores")
    return {
        "time": seconds,
        "scattered_mb": counter.scattered / MIB,
        "tasks_mb": counter.tasks / MIB,
        "peer_mb": peer / MIB,
        "sent_mb": (counter.scattered + counter.tasks + peer) / MIB,
        "x_mb": X.nbytes / MIB,
    }


WORKLOADS = [
    Workload(
        "dask-cv", cross_validation, "parallel",
        notes="3 CV calls x 5 folds on a 2-worker LocalCluster (X of --size bytes)",
    ),
]


# --- standalone: time and bytes in one table ---------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from .__main__ import run_sample

    parser = argparse.ArgumentParser(prog="python -m benchmarks.dask_bench")
    parser.add_argument("--size", default="256M", help="bytes of X (default 256M)")
    parser.add_argument("--repeats", type=int, default=3, help="samples per library")
    parser.add_argument("--json", default=None, help="write the samples here")
    parser.add_argument("--tmp", default="/work/bench-tmp", help="where workers write")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[dict]] = {"joblib": [], "arraycache": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as run_dir:
        for _ in range(args.repeats):
            for lib in samples:
                result = run_sample("dask-cv", lib, size, Path(run_dir), 900)
                if "error" in result:
                    print(f"{lib}: {result['error']}\n" + "\n".join(result["stderr_tail"]))
                    return 1
                samples[lib].append(result)
    keys = ("time", "scattered_mb", "tasks_mb", "peer_mb", "sent_mb")
    medians = {
        lib: {k: statistics.median(s[k] for s in runs) for k in keys}
        for lib, runs in samples.items()
    }
    print(f"dask-cv: X = {format_size(size)}, 3 calls x 5 folds, 2 workers x 1 thread, "
          f"medians of {args.repeats}\n")
    print("| library | wall | scattered | task args | between workers | sent to workers |")
    print("|---|---|---|---|---|---|")
    for lib, m in medians.items():
        print(f"| {lib} | {m['time']:.2f} s | {m['scattered_mb']:.0f} MiB | "
              f"{m['tasks_mb']:.2f} MiB | {m['peer_mb']:.0f} MiB | {m['sent_mb']:.0f} MiB |")
    jl, ac = medians["joblib"], medians["arraycache"]
    print(f"\nratio joblib/arraycache: wall {jl['time'] / ac['time']:.2f}, "
          f"bytes sent {jl['sent_mb'] / ac['sent_mb']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "medians": medians}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
