"""joblib's 'arraycache' backend: scikit-learn's n_jobs on arraycache's workers and sharing.

Real loky workers, real scikit-learn searches, compared with joblib's own loky backend.
Bytes written are counted by the kernel (``write_chars``: every write(2) of this process,
to files and pipes), so a copy of X sent to the workers cannot go unseen.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time

import joblib
import numpy as np
import psutil
import pytest
from joblib import Parallel, delayed
from joblib.externals.loky import get_reusable_executor as joblib_executor
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

import arraycache
from arraycache.parallel import TaskPicklingError, WorkerDiedError
from arraycache.parallel._folders import FOLDERS

from .conftest import run_python, shared_files, stop_workers_and_check

N_SAMPLES, N_FEATURES = 4000, 250  # X: 8 MB, above max_nbytes (1 MB); y and folds: small
GRID = {"alpha": [0.1, 1.0, 10.0]}


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_workers():
    """Shut loky's workers (arraycache's and joblib's) down after this module; none left."""
    yield
    joblib_executor().shutdown(wait=True, kill_workers=True)
    stop_workers_and_check()


@pytest.fixture(autouse=True)
def _nothing_left_shared():
    """Every call removes its call folder, and every copy goes with its array."""
    gc.collect()
    before = set(shared_files())  # other modules' arrays may still live
    yield
    gc.collect()
    assert [f for f in FOLDERS.existing() for n in _listdir(f) if n.startswith("call-")] == []
    assert set(shared_files()) - before == set()


def _listdir(folder: str) -> list[str]:
    return os.listdir(folder) if os.path.isdir(folder) else []


