"""Parallel and delayed: results, ordering, configuration, errors (real loky workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import joblib
import pytest
from joblib.externals.loky import get_reusable_executor as joblib_executor

from arraycache.parallel import (
    LokyBackend,
    Parallel,
    ParallelBackend,
    SequentialBackend,
    TaskPicklingError,
    WorkerDiedError,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from arraycache.parallel._batching import AutoBatchSize
from arraycache.parallel._config import BACKENDS
from arraycache.parallel._folders import FOLDERS

from .conftest import stop_workers_and_check

BACKEND_NAMES = ["loky", "threading", "sequential"]


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_workers():
    """Shut loky's workers (ours and joblib's) down after this module; none may be left."""
    yield
    joblib_executor().shutdown(wait=True, kill_workers=True)
    stop_workers_and_check()


@pytest.fixture(autouse=True)
def _no_leftover_call_folders():
    """Every call removes its call folder, whatever happened."""
    yield
    for folder in FOLDERS.existing():
        if os.path.isdir(folder):
            assert [n for n in os.listdir(folder) if n.startswith("call-")] == []


def square(x):
    return x * x


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def fail_on(i, bad):
    if i == bad:
        raise ValueError(f"task {i} is bad")
    return i


def worker_pid(_):
    time.sleep(0.02)
    return os.getpid()


# --- results and ordering --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_results_for_every_backend_and_return_as(backend, return_as):
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(square)(i) for i in range(25)
    )
    if return_as == "list":
        assert isinstance(out, list)
    else:
        assert not isinstance(out, list)
        out = list(out)
    expected = [i * i for i in range(25)]
    assert (sorted(out) if return_as == "generator_unordered" else out) == expected


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_generator_unordered_yields_as_completed_and_generator_in_order(backend):
    delays = [0.6, 0.05, 0.05]
    tasks = [delayed(sleep_then)(d, i) for i, d in enumerate(delays)]
    unordered = list(Parallel(2, backend=backend, return_as="generator_unordered")(tasks))
    assert unordered[0] != 0 and sorted(unordered) == [0, 1, 2]
    assert list(Parallel(2, backend=backend, return_as="generator")(tasks)) == [0, 1, 2]


def test_same_results_as_joblib():
    calls = [delayed(divmod)(i, 3) for i in range(20)]
    ours = Parallel(n_jobs=2)(calls)
    theirs = joblib.Parallel(n_jobs=2)(joblib.delayed(divmod)(i, 3) for i in range(20))
    assert ours == theirs
    assert delayed(divmod)(7, b=2) == (divmod, (7,), {"b": 2})


def test_loky_runs_in_other_processes_threading_in_this_one():
    assert set(Parallel(2)(delayed(worker_pid)(i) for i in range(8))) - {os.getpid()}
    assert set(Parallel(2, backend="threading")(delayed(worker_pid)(i) for i in range(4))) == {
        os.getpid()
    }


def test_lambdas_and_closures_run_in_workers():
    offset = 10
    assert Parallel(2)(delayed(lambda x: x + offset)(i) for i in range(4)) == [10, 11, 12, 13]


def test_function_defined_in_main_runs_in_workers(tmp_path: Path):
    script = tmp_path / "main_func.py"
    script.write_text(
        textwrap.dedent(
            """
            from arraycache.parallel import Parallel, delayed

            def triple(x):
                return 3 * x

            if __name__ == "__main__":
                print(Parallel(n_jobs=2)(delayed(triple)(i) for i in range(4)))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 3, 6, 9]"


def test_many_tiny_tasks_are_batched():
    sizer = AutoBatchSize()
    for _ in range(10):
        sizer.record(sizer.size, 0.001)
    assert sizer.size >= 64
    sizer.record(sizer.size, 10.0)
    sizer.record(sizer.size, 10.0)
    assert sizer.size < 64
    submitted = []

    class Counting(LokyBackend):
        def submit(self, fn, *args):
            submitted.append(fn)
            return super().submit(fn, *args)

    out = Parallel(n_jobs=2, backend=Counting())(delayed(square)(i) for i in range(10_000))
    assert out == [i * i for i in range(10_000)]
    # Batches grow while tasks are tiny: far fewer round trips than tasks.
    assert len(submitted) < 500


