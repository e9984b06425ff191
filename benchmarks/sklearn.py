"""scikit-learn's ``n_jobs``: GridSearchCV and cross_val_score over a large X.

Both libraries run the same scikit-learn code; ``lib`` picks the joblib backend it runs
on: ``joblib`` is joblib's default loky backend, ``arraycache`` the 'arraycache' backend
(``joblib.parallel_config(backend="arraycache")``, registered by ``import arraycache``).
X is float64, --size bytes, 64 columns; the estimator is ``Ridge``.  Before the timed
call, the workers are started and import scikit-learn (a tiny search, not timed).

- ``sklearn-gridsearch``: ``GridSearchCV(Ridge(), 3 alphas, cv=KFold(3), n_jobs=2)``
  over X in memory (9 fits in one call);
- ``sklearn-cross-val-score``: ``cross_val_score(Ridge(), X, y, cv=KFold(4), n_jobs=2)``
  right after a GridSearchCV over the same X (not timed): the next call of a session;
- ``sklearn-gridsearch-cached``: the GridSearchCV over X returned by a hit of the
  library's own cache with ``mmap_mode='r'`` (a memmap of the cache file).

Besides the wall time and the peaks of ``common.MemorySampler`` (workers' anonymous
memory, USS, PSS; /dev/shm growth):

- ``written_mb``: bytes this process and its workers passed to write(2) during the call
  (files in /dev/shm or the temp dir, and pipes), from ``psutil``'s ``write_chars``;
- ``shared_files_mb``: bytes of the files that appeared or grew in this process's sharing
  folders (joblib's ``joblib_memmapping_folder_<pid>_*`` and arraycache's
  ``arraycache-<pid>-*``, in /dev/shm and the temp dir) during the call, sampled every
  ~20 ms (``/dev/shm +`` is the whole machine's, other processes included);
- ``children_rss_peak_mb``: the peak of the workers' summed resident memory (psutil).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import psutil

from .common import BIG, MemorySampler, Workload, timed, warm_memory

COLUMNS = 64
N_JOBS = 2
ALPHAS = [0.1, 1.0, 10.0]

_DATA: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def make_data(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (``size`` bytes, 64 columns) and a linear target."""
    rows = max(size // (COLUMNS * 8), 1000)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, COLUMNS))
    y = X @ rng.standard_normal(COLUMNS) + rng.standard_normal(rows)
    return X, y


def produce(key: str) -> tuple[np.ndarray, np.ndarray]:
    """The cached function of ``sklearn-gridsearch-cached``."""
    return _DATA[key]


def _backend(lib) -> str:
    return "loky" if lib.__name__ == "joblib" else "arraycache"


def _search(X, y):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, KFold

    return GridSearchCV(Ridge(), {"alpha": ALPHAS}, cv=KFold(3), n_jobs=N_JOBS).fit(X, y)


def _scores(X, y) -> np.ndarray:
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_score

    return cross_val_score(Ridge(), X, y, cv=KFold(4), n_jobs=N_JOBS)


def _start_workers(backend: str) -> None:
    import joblib

    X, y = make_data(COLUMNS * 8 * 1000)
    with joblib.parallel_config(backend=backend):
        _search(X, y)


# --- what the sharing costs ------------------------------------------------------------------


def _sharing_files() -> dict[tuple[int, int], int]:
    """(st_dev, st_ino) -> size of every file under this process's sharing folders.

    joblib's and arraycache's folder names carry the pid of the process that made them
    (other processes on the machine share /dev/shm and the temp dir).
    """
    pid = os.getpid()
    prefixes = (f"joblib_memmapping_folder_{pid}_", f"arraycache-{pid}-")
    found = {}
    for root in {"/dev/shm", tempfile.gettempdir()}:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefixes) or name.endswith(".lock"):
                continue
            for dirpath, _dirs, files in os.walk(os.path.join(root, name)):
                for file in files:
                    try:
                        st = os.lstat(os.path.join(dirpath, file))
                    except OSError:
                        continue
                    found[(st.st_dev, st.st_ino)] = st.st_size
    return found