def make_data(n_samples: int = N_SAMPLES, n_features: int = N_FEATURES, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    y = X @ rng.standard_normal(n_features) + 0.5 * rng.standard_normal(n_samples)
    return X, y


def classes(y: np.ndarray) -> np.ndarray:
    return (y > np.median(y)).astype(int)


def written() -> int:
    """Bytes this process has passed to write(2) so far (files, /dev/shm, pipes)."""
    return psutil.Process().io_counters().write_chars


def copies_of(nbytes: int) -> list[str]:
    """Files in this process's sharing folders (/dev/shm and temp) as big as an array."""
    return [f for f in shared_files() if os.path.getsize(f) == nbytes]


def search_scores(X, y, backend: str) -> np.ndarray:
    with joblib.parallel_config(backend=backend):
        search = GridSearchCV(Ridge(), GRID, cv=KFold(3), n_jobs=2).fit(X, y)
    results = search.cv_results_
    return np.array([results[f"split{k}_test_score"] for k in range(3)])


def describe(arr) -> tuple:
    """What a worker received: (type, file, writeable)."""
    filename = getattr(arr, "filename", None)
    return type(arr).__name__, filename and os.path.realpath(filename), arr.flags.writeable


def block(n: int, value: float) -> np.ndarray:
    return np.full(n, value)


def fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise KeyError(f"task {i} failed")
    return i


def die_on(i: int, bad: int) -> int:
    if i == bad:
        os._exit(3)
    return i


def nested_view(_i: int) -> tuple:
    """How a joblib Parallel call inside a task would run."""
    backend, _ = joblib.parallel.get_active_backend()
    return (
        type(backend).__name__,
        joblib.effective_n_jobs(-1),
        Parallel(n_jobs=-1)._effective_n_jobs(),
        os.environ.get("OMP_NUM_THREADS"),
    )


def set_env(name: str, value: str) -> None:
    os.environ[name] = value


def get_env(name: str) -> str | None:
    return os.environ.get(name)  # (os.environ.get itself would pickle os.environ by value)


def pid(_i: int) -> int:
    return os.getpid()


# --- registration ----------------------------------------------------------------------------


@pytest.mark.slow
def test_registered_when_joblib_is_imported_after_arraycache(tmp_path):
    out = run_python(
        """
        import importlib.resources, sys
        import arraycache
        assert "joblib" not in sys.modules and "sklearn" not in sys.modules
        import sklearn.model_selection
        import joblib
        from arraycache.parallel._joblib_backend import ArraycacheBackend
        assert joblib.parallel.BACKENDS["arraycache"] is ArraycacheBackend
        # joblib keeps its own loader (the hook only wrapped it for the import).
        assert type(joblib.__loader__).__name__ == "SourceFileLoader", joblib.__loader__
        assert joblib.__spec__.loader is joblib.__loader__
        assert importlib.resources.files("joblib").joinpath("__init__.py").is_file()
        assert not any(type(f).__name__ == "_JoblibImportHook" for f in sys.meta_path)
        with joblib.parallel_config(backend="arraycache", n_jobs=2):
            print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4)))
        """,
        tmp_path,
    )
    assert out.strip() == "[0, 1, 2, 3]"


def test_registered_when_joblib_was_imported_before_arraycache(tmp_path):
    out = run_python(
        """
        import joblib
        try:
            joblib.parallel_config(backend="arraycache")
        except ValueError as exc:
            print("before:", exc)
        import arraycache
        with joblib.parallel_config(backend="arraycache", n_jobs=2):
            print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4)))
        """,
        tmp_path,
    )
    assert "before: Invalid backend: arraycache" in out
    assert out.strip().endswith("[0, 1, 2, 3]")


def test_arraycache_imports_without_joblib(tmp_path):
    out = run_python(
        """
        import sys, warnings
        warnings.simplefilter("error")
        sys.modules["joblib"] = None  # as if joblib were not installed
        import arraycache
        assert arraycache.Parallel(n_jobs=2)(arraycache.delayed(abs)(-i) for i in range(3)) \\
            == [0, 1, 2]
        try:
            arraycache.register_joblib_backend()
        except ImportError as exc:
            print(exc)
        """,
        tmp_path,
    )
    assert "joblib, which is not installed: pip install joblib" in out


# --- scikit-learn, compared with joblib's loky backend ---------------------------------------


@pytest.mark.slow
def test_grid_search_and_cross_val_score_match_loky_and_write_X_once():
    X, y = make_data()
    expected = search_scores(X, y, "loky")
    with joblib.parallel_config(backend="loky"):
        expected_cv = cross_val_score(Ridge(), X, y, cv=KFold(4), n_jobs=2)

    before = written()
    got = search_scores(X, y, "arraycache")  # 9 fits in one Parallel call
    first_search = written() - before
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # X went to the workers once (one file write), not once per fit (9 pickles).
    assert X.nbytes <= first_search < 1.5 * X.nbytes, first_search
    [copy] = copies_of(X.nbytes)
    inode = os.stat(copy).st_ino

    before = written()
    with joblib.parallel_config(backend="arraycache"):
        got_cv = cross_val_score(Ridge(), X, y, cv=KFold(4), n_jobs=2)
    again = search_scores(X, y, "arraycache")
    later_calls = written() - before
    np.testing.assert_allclose(got_cv, expected_cv, rtol=1e-12, atol=0)
    np.testing.assert_allclose(again, expected, rtol=1e-12, atol=0)
    # Later calls with the same X reuse the copy: not written again.
    assert later_calls < 0.25 * X.nbytes, later_calls
    assert [os.stat(f).st_ino for f in copies_of(X.nbytes)] == [inode]
    del X
    gc.collect()
    assert copies_of(N_SAMPLES * N_FEATURES * 8) == []  # the copy goes with its array


def test_np_load_mmap_X_reaches_workers_without_a_copy(tmp_path):
    X, y = make_data()
    np.save(tmp_path / "X.npy", X)
    expected = search_scores(X, y, "loky")
    X = np.load(tmp_path / "X.npy", mmap_mode="r")

    before = written()
    got = search_scores(X, y, "arraycache")
    with joblib.parallel_config(backend="arraycache"):
        seen = Parallel(n_jobs=2)(delayed(describe)(X) for _ in range(4))
    during = written() - before
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert during < 0.1 * X.nbytes, during  # nothing of X's size written anywhere
    assert copies_of(X.nbytes) == []
    assert set(seen) == {("memmap", os.path.realpath(tmp_path / "X.npy"), False)}


def test_memory_mmap_hit_reaches_workers_without_a_copy(tmp_path):
    memory = arraycache.Memory(tmp_path / "cache", mmap_mode="r", verbose=0)
    load = memory.cache(make_data)
    X_computed, y = load()
    expected = search_scores(X_computed, y, "loky")
    X, y = load()  # a hit: memory maps of the cache files
    assert isinstance(X, np.memmap)

    before = written()
    got = search_scores(X, y, "arraycache")
    with joblib.parallel_config(backend="arraycache"):
        seen = Parallel(n_jobs=2)(delayed(describe)(X) for _ in range(4))
    during = written() - before
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert during < 0.1 * X.nbytes, during
    assert copies_of(X.nbytes) == []
    assert set(seen) == {("memmap", os.path.realpath(X.filename), False)}


@pytest.mark.slow
def test_random_forest_n_jobs_runs_on_the_backend_as_on_loky():
    X, y = make_data(3000, 20)
    y = classes(y)
    with joblib.parallel_config(backend="loky"):
        expected = RandomForestClassifier(40, n_jobs=2, random_state=0).fit(X, y)
    with joblib.parallel_config(backend="arraycache"):
        forest = RandomForestClassifier(40, n_jobs=2, random_state=0).fit(X, y)
        # Trees built in arraycache's workers (the sibling processes of the backend).
        assert {p for p in Parallel(n_jobs=2)(delayed(pid)(i) for i in range(4))} - {os.getpid()}
    np.testing.assert_array_equal(forest.predict_proba(X), expected.predict_proba(X))


@pytest.mark.slow
def test_estimator_n_jobs_inside_a_search_does_not_oversubscribe():
    share = max(1, arraycache.cpu_count() // 2)
    with joblib.parallel_config(backend="arraycache", n_jobs=2):
        views = Parallel()(delayed(nested_view)(i) for i in range(4))
    # Threads inside a worker, at most its share of the CPUs; BLAS limited to that share.
    assert set(views) == {("CappedThreadingBackend", share, share, str(share))}

    X, y = make_data(2000, 10)
    y = classes(y)
    grid = {"max_depth": [3, 6]}
    forest = RandomForestClassifier(20, n_jobs=-1, random_state=0)
    with joblib.parallel_config(backend="loky"):
        expected = GridSearchCV(forest, grid, cv=KFold(3), n_jobs=2).fit(X, y)
    with joblib.parallel_config(backend="arraycache"):
        got = GridSearchCV(forest, grid, cv=KFold(3), n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(
        got.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"]
    )


# --- joblib's Parallel on the backend --------------------------------------------------------


def test_large_results_come_back_through_files():
    n = 300_000  # 2.4 MB each
    with joblib.parallel_config(backend="arraycache"):
        results = Parallel(n_jobs=2)(delayed(block)(n, float(i)) for i in range(4))
    assert [float(r.sum()) for r in results] == [0.0, n * 1.0, n * 2.0, n * 3.0]
    assert all(isinstance(r, np.memmap) for r in results)
    files = {os.path.realpath(r.filename) for r in results}
    assert len(files) == 4 and files <= {os.path.realpath(f) for f in shared_files()}
    del results
    gc.collect()
    assert not any(os.path.exists(f) for f in files)


def test_in_memory_X_written_once_across_calls_of_a_managed_parallel():
    X, _ = make_data()
    before = written()
    with Parallel(n_jobs=2, backend="arraycache") as parallel:
        first = parallel(delayed(describe)(X) for _ in range(6))
        second = parallel(delayed(describe)(X) for _ in range(6))
    assert X.nbytes <= written() - before < 1.5 * X.nbytes
    [copy] = copies_of(X.nbytes)
    assert set(first) == set(second) == {("memmap", os.path.realpath(copy), False)}


def test_max_shared_bytes_zero_keeps_no_copy_after_the_call():
    X, y = make_data()
    with joblib.parallel_config(backend="arraycache", max_shared_bytes=0):
        GridSearchCV(Ridge(), GRID, cv=KFold(3), n_jobs=2).fit(X, y)
    assert copies_of(X.nbytes) == []


def test_generators_give_every_result():
    with joblib.parallel_config(backend="arraycache", n_jobs=2):
        ordered = Parallel(return_as="generator")(delayed(abs)(-i) for i in range(20))
        assert list(ordered) == list(range(20))
        unordered = Parallel(return_as="generator_unordered")(delayed(abs)(-i) for i in range(20))
        assert sorted(unordered) == list(range(20))


def test_one_job_runs_inline():
    with joblib.parallel_config(backend="arraycache", n_jobs=1):
        assert Parallel()(delayed(pid)(i) for i in range(3)) == [os.getpid()] * 3


def test_task_exception_keeps_its_type_and_the_worker_traceback():
    with pytest.raises(KeyError, match="task 5 failed") as info:
        Parallel(n_jobs=2, backend="arraycache", batch_size=1)(
            delayed(fail_on)(i, 5) for i in range(10)
        )
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "raised in a worker, in task 5" in notes and "in fail_on" in notes


@pytest.mark.timeout(60)
def test_unpicklable_argument_is_reported_even_when_dispatched_from_a_callback():
    import threading

    args = [1, 2, 3, 4, 5, threading.Lock(), 7]
    # pre_dispatch=2: task 5 is dispatched by joblib from loky's callback thread.
    with pytest.raises(TaskPicklingError, match=r"argument 0 of task 5 \(a '_thread.lock'\)"):
        Parallel(n_jobs=2, backend="arraycache", batch_size=1, pre_dispatch=2)(
            delayed(repr)(a) for a in args
        )


@pytest.mark.slow
def test_a_dead_worker_is_reported_and_the_next_call_works():
    with pytest.raises(WorkerDiedError, match="worker process died"):
        Parallel(n_jobs=2, backend="arraycache")(delayed(die_on)(i, 2) for i in range(6))
    assert Parallel(n_jobs=2, backend="arraycache")(delayed(abs)(-i) for i in range(4)) == [
        0, 1, 2, 3,
    ]


@pytest.mark.slow
def test_timeout_stops_the_call():
    start = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises
        Parallel(n_jobs=2, backend="arraycache", timeout=1)(
            delayed(time.sleep)(30) for _ in range(2)
        )
    assert time.monotonic() - start < 20


def test_backend_options_are_checked():
    with pytest.raises(TypeError, match="does not take 'flavour'"):
        joblib.parallel_config(backend="arraycache", flavour=1)
    with pytest.raises(ValueError, match="idle_worker_timeout"):
        joblib.parallel_config(backend="arraycache", timeout=3)
    with pytest.raises(ValueError, match="max_shared_bytes"):
        joblib.parallel_config(backend="arraycache", max_shared_bytes=-1)
    with pytest.raises(ValueError, match="mmap_mode"):
        Parallel(n_jobs=2, backend="arraycache", mmap_mode="x")(delayed(abs)(1) for _ in "ab")
    with pytest.raises(ValueError, match="no meaning"):
        Parallel(n_jobs=0, backend="arraycache")(delayed(abs)(1) for _ in "ab")


@pytest.mark.slow
def test_worker_options_reach_the_workers():
    with joblib.parallel_config(backend="arraycache", n_jobs=2, initializer=set_env,
                                initargs=("ARRAYCACHE_TEST_INIT", "yes"), idle_worker_timeout=60):
        seen = Parallel()(delayed(get_env)("ARRAYCACHE_TEST_INIT") for _ in range(4))
    assert seen == ["yes"] * 4
    assert "ARRAYCACHE_TEST_INIT" not in os.environ  # it ran in the workers only