def test_fixed_batch_size_and_pre_dispatch():
    consumed = []

    def tasks():
        for i in range(400):
            consumed.append(i)
            yield delayed(square)(i)

    Parallel(2)(delayed(square)(i) for i in range(4))  # both workers up: no slow first batch
    gen = Parallel(2, batch_size=3, pre_dispatch="2 * n_jobs", return_as="generator")(tasks())
    assert next(gen) == 0
    # Lazy: only a few batches were pulled from the iterable.
    assert len(consumed) < 400
    assert list(gen) == [i * i for i in range(1, 400)]
    assert Parallel(2, batch_size=7, pre_dispatch="all")(delayed(square)(i) for i in range(9)) == [
        i * i for i in range(9)
    ]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="return_as"):
        Parallel(return_as="dict")
    with pytest.raises(ValueError, match="batch_size"):
        Parallel(batch_size=0)
    with pytest.raises(ValueError, match="unknown backend"):
        Parallel(backend="nope")
    with pytest.raises(ValueError):
        effective_n_jobs(0)
    with pytest.raises(TypeError, match="task 1"):
        Parallel(2)([delayed(square)(1), 5])


# --- n_jobs and configuration ----------------------------------------------------------------


def test_n_jobs_values():
    n = cpu_count()
    assert n == joblib.cpu_count()
    assert effective_n_jobs(-1) == n
    assert effective_n_jobs(-2) == max(n - 1, 1)
    assert effective_n_jobs(-100) == 1
    assert effective_n_jobs(3) == 3
    assert effective_n_jobs(None) == 1
    with parallel_config(n_jobs=2):
        assert effective_n_jobs(None) == 2
        assert Parallel().n_jobs == 2
    # n_jobs=1 (and None) run inline, as joblib does.
    assert Parallel(n_jobs=1)(delayed(os.getpid)() for _ in range(2)) == [os.getpid()] * 2
    assert Parallel()(delayed(os.getpid)() for _ in range(2)) == [os.getpid()] * 2
    assert set(Parallel(n_jobs=-1)(delayed(worker_pid)(i) for i in range(4))) != {os.getpid()}


def test_parallel_config_and_parallel_backend():
    with parallel_config(backend="threading", n_jobs=2):
        p = Parallel()
        assert p._backend.name == "ThreadingBackend"
        assert set(p(delayed(worker_pid)(i) for i in range(4))) == {os.getpid()}
        with parallel_config(backend="sequential"):
            assert isinstance(Parallel()._backend, SequentialBackend)
        assert Parallel()._backend.name == "ThreadingBackend"
    assert Parallel()._backend.name == "LokyBackend"
    with parallel_backend("threading", n_jobs=2):
        assert Parallel()._backend.name == "ThreadingBackend"
        assert Parallel().n_jobs == 2
    # An explicit argument wins over the configuration.
    with parallel_config(backend="threading"):
        assert Parallel(backend="loky")._backend.name == "LokyBackend"


def test_prefer_and_require():
    assert Parallel(2, prefer="threads")._backend.name == "ThreadingBackend"
    assert Parallel(2, require="sharedmem")._backend.name == "ThreadingBackend"
    with pytest.raises(ValueError, match="sharedmem"):
        Parallel(2, backend="loky", require="sharedmem")
    shared = []
    Parallel(2, require="sharedmem")(delayed(shared.append)(i) for i in range(5))
    assert sorted(shared) == list(range(5))


