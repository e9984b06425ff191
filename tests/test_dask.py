"""Parallel(backend='dask') on a real distributed.LocalCluster with two worker processes.

The cluster is started once for the module (scheduler in this process, two nanny-managed
worker processes, one thread each, ``allowed-failures=0`` so that a task killing its
worker fails at once) and closed at the end, which checks that no process, listening
port or file is left.  The client is not the default one: tests pass it, or make it the
current one with ``client.as_current()``.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

import arraycache  # noqa: E402
from arraycache.hashing import array_digest  # noqa: E402
from arraycache.parallel import (  # noqa: E402
    BackendParameterError,
    Parallel,
    ParallelTimeoutError,
    WorkerDiedError,
    delayed,
    parallel_config,
)

from .conftest import run_python, shared_files, worker_processes  # noqa: E402

N = 300_000  # float64 elements: 2.4 MB, above the default max_nbytes of 1 MB


def _listening_ports() -> set[int]:
    return {
        c.laddr.port for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(LocalCluster, Client), closed at the end with nothing left behind."""
    children = {p.pid for p in worker_processes()}
    ports = _listening_ports()
    # The cluster sets OPENBLAS_NUM_THREADS=1 and OMP_NUM_THREADS=1 in this process's
    # environment, which later tests' children would inherit: put it back after.
    environment = dict(os.environ)
    folder = tmp_path_factory.mktemp("dask-workers")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            local_directory=str(folder),
        )
    client = distributed.Client(cluster, set_as_default=False)
    workers = set(client.run(os.getpid).values())
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()
        os.environ.clear()
        os.environ.update(environment)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(psutil.pid_exists(pid) for pid in workers):
        time.sleep(0.1)
    assert [pid for pid in workers if psutil.pid_exists(pid)] == []
    assert [p.cmdline() for p in worker_processes() if p.pid not in children] == []
    assert _listening_ports() - ports == set()
    # Only dask's own lock files stay in its scratch folder (workers remove their own).
    left = [p.relative_to(folder) for p in Path(folder).rglob("*") if p.is_file()]
    assert sorted(map(str, left)) == [
        "dask-scratch-space/global.lock", "dask-scratch-space/purge.lock"
    ]
    shutil.rmtree(folder)
    gc.collect()
    assert shared_files() == []


@pytest.fixture
def client(cluster):
    return cluster[1]


@pytest.fixture
def scheduler(cluster):
    return cluster[0].scheduler


# --- task functions (imported by the workers from this module) --------------------------------


def where(i: int) -> tuple[int, int]:
    return i, os.getpid()