def _write_chars(proc: psutil.Process) -> int | None:
    try:
        return proc.io_counters().write_chars
    except (psutil.Error, AttributeError):
        return None


class SharingSampler(MemorySampler):
    """``MemorySampler``, plus the bytes written, the sharing files and the workers' RSS."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(interval)
        self.files_start = _sharing_files()
        self.files_peak: dict[tuple[int, int], int] = {}
        self.children_rss_peak = 0
        self.writes_start: dict[int, int] = {}
        self.writes_last: dict[int, int] = {}
        self._workers: dict[int, psutil.Process] = {}

    def _sample(self) -> None:
        super()._sample()
        for key, size in _sharing_files().items():
            self.files_peak[key] = max(size, self.files_peak.get(key, 0))
        try:
            children = self.parent.children(recursive=True)
        except psutil.Error:
            children = []
        rss = 0
        for child in children:
            self._workers.setdefault(child.pid, child)
            with contextlib.suppress(psutil.Error):
                rss += child.memory_info().rss
        self.children_rss_peak = max(self.children_rss_peak, rss)
        for proc in [self.parent, *self._workers.values()]:
            chars = _write_chars(proc)
            if chars is not None:
                self.writes_start.setdefault(proc.pid, chars)
                self.writes_last[proc.pid] = chars

    def summary(self) -> dict[str, float]:
        out = super().summary()
        grown = sum(
            max(0, size - self.files_start.get(key, 0)) for key, size in self.files_peak.items()
        )
        written = sum(self.writes_last[p] - self.writes_start[p] for p in self.writes_last)
        out.update(
            written_mb=written / 1e6,
            shared_files_mb=grown / 1e6,
            children_rss_peak_mb=self.children_rss_peak / 1e6,
        )
        return out


def _measure(call, size: int) -> tuple[dict, object]:
    warm_memory(size)
    with SharingSampler() as sampler:
        seconds, result = timed(call)
    return {"time": seconds, **sampler.summary()}, result


def _check_search(search) -> None:
    """The search gave real scores (a broken run would not be timed as a fast one)."""
    scores = search.cv_results_["mean_test_score"]
    if not (np.all(np.isfinite(scores)) and 0.5 < scores.max() <= 1.0):
        raise AssertionError(f"unexpected scores {scores}")


# --- workloads -------------------------------------------------------------------------------


def gridsearch(lib, size: int, tmp: Path) -> dict:
    import joblib

    backend = _backend(lib)
    X, y = make_data(size)
    _start_workers(backend)
    with joblib.parallel_config(backend=backend):
        out, search = _measure(lambda: _search(X, y), size)
    _check_search(search)
    return out


def cross_val(lib, size: int, tmp: Path) -> dict:
    import joblib

    backend = _backend(lib)
    X, y = make_data(size)
    _start_workers(backend)
    with joblib.parallel_config(backend=backend):
        _search(X, y)
        out, scores = _measure(lambda: _scores(X, y), size)
    if not (len(scores) == 4 and 0.5 < float(np.min(scores)) <= 1.0):
        raise AssertionError(f"unexpected scores {scores}")
    return out


def gridsearch_cached(lib, size: int, tmp: Path) -> dict:
    import joblib

    backend = _backend(lib)
    _DATA[BIG] = make_data(size)
    func = lib.Memory(str(tmp / "cache"), mmap_mode="r", verbose=0).cache(produce)
    func(BIG)
    del _DATA[BIG]
    X, y = func(BIG)
    _start_workers(backend)
    with joblib.parallel_config(backend=backend):
        out, search = _measure(lambda: _search(X, y), size)
    _check_search(search)
    out["is_memmap"] = float(isinstance(X, np.memmap))
    return out


WORKLOADS = [
    Workload("sklearn-gridsearch", gridsearch, "sklearn",
             notes="GridSearchCV, 9 fits, X in memory"),
    Workload("sklearn-cross-val-score", cross_val, "sklearn",
             notes="cross_val_score after a GridSearchCV on the same X"),
    Workload("sklearn-gridsearch-cached", gridsearch_cached, "sklearn",
             notes="GridSearchCV over a cached memmap X"),
]