def test_register_parallel_backend():
    calls = []

    class Recording(ParallelBackend):
        name = "Recording"

        def submit(self, fn, *args):
            calls.append(len(args[0]))
            return SequentialBackend().submit(fn, *args)

    register_parallel_backend("recording", Recording)
    try:
        with parallel_config(backend="recording", n_jobs=2):
            assert Parallel()(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
        assert sum(calls) == 5
    finally:
        BACKENDS.pop("recording")


def test_context_manager_reuses_workers():
    with Parallel(n_jobs=2) as parallel:
        first = set(parallel(delayed(worker_pid)(i) for i in range(8)))
        second = set(parallel(delayed(worker_pid)(i) for i in range(8)))
    assert first & second
    with Parallel(n_jobs=2, backend="threading") as parallel:
        pool = parallel._backend._pool
        assert parallel(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
        assert parallel._backend._pool is pool
    assert parallel._backend._pool is None


def test_context_manager_refuses_overlapping_calls():
    with Parallel(n_jobs=2, return_as="generator") as parallel:
        gen = parallel(delayed(square)(i) for i in range(4))
        with pytest.raises(RuntimeError, match="already running"):
            parallel(delayed(square)(i) for i in range(4))
        assert list(gen) == [0, 1, 4, 9]
        assert list(parallel(delayed(square)(i) for i in range(2))) == [0, 1]


def nested(_):
    from arraycache.parallel import Parallel, delayed, effective_n_jobs

    inner = Parallel(n_jobs=-1)
    return inner._backend.name, effective_n_jobs(-1), inner(delayed(square)(j) for j in range(3))


def test_nested_parallel_in_worker_is_limited():
    for name, n_jobs, values in Parallel(n_jobs=2)(delayed(nested)(i) for i in range(2)):
        assert name != "LokyBackend"
        assert n_jobs == max(1, cpu_count() // 2)
        assert values == [0, 1, 4]
    for _, n_jobs, _ in Parallel(2, backend="threading")(delayed(nested)(i) for i in range(2)):
        assert n_jobs == max(1, cpu_count() // 2)


def test_verbose_prints_joblib_style_progress(capsys):
    Parallel(n_jobs=2, verbose=11)(delayed(square)(i) for i in range(6))
    err = capsys.readouterr().err
    assert "[Parallel(n_jobs=2)]: Using backend LokyBackend with 2 concurrent workers." in err
    assert "[Parallel(n_jobs=2)]: Done   6 out of   6 | elapsed:" in err
    assert err.rstrip().endswith("finished")
    Parallel(n_jobs=2)(delayed(square)(i) for i in range(6))
    assert capsys.readouterr().err == ""


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_task_exception_keeps_its_type(backend):
    with pytest.raises(ValueError, match="task 3 is bad") as info:
        Parallel(n_jobs=2, backend=backend)(delayed(fail_on)(i, 3) for i in range(10))
    if backend == "loky":
        note = "".join(info.value.__notes__)
        assert "raised in a worker, in task 3" in note
        assert "in fail_on" in note and 'raise ValueError(f"task {i} is bad")' in note


def record_then_fail(i, folder):
    Path(folder, str(i)).touch()
    if i == 0:
        raise KeyError("first")
    time.sleep(0.2)
    return i


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_remaining_tasks_are_cancelled(tmp_path, backend):
    with pytest.raises(KeyError):
        Parallel(2, backend=backend, batch_size=1)(
            delayed(record_then_fail)(i, tmp_path) for i in range(40)
        )
    time.sleep(0.5)  # let running threads finish
    assert len(os.listdir(tmp_path)) < 10


def commit_suicide(i):
    if i == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return i


def test_killed_worker_raises_clear_error_and_next_call_works():
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="worker process died") as info:
        Parallel(n_jobs=2)(delayed(commit_suicide)(i) for i in range(10))
    assert time.monotonic() - start < 30
    assert "SIGKILL" in str(info.value)
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_timeout(backend):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timeout=0\.5"):
        Parallel(2, backend=backend, timeout=0.5)(
            delayed(sleep_then)(s, s) for s in (0.05, 3, 0.05, 0.05)
        )
    assert time.monotonic() - start < 2.5
    assert Parallel(2, timeout=5)(delayed(sleep_then)(0.01, i) for i in range(3)) == [0, 1, 2]


def test_unpicklable_argument_is_named():
    lock = threading.Lock()
    with pytest.raises(TaskPicklingError, match=r"argument 1 of task 3 \(a '_thread.lock'\)"):
        Parallel(2)(delayed(max)(i, lock if i == 3 else i) for i in range(6))
    with pytest.raises(TypeError, match="keyword argument 'key' of task 0"):
        Parallel(2)(delayed(sorted)([1], key=lock) for _ in range(2))


def unpicklable_result(_):
    return threading.Lock()


def test_unpicklable_result_is_named():
    with pytest.raises(TaskPicklingError, match="the result of task 0"):
        Parallel(2)(delayed(unpicklable_result)(i) for i in range(1))


def test_keyboard_interrupt_in_task():
    def interrupt(i):
        if i == 2:
            raise KeyboardInterrupt
        return i

    for backend in ("threading", "loky"):
        with pytest.raises(KeyboardInterrupt):
            Parallel(2, backend=backend)(delayed(interrupt)(i) for i in range(10))
    assert Parallel(2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_keyboard_interrupt_while_waiting_kills_running_tasks():
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(threading.main_thread().ident, 2))
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        Parallel(2)(delayed(sleep_then)(5, i) for i in range(4))
    assert time.monotonic() - start < 4
    assert Parallel(2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_generator_close_and_collection_cancel_the_call():
    gen = Parallel(2, return_as="generator")(delayed(sleep_then)(0.05, i) for i in range(50))
    assert next(gen) == 0
    gen.close()
    gen = Parallel(2, return_as="generator")(delayed(sleep_then)(0.05, i) for i in range(50))
    del gen
    assert Parallel(2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_exception_that_cannot_be_pickled_back():
    def raise_odd(_):
        class Local(Exception):
            pass

        raise Local("odd one")

    with pytest.raises(Exception, match="odd one"):
        Parallel(2)(delayed(raise_odd)(i) for i in range(2))