def slow_square(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i * i


def wait_for_event(i: int, name: str) -> int:
    if i == 0:
        # Task 0 finishes only after the caller has seen another result.
        distributed.Event(name).wait(timeout=30)
    return i


def fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise KeyError(f"task {i} is bad")
    return i


def sleep_until(path: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "done"


def die(i: int) -> int:
    if i == 1:
        os._exit(1)
    return i


def element(x: np.ndarray, i: int) -> tuple[float, bool]:
    return float(x[i]), bool(x.flags.writeable)


def write_first(x: np.ndarray) -> float:
    x[0] = -1.0
    return float(x.sum())


def block(i: int, n: int) -> np.ndarray:
    return np.full(n, float(i))


def record_call(calls: str, x: np.ndarray, offset: float) -> float:
    """The cached function: appends one byte to ``calls`` each time it really runs."""
    with open(calls, "a") as f:
        f.write("x")
    return float(x.sum()) + offset


def call_cached(func, calls: str, x: np.ndarray, offset: float) -> float:
    return func(calls, x, offset)


class Model:
    """A non-array object for ``scatter=``."""

    def __init__(self, weight: float) -> None:
        self.weight = weight


def apply_model(model: Model, i: int) -> tuple[float, int]:
    return model.weight * i, id(model)


def inner_parallel(n: int) -> list[int]:
    return Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(n))


def digest_seen(x: np.ndarray) -> str | None:
    from arraycache.hashing import stored_digest

    return stored_digest(x)


def batch_keys(scheduler, name: str) -> list[str]:
    return [key for key in scheduler.tasks if str(key).startswith(f"arraycache-{name}-")]


def array_keys(scheduler, digest: str) -> list[str]:
    return sorted(
        key for key in scheduler.tasks if str(key).startswith(f"arraycache-array-{digest}")
    )


def wait_until(predicate, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


# --- running, in order --------------------------------------------------------------------------


def test_results_come_back_in_order_from_the_worker_processes(client, scheduler):
    worker_pids = set(client.run(os.getpid).values())
    # Early tasks sleep longest, so that they complete last.
    with parallel_config(backend="dask", client=client):
        squares = Parallel(batch_size=1)(
            delayed(slow_square)(i, 0.05 * (6 - i)) for i in range(6)
        )
        places = Parallel()(delayed(where)(i) for i in range(40))
    assert squares == [i * i for i in range(6)]
    assert [i for i, _ in places] == list(range(40))
    assert {pid for _, pid in places} <= worker_pids
    assert os.getpid() not in worker_pids
    # The batches' results are released on the cluster once read.
    assert wait_until(lambda: batch_keys(scheduler, "where") == [])


def test_the_current_client_is_used_and_its_absence_is_explained(client):
    with pytest.raises(ValueError, match=r"needs a dask\.distributed Client"):
        Parallel(backend="dask")
    with client.as_current():
        parallel = Parallel(backend="dask")
        assert parallel._backend.client is client
        assert parallel(delayed(abs)(-i) for i in range(5)) == [0, 1, 2, 3, 4]
        # As joblib's dask backend: all the cluster's threads.
        assert parallel._effective_n_jobs() == 2


def test_generator_yields_in_order(client):
    with parallel_config(backend="dask", client=client):
        gen = Parallel(return_as="generator", batch_size=1)(
            delayed(slow_square)(i, 0.3 if i == 0 else 0.0) for i in range(6)
        )
        assert list(gen) == [i * i for i in range(6)]


def test_unordered_generator_yields_as_tasks_complete(client):
    name = f"arraycache-test-go-{uuid.uuid4().hex}"
    event = distributed.Event(name, client=client)
    with parallel_config(backend="dask", client=client):
        gen = Parallel(return_as="generator_unordered", batch_size=1)(
            delayed(wait_for_event)(i, name) for i in range(6)
        )
        first = next(gen)
        event.set()
        rest = list(gen)
    assert first != 0  # task 0 cannot finish before this result was seen
    assert sorted([first, *rest]) == list(range(6))


def test_closing_a_generator_cancels_the_batches_left(client, scheduler):
    with parallel_config(backend="dask", client=client):
        gen = Parallel(return_as="generator", batch_size=1)(
            delayed(slow_square)(i, 0.2) for i in range(30)
        )
        assert next(gen) == 0
        gen.close()
    assert wait_until(lambda: batch_keys(scheduler, "slow_square") == [])


def test_a_task_that_cannot_be_sent_is_named(client):
    import threading

    with (
        parallel_config(backend="dask", client=client),
        pytest.raises(arraycache.parallel.TaskPicklingError, match="argument 0 of task 1"),
    ):
        Parallel(batch_size=1)(delayed(abs)(threading.Lock() if i == 1 else i) for i in range(3))


def test_a_nested_parallel_runs_inside_a_task(client):
    with parallel_config(backend="dask", client=client):
        assert Parallel()(delayed(inner_parallel)(n) for n in (3, 4)) == [[0, 1, 2], [0, 1, 2, 3]]


# --- errors, timeouts, dead workers --------------------------------------------------------------


def test_an_exception_keeps_its_type_and_the_remote_traceback(client):
    with (
        parallel_config(backend="dask", client=client),
        pytest.raises(KeyError, match="task 3 is bad") as info,
    ):
        Parallel(batch_size=2)(delayed(fail_on)(i, 3) for i in range(8))
    notes = "".join(info.value.__notes__)
    assert "raised in a worker, in task 3" in notes
    assert "in fail_on" in notes


def test_timeout_counts_from_when_a_batch_starts(client, tmp_path):
    with parallel_config(backend="dask", client=client):
        # 12 batches of 0.5 s on 2 workers: the last ones end ~3 s after they were sent,
        # more than the timeout, but each runs 0.5 s.
        squares = Parallel(batch_size=1, pre_dispatch="all", timeout=2.0)(
            delayed(slow_square)(i, 0.5) for i in range(12)
        )
        assert squares == [i * i for i in range(12)]
        stop = tmp_path / "stop"
        start = time.monotonic()
        with pytest.raises(ParallelTimeoutError, match=r"did not finish within timeout=0\.5"):
            Parallel(batch_size=1, timeout=0.5)(
                delayed(sleep_until)(str(stop), 60) for _ in range(2)
            )
        waited = time.monotonic() - start
        stop.touch()  # dask cannot interrupt a running task: let it end
    assert waited < 30  # reported, not waited for (the tasks would run 60 s)
    with parallel_config(backend="dask", client=client):
        assert Parallel()(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_a_worker_that_dies_is_reported(client):
    try:
        with (
            parallel_config(backend="dask", client=client),
            pytest.raises(WorkerDiedError, match=r"KilledWorker"),
        ):
            Parallel(batch_size=1)(delayed(die)(i) for i in range(4))
    finally:
        # The nanny starts a new worker; the cluster keeps working.
        client.wait_for_workers(2, timeout=60)
    with parallel_config(backend="dask", client=client):
        assert Parallel()(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


# --- arrays: sent once per content ----------------------------------------------------------------


def test_an_array_passed_to_20_tasks_in_2_calls_is_scattered_once(client, scheduler):
    x = np.random.default_rng(0).random(N)
    digest = array_digest(x)
    with parallel_config(backend="dask", client=client):
        first = Parallel(batch_size=1)(delayed(element)(x, i) for i in range(20))
        keys_after_first = array_keys(scheduler, digest)
        second = Parallel(batch_size=1)(delayed(element)(x, 20 + i) for i in range(20))
        keys_after_second = array_keys(scheduler, digest)
    assert first == [(float(x[i]), False) for i in range(20)]
    assert second == [(float(x[20 + i]), False) for i in range(20)]
    # One key, the same one: any new scatter would have a new key (each has a nonce).
    assert len(keys_after_first) == 1
    assert keys_after_second == keys_after_first
    assert scheduler.tasks[keys_after_first[0]].nbytes >= x.nbytes
    # Kept while x lives; released on the cluster once it is collected.
    del x
    gc.collect()
    assert wait_until(lambda: array_keys(scheduler, digest) == [])


def test_an_array_changed_in_place_is_sent_again_and_its_old_copy_released(client, scheduler):
    x = np.zeros(N)
    with parallel_config(backend="dask", client=client):
        Parallel()(delayed(element)(x, 0) for _ in range(2))
        old = array_digest(x)
        assert len(array_keys(scheduler, old)) == 1
        x += 1.0
        assert Parallel()(delayed(element)(x, 0) for _ in range(2)) == [(1.0, False)] * 2
    new = array_digest(x)
    assert len(array_keys(scheduler, new)) == 1
    assert wait_until(lambda: array_keys(scheduler, old) == [])
    del x
    gc.collect()
    assert wait_until(lambda: array_keys(scheduler, new) == [])


def test_max_shared_bytes_zero_keeps_nothing_after_a_call(client, scheduler):
    x = np.ones(N)
    with parallel_config(backend="dask", client=client, max_shared_bytes=0):
        assert Parallel()(delayed(element)(x, 1) for _ in range(3)) == [(1.0, False)] * 3
    assert wait_until(lambda: array_keys(scheduler, array_digest(x)) == [])


def test_the_bound_drops_the_least_recently_used_arrays_first(client, scheduler):
    a, b, c = (np.full(N, float(i)) for i in range(3))
    with parallel_config(backend="dask", client=client, max_shared_bytes=2 * a.nbytes + 1):
        for arr in (a, b, a, c):  # a used again: b is the least recently used
            assert Parallel()(delayed(element)(arr, 0) for _ in range(2)) == [
                (float(arr[0]), False)
            ] * 2
    digests = [array_digest(arr) for arr in (a, b, c)]
    assert wait_until(lambda: array_keys(scheduler, digests[1]) == [])
    assert len(array_keys(scheduler, digests[0])) == 1
    assert len(array_keys(scheduler, digests[2])) == 1


def test_scattered_arrays_carry_their_digest_into_tasks(client):
    rng = np.random.default_rng(2)
    c_order = rng.random(N)
    f_order = np.asfortranarray(rng.random((600, 500)))
    strided = rng.random((2, N))[:, ::2]
    arrays = [c_order, f_order, strided]
    with parallel_config(backend="dask", client=client):
        seen = Parallel()(delayed(digest_seen)(a) for a in arrays)
        # A private copy (writable) carries none: it may change.
        copied = Parallel(mmap_mode=None)(delayed(digest_seen)(c_order) for _ in range(1))
    assert seen == [array_digest(a) for a in arrays]
    assert copied == [None]


def test_writable_modes_give_each_task_a_private_copy(client):
    x = np.ones(N)
    with parallel_config(backend="dask", client=client, mmap_mode="c"):
        sums = Parallel(batch_size=1)(delayed(write_first)(x) for _ in range(4))
    # Each task saw the original values: writes went to its own copy.
    assert sums == [N - 2.0] * 4
    assert x[0] == 1.0


def test_small_arrays_and_max_nbytes_none_go_with_the_tasks(client, scheduler):
    x = np.arange(1000.0)
    y = np.arange(float(N))
    with parallel_config(backend="dask", client=client):
        assert Parallel()(delayed(element)(x, 5) for _ in range(2)) == [(5.0, True)] * 2
        assert Parallel(max_nbytes=None)(delayed(element)(y, 7) for _ in range(2)) == [
            (7.0, True)
        ] * 2
    assert array_keys(scheduler, array_digest(x)) == []
    assert array_keys(scheduler, array_digest(y)) == []


def test_large_results_and_memmaps_come_back_as_arrays(client, tmp_path):
    n = 400_000
    path = tmp_path / "data.bin"
    np.arange(float(n)).tofile(path)
    mapped = np.memmap(path, dtype=float, mode="r", shape=(n,))
    with parallel_config(backend="dask", client=client):
        blocks = Parallel()(delayed(block)(i, n) for i in range(3))
        views = Parallel()(delayed(np.asarray)(mapped) for _ in range(2))
    assert [float(b.sum()) for b in blocks] == [float(i * n) for i in range(3)]
    assert all(type(b) is np.ndarray for b in blocks)
    assert all(np.array_equal(v, mapped) for v in views)
    del mapped, views


def test_cached_function_in_tasks_hits_the_callers_entries(client, tmp_path):
    memory = arraycache.Memory(tmp_path / "cache", verbose=0)
    cached = memory.cache(record_call, ignore=["calls"])
    calls = tmp_path / "calls.txt"
    # Scattered: its digest travels with it. Integers: sums exact in any order.
    x = np.random.default_rng(1).integers(0, 1000, N).astype(float)
    expected = float(x.sum())
    assert cached(str(calls), x, 1.0) == expected + 1.0  # computed here
    with parallel_config(backend="dask", client=client):
        hits = Parallel(batch_size=1)(
            delayed(call_cached)(cached, str(calls), x, 1.0) for _ in range(4)
        )
        assert hits == [expected + 1.0] * 4
        assert calls.read_text() == "x"  # the tasks hit the caller's entry
        # Computed in a task, then a hit here.
        Parallel()(delayed(call_cached)(cached, str(calls), x, 2.0) for _ in range(1))
    assert calls.read_text() == "xx"
    assert cached(str(calls), x, 2.0) == expected + 2.0
    assert calls.read_text() == "xx"


SCRIPT = """
import os

import numpy as np
from distributed import Client, LocalCluster


def work(calls, x):
    with open(calls, "a") as f:
        f.write("x")
    return float(x.sum())


def task(location, calls, x):
    # Decorated in the worker: it must know which script work() comes from.
    import arraycache

    return arraycache.Memory(location, verbose=0).cache(work, ignore=["calls"])(calls, x)


if __name__ == "__main__":
    # Workers started before arraycache is imported: they do not inherit the script path.
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     dashboard_address=None, local_directory="workers") as cluster,
        Client(cluster) as client,
    ):
        import arraycache
        from arraycache import Parallel, delayed, parallel_config

        location, calls = os.path.abspath("cache"), os.path.abspath("calls.txt")
        cached = arraycache.Memory(location, verbose=0).cache(work, ignore=["calls"])
        x = np.arange(300_000.0)
        first = cached(calls, x)
        with parallel_config(backend="dask", client=client):
            out = Parallel(batch_size=1)(delayed(task)(location, calls, x) for _ in range(3))
            other = Parallel()(delayed(task)(location, calls, x + 1) for _ in range(1))
        again = cached(calls, x + 1)
        print(out == [first] * 3, other == [again], open("calls.txt").read())
"""


@pytest.mark.slow
def test_a_scripts_cached_function_hits_the_same_entries_in_tasks(tmp_path, monkeypatch):
    monkeypatch.delenv("ARRAYCACHE_MAIN_SCRIPT", raising=False)
    out = run_python(SCRIPT, tmp_path)
    # Computed once here, hit by the 3 tasks; computed once in a task, hit here.
    assert out.split() == ["True", "True", "xx"]


# --- options ---------------------------------------------------------------------------------


def test_scatter_sends_objects_once_for_the_backend(client, scheduler):
    model = Model(2.0)
    x = np.ones(N)
    with parallel_config(backend="dask", client=client, scatter=[model, x]):
        object_keys = [k for k in scheduler.tasks if str(k).startswith("arraycache-object-Model")]
        assert len(object_keys) == 1
        # Broadcast: every worker has a copy from the start.
        assert len(scheduler.tasks[object_keys[0]].who_has) == 2
        assert len(array_keys(scheduler, array_digest(x))) == 1
        out = Parallel()(delayed(apply_model)(model, i) for i in range(4))
        assert [value for value, _ in out] == [0.0, 2.0, 4.0, 6.0]
        assert Parallel()(delayed(element)(x, 3) for _ in range(2)) == [(1.0, False)] * 2
    with pytest.raises(TypeError, match="scatter must be a list or a tuple"):
        parallel_config(backend="dask", client=client, scatter=model)


def test_backend_options_are_checked(client):
    with pytest.raises(BackendParameterError, match="DaskDistributedBackend"):
        parallel_config(backend="dask", client=client, inner_max_num_threads=2)
    with pytest.raises(TypeError, match="unknown option"):
        parallel_config(backend="dask", client=client, no_such_option=1)
    with pytest.raises(TypeError, match="'pure'"):
        parallel_config(backend="dask", client=client, pure=True)
    with pytest.raises(TypeError, match=r"client must be a distributed\.Client"):
        parallel_config(backend="dask", client="tcp://nowhere:1")
    # client.submit options are passed on.
    with parallel_config(backend="dask", client=client, priority=10, retries=1):
        assert Parallel()(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_without_distributed_the_error_names_the_extra(monkeypatch):
    # find_spec sees no distributed (None in sys.modules): as when it is not installed.
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ValueError, match=r"pip install 'arraycache\[dask\]'"):
        parallel_config(backend="dask")
    with pytest.raises(ValueError, match="Please install dask"):
        Parallel(backend="dask")
